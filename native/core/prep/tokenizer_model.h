// Internal to the tokenizer, shared by its two halves: tokenizer_vocab.cc
// loads the vocabulary and merges into a Tokenizer::Model, tokenizer.cc runs
// the BPE session on it. Not part of the API in tokenizer.h.
#ifndef CLIP_NATIVE_CORE_PREP_TOKENIZER_MODEL_H_
#define CLIP_NATIVE_CORE_PREP_TOKENIZER_MODEL_H_

#include <unicode/normalizer2.h>
#include <unicode/utf8.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <string>
#include <unordered_map>

#include "tokenizer.h"

namespace clip {
namespace tokenizer_internal {

inline uint64_t PairKey(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}

inline void AppendUtf8(UChar32 c, std::string* out) {
  char buf[4];
  int32_t len = 0;
  U8_APPEND_UNSAFE(buf, len, c);
  out->append(buf, static_cast<size_t>(len));
}

// Returns `options`, or throws ClipError(kInvalidArgument) naming the field
// that is out of range. The factories call it before reading any file.
TokenizerOptions ValidateOptions(const TokenizerOptions& options);

}  // namespace tokenizer_internal

// Immutable after loading; shared by all threads without locking.
struct Tokenizer::Model {
  std::array<int32_t, 256> byte_id{};
  std::array<int32_t, 256> byte_end_id{};  // the byte symbol + "</w>"
  // (left id, right id) -> rank << 32 | merged id.
  std::unordered_map<uint64_t, uint64_t> merges;
  int32_t start_of_text_id = 0;
  int32_t end_of_text_id = 0;
  size_t vocab_size = 0;
  const icu::Normalizer2* nfc = nullptr;

  bool Merge(int32_t left, int32_t right, uint32_t* rank, int32_t* merged) const {
    auto it = merges.find(tokenizer_internal::PairKey(left, right));
    if (it == merges.end()) return false;
    *rank = static_cast<uint32_t>(it->second >> 32);
    *merged = static_cast<int32_t>(it->second & 0xffffffffu);
    return true;
  }
};

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_PREP_TOKENIZER_MODEL_H_

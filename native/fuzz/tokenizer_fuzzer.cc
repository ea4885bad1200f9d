// libFuzzer target: untrusted bytes -> the CLIP tokenizer (ICU decoding and
// NFC, lowercasing, pre-tokenization, byte-level BPE with the real vocabulary
// from test/fixtures/vocab), the path of every text of POST /score.
//
// Three tokenizers on the same input, and what must hold between them (a
// violation aborts, so libFuzzer reports it):
//   * `standard` (the production options): bos first, eos last, 2..77 ids,
//     every id inside the vocabulary, EncodePadded padded with `pad`, the same
//     ids on a second call (the word cache's answer equals the first one's);
//   * `exact` (no BPE windowing, no word cache): the same ids as `standard`
//     for any input too short to reach a window;
//   * `short` (context_length 8): its content is the first 6 content ids of
//     `standard`, and it reports truncation exactly when `standard` has more.
// No exception may escape: any text is valid input.
//
// The vocabulary directory is CLIP_FUZZ_VOCAB_DIR, else the build's
// test/fixtures/vocab (made by `node scripts/fixtures.js`).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "errors.h"
#include "tokenizer.h"

namespace {

std::unique_ptr<clip::Tokenizer> g_standard;
std::unique_ptr<clip::Tokenizer> g_exact;
std::unique_ptr<clip::Tokenizer> g_short;

[[noreturn]] void Violation(const char* what) {
  std::fprintf(stderr, "tokenizer_fuzzer: contract violation: %s\n", what);
  std::abort();
}

std::unique_ptr<clip::Tokenizer> Load(const std::string& dir, const clip::TokenizerOptions& options) {
  try {
    return clip::Tokenizer::FromHuggingFaceFiles(dir + "/vocab.json", dir + "/merges.txt", options);
  } catch (const std::exception& error) {
    std::fprintf(stderr, "tokenizer_fuzzer: cannot load the vocabulary from %s: %s\n", dir.c_str(), error.what());
    std::exit(2);
  }
}

std::vector<int32_t> Content(const std::vector<int32_t>& ids) {
  return std::vector<int32_t>(ids.begin() + 1, ids.end() - 1);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int* argc, char*** argv) {
  const char* env = std::getenv("CLIP_FUZZ_VOCAB_DIR");
  std::string dir = env != nullptr && *env != '\0' ? env : CLIP_FUZZ_VOCAB_DIR;
  clip::TokenizerOptions standard;
  g_standard = Load(dir, standard);
  clip::TokenizerOptions exact;
  exact.bpe_window_bytes = 0;
  exact.cache_capacity = 0;
  g_exact = Load(dir, exact);
  clip::TokenizerOptions short_context;
  short_context.context_length = 8;
  short_context.cache_capacity = 16;  // tiny, so eviction runs all the time
  g_short = Load(dir, short_context);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  std::string_view text(reinterpret_cast<const char*>(data), size);
  const clip::TokenizerOptions& o = g_standard->options();
  try {
    std::vector<int32_t> ids = g_standard->Encode(text);
    if (ids.size() < 2 || ids.size() > static_cast<size_t>(o.context_length)) Violation("length out of range");
    if (ids.front() != o.bos || ids.back() != o.eos) Violation("not framed by bos ... eos");
    for (int32_t id : ids) {
      if (id < 0 || static_cast<size_t>(id) >= g_standard->vocab_size()) Violation("id outside the vocabulary");
    }
    if (g_standard->Encode(text) != ids) Violation("a second Encode (word cache) differs");

    std::vector<int32_t> padded(static_cast<size_t>(o.context_length), -1);
    bool truncated = false;
    int length = g_standard->EncodePadded(text, padded.data(), &truncated);
    if (length != static_cast<int>(ids.size()) || !std::equal(ids.begin(), ids.end(), padded.begin())) {
      Violation("EncodePadded differs from Encode");
    }
    for (size_t k = ids.size(); k < padded.size(); ++k) {
      if (padded[k] != o.pad) Violation("padding is not pad");
    }
    if (truncated && ids.size() != static_cast<size_t>(o.context_length)) Violation("truncated but not full");

    // Normalization can triple the bytes (one code point lowercasing to
    // three bytes from two, at most); below that no piece reaches a window.
    if (size * 3 < o.bpe_window_bytes && g_exact->Encode(text) != ids) {
      Violation("windowed and cached BPE differs from exact BPE");
    }

    std::vector<int32_t> short_padded(8);
    bool short_truncated = false;
    int short_length = g_short->EncodePadded(text, short_padded.data(), &short_truncated);
    std::vector<int32_t> short_ids(short_padded.begin(), short_padded.begin() + short_length);
    std::vector<int32_t> content = Content(ids);
    std::vector<int32_t> short_content = Content(short_ids);
    size_t room = 6;
    if (short_content.size() != std::min(content.size(), room) ||
        !std::equal(short_content.begin(), short_content.end(), content.begin())) {
      Violation("a short context is not a prefix of the full one");
    }
    if (short_truncated != (content.size() > room)) Violation("short context's truncation flag is wrong");
  } catch (const std::exception& error) {
    std::fprintf(stderr, "tokenizer_fuzzer: %s\n", error.what());
    Violation("the tokenizer threw");
  }
  return 0;
}

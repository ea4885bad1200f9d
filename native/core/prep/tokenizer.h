// CLIP byte-level BPE tokenizer: UTF-8 text -> token ids, equal to Hugging
// Face's fast CLIP tokenizer (CLIPTokenizerFast / tokenizers) for
// openai/clip-vit-base-patch32. See tokenizer.cc for the pipeline.
#ifndef CLIP_NATIVE_CORE_PREP_TOKENIZER_H_
#define CLIP_NATIVE_CORE_PREP_TOKENIZER_H_

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace clip {

struct TokenizerOptions {
  int context_length = 77;
  int32_t bos = 49406;
  int32_t eos = 49407;
  int32_t pad = 49407;
  size_t cache_capacity = 65536;  // words in the bounded LRU word cache
  // A single pre-tokenized piece (a run of letters or of punctuation with no
  // space in it) longer than this many bytes is BPE-encoded window by window
  // instead of whole, so that a multi-megabyte word costs no more than a
  // short caption. Tokens are only taken from the first (window - 1 KiB) of
  // each window, far beyond the reach of BPE merges in any real text. 0 turns
  // windowing off: exact on any input, but the cost grows with piece length.
  size_t bpe_window_bytes = 4096;
};

class Tokenizer {
 public:
  // Hugging Face vocab.json + merges.txt. Throws
  // ClipError(ErrorCode::kModelLoadFailed) with a message naming the file on
  // any problem, ClipError(ErrorCode::kInvalidArgument) for bad options.
  static std::unique_ptr<Tokenizer> FromHuggingFaceFiles(const std::string& vocab_json_path,
                                                         const std::string& merges_txt_path,
                                                         const TokenizerOptions& options);

  // openai's bpe_simple_vocab_16e6.txt.gz; the vocabulary is derived from the
  // merge list the way openai's simple_tokenizer.py does. Same error contract.
  static std::unique_ptr<Tokenizer> FromOpenAiBpe(const std::string& gz_path, const TokenizerOptions& options);

  ~Tokenizer();
  Tokenizer(const Tokenizer&) = delete;
  Tokenizer& operator=(const Tokenizer&) = delete;

  // bos + at most context_length-2 content ids + eos, unpadded. Safe to call
  // from many threads at once. Invalid UTF-8 is read as U+FFFD, one per
  // maximal ill-formed subsequence (what Node does when it decodes a Buffer).
  std::vector<int32_t> Encode(std::string_view utf8) const;

  // Writes exactly context_length ids to out, padded with options().pad, and
  // returns the unpadded length.
  int EncodePadded(std::string_view utf8, int32_t* out) const;

  // As above; *truncated is set when the text had more content tokens than
  // fit, so callers can warn about captions that were cut.
  int EncodePadded(std::string_view utf8, int32_t* out, bool* truncated) const;

  const TokenizerOptions& options() const { return options_; }

  // Size of the vocabulary the files described (49408 for CLIP).
  size_t vocab_size() const;

  // The loaded vocabulary and merges; opaque, defined in tokenizer_model.h.
  struct Model;

 private:
  class WordCache;
  class Session;

  Tokenizer(std::unique_ptr<const Model> model, const TokenizerOptions& options);

  // Appends at most max_content content ids (special-token literals
  // included) to *content; stops reading the text as soon as it has them.
  void EncodeContent(std::string_view utf8, size_t max_content, std::vector<int32_t>* content) const;

  TokenizerOptions options_;
  std::unique_ptr<const Model> model_;
  std::unique_ptr<WordCache> cache_;
};

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_PREP_TOKENIZER_H_

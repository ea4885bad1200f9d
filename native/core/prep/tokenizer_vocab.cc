// Loading the tokenizer: Hugging Face's vocab.json + merges.txt, or openai's
// gzipped BPE merge list, into the immutable Tokenizer::Model that the BPE
// session (tokenizer.cc) reads.

#include <unicode/normalizer2.h>
#include <unicode/utypes.h>
#include <zlib.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <fstream>
#include <limits>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <string_view>
#include <unordered_map>
#include <utility>
#include <vector>

#include "errors.h"
#include "tokenizer.h"
#include "tokenizer_model.h"

namespace clip {
namespace {

using tokenizer_internal::AppendUtf8;
using tokenizer_internal::PairKey;
using tokenizer_internal::ValidateOptions;

constexpr std::string_view kEndOfWord = "</w>";

// GPT-2's bytes_to_unicode keeps these bytes as their own code points.
bool IsPrintableByte(int b) { return (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF); }

// GPT-2's bytes_to_unicode: the printable bytes map to themselves, the other
// 68 to U+0100 upwards, in byte order. Returns the code point for each byte.
std::array<UChar32, 256> ByteToCodePoint() {
  std::array<UChar32, 256> table{};
  UChar32 next = 256;
  for (int b = 0; b < 256; ++b) table[b] = IsPrintableByte(b) ? b : next++;
  return table;
}

// openai's vocabulary order for the byte symbols: printable bytes first.
std::vector<int> ByteOrder() {
  std::vector<int> order;
  for (int b = 0; b < 256; ++b) {
    if (IsPrintableByte(b)) order.push_back(b);
  }
  for (int b = 0; b < 256; ++b) {
    if (!IsPrintableByte(b)) order.push_back(b);
  }
  return order;
}

[[noreturn]] void LoadError(const std::string& message) { throw ClipError(ErrorCode::kModelLoadFailed, message); }

std::string ReadFile(const std::string& path, const char* what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    LoadError(std::string("Cannot open ") + what + " " + path + ": " + std::strerror(errno));
  }
  std::ostringstream buffer;
  buffer << in.rdbuf();
  if (in.bad()) LoadError(std::string("Cannot read ") + what + " " + path);
  return buffer.str();
}

std::string ReadGzip(const std::string& path) {
  gzFile file = gzopen(path.c_str(), "rb");
  if (file == nullptr) {
    LoadError("Cannot open BPE merge list " + path + ": " + std::strerror(errno));
  }
  std::string data;
  char buf[1 << 16];
  int n = 0;
  while ((n = gzread(file, buf, sizeof(buf))) > 0) {
    data.append(buf, static_cast<size_t>(n));
  }
  int err = Z_OK;
  const char* message = gzerror(file, &err);
  std::string error_text = message == nullptr ? "" : message;
  // zlib reads a file without a gzip header as plain bytes; a merge list that
  // is not compressed is not the file we were asked for.
  bool plain = gzdirect(file) == 1;
  gzclose(file);
  if (n < 0 || (err != Z_OK && err != Z_STREAM_END)) {
    LoadError("Cannot decompress BPE merge list " + path + ": " + error_text);
  }
  if (plain) LoadError("BPE merge list " + path + " is not gzip data");
  return data;
}

std::vector<std::string_view> SplitLines(std::string_view text) {
  std::vector<std::string_view> lines;
  size_t start = 0;
  while (true) {
    size_t end = text.find('\n', start);
    if (end == std::string_view::npos) {
      lines.push_back(text.substr(start));
      return lines;
    }
    lines.push_back(text.substr(start, end - start));
    start = end + 1;
  }
}

// "a b" -> {a, b}; both parts non-empty and no further space.
bool SplitMerge(std::string_view line, std::pair<std::string, std::string>* merge) {
  if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
  size_t space = line.find(' ');
  if (space == std::string_view::npos || space == 0 || space + 1 == line.size() ||
      line.find(' ', space + 1) != std::string_view::npos) {
    return false;
  }
  merge->first = std::string(line.substr(0, space));
  merge->second = std::string(line.substr(space + 1));
  return true;
}

using Vocab = std::unordered_map<std::string, int32_t>;
using MergeList = std::vector<std::pair<std::string, std::string>>;

std::unique_ptr<Tokenizer::Model> BuildModelImpl(const Vocab& vocab, const MergeList& merges,
                                                 const std::string& vocab_file, const std::string& merges_file) {
  auto model = std::make_unique<Tokenizer::Model>();
  int32_t max_id = -1;
  for (const auto& entry : vocab) max_id = std::max(max_id, entry.second);
  model->vocab_size = static_cast<size_t>(max_id + 1);

  auto lookup = [&vocab](const std::string& token, int32_t* id) {
    auto it = vocab.find(token);
    if (it == vocab.end()) return false;
    *id = it->second;
    return true;
  };
  std::array<UChar32, 256> byte_to_cp = ByteToCodePoint();
  for (int byte = 0; byte < 256; ++byte) {
    std::string symbol;
    AppendUtf8(byte_to_cp[byte], &symbol);
    if (!lookup(symbol, &model->byte_id[byte]) ||
        !lookup(symbol + std::string(kEndOfWord), &model->byte_end_id[byte])) {
      LoadError("Vocabulary " + vocab_file + " lacks the byte symbol \"" + symbol + "\" (byte " + std::to_string(byte) +
                ") or its </w> form");
    }
  }
  if (!lookup("<|startoftext|>", &model->start_of_text_id) || !lookup("<|endoftext|>", &model->end_of_text_id)) {
    LoadError("Vocabulary " + vocab_file + " lacks <|startoftext|> or <|endoftext|>");
  }

  model->merges.reserve(merges.size() * 2);
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& merge = merges[rank];
    int32_t left = 0;
    int32_t right = 0;
    int32_t merged = 0;
    if (!lookup(merge.first, &left) || !lookup(merge.second, &right) || !lookup(merge.first + merge.second, &merged)) {
      LoadError("BPE merge " + std::to_string(rank + 1) + " \"" + merge.first + " " + merge.second + "\" of " +
                merges_file + " uses a token missing from the vocabulary " + vocab_file);
    }
    // Later duplicates win, as in both reference implementations.
    model->merges[PairKey(left, right)] = (static_cast<uint64_t>(rank) << 32) | static_cast<uint32_t>(merged);
  }

  UErrorCode status = U_ZERO_ERROR;
  model->nfc = icu::Normalizer2::getNFCInstance(status);
  if (U_FAILURE(status)) {
    throw ClipError(ErrorCode::kInternal, std::string("ICU NFC data unavailable: ") + u_errorName(status));
  }
  return model;
}

}  // namespace

std::unique_ptr<Tokenizer> Tokenizer::FromHuggingFaceFiles(const std::string& vocab_json_path,
                                                           const std::string& merges_txt_path,
                                                           const TokenizerOptions& options) {
  ValidateOptions(options);
  std::string json_text = ReadFile(vocab_json_path, "vocabulary");
  Vocab vocab;
  try {
    nlohmann::json json = nlohmann::json::parse(json_text);
    if (!json.is_object()) {
      LoadError("Vocabulary " + vocab_json_path + " is not a JSON object of token -> id");
    }
    vocab.reserve(json.size());
    for (auto& [token, id] : json.items()) {
      if (!id.is_number_integer() || id.get<int64_t>() < 0 || id.get<int64_t>() > std::numeric_limits<int32_t>::max()) {
        LoadError("Vocabulary " + vocab_json_path + " maps \"" + token + "\" to " + id.dump() + ", not a token id");
      }
      vocab[token] = static_cast<int32_t>(id.get<int64_t>());
    }
  } catch (const nlohmann::json::exception& e) {
    LoadError("Vocabulary " + vocab_json_path + " is not valid JSON: " + e.what());
  }

  std::string merges_text = ReadFile(merges_txt_path, "BPE merges");
  std::vector<std::string_view> lines = SplitLines(merges_text);
  MergeList merges;
  merges.reserve(lines.size());
  for (size_t k = 0; k < lines.size(); ++k) {
    std::string_view line = lines[k];
    if (k == 0 && line.substr(0, 8) == "#version") continue;
    if (line.empty() || line == "\r") continue;
    std::pair<std::string, std::string> merge;
    if (!SplitMerge(line, &merge)) {
      LoadError("BPE merges " + merges_txt_path + " line " + std::to_string(k + 1) + " is not \"<left> <right>\"");
    }
    merges.push_back(std::move(merge));
  }
  return std::unique_ptr<Tokenizer>(
      new Tokenizer(BuildModelImpl(vocab, merges, vocab_json_path, merges_txt_path), options));
}

std::unique_ptr<Tokenizer> Tokenizer::FromOpenAiBpe(const std::string& gz_path, const TokenizerOptions& options) {
  ValidateOptions(options);
  std::string text = ReadGzip(gz_path);
  std::vector<std::string_view> lines = SplitLines(text);
  // simple_tokenizer.py: merges = lines[1 : 49152 - 256 - 2 + 1]; line 0 is a
  // header and the lines after those are never used.
  constexpr size_t kMergeCount = 49152 - 256 - 2;
  if (lines.size() < kMergeCount + 1) {
    LoadError("BPE merge list " + gz_path + " has " + std::to_string(lines.size()) + " lines, expected at least " +
              std::to_string(kMergeCount + 1));
  }
  MergeList merges(kMergeCount);
  for (size_t k = 0; k < kMergeCount; ++k) {
    if (!SplitMerge(lines[k + 1], &merges[k])) {
      LoadError("BPE merge list " + gz_path + " line " + std::to_string(k + 2) + " is not \"<left> <right>\"");
    }
  }

  std::array<UChar32, 256> byte_to_cp = ByteToCodePoint();
  std::vector<std::string> tokens;
  tokens.reserve(512 + kMergeCount + 2);
  for (int byte : ByteOrder()) {
    std::string symbol;
    AppendUtf8(byte_to_cp[byte], &symbol);
    tokens.push_back(symbol);
  }
  for (size_t k = 0; k < 256; ++k) {
    tokens.push_back(tokens[k] + std::string(kEndOfWord));
  }
  for (const auto& merge : merges) tokens.push_back(merge.first + merge.second);
  tokens.push_back("<|startoftext|>");
  tokens.push_back("<|endoftext|>");
  Vocab vocab;
  vocab.reserve(tokens.size());
  // Later duplicates win, as in dict(zip(vocab, range(len(vocab)))).
  for (size_t id = 0; id < tokens.size(); ++id) {
    vocab[tokens[id]] = static_cast<int32_t>(id);
  }
  return std::unique_ptr<Tokenizer>(new Tokenizer(BuildModelImpl(vocab, merges, gz_path, gz_path), options));
}

}  // namespace clip

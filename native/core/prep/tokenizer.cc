// CLIP tokenizer, equal to Hugging Face's fast CLIP tokenizer (the Rust
// `tokenizers` pipeline in openai/clip-vit-base-patch32's tokenizer.json):
//
//   1. `<|endoftext|>` is split out of the raw text (added token with
//      normalized: false). Each piece in between is normalized on its own:
//   2. NFC, then every run of whitespace becomes one U+0020, then full
//      lowercase one code point at a time (no final-sigma rule: Rust's
//      char::to_lowercase).
//   3. `<|startoftext|>` is split out of the normalized text.
//   4. The rest is split with CLIP's pattern
//        <\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|
//        [\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+
//      keeping the matches and dropping the whitespace between them. The
//      ByteLevel pre-tokenizer that follows runs GPT-2's split regex on each
//      piece; that changes only a piece `<|endoftext|>` produced by
//      normalization (e.g. from `<|ENDOFTEXT|>`), which it cuts into `<|`,
//      `endoftext`, `|>`.
//   5. Byte-level BPE with `</w>` on the last symbol of each piece.
//
// Unicode library: ICU (icu-uc), not utf8proc, because the pipeline needs
//   * full lowercase mapping per code point (U+0130 -> "i̇", two code points)
//     as Rust does; utf8proc_tolower is the simple one-to-one mapping only;
//   * Normalizer2::hasBoundaryBefore, which says where NFC may be applied to
//     a chunk of text independently of what follows. That is what lets us
//     normalize only a bounded prefix of a huge string and still match
//     normalizing the whole string; utf8proc has no such query;
//   * U8_NEXT_OR_FFFD, which replaces each maximal ill-formed UTF-8
//     subsequence with one U+FFFD, the same rule as Node's UTF-8 decoder, so
//     bytes that bypassed a JS string behave as if they had gone through one.
// ICU is also what Node itself ships, so its Unicode data (ICU 72: Unicode
// 15.0) is close to the Rust crates' that produced the reference ids.
//
// Cost is bounded by the output, not the input: raw text is decoded and
// normalized in chunks of about kChunkBytes, pieces are cut from the
// normalized text as soon as the text after them is known, and the whole
// thing stops once context_length - 1 content tokens exist (enough to know
// the result and whether it was truncated). Only whitespace, which yields no
// tokens, is scanned however long it runs, and that scan is cheap.
//
// Where the ids can differ from Hugging Face's (none of it occurs in the 316
// reference records, nor in 20000 fuzzed strings of assigned characters):
//   * Unicode versions: characters assigned after Unicode 15.0 (ICU 72's
//     data) count as unassigned, so as punctuation, where Hugging Face's
//     regex may see letters; and Hugging Face's NFC tables predate Unicode 14,
//     so it leaves combining marks assigned since then (U+1AC0, U+0C3C, ...)
//     out of canonical order where ICU sorts them;
//   * NFC is cut after kMaxNonStarterRun combining marks in a row, and BPE of
//     one piece longer than TokenizerOptions::bpe_window_bytes is windowed
//     (see the constants below); both keep a 5 MB input as cheap as a caption.

#include "tokenizer.h"

#include <unicode/normalizer2.h>
#include <unicode/uchar.h>
#include <unicode/unistr.h>
#include <unicode/ustring.h>
#include <unicode/utf16.h>
#include <unicode/utf8.h>

#include <algorithm>
#include <array>
#include <functional>
#include <list>
#include <mutex>
#include <unordered_map>
#include <utility>

#include "errors.h"
#include "tokenizer_model.h"

namespace clip {
namespace {

using tokenizer_internal::AppendUtf8;

constexpr std::string_view kEndOfText = "<|endoftext|>";
constexpr std::u32string_view kEndOfText32 = U"<|endoftext|>";
constexpr std::u32string_view kStartOfText32 = U"<|startoftext|>";

// Raw bytes decoded and normalized per step. Small enough that a caption is
// one step and early stopping wastes little; large enough to amortize ICU.
constexpr size_t kChunkBytes = 256;
// NFC may only be cut before a code point with a normalization boundary. A
// run of combining marks longer than this (never seen in real text; Unicode's
// stream-safe format caps it at 30) is cut anyway so the cost stays bounded.
constexpr size_t kMaxNonStarterRun = 1024;
// Longest lookahead a decision at one position needs: `<|startoftext|>`.
constexpr size_t kLookahead = kStartOfText32.size();
// An unfinished letter or punctuation run this long moves to the windowed
// long-piece path instead of waiting for its end.
constexpr size_t kLongRunCodePoints = 512;
// Tokens are taken only from the part of a BPE window at least this far from
// its cut end. BPE merges interact across a few symbols; a change at the cut
// would have to travel through a chain of ever-higher-ranked merges this long
// to reach an emitted token.
constexpr size_t kWindowMarginBytes = 1024;
// Pieces up to this size go through the word cache; longer ones are rare and
// would only evict useful entries.
constexpr size_t kMaxCachedPieceBytes = 64;

enum CharClass : uint8_t { kSpace, kLetter, kDigit, kOther };

}  // namespace

// Bounded LRU of piece bytes -> ids, split into independently locked shards
// so that concurrent Encode calls rarely wait on one another.
class Tokenizer::WordCache {
 public:
  explicit WordCache(size_t capacity) {
    size_t per_shard = (capacity + kShards - 1) / kShards;
    for (Shard& shard : shards_) {
      shard.capacity = std::max<size_t>(per_shard, 1);
    }
  }

  // Appends the cached ids of `key` to *ids; false on a miss.
  bool Get(std::string_view key, std::vector<int32_t>* ids) {
    size_t hash = std::hash<std::string_view>()(key);
    Shard& shard = shards_[ShardIndex(hash)];
    std::lock_guard<std::mutex> lock(shard.mutex);
    auto it = shard.index.find(key);
    if (it == shard.index.end()) return false;
    shard.lru.splice(shard.lru.begin(), shard.lru, it->second);
    const std::vector<int32_t>& cached = it->second->ids;
    ids->insert(ids->end(), cached.begin(), cached.end());
    return true;
  }

  void Put(std::string_view key, const int32_t* ids, size_t count) {
    size_t hash = std::hash<std::string_view>()(key);
    Shard& shard = shards_[ShardIndex(hash)];
    std::lock_guard<std::mutex> lock(shard.mutex);
    if (shard.index.find(key) != shard.index.end()) return;
    if (shard.lru.size() >= shard.capacity) {
      shard.index.erase(shard.lru.back().key);
      shard.lru.pop_back();
    }
    shard.lru.push_front(Entry{std::string(key), std::vector<int32_t>(ids, ids + count)});
    // The view points into the list node, which never moves.
    shard.index.emplace(shard.lru.front().key, shard.lru.begin());
  }

 private:
  static constexpr size_t kShards = 16;
  struct Entry {
    std::string key;
    std::vector<int32_t> ids;
  };
  struct Shard {
    std::mutex mutex;
    std::list<Entry> lru;
    std::unordered_map<std::string_view, std::list<Entry>::iterator> index;
    size_t capacity = 1;
  };
  // Each shard's map buckets by the low bits of the same hash; the shard is
  // picked by the high ones so the two stay independent.
  static size_t ShardIndex(size_t hash) { return (hash >> (sizeof(size_t) * 8 - 4)) % kShards; }

  std::array<Shard, kShards> shards_;
};

namespace {

struct Symbol {
  int32_t id;
  int32_t prev;
  int32_t next;
  uint32_t bytes;  // 0 once merged into its left neighbour
};

struct Candidate {
  uint32_t rank;
  int32_t pos;
  int32_t merged;
  // std::*_heap build a max-heap; invert so the lowest (rank, pos) is on top,
  // which is the leftmost pair of the lowest rank, as tokenizers picks it.
  bool operator<(const Candidate& other) const { return rank != other.rank ? rank > other.rank : pos > other.pos; }
};

}  // namespace

// One Encode call: the streaming state from raw bytes to content ids.
class Tokenizer::Session {
 public:
  Session(const Tokenizer& tokenizer, std::string_view text, size_t limit, std::vector<int32_t>* out)
      : tokenizer_(tokenizer),
        model_(*tokenizer.model_),
        raw_(reinterpret_cast<const uint8_t*>(text.data())),
        raw_size_(text.size()),
        limit_(limit),
        out_(out) {}

  void Run() {
    size_t pos = 0;
    while (!Full()) {
      if (pos >= raw_size_) {
        Drain(/*segment_done=*/true);
        return;
      }
      // Look for `<|endoftext|>` only as far as this step reads, so a long
      // text is never scanned ahead of need.
      size_t target = std::min(raw_size_, pos + kChunkBytes);
      size_t search_end = std::min(raw_size_, target + kEndOfText.size() - 1);
      std::string_view window(reinterpret_cast<const char*>(raw_) + pos, search_end - pos);
      size_t hit = window.find(kEndOfText);
      size_t segment_end = hit == std::string_view::npos ? raw_size_ : pos + hit;
      pos = NormalizeChunk(pos, std::min(target, segment_end), segment_end);
      bool segment_done = pos == segment_end;
      Drain(segment_done);
      if (segment_done && hit != std::string_view::npos) {
        Emit(model_.end_of_text_id);
        pos = segment_end + kEndOfText.size();
        // Hugging Face normalizes each segment between the literals on its
        // own; nothing carries over.
        previous_space_ = false;
      }
    }
  }

 private:
  bool Full() const { return out_->size() >= limit_; }

  void Emit(int32_t id) {
    if (!Full()) out_->push_back(id);
  }

  // Decodes raw_[begin, ...) up to at least `target` (and then on to the next
  // NFC boundary, never past segment_end), normalizes it into norm_ and
  // returns where it stopped.
  size_t NormalizeChunk(size_t begin, size_t target, size_t segment_end) {
    chunk_.clear();
    bool ascii = true;
    size_t non_starters = 0;
    size_t i = begin;
    while (i < segment_end) {
      uint8_t byte = raw_[i];
      if (i >= target) {
        // ASCII always starts a new NFC segment.
        if (byte < 0x80) break;
        size_t peek = i;
        UChar32 c;
        U8_NEXT_OR_FFFD(raw_, peek, segment_end, c);
        if (model_.nfc->hasBoundaryBefore(c) || ++non_starters > kMaxNonStarterRun) {
          break;
        }
      }
      if (byte < 0x80) {
        chunk_.push_back(byte);
        ++i;
        continue;
      }
      UChar32 c;
      U8_NEXT_OR_FFFD(raw_, i, segment_end, c);
      chunk_.push_back(c);
      ascii = false;
    }
    if (ascii) {
      for (UChar32 c : chunk_) AppendNormalized(c);
      return i;
    }
    source_.remove();
    for (UChar32 c : chunk_) source_.append(c);
    UErrorCode status = U_ZERO_ERROR;
    model_.nfc->normalize(source_, normalized_, status);
    if (U_FAILURE(status)) {
      throw ClipError(ErrorCode::kInternal, std::string("ICU NFC normalization failed: ") + u_errorName(status));
    }
    const UChar* units = normalized_.getBuffer();
    int32_t length = normalized_.length();
    for (int32_t k = 0; k < length;) {
      UChar32 c;
      U16_NEXT(units, k, length, c);
      AppendNormalized(c);
    }
    return i;
  }

  static CharClass Classify(UChar32 c) {
    if (c < 0x80) {
      if (c == ' ' || (c >= '\t' && c <= '\r')) return kSpace;
      if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')) return kLetter;
      if (c >= '0' && c <= '9') return kDigit;
      return kOther;
    }
    // White_Space is exactly Oniguruma's Unicode \s (9-D, 85, Zs, Zl, Zp).
    if (u_isUWhiteSpace(c)) return kSpace;
    uint32_t mask = U_GET_GC_MASK(c);
    if (mask & U_GC_L_MASK) return kLetter;
    if (mask & U_GC_N_MASK) return kDigit;
    return kOther;
  }

  // Whitespace collapsing and lowercasing for one NFC code point.
  void AppendNormalized(UChar32 c) {
    CharClass cls = Classify(c);
    if (cls == kSpace) {
      if (!previous_space_) Push(' ', kSpace);
      previous_space_ = true;
      return;
    }
    previous_space_ = false;
    if (c < 0x80) {
      Push(c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c, cls);
      return;
    }
    if (!u_hasBinaryProperty(c, UCHAR_CHANGES_WHEN_LOWERCASED)) {
      Push(c, cls);
      return;
    }
    // One code point at a time with the root locale: full mappings
    // (U+0130 -> i + U+0307) but no context, so no final sigma, like Rust.
    UChar source[2];
    int32_t source_length = 0;
    U16_APPEND_UNSAFE(source, source_length, c);
    UChar lower[8];
    UErrorCode status = U_ZERO_ERROR;
    int32_t length = u_strToLower(lower, 8, source, source_length, "", &status);
    if (U_FAILURE(status)) {
      Push(c, cls);
      return;
    }
    for (int32_t k = 0; k < length;) {
      UChar32 d;
      U16_NEXT(lower, k, length, d);
      Push(d, Classify(d));
    }
  }

  void Push(UChar32 c, CharClass cls) {
    norm_.push_back(c);
    class_.push_back(cls);
  }

  bool MatchesAt(size_t pos, std::u32string_view literal) const {
    if (pos + literal.size() > norm_.size()) return false;
    for (size_t k = 0; k < literal.size(); ++k) {
      if (norm_[pos + k] != static_cast<UChar32>(literal[k])) return false;
    }
    return true;
  }

  // Length of a contraction piece ('s 't 're 've 'm 'll 'd) at pos, or 0.
  size_t ContractionAt(size_t pos) const {
    size_t avail = norm_.size();
    if (pos + 1 >= avail) return 0;
    UChar32 a = norm_[pos + 1];
    if (a == 's' || a == 't' || a == 'm' || a == 'd') return 2;
    if (pos + 2 >= avail) return 0;
    UChar32 b = norm_[pos + 2];
    if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) {
      return 3;
    }
    return 0;
  }

  // End of the letter or punctuation run that continues at `begin`.
  // *complete is false when text still to be normalized might extend it.
  size_t RunEnd(size_t begin, CharClass cls, bool segment_done, bool* complete) const {
    size_t avail = norm_.size();
    size_t end = begin;
    while (end < avail && class_[end] == cls) {
      if (cls == kOther && norm_[end] == '<') {
        if (!segment_done && end + kLookahead > avail) {
          *complete = false;
          return end;
        }
        // The literal was split out before the regex ran, so it ends a
        // punctuation run ("(<|startoftext|>)" gives "(" 49406 ")").
        if (MatchesAt(end, kStartOfText32)) break;
      }
      ++end;
    }
    *complete = end < avail || segment_done;
    return end;
  }

  // Cuts pieces from norm_ and encodes them, as far as the text known so far
  // decides them.
  void Drain(bool segment_done) {
    while (!Full()) {
      size_t avail = norm_.size();
      if (long_class_ != kSpace) {
        bool complete = false;
        size_t end = RunEnd(next_, long_class_, segment_done, &complete);
        AppendRangeUtf8(next_, end, &carry_);
        next_ = end;
        FlushCarry(complete);
        if (!complete) break;
        long_class_ = kSpace;
        continue;
      }
      if (next_ >= avail) break;
      if (!segment_done && avail - next_ < kLookahead) break;
      UChar32 c = norm_[next_];
      CharClass cls = class_[next_];
      if (cls == kSpace) {
        ++next_;
        continue;
      }
      if (c == '<') {
        if (MatchesAt(next_, kStartOfText32)) {
          Emit(model_.start_of_text_id);
          next_ += kStartOfText32.size();
          continue;
        }
        if (MatchesAt(next_, kEndOfText32)) {
          // Only reachable through normalization (`<|EndOfText|>`); the
          // ByteLevel step's GPT-2 regex cuts the piece in three.
          EncodePiece("<|");
          EncodePiece("endoftext");
          EncodePiece("|>");
          next_ += kEndOfText32.size();
          continue;
        }
      }
      if (c == '\'') {
        size_t length = ContractionAt(next_);
        if (length > 0) {
          EncodeRange(next_, next_ + length);
          next_ += length;
          continue;
        }
      }
      if (cls == kDigit) {
        EncodeRange(next_, next_ + 1);
        ++next_;
        continue;
      }
      bool complete = false;
      size_t end = RunEnd(next_, cls, segment_done, &complete);
      if (!complete) {
        if (end - next_ < kLongRunCodePoints) break;
        long_class_ = cls;
        carry_.clear();
        AppendRangeUtf8(next_, end, &carry_);
        next_ = end;
        FlushCarry(/*complete=*/false);
        continue;
      }
      EncodeRange(next_, end);
      next_ = end;
    }
    if (next_ == norm_.size()) {
      norm_.clear();
      class_.clear();
      next_ = 0;
    } else if (next_ >= 4096) {
      norm_.erase(norm_.begin(), norm_.begin() + next_);
      class_.erase(class_.begin(), class_.begin() + next_);
      next_ = 0;
    }
  }

  void AppendRangeUtf8(size_t begin, size_t end, std::string* out) const {
    for (size_t k = begin; k < end; ++k) AppendUtf8(norm_[k], out);
  }

  void EncodeRange(size_t begin, size_t end) {
    piece_.clear();
    AppendRangeUtf8(begin, end, &piece_);
    EncodePiece(piece_);
  }

  // A complete piece: byte-level BPE with "</w>" on its last symbol.
  void EncodePiece(std::string_view bytes) {
    if (bytes.empty()) return;
    size_t window = tokenizer_.options_.bpe_window_bytes;
    if (window != 0 && bytes.size() > window) {
      carry_.assign(bytes.data(), bytes.size());
      FlushCarry(/*complete=*/true);
      return;
    }
    WordCache* cache = tokenizer_.cache_.get();
    bool cacheable = cache != nullptr && bytes.size() <= kMaxCachedPieceBytes;
    if (cacheable) {
      ids_.clear();
      if (cache->Get(bytes, &ids_)) {
        for (int32_t id : ids_) Emit(id);
        return;
      }
    }
    Bpe(bytes, /*end_of_word=*/true);
    ids_.clear();
    for (int32_t k = 0; k >= 0; k = symbols_[k].next) {
      ids_.push_back(symbols_[k].id);
    }
    if (cacheable) cache->Put(bytes, ids_.data(), ids_.size());
    for (int32_t id : ids_) Emit(id);
  }

  // Encodes carry_, a long piece seen so far, window by window. Without
  // `complete` the piece goes on and its tail stays in carry_.
  void FlushCarry(bool complete) {
    size_t window = tokenizer_.options_.bpe_window_bytes;
    while (!Full()) {
      if (window == 0 || carry_.size() <= window) {
        if (!complete) return;
        std::string piece = std::move(carry_);
        carry_.clear();
        if (!piece.empty()) EncodePiece(piece);
        return;
      }
      Bpe(std::string_view(carry_).substr(0, window), /*end_of_word=*/false);
      size_t keep_until = window - kWindowMarginBytes;
      size_t consumed = 0;
      for (int32_t k = 0; k >= 0 && !Full(); k = symbols_[k].next) {
        // The first token always goes, so every window makes progress.
        if (consumed > 0 && consumed + symbols_[k].bytes > keep_until) break;
        Emit(symbols_[k].id);
        consumed += symbols_[k].bytes;
      }
      carry_.erase(0, consumed);
    }
  }

  // Byte-level BPE of `bytes` into symbols_, a linked list from index 0.
  // Always merges the lowest-ranked adjacent pair, leftmost first.
  void Bpe(std::string_view bytes, bool end_of_word) {
    symbols_.clear();
    heap_.clear();
    int32_t count = static_cast<int32_t>(bytes.size());
    for (int32_t k = 0; k < count; ++k) {
      uint8_t byte = static_cast<uint8_t>(bytes[k]);
      bool last = k + 1 == count;
      int32_t id = last && end_of_word ? model_.byte_end_id[byte] : model_.byte_id[byte];
      symbols_.push_back(Symbol{id, k - 1, last ? -1 : k + 1, 1});
    }
    for (int32_t k = 0; k + 1 < count; ++k) PushCandidate(k);
    while (!heap_.empty()) {
      std::pop_heap(heap_.begin(), heap_.end());
      Candidate top = heap_.back();
      heap_.pop_back();
      Symbol& left = symbols_[top.pos];
      if (left.bytes == 0 || left.next < 0) continue;
      Symbol& right = symbols_[left.next];
      uint32_t rank;
      int32_t merged;
      // Stale entries: the pair at pos changed since it was queued.
      if (!model_.Merge(left.id, right.id, &rank, &merged) || merged != top.merged) {
        continue;
      }
      left.id = merged;
      left.bytes += right.bytes;
      right.bytes = 0;
      left.next = right.next;
      if (left.next >= 0) symbols_[left.next].prev = top.pos;
      if (left.prev >= 0) PushCandidate(left.prev);
      PushCandidate(top.pos);
    }
  }

  void PushCandidate(int32_t pos) {
    const Symbol& left = symbols_[pos];
    if (left.next < 0) return;
    uint32_t rank;
    int32_t merged;
    if (model_.Merge(left.id, symbols_[left.next].id, &rank, &merged)) {
      heap_.push_back(Candidate{rank, pos, merged});
      std::push_heap(heap_.begin(), heap_.end());
    }
  }

  const Tokenizer& tokenizer_;
  const Model& model_;
  const uint8_t* raw_;
  size_t raw_size_;
  size_t limit_;
  std::vector<int32_t>* out_;

  // Normalized text of the current segment not yet cut into pieces, from
  // next_ on, with the regex class of each code point.
  std::vector<UChar32> norm_;
  std::vector<CharClass> class_;
  size_t next_ = 0;
  bool previous_space_ = false;
  // kLetter or kOther while a long run is being fed to carry_.
  CharClass long_class_ = kSpace;
  std::string carry_;

  std::vector<UChar32> chunk_;
  icu::UnicodeString source_;
  icu::UnicodeString normalized_;
  std::string piece_;
  std::vector<int32_t> ids_;
  std::vector<Symbol> symbols_;
  std::vector<Candidate> heap_;
};

namespace tokenizer_internal {

TokenizerOptions ValidateOptions(const TokenizerOptions& options) {
  if (options.context_length < 2) {
    throw ClipError(ErrorCode::kInvalidArgument,
                    "Expected context_length >= 2 for TokenizerOptions but "
                    "received " +
                        std::to_string(options.context_length));
  }
  if (options.bpe_window_bytes != 0 && options.bpe_window_bytes < 2 * kWindowMarginBytes) {
    throw ClipError(ErrorCode::kInvalidArgument, "Expected 0 or >= " + std::to_string(2 * kWindowMarginBytes) +
                                                     " for TokenizerOptions.bpe_window_bytes but received " +
                                                     std::to_string(options.bpe_window_bytes));
  }
  return options;
}

}  // namespace tokenizer_internal

Tokenizer::Tokenizer(std::unique_ptr<const Model> model, const TokenizerOptions& options)
    : options_(tokenizer_internal::ValidateOptions(options)), model_(std::move(model)) {
  if (options_.cache_capacity > 0) {
    cache_ = std::make_unique<WordCache>(options_.cache_capacity);
  }
}

Tokenizer::~Tokenizer() = default;

size_t Tokenizer::vocab_size() const { return model_->vocab_size; }

void Tokenizer::EncodeContent(std::string_view utf8, size_t max_content, std::vector<int32_t>* content) const {
  Session session(*this, utf8, max_content, content);
  session.Run();
}

int Tokenizer::EncodePadded(std::string_view utf8, int32_t* out, bool* truncated) const {
  size_t room = static_cast<size_t>(options_.context_length) - 2;
  std::vector<int32_t> content;
  content.reserve(room + 1);
  // One token more than fits tells truncation apart from an exact fit.
  EncodeContent(utf8, room + 1, &content);
  if (truncated != nullptr) *truncated = content.size() > room;
  if (content.size() > room) content.resize(room);
  int length = 0;
  out[length++] = options_.bos;
  for (int32_t id : content) out[length++] = id;
  out[length++] = options_.eos;
  std::fill(out + length, out + options_.context_length, options_.pad);
  return length;
}

int Tokenizer::EncodePadded(std::string_view utf8, int32_t* out) const { return EncodePadded(utf8, out, nullptr); }

std::vector<int32_t> Tokenizer::Encode(std::string_view utf8) const {
  std::vector<int32_t> ids(static_cast<size_t>(options_.context_length));
  int length = EncodePadded(utf8, ids.data(), nullptr);
  ids.resize(static_cast<size_t>(length));
  return ids;
}

}  // namespace clip

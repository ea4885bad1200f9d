// One-call zlib stream decoder; see inflate.h for what it accepts.
//
// Huffman codes are decoded through tables indexed by the next bits of input
// (11 bits for literals and lengths, 8 for distances, with second-level tables
// for longer codes), one 32-bit entry per index that holds the symbol's value,
// its code length and its extra bits, so that a literal costs one lookup. The
// bit buffer holds at least 56 bits after every refill: enough for a length
// code, its extra bits, a distance code and its extra bits without another.

#include "inflate.h"

#include <zlib.h>

#include <algorithm>
#include <cstring>

#include "cpu_features.h"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define CLIP_INFLATE_X86 1
#endif

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "inflate.cc reads the bit stream as little-endian words"
#endif

namespace clip {
namespace decode {
namespace {

// A table entry:
//   bits 0-4    bits of input the code takes (a subtable link: the main table's bits); bit 5
//               is clear, so that a shift by the entry (low 6 bits) drops the code
//   bit 7       two literals: the main table's entries whose bits hold two whole literal codes
//   bits 8-11   extra bits that follow the code (lengths, distances); a link: the subtable's index bits
//   bit 12      literal
//   bit 13      link to a subtable
//   bit 14      end of block
//   bit 15      invalid code (reserved symbols, and the unused half of a one-code code)
//   bits 16-31  the literal (the second one in bits 24-31), the length or distance base, or the
//               subtable's offset
constexpr uint32_t kLiteral = 1u << 12;
constexpr uint32_t kSubtable = 1u << 13;
constexpr uint32_t kEndOfBlock = 1u << 14;
constexpr uint32_t kInvalid = 1u << 15;
constexpr uint32_t kTwoLiterals = 1u << 7;

constexpr int kMaxCodeBits = 15;
constexpr int kLitLenBits = 11;
constexpr int kDistBits = 8;
constexpr int kCodeLenBits = 7;
constexpr int kLitLenSymbols = 288;  // 286 and 287 exist only in the fixed code, reserved
constexpr int kDistSymbols = 32;     // 30 and 31 likewise
constexpr int kCodeLenSymbols = 19;

// Each subtable holds at least one code of its own, and none is wider than
// the longest code's bits beyond the main table.
constexpr int kLitLenTableSize = (1 << kLitLenBits) + kLitLenSymbols * (1 << (kMaxCodeBits - kLitLenBits));
constexpr int kDistTableSize = (1 << kDistBits) + kDistSymbols * (1 << (kMaxCodeBits - kDistBits));

constexpr uint16_t kLengthBase[29] = {3,  4,  5,  6,  7,  8,  9,  10, 11,  13,  15,  17,  19,  23, 27,
                                      31, 35, 43, 51, 59, 67, 83, 99, 115, 131, 163, 195, 227, 258};
constexpr uint8_t kLengthExtra[29] = {0, 0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2,
                                      2, 3, 3, 3, 3, 4, 4, 4, 4, 5, 5, 5, 5, 0};
constexpr uint16_t kDistBase[30] = {1,    2,    3,    4,    5,    7,    9,    13,    17,    25,
                                    33,   49,   65,   97,   129,  193,  257,  385,   513,   769,
                                    1025, 1537, 2049, 3073, 4097, 6145, 8193, 12289, 16385, 24577};
constexpr uint8_t kDistExtra[30] = {0, 0, 0, 0, 1, 1, 2, 2,  3,  3,  4,  4,  5,  5,  6,
                                    6, 7, 7, 8, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13, 13};
constexpr uint8_t kCodeLengthOrder[kCodeLenSymbols] = {16, 17, 18, 0, 8,  7, 9,  6, 10, 5,
                                                       11, 4,  12, 3, 13, 2, 14, 1, 15};

enum class Alphabet { kCodeLengths, kLitLen, kDist };

uint32_t SymbolEntry(Alphabet alphabet, int symbol) {
  switch (alphabet) {
    case Alphabet::kCodeLengths:
      return static_cast<uint32_t>(symbol) << 16;
    case Alphabet::kLitLen:
      if (symbol < 256) return kLiteral | (static_cast<uint32_t>(symbol) << 16);
      if (symbol == 256) return kEndOfBlock;
      if (symbol < 286) {
        return (static_cast<uint32_t>(kLengthBase[symbol - 257]) << 16) |
               (static_cast<uint32_t>(kLengthExtra[symbol - 257]) << 8);
      }
      return kInvalid;
    case Alphabet::kDist:
      if (symbol < 30) {
        return (static_cast<uint32_t>(kDistBase[symbol]) << 16) | (static_cast<uint32_t>(kDistExtra[symbol]) << 8);
      }
      return kInvalid;
  }
  return kInvalid;
}

uint32_t ReverseBits(uint32_t code, int bits) {
  uint32_t reversed = 0;
  for (int i = 0; i < bits; ++i) {
    reversed = (reversed << 1) | (code & 1);
    code >>= 1;
  }
  return reversed;
}

#if CLIP_INFLATE_X86
// BuildTable's pairing of literals, 16 entries per step (a photo's PNG has a
// dynamic block, and so a table to build, every 30,000 symbols or so; the
// scalar loop's branches follow each entry). Descending in steps of 16:
// every index gathered lies below the step's first entry (i >> bits < i),
// or, in the lowest step, is read before the step stores.
// GCC 12's AVX-512 intrinsics initialize their undefined operands with
// themselves, which -Wmaybe-uninitialized reports (GCC bug 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
__attribute__((target("avx512f"))) void PairLiteralsAvx512(uint32_t* table, uint32_t main_size, int root) {
  const __m512i literal = _mm512_set1_epi32(static_cast<int>(kLiteral));
  const __m512i bits_mask = _mm512_set1_epi32(0x1F);
  const __m512i byte_mask = _mm512_set1_epi32(0x00FF0000);
  const __m512i limit = _mm512_set1_epi32(root + 1);
  const __m512i pair_flags = _mm512_set1_epi32(static_cast<int>(kLiteral | kTwoLiterals));
  const __m512i lanes = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
  for (uint32_t i = main_size; i >= 16;) {
    i -= 16;
    const __m512i first = _mm512_loadu_si512(table + i);
    const __mmask16 first_literal = _mm512_test_epi32_mask(first, literal);
    const __m512i first_bits = _mm512_and_si512(first, bits_mask);
    const __m512i index =
        _mm512_srlv_epi32(_mm512_add_epi32(lanes, _mm512_set1_epi32(static_cast<int>(i))), first_bits);
    const __m512i second = _mm512_mask_i32gather_epi32(_mm512_setzero_si512(), first_literal, index, table, 4);
    const __m512i total_bits = _mm512_add_epi32(first_bits, _mm512_and_si512(second, bits_mask));
    const __mmask16 pair =
        _mm512_mask_test_epi32_mask(first_literal, second, literal) & _mm512_cmplt_epi32_mask(total_bits, limit);
    const __m512i paired =
        _mm512_or_si512(_mm512_or_si512(pair_flags, _mm512_and_si512(first, byte_mask)),
                        _mm512_or_si512(_mm512_slli_epi32(_mm512_and_si512(second, byte_mask), 8), total_bits));
    _mm512_mask_storeu_epi32(table + i, pair, paired);
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

// Builds the decoding table of the canonical Huffman code with code lengths
// lens[0..n): a main table of 2^root entries, then the subtables. Refuses
// what zlib's inflate refuses: an over-subscribed code, and an incomplete one
// except, for literals/lengths and distances, a single one-bit code or (for
// distances) no code at all, whose unused entries decode as invalid.
bool BuildTable(const uint8_t* lens, int n, Alphabet alphabet, int root, uint32_t* table, int capacity) {
  int count[kMaxCodeBits + 1] = {};
  for (int s = 0; s < n; ++s) ++count[lens[s]];
  count[0] = 0;
  int max_bits = kMaxCodeBits;
  while (max_bits > 0 && count[max_bits] == 0) --max_bits;
  int left = 1;
  for (int bits = 1; bits <= kMaxCodeBits; ++bits) {
    left = (left << 1) - count[bits];
    if (left < 0) return false;  // over-subscribed
  }
  if (left > 0 && (alphabet == Alphabet::kCodeLengths || max_bits > 1)) return false;  // incomplete

  // Symbols in canonical order (by code length, then symbol) and the first
  // code of each length.
  int offset[kMaxCodeBits + 2] = {};
  for (int bits = 1; bits <= kMaxCodeBits; ++bits) offset[bits + 1] = offset[bits] + count[bits];
  int sorted[kLitLenSymbols];
  for (int s = 0; s < n; ++s) {
    if (lens[s] != 0) sorted[offset[lens[s]]++] = s;
  }
  uint32_t next_code[kMaxCodeBits + 1] = {};
  uint32_t code = 0;
  for (int bits = 1; bits <= kMaxCodeBits; ++bits) {
    code = (code + static_cast<uint32_t>(count[bits - 1])) << 1;
    next_code[bits] = code;
  }

  const uint32_t main_size = 1u << root;
  std::fill(table, table + main_size, kInvalid);
  int remaining[kMaxCodeBits + 1];
  std::copy(count, count + kMaxCodeBits + 1, remaining);
  int used = static_cast<int>(main_size);
  uint32_t current_prefix = main_size;  // none yet
  uint32_t sub_offset = 0;
  int sub_bits = 0;
  const int codes = offset[kMaxCodeBits + 1];
  for (int i = 0; i < codes; ++i) {
    const int symbol = sorted[i];
    const int bits = lens[symbol];
    const uint32_t reversed = ReverseBits(next_code[bits]++, bits);
    const uint32_t entry = SymbolEntry(alphabet, symbol);
    if (bits <= root) {
      for (uint32_t j = reversed; j < main_size; j += 1u << bits) table[j] = entry | static_cast<uint32_t>(bits);
      --remaining[bits];
      continue;
    }
    const uint32_t prefix = reversed & (main_size - 1);
    if (prefix != current_prefix) {
      // A new subtable: the codes under this prefix come next in canonical
      // order; it is as deep as needed for them to fill it.
      current_prefix = prefix;
      sub_bits = bits - root;
      int room = 1 << sub_bits;
      while (sub_bits + root < max_bits) {
        room -= remaining[sub_bits + root];
        if (room <= 0) break;
        ++sub_bits;
        room <<= 1;
      }
      if (used + (1 << sub_bits) > capacity) return false;  // cannot happen within the bounds above
      sub_offset = static_cast<uint32_t>(used);
      used += 1 << sub_bits;
      table[prefix] =
          kSubtable | (sub_offset << 16) | (static_cast<uint32_t>(sub_bits) << 8) | static_cast<uint32_t>(root);
    }
    const int sub_len = bits - root;
    for (uint32_t j = reversed >> root; j < (1u << sub_bits); j += 1u << sub_len) {
      table[sub_offset + j] = entry | static_cast<uint32_t>(sub_len);
    }
    --remaining[bits];
  }
  if (alphabet == Alphabet::kLitLen) {
    // Where the index holds a literal's code and, after it, the whole code of
    // another literal, the entry gives both. Filtered image rows make short
    // literal codes common. Descending, so that every entry read is still a
    // single symbol's (i >> bits < i, and 0 reads itself first).
#if CLIP_INFLATE_X86
    static_assert((1 << kLitLenBits) % 16 == 0, "PairLiteralsAvx512 takes 16 entries per step");
    if (GetCpuFeatures().avx512f) {
      PairLiteralsAvx512(table, main_size, root);
      return true;
    }
#endif
    for (uint32_t i = main_size; i-- > 0;) {
      const uint32_t first = table[i];
      if (!(first & kLiteral)) continue;
      const uint32_t first_bits = first & 0x1F;
      const uint32_t second = table[i >> first_bits];
      if (!(second & kLiteral) || first_bits + (second & 0x1F) > static_cast<uint32_t>(root)) continue;
      table[i] = kLiteral | kTwoLiterals | (first & 0x00FF0000u) | ((second & 0x00FF0000u) << 8) |
                 (first_bits + (second & 0x1F));
    }
  }
  return true;
}

struct Tables {
  uint32_t lit_len[kLitLenTableSize];
  uint32_t dist[kDistTableSize];
  uint32_t code_len[1 << kCodeLenBits];
};

// The dynamic blocks' tables of the calling thread.
__attribute__((noinline)) Tables& ThreadTables() {
  thread_local Tables tables;
  return tables;
}

const Tables& FixedTables() {
  static const Tables* const fixed = [] {
    auto* tables = new Tables();
    uint8_t lens[kLitLenSymbols];
    std::fill(lens, lens + 144, 8);
    std::fill(lens + 144, lens + 256, 9);
    std::fill(lens + 256, lens + 280, 7);
    std::fill(lens + 280, lens + kLitLenSymbols, 8);
    BuildTable(lens, kLitLenSymbols, Alphabet::kLitLen, kLitLenBits, tables->lit_len, kLitLenTableSize);
    std::fill(lens, lens + kDistSymbols, 5);
    BuildTable(lens, kDistSymbols, Alphabet::kDist, kDistBits, tables->dist, kDistTableSize);
    return tables;
  }();
  return *fixed;
}

struct BitReader {
  const uint8_t* next;
  const uint8_t* end;
  uint64_t buf = 0;
  uint32_t count = 0;  // valid bits at the bottom of buf
  // Zero bytes added past the end of the input. Virtual bytes sit above every
  // real one in buf, so a stream used them when fewer than 8 * overrun bits
  // are left.
  size_t overrun = 0;

  BitReader(const uint8_t* begin, const uint8_t* stop) : next(begin), end(stop) {}

  // At least 56 valid bits afterwards. The fast path loads 8 bytes and counts
  // the whole ones; the bits of a partly counted byte above `count` are that
  // byte's own, so loading it again later sets the same bits.
  void Refill() {
    if (end - next >= 8) {
      uint64_t word;
      std::memcpy(&word, next, 8);
      buf |= word << count;
      next += (63 - count) >> 3;
      count |= 56;
    } else {
      while (count <= 56) {
        if (next < end) {
          buf |= static_cast<uint64_t>(*next++) << count;
        } else {
          ++overrun;
        }
        count += 8;
      }
    }
  }
  uint32_t Peek(unsigned bits) const { return static_cast<uint32_t>(buf & ((uint64_t{1} << bits) - 1)); }
  void Drop(unsigned bits) {
    buf >>= bits;
    count -= bits;
  }
  uint32_t Take(unsigned bits) {
    const uint32_t value = Peek(bits);
    Drop(bits);
    return value;
  }
  bool Truncated() const { return overrun * 8 > count; }
  // Skips to the next byte boundary; returns the offset from `begin` of the
  // first byte not read yet.
  size_t AlignedOffset(const uint8_t* begin) {
    Drop(count & 7);
    return static_cast<size_t>(next - begin) + overrun - count / 8;
  }
  void Restart(const uint8_t* at) {
    next = at;
    buf = 0;
    count = 0;
    overrun = 0;
  }
};

// Copies `length` bytes from `distance` bytes back; the caller has checked
// that both lie within the output.
inline void CopyMatch(uint8_t* out, uint32_t distance, uint32_t length, const uint8_t* out_end) {
  const uint8_t* src = out - distance;
  if (static_cast<size_t>(out_end - out) >= length + size_t{7}) {
    if (distance >= 8) {
      // Whole words, the last one past the match: each word's source was
      // written at least 8 bytes earlier.
      uint8_t* const stop = out + length;
      do {
        std::memcpy(out, src, 8);
        out += 8;
        src += 8;
      } while (out < stop);
      return;
    }
    if (distance == 1) {
      std::memset(out, *src, length);
      return;
    }
  }
  for (uint32_t i = 0; i < length; ++i) out[i] = src[i];
}

inline void StoreLiterals(uint8_t* out, uint32_t entry) {
  const uint16_t literals = static_cast<uint16_t>(entry >> 16);
  std::memcpy(out, &literals, 2);
}

// Literal lookups the fast loop makes from one refill of at least 56 bits.
constexpr int kLookupsPerRefill = 56 / kLitLenBits;

// Room the fast loop keeps at the end of the output: a match of 258 bytes
// copied in words, or two literals per lookup of one refill.
constexpr size_t kFastOutputRoom = 258 + 8;
static_assert(kFastOutputRoom >= 2 * kLookupsPerRefill + 1, "a refill's literals and the spare byte fit");

// Decodes one block's symbols up to its end-of-block code: a fast loop while
// at least 16 bytes of input and kFastOutputRoom bytes of output are left (no
// bounds checks inside; the bit buffer in locals, as stores to the output may
// alias anything), then one that checks every step.
bool DecodeBlock(BitReader& br, const uint32_t* lit_len, const uint32_t* dist, uint8_t* out_begin, uint8_t** out_next,
                 uint8_t* out_end) {
  constexpr uint32_t kLitLenMask = (1u << kLitLenBits) - 1;
  constexpr uint32_t kDistMask = (1u << kDistBits) - 1;
  uint8_t* out = *out_next;
  const uint8_t* next = br.next;
  const uint8_t* const in_end = br.end;
  uint64_t buf = br.buf;
  uint32_t count = br.count;
  auto low_bits = [&buf](uint32_t bits) { return static_cast<uint32_t>(buf & ((uint64_t{1} << bits) - 1)); };
  auto drop = [&buf, &count](uint32_t bits) {
    buf >>= bits;
    count -= bits;
  };
  bool ended = false;
  while (in_end - next >= 16 && static_cast<size_t>(out_end - out) >= kFastOutputRoom) {
    uint64_t word;
    std::memcpy(&word, next, 8);
    buf |= word << count;
    next += (63 - count) >> 3;
    count |= 56;
    uint32_t entry = lit_len[buf & kLitLenMask];
    if (entry & kLiteral) {
      // As many lookups of at most kLitLenBits each as one refill's 56 bits
      // cover (five: 4-7% less time on photos' PNGs than three), each one or
      // two literals (both bytes stored, the second overwritten later when
      // there is one literal only).
      drop(entry & 63);
      StoreLiterals(out, entry);
      out += 1 + ((entry >> 7) & 1);
      for (int k = 1; k < kLookupsPerRefill; ++k) {
        entry = lit_len[buf & kLitLenMask];
        if (!(entry & kLiteral)) break;
        drop(entry & 63);
        StoreLiterals(out, entry);
        out += 1 + ((entry >> 7) & 1);
      }
      continue;
    }
    if (entry & kSubtable) {
      drop(kLitLenBits);
      entry = lit_len[(entry >> 16) + low_bits((entry >> 8) & 0xF)];
    }
    drop(entry & 63);
    if (entry & kLiteral) {
      *out++ = static_cast<uint8_t>(entry >> 16);
      continue;
    }
    if (entry & (kEndOfBlock | kInvalid)) {
      if (entry & kInvalid) return false;
      ended = true;
      break;
    }
    const uint32_t length_extra = (entry >> 8) & 0xF;
    const uint32_t length = (entry >> 16) + low_bits(length_extra);
    drop(length_extra);
    entry = dist[buf & kDistMask];
    if (entry & kSubtable) {
      drop(kDistBits);
      entry = dist[(entry >> 16) + low_bits((entry >> 8) & 0xF)];
    }
    if (entry & kInvalid) return false;
    drop(entry & 63);
    const uint32_t distance_extra = (entry >> 8) & 0xF;
    const uint32_t distance = (entry >> 16) + low_bits(distance_extra);
    drop(distance_extra);
    if (distance > static_cast<size_t>(out - out_begin)) return false;
    CopyMatch(out, distance, length, out_end);
    out += length;
  }
  br.next = next;
  br.buf = buf;
  br.count = count;
  if (ended) {
    *out_next = out;
    return true;
  }
  for (;;) {
    br.Refill();
    uint32_t entry = lit_len[br.Peek(kLitLenBits)];
    if (entry & kSubtable) {
      br.Drop(kLitLenBits);
      entry = lit_len[(entry >> 16) + br.Peek((entry >> 8) & 0xF)];
    }
    br.Drop(entry & 0x1F);
    if (entry & kLiteral) {
      const size_t literals = 1 + ((entry >> 7) & 1);
      if (static_cast<size_t>(out_end - out) < literals) return false;
      *out++ = static_cast<uint8_t>(entry >> 16);
      if (literals == 2) *out++ = static_cast<uint8_t>(entry >> 24);
      continue;
    }
    if (entry & (kEndOfBlock | kInvalid)) {
      if (entry & kInvalid) return false;
      break;
    }
    const uint32_t length = (entry >> 16) + br.Take((entry >> 8) & 0xF);
    entry = dist[br.Peek(kDistBits)];
    if (entry & kSubtable) {
      br.Drop(kDistBits);
      entry = dist[(entry >> 16) + br.Peek((entry >> 8) & 0xF)];
    }
    if (entry & kInvalid) return false;
    br.Drop(entry & 0x1F);
    const uint32_t distance = (entry >> 16) + br.Take((entry >> 8) & 0xF);
    if (distance > static_cast<size_t>(out - out_begin) || length > static_cast<size_t>(out_end - out)) {
      return false;
    }
    CopyMatch(out, distance, length, out_end);
    out += length;
  }
  *out_next = out;
  return true;
}

// Reads a dynamic block's code lengths and builds its tables.
bool ReadDynamicTables(BitReader& br, Tables* tables) {
  br.Refill();
  const int lit_len_count = static_cast<int>(br.Take(5)) + 257;
  const int dist_count = static_cast<int>(br.Take(5)) + 1;
  const int code_len_count = static_cast<int>(br.Take(4)) + 4;
  if (lit_len_count > 286 || dist_count > 30) return false;
  uint8_t code_lens[kCodeLenSymbols] = {};
  for (int i = 0; i < code_len_count; ++i) {
    br.Refill();
    code_lens[kCodeLengthOrder[i]] = static_cast<uint8_t>(br.Take(3));
  }
  if (!BuildTable(code_lens, kCodeLenSymbols, Alphabet::kCodeLengths, kCodeLenBits, tables->code_len,
                  1 << kCodeLenBits)) {
    return false;
  }
  uint8_t lens[286 + 30];
  const int total = lit_len_count + dist_count;
  int n = 0;
  while (n < total) {
    br.Refill();
    const uint32_t entry = tables->code_len[br.Peek(kCodeLenBits)];  // complete: never invalid
    br.Drop(entry & 0x1F);
    const uint32_t symbol = entry >> 16;
    if (symbol < 16) {
      lens[n++] = static_cast<uint8_t>(symbol);
      continue;
    }
    uint8_t value = 0;
    int repeat;
    if (symbol == 16) {
      if (n == 0) return false;
      value = lens[n - 1];
      repeat = 3 + static_cast<int>(br.Take(2));
    } else if (symbol == 17) {
      repeat = 3 + static_cast<int>(br.Take(3));
    } else {
      repeat = 11 + static_cast<int>(br.Take(7));
    }
    if (repeat > total - n) return false;
    std::memset(lens + n, value, static_cast<size_t>(repeat));
    n += repeat;
  }
  if (lens[256] == 0) return false;  // no end-of-block code
  return BuildTable(lens, lit_len_count, Alphabet::kLitLen, kLitLenBits, tables->lit_len, kLitLenTableSize) &&
         BuildTable(lens + lit_len_count, dist_count, Alphabet::kDist, kDistBits, tables->dist, kDistTableSize);
}

#if CLIP_INFLATE_X86
__attribute__((target("avx2"))) uint32_t HorizontalSum(__m256i v) {
  __m128i sum = _mm_add_epi32(_mm256_castsi256_si128(v), _mm256_extracti128_si256(v, 1));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(1, 0, 3, 2)));
  sum = _mm_add_epi32(sum, _mm_shuffle_epi32(sum, _MM_SHUFFLE(2, 3, 0, 1)));
  return static_cast<uint32_t>(_mm_cvtsi128_si32(sum));
}

// 32 bytes per step: s1 gains the bytes' sum, s2 the bytes weighted 32..1
// plus 32 times every earlier step's s1.
__attribute__((target("avx2"))) uint32_t Adler32Avx2(uint32_t adler, const uint8_t* data, size_t size) {
  constexpr uint32_t kBase = 65521;
  // Between reductions every lane and the scalar sums stay below 2^32 (zlib
  // reduces every 5552 bytes for the same reason).
  constexpr size_t kChunk = 5536;
  uint64_t s1 = adler & 0xFFFF;
  uint64_t s2 = adler >> 16;
  const __m256i weights = _mm256_setr_epi8(32, 31, 30, 29, 28, 27, 26, 25, 24, 23, 22, 21, 20, 19, 18, 17, 16, 15, 14,
                                           13, 12, 11, 10, 9, 8, 7, 6, 5, 4, 3, 2, 1);
  const __m256i ones = _mm256_set1_epi16(1);
  const __m256i zero = _mm256_setzero_si256();
  while (size >= 32) {
    const size_t chunk = std::min(size, kChunk) & ~size_t{31};
    __m256i sum = zero, earlier = zero, weighted = zero;
    for (size_t i = 0; i < chunk; i += 32) {
      const __m256i bytes = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(data + i));
      earlier = _mm256_add_epi32(earlier, sum);
      sum = _mm256_add_epi32(sum, _mm256_sad_epu8(bytes, zero));
      weighted = _mm256_add_epi32(weighted, _mm256_madd_epi16(_mm256_maddubs_epi16(bytes, weights), ones));
    }
    s2 = (s2 + s1 * chunk + 32 * uint64_t{HorizontalSum(earlier)} + HorizontalSum(weighted)) % kBase;
    s1 = (s1 + HorizontalSum(sum)) % kBase;
    data += chunk;
    size -= chunk;
  }
  const uint32_t head = static_cast<uint32_t>((s2 << 16) | s1);
  return size == 0 ? head : static_cast<uint32_t>(adler32_z(head, data, size));
}
#endif

}  // namespace

uint32_t Adler32(uint32_t adler, const uint8_t* data, size_t size) {
#if CLIP_INFLATE_X86
  static const bool avx2 = __builtin_cpu_supports("avx2");
  if (avx2) return Adler32Avx2(adler, data, size);
#endif
  return static_cast<uint32_t>(adler32_z(adler, data, size));
}

bool InflateZlib(const uint8_t* in, size_t in_size, uint8_t* out, size_t out_size) {
  // The zlib header as inflate checks it: the check bits, deflate, a window
  // of at most 32 KiB; a preset dictionary is refused (inflate would ask for one).
  if (in_size < 2) return false;
  const unsigned cmf = in[0];
  const unsigned flags = in[1];
  if (((cmf << 8) | flags) % 31 != 0 || (cmf & 0x0F) != 8 || (cmf >> 4) > 7 || (flags & 0x20) != 0) return false;

  // Fetched once: used in place, a thread_local's address is looked up again
  // (__tls_get_addr in a shared library) inside the table-building loops.
  Tables& dynamic = ThreadTables();
  const Tables& fixed = FixedTables();
  BitReader br(in + 2, in + in_size);
  uint8_t* next_out = out;
  uint8_t* const out_end = out + out_size;
  bool last = false;
  while (!last) {
    br.Refill();
    last = br.Take(1) != 0;
    const uint32_t type = br.Take(2);
    if (type == 0) {
      size_t at = br.AlignedOffset(in);
      if (br.Truncated() || in_size - at < 4) return false;
      const uint32_t length = in[at] | (uint32_t{in[at + 1]} << 8);
      const uint32_t inverse = in[at + 2] | (uint32_t{in[at + 3]} << 8);
      if (length != (~inverse & 0xFFFF)) return false;
      at += 4;
      if (in_size - at < length || static_cast<size_t>(out_end - next_out) < length) return false;
      std::memcpy(next_out, in + at, length);
      next_out += length;
      br.Restart(in + at + length);
    } else if (type == 1) {
      if (!DecodeBlock(br, fixed.lit_len, fixed.dist, out, &next_out, out_end)) return false;
    } else if (type == 2) {
      if (!ReadDynamicTables(br, &dynamic) ||
          !DecodeBlock(br, dynamic.lit_len, dynamic.dist, out, &next_out, out_end)) {
        return false;
      }
    } else {
      return false;
    }
    if (br.Truncated()) return false;
  }
  const size_t at = br.AlignedOffset(in);
  if (br.Truncated() || in_size - at < 4 || next_out != out_end) return false;
  const uint32_t expected =
      (uint32_t{in[at]} << 24) | (uint32_t{in[at + 1]} << 16) | (uint32_t{in[at + 2]} << 8) | uint32_t{in[at + 3]};
  return Adler32(1, out, out_size) == expected;
}

}  // namespace decode
}  // namespace clip

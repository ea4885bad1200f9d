// Baseline JPEG entropy decoding ahead of libjpeg; see jpeg_entropy.h.

#include "jpeg_entropy.h"

#include <algorithm>
#include <atomic>
#include <cstring>
#include <memory>
#include <new>

// struct jpeg_entropy_decoder, whose decode_mcu the replay replaces. Its first
// two members (start_pass, decode_mcu) are the same in libjpeg 6b and every
// libjpeg-turbo since.
#include <jpegint.h>

namespace clip {
namespace decode {
namespace {

std::atomic<bool> g_enabled{true};
std::atomic<uint64_t> g_predecoded{0};

// Table lookups read this many bits: a 2048-entry table of each kind per
// component (16 KB for AC), built once per scan.
constexpr int kLookBits = 11;
constexpr uint32_t kLookMask = (1u << kLookBits) - 1;

// Zigzag order to natural order; positions 64 and up (past the block's end,
// which only a corrupt scan reaches) to 64, which the decoder checks for.
struct NaturalOrder {
  uint8_t index[192];
  constexpr NaturalOrder() : index() {
    constexpr uint8_t kZigzag[64] = {0,  1,  8,  16, 9,  2,  3,  10, 17, 24, 32, 25, 18, 11, 4,  5,
                                     12, 19, 26, 33, 40, 48, 41, 34, 27, 20, 13, 6,  7,  14, 21, 28,
                                     35, 42, 49, 56, 57, 50, 43, 36, 29, 22, 15, 23, 30, 37, 44, 51,
                                     58, 59, 52, 45, 38, 31, 39, 46, 53, 60, 61, 54, 47, 55, 62, 63};
    for (int i = 0; i < 192; ++i) index[i] = i < 64 ? kZigzag[i] : 64;
  }
};
constexpr NaturalOrder kNatural;

// A Huffman table in canonical form (JPEG's Annex F decoding), for codes
// longer than the lookups.
struct Canonical {
  int32_t max_code[18];  // the largest code of each length, -1 for none
  int32_t value_offset[18];
  uint8_t values[256];
};

// The codes of `table` by symbol order; false for a table libjpeg would
// refuse (more than 256 codes, or codes that do not fit their lengths).
bool CanonicalCodes(const JHUFF_TBL* table, Canonical* canonical, uint16_t* codes, uint8_t* lengths, int* count) {
  int n = 0;
  uint32_t code = 0;
  for (int length = 1; length <= 16; ++length) {
    const int codes_of_length = table->bits[length];
    if (n + codes_of_length > 256) return false;
    if (codes_of_length > 0) {
      canonical->value_offset[length] = n - static_cast<int32_t>(code);
      for (int i = 0; i < codes_of_length; ++i, ++n) {
        lengths[n] = static_cast<uint8_t>(length);
        codes[n] = static_cast<uint16_t>(code++);
      }
      if (code > (1u << length)) return false;
      canonical->max_code[length] = static_cast<int32_t>(code - 1);
    } else {
      canonical->value_offset[length] = 0;
      canonical->max_code[length] = -1;
    }
    code <<= 1;
  }
  canonical->max_code[17] = 0x7FFFFFFF;
  canonical->value_offset[17] = 0;
  std::memcpy(canonical->values, table->huffval, 256);
  *count = n;
  return true;
}

// JPEG's sign extension of an s-bit magnitude (F.12).
inline int Extend(uint32_t bits, int s) {
  return bits < (1u << (s - 1)) ? static_cast<int>(bits) - (1 << s) + 1 : static_cast<int>(bits);
}

// AC lookup entry: up to two symbols, each with its extra bits.
//   bits 0-5    bits of both symbols (codes and extra bits); 0: none decoded here
//   bits 6-11   bits of the first symbol. With bits 0-5 at 0: the length of a
//               code whose extra bits do not fit (its symbol in bits 32-39), or
//               0 for a code longer than the lookup
//   bits 14-20  the first symbol's step: run + 1 for a coefficient, 16 for
//               ZRL, 64 for end of block (which stops the block)
//   bits 21-27  the second symbol's step
//   bits 32-47  the first coefficient, 48-63 the second (0 for ZRL and EOB)
struct AcTable {
  uint64_t look[1u << kLookBits];
  Canonical canonical;
};

// DC lookup entry: bit 7 set: bits 0-5 the code and extra bits' length,
// bits 16-31 the difference. Clear: bits 0-5 the code's length (its
// magnitude category in bits 8-11) when its extra bits do not fit, or 0.
struct DcTable {
  uint32_t look[1u << kLookBits];
  Canonical canonical;
};

bool BuildAcTable(const JHUFF_TBL* table, AcTable* out) {
  uint16_t codes[256];
  uint8_t lengths[256];
  int count = 0;
  if (!CanonicalCodes(table, &out->canonical, codes, lengths, &count)) return false;
  uint64_t single[1u << kLookBits] = {};
  for (int i = 0; i < count; ++i) {
    const int length = lengths[i];
    if (length > kLookBits) break;  // codes come shortest first
    const int symbol = table->huffval[i];
    const int run = symbol >> 4;
    const int size = symbol & 15;
    const uint32_t first = static_cast<uint32_t>(codes[i]) << (kLookBits - length);
    for (uint32_t j = 0; j < (1u << (kLookBits - length)); ++j) {
      uint64_t entry;
      if (size == 0) {
        // ZRL skips 16 zeros; any other run with size 0 ends the block
        // (libjpeg's decoders read it as EOB).
        entry = static_cast<uint64_t>(length) * 0x41 | (static_cast<uint64_t>(run == 15 ? 16 : 64) << 14);
      } else if (length + size <= kLookBits) {
        const uint32_t extra = (j >> (kLookBits - length - size)) & ((1u << size) - 1);
        entry = static_cast<uint64_t>(length + size) * 0x41 | (static_cast<uint64_t>(run + 1) << 14) |
                (static_cast<uint64_t>(static_cast<uint16_t>(Extend(extra, size))) << 32);
      } else {
        entry = (static_cast<uint64_t>(length) << 6) | (static_cast<uint64_t>(symbol) << 32);
      }
      single[first + j] = entry;
    }
  }
  // A second symbol where the first does not end the block and the bits
  // after it hold all of the second one's.
  for (uint32_t index = 0; index < (1u << kLookBits); ++index) {
    uint64_t entry = single[index];
    const int first_bits = static_cast<int>(entry & 63);
    if (first_bits != 0 && first_bits < kLookBits && ((entry >> 14) & 127) < 64) {
      const uint64_t second = single[(index << first_bits) & kLookMask];
      const int second_bits = static_cast<int>(second & 63);
      if (second_bits != 0 && second_bits <= kLookBits - first_bits) {
        entry += static_cast<uint64_t>(second_bits);
        entry |= (((second >> 14) & 127) << 21) | ((second >> 32) & 0xFFFF) << 48;
      }
    }
    out->look[index] = entry;
  }
  return true;
}

bool BuildDcTable(const JHUFF_TBL* table, DcTable* out) {
  uint16_t codes[256];
  uint8_t lengths[256];
  int count = 0;
  if (!CanonicalCodes(table, &out->canonical, codes, lengths, &count)) return false;
  std::fill(out->look, out->look + (1u << kLookBits), 0u);
  for (int i = 0; i < count; ++i) {
    const int size = table->huffval[i];
    if (size > 15) return false;  // libjpeg refuses it too
    const int length = lengths[i];
    if (length > kLookBits) break;
    const uint32_t first = static_cast<uint32_t>(codes[i]) << (kLookBits - length);
    for (uint32_t j = 0; j < (1u << (kLookBits - length)); ++j) {
      uint32_t entry;
      if (length + size <= kLookBits) {
        const int diff = size == 0 ? 0 : Extend((j >> (kLookBits - length - size)) & ((1u << size) - 1), size);
        entry =
            (static_cast<uint32_t>(static_cast<uint16_t>(diff)) << 16) | 0x80u | static_cast<uint32_t>(length + size);
      } else {
        entry = (static_cast<uint32_t>(size) << 8) | static_cast<uint32_t>(length);
      }
      out->look[first + j] = entry;
    }
  }
  return true;
}

// The scan's entropy-coded bytes, most significant bit first, with JPEG's
// stuffed zero bytes dropped. Stops at a marker (0xFF then anything but 0):
// `next` stays on its 0xFF and zero bits are shifted in, counted in `padded`
// (as past the end of the data), so that reading into them is seen later.
// Passed by reference only to inlined functions and by value to the slow
// refill, so that it lives in registers.
struct BitReader {
  uint64_t bits;  // the next `count` bits, from the top
  int count;
  int padded;  // zero bits at the bottom of `bits` that are not data
  bool at_marker;
  const uint8_t* next;
  const uint8_t* end;
};

// The byte-by-byte refill, to at least 57 bits.
__attribute__((noinline)) BitReader RefillSlow(BitReader r) {
  while (r.count <= 56) {
    uint32_t byte = 0;
    if (!r.at_marker && r.next < r.end) {
      byte = *r.next;
      if (byte == 0xFF) {
        if (r.next + 1 < r.end && r.next[1] == 0) {
          r.next += 2;
        } else {
          r.at_marker = true;
          byte = 0;
          r.padded += 8;
        }
      } else {
        ++r.next;
      }
    } else {
      r.padded += 8;
    }
    r.bits |= static_cast<uint64_t>(byte) << (56 - r.count);
    r.count += 8;
  }
  return r;
}

// To at least 56 bits: eight bytes at once where none of them is 0xFF.
__attribute__((always_inline)) inline void Refill(BitReader& r) {
  if (r.end - r.next >= 8) {
    uint64_t word;
    std::memcpy(&word, r.next, 8);
    const uint64_t inverted = ~word;
    if (((inverted - 0x0101010101010101ull) & ~inverted & 0x8080808080808080ull) == 0) {
      r.bits |= __builtin_bswap64(word) >> r.count;
      r.next += (63 - r.count) >> 3;
      r.count |= 56;
      return;
    }
  }
  r = RefillSlow(r);
}

__attribute__((always_inline)) inline uint32_t Peek(const BitReader& r, int bits) {
  return static_cast<uint32_t>(r.bits >> (64 - bits));
}

__attribute__((always_inline)) inline void Drop(BitReader& r, int bits) {
  r.bits <<= bits;
  r.count -= bits;
}

// At a restart or the scan's end: the bits so far end within their last
// byte, and a marker follows right after it. Returns the marker's 0xFF.
const uint8_t* MarkerHere(BitReader& r) {
  r = RefillSlow(r);
  const int data_bits = r.count - r.padded;
  if (!r.at_marker || data_bits < 0 || data_bits >= 8 || r.next + 1 >= r.end) return nullptr;
  return r.next;
}

// libjpeg's decode_mcu, replaced: the MCU's coefficients from the list.
boolean ReplayMcu(j_decompress_ptr cinfo, JBLOCKROW* mcu_data) {
  auto* scan = static_cast<JpegScanCoefficients*>(cinfo->client_data);
  const int blocks = cinfo->blocks_in_MCU;
  // libjpeg asks for exactly the scan's MCUs; past them (which it never
  // does) the blocks stay zero.
  if (scan->next_block + static_cast<size_t>(blocks) > scan->blocks) return TRUE;
  for (int b = 0; b < blocks; ++b) {
    const uint32_t count = scan->counts[scan->next_block + b];
    const uint32_t* entries = scan->entries + scan->next_entry;
    scan->next_entry += count;
    if (mcu_data == nullptr) continue;  // skipped rows: decoded and dropped
    JCOEF* coefficients = mcu_data[b][0];
    for (uint32_t i = 0; i < count; ++i) {
      coefficients[entries[i] >> 16] = static_cast<JCOEF>(static_cast<int16_t>(entries[i] & 0xFFFF));
    }
  }
  scan->next_block += static_cast<size_t>(blocks);
  return TRUE;
}

bool Eligible(j_decompress_ptr cinfo) {
  if (!g_enabled.load(std::memory_order_relaxed)) return false;
  if (cinfo->progressive_mode || cinfo->arith_code || cinfo->data_precision != 8) return false;
  if (jpeg_has_multiple_scans(cinfo)) return false;
  // One sequential scan of every coefficient (a lossless scan has Se 0).
  if (cinfo->Ss != 0 || cinfo->Se != DCTSIZE2 - 1 || cinfo->Ah != 0 || cinfo->Al != 0) return false;
  if (cinfo->comps_in_scan < 1 || cinfo->comps_in_scan > MAX_COMPS_IN_SCAN) return false;
  if (cinfo->blocks_in_MCU < 1 || cinfo->blocks_in_MCU > D_MAX_BLOCKS_IN_MCU) return false;
  if (cinfo->entropy == nullptr || cinfo->src == nullptr || cinfo->unread_marker != 0) return false;
  if (cinfo->output_scanline != 0) return false;
  for (int ci = 0; ci < cinfo->comps_in_scan; ++ci) {
    const jpeg_component_info* component = cinfo->cur_comp_info[ci];
    if (component == nullptr || component->dc_tbl_no < 0 || component->dc_tbl_no >= NUM_HUFF_TBLS ||
        component->ac_tbl_no < 0 || component->ac_tbl_no >= NUM_HUFF_TBLS ||
        cinfo->dc_huff_tbl_ptrs[component->dc_tbl_no] == nullptr ||
        cinfo->ac_huff_tbl_ptrs[component->ac_tbl_no] == nullptr) {
      return false;
    }
  }
  return true;
}

size_t ScanBlocks(j_decompress_ptr cinfo) {
  return static_cast<size_t>(cinfo->MCUs_per_row) * cinfo->MCU_rows_in_scan * cinfo->blocks_in_MCU;
}

size_t CountsBytes(size_t blocks) { return (blocks + 3) & ~size_t{3}; }

// Room for the entries of a scan of `blocks` blocks in `data_bytes` bytes:
// each block's DC coefficient, and each AC one kept took at least two bits
// (a code and an extra bit). Checked before each block, which may write up to
// 66 (its 64, one past the 64th in a corrupt block, one written ahead and
// not kept), so that bits read past the data cannot overrun it.
constexpr size_t kBlockEntries = 66;
size_t EntryCapacity(size_t blocks, size_t data_bytes) { return blocks + data_bytes * 4 + kBlockEntries; }

// The scan's tables by table number (the components of a colour JPEG's scan
// use two of each: Cb and Cr share theirs), each built once.
struct ScanTables {
  DcTable dc[NUM_HUFF_TBLS];
  AcTable ac[NUM_HUFF_TBLS];
};

// A code longer than the lookups (F.16): its symbol (-1 for none of 16 bits
// or fewer) and length, which the caller drops. The bits come by value, so
// that the caller's stay in registers.
struct LongCode {
  int symbol;
  int length;
};
LongCode DecodeLongCode(uint64_t bits, const Canonical& canonical) {
  int length = kLookBits + 1;
  int32_t code = static_cast<int32_t>(bits >> (64 - length));
  while (code > canonical.max_code[length]) {
    if (++length > 16) return {-1, 0};
    code = static_cast<int32_t>(bits >> (64 - length));
  }
  return {canonical.values[(code + canonical.value_offset[length]) & 0xFF], length};
}

// Decodes every MCU of the scan; false where the scan is not clean.
bool DecodeScan(j_decompress_ptr cinfo, const ScanTables& tables, BitReader& reader, JpegScanCoefficients* out) {
  BitReader r = reader;
  const int blocks_in_mcu = cinfo->blocks_in_MCU;
  const size_t mcus = static_cast<size_t>(cinfo->MCUs_per_row) * cinfo->MCU_rows_in_scan;
  const unsigned restart_interval = cinfo->restart_interval;
  const DcTable* dc_of[D_MAX_BLOCKS_IN_MCU];
  const AcTable* ac_of[D_MAX_BLOCKS_IN_MCU];
  int component_of[D_MAX_BLOCKS_IN_MCU];
  for (int b = 0; b < blocks_in_mcu; ++b) {
    const int ci = cinfo->MCU_membership[b];
    if (ci < 0 || ci >= cinfo->comps_in_scan) return false;
    component_of[b] = ci;
    dc_of[b] = &tables.dc[cinfo->cur_comp_info[ci]->dc_tbl_no];
    ac_of[b] = &tables.ac[cinfo->cur_comp_info[ci]->ac_tbl_no];
  }
  uint8_t* counts = out->counts;
  uint32_t* entries = out->entries;
  const size_t capacity = out->capacity;
  size_t m = 0;
  int last_dc[MAX_COMPS_IN_SCAN] = {};
  unsigned restarts = 0;

  size_t block = 0;
  for (size_t mcu = 0; mcu < mcus; ++mcu) {
    if (restart_interval != 0 && mcu != 0 && mcu % restart_interval == 0) {
      const uint8_t* marker = MarkerHere(r);
      if (marker == nullptr || marker[1] != JPEG_RST0 + (restarts & 7)) return false;
      ++restarts;
      r = BitReader{0, 0, 0, false, marker + 2, r.end};
      std::fill(last_dc, last_dc + MAX_COMPS_IN_SCAN, 0);
    }
    for (int b = 0; b < blocks_in_mcu; ++b, ++block) {
      // Zero bits read past the data or a marker: not a clean scan, and one
      // cut short (or a header claiming far more blocks than its data holds)
      // is given up here, not decoded to its last block.
      if (r.count < r.padded || capacity - m < kBlockEntries) return false;
      const size_t first = m;
      // DC: the difference to the component's last DC value.
      if (r.count < 32) Refill(r);
      const DcTable& dc = *dc_of[b];
      const uint32_t dc_entry = dc.look[Peek(r, kLookBits)];
      int diff;
      if (dc_entry & 0x80) {
        const int length = static_cast<int>(dc_entry & 63);
        Drop(r, length);
        diff = static_cast<int16_t>(dc_entry >> 16);
      } else {
        int size;
        if (dc_entry & 63) {
          const int length = static_cast<int>(dc_entry & 63);
          Drop(r, length);
          size = static_cast<int>((dc_entry >> 8) & 15);
        } else {
          const LongCode code = DecodeLongCode(r.bits, dc.canonical);
          Drop(r, code.length);
          size = code.symbol;
          if (size < 0 || size > 15) return false;
        }
        diff = 0;
        if (size != 0) {
          diff = Extend(Peek(r, size), size);
          Drop(r, size);
        }
      }
      // libjpeg adds in int and stores the low 16 bits; unsigned here, the
      // same bits without overflow.
      const int ci = component_of[b];
      last_dc[ci] = static_cast<int>(static_cast<unsigned>(last_dc[ci]) + static_cast<unsigned>(diff));
      entries[m++] = static_cast<uint16_t>(last_dc[ci]);

      // AC: coefficients 1-63 in zigzag order; `k` is the next one's index.
      const AcTable& ac = *ac_of[b];
      int k = 1;
      while (k < 64) {
        // A lookup takes at most kLookBits; the slow path below refills
        // for its longer codes.
        if (r.count < kLookBits) Refill(r);
        const uint64_t entry = ac.look[Peek(r, kLookBits)];
        if (__builtin_expect((entry & 63) != 0, 1)) {
          k += static_cast<int>((entry >> 14) & 127);
          const int first_value = static_cast<int16_t>(entry >> 32);
          entries[m] = (static_cast<uint32_t>(kNatural.index[k - 1]) << 16) | static_cast<uint16_t>(first_value);
          m += first_value != 0;
          if (__builtin_expect(k >= 64, 0)) {
            // The block ends with the first symbol (EOB, or its 64th
            // coefficient): a second one is the next block's.
            const int length = static_cast<int>((entry >> 6) & 63);
            Drop(r, length);
            break;
          }
          const int second_value = static_cast<int16_t>(entry >> 48);
          k += static_cast<int>((entry >> 21) & 127);
          entries[m] = (static_cast<uint32_t>(kNatural.index[k - 1]) << 16) | static_cast<uint16_t>(second_value);
          m += second_value != 0;
          const int length = static_cast<int>(entry & 63);
          Drop(r, length);
          continue;
        }
        if (r.count < 31) Refill(r);
        int symbol;
        if (entry != 0) {
          const int length = static_cast<int>((entry >> 6) & 63);
          Drop(r, length);
          symbol = static_cast<int>((entry >> 32) & 0xFF);
        } else {
          const LongCode code = DecodeLongCode(r.bits, ac.canonical);
          Drop(r, code.length);
          symbol = code.symbol;
          if (symbol < 0) return false;
        }
        const int run = symbol >> 4;
        const int size = symbol & 15;
        if (size == 0) {
          if (run != 15) break;
          k += 16;
          continue;
        }
        k += run;
        const int value = Extend(Peek(r, size), size);
        Drop(r, size);
        entries[m++] = (static_cast<uint32_t>(kNatural.index[k]) << 16) | static_cast<uint16_t>(value);
        ++k;
      }
      // A coefficient past the 64th: a corrupt block.
      if ((entries[m - 1] >> 16) == 64) return false;
      counts[block] = static_cast<uint8_t>(m - first);
    }
  }
  const uint8_t* marker = MarkerHere(r);
  // The scan ends at a marker that is not a restart one.
  if (marker == nullptr || marker[1] == 0xFF || (marker[1] >= JPEG_RST0 && marker[1] <= JPEG_RST0 + 7)) {
    return false;
  }
  reader = r;
  return true;
}

}  // namespace

size_t JpegScanCoefficientBytes(j_decompress_ptr cinfo) {
  if (!Eligible(cinfo)) return 0;
  const size_t blocks = ScanBlocks(cinfo);
  if (blocks == 0) return 0;
  return CountsBytes(blocks) + EntryCapacity(blocks, cinfo->src->bytes_in_buffer) * sizeof(uint32_t);
}

bool PredecodeJpegScan(j_decompress_ptr cinfo, JpegScanCoefficients* out, uint8_t* buffer, size_t buffer_bytes) {
  const size_t needed = JpegScanCoefficientBytes(cinfo);
  if (needed == 0 || buffer == nullptr || buffer_bytes < needed) return false;
  // Out of memory here leaves the scan to libjpeg, as any other refusal.
  std::unique_ptr<ScanTables> tables;
  try {
    tables = std::make_unique<ScanTables>();
  } catch (const std::bad_alloc&) {
    return false;
  }
  bool dc_built[NUM_HUFF_TBLS] = {};
  bool ac_built[NUM_HUFF_TBLS] = {};
  for (int ci = 0; ci < cinfo->comps_in_scan; ++ci) {
    const int dc = cinfo->cur_comp_info[ci]->dc_tbl_no;
    const int ac = cinfo->cur_comp_info[ci]->ac_tbl_no;
    if (!dc_built[dc] && !BuildDcTable(cinfo->dc_huff_tbl_ptrs[dc], &tables->dc[dc])) return false;
    if (!ac_built[ac] && !BuildAcTable(cinfo->ac_huff_tbl_ptrs[ac], &tables->ac[ac])) return false;
    dc_built[dc] = ac_built[ac] = true;
  }
  const size_t blocks = ScanBlocks(cinfo);
  JpegScanCoefficients scan;
  scan.counts = buffer;
  scan.entries = reinterpret_cast<uint32_t*>(buffer + CountsBytes(blocks));
  scan.capacity = (needed - CountsBytes(blocks)) / sizeof(uint32_t);
  scan.blocks = blocks;
  jpeg_source_mgr* source = cinfo->src;
  BitReader reader{0, 0, 0, false, source->next_input_byte, source->next_input_byte + source->bytes_in_buffer};
  if (!DecodeScan(cinfo, *tables, reader, &scan)) return false;

  *out = scan;
  // The reader stopped on the marker that ends the scan.
  const size_t consumed = static_cast<size_t>(reader.next - source->next_input_byte);
  source->next_input_byte = reader.next;
  source->bytes_in_buffer -= consumed;
  cinfo->client_data = out;
  cinfo->entropy->decode_mcu = ReplayMcu;
  g_predecoded.fetch_add(1, std::memory_order_relaxed);
  return true;
}

void SetJpegPredecodeEnabled(bool enabled) { g_enabled.store(enabled, std::memory_order_relaxed); }

uint64_t JpegPredecodedScans() { return g_predecoded.load(std::memory_order_relaxed); }

}  // namespace decode
}  // namespace clip

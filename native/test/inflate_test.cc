// InflateZlib (the PNG whole-buffer path's decoder) against zlib's inflate,
// which libpng and Pillow use: the same verdict and the same bytes on streams
// zlib's deflate writes (every level and strategy, small windows, flushes),
// on streams built by hand at the edges RFC 1951 and zlib draw (reserved
// codes, incomplete and over-subscribed codes, distances before the start,
// stored block lengths, the header and the Adler-32), and on thousands of
// mutations of real streams, with the Adler-32 made right again where zlib
// got that far so that the decoding itself is compared. Adler32 against
// zlib's adler32_z.
//
// Usage: inflate_test

#include <zlib.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "inflate.h"
#include "test_check.h"
#include "zlib_reference.h"

namespace {

using Bytes = std::vector<uint8_t>;
using clip::test::Check;

// zlib's verdict, as the whole-buffer path used to ask it: one inflate call,
// room for exactly `out_size` bytes, the stream must end having written them.
bool ZlibExact(const Bytes& in, size_t out_size, Bytes* out) {
  out->assign(out_size + 1, 0);  // never empty, so that next_out is valid
  z_stream z{};
  if (inflateInit(&z) != Z_OK) return false;
  z.next_in = const_cast<Bytef*>(in.data());
  z.avail_in = static_cast<uInt>(in.size());
  z.next_out = out->data();
  z.avail_out = static_cast<uInt>(out_size);
  const int status = inflate(&z, Z_FINISH);
  const bool ok = status == Z_STREAM_END && z.total_out == out_size;
  inflateEnd(&z);
  out->resize(out_size);
  return ok;
}

bool OursExact(const Bytes& in, size_t out_size, Bytes* out) {
  out->assign(out_size + 1, 0);
  const bool ok = clip::decode::InflateZlib(in.data(), in.size(), out->data(), out_size);
  out->resize(out_size);
  return ok;
}

// Both decoders on `in` with room for `out_size` bytes: the same verdict, and
// the same bytes when they accept.
bool Agree(const std::string& what, const Bytes& in, size_t out_size) {
  Bytes expected, actual;
  const bool zlib_ok = ZlibExact(in, out_size, &expected);
  const bool ours_ok = OursExact(in, out_size, &actual);
  Check(zlib_ok == ours_ok, what + ": zlib " + (zlib_ok ? "accepts" : "refuses") + ", InflateZlib " +
                                (ours_ok ? "accepts" : "refuses") + " (" + std::to_string(out_size) + " bytes)");
  if (zlib_ok && ours_ok) Check(expected == actual, what + ": the same bytes");
  return zlib_ok && ours_ok;
}

Bytes Compress(const Bytes& data, int level, int window_bits, int mem_level, int strategy, size_t flush_every) {
  z_stream z{};
  deflateInit2(&z, level, Z_DEFLATED, window_bits, mem_level, strategy);
  Bytes out(deflateBound(&z, data.size()) + 64 * (data.size() / (flush_every ? flush_every : 1) + 2));
  z.next_out = out.data();
  z.avail_out = static_cast<uInt>(out.size());
  size_t at = 0;
  int flush_kind = 0;
  do {
    const size_t piece = flush_every ? std::min(flush_every, data.size() - at) : data.size() - at;
    z.next_in = const_cast<Bytef*>(data.data() + at);
    z.avail_in = static_cast<uInt>(piece);
    at += piece;
    const int flush = at == data.size() ? Z_FINISH : (flush_kind++ % 2 ? Z_FULL_FLUSH : Z_SYNC_FLUSH);
    deflate(&z, flush);
  } while (at < data.size());
  out.resize(z.total_out);
  deflateEnd(&z);
  return out;
}

// Test data of several kinds: noise, rows of a smooth "photo" (small steps,
// like a PNG's filtered rows), text-like runs, long runs of one byte.
Bytes MakeData(int kind, size_t size, std::mt19937* rng) {
  Bytes data(size);
  std::uniform_int_distribution<int> byte(0, 255);
  switch (kind) {
    case 0:
      for (auto& b : data) b = static_cast<uint8_t>(byte(*rng));
      break;
    case 1: {
      int value = 128;
      for (size_t i = 0; i < size; ++i) {
        value = std::min(255, std::max(0, value + byte(*rng) % 7 - 3));
        data[i] = static_cast<uint8_t>(i % 193 == 0 ? 0 : value);  // a filter byte now and then
      }
      break;
    }
    case 2: {
      const char* words[] = {"the ", "cat ", "sat ", "on ", "a ", "mat ", "photo ", "of ", "dog "};
      size_t i = 0;
      while (i < size) {
        for (const char* c = words[byte(*rng) % 9]; *c && i < size; ++c) data[i++] = static_cast<uint8_t>(*c);
      }
      break;
    }
    default:
      for (size_t i = 0; i < size; ++i) data[i] = static_cast<uint8_t>((i / 1000) % 3 == 0 ? 7 : byte(*rng) % 4);
      break;
  }
  return data;
}

void TestAdler32() {
  std::mt19937 rng(1);
  std::uniform_int_distribution<int> byte(0, 255);
  Bytes data(300000);
  for (auto& b : data) b = static_cast<uint8_t>(byte(rng));
  int mismatches = 0;
  for (size_t size : {size_t{0}, size_t{1}, size_t{31}, size_t{32}, size_t{33}, size_t{5535}, size_t{5536},
                      size_t{5537}, size_t{11073}, size_t{65536}, size_t{299999}}) {
    for (uint32_t start : {1u, 0xFFF0FFF0u, 0x12345678u % 65521u}) {
      if (clip::decode::Adler32(start, data.data() + 1, size) != adler32_z(start, data.data() + 1, size)) ++mismatches;
    }
  }
  for (int i = 0; i < 2000; ++i) {
    const size_t size = rng() % 3000;
    const size_t offset = rng() % 64;
    if (clip::decode::Adler32(1, data.data() + offset, size) != adler32_z(1, data.data() + offset, size)) ++mismatches;
  }
  Bytes ones(1 << 20, 0xFF);  // the largest sums
  if (clip::decode::Adler32(1, ones.data(), ones.size()) != adler32_z(1, ones.data(), ones.size())) ++mismatches;
  Check(mismatches == 0, "Adler32 equals zlib's adler32_z (" + std::to_string(mismatches) + " mismatches)");
}

void TestRoundTrips() {
  std::mt19937 rng(2);
  int cases = 0;
  const int strategies[] = {Z_DEFAULT_STRATEGY, Z_FILTERED, Z_HUFFMAN_ONLY, Z_RLE, Z_FIXED};
  for (int kind = 0; kind < 4; ++kind) {
    for (size_t size : {size_t{0}, size_t{1}, size_t{300}, size_t{70000}}) {
      const Bytes data = MakeData(kind, size, &rng);
      for (int level : {0, 1, 6, 9}) {
        for (int strategy : strategies) {
          for (int window_bits : {9, 15}) {
            for (size_t flush_every : {size_t{0}, size_t{10000}}) {
              const Bytes stream = Compress(data, level, window_bits, window_bits == 9 ? 1 : 9, strategy, flush_every);
              const std::string what = "kind " + std::to_string(kind) + ", " + std::to_string(size) + " bytes, level " +
                                       std::to_string(level) + ", strategy " + std::to_string(strategy) + ", window " +
                                       std::to_string(window_bits) + ", flush " + std::to_string(flush_every);
              Bytes out;
              Check(OursExact(stream, data.size(), &out) && out == data, what + ": decodes");
              Bytes trailing = stream;
              trailing.insert(trailing.end(), {1, 2, 3});
              Check(OursExact(trailing, data.size(), &out), what + ": bytes after the stream are ignored");
              if (size > 0) Check(!OursExact(stream, data.size() - 1, &out), what + ": refused with a byte less room");
              Check(!OursExact(stream, data.size() + 1, &out), what + ": refused with a byte more room");
              Bytes cut(stream.begin(), stream.end() - 1);
              Check(!OursExact(cut, data.size(), &out), what + ": refused without the last byte of the Adler-32");
              ++cases;
            }
          }
        }
      }
    }
  }
  Check(cases == 4 * 4 * 4 * 5 * 2 * 2, "every round trip ran");
}

// Writes DEFLATE bit fields (LSB first) and Huffman codes (MSB first).
struct BitWriter {
  Bytes out = {0x78, 0x01};
  uint32_t bits = 0;
  int count = 0;
  void Put(uint32_t value, int n) {
    for (int i = 0; i < n; ++i) {
      bits |= ((value >> i) & 1u) << count;
      if (++count == 8) {
        out.push_back(static_cast<uint8_t>(bits));
        bits = 0;
        count = 0;
      }
    }
  }
  void Code(uint32_t codeword, int n) {
    for (int i = n - 1; i >= 0; --i) Put((codeword >> i) & 1, 1);
  }
  // Byte-aligns and appends the Adler-32 of `data`.
  Bytes Finish(const Bytes& data) {
    if (count > 0) Put(0, 8 - count);
    const uint32_t check = adler32_z(1, data.data(), data.size());
    for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(check >> shift));
    return out;
  }
};

// Canonical codes (RFC 1951 3.2.2) of the given code lengths.
std::vector<uint32_t> CanonicalCodes(const std::vector<int>& lens) {
  int count[16] = {};
  for (int len : lens) ++count[len];
  count[0] = 0;
  uint32_t next[16] = {};
  uint32_t code = 0;
  for (int bits = 1; bits < 16; ++bits) {
    code = (code + count[bits - 1]) << 1;
    next[bits] = code;
  }
  std::vector<uint32_t> codes(lens.size());
  for (size_t s = 0; s < lens.size(); ++s) {
    if (lens[s]) codes[s] = next[lens[s]]++;
  }
  return codes;
}

// A dynamic block header with these literal/length and distance code lengths,
// each written out as a code-length symbol (a complete code-length code:
// symbols 0-12 four bits, 13-18 five). `prefix_repeat` >= 0 writes a
// repeat-previous (16) before the first length; `repeat_past_end` writes one
// in place of the distance lengths.
struct DynamicBlock {
  std::vector<int> lit_lens, dist_lens;
  std::vector<uint32_t> lit_codes, dist_codes;
  void Header(BitWriter* w, bool last, int prefix_repeat = -1, bool repeat_past_end = false) {
    w->Put(last ? 1 : 0, 1);
    w->Put(2, 2);
    w->Put(static_cast<uint32_t>(lit_lens.size() - 257), 5);
    w->Put(static_cast<uint32_t>(dist_lens.size() - 1), 5);
    w->Put(19 - 4, 4);
    const int order[19] = {16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1, 15};
    std::vector<int> cl_lens(19);
    for (int s = 0; s < 19; ++s) cl_lens[s] = s <= 12 ? 4 : 5;
    for (int i = 0; i < 19; ++i) w->Put(static_cast<uint32_t>(cl_lens[order[i]]), 3);
    const std::vector<uint32_t> cl_codes = CanonicalCodes(cl_lens);
    if (prefix_repeat >= 0) {  // a repeat-previous (16) before any length
      w->Code(cl_codes[16], cl_lens[16]);
      w->Put(static_cast<uint32_t>(prefix_repeat), 2);
    }
    for (int len : lit_lens) w->Code(cl_codes[len], cl_lens[len]);
    if (repeat_past_end) {
      w->Code(cl_codes[16], cl_lens[16]);
      w->Put(0, 2);
    } else {
      for (int len : dist_lens) w->Code(cl_codes[len], cl_lens[len]);
    }
    lit_codes = CanonicalCodes(lit_lens);
    dist_codes = CanonicalCodes(dist_lens);
  }
  void Lit(BitWriter* w, int symbol) { w->Code(lit_codes[symbol], lit_lens[symbol]); }
  void Dist(BitWriter* w, int symbol) { w->Code(dist_codes[symbol], dist_lens[symbol]); }
};

DynamicBlock MakeBlock(std::vector<std::pair<int, int>> lits, std::vector<std::pair<int, int>> dists, int hlit = 257,
                       int hdist = 1) {
  DynamicBlock block;
  for (auto [symbol, len] : lits) hlit = std::max(hlit, symbol + 1);
  for (auto [symbol, len] : dists) hdist = std::max(hdist, symbol + 1);
  block.lit_lens.assign(static_cast<size_t>(hlit), 0);
  block.dist_lens.assign(static_cast<size_t>(hdist), 0);
  for (auto [symbol, len] : lits) block.lit_lens[static_cast<size_t>(symbol)] = len;
  for (auto [symbol, len] : dists) block.dist_lens[static_cast<size_t>(symbol)] = len;
  return block;
}

void TestEdges() {
  // The header.
  {
    BitWriter w;
    w.Put(1, 1);
    w.Put(1, 2);
    w.Code(0x30 + 'a', 8);
    w.Code(0, 7);
    const Bytes good = w.Finish({'a'});
    Agree("a fixed block of one literal", good, 1);
    Bytes bad = good;
    bad[1] ^= 1;
    Agree("header check bits wrong", bad, 1);
    bad = good;
    bad[0] = 0x88;  // a 64 KiB window
    bad[1] = static_cast<uint8_t>(31 - (0x88 * 256) % 31);
    Agree("window of 64 KiB", bad, 1);
    bad = good;
    bad[0] = 0x79;  // method 9
    bad[1] = static_cast<uint8_t>(31 - (0x79 * 256) % 31);
    Agree("compression method 9", bad, 1);
    bad = good;
    bad[0] = 0x08;  // a 256-byte window: allowed
    bad[1] = static_cast<uint8_t>(31 - (0x08 * 256) % 31);
    Check(Agree("window of 256 bytes", bad, 1), "window of 256 bytes: accepted");
    bad = good;
    bad[1] = 0x20;  // FDICT
    bad[1] = static_cast<uint8_t>(bad[1] + (31 - ((0x78 * 256 + bad[1]) % 31)) % 31);
    Agree("a preset dictionary", bad, 1);
    bad = good;
    bad.back() ^= 1;
    Agree("Adler-32 wrong", bad, 1);
  }
  // Reserved fixed-code symbols: lengths 286 and 287, distances 30 and 31.
  for (int symbol : {285, 286, 287}) {
    BitWriter w;
    w.Put(1, 1);
    w.Put(1, 2);
    w.Code(0x30, 8);                   // literal 0
    w.Code(0xC0 + (symbol - 280), 8);  // length 258 (285)
    w.Code(0, 5);                      // distance 1
    w.Code(0, 7);
    const Bytes stream = w.Finish(Bytes(259, 0));
    const bool accepted = Agree("fixed length symbol " + std::to_string(symbol), stream, 259);
    Check(accepted == (symbol == 285), "fixed length symbol " + std::to_string(symbol) + ": the expected verdict");
  }
  for (int symbol : {29, 30, 31}) {
    BitWriter w;
    w.Put(1, 1);
    w.Put(1, 2);
    w.Code(0x30, 8);
    w.Code(0x01, 7);  // length 3 (257)
    w.Code(static_cast<uint32_t>(symbol), 5);
    w.Put(0, symbol == 29 ? 13 : 0);  // distance 24577: before the start either way
    w.Code(0, 7);
    Agree("fixed distance symbol " + std::to_string(symbol), w.Finish(Bytes(4, 0)), 4);
  }
  // Distances: up to the start of the output, not before.
  for (int distance : {1, 2, 3}) {
    BitWriter w;
    w.Put(1, 1);
    w.Put(1, 2);
    w.Code(0x30 + 'x', 8);
    w.Code(0x30 + 'y', 8);
    w.Code(0x01, 7);                                 // length 3
    w.Code(static_cast<uint32_t>(distance - 1), 5);  // distances 1-3 have no extra bits
    w.Code(0, 7);
    Bytes expected = {'x', 'y'};
    for (int i = 0; i < 3; ++i) {
      const size_t back = static_cast<size_t>(distance);
      expected.push_back(back <= expected.size() ? expected[expected.size() - back] : 0);  // 0: refused anyway
    }
    const bool accepted = Agree("distance " + std::to_string(distance) + " after 2 bytes", w.Finish(expected), 5);
    Check(accepted == (distance <= 2), "distance " + std::to_string(distance) + ": the expected verdict");
  }
  // Stored blocks: LEN and NLEN, an empty one, one running past the input.
  {
    auto stored = [](uint16_t len, uint16_t nlen, const Bytes& payload) {
      BitWriter w;
      w.Put(1, 1);
      w.Put(0, 2);
      w.Put(0, 5);
      w.Put(len, 16);
      w.Put(nlen, 16);
      for (uint8_t b : payload) w.Put(b, 8);
      return w.Finish(payload);
    };
    Check(Agree("a stored block", stored(3, 0xFFFC, {1, 2, 3}), 3), "a stored block: accepted");
    Agree("a stored block with NLEN wrong", stored(3, 0xFFFD, {1, 2, 3}), 3);
    Check(Agree("an empty stored block", stored(0, 0xFFFF, {}), 0), "an empty stored block: accepted");
    Bytes past = stored(5, 0xFFFA, {1, 2, 3});
    past.resize(past.size() - 4);
    Agree("a stored block longer than the input", past, 5);
    BitWriter w;
    w.Put(1, 1);
    w.Put(3, 2);
    Agree("block type 3", w.Finish({}), 0);
  }
  // Dynamic blocks: the codes zlib takes and the ones it refuses.
  auto run = [](const std::string& what, DynamicBlock block, const std::vector<int>& lits, size_t size, bool expected,
                int prefix_repeat = -1) {
    BitWriter w;
    block.Header(&w, true, prefix_repeat);
    Bytes output;
    for (int symbol : lits) {
      if (symbol < 256) output.push_back(static_cast<uint8_t>(symbol));
      if (symbol < 257) {
        block.Lit(&w, symbol);
      } else {  // length 3 at distance symbol (symbol - 1000): "length symbol" 257 then the distance code
        block.Lit(&w, 257);
        block.Dist(&w, symbol - 1000);
        for (int i = 0; i < 3; ++i) output.push_back(output[output.size() - 1 - static_cast<size_t>(symbol - 1000)]);
      }
    }
    block.Lit(&w, 256);
    const bool accepted = Agree(what, w.Finish(output), size);
    Check(accepted == expected, what + ": the expected verdict");
  };
  run("dynamic: literals, end, one distance code", MakeBlock({{'a', 1}, {'b', 2}, {256, 2}}, {{0, 1}}), {'a', 'b'}, 2,
      true);
  run("dynamic: a single one-bit code (end of block only), no distance code", MakeBlock({{256, 1}}, {{0, 0}}), {}, 0,
      true);
  run("dynamic: one-bit distance code used", MakeBlock({{'a', 1}, {256, 2}, {257, 2}}, {{0, 1}}), {'a', 1000}, 4, true);
  run("dynamic: two-bit distance code alone (incomplete)", MakeBlock({{'a', 1}, {256, 2}, {257, 2}}, {{0, 2}}), {'a'},
      1, false);
  run("dynamic: incomplete literal code", MakeBlock({{'a', 1}, {256, 2}}, {{0, 1}}), {'a'}, 1, false);
  run("dynamic: over-subscribed literal code", MakeBlock({{'a', 1}, {'b', 1}, {256, 1}}, {{0, 1}}), {'a'}, 1, false);
  run("dynamic: over-subscribed distance code", MakeBlock({{'a', 1}, {256, 1}}, {{0, 1}, {1, 1}, {2, 1}}, 257, 3),
      {'a'}, 1, false);
  run("dynamic: no end-of-block code", MakeBlock({{'a', 1}, {'b', 1}}, {{0, 1}}), {}, 0, false);
  run("dynamic: repeat before any length", MakeBlock({{'a', 1}, {256, 1}}, {{0, 1}}), {'a'}, 1, false, 0);
  run("dynamic: 287 literal/length codes", MakeBlock({{'a', 1}, {256, 1}}, {{0, 1}}, 287), {'a'}, 1, false);
  run("dynamic: 286 literal/length codes", MakeBlock({{'a', 1}, {256, 1}}, {{0, 1}}, 286), {'a'}, 1, true);
  run("dynamic: 31 distance codes", MakeBlock({{'a', 1}, {256, 1}}, {{0, 1}}, 257, 31), {'a'}, 1, false);
  run("dynamic: 30 distance codes", MakeBlock({{'a', 1}, {256, 1}}, {{0, 1}}, 257, 30), {'a'}, 1, true);
  {
    // Codes of 15 bits (second-level tables): 256 literals of lengths 1..15
    // along a complete code, and an end of block.
    std::vector<std::pair<int, int>> lits;
    for (int s = 0; s < 14; ++s) lits.push_back({s, s + 1});
    lits.push_back({14, 15});
    lits.push_back({256, 15});
    std::vector<int> message;
    for (int s = 0; s < 15; ++s) message.push_back(s);
    run("dynamic: codes of 1 to 15 bits", MakeBlock(lits, {{0, 1}}), message, 15, true);
  }
  {
    // HDIST says one distance length; a repeat of 3 (code 16) writes it and two more.
    BitWriter w;
    MakeBlock({{'a', 1}, {256, 1}}, {{0, 1}}).Header(&w, true, -1, true);
    Agree("dynamic: a repeat past the last length", w.Finish({}), 0);
  }
}

// Mutations of real streams: zlib decides; where it decoded everything and
// stopped at the Adler-32 only, the trailer is set to its output's so that
// the verdict compares the decoding.
void TestMutations() {
  std::mt19937 rng(3);
  std::vector<std::pair<Bytes, Bytes>> sources;
  for (int kind = 0; kind < 4; ++kind) {
    const Bytes data = MakeData(kind, 3000 + 2000 * static_cast<size_t>(kind), &rng);
    for (int strategy : {Z_DEFAULT_STRATEGY, Z_FIXED, Z_HUFFMAN_ONLY}) {
      sources.push_back({data, Compress(data, 6, 15, 8, strategy, 1500)});
    }
  }
  int compared = 0, decoded = 0, refused = 0;
  for (int i = 0; i < 6000; ++i) {
    const auto& source = sources[static_cast<size_t>(i) % sources.size()];
    Bytes stream = source.second;
    const int mutations = 1 + static_cast<int>(rng() % 3);
    for (int m = 0; m < mutations; ++m) {
      // Half of them in the first 48 bytes, where block headers are dense.
      const size_t limit = rng() % 2 ? std::min<size_t>(48, stream.size()) : stream.size();
      const size_t at = 2 + rng() % (limit - 2);
      switch (rng() % 4) {
        case 0:
        case 1:
          stream[at] ^= static_cast<uint8_t>(1u << (rng() % 8));
          break;
        case 2:
          stream[at] = static_cast<uint8_t>(rng());
          break;
        default:
          stream.resize(at);
          break;
      }
      if (stream.size() < 3) break;
    }
    // zlib with ample room: how far it gets.
    const clip::test::ZlibRun run = clip::test::RunZlibRepairingAdler(&stream, source.first.size() * 4 + 65536);
    if (!run.verdict) continue;
    const size_t produced = run.output.size();
    const std::string what = "mutation " + std::to_string(i);
    if (Agree(what, stream, produced)) {
      ++decoded;
    } else {
      ++refused;
    }
    Agree(what + " with the original size", stream, source.first.size());
    ++compared;
  }
  Check(decoded > 500 && refused > 500, "mutations: both verdicts seen often (" + std::to_string(decoded) +
                                            " decoded, " + std::to_string(refused) + " refused of " +
                                            std::to_string(compared) + ")");
}

}  // namespace

int main() {
  TestAdler32();
  TestRoundTrips();
  TestEdges();
  TestMutations();
  return clip::test::Summary();
}

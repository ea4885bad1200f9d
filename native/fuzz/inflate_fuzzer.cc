// libFuzzer target: InflateZlib (the PNG whole-buffer path's decoder) against
// zlib's inflate, which libpng and Pillow use, on untrusted streams.
//
// The input is a zlib stream; when its first byte is odd, the rest is a raw
// deflate body and gets a valid zlib header in front. zlib decodes it with
// ample room; where it decoded everything and stopped at a wrong Adler-32,
// the trailer is made right (zlib_reference.h), so that the decoding itself
// is compared and not only the checksum. Contract (a violation aborts): InflateZlib, given room for
// exactly what zlib wrote, accepts exactly when zlib ended the stream, with
// the same bytes; with one byte more or less room it refuses; ASan/UBSan: no
// out-of-bounds access or undefined behaviour.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "../test/zlib_reference.h"
#include "inflate.h"

namespace {

// Well above what small inputs decode to, so that running out of room is rare.
constexpr size_t kMaxOutput = size_t{1} << 20;

[[noreturn]] void Violation(const char* what) {
  std::fprintf(stderr, "inflate_fuzzer: contract violation: %s\n", what);
  std::abort();
}

bool Ours(const std::vector<uint8_t>& stream, size_t out_size, std::vector<uint8_t>* out) {
  // Exactly out_size bytes, so that ASan sees any write past them.
  out->assign(out_size, 0);
  uint8_t scratch = 0;
  return clip::decode::InflateZlib(stream.data(), stream.size(), out_size ? out->data() : &scratch, out_size);
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size == 0) return 0;
  std::vector<uint8_t> stream;
  if (data[0] & 1) {
    stream = {0x78, 0x9C};
    stream.insert(stream.end(), data + 1, data + size);
  } else {
    stream.assign(data + 1, data + size);
  }

  const clip::test::ZlibRun run = clip::test::RunZlibRepairingAdler(&stream, kMaxOutput);
  if (!run.verdict) return 0;
  const std::vector<uint8_t>& expected = run.output;
  const size_t produced = expected.size();
  const bool zlib_ok = run.ended;

  std::vector<uint8_t> actual;
  const bool ours_ok = Ours(stream, produced, &actual);
  if (ours_ok != zlib_ok)
    Violation(zlib_ok ? "zlib decodes the stream, InflateZlib refuses it"
                      : "zlib refuses the stream, InflateZlib decodes it");
  if (ours_ok && actual != expected) Violation("InflateZlib decodes other bytes than zlib");
  if (Ours(stream, produced + 1, &actual)) Violation("InflateZlib accepts room for a byte more than the stream holds");
  if (produced > 0 && Ours(stream, produced - 1, &actual)) {
    Violation("InflateZlib accepts room for a byte less than the stream holds");
  }
  return 0;
}

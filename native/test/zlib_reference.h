// zlib's inflate as the reference that InflateZlib (native/core/prep/
// inflate.h) is held to, shared by inflate_test and native/fuzz's
// inflate_fuzzer.
#ifndef CLIP_NATIVE_TEST_ZLIB_REFERENCE_H_
#define CLIP_NATIVE_TEST_ZLIB_REFERENCE_H_

#include <zlib.h>

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <vector>

namespace clip {
namespace test {

struct ZlibRun {
  bool verdict = false;         // false: zlib filled `room` (or could not start), so no verdict
  bool ended = false;           // the stream ended (Z_STREAM_END), counting a repaired Adler-32
  std::vector<uint8_t> output;  // what zlib wrote
};

// Inflates `stream` with zlib in one call with `room` bytes of output. Where
// zlib decoded all of it and stopped only at a wrong Adler-32, the trailer in
// `stream` is set to the Adler-32 of the output and the run counts as ended,
// so that a comparison judges the decoding itself and not only the checksum
// (a mutated stream almost never keeps a valid one).
inline ZlibRun RunZlibRepairingAdler(std::vector<uint8_t>* stream, size_t room) {
  ZlibRun run;
  run.output.resize(room);
  z_stream z{};
  if (inflateInit(&z) != Z_OK) return run;
  z.next_in = stream->data();
  z.avail_in = static_cast<uInt>(stream->size());
  z.next_out = run.output.data();
  z.avail_out = static_cast<uInt>(room);
  const int status = inflate(&z, Z_FINISH);
  const size_t produced = z.total_out;
  const size_t consumed = z.total_in;
  const bool bad_check = status == Z_DATA_ERROR && z.msg != nullptr && std::strcmp(z.msg, "incorrect data check") == 0;
  inflateEnd(&z);
  run.verdict = produced < room;
  run.output.resize(produced);
  run.ended = status == Z_STREAM_END;
  if (bad_check && consumed >= 4) {
    const uint32_t check = static_cast<uint32_t>(adler32_z(1, run.output.data(), run.output.size()));
    for (int b = 0; b < 4; ++b) (*stream)[consumed - 4 + b] = static_cast<uint8_t>(check >> (24 - 8 * b));
    run.ended = true;
  }
  return run;
}

}  // namespace test
}  // namespace clip

#endif  // CLIP_NATIVE_TEST_ZLIB_REFERENCE_H_

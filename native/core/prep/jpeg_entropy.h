// Baseline JPEG entropy decoding ahead of libjpeg.
//
// libjpeg-turbo decodes a scan's Huffman codes one MCU at a time, between the
// inverse DCTs and colour conversions of its rows, one code per table lookup;
// that was about two thirds of a 640x480 photo's decode. Here the whole scan
// is decoded first, in one loop whose table lookups give a coefficient's
// value with its code and often two coefficients at once, into a compact list
// of the nonzero coefficients; libjpeg's entropy decoder is then replaced by
// one that copies each MCU's coefficients from that list, and everything else
// (the inverse DCT, upsampling, colour conversion, cropping, skipping) stays
// libjpeg's.
//
// The list is used only for a scan whose decoding has no room for
// interpretation: every code valid, no block past its 64th coefficient, each
// restart marker where the restart interval puts it, the scan's bits ending
// in its last byte, right before a marker. A valid scan has one decoding, the
// one libjpeg finds too, so the coefficients, and every pixel after them, are
// libjpeg's. Anything else (a truncated or corrupt scan, stray bytes, a
// misplaced marker) is left to libjpeg whole, which decodes or fails it as
// before.

#ifndef CLIP_NATIVE_CORE_PREP_JPEG_ENTROPY_H_
#define CLIP_NATIVE_CORE_PREP_JPEG_ENTROPY_H_

#include <cstddef>
#include <cstdint>
#include <cstdio>

// jpeglib.h needs FILE and size_t declared first.
#include <jpeglib.h>

namespace clip {
namespace decode {

// One scan's coefficients in libjpeg's MCU order: per block the number of
// entries it has (its DC coefficient, then each nonzero AC coefficient), and
// per entry the coefficient's index in natural order (bits 16-22) and its
// value (bits 0-15). The memory is borrowed (a thread's kept buffer).
struct JpegScanCoefficients {
  uint8_t* counts = nullptr;
  uint32_t* entries = nullptr;
  size_t capacity = 0;  // entries
  size_t blocks = 0;
  // Replay position.
  size_t next_block = 0;
  size_t next_entry = 0;
};

// Decodes the scan that `cinfo` is at (after jpeg_start_decompress, before
// any row is read or skipped) into `out`, its lists in `buffer`, which holds
// at least JpegScanCoefficientBytes(cinfo) bytes. Returns false, having changed nothing in `cinfo`, for a scan that
// is not one sequential Huffman scan of 8-bit samples, and for any scan
// whose decoding is not clean (above). On success, installs the replay:
// `cinfo->client_data` points at `out` (which must outlive the decode) and
// the source is moved past the scan, to the marker that ends it.
bool PredecodeJpegScan(j_decompress_ptr cinfo, JpegScanCoefficients* out, uint8_t* buffer, size_t buffer_bytes);

// Bytes PredecodeJpegScan needs for this scan (a bound from its blocks and
// the bytes left in the source), or 0 when it would not decode it at all.
size_t JpegScanCoefficientBytes(j_decompress_ptr cinfo);

// A process-wide switch (on by default; off leaves every scan to libjpeg,
// which tests compare with), and how many scans were decoded ahead.
void SetJpegPredecodeEnabled(bool enabled);
uint64_t JpegPredecodedScans();

}  // namespace decode
}  // namespace clip

#endif  // CLIP_NATIVE_CORE_PREP_JPEG_ENTROPY_H_

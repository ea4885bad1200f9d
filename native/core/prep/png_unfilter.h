// Reverses the row filters of a PNG image's inflated data (PNG specification,
// section 9: None, Sub, Up, Average, Paeth), in place, for the whole-buffer
// decoding path of decode_png.cc.
#ifndef CLIP_NATIVE_CORE_PREP_PNG_UNFILTER_H_
#define CLIP_NATIVE_CORE_PREP_PNG_UNFILTER_H_

#include <cstddef>
#include <cstdint>

namespace clip {
namespace decode {

// Bytes past the end of the last row, and past the end of `prior`, that
// UnfilterRows may read (never write): a 4-byte load at a 1-byte pixel.
// Within an image's rows they are the next row's first bytes.
constexpr size_t kUnfilterReadSlack = 3;

// Unfilters `count` consecutive rows: row i's filter type at
// rows[i * stride], its `bytes` filtered bytes right after it. `prior` is the
// unfiltered row above the first one (zeros above an image's first row).
// `bpp`: bytes per pixel, 1 to 8. Filter types must be 0-4 (the caller
// refuses others). On CPUs with AVX2, rows of 1 to 4 bytes per pixel run
// vectorized: Sub as prefix sums, and runs of consecutive Average and Paeth
// rows up to eight at a time (each row one pixel behind the row above it).
void UnfilterRows(uint8_t* rows, size_t stride, size_t count, const uint8_t* prior, size_t bytes, size_t bpp);

// The same, one byte at a time as the specification defines it: the reference
// the tests hold UnfilterRows to, and the path on CPUs without AVX2.
void UnfilterRowsScalar(uint8_t* rows, size_t stride, size_t count, const uint8_t* prior, size_t bytes, size_t bpp);

}  // namespace decode
}  // namespace clip

#endif  // CLIP_NATIVE_CORE_PREP_PNG_UNFILTER_H_

#include "png_unfilter.h"

#include <cstdlib>
#include <cstring>

#include "cpu_features.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLIP_PNG_UNFILTER_AVX2 1
#endif

namespace clip {
namespace decode {
namespace {

// Paeth's predictor: a (left), b (above) or c (above left), whichever is
// nearest to a + b - c, in that order of preference.
inline uint8_t Paeth(int a, int b, int c) {
  const int pa = std::abs(b - c);
  const int pb = std::abs(a - c);
  const int pc = std::abs(a + b - 2 * c);
  const int bc = pb <= pc ? b : c;
  return static_cast<uint8_t>(pa <= pb && pa <= pc ? a : bc);
}

void UnfilterRowScalar(int filter, uint8_t* row, const uint8_t* prior, size_t bytes, size_t bpp) {
  switch (filter) {
    case 1:  // Sub
      for (size_t i = bpp; i < bytes; ++i) row[i] = static_cast<uint8_t>(row[i] + row[i - bpp]);
      break;
    case 2:  // Up
      for (size_t i = 0; i < bytes; ++i) row[i] = static_cast<uint8_t>(row[i] + prior[i]);
      break;
    case 3:  // Average
      for (size_t i = 0; i < bpp && i < bytes; ++i) row[i] = static_cast<uint8_t>(row[i] + (prior[i] >> 1));
      for (size_t i = bpp; i < bytes; ++i) row[i] = static_cast<uint8_t>(row[i] + ((row[i - bpp] + prior[i]) >> 1));
      break;
    case 4:  // Paeth
      for (size_t i = 0; i < bpp && i < bytes; ++i) row[i] = static_cast<uint8_t>(row[i] + prior[i]);
      for (size_t i = bpp; i < bytes; ++i) {
        row[i] = static_cast<uint8_t>(row[i] + Paeth(row[i - bpp], prior[i], prior[i - bpp]));
      }
      break;
    default:  // 0: None
      break;
  }
}

#if defined(CLIP_PNG_UNFILTER_AVX2)
// AVX2 for its 128-bit pabsw, pblendvb and pshufb; only 128-bit vectors.
#define CLIP_UNFILTER_AVX2_TARGET __attribute__((target("avx2")))

// Sub for 3 or 4 bytes per pixel: each pixel plus all before it in the row,
// four pixels per vector as prefix sums (shifted adds), plus the last pixel
// of the vector before. A vector of 3-byte pixels stores 12 bytes, so that
// the next load never overlaps a store still in flight. 2.0 -> 0.44 ns a pixel
// on a Zen 5 EPYC (the byte loop waits on the store of the byte bpp before).
template <size_t kBpp>
CLIP_UNFILTER_AVX2_TARGET void UnfilterSubAvx2(uint8_t* row, size_t bytes) {
  constexpr size_t kStep = 4 * kBpp;
  const __m128i last_pixel = kBpp == 3 ? _mm_setr_epi8(9, 10, 11, 9, 10, 11, 9, 10, 11, 9, 10, 11, -1, -1, -1, -1)
                                       : _mm_setr_epi8(12, 13, 14, 15, 12, 13, 14, 15, 12, 13, 14, 15, 12, 13, 14, 15);
  __m128i carry = _mm_setzero_si128();
  size_t i = 0;
  for (; i + 16 <= bytes; i += kStep) {
    __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i));
    x = _mm_add_epi8(x, _mm_slli_si128(x, kBpp));
    x = _mm_add_epi8(x, _mm_slli_si128(x, 2 * kBpp));
    x = _mm_add_epi8(x, carry);
    if (kBpp == 4) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(row + i), x);
    } else {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(row + i), x);
      const int32_t high = _mm_extract_epi32(x, 2);
      std::memcpy(row + i + 8, &high, 4);
    }
    carry = _mm_shuffle_epi8(x, last_pixel);
  }
  for (i = i < kBpp ? kBpp : i; i < bytes; ++i) row[i] = static_cast<uint8_t>(row[i] + row[i - kBpp]);
}

// Paeth for one row of 3 or 4 bytes per pixel. The predictor of a pixel needs
// the pixel decoded just before it, so the work runs across one pixel's
// channels in 16-bit lanes, a chain of about ten dependent operations per
// pixel. Four pixels' filtered bytes are loaded at once and their results
// stored at once, so that no load reads bytes a store before it is still
// writing (a 4-byte load and store per pixel, each load overlapping the
// previous store: 8.2 ns a pixel on a Zen 5 EPYC; this: 4.8 ns). Rows end in
// the scalar loop.
template <size_t kBpp, int kPixel>
CLIP_UNFILTER_AVX2_TARGET inline void PaethPixelAvx2(__m128i filtered, __m128i above, __m128i channels, __m128i* a,
                                                     __m128i* c, __m128i* out) {
  constexpr int kShift = kPixel * static_cast<int>(kBpp);
  const __m128i zero = _mm_setzero_si128();
  const __m128i x = _mm_unpacklo_epi8(_mm_srli_si128(filtered, kShift), zero);
  const __m128i b = _mm_unpacklo_epi8(_mm_srli_si128(above, kShift), zero);
  // p = a + b - c; pa = |p - a| = |b - c|, pb = |a - c|, pc = |a + b - 2c|.
  const __m128i b_minus_c = _mm_sub_epi16(b, *c);
  const __m128i a_minus_c = _mm_sub_epi16(*a, *c);
  const __m128i pa = _mm_abs_epi16(b_minus_c);
  const __m128i pb = _mm_abs_epi16(a_minus_c);
  const __m128i pc = _mm_abs_epi16(_mm_add_epi16(a_minus_c, b_minus_c));
  // a where pa <= pb and pa <= pc, else b where pb <= pc, else c.
  const __m128i b_or_c = _mm_blendv_epi8(b, *c, _mm_cmpgt_epi16(pb, pc));
  const __m128i predictor =
      _mm_and_si128(_mm_blendv_epi8(*a, b_or_c, _mm_cmpgt_epi16(pa, _mm_min_epi16(pb, pc))), channels);
  *out = _mm_add_epi8(*out, _mm_slli_si128(_mm_packus_epi16(predictor, zero), kShift));
  *a = _mm_and_si128(_mm_add_epi16(x, predictor), channels);
  *c = b;
}

template <size_t kBpp>
CLIP_UNFILTER_AVX2_TARGET void UnfilterPaethAvx2(uint8_t* row, const uint8_t* prior, size_t bytes) {
  const __m128i channels =
      kBpp == 3 ? _mm_setr_epi16(255, 255, 255, 0, 0, 0, 0, 0) : _mm_setr_epi16(255, 255, 255, 255, 0, 0, 0, 0);
  __m128i a = _mm_setzero_si128();  // Left: the pixel just decoded.
  __m128i c = _mm_setzero_si128();  // Above left.
  size_t i = 0;
  for (; i + 16 <= bytes; i += 4 * kBpp) {
    const __m128i filtered = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i));
    const __m128i above = _mm_loadu_si128(reinterpret_cast<const __m128i*>(prior + i));
    __m128i out = filtered;
    PaethPixelAvx2<kBpp, 0>(filtered, above, channels, &a, &c, &out);
    PaethPixelAvx2<kBpp, 1>(filtered, above, channels, &a, &c, &out);
    PaethPixelAvx2<kBpp, 2>(filtered, above, channels, &a, &c, &out);
    PaethPixelAvx2<kBpp, 3>(filtered, above, channels, &a, &c, &out);
    if (kBpp == 4) {
      _mm_storeu_si128(reinterpret_cast<__m128i*>(row + i), out);
    } else {
      _mm_storel_epi64(reinterpret_cast<__m128i*>(row + i), out);
      const int32_t last = _mm_cvtsi128_si32(_mm_srli_si128(out, 8));
      std::memcpy(row + i + 8, &last, 4);
    }
  }
  for (; i < bytes; ++i) {
    const int left = i >= kBpp ? row[i - kBpp] : 0;
    const int above_left = i >= kBpp ? prior[i - kBpp] : 0;
    row[i] = static_cast<uint8_t>(row[i] + Paeth(left, prior[i], above_left));
  }
}

// Average and Paeth rows as a wavefront: up to four consecutive rows, each a
// lane of 32 bits (one pixel) in a vector, row r one pixel behind row r - 1.
// At step t lane r decodes pixel t - r of its row, whose left neighbour is the
// lane's own result of step t - 1, whose neighbour above is lane r - 1's
// result of step t - 1 and whose neighbour above left is the above of step
// t - 1: the four chains of dependent operations run side by side, the
// latency of one for four pixels. Lane 0's above comes from `prior`. A lane
// not yet started loads nothing and all its inputs are zeros, so it holds
// zeros: what its row's first pixel then sees on its left and above left.
// The pixels go through memory one 4-byte load and (3 bytes a pixel) a 2- and
// a 1-byte store each, so that no load overlaps an earlier store. Zen 5 EPYC,
// 4032-pixel rows, ns a pixel: Paeth 1.7 for four rows (5.4 one row at a
// time), Average 1.7 (2.7 one byte at a time), two rows 3.3.
struct Wavefront {
  __m128i left_low, left_high;  // The last results: lanes 0-1, 2-3, 16-bit channels.
  __m128i above_left_low, above_left_high;
  __m128i average_low, average_high;  // All ones in the lanes of Average rows.
  __m128i channels;                   // All ones in the channels of a pixel.
};

// The predictor of Average rows where `average` is set, else Paeth's.
CLIP_UNFILTER_AVX2_TARGET inline __m128i PredictWavefront(__m128i a, __m128i b, __m128i c, __m128i average) {
  const __m128i b_minus_c = _mm_sub_epi16(b, c);
  const __m128i a_minus_c = _mm_sub_epi16(a, c);
  const __m128i pa = _mm_abs_epi16(b_minus_c);
  const __m128i pb = _mm_abs_epi16(a_minus_c);
  const __m128i pc = _mm_abs_epi16(_mm_add_epi16(a_minus_c, b_minus_c));
  const __m128i b_or_c = _mm_blendv_epi8(b, c, _mm_cmpgt_epi16(pb, pc));
  const __m128i paeth = _mm_blendv_epi8(a, b_or_c, _mm_cmpgt_epi16(pa, _mm_min_epi16(pb, pc)));
  return _mm_blendv_epi8(paeth, _mm_srli_epi16(_mm_add_epi16(a, b), 1), average);
}

// Whether lane r works at step t: kAll where every lane does.
template <int kRows, bool kAll>
inline bool LaneActive(int r, size_t t, size_t pixels) {
  return r < kRows && (kAll || (t >= static_cast<size_t>(r) && t - r < pixels));
}

template <size_t kBpp, int kRows, bool kAll, int kLane>
CLIP_UNFILTER_AVX2_TARGET inline void LoadLane(__m128i* v, const uint8_t* rows, size_t stride, size_t pixels,
                                               size_t t) {
  if (!LaneActive<kRows, kAll>(kLane, t, pixels)) return;
  int32_t x;
  std::memcpy(&x, rows + kLane * stride + (t - kLane) * kBpp, 4);
  *v = _mm_insert_epi32(*v, x, kLane);
}

template <size_t kBpp, int kRows, bool kAll, int kLane>
CLIP_UNFILTER_AVX2_TARGET inline void StoreLane(__m128i packed, uint8_t* rows, size_t stride, size_t pixels, size_t t) {
  if (!LaneActive<kRows, kAll>(kLane, t, pixels)) return;
  const int32_t x = _mm_extract_epi32(packed, kLane);
  uint8_t* p = rows + kLane * stride + (t - kLane) * kBpp;
  if (kBpp == 4) {
    std::memcpy(p, &x, 4);
  } else {
    const uint16_t low = static_cast<uint16_t>(x);
    std::memcpy(p, &low, 2);
    p[2] = static_cast<uint8_t>(x >> 16);
  }
}

template <size_t kBpp, int kRows, bool kAll>
CLIP_UNFILTER_AVX2_TARGET inline void WavefrontStep(Wavefront* w, uint8_t* rows, size_t stride, const uint8_t* prior,
                                                    size_t pixels, size_t t) {
  const __m128i zero = _mm_setzero_si128();
  int32_t above = 0;
  if (kAll || t < pixels) std::memcpy(&above, prior + t * kBpp, 4);
  __m128i filtered = zero;
  LoadLane<kBpp, kRows, kAll, 0>(&filtered, rows, stride, pixels, t);
  LoadLane<kBpp, kRows, kAll, 1>(&filtered, rows, stride, pixels, t);
  LoadLane<kBpp, kRows, kAll, 2>(&filtered, rows, stride, pixels, t);
  LoadLane<kBpp, kRows, kAll, 3>(&filtered, rows, stride, pixels, t);
  // Above: `prior` for lane 0, else the lane before's last result.
  const __m128i above_low = _mm_unpacklo_epi64(_mm_unpacklo_epi8(_mm_cvtsi32_si128(above), zero), w->left_low);
  const __m128i above_high = _mm_alignr_epi8(w->left_high, w->left_low, 8);
  const __m128i bytes = _mm_set1_epi16(255);
  // The 4th byte of a 3-byte pixel's load passes through unchanged.
  __m128i low = _mm_add_epi16(
      _mm_unpacklo_epi8(filtered, zero),
      _mm_and_si128(PredictWavefront(w->left_low, above_low, w->above_left_low, w->average_low), w->channels));
  low = _mm_and_si128(low, bytes);
  __m128i high = zero;
  if (kRows > 2) {
    high = _mm_add_epi16(
        _mm_unpackhi_epi8(filtered, zero),
        _mm_and_si128(PredictWavefront(w->left_high, above_high, w->above_left_high, w->average_high), w->channels));
    high = _mm_and_si128(high, bytes);
  }
  const __m128i packed = _mm_packus_epi16(low, high);
  StoreLane<kBpp, kRows, kAll, 0>(packed, rows, stride, pixels, t);
  StoreLane<kBpp, kRows, kAll, 1>(packed, rows, stride, pixels, t);
  StoreLane<kBpp, kRows, kAll, 2>(packed, rows, stride, pixels, t);
  StoreLane<kBpp, kRows, kAll, 3>(packed, rows, stride, pixels, t);
  w->left_low = low;
  w->left_high = high;
  w->above_left_low = above_low;
  w->above_left_high = above_high;
}

// `rows`: the first row's first pixel; `filters`: the rows' types, 3 or 4.
template <size_t kBpp, int kRows>
CLIP_UNFILTER_AVX2_TARGET void UnfilterWavefrontAvx2(uint8_t* rows, size_t stride, const uint8_t* prior, size_t bytes,
                                                     const int* filters) {
  const size_t pixels = bytes / kBpp;
  const __m128i zero = _mm_setzero_si128();
  auto average = [&](int r) -> int64_t { return r < kRows && filters[r] == 3 ? -1 : 0; };
  Wavefront w{zero,
              zero,
              zero,
              zero,
              _mm_set_epi64x(average(1), average(0)),
              _mm_set_epi64x(average(3), average(2)),
              kBpp == 3 ? _mm_setr_epi16(-1, -1, -1, 0, -1, -1, -1, 0) : _mm_set1_epi16(-1)};
  const size_t steps = pixels + kRows - 1;
  size_t t = 0;
  for (; t < steps && t + 1 < static_cast<size_t>(kRows); ++t)
    WavefrontStep<kBpp, kRows, false>(&w, rows, stride, prior, pixels, t);
  for (; t < pixels; ++t) WavefrontStep<kBpp, kRows, true>(&w, rows, stride, prior, pixels, t);
  for (; t < steps; ++t) WavefrontStep<kBpp, kRows, false>(&w, rows, stride, prior, pixels, t);
}

// The same wavefront eight rows wide, in 256-bit vectors: five to eight rows.
// The 16-bit channels of lanes 0-1 and 4-5 are in `low`, of 2-3 and 6-7 in
// `high` (the in-lane unpacking of AVX2); lane 4's above is lane 3's result,
// across the vector's halves. 1.05 ns a pixel for eight Paeth rows of 3 bytes
// a pixel (four rows: 1.6), 0.9 for 4 bytes a pixel (1.5).
struct Wavefront8 {
  __m256i left_low, left_high;
  __m256i above_left_low, above_left_high;
  __m256i average_low, average_high;
  __m256i channels;
};

CLIP_UNFILTER_AVX2_TARGET inline __m256i PredictWavefront8(__m256i a, __m256i b, __m256i c, __m256i average) {
  const __m256i b_minus_c = _mm256_sub_epi16(b, c);
  const __m256i a_minus_c = _mm256_sub_epi16(a, c);
  const __m256i pa = _mm256_abs_epi16(b_minus_c);
  const __m256i pb = _mm256_abs_epi16(a_minus_c);
  const __m256i pc = _mm256_abs_epi16(_mm256_add_epi16(a_minus_c, b_minus_c));
  const __m256i b_or_c = _mm256_blendv_epi8(b, c, _mm256_cmpgt_epi16(pb, pc));
  const __m256i paeth = _mm256_blendv_epi8(a, b_or_c, _mm256_cmpgt_epi16(pa, _mm256_min_epi16(pb, pc)));
  return _mm256_blendv_epi8(paeth, _mm256_srli_epi16(_mm256_add_epi16(a, b), 1), average);
}

template <size_t kBpp, int kRows, bool kAll>
CLIP_UNFILTER_AVX2_TARGET inline void Wavefront8Step(Wavefront8* w, uint8_t* rows, size_t stride, const uint8_t* prior,
                                                     size_t pixels, size_t t) {
  int32_t above = 0;
  if (kAll || t < pixels) std::memcpy(&above, prior + t * kBpp, 4);
  __m128i first_half = _mm_setzero_si128();
  __m128i second_half = _mm_setzero_si128();
  LoadLane<kBpp, kRows, kAll, 0>(&first_half, rows, stride, pixels, t);
  LoadLane<kBpp, kRows, kAll, 1>(&first_half, rows, stride, pixels, t);
  LoadLane<kBpp, kRows, kAll, 2>(&first_half, rows, stride, pixels, t);
  LoadLane<kBpp, kRows, kAll, 3>(&first_half, rows, stride, pixels, t);
  uint8_t* const rows_4 = rows + 4 * stride;
  LoadLane<kBpp, kRows - 4, kAll, 0>(&second_half, rows_4, stride, pixels, t - 4);
  LoadLane<kBpp, kRows - 4, kAll, 1>(&second_half, rows_4, stride, pixels, t - 4);
  LoadLane<kBpp, kRows - 4, kAll, 2>(&second_half, rows_4, stride, pixels, t - 4);
  LoadLane<kBpp, kRows - 4, kAll, 3>(&second_half, rows_4, stride, pixels, t - 4);
  const __m256i zero = _mm256_setzero_si256();
  const __m256i filtered = _mm256_inserti128_si256(_mm256_castsi128_si256(first_half), second_half, 1);
  // Above: lanes [0, 1 | 4, 5] take [prior, 0 | 3, 4], lanes [2, 3 | 6, 7] take [1, 2 | 5, 6].
  const __m128i above_up = _mm_slli_si128(_mm_unpacklo_epi8(_mm_cvtsi32_si128(above), _mm_setzero_si128()), 8);
  const __m256i before_low = _mm256_permute2x128_si256(_mm256_castsi128_si256(above_up), w->left_high, 0x20);
  const __m256i above_low = _mm256_alignr_epi8(w->left_low, before_low, 8);
  const __m256i above_high = _mm256_alignr_epi8(w->left_high, w->left_low, 8);
  const __m256i bytes = _mm256_set1_epi16(255);
  const __m256i low = _mm256_and_si256(
      _mm256_add_epi16(
          _mm256_unpacklo_epi8(filtered, zero),
          _mm256_and_si256(PredictWavefront8(w->left_low, above_low, w->above_left_low, w->average_low), w->channels)),
      bytes);
  const __m256i high = _mm256_and_si256(
      _mm256_add_epi16(
          _mm256_unpackhi_epi8(filtered, zero),
          _mm256_and_si256(PredictWavefront8(w->left_high, above_high, w->above_left_high, w->average_high),
                           w->channels)),
      bytes);
  const __m256i packed = _mm256_packus_epi16(low, high);  // Lanes 0-3 | 4-7.
  const __m128i packed_first = _mm256_castsi256_si128(packed);
  const __m128i packed_second = _mm256_extracti128_si256(packed, 1);
  StoreLane<kBpp, kRows, kAll, 0>(packed_first, rows, stride, pixels, t);
  StoreLane<kBpp, kRows, kAll, 1>(packed_first, rows, stride, pixels, t);
  StoreLane<kBpp, kRows, kAll, 2>(packed_first, rows, stride, pixels, t);
  StoreLane<kBpp, kRows, kAll, 3>(packed_first, rows, stride, pixels, t);
  StoreLane<kBpp, kRows - 4, kAll, 0>(packed_second, rows_4, stride, pixels, t - 4);
  StoreLane<kBpp, kRows - 4, kAll, 1>(packed_second, rows_4, stride, pixels, t - 4);
  StoreLane<kBpp, kRows - 4, kAll, 2>(packed_second, rows_4, stride, pixels, t - 4);
  StoreLane<kBpp, kRows - 4, kAll, 3>(packed_second, rows_4, stride, pixels, t - 4);
  w->left_low = low;
  w->left_high = high;
  w->above_left_low = above_low;
  w->above_left_high = above_high;
}

template <size_t kBpp, int kRows>
CLIP_UNFILTER_AVX2_TARGET void UnfilterWavefront8Avx2(uint8_t* rows, size_t stride, const uint8_t* prior, size_t bytes,
                                                      const int* filters) {
  const size_t pixels = bytes / kBpp;
  const __m256i zero = _mm256_setzero_si256();
  auto average = [&](int r) -> int64_t { return r < kRows && filters[r] == 3 ? -1 : 0; };
  Wavefront8 w{zero,
               zero,
               zero,
               zero,
               _mm256_set_epi64x(average(5), average(4), average(1), average(0)),
               _mm256_set_epi64x(average(7), average(6), average(3), average(2)),
               kBpp == 3 ? _mm256_setr_epi16(-1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 0, -1, -1, -1, 0)
                         : _mm256_set1_epi16(-1)};
  const size_t steps = pixels + kRows - 1;
  size_t t = 0;
  for (; t < steps && t + 1 < static_cast<size_t>(kRows); ++t) {
    Wavefront8Step<kBpp, kRows, false>(&w, rows, stride, prior, pixels, t);
  }
  for (; t < pixels; ++t) Wavefront8Step<kBpp, kRows, true>(&w, rows, stride, prior, pixels, t);
  for (; t < steps; ++t) Wavefront8Step<kBpp, kRows, false>(&w, rows, stride, prior, pixels, t);
}

// Two to four rows take the 128-bit wavefront, five to eight the 256-bit one
// (one step of eight lanes costs about a third more than one of four).
template <size_t kBpp>
void UnfilterWavefront(uint8_t* rows, size_t stride, size_t count, const uint8_t* prior, size_t bytes,
                       const int* filters) {
  switch (count) {
    case 2:
      return UnfilterWavefrontAvx2<kBpp, 2>(rows, stride, prior, bytes, filters);
    case 3:
      return UnfilterWavefrontAvx2<kBpp, 3>(rows, stride, prior, bytes, filters);
    case 4:
      return UnfilterWavefrontAvx2<kBpp, 4>(rows, stride, prior, bytes, filters);
    case 5:
      return UnfilterWavefront8Avx2<kBpp, 5>(rows, stride, prior, bytes, filters);
    case 6:
      return UnfilterWavefront8Avx2<kBpp, 6>(rows, stride, prior, bytes, filters);
    case 7:
      return UnfilterWavefront8Avx2<kBpp, 7>(rows, stride, prior, bytes, filters);
    default:
      return UnfilterWavefront8Avx2<kBpp, 8>(rows, stride, prior, bytes, filters);
  }
}

// Rows of 3 or 4 bytes per pixel on a CPU with AVX2.
template <size_t kBpp>
void UnfilterRowsAvx2(uint8_t* rows, size_t stride, size_t count, const uint8_t* prior, size_t bytes) {
  for (size_t i = 0; i < count;) {
    uint8_t* row = rows + i * stride + 1;
    const int filter = row[-1];
    if (filter == 3 || filter == 4) {
      // The run of Average and Paeth rows from here, up to eight.
      int filters[8] = {filter, 0, 0, 0, 0, 0, 0, 0};
      size_t run = 1;
      while (run < 8 && i + run < count && (rows[(i + run) * stride] == 3 || rows[(i + run) * stride] == 4)) {
        filters[run] = rows[(i + run) * stride];
        ++run;
      }
      if (run >= 2) {
        UnfilterWavefront<kBpp>(row, stride, run, prior, bytes, filters);
        prior = rows + (i + run - 1) * stride + 1;
        i += run;
        continue;
      }
    }
    if (filter == 1) {
      UnfilterSubAvx2<kBpp>(row, bytes);
    } else if (filter == 4) {
      UnfilterPaethAvx2<kBpp>(row, prior, bytes);
    } else {
      UnfilterRowScalar(filter, row, prior, bytes, kBpp);
    }
    prior = row;
    ++i;
  }
}
#endif

}  // namespace

void UnfilterRows(uint8_t* rows, size_t stride, size_t count, const uint8_t* prior, size_t bytes, size_t bpp) {
#if defined(CLIP_PNG_UNFILTER_AVX2)
  if ((bpp == 3 || bpp == 4) && GetCpuFeatures().avx2) {
    return (bpp == 3 ? UnfilterRowsAvx2<3> : UnfilterRowsAvx2<4>)(rows, stride, count, prior, bytes);
  }
#endif
  UnfilterRowsScalar(rows, stride, count, prior, bytes, bpp);
}

void UnfilterRowsScalar(uint8_t* rows, size_t stride, size_t count, const uint8_t* prior, size_t bytes, size_t bpp) {
  for (size_t i = 0; i < count; ++i) {
    uint8_t* row = rows + i * stride + 1;
    UnfilterRowScalar(row[-1], row, prior, bytes, bpp);
    prior = row;
  }
}

}  // namespace decode
}  // namespace clip

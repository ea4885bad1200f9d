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
// AVX2: 128-bit pabsw, pblendvb and pshufb, and the 256-bit wavefront.
#define CLIP_UNFILTER_AVX2_TARGET __attribute__((target("avx2")))

// Sub: each pixel plus all before it in the row, as prefix sums over one
// vector (shifted adds: 16 pixels of 1 byte, 8 of 2, 4 of 3 or 4) plus the
// previous vector's last pixel. A vector of 3-byte pixels stores 12 bytes, so
// that the next load never overlaps a store still in flight. 2.0 -> 0.44 ns a
// pixel (3 bytes) on a Zen 5 EPYC (the byte loop waits on the store of the
// byte bpp before).
template <size_t kBpp>
CLIP_UNFILTER_AVX2_TARGET void UnfilterSubAvx2(uint8_t* row, size_t bytes) {
  constexpr size_t kStep = kBpp == 3 ? 12 : 16;
  // The last pixel of a vector in every pixel of the next.
  alignas(16) static constexpr int8_t kLastPixel[4][16] = {
      {15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15, 15},
      {14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15, 14, 15},
      {9, 10, 11, 9, 10, 11, 9, 10, 11, 9, 10, 11, -1, -1, -1, -1},
      {12, 13, 14, 15, 12, 13, 14, 15, 12, 13, 14, 15, 12, 13, 14, 15},
  };
  const __m128i last_pixel = _mm_load_si128(reinterpret_cast<const __m128i*>(kLastPixel[kBpp - 1]));
  __m128i carry = _mm_setzero_si128();
  size_t i = 0;
  for (; i + 16 <= bytes; i += kStep) {
    __m128i x = _mm_loadu_si128(reinterpret_cast<const __m128i*>(row + i));
    x = _mm_add_epi8(x, _mm_slli_si128(x, kBpp));
    x = _mm_add_epi8(x, _mm_slli_si128(x, 2 * kBpp));
    if (kBpp <= 2) x = _mm_add_epi8(x, _mm_slli_si128(x, 4 * kBpp));
    if (kBpp == 1) x = _mm_add_epi8(x, _mm_slli_si128(x, 8));
    x = _mm_add_epi8(x, carry);
    if (kBpp != 3) {
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

// 16-bit channel operations on 128- and 256-bit vectors, so that the Paeth
// predictor and the wavefront step are written once for both widths.
#define CLIP_UNFILTER_BOTH_WIDTHS(name, op128, op256)                                         \
  CLIP_UNFILTER_AVX2_TARGET inline __m128i name(__m128i a, __m128i b) { return op128(a, b); } \
  CLIP_UNFILTER_AVX2_TARGET inline __m256i name(__m256i a, __m256i b) { return op256(a, b); }
CLIP_UNFILTER_BOTH_WIDTHS(Add16, _mm_add_epi16, _mm256_add_epi16)
CLIP_UNFILTER_BOTH_WIDTHS(Sub16, _mm_sub_epi16, _mm256_sub_epi16)
CLIP_UNFILTER_BOTH_WIDTHS(Min16, _mm_min_epi16, _mm256_min_epi16)
CLIP_UNFILTER_BOTH_WIDTHS(Greater16, _mm_cmpgt_epi16, _mm256_cmpgt_epi16)
CLIP_UNFILTER_BOTH_WIDTHS(And, _mm_and_si128, _mm256_and_si256)
CLIP_UNFILTER_BOTH_WIDTHS(WidenLow, _mm_unpacklo_epi8, _mm256_unpacklo_epi8)
CLIP_UNFILTER_BOTH_WIDTHS(WidenHigh, _mm_unpackhi_epi8, _mm256_unpackhi_epi8)
CLIP_UNFILTER_BOTH_WIDTHS(Narrow, _mm_packus_epi16, _mm256_packus_epi16)
#undef CLIP_UNFILTER_BOTH_WIDTHS
CLIP_UNFILTER_AVX2_TARGET inline __m128i Abs16(__m128i a) { return _mm_abs_epi16(a); }
CLIP_UNFILTER_AVX2_TARGET inline __m256i Abs16(__m256i a) { return _mm256_abs_epi16(a); }
CLIP_UNFILTER_AVX2_TARGET inline __m128i Half16(__m128i a) { return _mm_srli_epi16(a, 1); }
CLIP_UNFILTER_AVX2_TARGET inline __m256i Half16(__m256i a) { return _mm256_srli_epi16(a, 1); }
CLIP_UNFILTER_AVX2_TARGET inline __m128i Select(__m128i a, __m128i b, __m128i where_b) {
  return _mm_blendv_epi8(a, b, where_b);
}
CLIP_UNFILTER_AVX2_TARGET inline __m256i Select(__m256i a, __m256i b, __m256i where_b) {
  return _mm256_blendv_epi8(a, b, where_b);
}

// Paeth's predictor in 16-bit channels: p = a + b - c; pa = |p - a| = |b - c|,
// pb = |a - c|, pc = |a + b - 2c|; a where pa <= pb and pa <= pc, else b where
// pb <= pc, else c.
template <typename V>
CLIP_UNFILTER_AVX2_TARGET inline V PredictPaeth(V a, V b, V c) {
  const V b_minus_c = Sub16(b, c);
  const V a_minus_c = Sub16(a, c);
  const V pa = Abs16(b_minus_c);
  const V pb = Abs16(a_minus_c);
  const V pc = Abs16(Add16(a_minus_c, b_minus_c));
  const V b_or_c = Select(b, c, Greater16(pb, pc));
  return Select(a, b_or_c, Greater16(pa, Min16(pb, pc)));
}

// Paeth for one row of 3 or 4 bytes per pixel. The predictor of a pixel needs
// the pixel decoded just before it, so the work runs across one pixel's
// channels in 16-bit lanes, a chain of about ten dependent operations per
// pixel. Four pixels' filtered bytes are loaded at once and their results
// stored at once, so that no load reads bytes a store before it is still
// writing (a 4-byte load and store per pixel, each load overlapping the
// previous store: 8.2 ns a pixel on a Zen 5 EPYC; this: 5.4 ns, and 4.3 with
// no mask left on the chain). Rows end in the scalar loop.
template <size_t kBpp, int kPixel>
CLIP_UNFILTER_AVX2_TARGET inline void PaethPixelAvx2(__m128i filtered, __m128i above, __m128i channels, __m128i* a,
                                                     __m128i* c, __m128i* out) {
  constexpr int kShift = kPixel * static_cast<int>(kBpp);
  const __m128i zero = _mm_setzero_si128();
  // x and b masked to the pixel's channels here, off the chain: a, b and c
  // are then zero past them, and so is the predictor; the 8-bit add wraps
  // each channel and leaves its high byte zero.
  const __m128i x = _mm_and_si128(_mm_unpacklo_epi8(_mm_srli_si128(filtered, kShift), zero), channels);
  const __m128i b = _mm_and_si128(_mm_unpacklo_epi8(_mm_srli_si128(above, kShift), zero), channels);
  const __m128i predictor = PredictPaeth(*a, b, *c);
  *out = _mm_add_epi8(*out, _mm_slli_si128(_mm_packus_epi16(predictor, zero), kShift));
  *a = _mm_add_epi8(x, predictor);
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

// Average and Paeth rows as a wavefront: consecutive rows, each a lane of 32
// bits (one pixel) in a vector, row r one pixel behind row r - 1. At step t
// lane r decodes pixel t - r of its row, whose left neighbour is the lane's
// own result of step t - 1, whose neighbour above is lane r - 1's result of
// step t - 1 and whose neighbour above left is the above of step t - 1: the
// lanes' chains of dependent operations run side by side, the latency of one
// for all. Lane 0's above comes from `prior`. A lane not yet started loads
// nothing and all its inputs are zeros, so it holds zeros: what its row's
// first pixel then sees on its left and above left. Each pixel is one 4-byte
// load (the bytes past a pixel of 1-3 bytes are channels computed and never
// stored) and stores of exactly its bytes (a 3-byte pixel: 2 + 1), so that no
// load overlaps an earlier store. Two to four rows run in 128-bit
// vectors, five to eight in 256-bit ones (a step costs about a third more).
// Zen 5 EPYC, 4032-pixel rows, ns a pixel, 3 / 4 bytes a pixel: eight Paeth
// rows 1.05 / 0.9, four 1.6 / 1.5, two 3.2 / 3.0 (one row at a time: 4.3);
// Average the same (one byte at a time: 2.7).
//
// The channels of each lane widen to 16 bits: `low` holds lanes 0-1 (and 4-5
// in 256 bits, where AVX2 unpacks within each 128-bit half), `high` 2-3 (and
// 6-7).
template <typename V>
struct Wavefront {
  V left_low, left_high;  // The last results.
  V above_left_low, above_left_high;
  V average_low, average_high;  // All ones in the lanes of Average rows.
};

// The predictor of Average rows where `average` is set, else Paeth's.
template <typename V>
CLIP_UNFILTER_AVX2_TARGET inline V PredictWavefront(V a, V b, V c, V average) {
  return Select(PredictPaeth(a, b, c), Half16(Add16(a, b)), average);
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
  } else if (kBpp >= 2) {
    const uint16_t low = static_cast<uint16_t>(x);
    std::memcpy(p, &low, 2);
    if (kBpp == 3) p[2] = static_cast<uint8_t>(x >> 16);
  } else {
    p[0] = static_cast<uint8_t>(x);
  }
}

// Four lanes from rows [0, 4) at step t (lanes past kRows or not working at t
// stay zero), and back.
template <size_t kBpp, int kRows, bool kAll>
CLIP_UNFILTER_AVX2_TARGET inline __m128i LoadFour(const uint8_t* rows, size_t stride, size_t pixels, size_t t) {
  __m128i v = _mm_setzero_si128();
  LoadLane<kBpp, kRows, kAll, 0>(&v, rows, stride, pixels, t);
  LoadLane<kBpp, kRows, kAll, 1>(&v, rows, stride, pixels, t);
  LoadLane<kBpp, kRows, kAll, 2>(&v, rows, stride, pixels, t);
  LoadLane<kBpp, kRows, kAll, 3>(&v, rows, stride, pixels, t);
  return v;
}

template <size_t kBpp, int kRows, bool kAll>
CLIP_UNFILTER_AVX2_TARGET inline void StoreFour(__m128i packed, uint8_t* rows, size_t stride, size_t pixels, size_t t) {
  StoreLane<kBpp, kRows, kAll, 0>(packed, rows, stride, pixels, t);
  StoreLane<kBpp, kRows, kAll, 1>(packed, rows, stride, pixels, t);
  StoreLane<kBpp, kRows, kAll, 2>(packed, rows, stride, pixels, t);
  StoreLane<kBpp, kRows, kAll, 3>(packed, rows, stride, pixels, t);
}

// The filtered pixels of step t; rows 4-7 are lanes 0-3 of a second group
// four steps behind (before step 4, t - 4 wraps around to a step past every
// row's end, where LaneActive keeps them idle).
template <size_t kBpp, int kRows, bool kAll>
CLIP_UNFILTER_AVX2_TARGET inline void LoadLanes(__m128i* v, const uint8_t* rows, size_t stride, size_t pixels,
                                                size_t t) {
  *v = LoadFour<kBpp, kRows, kAll>(rows, stride, pixels, t);
}
template <size_t kBpp, int kRows, bool kAll>
CLIP_UNFILTER_AVX2_TARGET inline void LoadLanes(__m256i* v, const uint8_t* rows, size_t stride, size_t pixels,
                                                size_t t) {
  const __m128i first = LoadFour<kBpp, kRows, kAll>(rows, stride, pixels, t);
  const __m128i second = LoadFour<kBpp, kRows - 4, kAll>(rows + 4 * stride, stride, pixels, t - 4);
  *v = _mm256_inserti128_si256(_mm256_castsi128_si256(first), second, 1);
}

template <size_t kBpp, int kRows, bool kAll>
CLIP_UNFILTER_AVX2_TARGET inline void StoreLanes(__m128i packed, uint8_t* rows, size_t stride, size_t pixels,
                                                 size_t t) {
  StoreFour<kBpp, kRows, kAll>(packed, rows, stride, pixels, t);
}
template <size_t kBpp, int kRows, bool kAll>
CLIP_UNFILTER_AVX2_TARGET inline void StoreLanes(__m256i packed, uint8_t* rows, size_t stride, size_t pixels,
                                                 size_t t) {
  StoreFour<kBpp, kRows, kAll>(_mm256_castsi256_si128(packed), rows, stride, pixels, t);
  StoreFour<kBpp, kRows - 4, kAll>(_mm256_extracti128_si256(packed, 1), rows + 4 * stride, stride, pixels, t - 4);
}

// Each lane's above: lane 0 takes `above` (widened), lane r lane r - 1's left.
// 128 bits: [above, 0] and [1, 2]; 256 bits: [above, 0 | 3, 4] and [1, 2 | 5, 6].
CLIP_UNFILTER_AVX2_TARGET inline void Above(__m128i left_low, __m128i left_high, __m128i above, __m128i* above_low,
                                            __m128i* above_high) {
  *above_low = _mm_unpacklo_epi64(above, left_low);
  *above_high = _mm_alignr_epi8(left_high, left_low, 8);
}
CLIP_UNFILTER_AVX2_TARGET inline void Above(__m256i left_low, __m256i left_high, __m128i above, __m256i* above_low,
                                            __m256i* above_high) {
  const __m256i before_low =
      _mm256_permute2x128_si256(_mm256_castsi128_si256(_mm_slli_si128(above, 8)), left_high, 0x20);
  *above_low = _mm256_alignr_epi8(left_low, before_low, 8);
  *above_high = _mm256_alignr_epi8(left_high, left_low, 8);
}

CLIP_UNFILTER_AVX2_TARGET inline void Fill16(__m128i* v, int16_t x) { *v = _mm_set1_epi16(x); }
CLIP_UNFILTER_AVX2_TARGET inline void Fill16(__m256i* v, int16_t x) { *v = _mm256_set1_epi16(x); }

template <size_t kBpp, int kRows, bool kAll, typename V>
CLIP_UNFILTER_AVX2_TARGET inline void WavefrontStep(Wavefront<V>* w, uint8_t* rows, size_t stride, const uint8_t* prior,
                                                    size_t pixels, size_t t) {
  int32_t above = 0;
  if (kAll || t < pixels) std::memcpy(&above, prior + t * kBpp, 4);
  V filtered;
  LoadLanes<kBpp, kRows, kAll>(&filtered, rows, stride, pixels, t);
  V above_low;
  V above_high;
  Above(w->left_low, w->left_high, _mm_unpacklo_epi8(_mm_cvtsi32_si128(above), _mm_setzero_si128()), &above_low,
        &above_high);
  V zero;
  Fill16(&zero, 0);
  V bytes;
  Fill16(&bytes, 255);
  // A 3-byte pixel's lane carries the next pixel's first byte as a 4th
  // channel, computed like the others and never stored.
  const V low =
      And(Add16(WidenLow(filtered, zero), PredictWavefront(w->left_low, above_low, w->above_left_low, w->average_low)),
          bytes);
  V high = zero;
  if (kRows > 2) {  // Else lanes 2-3 (and 6-7) are unused.
    high = And(Add16(WidenHigh(filtered, zero),
                     PredictWavefront(w->left_high, above_high, w->above_left_high, w->average_high)),
               bytes);
  }
  StoreLanes<kBpp, kRows, kAll>(Narrow(low, high), rows, stride, pixels, t);
  w->left_low = low;
  w->left_high = high;
  w->above_left_low = above_low;
  w->above_left_high = above_high;
}

// All ones in the 64 bits (four 16-bit channels) of each lane whose row is an
// Average row, in the order Wavefront keeps the lanes.
inline int64_t AverageLane(const int* filters, int rows, int lane) {
  return lane < rows && filters[lane] == 3 ? -1 : 0;
}
CLIP_UNFILTER_AVX2_TARGET inline void AverageLanes(const int* filters, int rows, __m128i* low, __m128i* high) {
  *low = _mm_set_epi64x(AverageLane(filters, rows, 1), AverageLane(filters, rows, 0));
  *high = _mm_set_epi64x(AverageLane(filters, rows, 3), AverageLane(filters, rows, 2));
}
CLIP_UNFILTER_AVX2_TARGET inline void AverageLanes(const int* filters, int rows, __m256i* low, __m256i* high) {
  *low = _mm256_set_epi64x(AverageLane(filters, rows, 5), AverageLane(filters, rows, 4), AverageLane(filters, rows, 1),
                           AverageLane(filters, rows, 0));
  *high = _mm256_set_epi64x(AverageLane(filters, rows, 7), AverageLane(filters, rows, 6), AverageLane(filters, rows, 3),
                            AverageLane(filters, rows, 2));
}

// `rows`: the first row's first pixel; `filters`: the rows' types, 3 or 4.
template <size_t kBpp, int kRows, typename V>
CLIP_UNFILTER_AVX2_TARGET void UnfilterWavefrontAvx2(uint8_t* rows, size_t stride, const uint8_t* prior, size_t bytes,
                                                     const int* filters) {
  const size_t pixels = bytes / kBpp;
  Wavefront<V> w;
  Fill16(&w.left_low, 0);
  w.left_high = w.above_left_low = w.above_left_high = w.left_low;
  AverageLanes(filters, kRows, &w.average_low, &w.average_high);
  const size_t steps = pixels + kRows - 1;
  size_t t = 0;
  for (; t < steps && t + 1 < static_cast<size_t>(kRows); ++t) {
    WavefrontStep<kBpp, kRows, false>(&w, rows, stride, prior, pixels, t);
  }
  for (; t < pixels; ++t) WavefrontStep<kBpp, kRows, true>(&w, rows, stride, prior, pixels, t);
  for (; t < steps; ++t) WavefrontStep<kBpp, kRows, false>(&w, rows, stride, prior, pixels, t);
}

// Two to eight rows (`count`): up to four in 128-bit vectors, more in 256-bit ones.
template <size_t kBpp>
void UnfilterWavefront(uint8_t* rows, size_t stride, size_t count, const uint8_t* prior, size_t bytes,
                       const int* filters) {
  using Kernel = void (*)(uint8_t*, size_t, const uint8_t*, size_t, const int*);
  static constexpr Kernel kByRows[9] = {
      nullptr,
      nullptr,
      UnfilterWavefrontAvx2<kBpp, 2, __m128i>,
      UnfilterWavefrontAvx2<kBpp, 3, __m128i>,
      UnfilterWavefrontAvx2<kBpp, 4, __m128i>,
      UnfilterWavefrontAvx2<kBpp, 5, __m256i>,
      UnfilterWavefrontAvx2<kBpp, 6, __m256i>,
      UnfilterWavefrontAvx2<kBpp, 7, __m256i>,
      UnfilterWavefrontAvx2<kBpp, 8, __m256i>,
  };
  kByRows[count](rows, stride, prior, bytes, filters);
}

// Rows of 1 to 4 bytes per pixel on a CPU with AVX2.
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
    } else if (filter == 4 && kBpp >= 3) {
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
  if (bpp >= 1 && bpp <= 4 && GetCpuFeatures().avx2) {
    static constexpr void (*kByBpp[4])(uint8_t*, size_t, size_t, const uint8_t*, size_t) = {
        UnfilterRowsAvx2<1>, UnfilterRowsAvx2<2>, UnfilterRowsAvx2<3>, UnfilterRowsAvx2<4>};
    return kByBpp[bpp - 1](rows, stride, count, prior, bytes);
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

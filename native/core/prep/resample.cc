#include "resample.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <utility>
#include <vector>

#include "cpu_features.h"
#include "errors.h"
#include "huge_pages.h"
#include "rgb_planes.h"

#if defined(__SSE2__)
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLIP_RESAMPLE_AVX512 1
#endif

// A function compiled for AVX2 as well as the baseline, the copy picked by
// the CPU when the library loads (an ifunc: ELF targets).
#if defined(__x86_64__) && defined(__linux__) && (defined(__GNUC__) || defined(__clang__))
#define CLIP_CLONES_AVX2 __attribute__((target_clones("avx2", "default")))
#else
#define CLIP_CLONES_AVX2
#endif

// The filter weights must round exactly as in Pillow, which is built without
// fused multiply-add. Where the target has FMA (-march=native and the like)
// the compiler would otherwise fuse the kernel polynomial and change the last
// bit of some weights, and with it some output pixels.
#if defined(__clang__)
#define CLIP_NO_FP_CONTRACT_ATTRIBUTE
#define CLIP_NO_FP_CONTRACT_BLOCK _Pragma("clang fp contract(off)")
#elif defined(__GNUC__)
#define CLIP_NO_FP_CONTRACT_ATTRIBUTE __attribute__((optimize("fp-contract=off")))
#define CLIP_NO_FP_CONTRACT_BLOCK
#else
#define CLIP_NO_FP_CONTRACT_ATTRIBUTE
#define CLIP_NO_FP_CONTRACT_BLOCK
#endif

namespace clip {
namespace {

// Pillow keeps 8 bits for the value and 2 for overshoot of the cubic's
// negative lobes in an int32 accumulator.
constexpr int kPrecisionBits = 32 - 8 - 2;
constexpr int32_t kRoundingBias = 1 << (kPrecisionBits - 1);
constexpr double kBicubicSupport = 2.0;

// Keys' cubic convolution with a = -0.5, written in Pillow's operation order
// so that the doubles round identically.
CLIP_NO_FP_CONTRACT_ATTRIBUTE double BicubicKernel(double x) {
  CLIP_NO_FP_CONTRACT_BLOCK
  constexpr double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}

inline uint8_t Clip8(int32_t value) {
  // Arithmetic shift floors negative sums, as Pillow's lookup-table clip does.
  const int32_t shifted = value >> kPrecisionBits;
  return static_cast<uint8_t>(std::clamp(shifted, 0, 255));
}

// Fixed-point filter taps for a contiguous run of output positions along one
// axis.
struct AxisTaps {
  int stride = 0;                // Pillow's ksize: slots per output position.
  std::vector<int> first;        // First input index per output position.
  std::vector<int> count;        // Number of taps per output position.
  std::vector<int32_t> weights;  // count[i] weights at i * stride.
};

// The input indices [begin, end) that some tap of `taps` reads.
struct TapsExtent {
  int begin;
  int end;
};
TapsExtent ExtentOf(const AxisTaps& taps) {
  TapsExtent extent{taps.first.front(), taps.first.front()};
  for (size_t i = 0; i < taps.first.size(); ++i) {
    extent.begin = std::min(extent.begin, taps.first[i]);
    extent.end = std::max(extent.end, taps.first[i] + taps.count[i]);
  }
  return extent;
}

// Pillow's precompute_coeffs + normalize_coeffs_8bpc, restricted to outputs
// [out_first, out_first + out_count).
CLIP_NO_FP_CONTRACT_ATTRIBUTE AxisTaps ComputeAxisTaps(int in_size, int out_size, int out_first, int out_count) {
  CLIP_NO_FP_CONTRACT_BLOCK
  // Pillow receives the source box as C floats, so sizes above 2^24 round
  // before the scale is computed.
  const double scale = static_cast<double>(static_cast<float>(in_size)) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = kBicubicSupport * filter_scale;
  const double inverse_filter_scale = 1.0 / filter_scale;

  AxisTaps taps;
  taps.stride = static_cast<int>(std::ceil(support)) * 2 + 1;
  taps.first.resize(out_count);
  taps.count.resize(out_count);
  taps.weights.assign(static_cast<size_t>(out_count) * taps.stride, 0);
  std::vector<double> kernel(taps.stride);

  for (int i = 0; i < out_count; ++i) {
    const int out_index = out_first + i;
    const double center = (out_index + 0.5) * scale;
    // Truncating casts, as in Pillow (negative values clamp to 0 anyway).
    int lo = static_cast<int>(center - support + 0.5);
    if (lo < 0) lo = 0;
    int hi = static_cast<int>(center + support + 0.5);
    if (hi > in_size) hi = in_size;
    const int n = std::min(hi - lo, taps.stride);

    double sum = 0.0;
    for (int t = 0; t < n; ++t) {
      const double w = BicubicKernel((t + lo - center + 0.5) * inverse_filter_scale);
      kernel[t] = w;
      sum += w;
    }
    int32_t* fixed = &taps.weights[static_cast<size_t>(i) * taps.stride];
    for (int t = 0; t < n; ++t) {
      const double w = sum != 0.0 ? kernel[t] / sum : kernel[t];
      // Round half away from zero into 22 fractional bits.
      fixed[t] = w < 0 ? static_cast<int32_t>(-0.5 + w * (1 << kPrecisionBits))
                       : static_cast<int32_t>(0.5 + w * (1 << kPrecisionBits));
    }
    taps.first[i] = lo;
    taps.count[i] = n;
  }
  return taps;
}

// The horizontal pass: one source row in, the window's columns out.
class HorizontalFilter {
 public:
  HorizontalFilter(AxisTaps taps, ResampleKernel kernel);
  void Run(const uint8_t* in, uint8_t* out);

 private:
  void RunScalar(const uint8_t* in, uint8_t* out) const;

  AxisTaps taps_;
#if defined(CLIP_RESAMPLE_AVX512)
  bool PrepareAvx512();
  void RunAvx512(const uint8_t* in, uint8_t* out);

  bool use_avx512_ = false;
  int blocks_ = 0;                      // Groups of kBlockOutputs outputs.
  int pairs_ = 0;                       // Tap pairs per output.
  std::vector<int> block_base_;         // First source column per block.
  std::vector<uint8_t> block_index_;    // 64 permute indices per block.
  std::vector<uint8_t> block_narrow_;   // Block's window fits in 64 columns.
  std::vector<int16_t> block_weights_;  // Per block and pair: 32 low, 32 high.
  size_t avx512_plane_size_ = 0;
  std::vector<uint8_t> byte_planes_;  // One row as R, G and B byte planes.
  std::vector<uint8_t> block_out_;    // Room for the last block's spill.
#endif
#if defined(__SSE2__)
  void RunSse2(const uint8_t* in, uint8_t* out);

  bool use_simd_ = false;
  bool use_avx2_ = false;      // HorizontalRowAvx2 (kAuto on CPUs with AVX2).
  int padded_ = 0;             // Taps per output rounded up to the lanes.
  std::vector<int16_t> low_;   // Weight bits 0..14, padded_ per output.
  std::vector<int16_t> high_;  // Weight >> 15, padded_ per output.
  int column_begin_ = 0;       // Source columns any tap reads.
  int column_end_ = 0;
  size_t plane_size_ = 0;
  std::vector<int16_t> planes_;  // One row as R, G and B planes.
#endif
};

#if defined(__SSE2__)
// With SSE2 (every x86-64 has it) the pass is exact too: each 22-bit weight
// w is split as hi * 2^15 + lo with lo in [0, 2^15), so that pmaddwd can
// multiply 16-bit pixels by 16-bit weight halves; sum(p * lo) and
// sum(p * hi) are exact int32 lane sums (see kMaxSimdTaps), recombined per
// lane as lo + (hi << 15) modulo 2^32 and then summed across the lanes: the
// integer Pillow's int32 loop computes, which fits in an int32. Each row is
// first split into 16-bit planes, so that a channel's taps are contiguous.
constexpr int kSimdLanes = 8;
// A lane adds at most 2 * 255 * 32767 per step; below 1024 taps the lane
// sums stay under 2^31.
constexpr int kMaxSimdTaps = 1024;

// One channel's lane sums from the low and high weight halves: lo + (hi <<
// 15) per lane, Pillow's products summed modulo 2^32 (its int32 sum fits).
inline __m128i Recombine(__m128i low, __m128i high) { return _mm_add_epi32(low, _mm_slli_epi32(high, 15)); }

// The red, green and blue lane sums of one output -> its three bytes at
// out[0..2] as Clip8 makes them, in one vector: the lanes summed by a 4 x 4
// transpose of adds ([r, g, b, 0]), the bias added, shifted and saturated to
// 0..255 by two packs. `spill`: out has room for a fourth byte.
inline void StorePixel(__m128i red, __m128i green, __m128i blue, uint8_t* out, bool spill) {
  const __m128i zero = _mm_setzero_si128();
  const __m128i rg = _mm_add_epi32(_mm_unpacklo_epi32(red, green), _mm_unpackhi_epi32(red, green));
  const __m128i b0 = _mm_add_epi32(_mm_unpacklo_epi32(blue, zero), _mm_unpackhi_epi32(blue, zero));
  __m128i sum = _mm_add_epi32(_mm_unpacklo_epi64(rg, b0), _mm_unpackhi_epi64(rg, b0));
  sum = _mm_srai_epi32(_mm_add_epi32(sum, _mm_set1_epi32(kRoundingBias)), kPrecisionBits);
  const __m128i bytes = _mm_packus_epi16(_mm_packs_epi32(sum, zero), zero);
  const uint32_t rgb = static_cast<uint32_t>(_mm_cvtsi128_si32(bytes));
  if (spill) {
    std::memcpy(out, &rgb, 4);
  } else {
    out[0] = static_cast<uint8_t>(rgb);
    out[1] = static_cast<uint8_t>(rgb >> 8);
    out[2] = static_cast<uint8_t>(rgb >> 16);
  }
}
#endif  // __SSE2__

HorizontalFilter::HorizontalFilter(AxisTaps taps, ResampleKernel kernel) : taps_(std::move(taps)) {
#if defined(CLIP_RESAMPLE_AVX512)
  use_avx512_ = kernel != ResampleKernel::kGeneric && ResampleAvx512Supported() && PrepareAvx512();
  if (use_avx512_) return;
#endif
#if defined(__SSE2__)
  use_simd_ = taps_.stride <= kMaxSimdTaps;
  if (!use_simd_) return;
#if defined(CLIP_RESAMPLE_AVX512)
  use_avx2_ = kernel != ResampleKernel::kGeneric && GetCpuFeatures().avx2;
#endif
  const int width = static_cast<int>(taps_.first.size());
  int max_count = 0;
  for (int n : taps_.count) max_count = std::max(max_count, n);
  padded_ = (max_count + kSimdLanes - 1) / kSimdLanes * kSimdLanes;
  low_.assign(static_cast<size_t>(width) * padded_, 0);
  high_.assign(low_.size(), 0);
  for (int x = 0; x < width; ++x) {
    for (int t = 0; t < taps_.count[x]; ++t) {
      const int32_t w = taps_.weights[static_cast<size_t>(x) * taps_.stride + t];
      low_[static_cast<size_t>(x) * padded_ + t] = static_cast<int16_t>(w & 0x7FFF);
      high_[static_cast<size_t>(x) * padded_ + t] = static_cast<int16_t>(w >> 15);
    }
  }
  // Only the columns some tap reads are split into planes; the zero tail
  // lets the last vector load run past them (its weights are zero).
  const TapsExtent columns = ExtentOf(taps_);
  column_begin_ = columns.begin;
  column_end_ = columns.end;
  plane_size_ = static_cast<size_t>(column_end_ - column_begin_) + padded_ + kSimdLanes;
  planes_.assign(plane_size_ * 3, 0);
#endif
}

void HorizontalFilter::Run(const uint8_t* in, uint8_t* out) {
#if defined(CLIP_RESAMPLE_AVX512)
  if (use_avx512_) {
    RunAvx512(in, out);
    return;
  }
#endif
#if defined(__SSE2__)
  if (use_simd_) {
    RunSse2(in, out);
    return;
  }
#endif
  RunScalar(in, out);
}

// Pillow's loop on interleaved RGB.
void HorizontalFilter::RunScalar(const uint8_t* in, uint8_t* out) const {
  const int width = static_cast<int>(taps_.first.size());
  for (int x = 0; x < width; ++x) {
    const int32_t* k = &taps_.weights[static_cast<size_t>(x) * taps_.stride];
    const uint8_t* p = in + static_cast<size_t>(taps_.first[x]) * 3;
    const int n = taps_.count[x];
    int32_t r = kRoundingBias;
    int32_t g = kRoundingBias;
    int32_t b = kRoundingBias;
    for (int t = 0; t < n; ++t) {
      r += p[3 * t + 0] * k[t];
      g += p[3 * t + 1] * k[t];
      b += p[3 * t + 2] * k[t];
    }
    out[3 * x + 0] = Clip8(r);
    out[3 * x + 1] = Clip8(g);
    out[3 * x + 2] = Clip8(b);
  }
}

#if defined(__SSE2__)
// Splits the source columns [column_begin, column_end) of one interleaved
// RGB row into the three 16-bit planes, returned in that order.
inline std::array<const int16_t*, 3> SplitPlanes(const uint8_t* in, int column_begin, int column_end, int16_t* planes,
                                                 size_t plane_size) {
  int16_t* red = planes;
  int16_t* green = red + plane_size;
  int16_t* blue = green + plane_size;
  const uint8_t* source = in + static_cast<size_t>(column_begin) * 3;
  for (int i = 0; i < column_end - column_begin; ++i) {
    red[i] = source[3 * i + 0];
    green[i] = source[3 * i + 1];
    blue[i] = source[3 * i + 2];
  }
  return {red, green, blue};
}

// One output column of the SSE2 and AVX2 passes: its split weights, where
// its taps start in the planes, and its tap count rounded up to 8 (the
// padded weights hold zeros there).
struct ColumnTaps {
  const int16_t* low;
  const int16_t* high;
  int offset;
  int count;
};

inline ColumnTaps ColumnAt(const AxisTaps& taps, const int16_t* low, const int16_t* high, int padded, int column_begin,
                           int x) {
  const size_t row = static_cast<size_t>(x) * padded;
  return {low + row, high + row, taps.first[x] - column_begin,
          (taps.count[x] + kSimdLanes - 1) / kSimdLanes * kSimdLanes};
}

// The SSE2 pass over one row, on HorizontalFilter's split weights and
// planes.
void HorizontalRowSse2(const uint8_t* in, uint8_t* out, const AxisTaps& taps, const int16_t* low, const int16_t* high,
                       int padded, int column_begin, int column_end, int16_t* planes, size_t plane_size) {
  const auto channels = SplitPlanes(in, column_begin, column_end, planes, plane_size);
  const int width = static_cast<int>(taps.first.size());
  for (int x = 0; x < width; ++x) {
    const ColumnTaps column = ColumnAt(taps, low, high, padded, column_begin, x);
    const int16_t* wl = column.low;
    const int16_t* wh = column.high;
    const int16_t* red = channels[0] + column.offset;
    const int16_t* green = channels[1] + column.offset;
    const int16_t* blue = channels[2] + column.offset;
    __m128i red_low = _mm_setzero_si128(), red_high = red_low;
    __m128i green_low = red_low, green_high = red_low;
    __m128i blue_low = red_low, blue_high = red_low;
    for (int t = 0; t < column.count; t += kSimdLanes) {
      const __m128i l = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wl + t));
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wh + t));
      const __m128i r = _mm_loadu_si128(reinterpret_cast<const __m128i*>(red + t));
      const __m128i g = _mm_loadu_si128(reinterpret_cast<const __m128i*>(green + t));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blue + t));
      red_low = _mm_add_epi32(red_low, _mm_madd_epi16(r, l));
      red_high = _mm_add_epi32(red_high, _mm_madd_epi16(r, h));
      green_low = _mm_add_epi32(green_low, _mm_madd_epi16(g, l));
      green_high = _mm_add_epi32(green_high, _mm_madd_epi16(g, h));
      blue_low = _mm_add_epi32(blue_low, _mm_madd_epi16(b, l));
      blue_high = _mm_add_epi32(blue_high, _mm_madd_epi16(b, h));
    }
    StorePixel(Recombine(red_low, red_high), Recombine(green_low, green_high), Recombine(blue_low, blue_high),
               out + 3 * x, x + 1 < width);
  }
}

#if defined(CLIP_RESAMPLE_AVX512)
// The same pass on AVX2 (CPUs without AVX-512 VBMI: Zen 2 and 3, Skylake to
// Cascade Lake), 16 taps per step: one step instead of two for a 640-pixel
// row's 9-13 taps to 224-298 columns, and the plane split vectorized wider.
// Each channel's low and high halves are recombined per lane (Recombine)
// before the two 128-bit halves of the lanes are added.
__attribute__((target("avx2"))) void HorizontalRowAvx2(const uint8_t* in, uint8_t* out, const AxisTaps& taps,
                                                       const int16_t* low, const int16_t* high, int padded,
                                                       int column_begin, int column_end, int16_t* planes,
                                                       size_t plane_size) {
  const auto planes_of = SplitPlanes(in, column_begin, column_end, planes, plane_size);
  const int width = static_cast<int>(taps.first.size());
  for (int x = 0; x < width; ++x) {
    const ColumnTaps column = ColumnAt(taps, low, high, padded, column_begin, x);
    const int16_t* wl = column.low;
    const int16_t* wh = column.high;
    const int n = column.count;  // 16 taps at a time, then 8
    __m256i sums[3] = {_mm256_setzero_si256(), _mm256_setzero_si256(), _mm256_setzero_si256()};
    const int16_t* channels[3] = {planes_of[0] + column.offset, planes_of[1] + column.offset,
                                  planes_of[2] + column.offset};
    int t = 0;
    for (; t + 2 * kSimdLanes <= n; t += 2 * kSimdLanes) {
      const __m256i l = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wl + t));
      const __m256i h = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(wh + t));
      for (int c = 0; c < 3; ++c) {
        const __m256i p = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(channels[c] + t));
        sums[c] = _mm256_add_epi32(
            sums[c], _mm256_add_epi32(_mm256_madd_epi16(p, l), _mm256_slli_epi32(_mm256_madd_epi16(p, h), 15)));
      }
    }
    __m128i lanes[3];
    for (int c = 0; c < 3; ++c) {
      lanes[c] = _mm_add_epi32(_mm256_castsi256_si128(sums[c]), _mm256_extracti128_si256(sums[c], 1));
    }
    if (t < n) {
      const __m128i l = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wl + t));
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wh + t));
      for (int c = 0; c < 3; ++c) {
        const __m128i p = _mm_loadu_si128(reinterpret_cast<const __m128i*>(channels[c] + t));
        lanes[c] = _mm_add_epi32(lanes[c], Recombine(_mm_madd_epi16(p, l), _mm_madd_epi16(p, h)));
      }
    }
    StorePixel(lanes[0], lanes[1], lanes[2], out + 3 * x, x + 1 < width);
  }
}
#endif

void HorizontalFilter::RunSse2(const uint8_t* in, uint8_t* out) {
#if defined(CLIP_RESAMPLE_AVX512)
  if (use_avx2_) {
    HorizontalRowAvx2(in, out, taps_, low_.data(), high_.data(), padded_, column_begin_, column_end_, planes_.data(),
                      plane_size_);
    return;
  }
#endif
  HorizontalRowSse2(in, out, taps_, low_.data(), high_.data(), padded_, column_begin_, column_end_, planes_.data(),
                    plane_size_);
}
#endif  // __SSE2__

#if defined(CLIP_RESAMPLE_AVX512)
// AVX-512 (F, BW, VL, VBMI and VNNI: Ice Lake, Zen 4 and later), chosen at
// run time. The horizontal pass computes 16 outputs of one channel per
// vector, one output per 32-bit lane, so that no horizontal sums are needed:
// a byte permute gathers, for every lane, the two source pixels of one tap
// pair from a 128-column window of that channel's plane, zero-extended to
// 16 bits, and vpdpwssd multiplies them by the two weights' low (bits 0..14)
// and high (weight >> 15) halves and adds the products to the lane (one
// instruction for pmaddwd's products and their add: a 640x480 photo's resize
// ran 1.2x faster). lo + (hi << 15) + bias is then Pillow's int32 sum: exact modulo
// 2^32, and Pillow's sum fits in an int32.
// GCC 12's AVX-512 intrinsics initialize their undefined operands with
// themselves, which -Wmaybe-uninitialized reports at every call (GCC bug
// 105593).
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#endif
#define CLIP_AVX512_TARGET __attribute__((target("avx512f,avx512bw,avx512vl,avx512vbmi,avx512vnni")))
constexpr int kBlockOutputs = 16;
constexpr int kWindowColumns = 128;  // What one two-register byte permute reads.
// The low-half lane sums stay below 2^31 for up to 2^30 / (255 * 32767)
// pairs; far more taps than a window of 128 columns holds.
constexpr int kMaxPairs = 64;

bool PrepareAvx512Taps(const AxisTaps& taps, int* blocks, int* pairs, std::vector<int>* block_base,
                       std::vector<uint8_t>* block_index, std::vector<uint8_t>* block_narrow,
                       std::vector<int16_t>* block_weights) {
  const int width = static_cast<int>(taps.first.size());
  int max_count = 0;
  for (int n : taps.count) max_count = std::max(max_count, n);
  *pairs = (max_count + 1) / 2;
  if (*pairs > kMaxPairs) return false;
  *blocks = (width + kBlockOutputs - 1) / kBlockOutputs;
  block_base->assign(*blocks, 0);
  block_index->assign(static_cast<size_t>(*blocks) * 64, 0);
  // Most blocks (scales up to about 4) need one 64-byte register, not two.
  block_narrow->assign(*blocks, 1);
  block_weights->assign(static_cast<size_t>(*blocks) * *pairs * 64, 0);
  for (int b = 0; b < *blocks; ++b) {
    const int x0 = b * kBlockOutputs;
    const int base = taps.first[x0];
    (*block_base)[b] = base;
    for (int i = 0; i < kBlockOutputs && x0 + i < width; ++i) {
      const int x = x0 + i;
      const int offset = taps.first[x] - base;
      // The pair's second pixel must lie inside the window too.
      if (offset < 0 || offset + 1 >= kWindowColumns) return false;
      if (offset + 1 >= 64) (*block_narrow)[b] = 0;
      uint8_t* index = &(*block_index)[static_cast<size_t>(b) * 64 + 4 * i];
      index[0] = static_cast<uint8_t>(offset);
      index[2] = static_cast<uint8_t>(offset + 1);
      for (int t = 0; t < taps.count[x]; ++t) {
        const int32_t w = taps.weights[static_cast<size_t>(x) * taps.stride + t];
        int16_t* pair = &(*block_weights)[(static_cast<size_t>(b) * *pairs + t / 2) * 64];
        pair[2 * i + t % 2] = static_cast<int16_t>(w & 0x7FFF);
        pair[32 + 2 * i + t % 2] = static_cast<int16_t>(w >> 15);
      }
    }
  }
  return true;
}

bool HorizontalFilter::PrepareAvx512() {
  if (!PrepareAvx512Taps(taps_, &blocks_, &pairs_, &block_base_, &block_index_, &block_narrow_, &block_weights_))
    return false;
  const TapsExtent columns = ExtentOf(taps_);
  column_begin_ = columns.begin;
  column_end_ = columns.end;
  // Zero tails: the last window and the last pair read past the columns
  // (with zero weights), and the split writes whole groups of 16.
  avx512_plane_size_ = static_cast<size_t>(column_end_ - column_begin_) + 2 * pairs_ + kWindowColumns + 64;
  byte_planes_.assign(avx512_plane_size_ * 3, 0);
  return true;
}

// acc + the pairwise products of x and w (int16 pairs into int32 lanes,
// modulo 2^32; pmaddwd's products and their add in one instruction). In
// assembly: GCC 12 compiles the intrinsic so that every accumulator is copied
// through another register on each step of the loops below, which made a
// photo's resize 1.15x slower than this.
CLIP_AVX512_TARGET inline __m512i DotPairs(__m512i acc, __m512i x, __m512i w) {
  asm("vpdpwssd %2, %1, %0" : "+v"(acc) : "v"(x), "v"(w));
  return acc;
}

// The pixel pairs of a block's 16 outputs from a window of 128 columns of
// one plane (two registers), zero-extended to 16 bits.
CLIP_AVX512_TARGET inline __m512i WidePairs(const uint8_t* window, __m512i index) {
  return _mm512_maskz_permutex2var_epi8(0x5555555555555555ULL, _mm512_loadu_si512(window), index,
                                        _mm512_loadu_si512(window + 64));
}

// A block's pairs of taps added into the low- and high-half sums of each
// channel: the pixel pairs from one register of each plane's window (within
// 64 columns) or, kWide, two. Pairs outer, channels inner: each pair's
// weights are loaded once.
template <bool kWide>
CLIP_AVX512_TARGET inline void AddPairs(const uint8_t* const windows[3], __m512i index, const int16_t* weights,
                                        int pairs, __m512i* low, __m512i* high) {
  for (int p = 0; p < pairs; ++p) {
    const __m512i wl = _mm512_loadu_si512(weights + p * 64);
    const __m512i wh = _mm512_loadu_si512(weights + p * 64 + 32);
    for (int c = 0; c < 3; ++c) {
      const __m512i pixels =
          kWide ? WidePairs(windows[c] + 2 * p, index)
                : _mm512_maskz_permutexvar_epi8(0x5555555555555555ULL, index, _mm512_loadu_si512(windows[c] + 2 * p));
      low[c] = DotPairs(low[c], pixels, wl);
      high[c] = DotPairs(high[c], pixels, wh);
    }
  }
}

// One channel's 16 outputs from its low- and high-half sums, as Clip8 makes them.
CLIP_AVX512_TARGET inline __m128i ChannelBytes(__m512i low, __m512i high) {
  const __m512i sum =
      _mm512_add_epi32(_mm512_add_epi32(_mm512_set1_epi32(kRoundingBias), low), _mm512_slli_epi32(high, 15));
  return _mm512_cvtusepi32_epi8(_mm512_max_epi32(_mm512_srai_epi32(sum, kPrecisionBits), _mm512_setzero_si512()));
}

CLIP_AVX512_TARGET void HorizontalFilter::RunAvx512(const uint8_t* in, uint8_t* out) {
  uint8_t* planes[3] = {byte_planes_.data(), byte_planes_.data() + avx512_plane_size_,
                        byte_planes_.data() + 2 * avx512_plane_size_};
  // Split RGB into planes, 16 pixels (48 bytes) per step.
  const uint8_t* source = in + static_cast<size_t>(column_begin_) * 3;
  const int columns = column_end_ - column_begin_;
  for (int i = 0; i < columns; i += 16) {
    const __m512i split_rgb = SplitRgb16(source + 3 * i, std::min(16, columns - i));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[0] + i), _mm512_castsi512_si128(split_rgb));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[1] + i), _mm512_extracti32x4_epi32(split_rgb, 1));
    _mm_storeu_si128(reinterpret_cast<__m128i*>(planes[2] + i), _mm512_extracti32x4_epi32(split_rgb, 2));
  }

  alignas(64) static constexpr uint8_t kMerge[64] = {0,  16, 32, 1,  17, 33, 2,  18, 34, 3,  19, 35, 4,  20, 36, 5,
                                                     21, 37, 6,  22, 38, 7,  23, 39, 8,  24, 40, 9,  25, 41, 10, 26,
                                                     42, 11, 27, 43, 12, 28, 44, 13, 29, 45, 14, 30, 46, 15, 31, 47,
                                                     0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0};
  const __m512i merge = _mm512_load_si512(kMerge);
  const __m512i zero = _mm512_setzero_si512();
  const int width = static_cast<int>(taps_.first.size());
  for (int b = 0; b < blocks_; ++b) {
    const __m512i index = _mm512_loadu_si512(&block_index_[static_cast<size_t>(b) * 64]);
    const int16_t* weights = &block_weights_[static_cast<size_t>(b) * pairs_ * 64];
    const size_t offset = static_cast<size_t>(block_base_[b] - column_begin_);
    const uint8_t* red = planes[0] + offset;
    const uint8_t* green = planes[1] + offset;
    const uint8_t* blue = planes[2] + offset;
    const uint8_t* const windows[3] = {red, green, blue};
    __m512i low[3] = {zero, zero, zero};
    __m512i high[3] = {zero, zero, zero};
    if (block_narrow_[b]) {
      AddPairs<false>(windows, index, weights, pairs_, low, high);
    } else {
      AddPairs<true>(windows, index, weights, pairs_, low, high);
    }
    __m512i rgb = _mm512_zextsi128_si512(ChannelBytes(low[0], high[0]));
    rgb = _mm512_inserti32x4(rgb, ChannelBytes(low[1], high[1]), 1);
    rgb = _mm512_inserti32x4(rgb, ChannelBytes(low[2], high[2]), 2);
    const int n = std::min(kBlockOutputs, width - b * kBlockOutputs);
    const __mmask64 mask = (__mmask64{1} << (3 * n)) - 1;
    _mm512_mask_storeu_epi8(out + static_cast<size_t>(b) * kBlockOutputs * 3, mask,
                            _mm512_permutexvar_epi8(merge, rgb));
  }
}

// The vertical pass, 64 bytes of a row per step, two taps at a time: the
// bytes of the two rows interleaved and zero-extended to 16-bit pairs, one
// pair per int32 lane, and vpdpwssd multiplies each pair by the two taps'
// low (bits 0..14) and high (weight >> 15) weight halves, as the horizontal
// pass does (an odd tap count ends with a zero-weight partner). The unpacks
// work within 128-bit lanes and the final packs undo their order there.
// vpmulld by the full weight, one tap at a time, took 1.4x as long.
CLIP_AVX512_TARGET void ResampleVerticalAvx512(const uint8_t* rows, size_t row_stride, int row_origin, int row_bytes,
                                               const AxisTaps& taps, uint8_t* dst, size_t dst_stride) {
  const __m512i bias = _mm512_set1_epi32(kRoundingBias);
  const __m512i zero = _mm512_setzero_si512();
  const int height = static_cast<int>(taps.first.size());
  std::vector<int32_t> low((taps.stride + 1) / 2);
  std::vector<int32_t> high(low.size());
  for (int y = 0; y < height; ++y) {
    const int32_t* k = &taps.weights[static_cast<size_t>(y) * taps.stride];
    const int n = taps.count[y];
    const int pairs = (n + 1) / 2;
    for (int p = 0; p < pairs; ++p) {
      const int32_t w0 = k[2 * p];
      const int32_t w1 = 2 * p + 1 < n ? k[2 * p + 1] : 0;
      low[p] = static_cast<int32_t>(static_cast<uint32_t>(w0 & 0x7FFF) | (static_cast<uint32_t>(w1 & 0x7FFF) << 16));
      high[p] = static_cast<int32_t>(static_cast<uint32_t>(static_cast<uint16_t>(w0 >> 15)) |
                                     (static_cast<uint32_t>(static_cast<uint16_t>(w1 >> 15)) << 16));
    }
    const uint8_t* first = rows + static_cast<size_t>(taps.first[y] - row_origin) * row_stride;
    uint8_t* out = dst + static_cast<size_t>(y) * dst_stride;
    for (int i = 0; i < row_bytes; i += 64) {
      const __mmask64 mask = row_bytes - i >= 64 ? ~__mmask64{0} : (__mmask64{1} << (row_bytes - i)) - 1;
      __m512i low_sums[4] = {zero, zero, zero, zero};
      __m512i high_sums[4] = {zero, zero, zero, zero};
      for (int p = 0; p < pairs; ++p) {
        const uint8_t* in = first + static_cast<size_t>(2 * p) * row_stride + i;
        const __m512i a = _mm512_maskz_loadu_epi8(mask, in);
        // The partner of an odd count's last tap has weight 0: any row will do.
        const __m512i b = _mm512_maskz_loadu_epi8(mask, 2 * p + 1 < n ? in + row_stride : in);
        const __m512i ab_low = _mm512_unpacklo_epi8(a, b);
        const __m512i ab_high = _mm512_unpackhi_epi8(a, b);
        const __m512i pixels[4] = {_mm512_unpacklo_epi8(ab_low, zero), _mm512_unpackhi_epi8(ab_low, zero),
                                   _mm512_unpacklo_epi8(ab_high, zero), _mm512_unpackhi_epi8(ab_high, zero)};
        const __m512i wl = _mm512_set1_epi32(low[p]);
        const __m512i wh = _mm512_set1_epi32(high[p]);
        for (int j = 0; j < 4; ++j) {
          low_sums[j] = DotPairs(low_sums[j], pixels[j], wl);
          high_sums[j] = DotPairs(high_sums[j], pixels[j], wh);
        }
      }
      __m512i shifted[4];
      for (int j = 0; j < 4; ++j) {
        const __m512i sum = _mm512_add_epi32(_mm512_add_epi32(bias, low_sums[j]), _mm512_slli_epi32(high_sums[j], 15));
        shifted[j] = _mm512_srai_epi32(sum, kPrecisionBits);
      }
      // Signed 32 -> unsigned 16 -> unsigned 8 saturation: Clip8 on these
      // sums (far inside the 16-bit range), bytes back in source order.
      const __m512i bytes =
          _mm512_packus_epi16(_mm512_packus_epi32(shifted[0], shifted[1]), _mm512_packus_epi32(shifted[2], shifted[3]));
      _mm512_mask_storeu_epi8(out + i, mask, bytes);
    }
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif  // CLIP_RESAMPLE_AVX512

// Vertical pass. `rows` points at the input row whose index is `row_origin`;
// every tap of `taps` refers to absolute input rows.
// Compiled for AVX2 as well (CLIP_CLONES_AVX2): the loop below vectorizes
// with AVX2's 32-bit multiply, which SSE2 lacks (the pass takes 15% less).
CLIP_CLONES_AVX2 void ResampleVertical(const uint8_t* rows, size_t row_stride, int row_origin, int row_bytes,
                                       const AxisTaps& taps, uint8_t* dst, size_t dst_stride) {
  std::vector<int32_t> accumulator(row_bytes);
  const int height = static_cast<int>(taps.first.size());
  for (int y = 0; y < height; ++y) {
    std::fill(accumulator.begin(), accumulator.end(), kRoundingBias);
    const int32_t* k = &taps.weights[static_cast<size_t>(y) * taps.stride];
    const int n = taps.count[y];
    // Taps outer, pixels inner: the inner loop is a plain vectorizable
    // multiply-add; integer sums do not depend on the order.
    for (int t = 0; t < n; ++t) {
      const uint8_t* in = rows + static_cast<size_t>(taps.first[y] + t - row_origin) * row_stride;
      const int32_t w = k[t];
      int32_t* __restrict acc = accumulator.data();
      const uint8_t* __restrict pixels = in;
      for (int i = 0; i < row_bytes; ++i) acc[i] += pixels[i] * w;
    }
    uint8_t* out = dst + static_cast<size_t>(y) * dst_stride;
    for (int i = 0; i < row_bytes; ++i) out[i] = Clip8(accumulator[i]);
  }
}

}  // namespace

bool ResampleAvx512Supported() {
#if defined(CLIP_RESAMPLE_AVX512)
  // CpuFeatures: what the OS saves the registers of, under CLIP_NATIVE_MAX_CPU_ISA.
  return GetCpuFeatures().avx512f && GetCpuFeatures().avx512_vbmi && GetCpuFeatures().avx512_vnni;
#else
  return false;
#endif
}

struct BicubicWindowResizer::State {
  bool avx512 = false;  // The vertical pass's kernel.
  int src_width = 0;
  int window_x = 0;
  int row_bytes = 0;  // window_width * 3.
  bool vertical = false;
  std::unique_ptr<HorizontalFilter> columns;  // Null: width unchanged.
  std::unique_ptr<HorizontalFilter> lane;     // AddLane's copy of `columns`.
  AxisTaps rows;                              // Used when `vertical`.
  int row_begin = 0;
  int row_end = 0;
  int column_begin = 0;
  int column_end = 0;
  // Rows [row_begin, row_end) after the horizontal pass (8-bit, clipped, as
  // Pillow's intermediate image), in a buffer this thread keeps, and which of
  // them have arrived. Left as it is: every row is written before it is read.
  ThreadScratch intermediate_scratch{ScratchSlot::kResizeRows};
  uint8_t* intermediate = nullptr;
  std::vector<uint8_t> received;
  std::atomic<int> received_count{0};
};

BicubicWindowResizer::BicubicWindowResizer(int src_width, int src_height, int resized_width, int resized_height,
                                           int window_x, int window_y, int window_width, int window_height,
                                           ResampleKernel kernel)
    : state_(std::make_unique<State>()) {
  if (src_width <= 0 || src_height <= 0 || resized_width <= 0 || resized_height <= 0 || window_width <= 0 ||
      window_height <= 0 || window_x < 0 || window_y < 0 || window_x > resized_width - window_width ||
      window_y > resized_height - window_height) {
    throw ClipError(ErrorCode::kInvalidArgument,
                    "resize window " + std::to_string(window_width) + "x" + std::to_string(window_height) + "+" +
                        std::to_string(window_x) + "+" + std::to_string(window_y) + " of " + std::to_string(src_width) +
                        "x" + std::to_string(src_height) + " resized to " + std::to_string(resized_width) + "x" +
                        std::to_string(resized_height) + " is not valid");
  }
  State& s = *state_;
  s.avx512 = kernel != ResampleKernel::kGeneric && ResampleAvx512Supported();
  s.src_width = src_width;
  s.window_x = window_x;
  s.row_bytes = window_width * 3;
  // Like Pillow (need_horizontal / need_vertical), an axis whose size is
  // unchanged is copied; its scale-1 filter would be the identity anyway.
  if (resized_width != src_width) {
    AxisTaps taps = ComputeAxisTaps(src_width, resized_width, window_x, window_width);
    const TapsExtent columns = ExtentOf(taps);
    s.column_begin = columns.begin;
    s.column_end = columns.end;
    s.columns = std::make_unique<HorizontalFilter>(std::move(taps), kernel);
  } else {
    s.column_begin = window_x;
    s.column_end = window_x + window_width;
  }
  s.vertical = resized_height != src_height;
  if (s.vertical) {
    s.rows = ComputeAxisTaps(src_height, resized_height, window_y, window_height);
    const TapsExtent rows = ExtentOf(s.rows);
    s.row_begin = rows.begin;
    s.row_end = rows.end;
  } else {
    s.row_begin = window_y;
    s.row_end = window_y + window_height;
  }
  const size_t row_count = static_cast<size_t>(s.row_end - s.row_begin);
  s.intermediate = s.intermediate_scratch.Get(row_count * s.row_bytes);
  if (s.intermediate == nullptr) throw std::bad_alloc();
  s.received.assign(row_count, 0);
}

BicubicWindowResizer::~BicubicWindowResizer() = default;

int BicubicWindowResizer::row_begin() const { return state_->row_begin; }

int BicubicWindowResizer::row_end() const { return state_->row_end; }

int BicubicWindowResizer::column_begin() const { return state_->column_begin; }

int BicubicWindowResizer::column_end() const { return state_->column_end; }

void BicubicWindowResizer::AddLane() {
  State& s = *state_;
  if (s.columns && !s.lane) s.lane = std::make_unique<HorizontalFilter>(*s.columns);
}

void BicubicWindowResizer::AddRows(int y, int count, const uint8_t* rows, size_t stride, int lane) {
  State& s = *state_;
  HorizontalFilter* columns = lane == 0 ? s.columns.get() : s.lane.get();
  if (s.columns && !columns) throw ClipError(ErrorCode::kInternal, "resize rows on a lane not made");
  const int first = std::max(y, s.row_begin);
  const int last = std::min(y + count, s.row_end);
  int added = 0;
  for (int row = first; row < last; ++row) {
    const size_t index = static_cast<size_t>(row - s.row_begin);
    if (s.received[index]) continue;
    const uint8_t* in = rows + static_cast<size_t>(row - y) * stride;
    uint8_t* out = s.intermediate + index * s.row_bytes;
    if (columns) {
      columns->Run(in, out);
    } else {
      std::memcpy(out, in + static_cast<size_t>(s.window_x) * 3, s.row_bytes);
    }
    s.received[index] = 1;
    ++added;
  }
  s.received_count.fetch_add(added, std::memory_order_relaxed);
}

void BicubicWindowResizer::Finish(uint8_t* dst, size_t dst_stride) {
  State& s = *state_;
  const int received = s.received_count.load();
  if (received != s.row_end - s.row_begin) {
    throw ClipError(ErrorCode::kInternal, "resize finished with " + std::to_string(received) + " of " +
                                              std::to_string(s.row_end - s.row_begin) + " source rows");
  }
  if (s.vertical) {
#if defined(CLIP_RESAMPLE_AVX512)
    if (s.avx512) {
      ResampleVerticalAvx512(s.intermediate, s.row_bytes, s.row_begin, s.row_bytes, s.rows, dst, dst_stride);
      return;
    }
#endif
    ResampleVertical(s.intermediate, s.row_bytes, s.row_begin, s.row_bytes, s.rows, dst, dst_stride);
    return;
  }
  for (int y = 0; y < s.row_end - s.row_begin; ++y) {
    std::memcpy(dst + static_cast<size_t>(y) * dst_stride, s.intermediate + static_cast<size_t>(y) * s.row_bytes,
                s.row_bytes);
  }
}

void ResizeBicubicWindow(const uint8_t* src, int src_width, int src_height, int resized_width, int resized_height,
                         int window_x, int window_y, int window_width, int window_height, uint8_t* dst,
                         size_t dst_stride, ResampleKernel kernel) {
  BicubicWindowResizer resizer(src_width, src_height, resized_width, resized_height, window_x, window_y, window_width,
                               window_height, kernel);
  const size_t stride = static_cast<size_t>(src_width) * 3;
  const int begin = resizer.row_begin();
  resizer.AddRows(begin, resizer.row_end() - begin, src + static_cast<size_t>(begin) * stride, stride);
  resizer.Finish(dst, dst_stride);
}

}  // namespace clip

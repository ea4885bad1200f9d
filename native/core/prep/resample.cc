#include "resample.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include "errors.h"

#if defined(__SSE2__)
#include <emmintrin.h>
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
  explicit HorizontalFilter(AxisTaps taps);
  void Run(const uint8_t* in, uint8_t* out);

 private:
  void RunScalar(const uint8_t* in, uint8_t* out) const;

  AxisTaps taps_;
#if defined(__SSE2__)
  void RunSse2(const uint8_t* in, uint8_t* out);

  bool use_simd_ = false;
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
// sum(p * hi) are exact int32 sums (see kMaxSimdTaps), recombined in int64.
// The result is the integer Pillow's int32 loop computes. Each row is first
// split into 16-bit planes, so that a channel's taps are contiguous.
constexpr int kSimdLanes = 8;
// A lane adds at most 2 * 255 * 32767 per step; below 1024 taps the lane
// sums stay under 2^31.
constexpr int kMaxSimdTaps = 1024;

inline int32_t HorizontalSum(__m128i v) {
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0x4E));
  v = _mm_add_epi32(v, _mm_shuffle_epi32(v, 0xB1));
  return _mm_cvtsi128_si32(v);
}

inline uint8_t Combine(__m128i low, __m128i high) {
  const int64_t sum = int64_t{kRoundingBias} + HorizontalSum(low) + int64_t{HorizontalSum(high)} * (1 << 15);
  return Clip8(static_cast<int32_t>(sum));
}
#endif  // __SSE2__

HorizontalFilter::HorizontalFilter(AxisTaps taps) : taps_(std::move(taps)) {
#if defined(__SSE2__)
  use_simd_ = taps_.stride <= kMaxSimdTaps;
  if (!use_simd_) return;
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
  column_begin_ = taps_.first.front();
  column_end_ = column_begin_;
  for (int x = 0; x < width; ++x) {
    column_end_ = std::max(column_end_, taps_.first[x] + taps_.count[x]);
  }
  plane_size_ = static_cast<size_t>(column_end_ - column_begin_) + padded_ + kSimdLanes;
  planes_.assign(plane_size_ * 3, 0);
#endif
}

void HorizontalFilter::Run(const uint8_t* in, uint8_t* out) {
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
void HorizontalFilter::RunSse2(const uint8_t* in, uint8_t* out) {
  int16_t* red = planes_.data();
  int16_t* green = red + plane_size_;
  int16_t* blue = green + plane_size_;
  const uint8_t* source = in + static_cast<size_t>(column_begin_) * 3;
  for (int i = 0; i < column_end_ - column_begin_; ++i) {
    red[i] = source[3 * i + 0];
    green[i] = source[3 * i + 1];
    blue[i] = source[3 * i + 2];
  }
  const int width = static_cast<int>(taps_.first.size());
  for (int x = 0; x < width; ++x) {
    const int16_t* wl = &low_[static_cast<size_t>(x) * padded_];
    const int16_t* wh = &high_[static_cast<size_t>(x) * padded_];
    const int offset = taps_.first[x] - column_begin_;
    const int n = (taps_.count[x] + kSimdLanes - 1) / kSimdLanes * kSimdLanes;
    __m128i red_low = _mm_setzero_si128(), red_high = red_low;
    __m128i green_low = red_low, green_high = red_low;
    __m128i blue_low = red_low, blue_high = red_low;
    for (int t = 0; t < n; t += kSimdLanes) {
      const __m128i l = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wl + t));
      const __m128i h = _mm_loadu_si128(reinterpret_cast<const __m128i*>(wh + t));
      const __m128i r = _mm_loadu_si128(reinterpret_cast<const __m128i*>(red + offset + t));
      const __m128i g = _mm_loadu_si128(reinterpret_cast<const __m128i*>(green + offset + t));
      const __m128i b = _mm_loadu_si128(reinterpret_cast<const __m128i*>(blue + offset + t));
      red_low = _mm_add_epi32(red_low, _mm_madd_epi16(r, l));
      red_high = _mm_add_epi32(red_high, _mm_madd_epi16(r, h));
      green_low = _mm_add_epi32(green_low, _mm_madd_epi16(g, l));
      green_high = _mm_add_epi32(green_high, _mm_madd_epi16(g, h));
      blue_low = _mm_add_epi32(blue_low, _mm_madd_epi16(b, l));
      blue_high = _mm_add_epi32(blue_high, _mm_madd_epi16(b, h));
    }
    out[3 * x + 0] = Combine(red_low, red_high);
    out[3 * x + 1] = Combine(green_low, green_high);
    out[3 * x + 2] = Combine(blue_low, blue_high);
  }
}
#endif  // __SSE2__

// Vertical pass. `rows` points at the input row whose index is `row_origin`;
// every tap of `taps` refers to absolute input rows.
void ResampleVertical(const uint8_t* rows, size_t row_stride, int row_origin, int row_bytes, const AxisTaps& taps,
                      uint8_t* dst, size_t dst_stride) {
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

struct BicubicWindowResizer::State {
  int src_width = 0;
  int window_x = 0;
  int row_bytes = 0;  // window_width * 3.
  bool vertical = false;
  std::unique_ptr<HorizontalFilter> columns;  // Null: width unchanged.
  AxisTaps rows;                              // Used when `vertical`.
  int row_begin = 0;
  int row_end = 0;
  // Rows [row_begin, row_end) after the horizontal pass (8-bit, clipped, as
  // Pillow's intermediate image), and which of them have arrived. Left
  // uninitialized: every row is written before it is read.
  std::unique_ptr<uint8_t[]> intermediate;
  std::vector<uint8_t> received;
  int received_count = 0;
};

BicubicWindowResizer::BicubicWindowResizer(int src_width, int src_height, int resized_width, int resized_height,
                                           int window_x, int window_y, int window_width, int window_height)
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
  s.src_width = src_width;
  s.window_x = window_x;
  s.row_bytes = window_width * 3;
  // Like Pillow (need_horizontal / need_vertical), an axis whose size is
  // unchanged is copied; its scale-1 filter would be the identity anyway.
  if (resized_width != src_width) {
    s.columns = std::make_unique<HorizontalFilter>(ComputeAxisTaps(src_width, resized_width, window_x, window_width));
  }
  s.vertical = resized_height != src_height;
  if (s.vertical) {
    s.rows = ComputeAxisTaps(src_height, resized_height, window_y, window_height);
    s.row_begin = s.rows.first.front();
    s.row_end = s.row_begin;
    for (size_t i = 0; i < s.rows.first.size(); ++i) {
      s.row_begin = std::min(s.row_begin, s.rows.first[i]);
      s.row_end = std::max(s.row_end, s.rows.first[i] + s.rows.count[i]);
    }
  } else {
    s.row_begin = window_y;
    s.row_end = window_y + window_height;
  }
  const size_t row_count = static_cast<size_t>(s.row_end - s.row_begin);
  s.intermediate.reset(new uint8_t[row_count * s.row_bytes]);
  s.received.assign(row_count, 0);
}

BicubicWindowResizer::~BicubicWindowResizer() = default;

int BicubicWindowResizer::row_begin() const { return state_->row_begin; }

int BicubicWindowResizer::row_end() const { return state_->row_end; }

void BicubicWindowResizer::AddRows(int y, int count, const uint8_t* rows, size_t stride) {
  State& s = *state_;
  const int first = std::max(y, s.row_begin);
  const int last = std::min(y + count, s.row_end);
  for (int row = first; row < last; ++row) {
    const size_t index = static_cast<size_t>(row - s.row_begin);
    if (s.received[index]) continue;
    const uint8_t* in = rows + static_cast<size_t>(row - y) * stride;
    uint8_t* out = s.intermediate.get() + index * s.row_bytes;
    if (s.columns) {
      s.columns->Run(in, out);
    } else {
      std::memcpy(out, in + static_cast<size_t>(s.window_x) * 3, s.row_bytes);
    }
    s.received[index] = 1;
    ++s.received_count;
  }
}

void BicubicWindowResizer::Finish(uint8_t* dst, size_t dst_stride) {
  State& s = *state_;
  if (s.received_count != s.row_end - s.row_begin) {
    throw ClipError(ErrorCode::kInternal, "resize finished with " + std::to_string(s.received_count) + " of " +
                                              std::to_string(s.row_end - s.row_begin) + " source rows");
  }
  if (s.vertical) {
    ResampleVertical(s.intermediate.get(), s.row_bytes, s.row_begin, s.row_bytes, s.rows, dst, dst_stride);
    return;
  }
  for (int y = 0; y < s.row_end - s.row_begin; ++y) {
    std::memcpy(dst + static_cast<size_t>(y) * dst_stride, s.intermediate.get() + static_cast<size_t>(y) * s.row_bytes,
                s.row_bytes);
  }
}

void ResizeBicubicWindow(const uint8_t* src, int src_width, int src_height, int resized_width, int resized_height,
                         int window_x, int window_y, int window_width, int window_height, uint8_t* dst,
                         size_t dst_stride) {
  BicubicWindowResizer resizer(src_width, src_height, resized_width, resized_height, window_x, window_y, window_width,
                               window_height);
  const size_t stride = static_cast<size_t>(src_width) * 3;
  const int begin = resizer.row_begin();
  resizer.AddRows(begin, resizer.row_end() - begin, src + static_cast<size_t>(begin) * stride, stride);
  resizer.Finish(dst, dst_stride);
}

}  // namespace clip

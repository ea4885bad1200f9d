// CLIP preprocessing on decoded RGB8 images: the steps of transformers'
// CLIPImageProcessor (resize shortest edge, center crop, rescale, normalize,
// HWC -> CHW) with its exact rounding. Decoders live in image_decode.cc and
// one decode_<format>.cc per codec, the Pillow bicubic resampler in
// resample.cc.

#include "image.h"

#include <algorithm>
#include <atomic>
#include <climits>
#include <cmath>
#include <cstring>
#include <memory>
#include <new>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "errors.h"
#include "image_decode.h"
#include "resample.h"
#include "rgb_planes.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLIP_IMAGE_AVX512 1
#endif

namespace clip {
namespace {

// CLIPImageProcessor's rescale and normalize of one byte of channel c:
// rescaled in double (float32(u8 * 0.00392156862745098), as numpy does it),
// then normalized in float32. Multiplying by float(1/255) or normalizing in
// double would each move some values by an ulp.
constexpr double kRescale = 0.00392156862745098;

#if defined(CLIP_IMAGE_AVX512)
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"  // GCC bug 105593, as in resample.cc
#endif
// HWC RGB8 -> the three CHW planes of floats, 16 pixels per step, each value
// computed with the scalar path's IEEE operations in the same order (so the
// same bits): 0.6 of the time of a table lookup per value.
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) void NormalizePlanesAvx512(const uint8_t* rgb, size_t pixels,
                                                                                  const float* mean,
                                                                                  const float* deviation, float* out) {
  const __m512d rescale = _mm512_set1_pd(kRescale);
  for (size_t i = 0; i < pixels; i += 16) {
    const size_t n = std::min<size_t>(16, pixels - i);
    const __m512i planes = SplitRgb16(rgb + 3 * i, static_cast<int>(n));
    const __m128i channels[3] = {_mm512_castsi512_si128(planes), _mm512_extracti32x4_epi32(planes, 1),
                                 _mm512_extracti32x4_epi32(planes, 2)};
    for (int c = 0; c < 3; ++c) {
      const __m512i values = _mm512_cvtepu8_epi32(channels[c]);
      const __m256 low = _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_castsi512_si256(values)), rescale));
      const __m256 high =
          _mm512_cvtpd_ps(_mm512_mul_pd(_mm512_cvtepi32_pd(_mm512_extracti64x4_epi64(values, 1)), rescale));
      const __m512 rescaled = _mm512_castpd_ps(
          _mm512_insertf64x4(_mm512_castpd256_pd512(_mm256_castps_pd(low)), _mm256_castps_pd(high), 1));
      const __m512 normalized =
          _mm512_div_ps(_mm512_sub_ps(rescaled, _mm512_set1_ps(mean[c])), _mm512_set1_ps(deviation[c]));
      _mm512_mask_storeu_ps(out + c * pixels + i, static_cast<__mmask16>((1u << n) - 1), normalized);
    }
  }
}
#if defined(__GNUC__) && !defined(__clang__)
#pragma GCC diagnostic pop
#endif
#endif

[[noreturn]] void InvalidArgument(const std::string& message) { throw ClipError(ErrorCode::kInvalidArgument, message); }

// Python's a // 2, which floors for negative a.
int64_t FloorHalf(int64_t a) { return a >= 0 ? a / 2 : -((-a + 1) / 2); }

void ValidateOptions(const PreprocessOptions& options) {
  if (options.crop_size <= 0 || options.crop_size > 16384) {
    InvalidArgument("Expected crop_size in 1..16384 but received " + std::to_string(options.crop_size));
  }
  if (options.resize_shortest_edge <= 0 || options.resize_shortest_edge > 65536) {
    InvalidArgument("Expected resize_shortest_edge in 1..65536 but received " +
                    std::to_string(options.resize_shortest_edge));
  }
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(options.mean[c]) || !std::isfinite(options.std[c]) || options.std[c] == 0.0f) {
      InvalidArgument("Expected finite mean and non-zero finite std values");
    }
  }
}

// The preprocessing steps after decoding, fed with source rows in any
// order: geometry at Begin, the resize as rows arrive, crop padding, rescale
// and normalize at Finish.
class Preprocessor {
 public:
  explicit Preprocessor(const PreprocessOptions& options) : options_(options) { ValidateOptions(options); }

  void Begin(int width, int height) {
    if (width <= 0 || height <= 0) {
      InvalidArgument("Expected a non-empty image but received " + std::to_string(width) + "x" +
                      std::to_string(height));
    }
    // transformers' get_resize_output_image_size(default_to_square=False):
    // the long side is int(size * long / short), a truncated float division.
    const int64_t size = options_.resize_shortest_edge;
    const bool portrait = width <= height;
    const int64_t short_side = portrait ? width : height;
    const int64_t long_side = portrait ? height : width;
    const double scaled_long = static_cast<double>(size * long_side) / static_cast<double>(short_side);
    if (scaled_long >= static_cast<double>(INT_MAX)) {
      throw ClipError(ErrorCode::kImageTooLarge, "image " + std::to_string(width) + "x" + std::to_string(height) +
                                                     " would resize past the int range");
    }
    const int new_long = static_cast<int>(scaled_long);
    const int resized_width = portrait ? static_cast<int>(size) : new_long;
    const int resized_height = portrait ? new_long : static_cast<int>(size);

    // center_crop: floor offsets; where the crop is larger than the image HF
    // pads with zeros around it, which these offsets express as well.
    const int crop = options_.crop_size;
    const int64_t left = FloorHalf(int64_t{resized_width} - crop);
    const int64_t top = FloorHalf(int64_t{resized_height} - crop);
    const int64_t x0 = std::max<int64_t>(left, 0);
    const int64_t y0 = std::max<int64_t>(top, 0);
    const int64_t x1 = std::min<int64_t>(left + crop, resized_width);
    const int64_t y1 = std::min<int64_t>(top + crop, resized_height);
    // Only padding needs zeros; the window is overwritten by the resize.
    const size_t cropped_bytes = static_cast<size_t>(crop) * crop * 3;
    cropped_.reset(new uint8_t[cropped_bytes]);
    if (x1 - x0 != crop || y1 - y0 != crop) {
      std::memset(cropped_.get(), 0, cropped_bytes);
    }
    window_offset_ = (static_cast<size_t>(y0 - top) * crop + (x0 - left)) * 3;
    resizer_ = std::make_unique<BicubicWindowResizer>(width, height, resized_width, resized_height,
                                                      static_cast<int>(x0), static_cast<int>(y0),
                                                      static_cast<int>(x1 - x0), static_cast<int>(y1 - y0));
  }

  void AddRows(int y, int count, const uint8_t* rows, size_t stride, int lane = 0) {
    resizer_->AddRows(y, count, rows, stride, lane);
  }
  // Lets lane 1 of AddRows run on a second thread (BicubicWindowResizer).
  void AddLane() { resizer_->AddLane(); }

  // The source pixels the resize reads (after Begin).
  RgbRowSink::Region NeededRegion() const {
    return {resizer_->column_begin(), resizer_->column_end(), resizer_->row_begin(), resizer_->row_end()};
  }

  void Finish(float* out) {
    if (!resizer_) {
      throw ClipError(ErrorCode::kInternal, "decoder produced no image");
    }
    const int crop = options_.crop_size;
    resizer_->Finish(cropped_.get() + window_offset_, static_cast<size_t>(crop) * 3);

    const size_t plane = static_cast<size_t>(crop) * crop;
#if defined(CLIP_IMAGE_AVX512)
    static const bool avx512 = GetCpuFeatures().avx512f && GetCpuFeatures().avx512_vbmi;
    if (avx512) {
      NormalizePlanesAvx512(cropped_.get(), plane, options_.mean.data(), options_.std.data(), out);
      return;
    }
#endif
    // Every output value is a function of (channel, byte).
    float table[3][256];
    for (int c = 0; c < 3; ++c) {
      const float mean = options_.mean[c];
      const float deviation = options_.std[c];
      for (int v = 0; v < 256; ++v) {
        const float rescaled = static_cast<float>(v * kRescale);
        table[c][v] = (rescaled - mean) / deviation;
      }
    }
    for (size_t i = 0; i < plane; ++i) {
      const uint8_t* p = &cropped_[i * 3];
      out[i] = table[0][p[0]];
      out[plane + i] = table[1][p[1]];
      out[2 * plane + i] = table[2][p[2]];
    }
  }

 private:
  const PreprocessOptions options_;
  std::unique_ptr<BicubicWindowResizer> resizer_;
  std::unique_ptr<uint8_t[]> cropped_;  // crop x crop RGB8, zero-padded.
  size_t window_offset_ = 0;            // Where the resized window starts in it.
};

// PreprocessImage calls in progress in the process.
std::atomic<int> g_preparing{0};

// The rows of a block handed to a decoder start one byte past a multiple of
// 16 bytes: libjpeg-turbo writes a row that starts on one with non-temporal
// stores (movntdq), which send it past the caches to memory, and the resize
// reads each block right after it is written (its horizontal pass took
// twice as long, a JPEG's preparation 1.2x). Rows SkewedStride(row_bytes) apart.
constexpr size_t kRowSkew = 1;
size_t SkewedStride(size_t row_bytes) { return (row_bytes + 15) / 16 * 16; }

// Runs the decoder's rows through a Preprocessor, one reserved block at a
// time, so that only a few source rows are held at once.
class PreprocessSink : public RgbRowSink {
 public:
  explicit PreprocessSink(Preprocessor* preprocessor) : preprocessor_(preprocessor) {}

  void Begin(int width, int height) override {
    row_bytes_ = static_cast<size_t>(width) * 3;
    stride_ = SkewedStride(row_bytes_);
    preprocessor_->Begin(width, height);
  }
  uint8_t* Reserve(int /*y*/, int count, size_t* stride) override {
    uint8_t* scratch = scratch_.Get(stride_ * count + kRowSkew);
    if (scratch == nullptr) throw std::bad_alloc();
    block_ = scratch + kRowSkew;
    *stride = stride_;
    return block_;
  }
  void Commit(int y, int count) override { preprocessor_->AddRows(y, count, block_, stride_); }
  Region NeededRegion(int /*width*/, int /*height*/) const override { return preprocessor_->NeededRegion(); }
  // Rows from y down through lane 1, each block in a buffer of the lower
  // part's own (it is filled on another thread). Only while this is the one
  // image the process is preparing: beside another, the second thread would
  // take a core that is already busy, and the split costs CPU (the lower
  // part's decoder reads the stream down to it).
  std::unique_ptr<RgbRowSink> SplitBelow(int /*y*/) override {
    if (!decode::SplitDecodesForced() && g_preparing.load(std::memory_order_relaxed) != 1) return nullptr;
    preprocessor_->AddLane();
    return std::make_unique<LowerRows>(preprocessor_, row_bytes_);
  }

 private:
  class LowerRows : public RgbRowSink {
   public:
    LowerRows(Preprocessor* preprocessor, size_t row_bytes)
        : preprocessor_(preprocessor), stride_(SkewedStride(row_bytes)) {}
    void Begin(int /*width*/, int /*height*/) override {}
    uint8_t* Reserve(int /*y*/, int count, size_t* stride) override {
      block_.resize(stride_ * static_cast<size_t>(count) + kRowSkew);
      *stride = stride_;
      return block_.data() + kRowSkew;
    }
    void Commit(int y, int count) override { preprocessor_->AddRows(y, count, block_.data() + kRowSkew, stride_, 1); }

   private:
    Preprocessor* preprocessor_;
    size_t stride_;
    std::vector<uint8_t> block_;
  };

  Preprocessor* preprocessor_;
  size_t row_bytes_ = 0;
  size_t stride_ = 0;
  // A block of rows (the whole image for GIF, WebP and Adam7 PNG), in a
  // buffer this thread keeps.
  ThreadScratch scratch_{ScratchSlot::kDecodedRows};
  uint8_t* block_ = nullptr;
};

}  // namespace

size_t PreprocessedSize(const PreprocessOptions& options) {
  const size_t crop = options.crop_size > 0 ? options.crop_size : 0;
  return 3 * crop * crop;
}

void PreprocessRgb(const RgbImage& image, const PreprocessOptions& options, float* out) {
  Preprocessor preprocessor(options);
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width) * static_cast<size_t>(image.height) * 3) {
    InvalidArgument("Expected a non-empty RGB image with width*height*3 bytes");
  }
  if (out == nullptr) InvalidArgument("Expected an output buffer");
  preprocessor.Begin(image.width, image.height);
  preprocessor.AddRows(0, image.height, image.pixels.data(), static_cast<size_t>(image.width) * 3);
  preprocessor.Finish(out);
}

void PreprocessImage(const uint8_t* data, size_t size, const ImageDecodeOptions& decode, const PreprocessOptions& pre,
                     float* out) {
  // Options are checked before anything is decoded.
  Preprocessor preprocessor(pre);
  if (out == nullptr) InvalidArgument("Expected an output buffer");
  struct Preparing {
    Preparing() { g_preparing.fetch_add(1, std::memory_order_relaxed); }
    ~Preparing() { g_preparing.fetch_sub(1, std::memory_order_relaxed); }
  } preparing;
  PreprocessSink sink(&preprocessor);
  DecodeImageRows(data, size, decode, &sink);
  preprocessor.Finish(out);
}

}  // namespace clip

// CLIP preprocessing on decoded RGB8 images: the steps of transformers'
// CLIPImageProcessor (resize shortest edge, center crop, rescale, normalize,
// HWC -> CHW) with its exact rounding. Decoders live in image_decode.cc and
// the Pillow bicubic resampler in resample.cc.

#include "image.h"

#include <algorithm>
#include <climits>
#include <cmath>
#include <string>
#include <vector>

#include "errors.h"
#include "resample.h"

namespace clip {
namespace {

[[noreturn]] void InvalidArgument(const std::string& message) {
  throw ClipError(ErrorCode::kInvalidArgument, message);
}

// Python's a // 2, which floors for negative a.
int64_t FloorHalf(int64_t a) { return a >= 0 ? a / 2 : -((-a + 1) / 2); }

void ValidateOptions(const PreprocessOptions& options) {
  if (options.crop_size <= 0 || options.crop_size > 16384) {
    InvalidArgument("Expected crop_size in 1..16384 but received " +
                    std::to_string(options.crop_size));
  }
  if (options.resize_shortest_edge <= 0 ||
      options.resize_shortest_edge > 65536) {
    InvalidArgument("Expected resize_shortest_edge in 1..65536 but received " +
                    std::to_string(options.resize_shortest_edge));
  }
  for (int c = 0; c < 3; ++c) {
    if (!std::isfinite(options.mean[c]) || !std::isfinite(options.std[c]) ||
        options.std[c] == 0.0f) {
      InvalidArgument("Expected finite mean and non-zero finite std values");
    }
  }
}

}  // namespace

size_t PreprocessedSize(const PreprocessOptions& options) {
  const size_t crop = options.crop_size > 0 ? options.crop_size : 0;
  return 3 * crop * crop;
}

void PreprocessRgb(const RgbImage& image, const PreprocessOptions& options,
                   float* out) {
  ValidateOptions(options);
  if (image.width <= 0 || image.height <= 0 ||
      image.pixels.size() != static_cast<size_t>(image.width) *
                                 static_cast<size_t>(image.height) * 3) {
    InvalidArgument("Expected a non-empty RGB image with width*height*3 bytes");
  }
  if (out == nullptr) InvalidArgument("Expected an output buffer");

  // transformers' get_resize_output_image_size(default_to_square=False):
  // the long side is int(size * long / short), a truncated float division.
  const int64_t size = options.resize_shortest_edge;
  const bool portrait = image.width <= image.height;
  const int64_t short_side = portrait ? image.width : image.height;
  const int64_t long_side = portrait ? image.height : image.width;
  const double scaled_long =
      static_cast<double>(size * long_side) / static_cast<double>(short_side);
  if (scaled_long >= static_cast<double>(INT_MAX)) {
    throw ClipError(ErrorCode::kImageTooLarge,
                    "image " + std::to_string(image.width) + "x" +
                        std::to_string(image.height) +
                        " would resize past the int range");
  }
  const int new_long = static_cast<int>(scaled_long);
  const int resized_width = portrait ? static_cast<int>(size) : new_long;
  const int resized_height = portrait ? new_long : static_cast<int>(size);

  // center_crop: floor offsets; where the crop is larger than the image HF
  // pads with zeros around it, which these offsets express as well.
  const int crop = options.crop_size;
  const int64_t left = FloorHalf(int64_t{resized_width} - crop);
  const int64_t top = FloorHalf(int64_t{resized_height} - crop);
  const int64_t x0 = std::max<int64_t>(left, 0);
  const int64_t y0 = std::max<int64_t>(top, 0);
  const int64_t x1 = std::min<int64_t>(left + crop, resized_width);
  const int64_t y1 = std::min<int64_t>(top + crop, resized_height);

  const size_t plane = static_cast<size_t>(crop) * crop;
  std::vector<uint8_t> cropped(plane * 3, 0);
  if (x1 > x0 && y1 > y0) {
    uint8_t* window = cropped.data() +
                      (static_cast<size_t>(y0 - top) * crop + (x0 - left)) * 3;
    ResizeBicubicWindow(image.pixels.data(), image.width, image.height,
                        resized_width, resized_height, static_cast<int>(x0),
                        static_cast<int>(y0), static_cast<int>(x1 - x0),
                        static_cast<int>(y1 - y0), window,
                        static_cast<size_t>(crop) * 3);
  }

  // Every output value is a function of (channel, byte): rescale in double
  // (float32(u8 * 0.00392156862745098), as numpy does it), then normalize in
  // float32. Multiplying by float(1/255) or normalizing in double would each
  // move some values by an ulp.
  float table[3][256];
  for (int c = 0; c < 3; ++c) {
    const float mean = options.mean[c];
    const float deviation = options.std[c];
    for (int v = 0; v < 256; ++v) {
      const float rescaled = static_cast<float>(v * 0.00392156862745098);
      table[c][v] = (rescaled - mean) / deviation;
    }
  }
  for (size_t i = 0; i < plane; ++i) {
    const uint8_t* p = &cropped[i * 3];
    out[i] = table[0][p[0]];
    out[plane + i] = table[1][p[1]];
    out[2 * plane + i] = table[2][p[2]];
  }
}

void PreprocessImage(const uint8_t* data, size_t size,
                     const ImageDecodeOptions& decode,
                     const PreprocessOptions& pre, float* out) {
  // Validate first so bad options never cost a decode.
  ValidateOptions(pre);
  const RgbImage image = DecodeImage(data, size, decode);
  PreprocessRgb(image, pre, out);
}

}  // namespace clip

// libFuzzer target: untrusted bytes -> DecodeImage -> PreprocessRgb, the path
// every image of POST /score and embedImages takes.
//
// Contract checked on every input (a violation aborts, so libFuzzer reports it):
//   * the only exception is ClipError with an image code
//     (kImageDecodeFailed, kUnsupportedImageFormat, kImageTooLarge): anything
//     else would surface as CLIP_INTERNAL (HTTP 500) instead of a 400;
//   * a decoded image has positive sides, width * height <= max_pixels and
//     exactly width * height * 3 bytes;
//   * preprocessing a decoded image succeeds and writes finite floats only;
//     the geometry varies with the input (see below), the mean and std are
//     CLIP's;
//   * ASan/UBSan: no out-of-bounds access, use after free, leak or undefined
//     behaviour in the core (the codec libraries themselves are not
//     instrumented; their reads of our buffers are checked where they go
//     through intercepted libc calls).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <vector>

#include "errors.h"
#include "image.h"

namespace {

// Well below the production default (50 MP) so that one input cannot take
// seconds; the limit logic is the same code either way.
constexpr uint64_t kMaxPixels = 4'000'000;

[[noreturn]] void Violation(const char* what) {
  std::fprintf(stderr, "image_fuzzer: contract violation: %s\n", what);
  std::abort();
}

bool IsImageCode(clip::ErrorCode code) {
  return code == clip::ErrorCode::kImageDecodeFailed || code == clip::ErrorCode::kUnsupportedImageFormat ||
         code == clip::ErrorCode::kImageTooLarge;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  clip::ImageDecodeOptions decode;
  decode.max_pixels = kMaxPixels;
  // Both settings are reached as mutations change the length; the choice
  // stays a function of the input, so every crash reproduces.
  decode.apply_exif_orientation = (size & 1) != 0;

  // The format sniffing must not read past `size` on its own either.
  clip::DetectImageFormat(data, size);

  clip::RgbImage image;
  try {
    image = clip::DecodeImage(data, size, decode);
  } catch (const clip::ClipError& error) {
    if (!IsImageCode(error.code())) Violation("DecodeImage threw a non-image ClipError");
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "image_fuzzer: %s\n", error.what());
    Violation("DecodeImage threw something other than ClipError");
  }
  if (image.width <= 0 || image.height <= 0) Violation("decoded image has an empty side");
  uint64_t pixels = static_cast<uint64_t>(image.width) * static_cast<uint64_t>(image.height);
  if (pixels > kMaxPixels) Violation("decoded image exceeds max_pixels");
  if (image.pixels.size() != pixels * 3) Violation("decoded buffer size != width * height * 3");

  // The production geometry (224) on a seventh of the inputs; otherwise
  // small ones, which run the same resampler code (shrinking, enlarging, and
  // with crop > resize the zero padding) many times faster.
  clip::PreprocessOptions pre;
  switch (size % 7) {
    case 0:
      break;
    case 1:
    case 2:
      pre.crop_size = 40;
      pre.resize_shortest_edge = 24;
      break;
    default:
      pre.crop_size = 24;
      pre.resize_shortest_edge = 32;
      break;
  }
  std::vector<float> out(clip::PreprocessedSize(pre));
  try {
    clip::PreprocessRgb(image, pre, out.data());
  } catch (const std::exception& error) {
    std::fprintf(stderr, "image_fuzzer: %s\n", error.what());
    Violation("PreprocessRgb failed on a decoded image");
  }
  for (float v : out) {
    if (!std::isfinite(v)) Violation("preprocessed value is not finite");
  }
  return 0;
}

// libFuzzer target: untrusted bytes -> DecodeImage -> PreprocessRgb, and the
// streaming PreprocessImage that every image of POST /score and embedImages
// takes.
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
//   * PreprocessImage (rows streamed into the resize; a JPEG decoded only
//     where the crop reads) writes exactly the floats of DecodeImage +
//     PreprocessRgb, or fails with the same error code where DecodeImage does;
//   * a PNG decodes to the same pixels, or fails with the same error, with
//     and without the whole-buffer path (one inflate call) that takes common
//     layouts ahead of libpng; likewise a JPEG with and without its scan's
//     entropy decoding ahead of libjpeg;
//   * ASan/UBSan: no out-of-bounds access, use after free, leak or undefined
//     behaviour in the core (the codec libraries themselves are not
//     instrumented; their reads of our buffers are checked where they go
//     through intercepted libc calls).
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "image.h"
#include "image_decode.h"
#include "jpeg_entropy.h"

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

// The outcome of one decode: the image, or the error's code and message.
struct Outcome {
  bool ok = false;
  clip::ErrorCode code = clip::ErrorCode::kInternal;
  std::string message;
  clip::RgbImage image;
};

Outcome DecodeOutcome(const uint8_t* data, size_t size, const clip::ImageDecodeOptions& options) {
  Outcome outcome;
  try {
    outcome.image = clip::DecodeImage(data, size, options);
    outcome.ok = true;
  } catch (const clip::ClipError& error) {
    outcome.code = error.code();
    outcome.message = error.what();
  }
  return outcome;
}

// A decoder's fast path and the library it goes ahead of agree: the same
// pixels, or the same error. `set_fast` switches the fast path on and off.
void CheckPaths(const uint8_t* data, size_t size, const clip::ImageDecodeOptions& options, clip::ImageFormat format,
                void (*set_fast)(bool), const char* fast_name, const char* library_name) {
  if (clip::DetectImageFormat(data, size) != format) return;
  const Outcome fast = DecodeOutcome(data, size, options);
  set_fast(false);
  const Outcome library = DecodeOutcome(data, size, options);
  set_fast(true);
  if (fast.ok != library.ok || (!fast.ok && (fast.code != library.code || fast.message != library.message))) {
    std::fprintf(stderr, "image_fuzzer: %s %s, %s %s\n", fast_name, fast.ok ? "decoded" : fast.message.c_str(),
                 library_name, library.ok ? "decoded" : library.message.c_str());
    Violation("a fast path and its library disagree on success or fail differently");
  }
  if (fast.ok && (fast.image.width != library.image.width || fast.image.height != library.image.height ||
                  fast.image.pixels != library.image.pixels)) {
    Violation("a fast path and its library decode different pixels");
  }
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
  // PNG's whole-buffer path against libpng, JPEG's entropy decoding ahead
  // against libjpeg's own.
  CheckPaths(data, size, decode, clip::ImageFormat::kPng, clip::decode::SetPngWholeBufferEnabled, "whole-buffer",
             "libpng");
  CheckPaths(data, size, decode, clip::ImageFormat::kJpeg, clip::decode::SetJpegPredecodeEnabled, "decoded ahead",
             "libjpeg");

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
  std::vector<float> streamed(clip::PreprocessedSize(pre));
  bool streamed_ok = false;
  clip::ErrorCode streamed_code = clip::ErrorCode::kInternal;
  // Half the inputs split every baseline JPEG over two threads (the lower
  // part on a second decoder), held to the same whole decode below.
  clip::decode::SetSplitDecodesForced((size & 2) != 0);
  try {
    clip::PreprocessImage(data, size, decode, pre, streamed.data());
    streamed_ok = true;
  } catch (const clip::ClipError& error) {
    streamed_code = error.code();
  } catch (const std::exception& error) {
    std::fprintf(stderr, "image_fuzzer: %s\n", error.what());
    Violation("PreprocessImage threw something other than ClipError");
  }

  clip::RgbImage image;
  try {
    image = clip::DecodeImage(data, size, decode);
  } catch (const clip::ClipError& error) {
    if (!IsImageCode(error.code())) Violation("DecodeImage threw a non-image ClipError");
    if (streamed_ok || streamed_code != error.code()) Violation("PreprocessImage and DecodeImage fail differently");
    return 0;
  } catch (const std::exception& error) {
    std::fprintf(stderr, "image_fuzzer: %s\n", error.what());
    Violation("DecodeImage threw something other than ClipError");
  }
  if (!streamed_ok) Violation("PreprocessImage failed where DecodeImage decoded");
  if (image.width <= 0 || image.height <= 0) Violation("decoded image has an empty side");
  uint64_t pixels = static_cast<uint64_t>(image.width) * static_cast<uint64_t>(image.height);
  if (pixels > kMaxPixels) Violation("decoded image exceeds max_pixels");
  if (image.pixels.size() != pixels * 3) Violation("decoded buffer size != width * height * 3");

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
  if (std::memcmp(out.data(), streamed.data(), out.size() * sizeof(float)) != 0) {
    Violation("PreprocessImage and DecodeImage + PreprocessRgb give different values");
  }
  return 0;
}

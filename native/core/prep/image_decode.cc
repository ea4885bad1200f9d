// DecodeImage and DecodeImageRows: format detection, the EXIF orientation
// step and the entry into one decoder per format (decode_*.cc). Each decoder
// reproduces what Pillow's plugin for the format followed by
// Image.convert("RGB") produces; the comments there name the Pillow behaviour
// being matched where it is not the obvious one.

#include "image_decode.h"

#include <algorithm>
#include <climits>
#include <cstring>
#include <new>
#include <string>

#include "errors.h"
#include "image.h"

namespace clip {
namespace decode {

[[noreturn]] void Fail(ErrorCode code, const std::string& message) { throw ClipError(code, message); }

[[noreturn]] void DecodeFailed(const char* format, const std::string& why) {
  Fail(ErrorCode::kImageDecodeFailed, std::string("cannot decode ") + format + " image: " + why);
}

void CheckDimensions(uint64_t width, uint64_t height, const ImageDecodeOptions& options, const char* format) {
  if (width == 0 || height == 0) {
    DecodeFailed(format, "image has zero width or height");
  }
  // The product is only formed once both sides are below 2^31.
  if (width > INT_MAX || height > INT_MAX || width * height > options.max_pixels) {
    Fail(ErrorCode::kImageTooLarge, std::string(format) + " image is " + std::to_string(width) + "x" +
                                        std::to_string(height) + " pixels; the limit is " +
                                        std::to_string(options.max_pixels) + " pixels");
  }
}

RgbImage NewRgbImage(uint64_t width, uint64_t height) {
  RgbImage image;
  image.width = static_cast<int>(width);
  image.height = static_cast<int>(height);
  image.pixels.resize(static_cast<size_t>(width) * height * 3);
  return image;
}

// ---------------------------------------------------------------------------
// EXIF orientation (what ImageOps.exif_transpose reads through getexif()).
// ---------------------------------------------------------------------------

int ParseExifOrientation(const uint8_t* data, size_t size) {
  if (size >= 6 && std::memcmp(data, "Exif\0\0", 6) == 0) {
    data += 6;
    size -= 6;
  }
  if (size < 8) return 1;
  bool big_endian;
  if (data[0] == 'I' && data[1] == 'I') {
    big_endian = false;
  } else if (data[0] == 'M' && data[1] == 'M') {
    big_endian = true;
  } else {
    return 1;
  }
  auto u16 = [&](size_t at) -> uint32_t {
    return big_endian ? (data[at] << 8) | data[at + 1] : data[at] | (data[at + 1] << 8);
  };
  auto u32 = [&](size_t at) -> uint32_t { return big_endian ? ReadBe32(data + at) : ReadLe32(data + at); };
  if (u16(2) != 42) return 1;
  const uint64_t ifd = u32(4);
  if (ifd + 2 > size) return 1;
  const uint32_t entries = u16(ifd);
  for (uint32_t i = 0; i < entries; ++i) {
    const uint64_t entry = ifd + 2 + uint64_t{12} * i;
    if (entry + 12 > size) break;
    if (u16(entry) != 0x0112) continue;
    const uint32_t type = u16(entry + 2);
    // Pillow yields a tuple for count != 1, which exif_transpose ignores.
    if (u32(entry + 4) != 1) return 1;
    int64_t value;
    switch (type) {
      case 3:  // SHORT
        value = u16(entry + 8);
        break;
      case 8:  // SSHORT
        value = static_cast<int16_t>(u16(entry + 8));
        break;
      case 4:  // LONG
        value = u32(entry + 8);
        break;
      case 9:  // SLONG
        value = static_cast<int32_t>(u32(entry + 8));
        break;
      default:
        return 1;
    }
    return value >= 1 && value <= 8 ? static_cast<int>(value) : 1;
  }
  return 1;
}

namespace {

// Output rows [y0, y0 + count) of an image turned by orientation 5..8 (the
// axes swapped: output row y is a source column), into `rows`. Each output
// column x comes from one source row, whose `count` neighbouring pixels
// become that column's pixels in the block: one cache line read per column
// and block, where a row at a time would touch a line per pixel.
template <int kOrientation>
void TransposedBlock(const RgbImage& image, int y0, int count, uint8_t* rows, size_t stride) {
  const int w = image.width;
  const int h = image.height;
  const size_t source_stride = static_cast<size_t>(w) * 3;
  // 5 (TRANSPOSE) and 6 (ROTATE_270) read the source columns left to right,
  // 7 (TRANSVERSE) and 8 (ROTATE_90) right to left; 5 and 8 its rows top to
  // bottom, 6 and 7 bottom to top.
  constexpr bool kColumnsForward = kOrientation == 5 || kOrientation == 6;
  constexpr bool kRowsForward = kOrientation == 5 || kOrientation == 8;
  const int first_column = kColumnsForward ? y0 : w - 1 - y0;
  for (int x = 0; x < h; ++x) {
    const int sy = kRowsForward ? x : h - 1 - x;
    const uint8_t* source = image.pixels.data() + static_cast<size_t>(sy) * source_stride + first_column * 3;
    uint8_t* out = rows + static_cast<size_t>(x) * 3;
    for (int i = 0; i < count; ++i) {
      const uint8_t* pixel = kColumnsForward ? source + 3 * i : source - 3 * i;
      out[0] = pixel[0];
      out[1] = pixel[1];
      out[2] = pixel[2];
      out += stride;
    }
  }
}

}  // namespace

void EmitOriented(const RgbImage& image, int orientation, RgbRowSink* sink) {
  const int w = image.width;
  const int h = image.height;
  const bool swaps_axes = orientation >= 5;
  const int out_width = swaps_axes ? h : w;
  const int out_height = swaps_axes ? w : h;
  const size_t source_stride = static_cast<size_t>(w) * 3;
  sink->Begin(out_width, out_height);
  constexpr int kBlockRows = 16;
  for (int y0 = 0; y0 < out_height; y0 += kBlockRows) {
    const int count = std::min(kBlockRows, out_height - y0);
    size_t stride = 0;
    uint8_t* rows = sink->Reserve(y0, count, &stride);
    if (swaps_axes) {
      using Block = void (*)(const RgbImage&, int, int, uint8_t*, size_t);
      static constexpr Block kTurns[] = {TransposedBlock<5>, TransposedBlock<6>, TransposedBlock<7>,
                                         TransposedBlock<8>};
      kTurns[orientation - 5](image, y0, count, rows, stride);
    } else {
      // 2 (FLIP_LEFT_RIGHT): the same row mirrored; 3 (ROTATE_180): the
      // mirrored row from the bottom; 4 (FLIP_TOP_BOTTOM): the row from the
      // bottom as it is.
      for (int i = 0; i < count; ++i) {
        const int y = y0 + i;
        const uint8_t* source =
            image.pixels.data() + static_cast<size_t>(orientation == 2 ? y : h - 1 - y) * source_stride;
        uint8_t* out = rows + static_cast<size_t>(i) * stride;
        if (orientation == 4) {
          std::memcpy(out, source, source_stride);
          continue;
        }
        const uint8_t* pixel = source + source_stride - 3;
        for (int x = 0; x < w; ++x, pixel -= 3) {
          out[3 * x + 0] = pixel[0];
          out[3 * x + 1] = pixel[1];
          out[3 * x + 2] = pixel[2];
        }
      }
    }
    sink->Commit(y0, count);
  }
}

}  // namespace decode

ImageFormat DetectImageFormat(const uint8_t* data, size_t size) {
  if (data == nullptr) return ImageFormat::kUnknown;
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
    return ImageFormat::kJpeg;
  }
  if (size >= 8 && std::memcmp(data, decode::kPngSignature, 8) == 0) {
    return ImageFormat::kPng;
  }
  if (size >= 12 && std::memcmp(data, "RIFF", 4) == 0 && std::memcmp(data + 8, "WEBP", 4) == 0) {
    return ImageFormat::kWebp;
  }
  if (size >= 6 && (std::memcmp(data, "GIF87a", 6) == 0 || std::memcmp(data, "GIF89a", 6) == 0)) {
    return ImageFormat::kGif;
  }
  if (size >= 2 && data[0] == 'B' && data[1] == 'M') return ImageFormat::kBmp;
  return ImageFormat::kUnknown;
}

const char* ImageFormatName(ImageFormat format) {
  switch (format) {
    case ImageFormat::kJpeg:
      return "jpeg";
    case ImageFormat::kPng:
      return "png";
    case ImageFormat::kWebp:
      return "webp";
    case ImageFormat::kGif:
      return "gif";
    case ImageFormat::kBmp:
      return "bmp";
    case ImageFormat::kUnknown:
      break;
  }
  return "unknown";
}

void DecodeImageRows(const uint8_t* data, size_t size, const ImageDecodeOptions& options, RgbRowSink* sink) {
  if (data == nullptr || size == 0) {
    decode::Fail(ErrorCode::kImageDecodeFailed, "cannot decode image: no data");
  }
  const ImageFormat format = DetectImageFormat(data, size);
  decode::FrameSink out(sink);
  try {
    switch (format) {
      case ImageFormat::kJpeg:
        decode::DecodeJpeg(data, size, options, &out);
        break;
      case ImageFormat::kPng:
        decode::DecodePng(data, size, options, &out);
        break;
      case ImageFormat::kWebp:
        decode::DecodeWebp(data, size, options, &out);
        break;
      case ImageFormat::kGif:
        decode::DecodeGif(data, size, options, &out);
        break;
      case ImageFormat::kBmp:
        decode::DecodeBmp(data, size, options, &out);
        break;
      case ImageFormat::kUnknown:
        decode::Fail(ErrorCode::kUnsupportedImageFormat, "unsupported image format (not JPEG, PNG, WebP, GIF or BMP)");
    }
    out.Finish();
  } catch (const std::bad_alloc&) {
    decode::Fail(ErrorCode::kImageTooLarge,
                 std::string("out of memory decoding ") + ImageFormatName(format) + " image");
  }
}

RgbImage DecodeImage(const uint8_t* data, size_t size, const ImageDecodeOptions& options) {
  decode::ImageSink sink;
  DecodeImageRows(data, size, options, &sink);
  return sink.Take();
}

}  // namespace clip

// BMP (own reader, following BmpImagePlugin: BITMAPCOREHEADER and the
// 40..124-byte info headers; 1/4/8-bit palette, 16/24/32-bit BI_RGB, and the
// BI_BITFIELDS layouts Pillow accepts).

#include <algorithm>
#include <cstring>
#include <string>

#include "errors.h"
#include "image.h"
#include "image_decode.h"

namespace clip {
namespace decode {
namespace {

[[noreturn]] void UnsupportedBmp(const std::string& what) {
  Fail(ErrorCode::kUnsupportedImageFormat, "unsupported BMP variant: " + what);
}

enum class BmpLayout {
  kPalette,    // 1, 4 or 8 bits per index.
  kGreyBits,   // Pillow's mode "1" for a two-entry black/white palette.
  kGreyBytes,  // Pillow's mode "L" for an 8-bit grey-ramp palette.
  kRgb555,     // BGR;15
  kRgb565,     // BGR;16
  kBytes,      // 24 or 32 bits: R, G and B at fixed byte offsets.
};

}  // namespace

void DecodeBmp(const uint8_t* data, size_t size, const ImageDecodeOptions& options, FrameSink* sink) {
  constexpr uint32_t kBiRgb = 0;
  constexpr uint32_t kBiRle8 = 1;
  constexpr uint32_t kBiRle4 = 2;
  constexpr uint32_t kBiBitfields = 3;
  if (size < 18) DecodeFailed("BMP", "truncated header");
  uint64_t offset = ReadLe32(data + 10);
  const uint32_t header_size = ReadLe32(data + 14);
  const uint8_t* header = data + 18;  // Pillow's header_data.
  if (header_size < 12 || header_size - 4 > size - 18) {
    DecodeFailed("BMP", "truncated header");
  }
  size_t position = 14 + size_t{header_size};  // Pillow's file pointer.

  uint64_t width;
  uint64_t height;
  bool top_down = false;
  uint32_t bits;
  uint32_t compression = kBiRgb;
  uint64_t colors = 0;
  size_t palette_entry_size = 4;
  uint32_t masks[4] = {0, 0, 0, 0};
  if (header_size == 12) {
    width = ReadLe16(header + 0);
    height = ReadLe16(header + 2);
    bits = ReadLe16(header + 6);
    palette_entry_size = 3;
  } else if (header_size == 40 || header_size == 52 || header_size == 56 || header_size == 64 || header_size == 108 ||
             header_size == 124) {
    // Pillow treats the height as negative only when its top byte is 0xFF.
    top_down = header[7] == 0xFF;
    width = ReadLe32(header + 0);
    height = ReadLe32(header + 4);
    if (top_down) height = (uint64_t{1} << 32) - height;
    bits = ReadLe16(header + 10);
    compression = ReadLe32(header + 12);
    colors = ReadLe32(header + 28);
    if (compression == kBiBitfields) {
      if (header_size >= 52) {
        for (int i = 0; i < (header_size >= 56 ? 4 : 3); ++i) {
          masks[i] = ReadLe32(header + 36 + 4 * i);
        }
      } else {
        if (size - position < 12) DecodeFailed("BMP", "truncated bitfields");
        for (int i = 0; i < 3; ++i) masks[i] = ReadLe32(data + position + 4 * i);
        position += 12;
      }
    }
  } else {
    DecodeFailed("BMP", "unsupported header size " + std::to_string(header_size));
  }
  CheckDimensions(width, height, options, "BMP");
  if (colors == 0) colors = uint64_t{1} << std::min<uint32_t>(bits, 32);
  // Pillow 11's fix-up for files whose data offset skips the palette.
  if (offset == 14 + uint64_t{header_size} && bits <= 8) offset += 4 * colors;

  BmpLayout layout = BmpLayout::kBytes;
  int byte_order[3] = {2, 1, 0};  // Offsets of R, G, B within a pixel.
  switch (bits) {
    case 1:
    case 4:
    case 8:
      layout = BmpLayout::kPalette;
      break;
    case 16:
      layout = BmpLayout::kRgb555;
      break;
    case 24:
    case 32:
      layout = BmpLayout::kBytes;
      break;
    default:
      UnsupportedBmp(std::to_string(bits) + " bits per pixel");
  }
  if (compression == kBiBitfields) {
    const auto is = [&](uint32_t r, uint32_t g, uint32_t b) { return masks[0] == r && masks[1] == g && masks[2] == b; };
    const uint32_t a = masks[3];
    if (bits == 32 && is(0xFF0000, 0xFF00, 0xFF) && (a == 0 || a == 0xFF000000)) {  // BGRX, BGRA
      byte_order[0] = 2, byte_order[1] = 1, byte_order[2] = 0;
    } else if (bits == 32 && is(0xFF000000, 0xFF0000, 0xFF00) && (a == 0 || a == 0xFF)) {  // XBGR, ABGR
      byte_order[0] = 3, byte_order[1] = 2, byte_order[2] = 1;
    } else if (bits == 32 && is(0xFF000000, 0xFF00, 0xFF) && (a == 0 || a == 0xFF0000)) {  // BGXR, BGAR
      byte_order[0] = 3, byte_order[1] = 1, byte_order[2] = 0;
    } else if (bits == 32 && is(0xFF, 0xFF00, 0xFF0000) && a == 0xFF000000) {  // RGBA
      byte_order[0] = 0, byte_order[1] = 1, byte_order[2] = 2;
    } else if (bits == 32 && is(0, 0, 0) && a == 0) {  // BGRA
      byte_order[0] = 2, byte_order[1] = 1, byte_order[2] = 0;
    } else if (bits == 24 && is(0xFF0000, 0xFF00, 0xFF)) {  // BGR
      byte_order[0] = 2, byte_order[1] = 1, byte_order[2] = 0;
    } else if (bits == 16 && is(0xF800, 0x7E0, 0x1F)) {
      layout = BmpLayout::kRgb565;
    } else if (bits == 16 && is(0x7C00, 0x3E0, 0x1F)) {
      layout = BmpLayout::kRgb555;
    } else {
      UnsupportedBmp("bitfields layout");
    }
  } else if (compression == kBiRle8 || compression == kBiRle4) {
    UnsupportedBmp("RLE compression");
  } else if (compression != kBiRgb) {
    UnsupportedBmp("compression " + std::to_string(compression));
  }

  uint8_t palette[256][3] = {};  // Zero past the file's entries, as Pillow.
  if (layout == BmpLayout::kPalette) {
    // Pillow's grey check formats every index as a byte, so more than 256
    // entries fail there.
    if (colors > 256) DecodeFailed("BMP", "palette larger than 256 entries");
    const size_t available = (size - std::min(size, position)) / palette_entry_size;
    const size_t entries = std::min<size_t>(colors, available);
    bool grey = true;
    for (size_t i = 0; i < colors; ++i) {
      const uint8_t expected = colors == 2 ? (i == 0 ? 0 : 255) : static_cast<uint8_t>(i);
      if (i >= entries) {
        grey = false;
        continue;
      }
      const uint8_t* entry = data + position + i * palette_entry_size;
      palette[i][0] = entry[2];
      palette[i][1] = entry[1];
      palette[i][2] = entry[0];
      if (entry[0] != expected || entry[1] != expected || entry[2] != expected) {
        grey = false;
      }
    }
    position += entries * palette_entry_size;
    if (grey && colors == 2) {
      layout = BmpLayout::kGreyBits;
    } else if (grey && bits == 8) {
      layout = BmpLayout::kGreyBytes;
    }
  }

  const uint64_t stride = ((width * bits + 31) >> 3) & ~uint64_t{3};
  const uint64_t start = offset != 0 ? offset : position;
  // Pillow's raw decoder does not need the padding after the last row.
  const uint64_t last_row = (width * bits + 7) >> 3;
  if (start > size || (height - 1) > (size - start) / stride || stride * (height - 1) + last_row > size - start) {
    DecodeFailed("BMP", "pixel data is truncated");
  }

  sink->Begin(static_cast<int>(width), static_cast<int>(height));
  for (uint64_t y = 0; y < height; ++y) {
    const uint64_t row = top_down ? y : height - 1 - y;  // Row in the file.
    const uint8_t* in = data + start + row * stride;
    size_t out_stride = 0;
    uint8_t* out = sink->Reserve(static_cast<int>(y), 1, &out_stride);
    for (uint64_t x = 0; x < width; ++x, out += 3) {
      switch (layout) {
        case BmpLayout::kPalette: {
          int index;
          if (bits == 8) {
            index = in[x];
          } else if (bits == 4) {
            index = (in[x >> 1] >> ((x & 1) ? 0 : 4)) & 0x0F;
          } else {
            index = (in[x >> 3] >> (7 - (x & 7))) & 1;
          }
          std::memcpy(out, palette[index], 3);
          break;
        }
        case BmpLayout::kGreyBits:
          out[0] = out[1] = out[2] = ((in[x >> 3] >> (7 - (x & 7))) & 1) ? 255 : 0;
          break;
        case BmpLayout::kGreyBytes:
          out[0] = out[1] = out[2] = in[x];
          break;
        case BmpLayout::kRgb555: {
          const int v = ReadLe16(in + 2 * x);
          out[0] = static_cast<uint8_t>(((v >> 10) & 31) * 255 / 31);
          out[1] = static_cast<uint8_t>(((v >> 5) & 31) * 255 / 31);
          out[2] = static_cast<uint8_t>((v & 31) * 255 / 31);
          break;
        }
        case BmpLayout::kRgb565: {
          const int v = ReadLe16(in + 2 * x);
          out[0] = static_cast<uint8_t>(((v >> 11) & 31) * 255 / 31);
          out[1] = static_cast<uint8_t>(((v >> 5) & 63) * 255 / 63);
          out[2] = static_cast<uint8_t>((v & 31) * 255 / 31);
          break;
        }
        case BmpLayout::kBytes: {
          const uint8_t* p = in + x * (bits / 8);
          out[0] = p[byte_order[0]];
          out[1] = p[byte_order[1]];
          out[2] = p[byte_order[2]];
          break;
        }
      }
    }
    sink->Commit(static_cast<int>(y), 1);
  }
}

}  // namespace decode
}  // namespace clip

// GIF (giflib for the LZW stream; the canvas rules are Pillow's frame-0
// rules).

#include <gif_lib.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "errors.h"
#include "image.h"
#include "image_decode.h"

namespace clip {
namespace decode {
namespace {

struct GifSource {
  const uint8_t* data;
  size_t size;
  size_t position;
  bool supplied_terminator;
};

int GifRead(GifFileType* gif, GifByteType* out, int length) {
  auto* source = static_cast<GifSource*>(gif->UserData);
  // Pillow stops reading once frame 0 has all its pixels; giflib then reads
  // on to the frame's block terminator. Supplying that terminator (once, as
  // a lone one-byte read at the very end) accepts the files Pillow accepts
  // whose data stops right after the last pixel codes.
  if (source->position == source->size && length == 1 && !source->supplied_terminator) {
    source->supplied_terminator = true;
    out[0] = 0;
    return 1;
  }
  const size_t n = std::min(static_cast<size_t>(std::max(length, 0)), source->size - source->position);
  std::memcpy(out, source->data + source->position, n);
  source->position += n;
  return static_cast<int>(n);
}

struct GifGuard {
  GifFileType* gif = nullptr;
  ~GifGuard() {
    int error = 0;
    if (gif) DGifCloseFile(gif, &error);
  }
};

[[noreturn]] void GifFailed(int error) {
  const char* text = GifErrorString(error);
  DecodeFailed("GIF", text ? text : "giflib error " + std::to_string(error));
}

// Pillow opens a GIF whose colour table is exactly the grey ramp as mode L,
// where an index is its own grey level even past the table's end.
bool IsGreyRamp(const ColorMapObject* map) {
  for (int i = 0; i < map->ColorCount; ++i) {
    const GifColorType& c = map->Colors[i];
    if (c.Red != i || c.Green != i || c.Blue != i) return false;
  }
  return true;
}

}  // namespace

void DecodeGif(const uint8_t* data, size_t size, const ImageDecodeOptions& options, FrameSink* out) {
  GifSource source{data, size, 0, false};
  int error = 0;
  GifGuard guard;
  guard.gif = DGifOpen(&source, GifRead, &error);
  if (!guard.gif) GifFailed(error);
  GifFileType* gif = guard.gif;

  // Frame 0 takes the transparency of the last graphic control extension
  // before it that has one.
  int transparency = -1;
  for (bool found = false; !found;) {
    GifRecordType record;
    if (DGifGetRecordType(gif, &record) != GIF_OK) GifFailed(gif->Error);
    switch (record) {
      case IMAGE_DESC_RECORD_TYPE:
        if (DGifGetImageDesc(gif) != GIF_OK) GifFailed(gif->Error);
        found = true;
        break;
      case EXTENSION_RECORD_TYPE: {
        int code = 0;
        GifByteType* block = nullptr;
        if (DGifGetExtension(gif, &code, &block) != GIF_OK) {
          GifFailed(gif->Error);
        }
        if (code == GRAPHICS_EXT_FUNC_CODE && block && block[0] > 0 && (block[1] & 1)) {
          if (block[0] < 4) DecodeFailed("GIF", "short graphic control block");
          transparency = block[4];
        }
        while (block) {
          if (DGifGetExtensionNext(gif, &block) != GIF_OK) {
            GifFailed(gif->Error);
          }
        }
        break;
      }
      case TERMINATE_RECORD_TYPE:
        DecodeFailed("GIF", "no image in file");
      default:
        break;
    }
  }

  const GifImageDesc& desc = gif->Image;
  const int64_t frame_width = desc.Width;
  const int64_t frame_height = desc.Height;
  // Pillow grows the canvas (the logical screen) to hold frame 0.
  const uint64_t canvas_width = std::max<int64_t>(gif->SWidth, desc.Left + frame_width);
  const uint64_t canvas_height = std::max<int64_t>(gif->SHeight, desc.Top + frame_height);
  CheckDimensions(canvas_width, canvas_height, options, "GIF");

  // A grey-ramp local table makes Pillow report mode L, yet it still loads
  // the global table (if that is not a ramp) into the image, and
  // convert("RGB") maps through it.
  const ColorMapObject* palette = nullptr;
  if (desc.ColorMap && !IsGreyRamp(desc.ColorMap)) {
    palette = desc.ColorMap;
  } else if (gif->SColorMap && !IsGreyRamp(gif->SColorMap)) {
    palette = gif->SColorMap;
  }
  auto put = [palette](int index, uint8_t* pixel) {
    if (!palette) {
      pixel[0] = pixel[1] = pixel[2] = static_cast<uint8_t>(index);
    } else if (index < palette->ColorCount) {
      pixel[0] = palette->Colors[index].Red;
      pixel[1] = palette->Colors[index].Green;
      pixel[2] = palette->Colors[index].Blue;
    } else {
      pixel[0] = pixel[1] = pixel[2] = 0;
    }
  };

  out->Begin(canvas_width, canvas_height);
  size_t stride = 0;
  uint8_t* canvas = out->Reserve(0, canvas_height, &stride);
  // Outside frame 0 Pillow leaves the transparency index, else index 0.
  uint8_t fill[3];
  put(transparency >= 0 ? transparency : 0, fill);
  auto fill_span = [&](uint8_t* row, uint64_t from, uint64_t to) {
    for (uint64_t x = from; x < to; ++x) std::memcpy(row + 3 * x, fill, 3);
  };
  const uint64_t frame_left = desc.Left;
  const uint64_t frame_right = desc.Left + frame_width;
  const uint64_t frame_top = desc.Top;
  const uint64_t frame_bottom = desc.Top + frame_height;
  for (uint64_t y = 0; y < canvas_height; ++y) {
    uint8_t* row = canvas + y * stride;
    if (y < frame_top || y >= frame_bottom) {
      fill_span(row, 0, canvas_width);
    } else {
      fill_span(row, 0, frame_left);
      fill_span(row, frame_right, canvas_width);
    }
  }

  std::vector<GifPixelType> line(std::max<int64_t>(frame_width, 1));
  auto decode_row = [&](int64_t y) {
    if (DGifGetLine(gif, line.data(), static_cast<int>(frame_width)) != GIF_OK) {
      GifFailed(gif->Error);
    }
    uint8_t* row = canvas + (desc.Top + y) * stride + static_cast<size_t>(desc.Left) * 3;
    for (int64_t x = 0; x < frame_width; ++x) put(line[x], row + 3 * x);
  };
  if (frame_width > 0 && desc.Interlace) {
    static constexpr int kStart[4] = {0, 4, 2, 1};
    static constexpr int kStep[4] = {8, 8, 4, 2};
    for (int pass = 0; pass < 4; ++pass) {
      for (int64_t y = kStart[pass]; y < frame_height; y += kStep[pass]) {
        decode_row(y);
      }
    }
  } else if (frame_width > 0) {
    for (int64_t y = 0; y < frame_height; ++y) decode_row(y);
  }
  out->Commit(0, canvas_height);
}

}  // namespace decode
}  // namespace clip

// WebP. Pillow decodes through WebPAnimDecoder (RGBA, non-premultiplied) even
// for still images: frame 1 is decoded onto a canvas cleared to transparent
// black, without blending. Decoding the first frame's bitstream straight into
// an RGB canvas gives the same RGB values without the two RGBA canvases.

#include <webp/decode.h>
#include <webp/demux.h>

#include <cstring>
#include <string>

#include "errors.h"
#include "image.h"
#include "image_decode.h"

namespace clip {
namespace decode {
namespace {

struct WebpDemuxGuard {
  WebPDemuxer* demux = nullptr;
  ~WebpDemuxGuard() { WebPDemuxDelete(demux); }
};

struct WebpIteratorGuard {
  WebPIterator* iterator;
  ~WebpIteratorGuard() { WebPDemuxReleaseIterator(iterator); }
};

struct WebpChunkGuard {
  WebPChunkIterator* iterator;
  ~WebpChunkGuard() { WebPDemuxReleaseChunkIterator(iterator); }
};

}  // namespace

void DecodeWebp(const uint8_t* data, size_t size, const ImageDecodeOptions& options, FrameSink* out) {
  WebPData webp_data{data, size};
  WebpDemuxGuard demux_guard;
  demux_guard.demux = WebPDemux(&webp_data);
  WebPDemuxer* demux = demux_guard.demux;
  if (!demux) DecodeFailed("WebP", "invalid or truncated container");
  const uint32_t canvas_width = WebPDemuxGetI(demux, WEBP_FF_CANVAS_WIDTH);
  const uint32_t canvas_height = WebPDemuxGetI(demux, WEBP_FF_CANVAS_HEIGHT);
  CheckDimensions(canvas_width, canvas_height, options, "WebP");

  if (options.apply_exif_orientation) {
    WebPChunkIterator chunk;
    std::memset(&chunk, 0, sizeof(chunk));
    WebpChunkGuard chunk_guard{&chunk};
    if (WebPDemuxGetChunk(demux, "EXIF", 1, &chunk)) {
      out->SetOrientation(ParseExifOrientation(chunk.chunk.bytes, chunk.chunk.size));
    }
  }

  WebPIterator frame;
  std::memset(&frame, 0, sizeof(frame));
  WebpIteratorGuard frame_guard{&frame};
  if (!WebPDemuxGetFrame(demux, 1, &frame)) {
    DecodeFailed("WebP", "no frame");
  }
  if (frame.width <= 0 || frame.height <= 0 || frame.x_offset < 0 || frame.y_offset < 0 ||
      static_cast<uint64_t>(frame.x_offset) + frame.width > canvas_width ||
      static_cast<uint64_t>(frame.y_offset) + frame.height > canvas_height) {
    DecodeFailed("WebP", "frame outside the canvas");
  }

  out->Begin(canvas_width, canvas_height);
  size_t stride = 0;
  uint8_t* canvas = out->Reserve(0, canvas_height, &stride);
  // Outside frame 1 the canvas is transparent black.
  const size_t frame_left = static_cast<size_t>(frame.x_offset) * 3;
  const size_t frame_bytes = static_cast<size_t>(frame.width) * 3;
  for (uint32_t y = 0; y < canvas_height; ++y) {
    uint8_t* row = canvas + y * stride;
    if (y < static_cast<uint32_t>(frame.y_offset) || y >= static_cast<uint32_t>(frame.y_offset + frame.height)) {
      std::memset(row, 0, static_cast<size_t>(canvas_width) * 3);
    } else {
      std::memset(row, 0, frame_left);
      std::memset(row + frame_left + frame_bytes, 0, static_cast<size_t>(canvas_width) * 3 - frame_left - frame_bytes);
    }
  }
  WebPDecoderConfig config;
  if (!WebPInitDecoderConfig(&config)) {
    Fail(ErrorCode::kInternal, "libwebp version mismatch");
  }
  config.output.colorspace = MODE_RGB;
  config.output.is_external_memory = 1;
  config.output.u.RGBA.rgba = canvas + static_cast<size_t>(frame.y_offset) * stride + frame_left;
  config.output.u.RGBA.stride = static_cast<int>(stride);
  config.output.u.RGBA.size = stride * (frame.height - 1) + frame_bytes;
  const VP8StatusCode status = WebPDecode(frame.fragment.bytes, frame.fragment.size, &config);
  WebPFreeDecBuffer(&config.output);
  if (status != VP8_STATUS_OK) {
    DecodeFailed("WebP", "libwebp status " + std::to_string(status));
  }
  out->Commit(0, canvas_height);
}

}  // namespace decode
}  // namespace clip

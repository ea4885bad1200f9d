// Internal to the image decoders (image_decode.cc and one decode_<format>.cc
// per codec): the helpers they share and each codec's entry point. Not part of
// the API in image.h.
#ifndef CLIP_NATIVE_CORE_PREP_IMAGE_DECODE_H_
#define CLIP_NATIVE_CORE_PREP_IMAGE_DECODE_H_

#include <cstddef>
#include <cstdint>
#include <string>
#include <utility>

#include "errors.h"
#include "image.h"

namespace clip {
namespace decode {

[[noreturn]] void Fail(ErrorCode code, const std::string& message);
// ClipError(kImageDecodeFailed) "cannot decode <format> image: <why>".
[[noreturn]] void DecodeFailed(const char* format, const std::string& why);

inline uint32_t ReadBe32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) | (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
inline uint32_t ReadLe32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) | (uint32_t{p[3]} << 24);
}
inline uint16_t ReadLe16(const uint8_t* p) { return static_cast<uint16_t>(p[0] | (p[1] << 8)); }

inline constexpr uint8_t kPngSignature[8] = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};

// Validates the size announced by a header before any pixel memory exists.
void CheckDimensions(uint64_t width, uint64_t height, const ImageDecodeOptions& options, const char* format);

RgbImage NewRgbImage(uint64_t width, uint64_t height);

// Returns the EXIF Orientation tag (0x0112) of IFD0, or 1 when absent or
// invalid. `size` bytes of TIFF data, optionally behind an "Exif\0\0" header.
int ParseExifOrientation(const uint8_t* data, size_t size);

// Streams `image` to `sink` transposed as Image.transpose does with the
// method exif_transpose picks for `orientation` (2..8).
void EmitOriented(const RgbImage& image, int orientation, RgbRowSink* sink);

// Collects all rows into one RgbImage (DecodeImage's sink).
class ImageSink : public RgbRowSink {
 public:
  void Begin(int width, int height) override { image_ = NewRgbImage(width, height); }
  uint8_t* Reserve(int y, int /*count*/, size_t* stride) override {
    *stride = static_cast<size_t>(image_.width) * 3;
    return image_.pixels.data() + static_cast<size_t>(y) * *stride;
  }
  void Commit(int /*y*/, int /*count*/) override {}
  RgbImage Take() { return std::move(image_); }

 private:
  RgbImage image_;
};

// Sits between a decoder and the caller's sink. Rows pass straight through,
// unless an EXIF orientation is to be applied: then the image is collected
// whole and streamed out transposed by Finish().
class FrameSink {
 public:
  explicit FrameSink(RgbRowSink* sink) : sink_(sink) {}

  // Before Begin; values other than 2..8 leave the image as it is.
  void SetOrientation(int orientation) { orientation_ = orientation; }
  void Begin(int width, int height) {
    if (Rotates()) {
      whole_.Begin(width, height);
    } else {
      sink_->Begin(width, height);
    }
  }
  uint8_t* Reserve(int y, int count, size_t* stride) {
    return Rotates() ? whole_.Reserve(y, count, stride) : sink_->Reserve(y, count, stride);
  }
  void Commit(int y, int count) {
    if (!Rotates()) sink_->Commit(y, count);
  }
  // What the caller's sink reads of the decoded image (after Begin); all of
  // it when the image is turned first.
  RgbRowSink::Region NeededRegion(int width, int height) const {
    return Rotates() ? RgbRowSink::Region{0, width, 0, height} : sink_->NeededRegion(width, height);
  }
  // RgbRowSink::SplitBelow of the caller's sink; null when the image is
  // turned first.
  std::unique_ptr<RgbRowSink> SplitBelow(int y) { return Rotates() ? nullptr : sink_->SplitBelow(y); }
  // After the decoder has committed every row.
  void Finish() {
    if (Rotates()) EmitOriented(whole_.Take(), orientation_, sink_);
  }

 private:
  bool Rotates() const { return orientation_ >= 2 && orientation_ <= 8; }

  RgbRowSink* sink_;
  int orientation_ = 1;
  ImageSink whole_;
};

// One decoder per format. Each validates the header, then streams rows to
// `sink` (Begin, Reserve/Commit, nothing after a throw); DecodeImageRows
// calls sink->Finish().
void DecodeJpeg(const uint8_t* data, size_t size, const ImageDecodeOptions& options, FrameSink* sink);
void DecodePng(const uint8_t* data, size_t size, const ImageDecodeOptions& options, FrameSink* sink);
void DecodeWebp(const uint8_t* data, size_t size, const ImageDecodeOptions& options, FrameSink* sink);
void DecodeGif(const uint8_t* data, size_t size, const ImageDecodeOptions& options, FrameSink* sink);
void DecodeBmp(const uint8_t* data, size_t size, const ImageDecodeOptions& options, FrameSink* sink);

// How many JPEGs were decoded in part (decode_jpeg.cc): a sink that reads
// only part of the image (NeededRegion) gets that part and a margin.
uint64_t JpegRegionDecodes();

// Large baseline JPEGs decoded on two threads (decode_jpeg.cc), and a test
// switch that splits every JPEG whose sink offers SplitBelow, whatever its
// size and whatever else the process is preparing.
uint64_t JpegSplitDecodes();
void SetSplitDecodesForced(bool forced);
bool SplitDecodesForced();

// PNG's whole-buffer path (decode_png.cc): a process-wide switch (on by
// default; off sends every PNG through libpng, which tests compare it with)
// and how many images it has decoded.
void SetPngWholeBufferEnabled(bool enabled);
uint64_t PngWholeBufferDecodes();

}  // namespace decode
}  // namespace clip

#endif  // CLIP_NATIVE_CORE_PREP_IMAGE_DECODE_H_

// Image decoding and CLIP preprocessing, matching Hugging Face's
// CLIPImageProcessor (Pillow decode, convert("RGB"), bicubic resize of the
// short side, center crop, rescale, normalize) bit for bit.
//
// Every function here is reentrant: no global mutable state, each decode keeps
// its codec state (including the setjmp targets of libjpeg and libpng) on its
// own stack, so any number of threads may call these concurrently.
#ifndef CLIP_NATIVE_CORE_PREP_IMAGE_H_
#define CLIP_NATIVE_CORE_PREP_IMAGE_H_

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <vector>

#include "huge_pages.h"

namespace clip {

enum class ImageFormat { kUnknown, kJpeg, kPng, kWebp, kGif, kBmp };

// Identifies the container from its leading magic bytes only; it does not
// check that the rest of the data is valid.
ImageFormat DetectImageFormat(const uint8_t* data, size_t size);

// Short lowercase name of a format ("jpeg", "png", ...), for messages.
const char* ImageFormatName(ImageFormat format);

struct ImageDecodeOptions {
  // CLIPImageProcessor ignores EXIF; transformers' load_image (pipelines)
  // applies ImageOps.exif_transpose first. Orientation 1..8 is read from JPEG
  // APP1, PNG eXIf and WebP EXIF.
  bool apply_exif_orientation = false;
  // Checked against width * height from the header, before pixels are
  // allocated.
  uint64_t max_pixels = 50'000'000;
};

// Bytes of decoded images: large ones on huge pages (huge_pages.h).
using PixelBuffer = std::vector<uint8_t, HugePageAllocator<uint8_t>>;

// HWC RGB8, row-major, top row first: pixels.size() == width * height * 3.
struct RgbImage {
  int width = 0;
  int height = 0;
  PixelBuffer pixels;
};

// Decodes and converts exactly as Pillow's Image.open + convert("RGB") (frame
// 0 of an animated GIF or WebP; alpha is dropped, never composited).
// Throws ClipError:
//   kUnsupportedImageFormat  unknown magic bytes, or a variant of a known
//                            container that is not supported (BMP RLE, BMP
//                            bitfield layouts Pillow also refuses);
//   kImageTooLarge           width * height > options.max_pixels (from the
//                            header, before allocating);
//   kImageDecodeFailed       corrupt, truncated or zero-length data.
RgbImage DecodeImage(const uint8_t* data, size_t size, const ImageDecodeOptions& options);

// Receives the rows of a decoded image from DecodeImageRows.
class RgbRowSink {
 public:
  virtual ~RgbRowSink() = default;
  // Called once, before any row, with the image size (already checked
  // against max_pixels).
  virtual void Begin(int width, int height) = 0;
  // Memory for rows [y, y + count): width * 3 bytes each, *stride bytes
  // apart, contents unspecified. The decoder fills all of them and then
  // calls Commit(y, count). Rows are reserved top to bottom, each once; a
  // decoder that needs random access reserves all of them at once.
  virtual uint8_t* Reserve(int y, int count, size_t* stride) = 0;
  virtual void Commit(int y, int count) = 0;
  // The part of the image the sink reads, asked after Begin: rows
  // [y_begin, y_end) and of each row the columns [x_begin, x_end). A decoder
  // may leave the other columns of a reserved row unwritten and need not
  // reserve the other rows at all. By default the whole image.
  struct Region {
    int x_begin = 0;
    int x_end = 0;
    int y_begin = 0;
    int y_end = 0;
  };
  virtual Region NeededRegion(int width, int height) const { return {0, width, 0, height}; }
  // A second sink for the rows from y down, which another thread may fill
  // (Reserve and Commit, top to bottom) while this one gets the rows above
  // y; asked after Begin, at most once. Null (the default) where rows come
  // from one thread only, or where splitting would not pay.
  virtual std::unique_ptr<RgbRowSink> SplitBelow(int /*y*/) { return nullptr; }
};

// DecodeImage, handing rows to `sink` as they are decoded, so that a caller
// that keeps only a reduced image never holds the whole one. JPEG, BMP and
// non-interlaced PNG stream; GIF, WebP, Adam7 PNG and images rotated by
// apply_exif_orientation are decoded whole first. Throws as DecodeImage; the
// sink's exceptions propagate.
void DecodeImageRows(const uint8_t* data, size_t size, const ImageDecodeOptions& options, RgbRowSink* sink);

struct PreprocessOptions {
  int crop_size = 224;
  int resize_shortest_edge = 224;
  std::array<float, 3> mean = {0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std = {0.26862954f, 0.26130258f, 0.27577711f};
};

// Number of floats PreprocessRgb writes: 3 * crop_size * crop_size.
size_t PreprocessedSize(const PreprocessOptions& options);

// Pillow-exact bicubic resize of the short side to resize_shortest_edge (long
// side = int(size * long / short); no resize when already that size), center
// crop with floor offsets (zero padding where the crop is larger, as HF does),
// rescale by 1/255 and normalize; writes 3 * crop * crop floats, CHW, to out.
// Only the cropped window of the resized image is computed. Throws ClipError
// kInvalidArgument for bad options or an empty image, kImageTooLarge when the
// resized long side does not fit in an int.
void PreprocessRgb(const RgbImage& image, const PreprocessOptions& options, float* out);

// DecodeImage followed by PreprocessRgb, with identical results, but the
// rows stream from the decoder through the resize (see DecodeImageRows).
void PreprocessImage(const uint8_t* data, size_t size, const ImageDecodeOptions& decode, const PreprocessOptions& pre,
                     float* out);

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_PREP_IMAGE_H_

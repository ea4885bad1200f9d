// Decoders for DecodeImage. Each one reproduces what Pillow's plugin for the
// format followed by Image.convert("RGB") produces; the comments name the
// Pillow behaviour being matched where it is not the obvious one.

#include <gif_lib.h>
#include <png.h>
#include <webp/decode.h>
#include <webp/demux.h>
#include <zlib.h>

#include <algorithm>
#include <climits>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <new>
#include <string>
#include <vector>

// jpeglib.h needs FILE and size_t declared first.
#include <jerror.h>
#include <jpeglib.h>

#include "errors.h"
#include "image.h"

namespace clip {
namespace {

[[noreturn]] void Fail(ErrorCode code, const std::string& message) {
  throw ClipError(code, message);
}

[[noreturn]] void DecodeFailed(const char* format, const std::string& why) {
  Fail(ErrorCode::kImageDecodeFailed,
       std::string("cannot decode ") + format + " image: " + why);
}

uint32_t ReadBe32(const uint8_t* p) {
  return (uint32_t{p[0]} << 24) | (uint32_t{p[1]} << 16) |
         (uint32_t{p[2]} << 8) | uint32_t{p[3]};
}
uint32_t ReadLe32(const uint8_t* p) {
  return uint32_t{p[0]} | (uint32_t{p[1]} << 8) | (uint32_t{p[2]} << 16) |
         (uint32_t{p[3]} << 24);
}
uint16_t ReadLe16(const uint8_t* p) {
  return static_cast<uint16_t>(p[0] | (p[1] << 8));
}

// Validates the size announced by a header before any pixel memory exists.
void CheckDimensions(uint64_t width, uint64_t height,
                     const ImageDecodeOptions& options, const char* format) {
  if (width == 0 || height == 0) {
    DecodeFailed(format, "image has zero width or height");
  }
  // The product is only formed once both sides are below 2^31.
  if (width > INT_MAX || height > INT_MAX ||
      width * height > options.max_pixels) {
    Fail(ErrorCode::kImageTooLarge,
         std::string(format) + " image is " + std::to_string(width) + "x" +
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

// Returns the Orientation tag (0x0112) of IFD0, or 1 when absent or invalid.
// `size` bytes of TIFF data, optionally behind an "Exif\0\0" header.
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
    return big_endian ? (data[at] << 8) | data[at + 1]
                      : data[at] | (data[at + 1] << 8);
  };
  auto u32 = [&](size_t at) -> uint32_t {
    return big_endian ? ReadBe32(data + at) : ReadLe32(data + at);
  };
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

// Streams `image` to `sink` transposed as Image.transpose does with the
// method exif_transpose picks for `orientation` (2..8).
void EmitOriented(const RgbImage& image, int orientation, RgbRowSink* sink) {
  const int w = image.width;
  const int h = image.height;
  const bool swaps_axes = orientation >= 5;
  const int out_width = swaps_axes ? h : w;
  const int out_height = swaps_axes ? w : h;
  sink->Begin(out_width, out_height);
  for (int y = 0; y < out_height; ++y) {
    size_t stride = 0;
    uint8_t* row = sink->Reserve(y, 1, &stride);
    for (int x = 0; x < out_width; ++x) {
      int sx, sy;  // Source pixel of output (x, y).
      switch (orientation) {
        case 2:  // FLIP_LEFT_RIGHT
          sx = w - 1 - x, sy = y;
          break;
        case 3:  // ROTATE_180
          sx = w - 1 - x, sy = h - 1 - y;
          break;
        case 4:  // FLIP_TOP_BOTTOM
          sx = x, sy = h - 1 - y;
          break;
        case 5:  // TRANSPOSE
          sx = y, sy = x;
          break;
        case 6:  // ROTATE_270 (clockwise quarter turn)
          sx = y, sy = h - 1 - x;
          break;
        case 7:  // TRANSVERSE
          sx = w - 1 - y, sy = h - 1 - x;
          break;
        default:  // 8: ROTATE_90 (counter-clockwise quarter turn)
          sx = w - 1 - y, sy = x;
          break;
      }
      std::memcpy(row + 3 * x,
                  &image.pixels[(static_cast<size_t>(sy) * w + sx) * 3], 3);
    }
    sink->Commit(y, 1);
  }
}

// Collects all rows into one RgbImage (DecodeImage's sink).
class ImageSink : public RgbRowSink {
 public:
  void Begin(int width, int height) override {
    image_ = NewRgbImage(width, height);
  }
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
    return Rotates() ? whole_.Reserve(y, count, stride)
                     : sink_->Reserve(y, count, stride);
  }
  void Commit(int y, int count) {
    if (!Rotates()) sink_->Commit(y, count);
  }
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

// ---------------------------------------------------------------------------
// JPEG (libjpeg-turbo). Pillow leaves the decoder at its defaults: islow IDCT,
// fancy upsampling, colour space from the JFIF/Adobe markers; output L, RGB
// or Adobe-inverted CMYK by component count.
// ---------------------------------------------------------------------------

struct JpegErrorManager {
  jpeg_error_mgr pub;
  jmp_buf jump;
  char message[JMSG_LENGTH_MAX];
};

void JpegErrorExit(j_common_ptr cinfo) {
  auto* manager = reinterpret_cast<JpegErrorManager*>(cinfo->err);
  (*cinfo->err->format_message)(cinfo, manager->message);
  std::longjmp(manager->jump, 1);
}

void JpegEmitMessage(j_common_ptr cinfo, int level) {
  if (level >= 0) return;  // Trace messages.
  // Pillow ignores libjpeg's corrupt-data warnings, but running out of input
  // is "image file is truncated" there, whereas jpeg_mem_src would pad the
  // image with grey and carry on.
  if (cinfo->err->msg_code == JWRN_JPEG_EOF) JpegErrorExit(cinfo);
  cinfo->err->num_warnings++;
}

void JpegOutputMessage(j_common_ptr) {}  // Never print to stderr.

// Pillow's CMYK -> RGB, applied to libjpeg's Adobe-inverted CMYK output
// (Pillow stores 255 - raw and converts with nk = 255 - K).
inline uint8_t CmykChannel(uint8_t raw_ink, uint8_t raw_black) {
  const int nk = raw_black;
  const int ink = 255 - raw_ink;
  const int t = ink * nk + 128;
  const int v = nk - (((t >> 8) + t) >> 8);
  return static_cast<uint8_t>(std::clamp(v, 0, 255));
}

// Pillow joins every "Exif\0\0" APP1 segment onto the first one.
int JpegExifOrientation(j_decompress_ptr cinfo) {
  std::vector<uint8_t> tiff;
  for (jpeg_saved_marker_ptr m = cinfo->marker_list; m; m = m->next) {
    if (m->marker != JPEG_APP0 + 1 || m->data_length < 6 ||
        std::memcmp(m->data, "Exif\0\0", 6) != 0) {
      continue;
    }
    tiff.insert(tiff.end(), m->data + 6, m->data + m->data_length);
  }
  return ParseExifOrientation(tiff.data(), tiff.size());
}

// State of one JPEG decode. It lives in DecodeJpeg's frame while
// ReadJpeg, the only function that calls setjmp, keeps nothing with a
// destructor in its own: a longjmp back into ReadJpeg then skips no
// destructor, and the values here stay valid after it.
struct JpegJob {
  const uint8_t* data = nullptr;
  size_t size = 0;
  const ImageDecodeOptions* options = nullptr;
  FrameSink* out = nullptr;
  jpeg_decompress_struct cinfo;
  JpegErrorManager error;
  std::vector<uint8_t> scratch;
  std::vector<JSAMPROW> rows;
};

// Returns false when libjpeg reported an error (job->error.message says
// which); throws ClipError for conditions found here.
bool ReadJpeg(JpegJob* job) {
  jpeg_decompress_struct* cinfo = &job->cinfo;
  if (setjmp(job->error.jump)) return false;
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, job->data, static_cast<unsigned long>(job->size));
  if (job->options->apply_exif_orientation) {
    jpeg_save_markers(cinfo, JPEG_APP0 + 1, 0xFFFF);
  }
  jpeg_read_header(cinfo, TRUE);
  CheckDimensions(cinfo->image_width, cinfo->image_height, *job->options,
                  "JPEG");

  const int components = cinfo->num_components;
  switch (components) {
    case 1:
      cinfo->out_color_space = JCS_GRAYSCALE;
      break;
    case 3:
      cinfo->out_color_space = JCS_RGB;
      break;
    case 4:
      cinfo->out_color_space = JCS_CMYK;
      break;
    default:
      DecodeFailed("JPEG", "cannot handle " + std::to_string(components) +
                               "-component images");
  }
  cinfo->dct_method = JDCT_ISLOW;
  cinfo->do_fancy_upsampling = TRUE;
  if (job->options->apply_exif_orientation) {
    job->out->SetOrientation(JpegExifOrientation(cinfo));
  }

  jpeg_start_decompress(cinfo);
  job->out->Begin(cinfo->output_width, cinfo->output_height);
  const size_t width = cinfo->output_width;
  const int batch = std::max(1, cinfo->rec_outbuf_height);
  job->rows.resize(batch);
  if (components != 3) job->scratch.resize(width * components * batch);

  while (cinfo->output_scanline < cinfo->output_height) {
    const int y = static_cast<int>(cinfo->output_scanline);
    const int count =
        static_cast<int>(std::min<JDIMENSION>(batch, cinfo->output_height - y));
    size_t stride = 0;
    uint8_t* block = job->out->Reserve(y, count, &stride);
    // RGB rows land in the sink's memory directly.
    for (int i = 0; i < count; ++i) {
      job->rows[i] = components == 3
                         ? block + i * stride
                         : job->scratch.data() + i * width * components;
    }
    for (int done = 0; done < count;) {
      done += static_cast<int>(
          jpeg_read_scanlines(cinfo, job->rows.data() + done, count - done));
    }
    for (int i = 0; components != 3 && i < count; ++i) {
      const uint8_t* in = job->rows[i];
      uint8_t* out = block + i * stride;
      if (components == 1) {
        for (size_t x = 0; x < width; ++x) {
          out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = in[x];
        }
      } else {
        for (size_t x = 0; x < width; ++x) {
          const uint8_t* p = in + 4 * x;
          out[3 * x + 0] = CmykChannel(p[0], p[3]);
          out[3 * x + 1] = CmykChannel(p[1], p[3]);
          out[3 * x + 2] = CmykChannel(p[2], p[3]);
        }
      }
    }
    job->out->Commit(y, count);
  }
  // Reads on to EOI, so a file cut after the last scan is truncated too, as
  // in Pillow.
  jpeg_finish_decompress(cinfo);
  return true;
}

struct JpegDestroyGuard {
  jpeg_decompress_struct* cinfo;
  ~JpegDestroyGuard() { jpeg_destroy_decompress(cinfo); }
};

void DecodeJpeg(const uint8_t* data, size_t size,
                const ImageDecodeOptions& options, FrameSink* out) {
  JpegJob job;
  job.data = data;
  job.size = size;
  job.options = &options;
  job.out = out;
  std::memset(&job.cinfo, 0, sizeof(job.cinfo));  // Destroyable if unused.
  JpegDestroyGuard guard{&job.cinfo};
  job.cinfo.err = jpeg_std_error(&job.error.pub);
  job.error.pub.error_exit = JpegErrorExit;
  job.error.pub.emit_message = JpegEmitMessage;
  job.error.pub.output_message = JpegOutputMessage;
  job.error.message[0] = '\0';
  if (!ReadJpeg(&job)) DecodeFailed("JPEG", job.error.message);
}

// ---------------------------------------------------------------------------
// PNG (libpng for inflate, unfiltering and de-interlacing; the conversion to
// RGB is Pillow's, done here on the raw samples).
// ---------------------------------------------------------------------------

constexpr uint8_t kPngSignature[8] = {0x89, 'P',  'N',  'G',
                                      '\r', '\n', 0x1A, '\n'};

struct PngSource {
  const uint8_t* data;
  size_t size;
  size_t position;
  // Set while image rows are read: once libpng has every row it goes on to
  // inflate whatever follows in IDAT to the end of the zlib stream, which a
  // hostile file makes a gigabyte of zeros in a megabyte. Pillow stops at the
  // last row; so does PngRead, by jumping out with `finished` set.
  bool reading_rows = false;
  bool interlaced = false;
  png_uint_32 height = 0;
  bool finished = false;
};

void PngRead(png_structp png, png_bytep out, png_size_t length) {
  auto* source = static_cast<PngSource*>(png_get_io_ptr(png));
  if (source->reading_rows &&
      (source->interlaced ? png_get_current_pass_number(png) >= 7
                          : png_get_current_row_number(png) >= source->height)) {
    source->finished = true;
    png_longjmp(png, 1);
  }
  if (length > source->size - source->position) png_error(png, "truncated");
  std::memcpy(out, source->data + source->position, length);
  source->position += length;
}

struct PngErrorState {
  char message[256];
};

void PngError(png_structp png, png_const_charp message) {
  auto* state = static_cast<PngErrorState*>(png_get_error_ptr(png));
  std::snprintf(state->message, sizeof(state->message), "%s", message);
  png_longjmp(png, 1);
}

void PngWarning(png_structp, png_const_charp) {}

// Walks the chunk list before libpng runs. Pillow verifies the CRC of every
// chunk before the first IDAT (and fails on a mismatch) but never that of
// IDAT; libpng is then told to ignore critical CRCs so that both agree. Also
// finds the first eXIf chunk, wherever it is (Pillow reads those after IDAT
// too).
void ScanPngChunks(const uint8_t* data, size_t size, bool want_exif,
                   const uint8_t** exif, size_t* exif_size) {
  size_t position = 8;
  bool seen_idat = false;
  while (position + 12 <= size) {
    const uint32_t length = ReadBe32(data + position);
    const uint8_t* type = data + position + 4;
    if (length > 0x7FFFFFFFu || length > size - position - 12) {
      if (!seen_idat) break;  // libpng reports the truncation.
      return;
    }
    if (std::memcmp(type, "IDAT", 4) == 0) {
      seen_idat = true;
      if (!want_exif) return;
    } else if (!seen_idat) {
      const uint32_t expected = ReadBe32(data + position + 8 + length);
      const uLong actual = crc32(0, type, 4 + length);
      if (actual != expected) {
        DecodeFailed("PNG",
                     "bad CRC in chunk " +
                         std::string(reinterpret_cast<const char*>(type), 4));
      }
    }
    if (want_exif && *exif == nullptr && std::memcmp(type, "eXIf", 4) == 0) {
      *exif = data + position + 8;
      *exif_size = length;
    }
    if (std::memcmp(type, "IEND", 4) == 0) return;
    position += 12 + size_t{length};
  }
}

// Converts one unpacked row (png_set_packing: one byte per sample below 8
// bits, big-endian pairs at 16) the way Pillow's PNG rawmodes and
// convert("RGB") do.
void ConvertPngRow(const uint8_t* in, int color_type, int bit_depth,
                   const png_color* palette, int palette_size, size_t width,
                   uint8_t* out) {
  switch (color_type) {
    case PNG_COLOR_TYPE_GRAY:
      if (bit_depth == 16) {
        // Mode I;16; I;16 -> RGB clamps at 255 instead of scaling.
        for (size_t x = 0; x < width; ++x) {
          const uint8_t v = in[2 * x] != 0 ? 255 : in[2 * x + 1];
          out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = v;
        }
      } else {
        // Modes "1", L;2 and L;4 stretch to 0..255.
        const int gain = bit_depth == 1   ? 255
                         : bit_depth == 2 ? 85
                         : bit_depth == 4 ? 17
                                          : 1;
        for (size_t x = 0; x < width; ++x) {
          const uint8_t v = static_cast<uint8_t>(in[x] * gain);
          out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = v;
        }
      }
      break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: {
      // LA, or RGBA through LA;16B (high byte) at 16 bits.
      const int step = bit_depth == 16 ? 4 : 2;
      for (size_t x = 0; x < width; ++x) {
        const uint8_t v = in[step * x];
        out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = v;
      }
      break;
    }
    case PNG_COLOR_TYPE_RGB:
    case PNG_COLOR_TYPE_RGB_ALPHA: {
      // RGB;16B and RGBA;16B keep the high byte of each sample.
      const int channels = color_type == PNG_COLOR_TYPE_RGB ? 3 : 4;
      const int bytes = bit_depth == 16 ? 2 : 1;
      const size_t step = static_cast<size_t>(channels) * bytes;
      for (size_t x = 0; x < width; ++x) {
        const uint8_t* p = in + step * x;
        out[3 * x + 0] = p[0];
        out[3 * x + 1] = p[bytes];
        out[3 * x + 2] = p[2 * bytes];
      }
      break;
    }
    case PNG_COLOR_TYPE_PALETTE:
      // Pillow's palette is zero past the PLTE entries.
      for (size_t x = 0; x < width; ++x) {
        const int index = in[x];
        if (index < palette_size) {
          out[3 * x + 0] = palette[index].red;
          out[3 * x + 1] = palette[index].green;
          out[3 * x + 2] = palette[index].blue;
        } else {
          out[3 * x + 0] = out[3 * x + 1] = out[3 * x + 2] = 0;
        }
      }
      break;
    default:
      break;
  }
}

// State of one PNG decode; see JpegJob for why it lives outside ReadPng.
struct PngJob {
  PngSource source;
  PngErrorState error;
  png_structp png = nullptr;
  png_infop info = nullptr;
  FrameSink* out = nullptr;
  std::vector<uint8_t> raw;
  std::vector<png_bytep> row_pointers;
  // Set before rows are read; read again after a longjmp, so not locals.
  png_uint_32 width = 0;
  int bit_depth = 0;
  int color_type = 0;
  png_colorp palette = nullptr;
  int palette_size = 0;
  int passes = 1;
  png_uint_32 next_row = 0;  // non-interlaced: rows emitted so far

  ~PngJob() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

void EmitPngRow(PngJob* job, png_uint_32 y, const uint8_t* raw_row) {
  size_t stride = 0;
  uint8_t* row = job->out->Reserve(y, 1, &stride);
  ConvertPngRow(raw_row, job->color_type, job->bit_depth, job->palette,
                job->palette_size, job->width, row);
  job->out->Commit(y, 1);
}

// Emits what the row loop has not: every row of an interlaced image (Adam7
// needs the whole image before any row is final), or the last row of a
// non-interlaced one when PngRead stopped libpng inside it.
void FinishPngRows(PngJob* job) {
  const png_uint_32 height = job->source.height;
  if (job->passes > 1) {
    for (png_uint_32 y = 0; y < height; ++y) EmitPngRow(job, y, job->row_pointers[y]);
  } else {
    for (; job->next_row < height; ++job->next_row) EmitPngRow(job, job->next_row, job->raw.data());
  }
}

// Returns false when libpng reported an error (job->error.message).
bool ReadPng(PngJob* job) {
  png_structp png = job->png;
  png_infop info = job->info;
  if (setjmp(png_jmpbuf(png))) {
    if (!job->source.finished) return false;
    FinishPngRows(job);
    return true;
  }
  png_set_read_fn(png, &job->source, PngRead);
  png_set_user_limits(png, 0x7FFFFFFF, 0x7FFFFFFF);
  png_set_crc_action(png, PNG_CRC_QUIET_USE, PNG_CRC_DEFAULT);
  // No ancillary chunk matters (alpha and colour management are ignored, as
  // by Pillow's convert), so skip them all instead of validating them.
  png_set_keep_unknown_chunks(png, PNG_HANDLE_CHUNK_NEVER, nullptr, -1);
  png_read_info(png, info);

  png_uint_32 width = 0;
  png_uint_32 height = 0;
  int interlace = 0;
  png_get_IHDR(png, info, &width, &height, &job->bit_depth, &job->color_type,
               &interlace, nullptr, nullptr);
  job->width = width;
  if (job->color_type == PNG_COLOR_TYPE_PALETTE &&
      png_get_PLTE(png, info, &job->palette, &job->palette_size) != PNG_INFO_PLTE) {
    DecodeFailed("PNG", "palette image without PLTE chunk");
  }
  if (job->bit_depth < 8) png_set_packing(png);
  job->passes = png_set_interlace_handling(png);
  png_read_update_info(png, info);
  const size_t row_bytes = png_get_rowbytes(png, info);

  job->out->Begin(width, height);
  job->source.height = height;
  job->source.interlaced = job->passes > 1;
  if (job->passes == 1) {
    job->raw.resize(row_bytes);
    job->source.reading_rows = true;
    for (; job->next_row < height; ++job->next_row) {
      png_read_row(png, job->raw.data(), nullptr);
      EmitPngRow(job, job->next_row, job->raw.data());
    }
  } else {
    job->raw.resize(row_bytes * height);
    job->row_pointers.resize(height);
    for (png_uint_32 y = 0; y < height; ++y) {
      job->row_pointers[y] = job->raw.data() + y * row_bytes;
    }
    job->source.reading_rows = true;
    png_read_image(png, job->row_pointers.data());
  }
  // Seldom reached: PngRead usually jumps out once libpng has every row.
  // png_read_end is skipped on purpose: chunks after the image data cannot
  // change the pixels, and Pillow tolerates damage there.
  FinishPngRows(job);
  return true;
}

void DecodePng(const uint8_t* data, size_t size,
               const ImageDecodeOptions& options, FrameSink* out) {
  // IHDR is the first chunk; read its size before libpng allocates anything.
  if (size < 33 || std::memcmp(data + 12, "IHDR", 4) != 0) {
    DecodeFailed("PNG", "missing or truncated IHDR chunk");
  }
  CheckDimensions(ReadBe32(data + 16), ReadBe32(data + 20), options, "PNG");

  const uint8_t* exif = nullptr;
  size_t exif_size = 0;
  ScanPngChunks(data, size, options.apply_exif_orientation, &exif, &exif_size);
  if (exif) out->SetOrientation(ParseExifOrientation(exif, exif_size));

  PngJob job;
  job.out = out;
  job.source = PngSource{data, size, 0};
  job.error.message[0] = '\0';
  job.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &job.error, PngError,
                                   PngWarning);
  if (!job.png) Fail(ErrorCode::kInternal, "png_create_read_struct failed");
  job.info = png_create_info_struct(job.png);
  if (!job.info) Fail(ErrorCode::kInternal, "png_create_info_struct failed");
  if (!ReadPng(&job)) DecodeFailed("PNG", job.error.message);
}

// ---------------------------------------------------------------------------
// WebP. Pillow decodes through WebPAnimDecoder (RGBA, non-premultiplied) even
// for still images: frame 1 is decoded onto a canvas cleared to transparent
// black, without blending. Decoding the first frame's bitstream straight into
// an RGB canvas gives the same RGB values without the two RGBA canvases.
// ---------------------------------------------------------------------------

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

void DecodeWebp(const uint8_t* data, size_t size,
                const ImageDecodeOptions& options, FrameSink* out) {
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
      out->SetOrientation(
          ParseExifOrientation(chunk.chunk.bytes, chunk.chunk.size));
    }
  }

  WebPIterator frame;
  std::memset(&frame, 0, sizeof(frame));
  WebpIteratorGuard frame_guard{&frame};
  if (!WebPDemuxGetFrame(demux, 1, &frame)) {
    DecodeFailed("WebP", "no frame");
  }
  if (frame.width <= 0 || frame.height <= 0 || frame.x_offset < 0 ||
      frame.y_offset < 0 ||
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
    if (y < static_cast<uint32_t>(frame.y_offset) ||
        y >= static_cast<uint32_t>(frame.y_offset + frame.height)) {
      std::memset(row, 0, static_cast<size_t>(canvas_width) * 3);
    } else {
      std::memset(row, 0, frame_left);
      std::memset(
          row + frame_left + frame_bytes, 0,
          static_cast<size_t>(canvas_width) * 3 - frame_left - frame_bytes);
    }
  }
  WebPDecoderConfig config;
  if (!WebPInitDecoderConfig(&config)) {
    Fail(ErrorCode::kInternal, "libwebp version mismatch");
  }
  config.output.colorspace = MODE_RGB;
  config.output.is_external_memory = 1;
  config.output.u.RGBA.rgba =
      canvas + static_cast<size_t>(frame.y_offset) * stride + frame_left;
  config.output.u.RGBA.stride = static_cast<int>(stride);
  config.output.u.RGBA.size = stride * (frame.height - 1) + frame_bytes;
  const VP8StatusCode status =
      WebPDecode(frame.fragment.bytes, frame.fragment.size, &config);
  WebPFreeDecBuffer(&config.output);
  if (status != VP8_STATUS_OK) {
    DecodeFailed("WebP", "libwebp status " + std::to_string(status));
  }
  out->Commit(0, canvas_height);
}

// ---------------------------------------------------------------------------
// GIF (giflib for the LZW stream; the canvas rules are Pillow's frame-0
// rules).
// ---------------------------------------------------------------------------

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
  if (source->position == source->size && length == 1 &&
      !source->supplied_terminator) {
    source->supplied_terminator = true;
    out[0] = 0;
    return 1;
  }
  const size_t n = std::min(static_cast<size_t>(std::max(length, 0)),
                            source->size - source->position);
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

void DecodeGif(const uint8_t* data, size_t size,
               const ImageDecodeOptions& options, FrameSink* out) {
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
        if (code == GRAPHICS_EXT_FUNC_CODE && block && block[0] > 0 &&
            (block[1] & 1)) {
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
  const uint64_t canvas_width =
      std::max<int64_t>(gif->SWidth, desc.Left + frame_width);
  const uint64_t canvas_height =
      std::max<int64_t>(gif->SHeight, desc.Top + frame_height);
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
    if (DGifGetLine(gif, line.data(), static_cast<int>(frame_width)) !=
        GIF_OK) {
      GifFailed(gif->Error);
    }
    uint8_t* row =
        canvas + (desc.Top + y) * stride + static_cast<size_t>(desc.Left) * 3;
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

// ---------------------------------------------------------------------------
// BMP (own reader, following BmpImagePlugin: BITMAPCOREHEADER and the
// 40..124-byte info headers; 1/4/8-bit palette, 16/24/32-bit BI_RGB, and the
// BI_BITFIELDS layouts Pillow accepts).
// ---------------------------------------------------------------------------

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

void DecodeBmp(const uint8_t* data, size_t size,
               const ImageDecodeOptions& options, FrameSink* sink) {
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
  } else if (header_size == 40 || header_size == 52 || header_size == 56 ||
             header_size == 64 || header_size == 108 || header_size == 124) {
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
        for (int i = 0; i < 3; ++i)
          masks[i] = ReadLe32(data + position + 4 * i);
        position += 12;
      }
    }
  } else {
    DecodeFailed("BMP",
                 "unsupported header size " + std::to_string(header_size));
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
    const auto is = [&](uint32_t r, uint32_t g, uint32_t b) {
      return masks[0] == r && masks[1] == g && masks[2] == b;
    };
    const uint32_t a = masks[3];
    if (bits == 32 && is(0xFF0000, 0xFF00, 0xFF) &&
        (a == 0 || a == 0xFF000000)) {  // BGRX, BGRA
      byte_order[0] = 2, byte_order[1] = 1, byte_order[2] = 0;
    } else if (bits == 32 && is(0xFF000000, 0xFF0000, 0xFF00) &&
               (a == 0 || a == 0xFF)) {  // XBGR, ABGR
      byte_order[0] = 3, byte_order[1] = 2, byte_order[2] = 1;
    } else if (bits == 32 && is(0xFF000000, 0xFF00, 0xFF) &&
               (a == 0 || a == 0xFF0000)) {  // BGXR, BGAR
      byte_order[0] = 3, byte_order[1] = 1, byte_order[2] = 0;
    } else if (bits == 32 && is(0xFF, 0xFF00, 0xFF0000) &&
               a == 0xFF000000) {  // RGBA
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
    const size_t available =
        (size - std::min(size, position)) / palette_entry_size;
    const size_t entries = std::min<size_t>(colors, available);
    bool grey = true;
    for (size_t i = 0; i < colors; ++i) {
      const uint8_t expected =
          colors == 2 ? (i == 0 ? 0 : 255) : static_cast<uint8_t>(i);
      if (i >= entries) {
        grey = false;
        continue;
      }
      const uint8_t* entry = data + position + i * palette_entry_size;
      palette[i][0] = entry[2];
      palette[i][1] = entry[1];
      palette[i][2] = entry[0];
      if (entry[0] != expected || entry[1] != expected ||
          entry[2] != expected) {
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
  if (start > size || (height - 1) > (size - start) / stride ||
      stride * (height - 1) + last_row > size - start) {
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
          out[0] = out[1] = out[2] =
              ((in[x >> 3] >> (7 - (x & 7))) & 1) ? 255 : 0;
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

}  // namespace

ImageFormat DetectImageFormat(const uint8_t* data, size_t size) {
  if (data == nullptr) return ImageFormat::kUnknown;
  if (size >= 3 && data[0] == 0xFF && data[1] == 0xD8 && data[2] == 0xFF) {
    return ImageFormat::kJpeg;
  }
  if (size >= 8 && std::memcmp(data, kPngSignature, 8) == 0) {
    return ImageFormat::kPng;
  }
  if (size >= 12 && std::memcmp(data, "RIFF", 4) == 0 &&
      std::memcmp(data + 8, "WEBP", 4) == 0) {
    return ImageFormat::kWebp;
  }
  if (size >= 6 && (std::memcmp(data, "GIF87a", 6) == 0 ||
                    std::memcmp(data, "GIF89a", 6) == 0)) {
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

void DecodeImageRows(const uint8_t* data, size_t size,
                     const ImageDecodeOptions& options, RgbRowSink* sink) {
  if (data == nullptr || size == 0) {
    Fail(ErrorCode::kImageDecodeFailed, "cannot decode image: no data");
  }
  const ImageFormat format = DetectImageFormat(data, size);
  FrameSink out(sink);
  try {
    switch (format) {
      case ImageFormat::kJpeg:
        DecodeJpeg(data, size, options, &out);
        break;
      case ImageFormat::kPng:
        DecodePng(data, size, options, &out);
        break;
      case ImageFormat::kWebp:
        DecodeWebp(data, size, options, &out);
        break;
      case ImageFormat::kGif:
        DecodeGif(data, size, options, &out);
        break;
      case ImageFormat::kBmp:
        DecodeBmp(data, size, options, &out);
        break;
      case ImageFormat::kUnknown:
        Fail(ErrorCode::kUnsupportedImageFormat,
             "unsupported image format (not JPEG, PNG, WebP, GIF or BMP)");
    }
    out.Finish();
  } catch (const std::bad_alloc&) {
    Fail(ErrorCode::kImageTooLarge, std::string("out of memory decoding ") +
                                        ImageFormatName(format) + " image");
  }
}

RgbImage DecodeImage(const uint8_t* data, size_t size,
                     const ImageDecodeOptions& options) {
  ImageSink sink;
  DecodeImageRows(data, size, options, &sink);
  return sink.Take();
}

}  // namespace clip

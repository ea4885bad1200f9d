// PNG (libpng for inflate, unfiltering and de-interlacing; the conversion to
// RGB is Pillow's, done here on the raw samples). Every image takes a
// whole-buffer path first: the image data is inflated in one call (inflate.h:
// about twice zlib's speed, and exactly zlib's verdict on every stream, so
// that both paths accept what libpng and Pillow accept) and the rows are
// unfiltered here, 2-3x faster than libpng's row by row decode; any file that
// path does not take unchanged goes to libpng, which decides.

#include <png.h>
#include <zlib.h>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLIP_PNG_CONVERT_SSSE3 1
#endif

#include <algorithm>
#include <array>
#include <atomic>
#include <csetjmp>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "cpu_features.h"
#include "errors.h"
#include "huge_pages.h"
#include "image.h"
#include "image_decode.h"
#include "inflate.h"
#include "png_unfilter.h"

namespace clip {
namespace decode {
namespace {

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
  if (source->reading_rows && (source->interlaced ? png_get_current_pass_number(png) >= 7
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
void ScanPngChunks(const uint8_t* data, size_t size, bool want_exif, const uint8_t** exif, size_t* exif_size) {
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
        DecodeFailed("PNG", "bad CRC in chunk " + std::string(reinterpret_cast<const char*>(type), 4));
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

// The RGB value of each sample of a grey image of up to 8 bits or of a
// palette image, as Pillow's convert("RGB") gives it: the grey ramp of the bit
// depth (modes "1", L;2 and L;4 stretch to 0..255), or the PLTE's entries
// (black past them). One byte more, so that an entry can be read as 4 bytes.
struct RgbLookup {
  uint8_t rgb[256 * 3 + 1] = {};
};

void SetGreyRamp(RgbLookup* lookup, int bit_depth) {
  const int gain = bit_depth == 1 ? 255 : bit_depth == 2 ? 85 : bit_depth == 4 ? 17 : 1;
  for (int v = 0; v < 256; ++v) std::memset(lookup->rgb + 3 * v, static_cast<uint8_t>(v * gain), 3);
}

void SetPalette(RgbLookup* lookup, const uint8_t* entries, size_t count) {
  std::memset(lookup->rgb, 0, sizeof(lookup->rgb));
  std::memcpy(lookup->rgb, entries, std::min<size_t>(count, 256) * 3);
}

// One byte per sample from a row packed at kDepth (1, 2 or 4) bits, first
// sample in the high bits, as png_set_packing unpacks it (values not scaled):
// each packed byte's samples from a table, as one store.
template <int kDepth>
void UnpackSamples(const uint8_t* in, size_t count, uint8_t* out) {
  constexpr int kPerByte = 8 / kDepth;
  using Samples = std::array<uint8_t, kPerByte>;
  static const std::array<Samples, 256> kTable = [] {
    std::array<Samples, 256> table{};
    for (int b = 0; b < 256; ++b) {
      for (int i = 0; i < kPerByte; ++i) {
        table[b][i] = static_cast<uint8_t>((b >> (8 - kDepth * (i + 1))) & ((1 << kDepth) - 1));
      }
    }
    return table;
  }();
  const size_t whole = count / kPerByte;
  for (size_t i = 0; i < whole; ++i) std::memcpy(out + i * kPerByte, kTable[in[i]].data(), kPerByte);
  const size_t rest = count - whole * kPerByte;
  if (rest > 0) std::memcpy(out + whole * kPerByte, kTable[in[whole]].data(), rest);
}

void UnpackSamples(const uint8_t* in, int bit_depth, size_t count, uint8_t* out) {
  if (bit_depth == 1) return UnpackSamples<1>(in, count, out);
  if (bit_depth == 2) return UnpackSamples<2>(in, count, out);
  UnpackSamples<4>(in, count, out);
}

#if defined(CLIP_PNG_CONVERT_SSSE3)
// The leading pixels of an 8-bit grey (1 channel), grey + alpha (2) or RGBA
// (4) row as RGB, 16 bytes of input a step, each rearranged by pshufb;
// returns how many pixels it did (the caller does the rest). Every store
// ends inside the row's 3 * width bytes.
__attribute__((target("ssse3"))) size_t RowToRgbSsse3(const uint8_t* in, int channels, size_t width, uint8_t* out) {
  size_t x = 0;
  if (channels == 1) {
    const __m128i a = _mm_setr_epi8(0, 0, 0, 1, 1, 1, 2, 2, 2, 3, 3, 3, 4, 4, 4, 5);
    const __m128i b = _mm_setr_epi8(5, 5, 6, 6, 6, 7, 7, 7, 8, 8, 8, 9, 9, 9, 10, 10);
    const __m128i c = _mm_setr_epi8(10, 11, 11, 11, 12, 12, 12, 13, 13, 13, 14, 14, 14, 15, 15, 15);
    for (; x + 16 <= width; x += 16) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + x));
      uint8_t* o = out + 3 * x;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm_shuffle_epi8(v, a));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 16), _mm_shuffle_epi8(v, b));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o + 32), _mm_shuffle_epi8(v, c));
    }
  } else if (channels == 2) {
    const __m128i a = _mm_setr_epi8(0, 0, 0, 2, 2, 2, 4, 4, 4, 6, 6, 6, 8, 8, 8, 10);
    const __m128i b = _mm_setr_epi8(10, 10, 12, 12, 12, 14, 14, 14, -1, -1, -1, -1, -1, -1, -1, -1);
    for (; x + 8 <= width; x += 8) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * x));
      uint8_t* o = out + 3 * x;
      _mm_storeu_si128(reinterpret_cast<__m128i*>(o), _mm_shuffle_epi8(v, a));
      _mm_storel_epi64(reinterpret_cast<__m128i*>(o + 16), _mm_shuffle_epi8(v, b));
    }
  } else if (channels == 4) {
    // 12 bytes of 4 pixels, stored as 16 while the row has 16 bytes left.
    const __m128i a = _mm_setr_epi8(0, 1, 2, 4, 5, 6, 8, 9, 10, 12, 13, 14, -1, -1, -1, -1);
    for (; x + 6 <= width; x += 4) {
      const __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 4 * x));
      _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 3 * x), _mm_shuffle_epi8(v, a));
    }
  }
  return x;
}
#endif

// The leading pixels of an 8-bit grey, grey + alpha or RGBA row as RGB on
// CPUs with AVX2 (and so SSSE3), none elsewhere; returns how many.
size_t RowToRgbVector(const uint8_t* in, int channels, size_t width, uint8_t* out) {
#if defined(CLIP_PNG_CONVERT_SSSE3)
  if (GetCpuFeatures().avx2) return RowToRgbSsse3(in, channels, width, out);
#endif
  return 0;
}

// Converts one unpacked row (png_set_packing: one byte per sample below 8
// bits, big-endian pairs at 16) the way Pillow's PNG rawmodes and
// convert("RGB") do. `lookup`: for grey rows of up to 8 bits and palette rows.
void ConvertPngRow(const uint8_t* in, int color_type, int bit_depth, const RgbLookup* lookup, size_t width,
                   uint8_t* out) {
  switch (color_type) {
    case PNG_COLOR_TYPE_GRAY:
    case PNG_COLOR_TYPE_PALETTE:
      if (bit_depth == 16) {
        // Mode I;16; I;16 -> RGB clamps at 255 instead of scaling.
        for (size_t x = 0; x < width; ++x) {
          const uint8_t v = in[2 * x] != 0 ? 255 : in[2 * x + 1];
          out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = v;
        }
      } else {
        // 8-bit grey: its ramp is the identity. Otherwise each pixel's entry
        // copied as 4 bytes (the 4th overwritten by the next pixel's), the
        // last one as 3.
        size_t x = color_type == PNG_COLOR_TYPE_GRAY && bit_depth == 8 ? RowToRgbVector(in, 1, width, out) : 0;
        for (; x + 1 < width; ++x) std::memcpy(out + 3 * x, lookup->rgb + 3 * size_t{in[x]}, 4);
        if (x < width) std::memcpy(out + 3 * x, lookup->rgb + 3 * size_t{in[x]}, 3);
      }
      break;
    case PNG_COLOR_TYPE_GRAY_ALPHA: {
      // LA, or RGBA through LA;16B (high byte) at 16 bits.
      const int step = bit_depth == 16 ? 4 : 2;
      for (size_t x = bit_depth == 8 ? RowToRgbVector(in, 2, width, out) : 0; x < width; ++x) {
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
      // The common 8-bit layouts with constant steps, which the compiler
      // can turn into wide copies and shuffles.
      if (bytes == 1 && channels == 3) {
        std::memcpy(out, in, width * 3);
        break;
      }
      if (bytes == 1) {
        for (size_t x = RowToRgbVector(in, 4, width, out); x < width; ++x) {
          out[3 * x + 0] = in[4 * x + 0];
          out[3 * x + 1] = in[4 * x + 1];
          out[3 * x + 2] = in[4 * x + 2];
        }
        break;
      }
      const size_t step = static_cast<size_t>(channels) * bytes;
      for (size_t x = 0; x < width; ++x) {
        const uint8_t* p = in + step * x;
        out[3 * x + 0] = p[0];
        out[3 * x + 1] = p[bytes];
        out[3 * x + 2] = p[2 * bytes];
      }
      break;
    }
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
  RgbLookup lookup;
  int passes = 1;
  png_uint_32 next_row = 0;  // non-interlaced: rows emitted so far

  ~PngJob() {
    if (png) png_destroy_read_struct(&png, info ? &info : nullptr, nullptr);
  }
};

void EmitPngRow(PngJob* job, png_uint_32 y, const uint8_t* raw_row) {
  size_t stride = 0;
  uint8_t* row = job->out->Reserve(y, 1, &stride);
  ConvertPngRow(raw_row, job->color_type, job->bit_depth, &job->lookup, job->width, row);
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
  png_get_IHDR(png, info, &width, &height, &job->bit_depth, &job->color_type, &interlace, nullptr, nullptr);
  job->width = width;
  if (job->color_type == PNG_COLOR_TYPE_PALETTE) {
    png_colorp entries = nullptr;
    int count = 0;
    if (png_get_PLTE(png, info, &entries, &count) != PNG_INFO_PLTE) {
      DecodeFailed("PNG", "palette image without PLTE chunk");
    }
    static_assert(sizeof(png_color) == 3, "png_color is three bytes");
    SetPalette(&job->lookup, reinterpret_cast<const uint8_t*>(entries), static_cast<size_t>(count));
  } else if (job->color_type == PNG_COLOR_TYPE_GRAY) {
    SetGreyRamp(&job->lookup, job->bit_depth);
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

std::atomic<bool> g_whole_buffer_enabled{true};
std::atomic<uint64_t> g_whole_buffer_decodes{0};

// The raw image data (a filter byte and the filtered samples per row) may be
// held whole up to this size; larger images stream through libpng row by row.
constexpr size_t kMaxWholeBufferBytes = size_t{64} << 20;
// libpng refuses ancillary chunks above its chunk allocation limit (8 MB in
// common builds) even when it skips them; larger ones go to libpng to decide.
constexpr uint32_t kMaxSkippedChunkBytes = 1u << 20;

bool IsChunkLetter(uint8_t c) { return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z'); }

// One pass of a PNG's image data: the pixels (x0 + i * dx, y0 + j * dy) of
// the image, as `height` rows of `width` pixels, `row_bytes` bytes each after
// its filter byte. A non-interlaced image is one pass of every pixel.
struct PngPass {
  size_t x0, y0, dx, dy;
  size_t width, height, row_bytes;
};

// The passes that hold pixels, in the order of the data (PNG specification,
// section 8.2: Adam7's seven, less those an image too small leaves empty,
// which have no rows at all).
std::vector<PngPass> PngPasses(uint32_t width, uint32_t height, size_t pixel_bits, bool adam7) {
  static constexpr size_t kAdam7[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                          {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};
  static constexpr size_t kWhole[4] = {0, 0, 1, 1};
  std::vector<PngPass> passes;
  for (int i = 0; i < (adam7 ? 7 : 1); ++i) {
    const size_t* p = adam7 ? kAdam7[i] : kWhole;
    PngPass pass{p[0], p[1], p[2], p[3], 0, 0, 0};
    if (width <= pass.x0 || height <= pass.y0) continue;
    pass.width = (width - pass.x0 + pass.dx - 1) / pass.dx;
    pass.height = (height - pass.y0 + pass.dy - 1) / pass.dy;
    pass.row_bytes = (pass.width * pixel_bits + 7) / 8;
    passes.push_back(pass);
  }
  return passes;
}

// Whether libpng takes this colour type at this bit depth; also the samples
// per pixel.
bool PngLayout(int color_type, int bit_depth, int* channels) {
  switch (color_type) {
    case PNG_COLOR_TYPE_GRAY:
      *channels = 1;
      return bit_depth == 1 || bit_depth == 2 || bit_depth == 4 || bit_depth == 8 || bit_depth == 16;
    case PNG_COLOR_TYPE_PALETTE:
      *channels = 1;
      return bit_depth == 1 || bit_depth == 2 || bit_depth == 4 || bit_depth == 8;
    case PNG_COLOR_TYPE_GRAY_ALPHA:
      *channels = 2;
      return bit_depth == 8 || bit_depth == 16;
    case PNG_COLOR_TYPE_RGB:
      *channels = 3;
      return bit_depth == 8 || bit_depth == 16;
    case PNG_COLOR_TYPE_RGB_ALPHA:
      *channels = 4;
      return bit_depth == 8 || bit_depth == 16;
    default:
      return false;
  }
}

// The whole-buffer path for images (every colour type and bit depth, Adam7
// or not) whose chunks before the image data are IHDR, ancillary ones and, in
// a palette image, one PLTE that libpng takes as it is. Returns false, having
// touched nothing, for anything else (an odd chunk, a zlib stream that does
// not end with exactly the image's bytes and a valid Adler-32, truncated
// chunks, a bad filter type); libpng then decodes the file and reports
// whatever is wrong with it. Like the libpng path it ignores the IDAT CRCs and
// everything after the zlib stream, as Pillow does.
bool DecodePngWholeBuffer(const uint8_t* data, size_t size, FrameSink* out) {
  if (!g_whole_buffer_enabled.load(std::memory_order_relaxed)) return false;
  if (size < 33 || std::memcmp(data, kPngSignature, 8) != 0 || ReadBe32(data + 8) != 13) return false;
  const uint32_t width = ReadBe32(data + 16);
  const uint32_t height = ReadBe32(data + 20);
  const int bit_depth = data[24];
  const int color_type = data[25];
  if (width == 0 || height == 0 || width > 0x7FFFFFFFu || height > 0x7FFFFFFFu) return false;
  int channels = 0;
  if (!PngLayout(color_type, bit_depth, &channels) || data[26] != 0 || data[27] != 0 || data[28] > 1) return false;
  const size_t pixel_bits = static_cast<size_t>(channels) * bit_depth;
  // Filters work on whole bytes: a pixel's bytes, or one byte below 8 bits.
  const size_t bpp = std::max<size_t>(1, pixel_bits / 8);
  const size_t row_bytes = (size_t{width} * pixel_bits + 7) / 8;
  if (row_bytes + 1 > kMaxWholeBufferBytes / height) return false;
  // The passes' rows one after the other: one pass of the whole image, or
  // Adam7's, whose filter bytes and rows rounded to whole bytes add at most a
  // few bytes per image row.
  const std::vector<PngPass> passes = PngPasses(width, height, pixel_bits, data[28] == 1);
  size_t raw_size = 0;
  for (const PngPass& pass : passes) raw_size += pass.height * (pass.row_bytes + 1);

  // Chunks up to the image data: IHDR (checked above), then ancillary chunks
  // (first letter lower case) with valid names, and a palette image's PLTE;
  // the CRCs of all of them were checked by ScanPngChunks. Then the run of
  // consecutive IDAT chunks.
  const uint8_t* plte = nullptr;
  size_t plte_entries = 0;
  size_t position = 33;
  while (true) {
    if (position + 8 > size) return false;
    const uint32_t length = ReadBe32(data + position);
    const uint8_t* type = data + position + 4;
    if (length > 0x7FFFFFFFu || length > size - position - 8) return false;
    if (std::memcmp(type, "IDAT", 4) == 0) break;
    if (length + size_t{12} > size - position) return false;
    if (std::memcmp(type, "PLTE", 4) == 0 && color_type == PNG_COLOR_TYPE_PALETTE) {
      // libpng refuses a second PLTE, an empty one and one whose length is
      // not 1-256 entries (it drops the entries past 2^depth of a longer
      // one, which no index reaches).
      if (plte != nullptr || length == 0 || length % 3 != 0 || length > 256 * 3) return false;
      plte = data + position + 8;
      plte_entries = length / 3;
      position += 12 + size_t{length};
      continue;
    }
    if (!(IsChunkLetter(type[0]) && IsChunkLetter(type[1]) && IsChunkLetter(type[2]) && IsChunkLetter(type[3]))) {
      return false;
    }
    if ((type[0] & 0x20) == 0 || length > kMaxSkippedChunkBytes) return false;
    position += 12 + size_t{length};
  }
  if (color_type == PNG_COLOR_TYPE_PALETTE && plte == nullptr) return false;  // libpng: "Missing PLTE before IDAT"
  // The run of IDAT chunks: its total size, then one contiguous stream
  // (the chunk's own bytes when there is one chunk).
  const size_t first_idat = position;
  size_t idat_size = 0;
  int idat_chunks = 0;
  for (; position + 8 <= size && std::memcmp(data + position + 4, "IDAT", 4) == 0; ++idat_chunks) {
    const uint32_t length = ReadBe32(data + position);
    if (length > 0x7FFFFFFFu || length > size - position - 8) return false;  // truncated
    idat_size += length;
    position += 8 + size_t{length} + 4;
  }
  // The stream and the rows in buffers this thread keeps (huge_pages.h).
  ThreadScratch stream(ScratchSlot::kPngStream);
  ThreadScratch rows_scratch(ScratchSlot::kPngRaw);
  const uint8_t* idat = data + first_idat + 8;
  if (idat_chunks > 1) {
    uint8_t* joined = stream.Get(idat_size);
    if (joined == nullptr) return false;
    size_t offset = 0;
    for (size_t p = first_idat; p < position;) {
      const uint32_t length = ReadBe32(data + p);
      std::memcpy(joined + offset, data + p + 8, length);
      offset += length;
      p += 8 + size_t{length} + 4;
    }
    idat = joined;
  }
  uint8_t* raw = rows_scratch.Get(raw_size + kUnfilterReadSlack);
  if (raw == nullptr) return false;
  // The whole stream in, room for exactly the image's bytes out; the stream
  // must end there with a valid Adler-32. Whether libpng (and Pillow) see a
  // wrong Adler-32 or data past the image's bytes depends on how much of the
  // stream they hold when the last row is done, so such a stream goes to
  // libpng to decide.
  if (!InflateZlib(idat, idat_size, raw, raw_size)) return false;
  size_t offset = 0;
  for (const PngPass& pass : passes) {
    for (size_t y = 0; y < pass.height; ++y, offset += pass.row_bytes + 1) {
      if (raw[offset] > 4) return false;  // libpng: "bad adaptive filter value"
    }
  }

  // From here on nothing fails: unfilter and emit blocks of rows.
  g_whole_buffer_decodes.fetch_add(1, std::memory_order_relaxed);
  out->Begin(static_cast<int>(width), static_cast<int>(height));
  const std::vector<uint8_t> zeros(row_bytes + kUnfilterReadSlack, 0);
  RgbLookup lookup;
  if (plte) SetPalette(&lookup, plte, plte_entries);
  if (color_type == PNG_COLOR_TYPE_GRAY) SetGreyRamp(&lookup, bit_depth);
  // Rows below 8 bits are unpacked to a byte per sample first, as libpng's
  // png_set_packing does for the other path.
  std::vector<uint8_t> unpacked(bit_depth < 8 ? width : 0);
  auto convert = [&](const uint8_t* filtered_row, size_t pixels, uint8_t* rgb) {
    const uint8_t* samples = filtered_row + 1;
    if (bit_depth < 8) {
      UnpackSamples(samples, bit_depth, pixels, unpacked.data());
      samples = unpacked.data();
    }
    ConvertPngRow(samples, color_type, bit_depth, &lookup, pixels, rgb);
  };
  if (passes.size() > 1) {
    // Adam7: every pass before any row is whole. Each pass row is converted
    // on its own, then its pixels spread over the image's row.
    size_t stride = 0;
    uint8_t* image = out->Reserve(0, static_cast<int>(height), &stride);
    std::vector<uint8_t> pass_rgb(size_t{width} * 3);
    uint8_t* filtered = raw;
    for (const PngPass& pass : passes) {
      UnfilterRows(filtered, pass.row_bytes + 1, pass.height, zeros.data(), pass.row_bytes, bpp);
      for (size_t y = 0; y < pass.height; ++y, filtered += pass.row_bytes + 1) {
        convert(filtered, pass.width, pass_rgb.data());
        uint8_t* row = image + (pass.y0 + y * pass.dy) * stride + pass.x0 * 3;
        for (size_t x = 0; x < pass.width; ++x) std::memcpy(row + x * pass.dx * 3, &pass_rgb[x * 3], 3);
      }
    }
    out->Commit(0, static_cast<int>(height));
    return true;
  }
  const uint8_t* prior = zeros.data();
  constexpr uint32_t kBlockRows = 16;
  for (uint32_t y0 = 0; y0 < height; y0 += kBlockRows) {
    const uint32_t count = std::min(kBlockRows, height - y0);
    uint8_t* filtered = raw + (row_bytes + 1) * y0;
    UnfilterRows(filtered, row_bytes + 1, count, prior, row_bytes, bpp);
    size_t stride = 0;
    uint8_t* rows = out->Reserve(static_cast<int>(y0), static_cast<int>(count), &stride);
    for (uint32_t i = 0; i < count; ++i) convert(filtered + (row_bytes + 1) * i, width, rows + stride * i);
    prior = filtered + (row_bytes + 1) * (count - 1) + 1;
    out->Commit(static_cast<int>(y0), static_cast<int>(count));
  }
  return true;
}
}  // namespace

void SetPngWholeBufferEnabled(bool enabled) { g_whole_buffer_enabled.store(enabled); }

uint64_t PngWholeBufferDecodes() { return g_whole_buffer_decodes.load(); }

void DecodePng(const uint8_t* data, size_t size, const ImageDecodeOptions& options, FrameSink* out) {
  // IHDR is the first chunk; read its size before libpng allocates anything.
  if (size < 33 || std::memcmp(data + 12, "IHDR", 4) != 0) {
    DecodeFailed("PNG", "missing or truncated IHDR chunk");
  }
  CheckDimensions(ReadBe32(data + 16), ReadBe32(data + 20), options, "PNG");

  const uint8_t* exif = nullptr;
  size_t exif_size = 0;
  ScanPngChunks(data, size, options.apply_exif_orientation, &exif, &exif_size);
  if (exif) out->SetOrientation(ParseExifOrientation(exif, exif_size));
  if (DecodePngWholeBuffer(data, size, out)) return;

  PngJob job;
  job.out = out;
  job.source = PngSource{data, size, 0};
  job.error.message[0] = '\0';
  job.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &job.error, PngError, PngWarning);
  if (!job.png) Fail(ErrorCode::kInternal, "png_create_read_struct failed");
  job.info = png_create_info_struct(job.png);
  if (!job.info) Fail(ErrorCode::kInternal, "png_create_info_struct failed");
  if (!ReadPng(&job)) DecodeFailed("PNG", job.error.message);
}

}  // namespace decode
}  // namespace clip

// Tests for image decoding and CLIP preprocessing (native/core/image.h).
//
// Usage: image_test [<clip-reference-dir>]
//
// With the reference directory (../shared/clip-reference), every image in
// images/manifest.json must decode to its decoded_rgb_sha256 and preprocess
// to its *.pixel_values.f32 within 1e-6 (the exif_transposed variant with
// apply_exif_orientation on). Without it, the self-contained tests still run:
// they build their inputs here (hand-written PNG/GIF/BMP/WebP containers,
// libjpeg and libwebp encoders) and check decoding rules, error codes, size
// limits, EXIF orientation, the resampler against a plain full-image port of
// Pillow's, and concurrent use. Prints one line per failure and ends with
// "N passed, M failed"; exits non-zero on any failure.

#include <webp/decode.h>
#include <webp/encode.h>
#include <zlib.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <functional>
#include <iterator>
#include <new>
#include <nlohmann/json.hpp>
#include <random>
#include <string>
#include <thread>
#include <vector>

// jpeglib.h needs FILE and size_t declared first.
#include <jpeglib.h>

#include "cpu_features.h"
#include "errors.h"
#include "huge_pages.h"
#include "image.h"
#include "image_decode.h"
#include "jpeg_entropy.h"
#include "png_unfilter.h"
#include "resample.h"
#include "test_check.h"

// ---------------------------------------------------------------------------
// Allocation tracking: the size-limit tests assert that no large buffer is
// requested before the limit is enforced.
// ---------------------------------------------------------------------------
namespace {
std::atomic<size_t> g_largest_allocation{0};
}  // namespace

// Out of line, so that GCC does not mistake the malloc/free pairing below
// for a new/free mismatch at inlined call sites.
[[gnu::noinline]] void* operator new(size_t size) {
  size_t seen = g_largest_allocation.load(std::memory_order_relaxed);
  while (size > seen && !g_largest_allocation.compare_exchange_weak(seen, size, std::memory_order_relaxed)) {
  }
  if (void* p = std::malloc(size == 0 ? 1 : size)) return p;
  throw std::bad_alloc();
}
[[gnu::noinline]] void operator delete(void* p) noexcept { std::free(p); }
[[gnu::noinline]] void operator delete(void* p, size_t) noexcept { std::free(p); }

namespace {

using clip::ClipError;
using clip::ErrorCode;
using clip::ImageDecodeOptions;
using clip::ImageFormat;
using clip::PreprocessOptions;
using clip::RgbImage;
using Bytes = std::vector<uint8_t>;

using clip::test::Check;

// Runs `body`, expecting a ClipError with `code`.
void ExpectError(ErrorCode code, const std::string& what, const std::function<void()>& body) {
  try {
    body();
    Check(false, what + ": expected " + clip::ErrorCodeName(code) + " but nothing was thrown");
  } catch (const ClipError& error) {
    Check(error.code() == code, what + ": expected " + clip::ErrorCodeName(code) + " but got " +
                                    clip::ErrorCodeName(error.code()) + " (" + error.what() + ")");
  } catch (const std::exception& error) {
    Check(false, what + ": expected ClipError but got " + error.what());
  }
}

RgbImage Decode(const Bytes& data, ImageDecodeOptions options = {}) {
  return clip::DecodeImage(data.data(), data.size(), options);
}

// Decodes, reporting any exception as a failure; returns an empty image then.
RgbImage DecodeOrFail(const Bytes& data, const std::string& what, ImageDecodeOptions options = {}) {
  try {
    return Decode(data, options);
  } catch (const std::exception& error) {
    Check(false, what + ": decode threw " + error.what());
    return {};
  }
}

bool ReadFile(const std::string& path, Bytes* out) {
  std::ifstream file(path, std::ios::binary);
  if (!file) return false;
  out->assign(std::istreambuf_iterator<char>(file), std::istreambuf_iterator<char>());
  return true;
}

void PutBe32(Bytes* out, uint32_t v) {
  for (int shift = 24; shift >= 0; shift -= 8) out->push_back(v >> shift);
}
void PutLe16(Bytes* out, uint32_t v) {
  out->push_back(v & 0xFF);
  out->push_back((v >> 8) & 0xFF);
}
void PutLe32(Bytes* out, uint32_t v) {
  for (int shift = 0; shift < 32; shift += 8) out->push_back(v >> shift);
}
void Append(Bytes* out, const Bytes& more) { out->insert(out->end(), more.begin(), more.end()); }
void Append(Bytes* out, const char* text) { out->insert(out->end(), text, text + std::strlen(text)); }

// ---------------------------------------------------------------------------
// SHA-256 (FIPS 180-4), for manifest.json's decoded_rgb_sha256.
// ---------------------------------------------------------------------------
std::string Sha256Hex(const uint8_t* data, size_t size) {
  static const uint32_t k[64] = {
      0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
      0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
      0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
      0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
      0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
      0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
      0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
      0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2};
  uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
  auto rotr = [](uint32_t x, int n) { return (x >> n) | (x << (32 - n)); };
  Bytes tail(data + size - size % 64, data + size);
  tail.push_back(0x80);
  while (tail.size() % 64 != 56) tail.push_back(0);
  const uint64_t bits = static_cast<uint64_t>(size) * 8;
  for (int shift = 56; shift >= 0; shift -= 8) tail.push_back(bits >> shift);
  const size_t whole = size - size % 64;
  for (size_t offset = 0; offset < whole + tail.size(); offset += 64) {
    const uint8_t* block = offset < whole ? data + offset : tail.data() + (offset - whole);
    uint32_t w[64];
    for (int i = 0; i < 16; ++i) {
      w[i] = (uint32_t{block[4 * i]} << 24) | (block[4 * i + 1] << 16) | (block[4 * i + 2] << 8) | block[4 * i + 3];
    }
    for (int i = 16; i < 64; ++i) {
      const uint32_t s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >> 3);
      const uint32_t s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >> 10);
      w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], hh = h[7];
    for (int i = 0; i < 64; ++i) {
      const uint32_t t1 = hh + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + k[i] + w[i];
      const uint32_t t2 = (rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
      hh = g, g = f, f = e, e = d + t1, d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d;
    h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
  }
  char hex[65];
  for (int i = 0; i < 8; ++i) std::snprintf(hex + 8 * i, 9, "%08x", h[i]);
  return std::string(hex, 64);
}

// ---------------------------------------------------------------------------
// Input builders.
// ---------------------------------------------------------------------------

// Deterministic non-trivial test pattern, `channels` samples per pixel.
std::vector<uint8_t> Pattern(int width, int height, int channels, uint32_t seed) {
  std::mt19937 random(seed);
  std::vector<uint8_t> out(static_cast<size_t>(width) * height * channels);
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < channels; ++c) {
        const int smooth = (x * (7 + 3 * c) + y * (5 + c) + c * 60) % 256;
        out[(static_cast<size_t>(y) * width + x) * channels + c] = static_cast<uint8_t>((smooth + random() % 48) % 256);
      }
    }
  }
  return out;
}

Bytes PngChunk(const char* type, const Bytes& payload) {
  Bytes out;
  PutBe32(&out, static_cast<uint32_t>(payload.size()));
  Bytes body(type, type + 4);
  Append(&body, payload);
  Append(&out, body);
  PutBe32(&out, static_cast<uint32_t>(crc32(0, body.data(), body.size())));
  return out;
}

// IHDR (compression and filter method 0).
Bytes IhdrChunk(uint32_t width, uint32_t height, int bit_depth, int color_type, bool interlace = false) {
  Bytes ihdr;
  PutBe32(&ihdr, width);
  PutBe32(&ihdr, height);
  const Bytes rest = {static_cast<uint8_t>(bit_depth), static_cast<uint8_t>(color_type), 0, 0,
                      static_cast<uint8_t>(interlace ? 1 : 0)};
  Append(&ihdr, rest);
  return PngChunk("IHDR", ihdr);
}

struct PngSpec {
  int width = 0;
  int height = 0;
  int color_type = 2;
  int bit_depth = 8;
  std::vector<uint16_t> samples;  // width * height * channels, row-major.
  Bytes palette;                  // PLTE payload.
  Bytes transparency;             // tRNS payload.
  Bytes exif;                     // eXIf payload (written after IDAT).
  bool interlace = false;
};

int PngChannels(int color_type) {
  switch (color_type) {
    case 0:
    case 3:
      return 1;
    case 4:
      return 2;
    case 2:
      return 3;
    default:
      return 4;
  }
}

// Adam7's seven passes (PNG specification, section 8.2): first column, first
// row, column step, row step.
constexpr uint32_t kAdam7Passes[7][4] = {{0, 0, 8, 8}, {4, 0, 8, 8}, {0, 4, 4, 8}, {2, 0, 4, 4},
                                         {0, 2, 2, 4}, {1, 0, 2, 2}, {0, 1, 1, 2}};

// A minimal PNG writer (filter type 0, Adam7 when asked), so tests control
// every chunk.
Bytes EncodePng(const PngSpec& spec) {
  const int channels = PngChannels(spec.color_type);
  auto pass_rows = [&](int x0, int y0, int dx, int dy, Bytes* raw) {
    for (int y = y0; y < spec.height; y += dy) {
      if (x0 >= spec.width) return;
      raw->push_back(0);
      int bit_position = 0;
      uint8_t current = 0;
      for (int x = x0; x < spec.width; x += dx) {
        for (int c = 0; c < channels; ++c) {
          const uint16_t v = spec.samples[(static_cast<size_t>(y) * spec.width + x) * channels + c];
          if (spec.bit_depth == 16) {
            raw->push_back(v >> 8);
            raw->push_back(v & 0xFF);
          } else if (spec.bit_depth == 8) {
            raw->push_back(static_cast<uint8_t>(v));
          } else {
            current |= v << (8 - spec.bit_depth - bit_position);
            bit_position += spec.bit_depth;
            if (bit_position == 8) {
              raw->push_back(current);
              current = 0;
              bit_position = 0;
            }
          }
        }
      }
      if (bit_position) raw->push_back(current);
    }
  };
  Bytes raw;
  if (spec.interlace) {
    for (const auto& p : kAdam7Passes) pass_rows(p[0], p[1], p[2], p[3], &raw);
  } else {
    pass_rows(0, 0, 1, 1, &raw);
  }
  uLongf compressed_size = compressBound(raw.size());
  Bytes compressed(compressed_size);
  compress(compressed.data(), &compressed_size, raw.data(), raw.size());
  compressed.resize(compressed_size);

  Bytes out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  Append(&out, IhdrChunk(spec.width, spec.height, spec.bit_depth, spec.color_type, spec.interlace));
  if (!spec.palette.empty()) Append(&out, PngChunk("PLTE", spec.palette));
  if (!spec.transparency.empty()) {
    Append(&out, PngChunk("tRNS", spec.transparency));
  }
  Append(&out, PngChunk("IDAT", compressed));
  if (!spec.exif.empty()) Append(&out, PngChunk("eXIf", spec.exif));
  Append(&out, PngChunk("IEND", {}));
  return out;
}

Bytes EncodeRgbPng(int width, int height, const std::vector<uint8_t>& rgb) {
  PngSpec spec;
  spec.width = width;
  spec.height = height;
  spec.samples.assign(rgb.begin(), rgb.end());
  return EncodePng(spec);
}

struct JpegSpec {
  int width = 0;
  int height = 0;
  int components = 3;  // 1 gray, 3 RGB, 4 CMYK (written Adobe-inverted).
  std::vector<uint8_t> samples;
  int quality = 95;
  bool progressive = false;
  Bytes app1;  // Raw APP1 payload, e.g. "Exif\0\0" + TIFF.
  // The first component's sampling factors (chroma stays at 1 x 1): 2 x 2
  // is 4:2:0, 2 x 1 4:2:2, 1 x 2 4:4:0.
  int h_samp = 1;
  int v_samp = 1;
  int restart_interval = 0;  // In MCUs; 0: none.
};

Bytes EncodeJpeg(const JpegSpec& spec) {
  jpeg_compress_struct cinfo;
  jpeg_error_mgr error;
  cinfo.err = jpeg_std_error(&error);
  jpeg_create_compress(&cinfo);
  unsigned char* buffer = nullptr;
  unsigned long size = 0;
  jpeg_mem_dest(&cinfo, &buffer, &size);
  cinfo.image_width = spec.width;
  cinfo.image_height = spec.height;
  cinfo.input_components = spec.components;
  cinfo.in_color_space = spec.components == 1 ? JCS_GRAYSCALE : spec.components == 3 ? JCS_RGB : JCS_CMYK;
  jpeg_set_defaults(&cinfo);
  jpeg_set_quality(&cinfo, spec.quality, TRUE);
  // No chroma subsampling unless asked, so that flat test blocks decode
  // almost exactly.
  for (int i = 0; i < cinfo.num_components; ++i) {
    cinfo.comp_info[i].h_samp_factor = i == 0 ? spec.h_samp : 1;
    cinfo.comp_info[i].v_samp_factor = i == 0 ? spec.v_samp : 1;
  }
  cinfo.restart_interval = spec.restart_interval;
  if (spec.progressive) jpeg_simple_progression(&cinfo);
  jpeg_start_compress(&cinfo, TRUE);
  if (!spec.app1.empty()) {
    jpeg_write_marker(&cinfo, JPEG_APP0 + 1, spec.app1.data(), static_cast<unsigned>(spec.app1.size()));
  }
  while (cinfo.next_scanline < cinfo.image_height) {
    JSAMPROW row = const_cast<JSAMPROW>(spec.samples.data() +
                                        static_cast<size_t>(cinfo.next_scanline) * spec.width * spec.components);
    jpeg_write_scanlines(&cinfo, &row, 1);
  }
  jpeg_finish_compress(&cinfo);
  jpeg_destroy_compress(&cinfo);
  Bytes out(buffer, buffer + size);
  std::free(buffer);
  return out;
}

// Lossless WebP from RGBA; `exact` keeps RGB under alpha 0.
Bytes EncodeWebpLossless(int width, int height, const std::vector<uint8_t>& rgba, bool exact) {
  WebPConfig config;
  WebPConfigInit(&config);
  config.lossless = 1;
  config.exact = exact ? 1 : 0;
  WebPPicture picture;
  WebPPictureInit(&picture);
  picture.use_argb = 1;
  picture.width = width;
  picture.height = height;
  WebPPictureImportRGBA(&picture, rgba.data(), width * 4);
  WebPMemoryWriter writer;
  WebPMemoryWriterInit(&writer);
  picture.writer = WebPMemoryWrite;
  picture.custom_ptr = &writer;
  WebPEncode(&config, &picture);
  Bytes out(writer.mem, writer.mem + writer.size);
  WebPMemoryWriterClear(&writer);
  WebPPictureFree(&picture);
  return out;
}

// GIF image data: literal LZW codes only, with a clear code before the code
// size would grow, which every decoder must accept.
Bytes GifLzw(const std::vector<uint8_t>& indices) {
  const int min_code_size = 8;
  const int clear = 1 << min_code_size;
  const int code_size = min_code_size + 1;
  std::vector<int> codes;
  for (size_t i = 0; i < indices.size(); ++i) {
    if (i % 250 == 0) codes.push_back(clear);
    codes.push_back(indices[i]);
  }
  codes.push_back(clear + 1);
  Bytes packed;
  uint32_t bits = 0;
  int count = 0;
  for (int code : codes) {
    bits |= code << count;
    count += code_size;
    while (count >= 8) {
      packed.push_back(bits & 0xFF);
      bits >>= 8;
      count -= 8;
    }
  }
  if (count) packed.push_back(bits & 0xFF);
  Bytes out = {static_cast<uint8_t>(min_code_size)};
  for (size_t i = 0; i < packed.size(); i += 255) {
    const size_t n = std::min<size_t>(255, packed.size() - i);
    out.push_back(static_cast<uint8_t>(n));
    out.insert(out.end(), packed.begin() + i, packed.begin() + i + n);
  }
  out.push_back(0);
  return out;
}

struct GifSpec {
  int screen_width = 0;
  int screen_height = 0;
  Bytes global_palette;  // 3 * 2^k bytes, or empty.
  int left = 0;
  int top = 0;
  int width = 0;
  int height = 0;
  Bytes local_palette;
  int transparency = -1;
  bool interlace = false;
  std::vector<uint8_t> indices;  // width * height, row-major.
};

int PaletteBits(const Bytes& palette) {
  int bits = 0;
  while ((3u << (bits + 1)) < palette.size()) ++bits;
  return bits;
}

Bytes EncodeGif(const GifSpec& spec) {
  Bytes out;
  Append(&out, "GIF89a");
  PutLe16(&out, spec.screen_width);
  PutLe16(&out, spec.screen_height);
  const bool global = !spec.global_palette.empty();
  out.push_back(global ? 0xF0 | PaletteBits(spec.global_palette) : 0x70);
  out.push_back(0);
  out.push_back(0);
  Append(&out, spec.global_palette);
  if (spec.transparency >= 0) {
    const Bytes gce = {0x21, 0xF9, 4, 1, 0, 0, static_cast<uint8_t>(spec.transparency), 0};
    Append(&out, gce);
  }
  out.push_back(',');
  PutLe16(&out, spec.left);
  PutLe16(&out, spec.top);
  PutLe16(&out, spec.width);
  PutLe16(&out, spec.height);
  uint8_t flags = spec.interlace ? 0x40 : 0;
  if (!spec.local_palette.empty()) {
    flags |= 0x80 | PaletteBits(spec.local_palette);
  }
  out.push_back(flags);
  Append(&out, spec.local_palette);
  std::vector<uint8_t> ordered;
  if (spec.interlace) {
    static const int kStart[4] = {0, 4, 2, 1};
    static const int kStep[4] = {8, 8, 4, 2};
    for (int pass = 0; pass < 4; ++pass) {
      for (int y = kStart[pass]; y < spec.height; y += kStep[pass]) {
        ordered.insert(ordered.end(), spec.indices.begin() + y * spec.width,
                       spec.indices.begin() + (y + 1) * spec.width);
      }
    }
  } else {
    ordered = spec.indices;
  }
  Append(&out, GifLzw(ordered));
  out.push_back(';');
  return out;
}

struct BmpSpec {
  int width = 0;
  int height = 0;
  int bits = 24;
  bool top_down = false;
  int header_size = 40;
  uint32_t compression = 0;
  std::vector<uint32_t> masks;  // In the header (>= 52) or after it (40).
  Bytes palette;                // Stored entries (BGRX, or BGR for OS/2).
  uint32_t colors_used = 0;
  std::vector<Bytes> rows;  // Top row first, unpadded.
};

Bytes EncodeBmp(const BmpSpec& spec) {
  const size_t stride = ((static_cast<size_t>(spec.width) * spec.bits + 31) / 32) * 4;
  Bytes pixels;
  for (int i = 0; i < spec.height; ++i) {
    const Bytes& row = spec.rows[spec.top_down ? i : spec.height - 1 - i];
    Bytes padded = row;
    padded.resize(stride, 0);
    Append(&pixels, padded);
  }
  Bytes header;
  if (spec.header_size == 12) {
    PutLe32(&header, 12);
    PutLe16(&header, spec.width);
    PutLe16(&header, spec.height);
    PutLe16(&header, 1);
    PutLe16(&header, spec.bits);
  } else {
    PutLe32(&header, spec.header_size);
    PutLe32(&header, spec.width);
    PutLe32(&header, spec.top_down ? static_cast<uint32_t>(-spec.height) : spec.height);
    PutLe16(&header, 1);
    PutLe16(&header, spec.bits);
    PutLe32(&header, spec.compression);
    PutLe32(&header, static_cast<uint32_t>(pixels.size()));
    PutLe32(&header, 2835);
    PutLe32(&header, 2835);
    PutLe32(&header, spec.colors_used);
    PutLe32(&header, 0);
    if (spec.header_size > 40) {
      for (size_t i = 0; i < 4; ++i) {
        PutLe32(&header, i < spec.masks.size() ? spec.masks[i] : 0);
      }
      header.resize(spec.header_size, 0);
    }
  }
  Bytes extra;
  if (spec.header_size == 40 && !spec.masks.empty()) {
    for (size_t i = 0; i < 3; ++i) PutLe32(&extra, spec.masks[i]);
  }
  const uint32_t offset = static_cast<uint32_t>(14 + header.size() + extra.size() + spec.palette.size());
  Bytes out = {'B', 'M'};
  PutLe32(&out, static_cast<uint32_t>(offset + pixels.size()));
  PutLe32(&out, 0);
  PutLe32(&out, offset);
  Append(&out, header);
  Append(&out, extra);
  Append(&out, spec.palette);
  Append(&out, pixels);
  return out;
}

// TIFF with one IFD0 entry: Orientation (SHORT).
Bytes ExifTiff(int orientation, bool big_endian) {
  Bytes out;
  auto u16 = [&](uint32_t v) {
    if (big_endian) {
      out.push_back(v >> 8);
      out.push_back(v & 0xFF);
    } else {
      PutLe16(&out, v);
    }
  };
  auto u32 = [&](uint32_t v) {
    if (big_endian) {
      PutBe32(&out, v);
    } else {
      PutLe32(&out, v);
    }
  };
  Append(&out, big_endian ? "MM" : "II");
  u16(42);
  u32(8);
  u16(1);
  u16(0x0112);
  u16(3);
  u32(1);
  u16(orientation);
  u16(0);
  u32(0);
  return out;
}

// ---------------------------------------------------------------------------
// Independent reference: Pillow's resize on the whole image, then HF's crop
// with padding, rescale and normalize; written for clarity, not speed.
// ---------------------------------------------------------------------------
double ReferenceKernel(double x) {
  x = std::fabs(x);
  if (x < 1.0) return ((-0.5 + 2.0) * x - (-0.5 + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * -0.5;
  return 0.0;
}

// One axis of Pillow's separable resize, on one channel.
std::vector<uint8_t> ReferenceResample1d(const std::vector<uint8_t>& in, int out_size) {
  const int in_size = static_cast<int>(in.size());
  const double scale = static_cast<double>(in_size) / out_size;
  const double filter_scale = std::max(scale, 1.0);
  const double support = 2.0 * filter_scale;
  std::vector<uint8_t> out(out_size);
  for (int i = 0; i < out_size; ++i) {
    const double center = (i + 0.5) * scale;
    const int lo = std::max(0, static_cast<int>(center - support + 0.5));
    const int hi = std::min(in_size, static_cast<int>(center + support + 0.5));
    std::vector<double> w;
    double total = 0;
    for (int j = lo; j < hi; ++j) {
      w.push_back(ReferenceKernel((j - center + 0.5) * (1.0 / filter_scale)));
      total += w.back();
    }
    int64_t sum = 1 << 21;
    for (int j = lo; j < hi; ++j) {
      const double v = total != 0 ? w[j - lo] / total : w[j - lo];
      const int64_t fixed =
          v < 0 ? static_cast<int64_t>(-0.5 + v * (1 << 22)) : static_cast<int64_t>(0.5 + v * (1 << 22));
      sum += fixed * in[j];
    }
    out[i] = static_cast<uint8_t>(std::clamp<int64_t>(sum >> 22, 0, 255));
  }
  return out;
}

std::vector<float> ReferencePreprocess(const RgbImage& image, const PreprocessOptions& options) {
  const int w = image.width;
  const int h = image.height;
  const int size = options.resize_shortest_edge;
  int rw, rh;
  if (w <= h) {
    rw = size;
    rh = static_cast<int>(static_cast<double>(int64_t{size} * h) / w);
  } else {
    rh = size;
    rw = static_cast<int>(static_cast<double>(int64_t{size} * w) / h);
  }
  std::vector<uint8_t> pixels(image.pixels.begin(), image.pixels.end());
  if (rw != w) {  // Horizontal pass first, as Pillow.
    std::vector<uint8_t> next(static_cast<size_t>(rw) * h * 3);
    for (int y = 0; y < h; ++y) {
      for (int c = 0; c < 3; ++c) {
        std::vector<uint8_t> line(w);
        for (int x = 0; x < w; ++x) line[x] = pixels[(y * w + x) * 3 + c];
        const auto out = ReferenceResample1d(line, rw);
        for (int x = 0; x < rw; ++x) next[(y * rw + x) * 3 + c] = out[x];
      }
    }
    pixels.swap(next);
  }
  if (rh != h) {
    std::vector<uint8_t> next(static_cast<size_t>(rw) * rh * 3);
    for (int x = 0; x < rw; ++x) {
      for (int c = 0; c < 3; ++c) {
        std::vector<uint8_t> line(h);
        for (int y = 0; y < h; ++y) line[y] = pixels[(y * rw + x) * 3 + c];
        const auto out = ReferenceResample1d(line, rh);
        for (int y = 0; y < rh; ++y) next[(y * rw + x) * 3 + c] = out[y];
      }
    }
    pixels.swap(next);
  }
  const int crop = options.crop_size;
  auto floor_half = [](int v) { return v >= 0 ? v / 2 : -((-v + 1) / 2); };
  const int top = floor_half(rh - crop);
  const int left = floor_half(rw - crop);
  std::vector<float> out(3 * crop * crop);
  for (int c = 0; c < 3; ++c) {
    for (int y = 0; y < crop; ++y) {
      for (int x = 0; x < crop; ++x) {
        const int sy = y + top;
        const int sx = x + left;
        const int v =
            (sy >= 0 && sy < rh && sx >= 0 && sx < rw) ? pixels[(static_cast<size_t>(sy) * rw + sx) * 3 + c] : 0;
        const float rescaled = static_cast<float>(v * 0.00392156862745098);
        out[(c * crop + y) * crop + x] = (rescaled - options.mean[c]) / options.std[c];
      }
    }
  }
  return out;
}

std::vector<float> Preprocess(const RgbImage& image, const PreprocessOptions& options = {}) {
  std::vector<float> out(clip::PreprocessedSize(options));
  clip::PreprocessRgb(image, options, out.data());
  return out;
}

bool SameFloats(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && (a.empty() || std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0);
}

// Pixel (x, y) channel c of an image.
uint8_t At(const RgbImage& image, int x, int y, int c) {
  return image.pixels[(static_cast<size_t>(y) * image.width + x) * 3 + c];
}

// Expected pixels as a function f(x, y, c).
bool ImageEquals(const RgbImage& image, int width, int height, const std::function<int(int, int, int)>& expected,
                 std::string* first_difference) {
  if (image.width != width || image.height != height ||
      image.pixels.size() != static_cast<size_t>(width) * height * 3) {
    *first_difference = "size " + std::to_string(image.width) + "x" + std::to_string(image.height) + ", expected " +
                        std::to_string(width) + "x" + std::to_string(height);
    return false;
  }
  for (int y = 0; y < height; ++y) {
    for (int x = 0; x < width; ++x) {
      for (int c = 0; c < 3; ++c) {
        const int want = expected(x, y, c);
        if (At(image, x, y, c) != want) {
          *first_difference = "pixel (" + std::to_string(x) + "," + std::to_string(y) + ") channel " +
                              std::to_string(c) + " is " + std::to_string(At(image, x, y, c)) + ", expected " +
                              std::to_string(want);
          return false;
        }
      }
    }
  }
  return true;
}

void CheckImage(const std::string& what, const Bytes& data, int width, int height,
                const std::function<int(int, int, int)>& expected, ImageDecodeOptions options = {}) {
  const RgbImage image = DecodeOrFail(data, what, options);
  if (image.pixels.empty()) return;
  std::string difference;
  const bool equal = ImageEquals(image, width, height, expected, &difference);
  Check(equal, what + ": " + difference);
}

// ---------------------------------------------------------------------------
// Reference-data parity.
// ---------------------------------------------------------------------------
void TestReferenceImages(const std::string& root) {
  const std::string dir = root + "/images/";
  Bytes manifest_bytes;
  if (!ReadFile(dir + "manifest.json", &manifest_bytes)) {
    Check(false, "cannot read " + dir + "manifest.json");
    return;
  }
  const auto manifest = nlohmann::json::parse(manifest_bytes);
  const auto& means = manifest["hf_preprocessing"]["image_mean"];
  const auto& stds = manifest["hf_preprocessing"]["image_std"];
  PreprocessOptions options;
  for (int c = 0; c < 3; ++c) {
    options.mean[c] = means[c].get<float>();
    options.std[c] = stds[c].get<float>();
  }
  const PreprocessOptions defaults;
  Check(options.mean == defaults.mean && options.std == defaults.std,
        "PreprocessOptions defaults equal the manifest's mean and std");

  std::printf("| image | variant | decoded sha256 | max abs diff | u8 diffs |\n");
  std::printf("| --- | --- | --- | ---: | ---: |\n");
  int images = 0;
  for (const auto& entry : manifest["images"]) {
    const std::string name = entry["name"].get<std::string>();
    Bytes data;
    if (!ReadFile(dir + entry["file"].get<std::string>(), &data)) {
      Check(false, name + ": cannot read input");
      continue;
    }
    ++images;
    struct Variant {
      std::string label;
      std::string file;
      bool exif;
    };
    std::vector<Variant> variants = {{"hf", entry["hf"]["file"].get<std::string>(), false}};
    if (!entry["hf_exif_transposed"].is_null()) {
      variants.push_back({"hf_exif_transposed", entry["hf_exif_transposed"]["file"].get<std::string>(), true});
    }
    for (const Variant& variant : variants) {
      const std::string what = name + " (" + variant.label + ")";
      Bytes reference_bytes;
      if (!ReadFile(dir + variant.file, &reference_bytes) || reference_bytes.size() != 3 * 224 * 224 * sizeof(float)) {
        Check(false, what + ": cannot read " + variant.file);
        continue;
      }
      std::vector<float> reference(3 * 224 * 224);
      std::memcpy(reference.data(), reference_bytes.data(), reference_bytes.size());
      ImageDecodeOptions decode;
      decode.apply_exif_orientation = variant.exif;
      std::string sha_status = "-";
      std::vector<float> got(reference.size());
      try {
        if (!variant.exif) {
          const RgbImage image = Decode(data, decode);
          const bool sha_ok =
              Sha256Hex(image.pixels.data(), image.pixels.size()) == entry["decoded_rgb_sha256"].get<std::string>();
          sha_status = sha_ok ? "match" : "MISMATCH";
          Check(sha_ok, what + ": decoded RGB sha256 differs from Pillow's");
        }
        clip::PreprocessImage(data.data(), data.size(), decode, options, got.data());
      } catch (const std::exception& error) {
        Check(false, what + ": threw " + error.what());
        continue;
      }
      float max_diff = 0;
      int u8_diffs = 0;
      int max_u8_diff = 0;
      for (size_t i = 0; i < got.size(); ++i) {
        const int c = static_cast<int>(i / (224 * 224));
        max_diff = std::max(max_diff, std::fabs(got[i] - reference[i]));
        auto recover = [&](float v) {
          return static_cast<int>(std::lround((v * options.std[c] + options.mean[c]) * 255.0));
        };
        const int delta = std::abs(recover(got[i]) - recover(reference[i]));
        if (delta) ++u8_diffs;
        max_u8_diff = std::max(max_u8_diff, delta);
      }
      std::printf("| %s | %s | %s | %.3g | %d (max %d) |\n", name.c_str(), variant.label.c_str(), sha_status.c_str(),
                  max_diff, u8_diffs, max_u8_diff);
      Check(max_diff <= 1e-6f, what + ": max abs diff " + std::to_string(max_diff) + " > 1e-6");
    }
  }
  Check(images == 26, "manifest lists the 26 public images (found " + std::to_string(images) + ")");
}

// ---------------------------------------------------------------------------
// Self-contained tests.
// ---------------------------------------------------------------------------
void TestFormatDetection() {
  struct Case {
    Bytes data;
    ImageFormat format;
  };
  const Case cases[] = {
      {{0xFF, 0xD8, 0xFF, 0xE0}, ImageFormat::kJpeg},
      {{0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'}, ImageFormat::kPng},
      {{'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'E', 'B', 'P'}, ImageFormat::kWebp},
      {{'G', 'I', 'F', '8', '9', 'a'}, ImageFormat::kGif},
      {{'G', 'I', 'F', '8', '7', 'a'}, ImageFormat::kGif},
      {{'B', 'M', 0, 0}, ImageFormat::kBmp},
      {{0xFF, 0xD8}, ImageFormat::kUnknown},
      {{'R', 'I', 'F', 'F', 0, 0, 0, 0, 'W', 'A', 'V', 'E'}, ImageFormat::kUnknown},
      {{'G', 'I', 'F', '8', '8', 'a'}, ImageFormat::kUnknown},
      {{}, ImageFormat::kUnknown},
  };
  for (const Case& c : cases) {
    const ImageFormat got = clip::DetectImageFormat(c.data.data(), c.data.size());
    Check(got == c.format, std::string("DetectImageFormat: got ") + clip::ImageFormatName(got) + ", expected " +
                               clip::ImageFormatName(c.format));
  }
  Check(clip::DetectImageFormat(nullptr, 0) == ImageFormat::kUnknown, "DetectImageFormat(nullptr) is kUnknown");
}

void TestPngModes() {
  const int w = 13;
  const int h = 9;
  std::mt19937 random(7);
  auto samples = [&](int channels, int max) {
    std::vector<uint16_t> v(static_cast<size_t>(w) * h * channels);
    for (auto& s : v) s = static_cast<uint16_t>(random() % (max + 1));
    return v;
  };
  auto sample = [&](const PngSpec& s, int x, int y, int c) {
    return s.samples[(static_cast<size_t>(y) * w + x) * PngChannels(s.color_type) + c];
  };
  for (bool interlace : {false, true}) {
    const std::string suffix = interlace ? " (Adam7)" : "";
    PngSpec spec;
    spec.width = w;
    spec.height = h;
    spec.interlace = interlace;

    spec.color_type = 2;
    spec.bit_depth = 8;
    spec.samples = samples(3, 255);
    CheckImage("PNG RGB8" + suffix, EncodePng(spec), w, h, [&](int x, int y, int c) { return sample(spec, x, y, c); });

    spec.color_type = 6;
    spec.samples = samples(4, 255);
    for (int i = 0; i < w * h; i += 3) spec.samples[i * 4 + 3] = 0;
    CheckImage("PNG RGBA8 drops alpha, keeps RGB under alpha 0" + suffix, EncodePng(spec), w, h,
               [&](int x, int y, int c) { return sample(spec, x, y, c); });

    spec.color_type = 0;
    spec.samples = samples(1, 255);
    CheckImage("PNG L8" + suffix, EncodePng(spec), w, h, [&](int x, int y, int) { return sample(spec, x, y, 0); });

    for (int bits : {1, 2, 4}) {
      spec.bit_depth = bits;
      spec.samples = samples(1, (1 << bits) - 1);
      CheckImage("PNG gray " + std::to_string(bits) + "-bit" + suffix, EncodePng(spec), w, h,
                 [&](int x, int y, int) { return sample(spec, x, y, 0) * 255 / ((1 << bits) - 1); });
    }

    spec.bit_depth = 16;
    spec.samples = samples(1, 700);
    spec.samples[0] = 65535;
    spec.samples[1] = 255;
    spec.samples[2] = 256;
    CheckImage("PNG gray16 clamps to 255 (I;16 -> RGB)" + suffix, EncodePng(spec), w, h,
               [&](int x, int y, int) { return std::min<int>(sample(spec, x, y, 0), 255); });

    spec.color_type = 4;
    spec.bit_depth = 8;
    spec.samples = samples(2, 255);
    CheckImage("PNG LA8" + suffix, EncodePng(spec), w, h, [&](int x, int y, int) { return sample(spec, x, y, 0); });

    spec.bit_depth = 16;
    spec.samples = samples(2, 65535);
    CheckImage("PNG LA16 keeps the high byte" + suffix, EncodePng(spec), w, h,
               [&](int x, int y, int) { return sample(spec, x, y, 0) >> 8; });

    spec.color_type = 2;
    spec.samples = samples(3, 65535);
    CheckImage("PNG RGB16 keeps the high byte" + suffix, EncodePng(spec), w, h,
               [&](int x, int y, int c) { return sample(spec, x, y, c) >> 8; });

    spec.color_type = 6;
    spec.samples = samples(4, 65535);
    CheckImage("PNG RGBA16 keeps the high byte" + suffix, EncodePng(spec), w, h,
               [&](int x, int y, int c) { return sample(spec, x, y, c) >> 8; });

    // Palette with fewer entries than the indices used, and tRNS: indices
    // past the palette are black, alpha is ignored.
    spec.color_type = 3;
    spec.bit_depth = 8;
    spec.palette.clear();
    for (int i = 0; i < 10 * 3; ++i) spec.palette.push_back(random() % 256);
    spec.transparency = {0, 128, 255};
    spec.samples = samples(1, 15);
    CheckImage("PNG palette8 with tRNS and out-of-range indices" + suffix, EncodePng(spec), w, h,
               [&](int x, int y, int c) {
                 const int index = sample(spec, x, y, 0);
                 return index < 10 ? spec.palette[index * 3 + c] : 0;
               });

    spec.bit_depth = 4;
    spec.transparency.clear();
    spec.samples = samples(1, 9);
    CheckImage("PNG palette4" + suffix, EncodePng(spec), w, h,
               [&](int x, int y, int c) { return spec.palette[sample(spec, x, y, 0) * 3 + c]; });
  }
}

// A decoder's fast path against the library it goes ahead of (PNG's
// whole-buffer path and libpng, a JPEG scan's entropy decoding ahead and
// libjpeg's own): one decode with the path switched on or off by `set_fast`,
// DecodeImage's pixels and PreprocessImage's floats, or the error.
namespace fast_paths {

struct Outcome {
  bool ok = false;
  std::string error;
  RgbImage image;
  std::vector<float> floats;
};

Outcome Run(const Bytes& data, void (*set_fast)(bool), bool fast) {
  set_fast(fast);
  Outcome outcome;
  try {
    outcome.image = Decode(data);
    outcome.floats.resize(clip::PreprocessedSize(PreprocessOptions{}));
    clip::PreprocessImage(data.data(), data.size(), ImageDecodeOptions{}, PreprocessOptions{}, outcome.floats.data());
    outcome.ok = true;
  } catch (const ClipError& error) {
    outcome.error = std::string(clip::ErrorCodeName(error.code())) + ": " + error.what();
  }
  set_fast(true);
  return outcome;
}

// The same success, pixels and floats, or the same error.
void Compare(const std::string& what, const char* fast_name, const Outcome& fast, const char* library_name,
             const Outcome& library) {
  if (fast.ok != library.ok) {
    Check(false, what + ": " + fast_name + " " + (fast.ok ? "decoded" : fast.error) + ", " + library_name + " " +
                     (library.ok ? "decoded" : library.error));
  } else if (fast.ok) {
    Check(fast.image.width == library.image.width && fast.image.height == library.image.height &&
              fast.image.pixels == library.image.pixels,
          what + ": the same pixels as " + library_name);
    Check(SameFloats(fast.floats, library.floats), what + ": the same preprocessed floats as " + library_name);
  } else {
    Check(fast.error == library.error,
          what + ": the same error as " + library_name + " (" + fast.error + " / " + library.error + ")");
  }
}

}  // namespace fast_paths

// PNG's whole-buffer path (one inflate call, rows unfiltered here) against libpng's
// on the same bytes: the same pixels or the same error, and the whole-buffer
// path taken exactly where it should be.
namespace png_paths {

struct Chunk {
  std::string type;
  Bytes payload;
};

struct File {
  uint32_t width = 0;
  uint32_t height = 0;
  int bit_depth = 8;
  int color_type = 2;
  bool interlace = false;
  Bytes stream;                // the zlib stream of IDAT
  size_t split = 0;            // IDAT chunks of at most this many bytes (0: one chunk)
  std::vector<Chunk> before;   // between IHDR and IDAT
  std::vector<Chunk> between;  // after the first IDAT chunk, before the rest
  bool bad_idat_crc = false;
  bool iend = true;
};

Bytes Build(const File& f) {
  Bytes out = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  Append(&out, IhdrChunk(f.width, f.height, f.bit_depth, f.color_type, f.interlace));
  for (const Chunk& c : f.before) Append(&out, PngChunk(c.type.c_str(), c.payload));
  const size_t piece = f.split ? f.split : std::max<size_t>(f.stream.size(), 1);
  for (size_t offset = 0, n = 0; offset < f.stream.size() || n == 0; offset += piece, ++n) {
    const size_t end = std::min(f.stream.size(), offset + piece);
    Bytes chunk = PngChunk("IDAT", Bytes(f.stream.begin() + offset, f.stream.begin() + end));
    if (f.bad_idat_crc) chunk.back() ^= 0x5A;
    Append(&out, chunk);
    if (n == 0) {
      for (const Chunk& c : f.between) Append(&out, PngChunk(c.type.c_str(), c.payload));
    }
    if (end == f.stream.size()) break;
  }
  if (f.iend) Append(&out, PngChunk("IEND", {}));
  return out;
}

uint8_t PaethPredictor(int a, int b, int c) {
  const int p = a + b - c;
  const int pa = std::abs(p - a), pb = std::abs(p - b), pc = std::abs(p - c);
  return static_cast<uint8_t>(pa <= pb && pa <= pc ? a : pb <= pc ? b : c);
}

// Rows of `samples` (8-bit, bpp bytes per pixel) filtered with filters[y % n].
Bytes Filter(const Bytes& samples, uint32_t width, uint32_t height, int bpp, const std::vector<int>& filters) {
  const size_t row_bytes = size_t{width} * bpp;
  Bytes out;
  const Bytes zeros(row_bytes, 0);
  for (uint32_t y = 0; y < height; ++y) {
    const uint8_t* row = samples.data() + row_bytes * y;
    const uint8_t* prior = y ? row - row_bytes : zeros.data();
    const int filter = filters[y % filters.size()];
    out.push_back(static_cast<uint8_t>(filter));
    for (size_t i = 0; i < row_bytes; ++i) {
      const int a = i >= size_t(bpp) ? row[i - bpp] : 0;
      const int b = prior[i];
      const int c = i >= size_t(bpp) ? prior[i - bpp] : 0;
      const int predictor = filter == 1   ? a
                            : filter == 2 ? b
                            : filter == 3 ? (a + b) / 2
                            : filter == 4 ? PaethPredictor(a, b, c)
                                          : 0;
      out.push_back(static_cast<uint8_t>(row[i] - predictor));
    }
  }
  return out;
}

// An image's data as PNG rows, pass by pass (Adam7's seven when `adam7`,
// less the empty ones), each pass's rows filtered with filters[y % n].
// `pixels`: `pixel_bytes` bytes a pixel at 8 and 16 bits; below 8 bits one
// sample value a pixel (pixel_bytes 1), packed here.
Bytes PassRows(const Bytes& pixels, uint32_t width, uint32_t height, int bit_depth, int pixel_bytes, bool adam7,
               const std::vector<int>& filters) {
  static const uint32_t kWhole[4] = {0, 0, 1, 1};
  Bytes out;
  for (int n = 0; n < (adam7 ? 7 : 1); ++n) {
    const uint32_t* p = adam7 ? kAdam7Passes[n] : kWhole;
    if (width <= p[0] || height <= p[1]) continue;
    const uint32_t pw = (width - p[0] + p[2] - 1) / p[2];
    const uint32_t ph = (height - p[1] + p[3] - 1) / p[3];
    const size_t row_bytes = bit_depth < 8 ? (size_t{pw} * bit_depth + 7) / 8 : size_t{pw} * pixel_bytes;
    Bytes rows(row_bytes * ph, 0);
    for (uint32_t j = 0; j < ph; ++j) {
      for (uint32_t i = 0; i < pw; ++i) {
        const uint8_t* px = &pixels[(size_t{p[1] + j * p[3]} * width + p[0] + i * p[2]) * pixel_bytes];
        uint8_t* row = &rows[j * row_bytes];
        if (bit_depth < 8) {
          row[i * bit_depth / 8] |= static_cast<uint8_t>(px[0] << (8 - bit_depth - i * bit_depth % 8));
        } else {
          std::memcpy(row + size_t{i} * pixel_bytes, px, pixel_bytes);
        }
      }
    }
    const int bpp = bit_depth < 8 ? 1 : pixel_bytes;
    Append(&out, Filter(rows, static_cast<uint32_t>(row_bytes / bpp), ph, bpp, filters));
  }
  return out;
}

Bytes Zlib(const Bytes& raw, int level) {
  uLongf size = compressBound(raw.size());
  Bytes out(size);
  compress2(out.data(), &size, raw.data(), raw.size(), level);
  out.resize(size);
  return out;
}

// A zlib stream of `1 + 258 * matches` zero bytes in one fixed-Huffman block:
// a literal 0, then matches of 258 bytes at distance 1, each coded as
// `length_symbol`: 285 is length 258; 286 and 287 are reserved by RFC 1951
// (zlib refuses them, some inflaters decode them as 258).
Bytes FixedHuffmanZeros(int matches, int length_symbol) {
  Bytes out = {0x78, 0x01};
  uint32_t bits = 0;
  int count = 0;
  auto put = [&](uint32_t value, int n) {  // LSB first, as DEFLATE packs header fields
    bits |= value << count;
    count += n;
    for (; count >= 8; count -= 8, bits >>= 8) out.push_back(static_cast<uint8_t>(bits));
  };
  auto code = [&](uint32_t codeword, int n) {  // Huffman codes go MSB first
    for (int i = n - 1; i >= 0; --i) put((codeword >> i) & 1, 1);
  };
  put(1, 1);      // BFINAL
  put(1, 2);      // BTYPE 01: fixed Huffman codes
  code(0x30, 8);  // literal 0
  for (int i = 0; i < matches; ++i) {
    code(0xC0 + (length_symbol - 280), 8);  // symbols 280-287: 8-bit codes 11000000 + n
    code(0, 5);                             // distance symbol 0: distance 1
  }
  code(0, 7);  // end of block (256)
  if (count > 0) put(0, 8 - count);
  const uint32_t adler = 1 + 0 + 0;  // Adler-32 of n zero bytes: a = 1, b = n
  const uint32_t n = 1 + 258u * matches;
  const uint32_t check = (n % 65521) << 16 | adler;
  for (int shift = 24; shift >= 0; shift -= 8) out.push_back(static_cast<uint8_t>(check >> shift));
  return out;
}

using fast_paths::Outcome;

// Both paths on `data`; `whole_buffer` says whether the fast path must take it.
// Returns the outcome of the default (whole-buffer enabled) decode.
Outcome Agree(const std::string& what, const Bytes& data, bool whole_buffer) {
  const uint64_t before = clip::decode::PngWholeBufferDecodes();
  Outcome fast = fast_paths::Run(data, clip::decode::SetPngWholeBufferEnabled, true);
  const uint64_t taken = clip::decode::PngWholeBufferDecodes() - before;
  const Outcome libpng = fast_paths::Run(data, clip::decode::SetPngWholeBufferEnabled, false);
  Check(clip::decode::PngWholeBufferDecodes() - before == taken, what + ": the switch sends every PNG to libpng");
  Check(taken == (whole_buffer ? 2u : 0u),
        what + (whole_buffer ? ": decoded by the whole-buffer path" : ": left to libpng by the whole-buffer path"));
  fast_paths::Compare(what, "whole-buffer", fast, "libpng", libpng);
  return fast;
}

}  // namespace png_paths

// UnfilterRows (vectorized where the CPU has AVX2) against the byte-at-a-time
// definition: every filter type in runs of every length, so that the
// wavefront of Average and Paeth rows meets groups of one to four rows, mixed
// types, rows narrower than the group, and each row's first pixels. The rows
// sit in a buffer of exactly their size plus kUnfilterReadSlack (under
// AddressSanitizer a read further out fails), and nothing past the last
// row's bytes may change.
void TestPngUnfilter() {
  std::mt19937 rng(31);
  int cases = 0;
  int mismatches = 0;
  for (size_t bpp = 1; bpp <= 4; ++bpp) {
    for (size_t width : {1u, 2u, 3u, 4u, 5u, 6u, 7u, 8u, 13u, 16u, 33u, 100u, 517u}) {
      for (int round = 0; round < 12; ++round) {
        const size_t bytes = width * bpp;
        const size_t stride = bytes + 1;
        const size_t count = 1 + rng() % 11;
        std::vector<uint8_t> buffer(stride * count + clip::decode::kUnfilterReadSlack);
        for (uint8_t& b : buffer) b = static_cast<uint8_t>(rng());
        // Runs of one type: rounds 0-4 all one type, later ones Average and
        // Paeth mixed or any type.
        for (size_t i = 0; i < count; ++i) {
          const int type = round < 5   ? round
                           : round < 9 ? 3 + static_cast<int>(rng() % 2)
                                       : static_cast<int>(rng() % 5);
          buffer[i * stride] = static_cast<uint8_t>(type);
        }
        std::vector<uint8_t> prior(bytes + clip::decode::kUnfilterReadSlack);
        for (uint8_t& b : prior) b = static_cast<uint8_t>(rng());
        if (round == 11) std::fill(prior.begin(), prior.end(), 0);  // An image's first rows.
        std::vector<uint8_t> expected = buffer;
        clip::decode::UnfilterRowsScalar(expected.data(), stride, count, prior.data(), bytes, bpp);
        const std::vector<uint8_t> prior_before = prior;
        clip::decode::UnfilterRows(buffer.data(), stride, count, prior.data(), bytes, bpp);
        ++cases;
        if (buffer != expected || prior != prior_before) {
          if (++mismatches <= 5) {
            std::string types;
            for (size_t i = 0; i < count; ++i) types += std::to_string(buffer[i * stride]);
            Check(false, "PNG unfilter " + std::to_string(bpp) + " bytes/pixel, width " + std::to_string(width) +
                             ", filters " + types + ": equal to the scalar definition");
          }
        }
      }
    }
  }
  Check(mismatches == 0, "PNG unfilter: " + std::to_string(mismatches) + " of " + std::to_string(cases) +
                             " row sets differ from the scalar definition");
  // The scalar definition itself, on one known row of each type (3 bytes a pixel).
  const uint8_t above[6] = {10, 20, 30, 200, 100, 0};
  const uint8_t want[5][6] = {
      {1, 2, 3, 4, 5, 6},                                                    // None
      {1, 2, 3, 5, 7, 9},                                                    // Sub
      {11, 22, 33, 204, 105, 6},                                             // Up
      {6, 12, 18, 4 + (6 + 200) / 2, 5 + (12 + 100) / 2, 6 + (18 + 0) / 2},  // Average
      {11, 22, 33, 204, 105, 6},                                             // Paeth: above (b) in every channel here
  };
  for (int type = 0; type < 5; ++type) {
    uint8_t row[8] = {static_cast<uint8_t>(type), 1, 2, 3, 4, 5, 6, 0};
    clip::decode::UnfilterRowsScalar(row, 7, 1, above, 6, 3);
    Check(std::memcmp(row + 1, want[type], 6) == 0, "PNG unfilter: type " + std::to_string(type) + " by hand");
  }
}

void TestPngWholeBuffer() {
  using namespace png_paths;
  const std::vector<std::vector<int>> filter_sets = {{0}, {1}, {2}, {3}, {4}, {0, 1, 2, 3, 4}, {4, 3, 2, 1}};
  const int kChannels[][2] = {{0, 1}, {4, 2}, {2, 3}, {6, 4}};  // colour type, bytes per pixel
  uint32_t seed = 100;
  for (const auto& [color_type, bpp] : kChannels) {
    for (uint32_t width : {1u, 2u, 3u, 7u, 33u}) {
      for (uint32_t height : {1u, 5u, 21u}) {
        for (const auto& filters : filter_sets) {
          File f;
          f.width = width;
          f.height = height;
          f.color_type = color_type;
          const Bytes samples = Pattern(width, height, bpp, ++seed);
          f.stream = Zlib(Filter(samples, width, height, bpp, filters), seed % 3 == 0 ? 0 : seed % 3 == 1 ? 1 : 9);
          f.split = seed % 4 == 0 ? 7 : 0;
          std::string name = "PNG whole-buffer type " + std::to_string(color_type) + " " + std::to_string(width) + "x" +
                             std::to_string(height) + " filters";
          for (int filter : filters) name += " " + std::to_string(filter);
          const Outcome outcome = Agree(name, Build(f), true);
          if (!outcome.ok) continue;
          // And the pixels are the samples (grey expands; alpha is dropped).
          bool equal = true;
          for (size_t p = 0; p < size_t{width} * height; ++p) {
            for (int c = 0; c < 3; ++c) {
              const uint8_t expected = samples[p * bpp + (bpp >= 3 ? c : 0)];
              equal = equal && outcome.image.pixels[p * 3 + c] == expected;
            }
          }
          Check(equal, name + ": the pixels are the samples");
        }
      }
    }
  }

  // Every other non-interlaced layout: grey and palette rows packed below 8
  // bits (filters on whole bytes), 16-bit samples, and palettes shorter than
  // the indices used (black past their entries) or longer than the bit depth
  // allows (libpng keeps the first 2^depth entries).
  struct Layout {
    int color_type;
    int bit_depth;
    int channels;
  };
  const Layout kLayouts[] = {{0, 1, 1},  {0, 2, 1}, {0, 4, 1}, {0, 16, 1}, {4, 16, 2}, {2, 16, 3},
                             {6, 16, 4}, {3, 1, 1}, {3, 2, 1}, {3, 4, 1},  {3, 8, 1}};
  for (const Layout& layout : kLayouts) {
    const size_t pixel_bits = static_cast<size_t>(layout.channels) * layout.bit_depth;
    const int bpp = std::max<int>(1, static_cast<int>(pixel_bits / 8));
    for (uint32_t width : {1u, 3u, 9u, 33u}) {
      for (uint32_t height : {1u, 6u}) {
        for (const std::vector<int>& filters : {std::vector<int>{0, 1, 2, 3, 4}, std::vector<int>{4, 3}}) {
          const size_t row_bytes = (width * pixel_bits + 7) / 8;
          const Bytes packed = Pattern(static_cast<int>(row_bytes), static_cast<int>(height), 1, ++seed);
          File f;
          f.width = width;
          f.height = height;
          f.bit_depth = layout.bit_depth;
          f.color_type = layout.color_type;
          f.stream = Zlib(Filter(packed, static_cast<uint32_t>(row_bytes / bpp), height, bpp, filters), 6);
          Bytes palette;
          if (layout.color_type == 3) {
            // Fewer entries than the bit depth addresses, or 256 at any depth.
            const size_t entries = seed % 2 ? 256 : std::max<size_t>(1, (size_t{1} << layout.bit_depth) * 2 / 3);
            for (size_t i = 0; i < entries * 3; ++i) palette.push_back(static_cast<uint8_t>(i * 37 + seed));
            f.before = {{"PLTE", palette}, {"tRNS", {0, 128}}};
          }
          std::string name = "PNG whole-buffer type " + std::to_string(layout.color_type) + " depth " +
                             std::to_string(layout.bit_depth) + " " + std::to_string(width) + "x" +
                             std::to_string(height) +
                             (palette.empty() ? "" : " palette of " + std::to_string(palette.size() / 3));
          const Outcome outcome = Agree(name, Build(f), true);
          if (!outcome.ok) continue;
          const size_t kept = std::min<size_t>(palette.size() / 3, size_t{1} << layout.bit_depth);
          bool equal = true;
          for (uint32_t y = 0; y < height; ++y) {
            const uint8_t* row = packed.data() + row_bytes * y;
            for (uint32_t x = 0; x < width; ++x) {
              uint8_t rgb[3];
              if (layout.bit_depth < 8) {
                const int value = row[x * layout.bit_depth / 8] >> (8 - layout.bit_depth - x * layout.bit_depth % 8) &
                                  ((1 << layout.bit_depth) - 1);
                for (int c = 0; c < 3; ++c) {
                  rgb[c] = layout.color_type == 0 ? static_cast<uint8_t>(value * 255 / ((1 << layout.bit_depth) - 1))
                           : static_cast<size_t>(value) < kept ? palette[value * 3 + c]
                                                               : 0;
                }
              } else if (layout.color_type == 3) {
                for (int c = 0; c < 3; ++c) rgb[c] = row[x] < kept ? palette[row[x] * 3 + c] : 0;
              } else {
                // 16-bit: the high byte (grey: 255 where it is not 0, else the low byte).
                const uint8_t* pixel = row + x * layout.channels * 2;
                for (int c = 0; c < 3; ++c) {
                  rgb[c] = layout.channels >= 3   ? pixel[2 * c]
                           : layout.channels == 2 ? pixel[0]
                           : pixel[0]             ? 255
                                                  : pixel[1];
                }
              }
              for (int c = 0; c < 3; ++c)
                equal = equal && outcome.image.pixels[(size_t{y} * width + x) * 3 + c] == rgb[c];
            }
          }
          Check(equal, name + ": the pixels are the samples");
        }
      }
    }
  }

  // A palette image's PLTE: what libpng refuses goes to libpng, which fails.
  File indexed;
  indexed.width = 20;
  indexed.height = 10;
  indexed.color_type = 3;
  indexed.stream = Zlib(Filter(Pattern(20, 10, 1, 5), 20, 10, 1, {0, 1, 4}), 6);
  const Bytes entries16 = Pattern(16, 1, 3, 6);
  auto indexed_with = [&](std::vector<Chunk> before) {
    File f = indexed;
    f.before = std::move(before);
    return Build(f);
  };
  Agree("PNG whole-buffer: palette image with PLTE", indexed_with({{"PLTE", entries16}}), true);
  Agree("PNG whole-buffer: tRNS and bKGD around PLTE",
        indexed_with({{"tRNS", {1, 2}}, {"PLTE", entries16}, {"bKGD", {3}}, {"tRNS", {9}}}), true);
  for (const auto& [what, chunks] : std::vector<std::pair<std::string, std::vector<Chunk>>>{
           {"no PLTE", {}},
           {"no PLTE, tRNS only", {{"tRNS", {0}}}},
           {"two PLTE chunks", {{"PLTE", entries16}, {"PLTE", entries16}}},
           {"an empty PLTE", {{"PLTE", {}}}},
           {"a PLTE of 7 bytes", {{"PLTE", Bytes(7, 1)}}},
           {"a PLTE of 257 entries", {{"PLTE", Bytes(257 * 3, 1)}}},
       }) {
    const Outcome refused = Agree("PNG whole-buffer: palette image with " + what, indexed_with(chunks), false);
    Check(!refused.ok, "PNG whole-buffer: palette image with " + what + " fails");
  }
  // Colour types at bit depths PNG does not define, each with a stream of
  // the size its rows would have: libpng refuses them.
  for (const auto& [color_type, bit_depth, channels] :
       std::vector<std::tuple<int, int, int>>{{3, 16, 1}, {2, 4, 3}, {4, 1, 2}, {6, 2, 4}, {0, 3, 1}}) {
    File f = indexed;
    f.color_type = color_type;
    f.bit_depth = bit_depth;
    const uint32_t row_bytes = (20 * channels * bit_depth + 7) / 8;
    f.stream = Zlib(Filter(Pattern(static_cast<int>(row_bytes), 10, 1, 7), row_bytes, 10, 1, {0}), 6);
    f.before.clear();
    if (color_type == 3) f.before = {{"PLTE", entries16}};
    const std::string what =
        "PNG whole-buffer: colour type " + std::to_string(color_type) + " at depth " + std::to_string(bit_depth);
    Check(!Agree(what, Build(f), false).ok, what + " fails");
  }
  File grey_with_palette = indexed;
  grey_with_palette.color_type = 0;
  grey_with_palette.before = {{"PLTE", entries16}};
  Agree("PNG whole-buffer: a PLTE in a grey image", Build(grey_with_palette), false);

  // Variations around one 40x30 RGB image with every filter.
  const uint32_t w = 40;
  const uint32_t h = 30;
  const Bytes samples = Pattern(w, h, 3, 9);
  const Bytes raw = Filter(samples, w, h, 3, {0, 1, 2, 3, 4, 4, 1});
  File base;
  base.width = w;
  base.height = h;
  base.stream = Zlib(raw, 6);
  auto with = [&](const std::function<void(File*)>& change) {
    File f = base;
    change(&f);
    return Build(f);
  };
  Agree("PNG whole-buffer: IDAT split into 1-byte chunks", with([](File* f) { f->split = 1; }), true);
  Agree("PNG whole-buffer: ancillary chunks before IDAT", with([](File* f) {
          f->before = {{"gAMA", {0, 0, 0xB1, 0x8F}}, {"tEXt", Bytes(300, 'a')}, {"zzZz", {1}}};
        }),
        true);
  Agree("PNG whole-buffer: bad IDAT CRC (ignored, as by Pillow)", with([](File* f) { f->bad_idat_crc = true; }), true);
  Agree("PNG whole-buffer: no IEND", with([](File* f) { f->iend = false; }), true);
  Agree("PNG whole-buffer: a wrong Adler-32", with([](File* f) { f->stream.back() ^= 0xFF; }), false);
  Agree("PNG whole-buffer: no Adler-32", with([](File* f) { f->stream.resize(f->stream.size() - 4); }), false);
  Agree("PNG whole-buffer: bytes after the zlib stream", with([](File* f) { Append(&f->stream, Bytes(50, 0xEE)); }),
        true);

  Agree("PNG whole-buffer: a stream with a row too many", with([&](File* f) {
          Bytes more = raw;
          Append(&more, Bytes(1 + w * 3, 0));
          f->stream = Zlib(more, 6);
        }),
        false);
  Agree("PNG whole-buffer: a stream a row short",
        with([&](File* f) { f->stream = Zlib(Bytes(raw.begin(), raw.end() - (1 + w * 3)), 6); }), false);
  Agree("PNG whole-buffer: filter type 5", with([&](File* f) {
          Bytes bad = raw;
          bad[(1 + w * 3) * 7] = 5;
          f->stream = Zlib(bad, 6);
        }),
        false);
  Agree("PNG whole-buffer: IDAT cut short", with([](File* f) { f->stream.resize(f->stream.size() / 2); }), false);
  Agree(
      "PNG whole-buffer: the file cut inside IDAT",
      [&] {
        Bytes data = Build(base);
        data.resize(data.size() - 40);
        return data;
      }(),
      false);
  Agree("PNG whole-buffer: a chunk between IDAT chunks", with([](File* f) {
          f->split = 100;
          f->between = {{"tEXt", {'x'}}};
        }),
        false);
  Agree("PNG whole-buffer: an unknown critical chunk before IDAT", with([](File* f) {
          f->before = {{"ABCD", {1}}};
        }),
        false);
  Agree("PNG whole-buffer: a suggested palette in an RGB image", with([](File* f) {
          f->before = {{"PLTE", {1, 2, 3, 4, 5, 6}}};
        }),
        false);
  Agree("PNG whole-buffer: a 2 MB ancillary chunk", with([](File* f) {
          f->before = {{"zTXt", Bytes(2 << 20, 7)}};
        }),
        false);
  Agree("PNG whole-buffer: a preset dictionary flag", with([](File* f) {
          f->stream[1] = static_cast<uint8_t>((f->stream[1] & ~0x1F) | 0x20);
          f->stream[1] = static_cast<uint8_t>(f->stream[1] + (31 - ((f->stream[0] << 8) | f->stream[1]) % 31) % 31);
        }),
        false);
  Agree("PNG whole-buffer: a bad zlib header check", with([](File* f) { f->stream[1] ^= 1; }), false);
  Agree("PNG whole-buffer: not a deflate stream", with([](File* f) { f->stream = Bytes(40, 0xAB); }), false);
  // A 516 x 1 grey image of zeros in one fixed-Huffman block; with a reserved
  // length code it is no longer a valid stream, although an inflater that maps
  // the code to 258 would produce the same bytes with the right Adler-32.
  File zeros;
  zeros.width = 516;
  zeros.height = 1;
  zeros.color_type = 0;
  zeros.stream = FixedHuffmanZeros(2, 285);
  const Outcome valid = Agree("PNG whole-buffer: a fixed-Huffman block", Build(zeros), true);
  Check(valid.ok && valid.image.pixels == clip::PixelBuffer(516 * 3, 0),
        "PNG whole-buffer: a fixed-Huffman block decodes to zeros");
  for (int reserved : {286, 287}) {
    zeros.stream = FixedHuffmanZeros(2, reserved);
    const Outcome refused =
        Agree("PNG whole-buffer: reserved length code " + std::to_string(reserved), Build(zeros), false);
    Check(!refused.ok, "PNG whole-buffer: reserved length code " + std::to_string(reserved) + " is refused");
  }
  Agree("PNG whole-buffer: an Adam7 header on a stream of plain rows", with([](File* f) { f->interlace = true; }),
        false);

  // Adam7: against libpng, and against the same pixels not interlaced.
  struct Adam7Layout {
    int color_type, bit_depth, pixel_bytes;
  };
  for (const Adam7Layout& layout : {Adam7Layout{2, 8, 3}, Adam7Layout{6, 16, 8}, Adam7Layout{4, 8, 2},
                                    Adam7Layout{0, 1, 1}, Adam7Layout{3, 4, 1}}) {
    for (const auto& [aw, ah] :
         std::vector<std::pair<uint32_t, uint32_t>>{{1, 1}, {2, 1}, {1, 2}, {5, 3}, {3, 5}, {8, 8}, {9, 17}, {33, 6}}) {
      for (const std::vector<int>& filters : {std::vector<int>{0, 1, 2, 3, 4}, std::vector<int>{4, 3}}) {
        Bytes pixels = Pattern(static_cast<int>(aw), static_cast<int>(ah), layout.pixel_bytes, ++seed);
        if (layout.bit_depth < 8) {
          for (uint8_t& v : pixels) v &= static_cast<uint8_t>((1 << layout.bit_depth) - 1);
        }
        File f;
        f.width = aw;
        f.height = ah;
        f.bit_depth = layout.bit_depth;
        f.color_type = layout.color_type;
        if (layout.color_type == 3) f.before = {{"PLTE", Pattern(16, 1, 3, seed)}};
        f.stream = Zlib(PassRows(pixels, aw, ah, layout.bit_depth, layout.pixel_bytes, false, filters), 6);
        const Outcome plain = Agree("PNG whole-buffer: plain rows", Build(f), true);
        f.interlace = true;
        f.stream = Zlib(PassRows(pixels, aw, ah, layout.bit_depth, layout.pixel_bytes, true, filters), 6);
        const std::string name = "PNG whole-buffer Adam7 type " + std::to_string(layout.color_type) + " depth " +
                                 std::to_string(layout.bit_depth) + " " + std::to_string(aw) + "x" +
                                 std::to_string(ah) + " filters " + std::to_string(filters.size());
        const Outcome adam7 = Agree(name, Build(f), true);
        Check(plain.ok && adam7.ok && adam7.image.pixels == plain.image.pixels, name + ": the pixels of plain rows");
      }
    }
  }
  File interlaced;
  interlaced.width = 9;
  interlaced.height = 17;
  interlaced.interlace = true;
  const Bytes adam7_raw = PassRows(Pattern(9, 17, 3, 3), 9, 17, 8, 3, true, {1, 4});
  interlaced.stream = Zlib(adam7_raw, 6);
  Agree("PNG whole-buffer: Adam7", Build(interlaced), true);
  interlaced.stream = Zlib(Bytes(adam7_raw.begin(), adam7_raw.end() - 1), 6);
  Agree("PNG whole-buffer: Adam7 a byte short", Build(interlaced), false);
  Bytes bad_filter = adam7_raw;
  bad_filter[adam7_raw.size() - 1 - 27] = 7;  // the last pass's last row: 1 + 9 * 3 bytes
  interlaced.stream = Zlib(bad_filter, 6);
  Agree("PNG whole-buffer: Adam7 with filter type 7 in its last row", Build(interlaced), false);

  // The resize sink, which takes the rows in blocks: the same floats.
  const uint32_t big_w = 300;
  const uint32_t big_h = 197;
  File big;
  big.width = big_w;
  big.height = big_h;
  big.color_type = 6;
  big.stream = Zlib(Filter(Pattern(big_w, big_h, 4, 12), big_w, big_h, 4, {4, 1, 2, 3, 0}), 6);
  big.split = 8192;
  const Bytes big_png = Build(big);
  const PreprocessOptions pre;
  std::vector<float> fast(clip::PreprocessedSize(pre)), slow(clip::PreprocessedSize(pre));
  const uint64_t before = clip::decode::PngWholeBufferDecodes();
  clip::PreprocessImage(big_png.data(), big_png.size(), {}, pre, fast.data());
  Check(clip::decode::PngWholeBufferDecodes() == before + 1, "PNG whole-buffer: PreprocessImage takes it");
  clip::decode::SetPngWholeBufferEnabled(false);
  clip::PreprocessImage(big_png.data(), big_png.size(), {}, pre, slow.data());
  clip::decode::SetPngWholeBufferEnabled(true);
  Check(fast == slow, "PNG whole-buffer: PreprocessImage gives the same floats as through libpng");
}

void TestJpeg() {
  const int w = 48;
  const int h = 32;
  // Flat 8x8 blocks survive JPEG almost unchanged.
  std::vector<uint8_t> rgb(static_cast<size_t>(w) * h * 3);
  for (int y = 0; y < h; ++y) {
    for (int x = 0; x < w; ++x) {
      for (int c = 0; c < 3; ++c) {
        rgb[(y * w + x) * 3 + c] = static_cast<uint8_t>(40 + ((x / 16) * 70 + (y / 16) * 40 + c * 30) % 180);
      }
    }
  }
  auto close_to = [](const RgbImage& image, const std::function<int(int, int, int)>& f, int tolerance) {
    int worst = 0;
    for (int y = 0; y < image.height; ++y) {
      for (int x = 0; x < image.width; ++x) {
        for (int c = 0; c < 3; ++c) {
          worst = std::max(worst, std::abs(At(image, x, y, c) - f(x, y, c)));
        }
      }
    }
    return worst <= tolerance;
  };
  JpegSpec spec;
  spec.width = w;
  spec.height = h;
  spec.samples = rgb;
  spec.quality = 100;
  for (bool progressive : {false, true}) {
    spec.progressive = progressive;
    const RgbImage image = DecodeOrFail(EncodeJpeg(spec), "JPEG RGB");
    Check(image.width == w && image.height == h &&
              close_to(
                  image, [&](int x, int y, int c) { return rgb[(y * w + x) * 3 + c]; }, 8),
          std::string("JPEG RGB decodes close to its source") + (progressive ? " (progressive)" : ""));
  }
  spec.progressive = false;

  spec.components = 1;
  spec.samples.resize(static_cast<size_t>(w) * h);
  for (int i = 0; i < w * h; ++i) spec.samples[i] = rgb[i * 3];
  {
    const RgbImage image = DecodeOrFail(EncodeJpeg(spec), "JPEG gray");
    bool replicated = image.width == w && image.height == h;
    for (int i = 0; replicated && i < w * h; ++i) {
      replicated = image.pixels[i * 3] == image.pixels[i * 3 + 1] && image.pixels[i * 3] == image.pixels[i * 3 + 2];
    }
    Check(replicated && close_to(
                            image, [&](int x, int y, int) { return rgb[(y * w + x) * 3]; }, 8),
          "JPEG gray decodes to R = G = B close to its source");
  }

  // CMYK as Photoshop writes it (inverted); expected values by Pillow's
  // formula on the source samples.
  spec.components = 4;
  spec.samples.resize(static_cast<size_t>(w) * h * 4);
  for (int i = 0; i < w * h; ++i) {
    for (int c = 0; c < 3; ++c) spec.samples[i * 4 + c] = rgb[i * 3 + c];
    spec.samples[i * 4 + 3] = static_cast<uint8_t>(255 - (i % w) * 2);
  }
  {
    const RgbImage image = DecodeOrFail(EncodeJpeg(spec), "JPEG CMYK");
    auto expected = [&](int x, int y, int c) {
      const int raw_ink = spec.samples[(y * w + x) * 4 + c];
      const int raw_black = spec.samples[(y * w + x) * 4 + 3];
      const int ink = 255 - raw_ink;
      const int nk = raw_black;
      const int t = ink * nk + 128;
      return std::clamp(nk - (((t >> 8) + t) >> 8), 0, 255);
    };
    Check(image.width == w && image.height == h && close_to(image, expected, 8),
          "JPEG CMYK converts as Pillow's Adobe CMYK -> RGB");
  }
}

// Animated WebP whose first frame (lossless, from `rgba`) covers only
// [x, x + w) x [y, y + h) of a canvas_width x canvas_height canvas; a second,
// full-canvas frame follows. Offsets must be even.
Bytes AnimatedWebp(int canvas_width, int canvas_height, int x, int y, int w, int h, const std::vector<uint8_t>& rgba) {
  auto chunk = [](const char* type, const Bytes& payload) {
    Bytes out;
    Append(&out, type);
    PutLe32(&out, static_cast<uint32_t>(payload.size()));
    Append(&out, payload);
    if (payload.size() % 2) out.push_back(0);
    return out;
  };
  auto put24 = [](Bytes* out, uint32_t v) {
    for (int i = 0; i < 3; ++i) out->push_back((v >> (8 * i)) & 0xFF);
  };
  auto frame = [&](int fx, int fy, int fw, int fh, const std::vector<uint8_t>& pixels) {
    const Bytes simple = EncodeWebpLossless(fw, fh, pixels, true);
    Bytes payload;
    put24(&payload, fx / 2);
    put24(&payload, fy / 2);
    put24(&payload, fw - 1);
    put24(&payload, fh - 1);
    put24(&payload, 100);  // Duration.
    payload.push_back(0);  // Blend, no dispose.
    payload.insert(payload.end(), simple.begin() + 12, simple.end());
    return chunk("ANMF", payload);
  };
  Bytes vp8x = {0x12, 0, 0, 0};  // Animation and alpha.
  put24(&vp8x, canvas_width - 1);
  put24(&vp8x, canvas_height - 1);
  Bytes anim;
  PutLe32(&anim, 0xFF336699);  // Background colour, which Pillow ignores.
  PutLe16(&anim, 0);
  Bytes body;
  Append(&body, "WEBP");
  Append(&body, chunk("VP8X", vp8x));
  Append(&body, chunk("ANIM", anim));
  Append(&body, frame(x, y, w, h, rgba));
  Append(&body, frame(0, 0, canvas_width, canvas_height, Pattern(canvas_width, canvas_height, 4, 99)));
  Bytes out;
  Append(&out, "RIFF");
  PutLe32(&out, static_cast<uint32_t>(body.size()));
  Append(&out, body);
  return out;
}

// A baseline JPEG's entropy decoding ahead of libjpeg (jpeg_entropy.h)
// against libjpeg's own: the same pixels, the same streamed preprocessing
// floats (rows skipped and columns cropped), the same errors. Taken for every
// clean sequential scan; never for a progressive one, one cut short, one with
// stray bytes before its end or restart markers out of order; a byte spoiled
// anywhere in a scan gives libjpeg's outcome either way.
namespace jpeg_paths {

// Returns whether the scan was decoded ahead.
bool Agree(const std::string& what, const Bytes& data) {
  const uint64_t before = clip::decode::JpegPredecodedScans();
  const fast_paths::Outcome ahead = fast_paths::Run(data, clip::decode::SetJpegPredecodeEnabled, true);
  const uint64_t predecoded = clip::decode::JpegPredecodedScans() - before;
  const fast_paths::Outcome libjpeg = fast_paths::Run(data, clip::decode::SetJpegPredecodeEnabled, false);
  Check(clip::decode::JpegPredecodedScans() - before == predecoded, what + ": the switch leaves every scan to libjpeg");
  fast_paths::Compare(what, "decoded ahead", ahead, "libjpeg", libjpeg);
  return predecoded != 0;
}

// The offset of the first byte of entropy-coded data (after SOS).
size_t ScanStart(const Bytes& jpeg) {
  for (size_t i = 2; i + 4 < jpeg.size();) {
    if (jpeg[i] != 0xFF) return 0;
    const int marker = jpeg[i + 1];
    const size_t length = (size_t{jpeg[i + 2]} << 8) | jpeg[i + 3];
    if (marker == 0xDA) return i + 2 + length;
    i += 2 + length;
  }
  return 0;
}

}  // namespace jpeg_paths

void TestJpegPredecode() {
  using jpeg_paths::Agree;
  struct Layout {
    const char* name;
    int components;
    int h_samp;
    int v_samp;
  };
  const Layout layouts[] = {{"4:4:4", 3, 1, 1}, {"4:2:0", 3, 2, 2}, {"4:2:2", 3, 2, 1},
                            {"4:4:0", 3, 1, 2}, {"grey", 1, 1, 1},  {"CMYK", 4, 1, 1}};
  const int sizes[][2] = {{1, 1}, {17, 13}, {64, 48}, {301, 203}, {203, 317}};
  for (const Layout& layout : layouts) {
    for (const auto& size : sizes) {
      for (int quality : {50, 90, 100}) {
        for (int restart : {0, 1, 5}) {
          JpegSpec spec;
          spec.width = size[0];
          spec.height = size[1];
          spec.components = layout.components;
          spec.h_samp = layout.h_samp;
          spec.v_samp = layout.v_samp;
          spec.quality = quality;
          spec.restart_interval = restart;
          spec.samples = Pattern(spec.width, spec.height, spec.components, 7 + quality + restart);
          const std::string what = std::string("JPEG decoded ahead: ") + layout.name + " " +
                                   std::to_string(spec.width) + "x" + std::to_string(spec.height) + " q" +
                                   std::to_string(quality) + " restart " + std::to_string(restart);
          const Bytes jpeg = EncodeJpeg(spec);
          Check(Agree(what, jpeg), what + ": decoded ahead");
          if (layout.components != 3 || quality != 90 || size[0] < 64) continue;

          // The same file spoiled: cut short, bytes changed in the scan, stray
          // bytes before EOI. Whatever libjpeg makes of each, so must the
          // decode ahead, which leaves every one of them to libjpeg but the
          // changes that still make a clean scan.
          const size_t start = jpeg_paths::ScanStart(jpeg);
          Check(start > 0 && start < jpeg.size() - 2, what + ": the scan found");
          if (start == 0 || start >= jpeg.size() - 2) continue;
          for (size_t cut : {start + 1, (start + jpeg.size()) / 2, jpeg.size() - 3, jpeg.size() - 2}) {
            const Bytes cut_short(jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(cut));
            Check(!Agree(what + " cut at " + std::to_string(cut), cut_short),
                  what + " cut at " + std::to_string(cut) + ": left to libjpeg");
          }
          Bytes stray = jpeg;
          stray.insert(stray.end() - 2, {0x12, 0x34});
          Check(!Agree(what + " with stray bytes before EOI", stray), what + " with stray bytes: left to libjpeg");
          std::mt19937 random(static_cast<uint32_t>(jpeg.size()));
          for (int trial = 0; trial < 24; ++trial) {
            Bytes spoiled = jpeg;
            const size_t at = start + random() % (jpeg.size() - 2 - start);
            spoiled[at] = static_cast<uint8_t>(trial % 3 == 0 ? 0xFF : random());
            if (trial % 4 == 1 && at + 1 < jpeg.size() - 2) spoiled[at + 1] = static_cast<uint8_t>(0xD0 + trial % 8);
            Agree(what + " changed at " + std::to_string(at), spoiled);
          }
        }
      }
    }
  }
  // A progressive JPEG and one whose restart markers are out of order.
  JpegSpec spec;
  spec.width = 120;
  spec.height = 90;
  spec.samples = Pattern(spec.width, spec.height, 3, 3);
  spec.progressive = true;
  Check(!Agree("JPEG progressive", EncodeJpeg(spec)), "JPEG progressive: left to libjpeg");
  spec.progressive = false;
  spec.restart_interval = 2;
  Bytes swapped = EncodeJpeg(spec);
  std::vector<size_t> markers;
  for (size_t i = jpeg_paths::ScanStart(swapped); i + 1 < swapped.size(); ++i) {
    if (swapped[i] == 0xFF && swapped[i + 1] >= 0xD0 && swapped[i + 1] <= 0xD7) markers.push_back(i + 1);
  }
  Check(markers.size() >= 2, "JPEG restart markers found");
  if (markers.size() >= 2) {
    std::swap(swapped[markers[0]], swapped[markers[1]]);
    Check(!Agree("JPEG restart markers swapped", swapped), "JPEG restart markers swapped: left to libjpeg");
  }
}

void TestWebp() {
  const int w = 21;
  const int h = 17;
  std::vector<uint8_t> rgba = Pattern(w, h, 4, 3);
  for (int i = 0; i < w * h; i += 4) rgba[i * 4 + 3] = 0;
  const Bytes lossless = EncodeWebpLossless(w, h, rgba, /*exact=*/true);
  CheckImage("WebP lossless with alpha drops alpha, keeps RGB", lossless, w, h,
             [&](int x, int y, int c) { return rgba[(y * w + x) * 4 + c]; });

  // Lossy: whatever libwebp's own RGB decoder yields.
  uint8_t* lossy = nullptr;
  const std::vector<uint8_t> rgb = Pattern(w, h, 3, 4);
  const size_t lossy_size = WebPEncodeRGB(rgb.data(), w, h, w * 3, 80, &lossy);
  const Bytes lossy_bytes(lossy, lossy + lossy_size);
  WebPFree(lossy);
  int dw = 0;
  int dh = 0;
  uint8_t* expected = WebPDecodeRGB(lossy_bytes.data(), lossy_bytes.size(), &dw, &dh);
  const std::vector<uint8_t> frame_rgba = Pattern(30, 20, 4, 6);
  CheckImage("WebP animation: frame 1 on a transparent black canvas", AnimatedWebp(60, 40, 10, 6, 30, 20, frame_rgba),
             60, 40, [&](int x, int y, int c) {
               const bool inside = x >= 10 && x < 40 && y >= 6 && y < 26;
               return inside ? frame_rgba[((y - 6) * 30 + (x - 10)) * 4 + c] : 0;
             });
  CheckImage("WebP lossy matches libwebp's RGB decode", lossy_bytes, w, h,
             [&](int x, int y, int c) { return expected[(y * w + x) * 3 + c]; });
  WebPFree(expected);
}

void TestGif() {
  const int w = 23;
  const int h = 19;
  std::mt19937 random(11);
  Bytes palette;
  for (int i = 0; i < 16 * 3; ++i) palette.push_back(random() % 256);
  GifSpec spec;
  spec.screen_width = w;
  spec.screen_height = h;
  spec.global_palette = palette;
  spec.width = w;
  spec.height = h;
  spec.indices.resize(w * h);
  for (auto& i : spec.indices) i = random() % 20;  // Some past the palette.
  auto index_at = [&](int x, int y) { return spec.indices[y * spec.width + x]; };
  auto color = [&](const Bytes& p, int index, int c) {
    return index * 3 < static_cast<int>(p.size()) ? p[index * 3 + c] : 0;
  };
  for (bool interlace : {false, true}) {
    spec.interlace = interlace;
    CheckImage(std::string("GIF palette lookup, black past the table") + (interlace ? " (interlaced)" : ""),
               EncodeGif(spec), w, h, [&](int x, int y, int c) { return color(palette, index_at(x, y), c); });
  }
  spec.interlace = false;

  // Frame 0 smaller than the logical screen: the rest is the transparency
  // index's colour, or index 0's without transparency.
  GifSpec small = spec;
  small.screen_width = w + 10;
  small.screen_height = h + 6;
  small.left = 4;
  small.top = 3;
  for (int transparency : {-1, 5}) {
    small.transparency = transparency;
    const int fill = transparency >= 0 ? transparency : 0;
    CheckImage("GIF frame 0 inside a larger screen, transparency " + std::to_string(transparency), EncodeGif(small),
               w + 10, h + 6, [&](int x, int y, int c) {
                 const bool inside = x >= 4 && x < 4 + w && y >= 3 && y < 3 + h;
                 return color(palette, inside ? index_at(x - 4, y - 3) : fill, c);
               });
  }
  // A frame reaching past the screen grows the canvas.
  GifSpec beyond = spec;
  beyond.screen_width = 10;
  beyond.screen_height = 8;
  beyond.left = 2;
  beyond.top = 1;
  CheckImage("GIF frame 0 past the screen grows the canvas", EncodeGif(beyond), w + 2, h + 1, [&](int x, int y, int c) {
    const bool inside = x >= 2 && y >= 1;
    return color(palette, inside ? index_at(x - 2, y - 1) : 0, c);
  });
  // A local table wins; a grey-ramp local table falls back to the global one
  // (Pillow reports mode L yet loads the global palette).
  GifSpec local = spec;
  for (int i = 0; i < 32 * 3; ++i) local.local_palette.push_back(random() % 256);
  CheckImage("GIF local colour table", EncodeGif(local), w, h,
             [&](int x, int y, int c) { return color(local.local_palette, index_at(x, y), c); });
  local.local_palette.clear();
  for (int i = 0; i < 32; ++i) {
    for (int c = 0; c < 3; ++c) local.local_palette.push_back(i);
  }
  CheckImage("GIF grey-ramp local table uses the global table", EncodeGif(local), w, h,
             [&](int x, int y, int c) { return color(palette, index_at(x, y), c); });
  GifSpec grey = spec;
  grey.global_palette = local.local_palette;
  CheckImage("GIF grey-ramp palette: index is the grey level", EncodeGif(grey), w, h,
             [&](int x, int y, int) { return index_at(x, y); });
}

void TestBmp() {
  const int w = 11;
  const int h = 7;
  const std::vector<uint8_t> rgba = Pattern(w, h, 4, 5);
  auto rgb = [&](int x, int y, int c) { return rgba[(y * w + x) * 4 + c]; };
  auto rows_of = [&](const std::function<Bytes(int, int)>& pixel) {
    std::vector<Bytes> rows;
    for (int y = 0; y < h; ++y) {
      Bytes row;
      for (int x = 0; x < w; ++x) Append(&row, pixel(x, y));
      rows.push_back(row);
    }
    return rows;
  };
  BmpSpec spec;
  spec.width = w;
  spec.height = h;
  spec.rows = rows_of([&](int x, int y) {
    return Bytes{static_cast<uint8_t>(rgb(x, y, 2)), static_cast<uint8_t>(rgb(x, y, 1)),
                 static_cast<uint8_t>(rgb(x, y, 0))};
  });
  for (bool top_down : {false, true}) {
    spec.top_down = top_down;
    CheckImage(std::string("BMP 24-bit ") + (top_down ? "top-down" : "bottom-up"), EncodeBmp(spec), w, h, rgb);
  }
  spec.top_down = false;
  spec.header_size = 12;
  CheckImage("BMP 24-bit OS/2 header", EncodeBmp(spec), w, h, rgb);
  spec.header_size = 40;

  spec.bits = 32;
  spec.rows = rows_of([&](int x, int y) {
    return Bytes{static_cast<uint8_t>(rgb(x, y, 2)), static_cast<uint8_t>(rgb(x, y, 1)),
                 static_cast<uint8_t>(rgb(x, y, 0)), static_cast<uint8_t>(rgb(x, y, 3))};
  });
  CheckImage("BMP 32-bit BI_RGB ignores the fourth byte", EncodeBmp(spec), w, h, rgb);
  spec.compression = 3;
  spec.header_size = 56;
  spec.masks = {0xFF0000, 0xFF00, 0xFF, 0xFF000000};
  CheckImage("BMP 32-bit BI_BITFIELDS BGRA", EncodeBmp(spec), w, h, rgb);
  spec.header_size = 40;
  spec.masks = {0xFF000000, 0xFF0000, 0xFF00};
  spec.rows = rows_of([&](int x, int y) {
    return Bytes{static_cast<uint8_t>(rgb(x, y, 3)), static_cast<uint8_t>(rgb(x, y, 2)),
                 static_cast<uint8_t>(rgb(x, y, 1)), static_cast<uint8_t>(rgb(x, y, 0))};
  });
  spec.top_down = true;
  CheckImage("BMP 32-bit BI_BITFIELDS XBGR (masks after a 40-byte header)", EncodeBmp(spec), w, h, rgb);
  spec.top_down = false;
  spec.header_size = 124;
  spec.masks = {0xFF, 0xFF00, 0xFF0000, 0xFF000000};
  spec.rows = rows_of([&](int x, int y) {
    return Bytes{static_cast<uint8_t>(rgb(x, y, 0)), static_cast<uint8_t>(rgb(x, y, 1)),
                 static_cast<uint8_t>(rgb(x, y, 2)), static_cast<uint8_t>(rgb(x, y, 3))};
  });
  CheckImage("BMP 32-bit BI_BITFIELDS RGBA (V5 header)", EncodeBmp(spec), w, h, rgb);
  spec.masks = {0xFF00, 0xFF, 0xFF0000, 0};
  ExpectError(ErrorCode::kUnsupportedImageFormat, "BMP bitfields layout Pillow refuses",
              [&] { Decode(EncodeBmp(spec)); });

  spec.bits = 16;
  spec.header_size = 40;
  spec.masks = {0xF800, 0x7E0, 0x1F};
  spec.rows = rows_of([&](int x, int y) {
    const int v = ((rgb(x, y, 0) >> 3) << 11) | ((rgb(x, y, 1) >> 2) << 5) | (rgb(x, y, 2) >> 3);
    return Bytes{static_cast<uint8_t>(v & 0xFF), static_cast<uint8_t>(v >> 8)};
  });
  CheckImage("BMP 16-bit 5-6-5 bitfields", EncodeBmp(spec), w, h, [&](int x, int y, int c) {
    const int bits = c == 1 ? 6 : 5;
    const int v = rgb(x, y, c) >> (8 - bits);
    return v * 255 / ((1 << bits) - 1);
  });
  spec.compression = 0;
  spec.masks.clear();
  spec.rows = rows_of([&](int x, int y) {
    const int v = ((rgb(x, y, 0) >> 3) << 10) | ((rgb(x, y, 1) >> 3) << 5) | (rgb(x, y, 2) >> 3);
    return Bytes{static_cast<uint8_t>(v & 0xFF), static_cast<uint8_t>(v >> 8)};
  });
  CheckImage("BMP 16-bit BI_RGB is 5-5-5", EncodeBmp(spec), w, h,
             [&](int x, int y, int c) { return (rgb(x, y, c) >> 3) * 255 / 31; });

  // Palettes.
  std::mt19937 random(9);
  Bytes palette;
  for (int i = 0; i < 12; ++i) {
    for (int c = 0; c < 3; ++c) palette.push_back(random() % 256);
    palette.push_back(0);
  }
  std::vector<int> indices(w * h);
  for (auto& i : indices) i = random() % 16;  // Some past the 12 entries.
  auto palette_color = [&](int index, int c) { return index < 12 ? palette[index * 4 + 2 - c] : 0; };
  spec.bits = 8;
  spec.palette = palette;
  spec.colors_used = 12;
  spec.rows = rows_of([&](int x, int y) { return Bytes{static_cast<uint8_t>(indices[y * w + x])}; });
  CheckImage("BMP 8-bit palette, black past the table", EncodeBmp(spec), w, h,
             [&](int x, int y, int c) { return palette_color(indices[y * w + x], c); });
  spec.bits = 4;
  spec.rows.clear();
  for (int y = 0; y < h; ++y) {
    Bytes row((w + 1) / 2, 0);
    for (int x = 0; x < w; ++x) {
      row[x / 2] |= indices[y * w + x] << ((x % 2) ? 0 : 4);
    }
    spec.rows.push_back(row);
  }
  CheckImage("BMP 4-bit palette", EncodeBmp(spec), w, h,
             [&](int x, int y, int c) { return palette_color(indices[y * w + x], c); });
  // An 8-bit grey ramp makes Pillow use mode L: indices are grey levels.
  spec.bits = 8;
  spec.palette.clear();
  for (int i = 0; i < 12; ++i) {
    for (int c = 0; c < 3; ++c) spec.palette.push_back(i);
    spec.palette.push_back(0);
  }
  spec.rows = rows_of([&](int x, int y) { return Bytes{static_cast<uint8_t>(indices[y * w + x])}; });
  CheckImage("BMP 8-bit grey-ramp palette", EncodeBmp(spec), w, h,
             [&](int x, int y, int) { return indices[y * w + x]; });
  spec.compression = 1;
  ExpectError(ErrorCode::kUnsupportedImageFormat, "BMP RLE8", [&] { Decode(EncodeBmp(spec)); });
}

// Pixel of the original image that lands at (x, y) after exif_transpose.
int OrientedSource(const RgbImage& original, int orientation, int x, int y, int c) {
  // PIL's exif_transpose methods, as (source x, source y) of output (x, y):
  // 2 mirror, 3 rotate 180, 4 flip, 5 transpose, 6 rotate 90 clockwise,
  // 7 transverse, 8 rotate 90 counter-clockwise.
  const int w = original.width;
  const int h = original.height;
  const int sources[9][2] = {{x, y}, {x, y},         {w - 1 - x, y},         {w - 1 - x, h - 1 - y}, {x, h - 1 - y},
                             {y, x}, {y, h - 1 - x}, {w - 1 - y, h - 1 - x}, {w - 1 - y, x}};
  const int* source = sources[orientation];
  return At(original, source[0], source[1], c);
}

void TestExifOrientationAt(int w, int h);
void TestExifContainers();

void TestExifOrientation() {
  // Sizes that fill blocks of 16 output rows exactly and partly.
  for (const auto [w, h] : {std::pair<int, int>{24, 16}, std::pair<int, int>{37, 41}}) {
    TestExifOrientationAt(w, h);
  }
  TestExifContainers();
}

void TestExifOrientationAt(int w, int h) {
  JpegSpec jpeg;
  jpeg.width = w;
  jpeg.height = h;
  jpeg.samples = Pattern(w, h, 3, 21);
  PngSpec png;
  png.width = w;
  png.height = h;
  const std::vector<uint8_t> rgb = Pattern(w, h, 3, 22);
  png.samples.assign(rgb.begin(), rgb.end());
  ImageDecodeOptions apply;
  apply.apply_exif_orientation = true;

  for (int orientation = 1; orientation <= 8; ++orientation) {
    const bool big_endian = orientation % 2 == 0;
    Bytes app1;
    Append(&app1, "Exif");
    app1.push_back(0);
    app1.push_back(0);
    Append(&app1, ExifTiff(orientation, big_endian));
    jpeg.app1 = app1;
    png.exif = ExifTiff(orientation, !big_endian);
    const std::pair<std::string, Bytes> inputs[] = {{"JPEG", EncodeJpeg(jpeg)}, {"PNG eXIf", EncodePng(png)}};
    for (const auto& [label, data] : inputs) {
      const std::string what = label + " EXIF orientation " + std::to_string(orientation);
      const RgbImage plain = DecodeOrFail(data, what);
      const RgbImage oriented = DecodeOrFail(data, what, apply);
      if (plain.pixels.empty() || oriented.pixels.empty()) continue;
      Check(plain.width == w && plain.height == h, what + ": ignored unless apply_exif_orientation is set");
      const bool swaps = orientation >= 5;
      std::string difference;
      const bool equal = ImageEquals(
          oriented, swaps ? h : w, swaps ? w : h,
          [&](int x, int y, int c) { return OrientedSource(plain, orientation, x, y, c); }, &difference);
      Check(equal, what + ": " + difference);
    }
  }
}

void TestExifContainers() {
  const int w = 24;
  const int h = 16;
  ImageDecodeOptions apply;
  apply.apply_exif_orientation = true;
  // WebP keeps EXIF in an extended (VP8X) container.
  const std::vector<uint8_t> rgba = Pattern(w, h, 4, 23);
  const Bytes simple = EncodeWebpLossless(w, h, rgba, true);
  Bytes exif;
  Append(&exif, ExifTiff(6, false));
  Bytes chunks;
  Append(&chunks, "VP8X");
  PutLe32(&chunks, 10);
  const Bytes vp8x = {0x08,
                      0,
                      0,
                      0,  // EXIF flag.
                      static_cast<uint8_t>(w - 1),
                      0,
                      0,
                      static_cast<uint8_t>(h - 1),
                      0,
                      0};
  Append(&chunks, vp8x);
  chunks.insert(chunks.end(), simple.begin() + 12, simple.end());
  Append(&chunks, "EXIF");
  PutLe32(&chunks, static_cast<uint32_t>(exif.size()));
  Append(&chunks, exif);
  if (exif.size() % 2) chunks.push_back(0);
  Bytes webp;
  Append(&webp, "RIFF");
  PutLe32(&webp, static_cast<uint32_t>(chunks.size() + 4));
  Append(&webp, "WEBP");
  Append(&webp, chunks);
  const RgbImage plain = DecodeOrFail(webp, "WebP EXIF");
  const RgbImage oriented = DecodeOrFail(webp, "WebP EXIF", apply);
  if (!plain.pixels.empty() && !oriented.pixels.empty()) {
    std::string difference;
    const bool equal = ImageEquals(
        oriented, h, w, [&](int x, int y, int c) { return OrientedSource(plain, 6, x, y, c); }, &difference);
    Check(equal, "WebP EXIF orientation 6: " + difference);
  }
}

void TestErrors() {
  ExpectError(ErrorCode::kImageDecodeFailed, "zero-length data", [] {
    const uint8_t byte = 0;
    clip::DecodeImage(&byte, 0, {});
  });
  ExpectError(ErrorCode::kImageDecodeFailed, "null data", [] { clip::DecodeImage(nullptr, 0, {}); });
  ExpectError(ErrorCode::kUnsupportedImageFormat, "unknown bytes", [] {
    Decode(Bytes{'h', 'e', 'l', 'l', 'o', ' ', 'w', 'o', 'r', 'l', 'd'});
  });
  ExpectError(ErrorCode::kUnsupportedImageFormat, "TIFF is not supported", [] {
    Decode(Bytes{'I', 'I', 42, 0, 8, 0, 0, 0, 0, 0});
  });

  // Valid images of every format, then damaged copies of them.
  const int w = 40;
  const int h = 30;
  const std::vector<uint8_t> rgb = Pattern(w, h, 3, 31);
  std::vector<uint8_t> rgba = Pattern(w, h, 4, 32);
  JpegSpec jpeg;
  jpeg.width = w;
  jpeg.height = h;
  jpeg.samples = rgb;
  GifSpec gif;
  gif.screen_width = gif.width = w;
  gif.screen_height = gif.height = h;
  for (int i = 0; i < 256 * 3; ++i) gif.global_palette.push_back(i * 7 % 256);
  gif.indices.resize(w * h);
  for (int i = 0; i < w * h; ++i) gif.indices[i] = rgb[i * 3];
  BmpSpec bmp;
  bmp.width = w;
  bmp.height = h;
  for (int y = 0; y < h; ++y) {
    bmp.rows.emplace_back(rgb.begin() + y * w * 3, rgb.begin() + (y + 1) * w * 3);
  }
  const std::pair<std::string, Bytes> valid[] = {
      {"PNG", EncodeRgbPng(w, h, rgb)}, {"JPEG", EncodeJpeg(jpeg)}, {"WebP", EncodeWebpLossless(w, h, rgba, false)},
      {"GIF", EncodeGif(gif)},          {"BMP", EncodeBmp(bmp)},
  };
  for (const auto& [format, data] : valid) {
    Check(!DecodeOrFail(data, format + " valid input").pixels.empty(), format + " valid input decodes");
    for (size_t keep : {data.size() / 2, data.size() * 3 / 4, size_t{20}}) {
      const Bytes truncated(data.begin(), data.begin() + keep);
      ExpectError(ErrorCode::kImageDecodeFailed, format + " truncated to " + std::to_string(keep) + " bytes",
                  [&] { Decode(truncated); });
    }
  }
  // Corrupt: the magic is right, the rest is garbage.
  std::mt19937 random(41);
  for (const auto& [format, data] : valid) {
    Bytes corrupt = data;
    const size_t keep = format == "WebP" ? 12 : format == "PNG" ? 8 : format == "GIF" ? 6 : format == "BMP" ? 2 : 3;
    for (size_t i = keep; i < corrupt.size(); ++i) corrupt[i] = random() % 256;
    if (format == "WebP") {
      // A RIFF size that matches, so only the payload is wrong.
      for (int i = 0; i < 4; ++i) corrupt[4 + i] = data[4 + i];
    }
    ExpectError(ErrorCode::kImageDecodeFailed, format + " corrupt payload", [&] { Decode(corrupt); });
  }
  {
    // PNG whose IDAT is not a zlib stream.
    Bytes png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
    Append(&png, IhdrChunk(4, 4, 8, 2));
    Append(&png, PngChunk("IDAT", Bytes(30, 0xAB)));
    Append(&png, PngChunk("IEND", {}));
    ExpectError(ErrorCode::kImageDecodeFailed, "PNG with a corrupt IDAT", [&] { Decode(png); });
    // A bad CRC before IDAT fails in Pillow too.
    Bytes bad_crc = EncodeRgbPng(4, 4, Pattern(4, 4, 3, 1));
    bad_crc[29] ^= 0xFF;  // Last byte of IHDR's CRC.
    ExpectError(ErrorCode::kImageDecodeFailed, "PNG with a bad IHDR CRC", [&] { Decode(bad_crc); });
  }
  {
    // JPEG missing only its EOI marker: Pillow reports it truncated.
    const Bytes& data = valid[1].second;
    const Bytes no_eoi(data.begin(), data.end() - 2);
    ExpectError(ErrorCode::kImageDecodeFailed, "JPEG without EOI", [&] { Decode(no_eoi); });
  }
}

void TestSizeLimits() {
  // IHDR claiming 30000x30000 (900 Mpx) with a 1-byte IDAT.
  Bytes png = {0x89, 'P', 'N', 'G', '\r', '\n', 0x1A, '\n'};
  Append(&png, IhdrChunk(30000, 30000, 8, 2));
  Append(&png, PngChunk("IDAT", Bytes{0}));
  Append(&png, PngChunk("IEND", {}));
  g_largest_allocation = 0;
  const uint64_t mappings_before = clip::HugeBlockMappings();
  // The fastest of three: a machine busy with other work may stall one call.
  double ms = 1e9;
  for (int run = 0; run < 3; ++run) {
    const auto start = std::chrono::steady_clock::now();
    ExpectError(ErrorCode::kImageTooLarge, "PNG IHDR 30000x30000", [&] { Decode(png); });
    ms = std::min(ms, std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count());
  }
  Check(ms < 50, "PNG 30000x30000 rejected in " + std::to_string(ms) + " ms (limit 50)");
  Check(g_largest_allocation < (1 << 20), "PNG 30000x30000 rejected without a large allocation (largest " +
                                              std::to_string(g_largest_allocation.load()) + " bytes)");

  // The same claim in the other containers that carry a size up front.
  Bytes gif = {'G', 'I', 'F', '8', '9', 'a'};
  PutLe16(&gif, 30000);
  PutLe16(&gif, 30000);
  const Bytes gif_rest = {0x00, 0, 0, ',', 0, 0, 0, 0, 1, 0, 1, 0, 0, 2, 2, 0x4C, 0x01, 0, ';'};
  Append(&gif, gif_rest);
  BmpSpec bmp_spec;
  bmp_spec.width = 1;
  bmp_spec.height = 1;
  bmp_spec.rows = {Bytes{1, 2, 3}};
  Bytes bmp = EncodeBmp(bmp_spec);
  for (int i = 0; i < 4; ++i) {
    bmp[18 + i] = (30000 >> (8 * i)) & 0xFF;
    bmp[22 + i] = (30000 >> (8 * i)) & 0xFF;
  }
  Bytes bmp_negative = bmp;  // Width 0xFFFFFFF0: an unsigned 4-billion wide.
  for (int i = 0; i < 4; ++i) bmp_negative[18 + i] = i ? 0xFF : 0xF0;
  JpegSpec jpeg_spec;
  jpeg_spec.width = 16;
  jpeg_spec.height = 16;
  jpeg_spec.samples = Pattern(16, 16, 3, 2);
  Bytes jpeg = EncodeJpeg(jpeg_spec);
  for (size_t i = 2; i + 8 < jpeg.size(); ++i) {
    if (jpeg[i] == 0xFF && jpeg[i + 1] == 0xC0) {  // SOF0: height, width.
      jpeg[i + 5] = jpeg[i + 7] = 30000 >> 8;
      jpeg[i + 6] = jpeg[i + 8] = 30000 & 0xFF;
      break;
    }
  }
  const std::pair<std::string, Bytes> claims[] = {
      {"GIF", gif}, {"BMP", bmp}, {"BMP huge width", bmp_negative}, {"JPEG", jpeg}};
  // Named copies of the bindings: C++17 lambdas cannot capture structured
  // bindings (clang refuses; the sanitizer build uses clang).
  for (const auto& claim : claims) {
    const std::string& label = claim.first;
    const Bytes& data = claim.second;
    g_largest_allocation = 0;
    ExpectError(ErrorCode::kImageTooLarge, label + " claiming 30000x30000", [&] { Decode(data); });
    Check(g_largest_allocation < (1 << 20), label + " rejected without a large allocation");
  }
  // Pixel buffers of 32 MiB and up are mapped, not allocated by operator new.
  Check(clip::HugeBlockMappings() == mappings_before, "30000x30000 claims rejected without a mapped block");

  // max_pixels applies to every decoder.
  const int w = 20;
  const int h = 10;
  const std::vector<uint8_t> rgb = Pattern(w, h, 3, 51);
  JpegSpec jpeg_small;
  jpeg_small.width = w;
  jpeg_small.height = h;
  jpeg_small.samples = rgb;
  GifSpec gif_small;
  gif_small.screen_width = gif_small.width = w;
  gif_small.screen_height = gif_small.height = h;
  gif_small.indices.assign(w * h, 1);
  gif_small.global_palette.assign(6, 9);
  BmpSpec bmp_small;
  bmp_small.width = w;
  bmp_small.height = h;
  for (int y = 0; y < h; ++y) {
    bmp_small.rows.emplace_back(rgb.begin() + y * w * 3, rgb.begin() + (y + 1) * w * 3);
  }
  const std::pair<std::string, Bytes> small[] = {
      {"PNG", EncodeRgbPng(w, h, rgb)},
      {"JPEG", EncodeJpeg(jpeg_small)},
      {"WebP", EncodeWebpLossless(w, h, Pattern(w, h, 4, 52), false)},
      {"GIF", EncodeGif(gif_small)},
      {"BMP", EncodeBmp(bmp_small)},
  };
  for (const auto& entry : small) {
    const std::string& label = entry.first;
    const Bytes& data = entry.second;
    ImageDecodeOptions limit;
    limit.max_pixels = w * h - 1;
    ExpectError(ErrorCode::kImageTooLarge, label + " over max_pixels", [&] { Decode(data, limit); });
    limit.max_pixels = w * h;
    try {
      Check(Decode(data, limit).width == w, label + " at exactly max_pixels");
    } catch (const std::exception& error) {
      Check(false, label + " at exactly max_pixels threw " + error.what());
    }
  }
}

// Resident bytes of this process (/proc/self/statm), 0 where unknown.
size_t ResidentBytes() {
  std::ifstream statm("/proc/self/statm");
  size_t pages = 0;
  size_t resident = 0;
  if (!(statm >> pages >> resident)) return 0;
  return resident * 4096;
}

// Pixel buffers: zeroed; 32 MiB and up mapped on a 2 MiB boundary and not
// touched by the vector that holds them; a large image decodes into one.
void TestPixelBuffers() {
  clip::PixelBuffer small(1000);
  Check(std::all_of(small.begin(), small.end(), [](uint8_t v) { return v == 0; }), "pixel buffer: small ones zeroed");
  small.resize(300000);
  Check(std::all_of(small.begin() + 1000, small.end(), [](uint8_t v) { return v == 0; }),
        "pixel buffer: a small one grows with zeros");
  if (!clip::HugeBlocksSupported()) {
    std::printf("skip: pixel buffers are not mapped on this platform\n");
    return;
  }
  const uint64_t mappings = clip::HugeBlockMappings();
  const size_t before = ResidentBytes();
  clip::PixelBuffer large;
  large.resize(clip::kMinMappedImageBytes + 12345);
  const size_t grown = ResidentBytes() - before;
  Check(clip::HugeBlockMappings() == mappings + 1, "pixel buffer: 32 MiB and up mapped by MapHugeBlock");
  Check(reinterpret_cast<uintptr_t>(large.data()) % clip::kHugePageBytes == 0,
        "pixel buffer: a mapped one starts on a 2 MiB boundary");
  Check(before == 0 || grown < (size_t{8} << 20),
        "pixel buffer: resizing a mapped one writes nothing (" + std::to_string(grown >> 20) + " MiB resident more)");
  bool zero = true;
  for (size_t i = 0; i < large.size(); i += 4093) zero = zero && large[i] == 0;
  Check(zero && large.back() == 0, "pixel buffer: a mapped one reads zero");
  large.back() = 7;
  Check(large.back() == 7, "pixel buffer: the last byte of a mapped one is writable");
  clip::PixelBuffer().swap(large);
  Check(clip::PixelBuffer(clip::kMinMappedImageBytes - 1).size() == clip::kMinMappedImageBytes - 1 &&
            clip::HugeBlockMappings() == mappings + 1,
        "pixel buffer: below 32 MiB not mapped");

  // 3200x3500 RGB is 33.6 MB: DecodeImage's pixels and the EXIF path's whole
  // image are mapped buffers.
  JpegSpec spec;
  spec.width = 3200;
  spec.height = 3500;
  spec.samples.assign(static_cast<size_t>(spec.width) * spec.height * 3, 90);
  const Bytes jpeg = EncodeJpeg(spec);
  const uint64_t before_decode = clip::HugeBlockMappings();
  const RgbImage image = DecodeOrFail(jpeg, "JPEG 3200x3500");
  Check(clip::HugeBlockMappings() == before_decode + 1 &&
            reinterpret_cast<uintptr_t>(image.pixels.data()) % clip::kHugePageBytes == 0,
        "pixel buffer: a 3200x3500 image decodes into a mapped buffer");
  Check(!image.pixels.empty() && std::abs(image.pixels[image.pixels.size() / 2] - 90) <= 2,
        "pixel buffer: a 3200x3500 image decodes to its pixels");
}

// The buffers a thread keeps between images (huge_pages.h): the same memory
// lease after lease up to kKeepBytes, memory of its own for a lease of a slot
// already leased, other memory on another thread, and nothing kept above
// kKeepBytes.
void TestThreadScratch() {
  using clip::ScratchSlot;
  using clip::ThreadScratch;
  constexpr size_t kMiB = size_t{1} << 20;
  uint8_t* first = nullptr;
  {
    ThreadScratch lease(ScratchSlot::kDecodedRows);
    first = lease.Get(kMiB);
    Check(first != nullptr, "thread scratch: 1 MiB");
    std::memset(first, 0xA5, kMiB);
    Check(lease.Get(1000) == first, "thread scratch: a smaller request in one lease gets the same memory");
    {
      ThreadScratch nested(ScratchSlot::kDecodedRows);
      uint8_t* own = nested.Get(kMiB);
      Check(own != nullptr && own != first, "thread scratch: a second lease of a leased slot gets memory of its own");
      if (own) std::memset(own, 0x11, kMiB);
    }
    Check(first[kMiB / 2] == 0xA5, "thread scratch: the nested lease left the slot's buffer alone");
    ThreadScratch other_slot(ScratchSlot::kResizeRows);
    Check(other_slot.Get(kMiB) != first, "thread scratch: another slot, another buffer");
  }
  {
    ThreadScratch lease(ScratchSlot::kDecodedRows);
    Check(lease.Get(kMiB) == first && first[kMiB - 1] == 0xA5, "thread scratch: the next lease gets the kept buffer");
    bool distinct = false;
    std::thread([&] {
      ThreadScratch there(ScratchSlot::kDecodedRows);
      uint8_t* p = there.Get(kMiB);
      distinct = p != nullptr && p != first;
    }).join();
    Check(distinct, "thread scratch: another thread gets other memory");
    uint8_t* largest_kept = lease.Get(ThreadScratch::kKeepBytes);
    Check(largest_kept != nullptr, "thread scratch: kKeepBytes");
    first = largest_kept;
  }
  {
    ThreadScratch lease(ScratchSlot::kDecodedRows);
    Check(lease.Get(ThreadScratch::kKeepBytes) == first, "thread scratch: a buffer of kKeepBytes is kept");
  }
  if (clip::HugeBlocksSupported()) {
    const uint64_t mappings = clip::HugeBlockMappings();
    for (int i = 0; i < 2; ++i) {
      ThreadScratch lease(ScratchSlot::kDecodedRows);
      uint8_t* p = lease.Get(clip::kMinMappedImageBytes);
      Check(p != nullptr && reinterpret_cast<uintptr_t>(p) % clip::kHugePageBytes == 0,
            "thread scratch: 32 MiB on huge pages");
    }
    Check(clip::HugeBlockMappings() == mappings + 2,
          "thread scratch: a buffer above kKeepBytes is freed with its lease");
  }
}

// PreprocessImage decodes a JPEG only where the crop's filter taps read (and
// a margin); every output value must equal that of the whole image decoded
// and then preprocessed.
void TestJpegRegions() {
  struct Shape {
    int width;
    int height;
    bool rows_skipped;
    bool columns_cropped;  // Where the JPEG has one scan (progressive ones decode every column).
  };
  // Portrait (rows skipped), landscape (columns cropped), odd sizes, a square
  // (nothing left out), an upscale and extreme aspect ratios.
  const Shape shapes[] = {{640, 480, false, true},  {480, 640, true, false},  {333, 250, false, true},
                          {250, 333, true, false},  {1000, 300, false, true}, {300, 1000, true, false},
                          {230, 230, false, false}, {100, 50, false, true},   {17, 900, true, false},
                          {900, 17, false, true},   {2000, 1500, false, true}};
  struct Variant {
    const char* name;
    int components;
    int h_samp;
    int v_samp;
    bool progressive;
    int restart_interval;
    bool first_scan_only = false;  // The rest of the scans cut: AC coefficients unknown, smoothed.
  };
  const Variant variants[] = {{"4:4:4", 3, 1, 1, false, 0},
                              {"4:2:0", 3, 2, 2, false, 0},
                              {"4:2:2", 3, 2, 1, false, 0},
                              {"4:4:0", 3, 1, 2, false, 0},
                              {"4:2:0 progressive", 3, 2, 2, true, 0},
                              {"4:2:0 progressive, first scan only", 3, 2, 2, true, 0, true},
                              {"4:2:0 restarts", 3, 2, 2, false, 3},
                              {"grey", 1, 1, 1, false, 0},
                              {"CMYK", 4, 1, 1, false, 0}};
  const PreprocessOptions options;
  std::vector<float> whole(clip::PreprocessedSize(options));
  std::vector<float> region(whole.size());
  std::mt19937 random(91);
  for (const Shape& shape : shapes) {
    for (const Variant& variant : variants) {
      if (shape.width * shape.height > 1000000 && std::string(variant.name) != "4:2:0") continue;
      JpegSpec spec;
      spec.width = shape.width;
      spec.height = shape.height;
      spec.components = variant.components;
      spec.h_samp = variant.h_samp;
      spec.v_samp = variant.v_samp;
      spec.progressive = variant.progressive;
      spec.restart_interval = variant.restart_interval;
      spec.quality = 90;
      // Smooth gradients plus noise: chroma that changes between pixels.
      spec.samples.resize(static_cast<size_t>(shape.width) * shape.height * variant.components);
      for (int y = 0; y < shape.height; ++y) {
        for (int x = 0; x < shape.width; ++x) {
          for (int c = 0; c < variant.components; ++c) {
            const int v = (x * (3 + c) + y * (5 - c)) % 256 + static_cast<int>(random() % 40) - 20;
            spec.samples[(static_cast<size_t>(y) * shape.width + x) * variant.components + c] =
                static_cast<uint8_t>(std::clamp(v, 0, 255));
          }
        }
      }
      Bytes jpeg = EncodeJpeg(spec);
      if (variant.first_scan_only) {
        // Up to the second SOS marker, then EOI (markers never occur inside entropy-coded data).
        size_t sos = 0;
        for (size_t i = 0; i + 1 < jpeg.size(); ++i) {
          if (jpeg[i] == 0xFF && jpeg[i + 1] == 0xDA && sos++ == 1) {
            jpeg.resize(i);
            break;
          }
        }
        jpeg.push_back(0xFF);
        jpeg.push_back(0xD9);
      }
      const std::string what = std::string("JPEG region ") + variant.name + " " + std::to_string(shape.width) + "x" +
                               std::to_string(shape.height);
      for (const bool forced : {false, true}) {
        // Forced: every baseline JPEG also split over two threads.
        clip::decode::SetSplitDecodesForced(forced);
        const std::string how = what + (forced ? ", split" : "");
        const uint64_t before = clip::decode::JpegRegionDecodes();
        const uint64_t splits = clip::decode::JpegSplitDecodes();
        try {
          clip::PreprocessRgb(Decode(jpeg), options, whole.data());
          clip::PreprocessImage(jpeg.data(), jpeg.size(), ImageDecodeOptions(), options, region.data());
        } catch (const std::exception& error) {
          Check(false, how + " threw " + error.what());
          continue;
        }
        Check(whole == region, how + ": the same values as the whole image");
        const bool partial = shape.rows_skipped || (shape.columns_cropped && !variant.progressive);
        Check(clip::decode::JpegRegionDecodes() == before + (partial ? 1 : 0),
              how + (partial ? ": decoded in part" : ": decoded whole"));
        // Unforced, only the image of over a megapixel splits; forced, every
        // baseline image with rows enough for two parts of an iMCU row each.
        const bool large = shape.width * shape.height > 1000000;
        const bool tall_enough = shape.height >= 64 || (shape.height >= 32 && variant.v_samp == 1);
        if (!variant.progressive && (forced ? tall_enough && shape.width <= shape.height * 4 : large)) {
          Check(clip::decode::JpegSplitDecodes() == splits + 1, how + ": decoded on two threads");
        } else if (variant.progressive || (!forced && !large)) {
          Check(clip::decode::JpegSplitDecodes() == splits, how + ": decoded on one thread");
        }
      }
      clip::decode::SetSplitDecodesForced(false);
    }
  }

  // A file cut short in rows below the region, and one without its EOI
  // marker, fail as a whole decode does (Pillow: truncated).
  JpegSpec tall;
  tall.width = 300;
  tall.height = 1000;
  tall.h_samp = tall.v_samp = 2;
  tall.samples = Pattern(tall.width, tall.height, 3, 93);
  const Bytes jpeg = EncodeJpeg(tall);
  const Bytes cut(jpeg.begin(), jpeg.begin() + static_cast<std::ptrdiff_t>(jpeg.size() * 95 / 100));
  const Bytes no_eoi(jpeg.begin(), jpeg.end() - 2);
  for (const auto& entry : {std::pair<std::string, const Bytes*>{"cut below the region", &cut},
                            std::pair<std::string, const Bytes*>{"without EOI", &no_eoi}}) {
    const std::string& name = entry.first;
    const Bytes* data = entry.second;
    ExpectError(ErrorCode::kImageDecodeFailed, "JPEG " + name + ", decoded whole", [&] { Decode(*data); });
    ExpectError(ErrorCode::kImageDecodeFailed, "JPEG " + name + ", preprocessed", [&] {
      clip::PreprocessImage(data->data(), data->size(), ImageDecodeOptions(), options, region.data());
    });
  }

  // Split over two threads, a file cut short in either part, one without
  // EOI and one whose data is damaged in either part: the same verdict, and
  // the same message, as a whole decode (values too, where it decodes).
  JpegSpec square;
  square.width = 600;
  square.height = 600;
  square.h_samp = square.v_samp = 2;
  square.restart_interval = 0;
  square.samples = Pattern(square.width, square.height, 3, 94);
  const Bytes good = EncodeJpeg(square);
  const size_t header = 700;  // past the markers: into the scan's data
  auto damaged = [&](double where) {
    Bytes bytes = good;
    const size_t at = header + static_cast<size_t>((good.size() - header) * where);
    for (size_t i = at; i < at + 40 && i + 2 < bytes.size(); ++i) bytes[i] = static_cast<uint8_t>(bytes[i] * 7 + 13);
    return bytes;
  };
  const std::pair<std::string, Bytes> broken[] = {
      {"cut in the upper part", Bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(good.size() / 3))},
      {"cut in the lower part", Bytes(good.begin(), good.begin() + static_cast<std::ptrdiff_t>(good.size() * 9 / 10))},
      {"without EOI", Bytes(good.begin(), good.end() - 2)},
      {"damaged in the upper part", damaged(0.3)},
      {"damaged in the lower part", damaged(0.9)},
  };
  clip::decode::SetSplitDecodesForced(true);
  for (const auto& [name, bytes] : broken) {
    std::string expected = "(decoded)";
    try {
      clip::PreprocessRgb(Decode(bytes), options, whole.data());
    } catch (const ClipError& error) {
      expected = error.what();
    }
    std::string actual = "(decoded)";
    const uint64_t splits = clip::decode::JpegSplitDecodes();
    try {
      clip::PreprocessImage(bytes.data(), bytes.size(), ImageDecodeOptions(), options, region.data());
    } catch (const ClipError& error) {
      actual = error.what();
    }
    Check(clip::decode::JpegSplitDecodes() == splits + 1, "JPEG split, " + name + ": decoded on two threads");
    Check(actual == expected,
          "JPEG split, " + name + ": \"" + actual + "\" where a whole decode gives \"" + expected + "\"");
    if (expected == "(decoded)") Check(whole == region, "JPEG split, " + name + ": the same values");
  }
  clip::decode::SetSplitDecodesForced(false);
}

void TestPreprocessing() {
  const PreprocessOptions defaults;
  auto normalized = [&](int c, int v) {
    const float rescaled = static_cast<float>(v * 0.00392156862745098);
    return (rescaled - defaults.mean[c]) / defaults.std[c];
  };
  // Rescale + normalize: all 256 levels, bit for bit (HF's float64 rescale,
  // float32 normalize), through the no-resize path.
  {
    RgbImage image;
    image.width = image.height = 224;
    image.pixels.resize(224 * 224 * 3);
    for (size_t i = 0; i < image.pixels.size(); ++i) {
      image.pixels[i] = static_cast<uint8_t>((i / 3) % 256);
    }
    const std::vector<float> out = Preprocess(image);
    bool exact = true;
    for (int c = 0; c < 3 && exact; ++c) {
      for (int i = 0; i < 224 * 224 && exact; ++i) {
        const float want = normalized(c, i % 256);
        exact = std::memcmp(&out[c * 224 * 224 + i], &want, sizeof(float)) == 0;
      }
    }
    Check(exact, "224x224: no resize, exact rescale and normalize, CHW order");
  }

  // 1x100000: resized to 224x22400000 of which only the crop is computed.
  {
    const int h = 100000;
    PngSpec spec;
    spec.width = 1;
    spec.height = h;
    spec.samples.resize(static_cast<size_t>(h) * 3);
    for (int y = 0; y < h; ++y) {
      spec.samples[y * 3 + 0] = 77;
      spec.samples[y * 3 + 1] = y % 256;
      spec.samples[y * 3 + 2] = (y / 391) % 256;
    }
    const Bytes png = EncodePng(spec);
    std::vector<float> out(3 * 224 * 224);
    const auto start = std::chrono::steady_clock::now();
    try {
      clip::PreprocessImage(png.data(), png.size(), {}, {}, out.data());
      const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
      Check(ms < 2000, "1x100000 PNG preprocessed in " + std::to_string(ms) + " ms (limit 2000)");
      bool constant = true;
      for (int i = 0; i < 224 * 224; ++i) {
        constant = constant && out[i] == normalized(0, 77);
      }
      Check(constant, "1x100000 PNG: a constant channel stays constant");
      // Rows 11199888.. of 22400000 come from source rows near 49999.5; the
      // green channel there is y % 256 upscaled 224x, so each output row is
      // the same across x.
      bool rows_uniform = true;
      for (int y = 0; y < 224; ++y) {
        for (int x = 1; x < 224; ++x) {
          rows_uniform = rows_uniform && out[224 * 224 + y * 224 + x] == out[224 * 224 + y * 224];
        }
      }
      Check(rows_uniform, "1x100000 PNG: rows are uniform across x");
    } catch (const std::exception& error) {
      Check(false, std::string("1x100000 PNG threw ") + error.what());
    }
  }

  // Windowed resampling against the plain full-image reference, across
  // shapes that exercise upscaling, downscaling, one-axis no-ops, odd crop
  // offsets, padding (crop larger than the resized image) and the scalar
  // path (more than 1024 taps).
  struct Shape {
    int width;
    int height;
    int size;
    int crop;
  };
  const Shape shapes[] = {
      {1, 1, 224, 224},     {3, 5, 224, 224},     {5, 3, 224, 224},     {225, 300, 224, 224}, {300, 224, 224, 224},
      {224, 300, 224, 224}, {301, 250, 224, 224}, {1000, 20, 224, 224}, {640, 427, 224, 224}, {97, 1021, 224, 224},
      {451, 300, 224, 224}, {50, 40, 32, 48},     {40, 50, 30, 31},     {700, 500, 1, 1},     {2500, 1300, 2, 3},
      {333, 222, 336, 336}, {200, 200, 224, 256}, {2, 300, 224, 224},   {60, 3000, 224, 224},
  };
  std::mt19937 random(61);
  for (const Shape& shape : shapes) {
    RgbImage image;
    image.width = shape.width;
    image.height = shape.height;
    image.pixels.resize(static_cast<size_t>(shape.width) * shape.height * 3);
    for (auto& p : image.pixels) p = random() % 256;
    PreprocessOptions options;
    options.resize_shortest_edge = shape.size;
    options.crop_size = shape.crop;
    const std::string what = "resample " + std::to_string(shape.width) + "x" + std::to_string(shape.height) + " size " +
                             std::to_string(shape.size) + " crop " + std::to_string(shape.crop);
    try {
      Check(SameFloats(Preprocess(image, options), ReferencePreprocess(image, options)),
            what + " equals the full-image reference");
    } catch (const std::exception& error) {
      Check(false, what + " threw " + error.what());
    }
  }

  // Bad arguments.
  RgbImage image;
  image.width = image.height = 2;
  image.pixels.assign(12, 0);
  std::vector<float> out(3 * 224 * 224);
  auto with = [&](const std::function<void(PreprocessOptions*)>& change) {
    PreprocessOptions options;
    change(&options);
    return options;
  };
  const std::pair<std::string, PreprocessOptions> bad[] = {
      {"crop_size 0", with([](PreprocessOptions* o) { o->crop_size = 0; })},
      {"resize_shortest_edge -1", with([](PreprocessOptions* o) { o->resize_shortest_edge = -1; })},
      {"std 0", with([](PreprocessOptions* o) { o->std[1] = 0; })},
      {"mean NaN", with([](PreprocessOptions* o) { o->mean[2] = NAN; })},
  };
  for (const auto& entry : bad) {
    const std::string& label = entry.first;
    const PreprocessOptions& options = entry.second;
    ExpectError(ErrorCode::kInvalidArgument, "PreprocessRgb " + label,
                [&] { clip::PreprocessRgb(image, options, out.data()); });
  }
  RgbImage empty;
  ExpectError(ErrorCode::kInvalidArgument, "PreprocessRgb empty image",
              [&] { clip::PreprocessRgb(empty, {}, out.data()); });
  RgbImage inconsistent;
  inconsistent.width = 3;
  inconsistent.height = 3;
  inconsistent.pixels.assign(5, 0);
  ExpectError(ErrorCode::kInvalidArgument, "PreprocessRgb short pixel buffer",
              [&] { clip::PreprocessRgb(inconsistent, {}, out.data()); });
}

// Records what a decoder hands to an RgbRowSink and checks the contract:
// Begin once, then every row reserved and committed exactly once, in order.
class CheckingSink : public clip::RgbRowSink {
 public:
  void Begin(int width, int height) override {
    ++begins_;
    image_.width = width;
    image_.height = height;
    image_.pixels.assign(static_cast<size_t>(width) * height * 3, 0);
    block_.clear();
  }
  uint8_t* Reserve(int y, int count, size_t* stride) override {
    if (y != next_row_ || count <= 0 || y + count > image_.height || pending_) {
      contract_ok_ = false;
    }
    pending_ = true;
    pending_row_ = y;
    pending_count_ = count;
    // Garbage, so that a decoder relying on zeroed memory shows up.
    *stride = static_cast<size_t>(image_.width) * 3 + 5;
    block_.assign(*stride * count, 0xA5);
    return block_.data();
  }
  void Commit(int y, int count) override {
    if (!pending_ || y != pending_row_ || count != pending_count_) {
      contract_ok_ = false;
    }
    const size_t stride = static_cast<size_t>(image_.width) * 3 + 5;
    for (int i = 0; i < count && y + i < image_.height; ++i) {
      std::memcpy(&image_.pixels[static_cast<size_t>(y + i) * image_.width * 3], &block_[i * stride],
                  static_cast<size_t>(image_.width) * 3);
    }
    next_row_ = y + count;
    pending_ = false;
  }
  bool ok() const { return begins_ == 1 && contract_ok_ && !pending_ && next_row_ == image_.height; }
  const RgbImage& image() const { return image_; }

 private:
  RgbImage image_;
  std::vector<uint8_t> block_;
  int begins_ = 0;
  int next_row_ = 0;
  bool pending_ = false;
  int pending_row_ = 0;
  int pending_count_ = 0;
  bool contract_ok_ = true;
};

// Inputs of every format and layout the decoders handle differently.
std::vector<std::pair<std::string, Bytes>> VariedInputs() {
  std::vector<std::pair<std::string, Bytes>> inputs;
  const int w = 130;
  const int h = 97;
  const std::vector<uint8_t> rgb = Pattern(w, h, 3, 81);
  inputs.push_back({"PNG", EncodeRgbPng(w, h, rgb)});
  PngSpec adam7;
  adam7.width = w;
  adam7.height = h;
  adam7.samples.assign(rgb.begin(), rgb.end());
  adam7.interlace = true;
  inputs.push_back({"PNG Adam7", EncodePng(adam7)});
  PngSpec rotated = adam7;
  rotated.interlace = false;
  rotated.exif = ExifTiff(8, false);
  inputs.push_back({"PNG eXIf 8", EncodePng(rotated)});
  JpegSpec jpeg;
  jpeg.width = w;
  jpeg.height = h;
  jpeg.samples = rgb;
  inputs.push_back({"JPEG", EncodeJpeg(jpeg)});
  jpeg.progressive = true;
  inputs.push_back({"JPEG progressive", EncodeJpeg(jpeg)});
  jpeg.progressive = false;
  Bytes app1;
  Append(&app1, "Exif");
  app1.push_back(0);
  app1.push_back(0);
  Append(&app1, ExifTiff(6, true));
  jpeg.app1 = app1;
  inputs.push_back({"JPEG EXIF 6", EncodeJpeg(jpeg)});
  jpeg.app1.clear();
  jpeg.components = 1;
  jpeg.samples.resize(static_cast<size_t>(w) * h);
  inputs.push_back({"JPEG gray", EncodeJpeg(jpeg)});
  jpeg.components = 4;
  jpeg.samples = Pattern(w, h, 4, 82);
  inputs.push_back({"JPEG CMYK", EncodeJpeg(jpeg)});
  inputs.push_back({"WebP", EncodeWebpLossless(w, h, Pattern(w, h, 4, 83), false)});
  inputs.push_back({"WebP animation", AnimatedWebp(w + 9, h + 5, 4, 2, w, h, Pattern(w, h, 4, 84))});
  GifSpec gif;
  gif.screen_width = w + 7;
  gif.screen_height = h + 3;
  gif.left = 5;
  gif.top = 2;
  gif.width = w;
  gif.height = h;
  gif.transparency = 3;
  gif.interlace = true;
  for (int i = 0; i < 256 * 3; ++i) gif.global_palette.push_back(i * 11 % 256);
  gif.indices.resize(w * h);
  for (int i = 0; i < w * h; ++i) gif.indices[i] = rgb[i * 3];
  inputs.push_back({"GIF", EncodeGif(gif)});
  BmpSpec bmp;
  bmp.width = w;
  bmp.height = h;
  for (int y = 0; y < h; ++y) {
    bmp.rows.emplace_back(rgb.begin() + y * w * 3, rgb.begin() + (y + 1) * w * 3);
  }
  inputs.push_back({"BMP", EncodeBmp(bmp)});
  bmp.top_down = true;
  inputs.push_back({"BMP top-down", EncodeBmp(bmp)});
  return inputs;
}

// DecodeImageRows keeps the sink contract and agrees with DecodeImage, and
// PreprocessImage (rows streamed into the resize) agrees with PreprocessRgb
// on the whole decoded image.
// The kernel kAuto picks (AVX-512 VBMI and VNNI, else the AVX2 horizontal pass, on
// CPUs that have them) against the generic one, which the Pillow
// comparisons above established before the others existed: the same bytes
// for downscales (within and beyond the AVX-512 kernel's 128-column window),
// upscales, unchanged axes, windows that touch either edge and widths that
// leave a partial block of 16.
void TestResampleKernels() {
  std::printf("resample kernels: %s on this CPU\n", clip::ResampleAvx512Supported() ? "AVX-512 used"
                                                    : clip::GetCpuFeatures().avx2   ? "AVX2 used"
                                                                                    : "generic only");
  std::mt19937 random(7);
  struct Case {
    int src_width, src_height, resized_width, resized_height;
  };
  std::vector<Case> cases = {{640, 480, 298, 224},   {800, 600, 298, 224},  {612, 612, 224, 224}, {640, 427, 335, 224},
                             {3000, 2000, 336, 224}, {100, 80, 280, 224},   {224, 500, 224, 500}, {500, 224, 500, 100},
                             {37, 3000, 17, 224},    {1, 1, 224, 224},      {5, 3, 373, 224},     {4000, 30, 2000, 224},
                             {1500, 1000, 336, 224}, {2000, 1500, 298, 224}};
  for (int i = 0; i < 40; ++i) {
    std::uniform_int_distribution<int> size(1, 1200);
    cases.push_back({size(random), size(random), size(random) / 2 + 1, size(random) / 2 + 1});
  }
  int mismatched = 0;
  for (const Case& c : cases) {
    std::vector<uint8_t> src(static_cast<size_t>(c.src_width) * c.src_height * 3);
    for (uint8_t& v : src) v = static_cast<uint8_t>(random());
    // The whole image and a window off centre, of odd width.
    const int wx = c.resized_width / 3;
    const int wy = c.resized_height / 4;
    const int windows[2][4] = {{0, 0, c.resized_width, c.resized_height},
                               {wx, wy, std::max(1, c.resized_width - wx - 1), std::max(1, c.resized_height - wy)}};
    for (const auto& w : windows) {
      const size_t bytes = static_cast<size_t>(w[2]) * w[3] * 3;
      std::vector<uint8_t> generic(bytes), fast(bytes);
      clip::ResizeBicubicWindow(src.data(), c.src_width, c.src_height, c.resized_width, c.resized_height, w[0], w[1],
                                w[2], w[3], generic.data(), static_cast<size_t>(w[2]) * 3,
                                clip::ResampleKernel::kGeneric);
      clip::ResizeBicubicWindow(src.data(), c.src_width, c.src_height, c.resized_width, c.resized_height, w[0], w[1],
                                w[2], w[3], fast.data(), static_cast<size_t>(w[2]) * 3, clip::ResampleKernel::kAuto);
      if (generic != fast) {
        ++mismatched;
        std::printf("  kernels differ: %dx%d -> %dx%d, window %dx%d+%d+%d\n", c.src_width, c.src_height,
                    c.resized_width, c.resized_height, w[2], w[3], w[0], w[1]);
      }
    }
  }
  Check(mismatched == 0, "resample kernels agree byte for byte on " + std::to_string(cases.size() * 2) + " resizes");
}

void TestStreaming() {
  for (bool apply : {false, true}) {
    ImageDecodeOptions options;
    options.apply_exif_orientation = apply;
    for (const auto& [label, data] : VariedInputs()) {
      const std::string what = label + (apply ? " (EXIF applied)" : " (EXIF ignored)");
      try {
        const RgbImage whole = Decode(data, options);
        CheckingSink sink;
        clip::DecodeImageRows(data.data(), data.size(), options, &sink);
        Check(sink.ok(), what + ": DecodeImageRows keeps the sink contract");
        Check(sink.image().width == whole.width && sink.image().height == whole.height &&
                  sink.image().pixels == whole.pixels,
              what + ": DecodeImageRows rows equal DecodeImage");
        for (int size : {224, 64}) {
          PreprocessOptions pre;
          pre.resize_shortest_edge = size;
          pre.crop_size = size == 224 ? 224 : 80;
          std::vector<float> streamed(clip::PreprocessedSize(pre));
          clip::PreprocessImage(data.data(), data.size(), options, pre, streamed.data());
          Check(SameFloats(streamed, Preprocess(whole, pre)),
                what +
                    ": PreprocessImage equals PreprocessRgb(DecodeImage), "
                    "size " +
                    std::to_string(size));
        }
      } catch (const std::exception& error) {
        Check(false, what + ": threw " + error.what());
      }
    }
  }
}

// Many threads decoding and preprocessing the same inputs must agree with a
// single-threaded run bit for bit.
void TestConcurrency(const std::string& reference_root) {
  std::vector<Bytes> inputs;
  const std::vector<uint8_t> rgb = Pattern(320, 240, 3, 71);
  inputs.push_back(EncodeRgbPng(320, 240, rgb));
  JpegSpec jpeg;
  jpeg.width = 320;
  jpeg.height = 240;
  jpeg.samples = rgb;
  inputs.push_back(EncodeJpeg(jpeg));
  jpeg.progressive = true;
  inputs.push_back(EncodeJpeg(jpeg));
  inputs.push_back(EncodeWebpLossless(300, 200, Pattern(300, 200, 4, 72), false));
  GifSpec gif;
  gif.screen_width = gif.width = 250;
  gif.screen_height = gif.height = 180;
  for (int i = 0; i < 256 * 3; ++i) gif.global_palette.push_back(i * 13 % 256);
  gif.indices.resize(250 * 180);
  for (size_t i = 0; i < gif.indices.size(); ++i) gif.indices[i] = i * 31 % 256;
  inputs.push_back(EncodeGif(gif));
  BmpSpec bmp;
  bmp.width = 230;
  bmp.height = 310;
  const std::vector<uint8_t> bmp_rgb = Pattern(230, 310, 3, 73);
  for (int y = 0; y < 310; ++y) {
    bmp.rows.emplace_back(bmp_rgb.begin() + y * 230 * 3, bmp_rgb.begin() + (y + 1) * 230 * 3);
  }
  inputs.push_back(EncodeBmp(bmp));
  // A damaged input in the mix: errors must stay per call.
  const size_t damaged = inputs.size();
  inputs.push_back(Bytes(inputs[1].begin(), inputs[1].begin() + 400));
  if (!reference_root.empty()) {
    for (const char* name :
         {"rocket.jpg", "cmyk_300x225.jpg", "horse.png", "lossy_300x200.webp", "animated_160x120.gif"}) {
      Bytes data;
      if (ReadFile(reference_root + "/images/" + name, &data)) {
        inputs.push_back(data);
      }
    }
  }

  const size_t floats = 3 * 224 * 224;
  // Empty result = the call failed with kImageDecodeFailed.
  auto run = [&](const Bytes& data) {
    std::vector<float> out(floats);
    try {
      clip::PreprocessImage(data.data(), data.size(), {}, {}, out.data());
    } catch (const ClipError& error) {
      if (error.code() == ErrorCode::kImageDecodeFailed) return std::vector<float>();
      throw;
    }
    return out;
  };
  std::vector<std::vector<float>> expected;
  for (const Bytes& data : inputs) expected.push_back(run(data));
  Check(expected[damaged].empty(), "concurrency inputs include one that fails to decode");

  const int kThreads = 4;
  const int kRounds = 6;
  std::atomic<int> mismatches{0};
  std::atomic<int> exceptions{0};
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      for (int round = 0; round < kRounds; ++round) {
        for (size_t i = 0; i < inputs.size(); ++i) {
          const size_t k = (i + t + round) % inputs.size();
          try {
            if (!SameFloats(run(inputs[k]), expected[k])) ++mismatches;
          } catch (...) {
            ++exceptions;
          }
        }
      }
    });
  }
  for (auto& thread : threads) thread.join();
  Check(mismatches == 0 && exceptions == 0, "4 threads agree with the single-threaded results (" +
                                                std::to_string(mismatches.load()) + " mismatches, " +
                                                std::to_string(exceptions.load()) + " unexpected exceptions)");
}

}  // namespace

int main(int argc, char** argv) {
  const std::string reference_root = argc > 1 ? argv[1] : "";
  if (!reference_root.empty()) TestReferenceImages(reference_root);
  TestFormatDetection();
  TestPngModes();
  TestPngUnfilter();
  TestPngWholeBuffer();
  TestJpeg();
  TestJpegPredecode();
  TestWebp();
  TestGif();
  TestBmp();
  TestExifOrientation();
  TestErrors();
  TestSizeLimits();
  TestPixelBuffers();
  TestThreadScratch();
  TestJpegRegions();
  TestPreprocessing();
  TestResampleKernels();
  TestStreaming();
  TestConcurrency(reference_root);
  return clip::test::Summary();
}

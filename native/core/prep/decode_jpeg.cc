// JPEG (libjpeg-turbo). Pillow leaves the decoder at its defaults: islow IDCT,
// fancy upsampling, colour space from the JFIF/Adobe markers; output L, RGB
// or Adobe-inverted CMYK by component count.

#include <algorithm>
#include <atomic>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <exception>
#include <memory>
#include <string>
#include <system_error>
#include <thread>
#include <vector>

// jpeglib.h needs FILE and size_t declared first.
#include <jerror.h>
#include <jpeglib.h>

#include "errors.h"
#include "huge_pages.h"
#include "image.h"
#include "image_decode.h"
#include "jpeg_entropy.h"

namespace clip {
namespace decode {
namespace {

std::atomic<uint64_t> g_region_decodes{0};
std::atomic<uint64_t> g_split_decodes{0};
std::atomic<bool> g_split_forced{false};

// Decoded pixels (of the region read) from which a baseline JPEG is decoded
// on two threads when its sink offers a second one (RgbRowSink::SplitBelow).
constexpr int64_t kSplitMinPixels = int64_t{1} << 20;

// The largest buffer for a scan's coefficients decoded ahead: one that the
// thread keeps (its bound is about 5 bytes per block and 16 per byte of the
// file: 3.1 MB for a 1280x720 photo of 190 KB). A 12-megapixel photo's 43 MB
// would be mapped and faulted in anew for every image, which cost more than
// the faster decoding saved; such scans are left to libjpeg.
constexpr size_t kMaxPredecodeBytes = ThreadScratch::kKeepBytes;

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
    if (m->marker != JPEG_APP0 + 1 || m->data_length < 6 || std::memcmp(m->data, "Exif\0\0", 6) != 0) {
      continue;
    }
    tiff.insert(tiff.end(), m->data + 6, m->data + m->data_length);
  }
  return ParseExifOrientation(tiff.data(), tiff.size());
}

// A decompressor before jpeg_create_decompress, reporting through `error`:
// libjpeg's errors jump back to the caller's setjmp, corrupt-data warnings
// are counted, running out of input is an error, nothing is printed.
// Zeroed first, so that jpeg_destroy_decompress may run whatever happens.
void InitJpeg(jpeg_decompress_struct* cinfo, JpegErrorManager* error) {
  std::memset(cinfo, 0, sizeof(*cinfo));
  cinfo->err = jpeg_std_error(&error->pub);
  error->pub.error_exit = JpegErrorExit;
  error->pub.emit_message = JpegEmitMessage;
  error->pub.output_message = JpegOutputMessage;
  error->message[0] = '\0';
}

// Reads rows [first, last) of `cinfo` (at first already) into `sink`, in
// blocks of 16 rows (a multiple of what libjpeg returns per call: a
// streaming sink then resizes rows in runs, not one at a time), converting
// grey and CMYK to RGB; RGB rows land in the sink's memory directly. Each
// row's decoded columns start x_offset pixels into it. Stops early, before
// a block, once `stop` is set.
template <typename Sink>
void ReadRows(jpeg_decompress_struct* cinfo, int components, size_t x_offset, int last, Sink* sink,
              std::vector<uint8_t>* scratch, std::vector<JSAMPROW>* rows, const std::atomic<bool>* stop) {
  const size_t decoded_width = cinfo->output_width;
  const int step = std::max(1, cinfo->rec_outbuf_height);
  const int batch = (16 + step - 1) / step * step;
  rows->resize(batch);
  scratch->resize(decoded_width * components * batch);
  while (static_cast<int>(cinfo->output_scanline) < last) {
    if (stop && stop->load(std::memory_order_relaxed)) return;
    const int y = static_cast<int>(cinfo->output_scanline);
    const int count = std::min(batch, last - y);
    size_t stride = 0;
    uint8_t* block = sink->Reserve(y, count, &stride) + x_offset * 3;
    for (int i = 0; i < count; ++i) {
      (*rows)[i] = components == 3 ? block + i * stride : scratch->data() + i * decoded_width * components;
    }
    for (int done = 0; done < count;) {
      done += static_cast<int>(jpeg_read_scanlines(cinfo, rows->data() + done, count - done));
    }
    for (int i = 0; components != 3 && i < count; ++i) {
      const uint8_t* in = (*rows)[i];
      uint8_t* out = block + i * stride;
      if (components == 1) {
        for (size_t x = 0; x < decoded_width; ++x) {
          out[3 * x] = out[3 * x + 1] = out[3 * x + 2] = in[x];
        }
      } else {
        for (size_t x = 0; x < decoded_width; ++x) {
          const uint8_t* p = in + 4 * x;
          out[3 * x + 0] = CmykChannel(p[0], p[3]);
          out[3 * x + 1] = CmykChannel(p[1], p[3]);
          out[3 * x + 2] = CmykChannel(p[2], p[3]);
        }
      }
    }
    sink->Commit(y, count);
  }
}

// The output settings Pillow leaves libjpeg at, by component count; throws
// for counts it does not handle.
void SetOutput(jpeg_decompress_struct* cinfo) {
  switch (cinfo->num_components) {
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
      DecodeFailed("JPEG", "cannot handle " + std::to_string(cinfo->num_components) + "-component images");
  }
  cinfo->dct_method = JDCT_ISLOW;
  cinfo->do_fancy_upsampling = TRUE;
}

// After the rows a decode hands on: the rows below them are skipped but
// for the last, which is read (skipping to the bottom would stop reading the
// data there, and a file cut short below the region would pass where Pillow
// reports it truncated); then on to EOI, so that a file cut after the last
// scan is truncated too, as in Pillow.
void ReadToEnd(jpeg_decompress_struct* cinfo, std::vector<uint8_t>* scratch) {
  const int height = static_cast<int>(cinfo->output_height);
  const int y = static_cast<int>(cinfo->output_scanline);
  if (y < height) {
    if (height - y > 1) jpeg_skip_scanlines(cinfo, static_cast<JDIMENSION>(height - y - 1));
    scratch->resize(std::max<size_t>(scratch->size(), size_t{cinfo->output_width} * cinfo->output_components));
    JSAMPROW last = scratch->data();
    jpeg_read_scanlines(cinfo, &last, 1);
  }
  jpeg_finish_decompress(cinfo);
}

// The lower part of a JPEG decoded on a second thread: its own decompressor
// over the same bytes, the same output settings and column crop, skipped
// (entropy decoding only) to `skip_to`, rows [skip_to, first) read and
// dropped (the margin that makes the rows from `first` equal to a whole
// decode's, as for a region), rows [first, last) handed to `sink`, then
// ReadToEnd. Like JpegJob, it outlives ReadJpegPart's setjmp.
struct JpegPart {
  const uint8_t* data = nullptr;
  size_t size = 0;
  bool crop = false;
  JDIMENSION crop_x = 0;
  JDIMENSION crop_width = 0;
  int skip_to = 0;
  int first = 0;
  int last = 0;
  std::unique_ptr<RgbRowSink> sink;
  const std::atomic<bool>* stop = nullptr;
  jpeg_decompress_struct cinfo;
  JpegErrorManager error;
  std::vector<uint8_t> scratch;
  std::vector<JSAMPROW> rows;
  bool ok = true;
  std::exception_ptr thrown;  // what the sink or SetOutput threw
};

bool ReadJpegPart(JpegPart* part) {
  jpeg_decompress_struct* cinfo = &part->cinfo;
  if (setjmp(part->error.jump)) return false;
  jpeg_create_decompress(cinfo);
  jpeg_mem_src(cinfo, part->data, static_cast<unsigned long>(part->size));
  jpeg_read_header(cinfo, TRUE);
  SetOutput(cinfo);
  jpeg_start_decompress(cinfo);
  JDIMENSION x_offset = 0;
  if (part->crop) {
    x_offset = part->crop_x;
    JDIMENSION width = part->crop_width;
    jpeg_crop_scanline(cinfo, &x_offset, &width);
  }
  if (part->skip_to > 0) jpeg_skip_scanlines(cinfo, static_cast<JDIMENSION>(part->skip_to));
  const int components = cinfo->output_components;
  part->scratch.resize(size_t{cinfo->output_width} * components);
  while (static_cast<int>(cinfo->output_scanline) < part->first) {
    JSAMPROW row = part->scratch.data();
    jpeg_read_scanlines(cinfo, &row, 1);
  }
  ReadRows(cinfo, components, x_offset, part->last, part->sink.get(), &part->scratch, &part->rows, part->stop);
  if (part->stop->load(std::memory_order_relaxed)) return true;
  ReadToEnd(cinfo, &part->scratch);
  return true;
}

void RunJpegPart(JpegPart* part) {
  InitJpeg(&part->cinfo, &part->error);
  try {
    part->ok = ReadJpegPart(part);
  } catch (...) {
    part->thrown = std::current_exception();
  }
  jpeg_destroy_decompress(&part->cinfo);
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
  // The lower part of a split decode, on `helper`; `stop` tells it to end
  // early when this thread has failed.
  JpegPart part;
  std::thread helper;
  std::atomic<bool> stop{false};
  // The scan's coefficients when they were decoded ahead (jpeg_entropy.h),
  // in a buffer this thread keeps.
  JpegScanCoefficients scan;
  ThreadScratch coefficients{ScratchSlot::kJpegCoefficients};
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
  CheckDimensions(cinfo->image_width, cinfo->image_height, *job->options, "JPEG");

  SetOutput(cinfo);
  if (job->options->apply_exif_orientation) {
    job->out->SetOrientation(JpegExifOrientation(cinfo));
  }

  jpeg_start_decompress(cinfo);
  const int width = static_cast<int>(cinfo->output_width);
  const int height = static_cast<int>(cinfo->output_height);
  job->out->Begin(width, height);

  // Only the part of the image the sink reads, plus one iMCU (8 or 16
  // pixels) around it: rows above and below it are only entropy-decoded,
  // and columns left and right of it are neither transformed nor upsampled
  // nor converted (jpeg_crop_scanline widens the columns to whole iMCUs):
  // the bench's 640x480 and 800x600 photos, whose centre crops keep 80% of
  // the columns, prepare 4-7% faster (Intel Xeon with AMX; measured slower
  // once, while the decoder's rows still started on 16-byte boundaries, see
  // kRowSkew in image.cc). The margin keeps the region's pixels equal to a
  // whole decode's: at the edge of a cropped or skipped part fancy
  // upsampling sees replicated samples instead of their neighbours, one
  // chroma sample (two pixels) deep.
  const RgbRowSink::Region region = job->out->NeededRegion(width, height);
  const int margin_x = cinfo->max_h_samp_factor * DCTSIZE;
  const int margin_y = cinfo->max_v_samp_factor * DCTSIZE;
  const int x_begin = std::max(0, region.x_begin - margin_x);
  const int x_end = std::min(width, std::max(region.x_end, region.x_begin + 1) + margin_x);
  const int y_begin = std::max(0, region.y_begin - margin_y);
  const int y_end = std::min(height, std::max(region.y_end, region.y_begin + 1) + margin_y);
  JDIMENSION x_offset = 0;
  // Not for progressive JPEGs: where their scans leave coefficients
  // unknown, libjpeg-turbo smooths each block from its neighbours, and in a
  // cropped decode it takes the crop's first block column for the image's
  // edge (the image fuzzer found such a file: 3285 values apart).
  const bool crop = (x_begin > 0 || x_end < width) && !jpeg_has_multiple_scans(cinfo);
  if (crop) {
    JDIMENSION crop_width = static_cast<JDIMENSION>(x_end - x_begin);
    x_offset = static_cast<JDIMENSION>(x_begin);
    jpeg_crop_scanline(cinfo, &x_offset, &crop_width);
  }
  if (x_offset > 0 || static_cast<int>(cinfo->output_width) < width || y_begin > 0 || y_end < height) {
    g_region_decodes.fetch_add(1, std::memory_order_relaxed);
  }

  // A large baseline image whose sink takes rows from two threads: the rows
  // from `split` down go to a second decoder on a helper thread, which skips
  // to them (entropy decoding only) and reads on to the end of the file;
  // this one stops at `split`. Entropy decoding is about two thirds of a
  // photo's decode (4032x3024, quality 90: 28 of 41 ms on a Zen 5 EPYC), so
  // the helper's skip costs about as much as a third of its rows: the split
  // sits three quarters of the way down, in whole iMCU rows.
  int split = y_end;
  const int64_t pixels = int64_t{y_end - y_begin} * static_cast<int64_t>(cinfo->output_width);
  if (!jpeg_has_multiple_scans(cinfo) &&
      (g_split_forced.load(std::memory_order_relaxed) || pixels >= kSplitMinPixels)) {
    const int at = (y_begin + (y_end - y_begin) * 3 / 4) / margin_y * margin_y;
    if (at - margin_y > y_begin && at < y_end) {
      std::unique_ptr<RgbRowSink> lower = job->out->SplitBelow(at);
      if (lower) {
        JpegPart& part = job->part;
        part.data = job->data;
        part.size = job->size;
        part.crop = crop;
        part.crop_x = static_cast<JDIMENSION>(x_begin);
        part.crop_width = static_cast<JDIMENSION>(x_end - x_begin);
        part.skip_to = at - margin_y;
        part.first = at;
        part.last = y_end;
        part.sink = std::move(lower);
        part.stop = &job->stop;
        try {
          job->helper = std::thread(RunJpegPart, &part);
          g_split_decodes.fetch_add(1, std::memory_order_relaxed);
          split = at;
        } catch (const std::system_error&) {
          // No thread to be had: this one decodes every row.
        }
      }
    }
  }

  // One decoder for every row: its scan's entropy decoding ahead of libjpeg,
  // where the scan allows (a split decode's two decoders each read part).
  if (split == y_end) {
    const size_t bytes = JpegScanCoefficientBytes(cinfo);
    if (bytes != 0 && bytes <= kMaxPredecodeBytes) {
      PredecodeJpegScan(cinfo, &job->scan, job->coefficients.Get(bytes), bytes);
    }
  }
  if (y_begin > 0) jpeg_skip_scanlines(cinfo, static_cast<JDIMENSION>(y_begin));
  ReadRows(cinfo, cinfo->output_components, x_offset, split, job->out, &job->scratch, &job->rows, nullptr);
  if (split < y_end) return true;  // the helper reads the rest
  ReadToEnd(cinfo, &job->scratch);
  return true;
}

struct JpegDestroyGuard {
  jpeg_decompress_struct* cinfo;
  ~JpegDestroyGuard() { jpeg_destroy_decompress(cinfo); }
};

// Ends a split decode's helper on the paths that leave DecodeJpeg early (an
// error here, or the sink's exception): told to stop, then joined.
struct HelperGuard {
  JpegJob* job;
  ~HelperGuard() {
    if (!job->helper.joinable()) return;
    job->stop.store(true, std::memory_order_relaxed);
    job->helper.join();
  }
};

}  // namespace

uint64_t JpegRegionDecodes() { return g_region_decodes.load(std::memory_order_relaxed); }

void DecodeJpeg(const uint8_t* data, size_t size, const ImageDecodeOptions& options, FrameSink* out) {
  JpegJob job;
  job.data = data;
  job.size = size;
  job.options = &options;
  job.out = out;
  InitJpeg(&job.cinfo, &job.error);
  JpegDestroyGuard guard{&job.cinfo};
  HelperGuard helper{&job};
  if (!ReadJpeg(&job)) DecodeFailed("JPEG", job.error.message);
  // A split decode: this thread's rows were fine; the helper's verdict on
  // the rest, and on the end of the file, is the image's.
  if (job.helper.joinable()) {
    job.helper.join();
    if (job.part.thrown) std::rethrow_exception(job.part.thrown);
    if (!job.part.ok) DecodeFailed("JPEG", job.part.error.message);
  }
}

uint64_t JpegSplitDecodes() { return g_split_decodes.load(std::memory_order_relaxed); }

void SetSplitDecodesForced(bool forced) { g_split_forced.store(forced, std::memory_order_relaxed); }

bool SplitDecodesForced() { return g_split_forced.load(std::memory_order_relaxed); }

}  // namespace decode
}  // namespace clip

// JPEG (libjpeg-turbo). Pillow leaves the decoder at its defaults: islow IDCT,
// fancy upsampling, colour space from the JFIF/Adobe markers; output L, RGB
// or Adobe-inverted CMYK by component count.

#include <algorithm>
#include <atomic>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

// jpeglib.h needs FILE and size_t declared first.
#include <jerror.h>
#include <jpeglib.h>

#include "errors.h"
#include "image.h"
#include "image_decode.h"

namespace clip {
namespace decode {
namespace {

std::atomic<uint64_t> g_region_decodes{0};

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
  CheckDimensions(cinfo->image_width, cinfo->image_height, *job->options, "JPEG");

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
      DecodeFailed("JPEG", "cannot handle " + std::to_string(components) + "-component images");
  }
  cinfo->dct_method = JDCT_ISLOW;
  cinfo->do_fancy_upsampling = TRUE;
  if (job->options->apply_exif_orientation) {
    job->out->SetOrientation(JpegExifOrientation(cinfo));
  }

  jpeg_start_decompress(cinfo);
  const int width = static_cast<int>(cinfo->output_width);
  const int height = static_cast<int>(cinfo->output_height);
  job->out->Begin(width, height);

  // Only the part of the image the sink reads, plus one iMCU (8 or 16
  // pixels) around it: rows above and below it are only entropy-decoded,
  // and where it leaves out a third of the columns or more, those are
  // neither transformed nor upsampled nor converted (jpeg_crop_scanline
  // widens the columns to whole iMCUs). Cropping fewer columns cost more than
  // it saved on a Zen 5 EPYC (a 640x480 photo's centre crop keeps 83% of
  // them: 6-10% slower; 1280x720, 56%: 17% faster). The margin keeps the
  // region's pixels equal to a whole decode's: at the edge of a cropped or
  // skipped part fancy upsampling sees replicated samples instead of their
  // neighbours, one chroma sample (two pixels) deep.
  const RgbRowSink::Region region = job->out->NeededRegion(width, height);
  const int margin_x = cinfo->max_h_samp_factor * DCTSIZE;
  const int margin_y = cinfo->max_v_samp_factor * DCTSIZE;
  const int x_begin = std::max(0, region.x_begin - margin_x);
  const int x_end = std::min(width, std::max(region.x_end, region.x_begin + 1) + margin_x);
  const int y_begin = std::max(0, region.y_begin - margin_y);
  const int y_end = std::min(height, std::max(region.y_end, region.y_begin + 1) + margin_y);
  JDIMENSION x_offset = 0;
  if ((x_begin > 0 || x_end < width) && 3 * (x_end - x_begin) <= 2 * width) {
    JDIMENSION crop_width = static_cast<JDIMENSION>(x_end - x_begin);
    x_offset = static_cast<JDIMENSION>(x_begin);
    jpeg_crop_scanline(cinfo, &x_offset, &crop_width);
  }
  if (x_offset > 0 || static_cast<int>(cinfo->output_width) < width || y_begin > 0 || y_end < height) {
    g_region_decodes.fetch_add(1, std::memory_order_relaxed);
  }
  const size_t decoded_width = cinfo->output_width;
  if (y_begin > 0) jpeg_skip_scanlines(cinfo, static_cast<JDIMENSION>(y_begin));

  // Blocks of 16 rows (a multiple of what libjpeg returns per call): a
  // streaming sink then resizes rows in runs, not interleaved with the
  // decoder one row at a time.
  const int step = std::max(1, cinfo->rec_outbuf_height);
  const int batch = (16 + step - 1) / step * step;
  job->rows.resize(batch);
  job->scratch.resize(decoded_width * components * batch);

  while (static_cast<int>(cinfo->output_scanline) < y_end) {
    const int y = static_cast<int>(cinfo->output_scanline);
    const int count = std::min(batch, y_end - y);
    size_t stride = 0;
    uint8_t* block = job->out->Reserve(y, count, &stride) + size_t{x_offset} * 3;
    // RGB rows land in the sink's memory directly.
    for (int i = 0; i < count; ++i) {
      job->rows[i] = components == 3 ? block + i * stride : job->scratch.data() + i * decoded_width * components;
    }
    for (int done = 0; done < count;) {
      done += static_cast<int>(jpeg_read_scanlines(cinfo, job->rows.data() + done, count - done));
    }
    for (int i = 0; components != 3 && i < count; ++i) {
      const uint8_t* in = job->rows[i];
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
    job->out->Commit(y, count);
  }
  // The rows below the region are skipped but for the last, which is read:
  // skipping to the bottom would stop reading the data there, and a file
  // cut short below the region would pass where Pillow reports it
  // truncated.
  if (y_end < height) {
    if (height - y_end > 1) jpeg_skip_scanlines(cinfo, static_cast<JDIMENSION>(height - y_end - 1));
    JSAMPROW last = job->scratch.data();
    jpeg_read_scanlines(cinfo, &last, 1);
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

}  // namespace

uint64_t JpegRegionDecodes() { return g_region_decodes.load(std::memory_order_relaxed); }

void DecodeJpeg(const uint8_t* data, size_t size, const ImageDecodeOptions& options, FrameSink* out) {
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

}  // namespace decode
}  // namespace clip

// Single-thread cost of turning an encoded image into CLIP pixel values.
//
// Usage: image_bench <small.jpg> <large.jpg> [more images ...]
//                    [--iterations N] [--json PATH] [--png-libpng] [--jpeg-libjpeg] [--exif]
// Intended inputs are a 500x375 and a 2000x1500 JPEG. For each file it times
// DecodeImage, PreprocessRgb, and the two together (PreprocessImage), and
// prints a markdown table of milliseconds per image: the median over the
// iterations (after two warm-up runs) of wall-clock time and, in brackets,
// of the thread's CPU time, which stays meaningful on a busy machine.
// --json also writes the numbers. --png-libpng decodes every PNG through
// libpng, without the whole-buffer path (one inflate call) of common layouts;
// --jpeg-libjpeg leaves every JPEG scan's entropy decoding to libjpeg.
// --exif applies the EXIF orientation (applyExifOrientation). Phone-sized
// photos: bench/make_images.py --large.

#include <time.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "errors.h"
#include "image.h"
#include "image_decode.h"
#include "jpeg_entropy.h"

namespace {

using Clock = std::chrono::steady_clock;

struct Stats {
  double median_ms = 0;
  double mean_ms = 0;
};

Stats Summarize(std::vector<double> ms) {
  Stats stats;
  if (ms.empty()) return stats;
  std::sort(ms.begin(), ms.end());
  stats.median_ms = ms.size() % 2 ? ms[ms.size() / 2] : (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]) / 2;
  double sum = 0;
  for (double v : ms) sum += v;
  stats.mean_ms = sum / ms.size();
  return stats;
}

double ThreadCpuMs() {
#if defined(CLOCK_THREAD_CPUTIME_ID)
  timespec now;
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return now.tv_sec * 1e3 + now.tv_nsec / 1e6;
#else
  return 0;
#endif
}

struct Sample {
  double wall_ms;
  double cpu_ms;
};

template <typename F>
Sample Time(F&& body) {
  const double cpu_start = ThreadCpuMs();
  const auto start = Clock::now();
  body();
  return {std::chrono::duration<double, std::milli>(Clock::now() - start).count(), ThreadCpuMs() - cpu_start};
}

struct Timings {
  std::vector<double> wall;
  std::vector<double> cpu;
  void Add(const Sample& s) {
    wall.push_back(s.wall_ms);
    cpu.push_back(s.cpu_ms);
  }
};

struct Row {
  std::string path;
  int width = 0;
  int height = 0;
  size_t bytes = 0;
  Stats decode, decode_cpu;
  Stats preprocess, preprocess_cpu;
  Stats total, total_cpu;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> paths;
  clip::ImageDecodeOptions decode_options;
  int iterations = 30;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--iterations" && i + 1 < argc) {
      iterations = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--png-libpng") {
      clip::decode::SetPngWholeBufferEnabled(false);
    } else if (arg == "--jpeg-libjpeg") {
      clip::decode::SetJpegPredecodeEnabled(false);
    } else if (arg == "--exif") {
      decode_options.apply_exif_orientation = true;
    } else if (arg == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      paths.push_back(arg);
    }
  }
  if (paths.empty()) {
    std::fprintf(stderr,
                 "usage: image_bench <small.jpg> <large.jpg> [...] "
                 "[--iterations N] [--json PATH] [--png-libpng] [--jpeg-libjpeg] [--exif]\n");
    return 2;
  }

  const clip::PreprocessOptions preprocess_options;
  std::vector<float> out(clip::PreprocessedSize(preprocess_options));
  std::vector<Row> rows;
  for (const std::string& path : paths) {
    std::ifstream file(path, std::ios::binary);
    if (!file) {
      std::fprintf(stderr, "cannot read %s\n", path.c_str());
      return 2;
    }
    const std::vector<uint8_t> data((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
    Row row;
    row.path = path;
    row.bytes = data.size();
    Timings decode, preprocess, total;
    try {
      for (int i = -2; i < iterations; ++i) {  // Two warm-up runs.
        clip::RgbImage image;
        const Sample d = Time([&] { image = clip::DecodeImage(data.data(), data.size(), decode_options); });
        const Sample p = Time([&] { clip::PreprocessRgb(image, preprocess_options, out.data()); });
        const Sample t = Time(
            [&] { clip::PreprocessImage(data.data(), data.size(), decode_options, preprocess_options, out.data()); });
        row.width = image.width;
        row.height = image.height;
        if (i < 0) continue;
        decode.Add(d);
        preprocess.Add(p);
        total.Add(t);
      }
    } catch (const clip::ClipError& error) {
      std::fprintf(stderr, "%s: %s: %s\n", path.c_str(), clip::ErrorCodeName(error.code()), error.what());
      return 1;
    }
    row.decode = Summarize(decode.wall);
    row.decode_cpu = Summarize(decode.cpu);
    row.preprocess = Summarize(preprocess.wall);
    row.preprocess_cpu = Summarize(preprocess.cpu);
    row.total = Summarize(total.wall);
    row.total_cpu = Summarize(total.cpu);
    rows.push_back(row);
  }

  std::printf(
      "Single thread, %d iterations; ms per image, median wall (median "
      "CPU)\n\n",
      iterations);
  std::printf("| image | size | bytes | decode | preprocess | decode+preprocess |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: |\n");
  for (const Row& row : rows) {
    const size_t slash = row.path.find_last_of('/');
    const std::string name = slash == std::string::npos ? row.path : row.path.substr(slash + 1);
    std::printf("| %s | %dx%d | %zu | %.2f (%.2f) | %.2f (%.2f) | %.2f (%.2f) |\n", name.c_str(), row.width, row.height,
                row.bytes, row.decode.median_ms, row.decode_cpu.median_ms, row.preprocess.median_ms,
                row.preprocess_cpu.median_ms, row.total.median_ms, row.total_cpu.median_ms);
  }

  if (!json_path.empty()) {
    FILE* json = std::fopen(json_path.c_str(), "w");
    if (!json) {
      std::fprintf(stderr, "cannot write %s\n", json_path.c_str());
      return 2;
    }
    std::fprintf(json, "{\"iterations\": %d, \"images\": [", iterations);
    for (size_t i = 0; i < rows.size(); ++i) {
      const Row& r = rows[i];
      std::string escaped;
      for (char c : r.path) {
        if (c == '"' || c == '\\') escaped += '\\';
        escaped += c;
      }
      std::fprintf(json,
                   "%s{\"path\": \"%s\", \"width\": %d, \"height\": %d, "
                   "\"bytes\": %zu, \"decode_ms\": %.4f, \"decode_cpu_ms\": "
                   "%.4f, \"preprocess_ms\": %.4f, \"preprocess_cpu_ms\": "
                   "%.4f, \"total_ms\": %.4f, \"total_cpu_ms\": %.4f, "
                   "\"total_mean_ms\": %.4f}",
                   i ? ", " : "", escaped.c_str(), r.width, r.height, r.bytes, r.decode.median_ms,
                   r.decode_cpu.median_ms, r.preprocess.median_ms, r.preprocess_cpu.median_ms, r.total.median_ms,
                   r.total_cpu.median_ms, r.total.mean_ms);
    }
    std::fprintf(json, "]}\n");
    std::fclose(json);
  }
  return 0;
}

// Single-thread cost of turning an encoded JPEG into CLIP pixel values.
//
// Usage: image_bench <small.jpg> <large.jpg> [more.jpg ...]
//                    [--iterations N] [--json PATH]
// Intended inputs are a 500x375 and a 2000x1500 JPEG. For each file it times
// DecodeImage, PreprocessRgb, and the two together (PreprocessImage), and
// prints a markdown table of milliseconds per image (median and mean over the
// iterations, after two warm-up runs). --json also writes the numbers.

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
  stats.median_ms = ms.size() % 2 ? ms[ms.size() / 2]
                                  : (ms[ms.size() / 2 - 1] + ms[ms.size() / 2]) / 2;
  double sum = 0;
  for (double v : ms) sum += v;
  stats.mean_ms = sum / ms.size();
  return stats;
}

template <typename F>
double TimeMs(F&& body) {
  const auto start = Clock::now();
  body();
  return std::chrono::duration<double, std::milli>(Clock::now() - start)
      .count();
}

struct Row {
  std::string path;
  int width = 0;
  int height = 0;
  size_t bytes = 0;
  Stats decode;
  Stats preprocess;
  Stats total;
};

}  // namespace

int main(int argc, char** argv) {
  std::vector<std::string> paths;
  int iterations = 30;
  std::string json_path;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    if (arg == "--iterations" && i + 1 < argc) {
      iterations = std::max(1, std::atoi(argv[++i]));
    } else if (arg == "--json" && i + 1 < argc) {
      json_path = argv[++i];
    } else {
      paths.push_back(arg);
    }
  }
  if (paths.empty()) {
    std::fprintf(stderr,
                 "usage: image_bench <small.jpg> <large.jpg> [...] "
                 "[--iterations N] [--json PATH]\n");
    return 2;
  }

  const clip::ImageDecodeOptions decode_options;
  const clip::PreprocessOptions preprocess_options;
  std::vector<float> out(clip::PreprocessedSize(preprocess_options));
  std::vector<Row> rows;
  for (const std::string& path : paths) {
    std::ifstream file(path, std::ios::binary);
    if (!file) {
      std::fprintf(stderr, "cannot read %s\n", path.c_str());
      return 2;
    }
    const std::vector<uint8_t> data((std::istreambuf_iterator<char>(file)),
                                    std::istreambuf_iterator<char>());
    Row row;
    row.path = path;
    row.bytes = data.size();
    std::vector<double> decode_ms, preprocess_ms, total_ms;
    try {
      for (int i = -2; i < iterations; ++i) {  // Two warm-up runs.
        clip::RgbImage image;
        const double d = TimeMs([&] {
          image = clip::DecodeImage(data.data(), data.size(), decode_options);
        });
        const double p = TimeMs(
            [&] { clip::PreprocessRgb(image, preprocess_options, out.data()); });
        const double t = TimeMs([&] {
          clip::PreprocessImage(data.data(), data.size(), decode_options,
                                preprocess_options, out.data());
        });
        row.width = image.width;
        row.height = image.height;
        if (i < 0) continue;
        decode_ms.push_back(d);
        preprocess_ms.push_back(p);
        total_ms.push_back(t);
      }
    } catch (const clip::ClipError& error) {
      std::fprintf(stderr, "%s: %s: %s\n", path.c_str(),
                   clip::ErrorCodeName(error.code()), error.what());
      return 1;
    }
    row.decode = Summarize(decode_ms);
    row.preprocess = Summarize(preprocess_ms);
    row.total = Summarize(total_ms);
    rows.push_back(row);
  }

  std::printf("Single thread, %d iterations per image (ms per image, median / mean)\n\n",
              iterations);
  std::printf("| image | size | bytes | decode | preprocess | decode+preprocess |\n");
  std::printf("| --- | --- | ---: | ---: | ---: | ---: |\n");
  for (const Row& row : rows) {
    const size_t slash = row.path.find_last_of('/');
    const std::string name =
        slash == std::string::npos ? row.path : row.path.substr(slash + 1);
    std::printf("| %s | %dx%d | %zu | %.2f / %.2f | %.2f / %.2f | %.2f / %.2f |\n",
                name.c_str(), row.width, row.height, row.bytes,
                row.decode.median_ms, row.decode.mean_ms,
                row.preprocess.median_ms, row.preprocess.mean_ms,
                row.total.median_ms, row.total.mean_ms);
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
                   "\"bytes\": %zu, \"decode_ms\": %.4f, \"preprocess_ms\": "
                   "%.4f, \"total_ms\": %.4f, \"total_mean_ms\": %.4f}",
                   i ? ", " : "", escaped.c_str(), r.width, r.height, r.bytes,
                   r.decode.median_ms, r.preprocess.median_ms,
                   r.total.median_ms, r.total.mean_ms);
    }
    std::fprintf(json, "]}\n");
    std::fclose(json);
  }
  return 0;
}

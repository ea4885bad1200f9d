// Tokenizer throughput on one thread, on English captions of 5-20 words.
//
//   tokenizer_bench <vocab.json> <merges.txt> [--json <path>] [--captions N]
//
// Two rows: with the word cache off (every word goes through BPE) and with
// the default cache warmed up (the steady state of a server that sees the
// same vocabulary again and again). Tokens are content tokens, without the
// bos/eos framing and padding. Prints a markdown table; --json also writes
// the numbers to a file.

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "errors.h"
#include "tokenizer.h"

namespace {

// Deterministic captions so that runs are comparable.
std::vector<std::string> MakeCaptions(size_t count) {
  static const char* const kWords[] = {
      "a",          "an",        "the",
      "photo",      "picture",   "image",
      "of",         "with",      "on",
      "in",         "at",        "near",
      "under",      "behind",    "next",
      "to",         "and",       "two",
      "three",      "several",   "small",
      "large",      "old",       "young",
      "red",        "blue",      "green",
      "yellow",     "white",     "black",
      "wooden",     "bright",    "dark",
      "sunny",      "cloudy",    "snowy",
      "cat",        "dog",       "man",
      "woman",      "child",     "people",
      "car",        "bicycle",   "bus",
      "train",      "boat",      "airplane",
      "table",      "chair",     "bed",
      "window",     "door",      "street",
      "beach",      "mountain",  "river",
      "forest",     "city",      "kitchen",
      "sitting",    "standing",  "running",
      "walking",    "riding",    "holding",
      "playing",    "eating",    "looking",
      "parked",     "flying",    "sleeping",
      "frisbee",    "pizza",     "umbrella",
      "skateboard", "surfboard", "giraffe",
      "elephant",   "zebra",     "sandwich",
      "laptop",     "phone",     "grass",
      "field",      "sky",       "water",
      "snow",       "road",      "building",
      "tower",      "bridge",    "park",
      "garden",     "sunset",    "it's",
      "there's",    "close-up",  "black-and-white",
      "view",       "top",       "side",
      "front",      "during",    "evening",
      "morning",
  };
  constexpr size_t kWordCount = sizeof(kWords) / sizeof(kWords[0]);
  std::mt19937 rng(20240521);
  std::vector<std::string> captions;
  captions.reserve(count);
  for (size_t k = 0; k < count; ++k) {
    size_t words = 5 + rng() % 16;
    std::string caption;
    for (size_t w = 0; w < words; ++w) {
      std::string word = kWords[rng() % kWordCount];
      if (w == 0) word[0] = static_cast<char>(std::toupper(word[0]));
      if (w > 0) caption += ' ';
      caption += word;
    }
    caption += rng() % 4 == 0 ? "!" : ".";
    captions.push_back(caption);
  }
  return captions;
}

struct Row {
  std::string mode;
  size_t captions = 0;
  size_t tokens = 0;
  double seconds = 0;
};

// Best of several passes over all captions: the least disturbed by other
// processes on a shared machine.
Row Measure(const std::string& mode, const clip::Tokenizer& tokenizer, const std::vector<std::string>& captions,
            int passes) {
  std::vector<int32_t> ids(static_cast<size_t>(tokenizer.options().context_length));
  Row row;
  row.mode = mode;
  row.captions = captions.size();
  row.seconds = 1e30;
  for (int pass = 0; pass < passes; ++pass) {
    size_t tokens = 0;
    auto start = std::chrono::steady_clock::now();
    for (const std::string& caption : captions) {
      tokens += static_cast<size_t>(tokenizer.EncodePadded(caption, ids.data()) - 2);
    }
    std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    row.tokens = tokens;
    row.seconds = std::min(row.seconds, took.count());
  }
  return row;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: " << argv[0] << " <vocab.json> <merges.txt> [--json <path>] [--captions N]\n";
    return 2;
  }
  std::string json_path;
  size_t caption_count = 20000;
  for (int k = 3; k + 1 < argc; k += 2) {
    std::string flag = argv[k];
    if (flag == "--json") {
      json_path = argv[k + 1];
    } else if (flag == "--captions") {
      caption_count = std::strtoul(argv[k + 1], nullptr, 10);
    } else {
      std::cerr << "unknown flag " << flag << "\n";
      return 2;
    }
  }

  std::vector<std::string> captions = MakeCaptions(caption_count);
  std::vector<Row> rows;
  try {
    clip::TokenizerOptions uncached;
    uncached.cache_capacity = 0;
    auto cold = clip::Tokenizer::FromHuggingFaceFiles(argv[1], argv[2], uncached);
    rows.push_back(Measure("no word cache", *cold, captions, 3));

    auto warm = clip::Tokenizer::FromHuggingFaceFiles(argv[1], argv[2], clip::TokenizerOptions());
    Measure("warm-up", *warm, captions, 1);
    rows.push_back(Measure("word cache, warm", *warm, captions, 3));
  } catch (const clip::ClipError& e) {
    std::cerr << clip::ErrorCodeName(e.code()) << ": " << e.what() << "\n";
    return 1;
  }

  std::cout << "| mode | captions | tokens | seconds | tokens/s | captions/s "
               "| us/caption |\n";
  std::cout << "| --- | ---: | ---: | ---: | ---: | ---: | ---: |\n";
  for (const Row& row : rows) {
    std::cout << std::fixed << "| " << row.mode << " | " << row.captions << " | " << row.tokens << " | "
              << std::setprecision(3) << row.seconds << " | " << std::setprecision(0) << row.tokens / row.seconds
              << " | " << row.captions / row.seconds << " | " << std::setprecision(2)
              << 1e6 * row.seconds / row.captions << " |\n";
  }

  if (!json_path.empty()) {
    std::ofstream out(json_path);
    out << "{\"benchmark\":\"tokenizer\",\"threads\":1,\"rows\":[";
    for (size_t k = 0; k < rows.size(); ++k) {
      const Row& row = rows[k];
      out << (k ? "," : "") << "{\"mode\":\"" << row.mode << "\",\"captions\":" << row.captions
          << ",\"tokens\":" << row.tokens << ",\"seconds\":" << row.seconds
          << ",\"tokens_per_second\":" << row.tokens / row.seconds << "}";
    }
    out << "]}\n";
    if (!out) {
      std::cerr << "cannot write " << json_path << "\n";
      return 1;
    }
  }
  return 0;
}

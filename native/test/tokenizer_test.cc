// Standalone test for clip::Tokenizer.
//
//   tokenizer_test <vocab.json> <merges.txt> [<clip-reference-dir>]
//
// With the reference directory it checks every record of
// tokens.hf77_fast.jsonl (Hugging Face's fast CLIP tokenizer) and that the
// openai gz merge list gives the same ids. The other checks need only the two
// files. Prints one line per failure, then "N passed, M failed"; exits
// non-zero on any failure.

#include "tokenizer.h"

#include <zlib.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <iostream>
#include <nlohmann/json.hpp>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "errors.h"
#include "test_check.h"

namespace {

using clip::ClipError;
using clip::ErrorCode;
using clip::Tokenizer;
using clip::TokenizerOptions;
using Ids = std::vector<int32_t>;

using clip::test::Check;

std::string Show(const Ids& ids) {
  std::ostringstream out;
  out << "[";
  for (size_t k = 0; k < ids.size(); ++k) out << (k ? "," : "") << ids[k];
  out << "]";
  return out.str();
}

// Printable form of a test input for failure lines.
std::string Quote(const std::string& text) {
  std::ostringstream out;
  size_t shown = std::min<size_t>(text.size(), 60);
  for (size_t k = 0; k < shown; ++k) {
    unsigned char c = static_cast<unsigned char>(text[k]);
    if (c < 0x20 || c == 0x7f || c >= 0x80) {
      char buf[8];
      std::snprintf(buf, sizeof(buf), "\\x%02X", c);
      out << buf;
    } else {
      out << text[k];
    }
  }
  if (text.size() > shown) out << "...(" << text.size() << " bytes)";
  return "\"" + out.str() + "\"";
}

void CheckIds(const Ids& got, const Ids& want, const std::string& what) {
  Check(got == want, what + ": got " + Show(got) + " want " + Show(want));
}

Ids Content(const Ids& ids) {
  if (ids.size() < 2) return {};
  return Ids(ids.begin() + 1, ids.end() - 1);
}

template <typename Fn>
double MinSeconds(int runs, Fn fn) {
  double best = 1e9;
  for (int k = 0; k < runs; ++k) {
    auto start = std::chrono::steady_clock::now();
    fn();
    std::chrono::duration<double> took = std::chrono::steady_clock::now() - start;
    best = std::min(best, took.count());
  }
  return best;
}

// Runs fn and checks that it throws ClipError with `code` and a message that
// contains `needle`.
void ExpectClipError(const std::function<void()>& fn, ErrorCode code, const std::string& needle,
                     const std::string& what) {
  try {
    fn();
    Check(false, what + ": no exception");
  } catch (const ClipError& e) {
    Check(e.code() == code, what + ": code " + clip::ErrorCodeName(e.code()) + " want " + clip::ErrorCodeName(code));
    Check(std::string(e.what()).find(needle) != std::string::npos,
          what + ": message \"" + e.what() + "\" does not name " + needle);
  } catch (const std::exception& e) {
    Check(false, what + ": threw a non-ClipError: " + e.what());
  }
}

std::string TempPath(const std::string& name) {
  // Unique per run so concurrent runs of the test do not share files.
  static const std::string run = std::to_string(std::random_device()());
  return (std::filesystem::temp_directory_path() / ("clip_tokenizer_test_" + run + "_" + name)).string();
}

void WriteFile(const std::string& path, const std::string& data) {
  std::ofstream out(path, std::ios::binary);
  out << data;
}

std::string ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream data;
  data << in.rdbuf();
  return data.str();
}

void WriteGzip(const std::string& path, const std::string& data) {
  gzFile file = gzopen(path.c_str(), "wb");
  gzwrite(file, data.data(), static_cast<unsigned>(data.size()));
  gzclose(file);
}

// ---------------------------------------------------------------- reference

void TestReference(const Tokenizer& hf, const std::string& dir) {
  std::ifstream in(dir + "/tokens.hf77_fast.jsonl");
  Check(static_cast<bool>(in), "cannot open " + dir + "/tokens.hf77_fast.jsonl");
  std::vector<std::string> texts;
  std::vector<Ids> expected;
  std::vector<int> lengths;
  std::string line;
  while (std::getline(in, line)) {
    if (line.empty()) continue;
    nlohmann::json record = nlohmann::json::parse(line);
    texts.push_back(record.at("text").get<std::string>());
    expected.push_back(record.at("ids").get<Ids>());
    std::vector<int> mask = record.at("attention_mask").get<std::vector<int>>();
    lengths.push_back(static_cast<int>(std::count(mask.begin(), mask.end(), 1)));
  }
  int context = hf.options().context_length;
  int matched = 0;
  for (size_t k = 0; k < texts.size(); ++k) {
    Ids got(static_cast<size_t>(context));
    int length = hf.EncodePadded(texts[k], got.data());
    bool ok = got == expected[k] && length == lengths[k];
    matched += ok ? 1 : 0;
    Check(ok, "hf77_fast record " + std::to_string(k + 1) + " " + Quote(texts[k]) + ": got " + Show(got) + " (length " +
                  std::to_string(length) + ") want " + Show(expected[k]));
  }
  std::cout << "hf77_fast parity: " << matched << "/" << texts.size() << std::endl;
  Check(texts.size() == 316, "expected 316 records, read " + std::to_string(texts.size()));

  std::unique_ptr<Tokenizer> openai =
      Tokenizer::FromOpenAiBpe(dir + "/tokenizer/bpe_simple_vocab_16e6.txt.gz", TokenizerOptions());
  Check(openai->vocab_size() == hf.vocab_size(),
        "openai gz vocab size " + std::to_string(openai->vocab_size()) + " != HF " + std::to_string(hf.vocab_size()));
  int same = 0;
  for (size_t k = 0; k < texts.size(); ++k) {
    Ids got = openai->Encode(texts[k]);
    Ids want = hf.Encode(texts[k]);
    same += got == want ? 1 : 0;
    CheckIds(got, want, "openai gz vs HF files on record " + std::to_string(k + 1) + " " + Quote(texts[k]));
  }
  std::cout << "openai gz == HF files: " << same << "/" << texts.size() << std::endl;
}

// ---------------------------------------------------------- always-on checks

std::string Repeat(const std::string& unit, size_t times) {
  std::string out;
  out.reserve(unit.size() * times);
  for (size_t k = 0; k < times; ++k) out += unit;
  return out;
}

void TestTruncation(const Tokenizer& tok) {
  const TokenizerOptions& o = tok.options();
  Ids cat = Content(tok.Encode("cat"));
  Check(cat.size() == 1, "\"cat\" should be one token, got " + Show(cat));
  if (cat.size() != 1) return;
  // 74, 75, 76 and 200 content tokens: full lengths 76, 77, 78 and 202.
  for (size_t words : {74, 75, 76, 200}) {
    std::string text = Repeat("cat ", words);
    size_t kept = std::min<size_t>(words, 75);
    Ids want = {o.bos};
    want.insert(want.end(), kept, cat[0]);
    want.push_back(o.eos);
    CheckIds(tok.Encode(text), want, "truncation with " + std::to_string(words) + " words");
    Ids padded(77);
    bool truncated = false;
    int length = tok.EncodePadded(text, padded.data(), &truncated);
    Check(length == static_cast<int>(want.size()),
          "EncodePadded length for " + std::to_string(words) + " words: " + std::to_string(length));
    Check(truncated == (words > 75), "truncated flag for " + std::to_string(words) + " words");
    Ids head(padded.begin(), padded.begin() + length);
    CheckIds(head, want, "EncodePadded head, " + std::to_string(words));
    Check(std::all_of(padded.begin() + length, padded.end(), [&](int32_t id) { return id == o.pad; }),
          "padding for " + std::to_string(words) + " words");
  }
  // Two tokens per repetition: the cut falls between "cat" and ",".
  Ids comma = Content(tok.Encode(","));
  Ids got = tok.Encode(Repeat("cat, ", 40));
  Check(got.size() == 77 && got[75] == cat[0] && got[76] == o.eos && got[74] == comma[0],
        "truncation between pieces: " + Show(got));
}

void TestSmallContext(const std::string& vocab, const std::string& merges) {
  TokenizerOptions small;
  small.context_length = 8;
  small.pad = 0;
  small.cache_capacity = 0;
  auto tok = Tokenizer::FromHuggingFaceFiles(vocab, merges, small);
  Ids cat = Content(tok->Encode("cat"));
  Ids out(8, -1);
  bool truncated = false;
  int length = tok->EncodePadded("cat cat cat cat cat cat cat", out.data(), &truncated);
  Ids want = {49406, cat[0], cat[0], cat[0], cat[0], cat[0], cat[0], 49407};
  CheckIds(out, want, "context_length 8, 7 words");
  Check(length == 8 && truncated, "context_length 8: length/truncated");
  length = tok->EncodePadded("cat", out.data(), &truncated);
  want = {49406, cat[0], 49407, 0, 0, 0, 0, 0};
  CheckIds(out, want, "context_length 8, pad 0");
  Check(length == 3 && !truncated, "context_length 8 short: length/truncated");

  // The framing ids come from the options; the literals keep their
  // vocabulary ids.
  TokenizerOptions framing;
  framing.bos = 7;
  framing.eos = 8;
  framing.pad = 9;
  framing.context_length = 6;
  auto framed = Tokenizer::FromHuggingFaceFiles(vocab, merges, framing);
  Ids framed_out(6, -1);
  framed->EncodePadded("<|endoftext|> cat", framed_out.data());
  CheckIds(framed_out, Ids{7, 49407, cat[0], 8, 9, 9}, "custom bos/eos/pad with a literal");

  TokenizerOptions bad;
  bad.context_length = 1;
  ExpectClipError([&] { Tokenizer::FromHuggingFaceFiles(vocab, merges, bad); }, ErrorCode::kInvalidArgument,
                  "context_length", "context_length 1");
}

void TestEmpty(const Tokenizer& tok) {
  const TokenizerOptions& o = tok.options();
  for (const std::string& text : {std::string(""), std::string(" "), std::string("   "), std::string("\t\n\r\v\f"),
                                  std::string("\xC2\xA0"),                  // NBSP
                                  std::string("\xE3\x80\x80"),              // U+3000
                                  std::string("\xE2\x80\xA8\xE2\x80\xA9"),  // U+2028/9
                                  std::string("\xC2\x85"),                  // NEL
                                  std::string(" \t \xE2\x80\x83 \n")}) {
    CheckIds(tok.Encode(text), Ids{o.bos, o.eos}, "empty " + Quote(text));
    Ids padded(77, -1);
    int length = tok.EncodePadded(text, padded.data());
    Ids want(77, o.pad);
    want[0] = o.bos;
    want[1] = o.eos;
    Check(length == 2 && padded == want, "EncodePadded empty " + Quote(text) + ": " + Show(padded));
  }
}

// WHATWG's UTF-8 decoder (what Node's Buffer.toString uses), written out
// here independently of the library: each maximal ill-formed subsequence
// becomes one U+FFFD. Returns the re-encoded, well-formed text.
std::string NodeUtf8Decode(const std::string& in) {
  const std::string fffd = "\xEF\xBF\xBD";
  std::string out;
  size_t i = 0;
  while (i < in.size()) {
    uint8_t lead = static_cast<uint8_t>(in[i]);
    if (lead < 0x80) {
      out += in[i++];
      continue;
    }
    int need = 0;
    uint8_t lower = 0x80;
    uint8_t upper = 0xBF;
    if (lead >= 0xC2 && lead <= 0xDF) {
      need = 1;
    } else if (lead >= 0xE0 && lead <= 0xEF) {
      need = 2;
      if (lead == 0xE0) lower = 0xA0;
      if (lead == 0xED) upper = 0x9F;
    } else if (lead >= 0xF0 && lead <= 0xF4) {
      need = 3;
      if (lead == 0xF0) lower = 0x90;
      if (lead == 0xF4) upper = 0x8F;
    } else {
      out += fffd;
      ++i;
      continue;
    }
    size_t j = i + 1;
    int got = 0;
    while (got < need && j < in.size()) {
      uint8_t next = static_cast<uint8_t>(in[j]);
      if (next < lower || next > upper) break;
      lower = 0x80;
      upper = 0xBF;
      ++j;
      ++got;
    }
    if (got == need) {
      out.append(in, i, j - i);
    } else {
      out += fffd;
    }
    i = j;
  }
  return out;
}

void TestInvalidUtf8(const Tokenizer& tok) {
  const std::string fffd = "\xEF\xBF\xBD";
  struct Case {
    std::string bad;
    int replacements;  // U+FFFD count Node's decoder produces
  };
  // Maximal-subpart replacement, as Buffer.toString('utf8') does.
  const Case cases[] = {
      {"\xFF", 1},         {"\xFE\xFF", 2}, {"\xC3", 1}, {"\xE2\x82", 1},         {"\xF0\x9F\x98", 1},
      {"\xED\xA0\x80", 3}, {"\xC0\xAF", 2}, {"\x80", 1}, {"\xF5\x80\x80\x80", 4}, {"\xF4\x90\x80\x80", 4},
      {"\xE0\x80\x80", 3},
  };
  for (const Case& c : cases) {
    for (const std::string& context : {std::string("cat"), std::string("")}) {
      std::string text = "a" + c.bad + context;
      std::string fixed = "a" + Repeat(fffd, c.replacements) + context;
      CheckIds(tok.Encode(text), tok.Encode(fixed), "invalid UTF-8 " + Quote(text));
      // At the very end of the input as well.
      CheckIds(tok.Encode(c.bad), tok.Encode(Repeat(fffd, c.replacements)), "invalid UTF-8 alone " + Quote(c.bad));
    }
  }
  // Random bytes, biased towards UTF-8 lead and continuation bytes: never a
  // crash, and always the ids of the text as Node would have decoded it.
  std::mt19937 rng(12345);
  int wrong = 0;
  for (int k = 0; k < 3000; ++k) {
    std::string text(rng() % 200, '\0');
    for (char& ch : text) {
      uint32_t r = rng();
      ch = static_cast<char>(r % 3 == 0 ? (r >> 8) & 0x7f : (r >> 8) & 0xff);
    }
    Ids ids = tok.Encode(text);
    Ids want = tok.Encode(NodeUtf8Decode(text));
    if (ids != want && wrong++ < 3) {
      CheckIds(ids, want, "random bytes " + Quote(text));
    }
  }
  Check(wrong == 0, std::to_string(wrong) +
                        " random byte strings differ "
                        "from their decoded form");
}

void TestControlCharacters(const Tokenizer& tok) {
  // Not whitespace for the HF pattern: kept as byte-level tokens.
  for (const std::string& control :
       {std::string("\x01"), std::string(1, '\0'), std::string("\x1B"), std::string("\x1C"), std::string("\x1F"),
        std::string("\x7F"), std::string("\xC2\x80"), std::string("\xC2\x9F"), std::string("\xEF\xBB\xBF")}) {
    Ids alone = Content(tok.Encode(control));
    Check(!alone.empty(), "control " + Quote(control) + " gives tokens");
    Ids a = Content(tok.Encode("a"));
    Ids b = Content(tok.Encode("b"));
    Ids want = a;
    // "a<c>b" is three pieces; the control run is a piece of its own.
    want.insert(want.end(), alone.begin(), alone.end());
    want.insert(want.end(), b.begin(), b.end());
    CheckIds(Content(tok.Encode("a" + control + "b")), want, "control between letters " + Quote(control));
  }
  // Whitespace controls separate words exactly like a space.
  CheckIds(tok.Encode("a\tb\nc\rd\ve\ff\xC2\x85g"), tok.Encode("a b c d e f g"), "whitespace controls");
}

void TestHugeInputs(const Tokenizer& tok) {
  const size_t kFiveMb = 5 * 1024 * 1024;
  std::string captions = Repeat("A photo of a small cat sitting on the wooden table, next to a cup. ", kFiveMb / 60);
  Check(captions.size() >= kFiveMb, "5 MB string size");
  std::string prefix = captions.substr(0, 1000);
  CheckIds(tok.Encode(captions), tok.Encode(prefix), "5 MB string equals its first 1000 characters");
  double big = MinSeconds(5, [&] { tok.Encode(captions); });
  double small = MinSeconds(5, [&] { tok.Encode(prefix); });
  std::cout << "5 MB caption text: " << big * 1e6 << " us (first 1000 chars: " << small * 1e6 << " us)" << std::endl;
  Check(big < 0.005, "5 MB string took " + std::to_string(big * 1e3) + " ms; it must not be read to its end");

  // One 5 MB word: the long-piece path must stop early too.
  std::string word(kFiveMb, 'a');
  Ids word_ids;
  double word_time = MinSeconds(3, [&] { word_ids = tok.Encode(word); });
  std::cout << "5 MB single word: " << word_time * 1e6 << " us" << std::endl;
  Check(word_ids.size() == 77, "5 MB single word gives 77 ids");
  Check(word_time < 0.05, "5 MB single word took " + std::to_string(word_time * 1e3) + " ms");
  CheckIds(word_ids, tok.Encode(word.substr(0, 8000)), "5 MB single word equals its first 8000 characters");

  // 5 MB of combining marks: bounded work, no crash.
  std::string marks = Repeat("\xCC\x81", kFiveMb / 2);
  Ids mark_ids;
  double mark_time = MinSeconds(3, [&] { mark_ids = tok.Encode(marks); });
  std::cout << "5 MB combining marks: " << mark_time * 1e6 << " us" << std::endl;
  Check(mark_ids.size() == 77 && mark_time < 0.05, "5 MB combining marks: " + std::to_string(mark_ids.size()) +
                                                       " ids in " + std::to_string(mark_time * 1e3) + " ms");

  // 5 MB of literals and digits also stop early.
  for (const std::string& unit :
       {std::string("<|endoftext|>"), std::string("<|startoftext|>"), std::string("7"), std::string("!?")}) {
    std::string text = Repeat(unit, kFiveMb / unit.size());
    Ids ids;
    double took = MinSeconds(3, [&] { ids = tok.Encode(text); });
    Check(ids.size() == 77 && took < 0.05, "5 MB of " + Quote(unit) + ": " + std::to_string(ids.size()) + " ids in " +
                                               std::to_string(took * 1e3) + " ms");
  }

  // Whitespace must be read to the end to know nothing follows; the word
  // after 5 MB of spaces must still be found.
  std::string spaces = std::string(kFiveMb, ' ') + "cat" + std::string(99, '\n');
  CheckIds(tok.Encode(spaces), tok.Encode("cat"), "word after 5 MB of spaces");
}

// Shifting tricky text across the internal chunk boundaries must not change
// the ids: leading whitespace produces no tokens.
void TestChunkBoundaries(const Tokenizer& tok) {
  const std::string tricky =
      "e\xCC\x81 \xE1\x84\x80\xE1\x85\xA1\xE1\x86\xA8 "  // e+acute, jamo L V T
      "(<|startoftext|>) it's WE'LL <|ENDOFTEXT|>! wow!<|endoftext|>x "
      "\xC4\xB0stanbul \xCE\x9F\xCE\x94\xCE\x9F\xCE\xA3 "  // Istanbul, ODOS
      "\xF0\x9F\x98\x82\xF0\x9F\x98\x82 12345 "
      "antidisestablishmentarianism!!!??? "
      "\xE0\xA4\xA8\xE0\xA4\xAE\xE0\xA4\xB8\xE0\xA5\x8D\xE0\xA4\xA4\xE0\xA5"
      "\x87";
  Ids want = tok.Encode(tricky);
  int mismatches = 0;
  for (size_t shift = 0; shift < 600; ++shift) {
    for (const char* pad : {" ", "\n"}) {
      std::string text = Repeat(pad, shift) + tricky;
      Ids got = tok.Encode(text);
      if (got != want && mismatches++ < 5) {
        CheckIds(got, want, "tricky text after " + std::to_string(shift) + " whitespace bytes");
      }
    }
  }
  Check(mismatches == 0, std::to_string(mismatches) + " chunk-boundary shifts changed the ids");

  // Same text repeated long enough to be truncated, at every shift.
  std::string long_text = Repeat(tricky + " ", 6);
  Ids long_want = tok.Encode(long_text);
  mismatches = 0;
  for (size_t shift = 0; shift < 300; ++shift) {
    if (tok.Encode(std::string(shift, ' ') + long_text) != long_want) {
      ++mismatches;
    }
  }
  Check(mismatches == 0, std::to_string(mismatches) + " shifts of a truncated text changed the ids");
}

void TestSpecialLiterals(const Tokenizer& tok) {
  Ids wow = Content(tok.Encode("wow"));
  Ids bang = Content(tok.Encode("!"));
  // The raw literal is split out before the punctuation run can swallow it.
  Ids want = wow;
  want.insert(want.end(), bang.begin(), bang.end());
  want.push_back(49407);
  CheckIds(Content(tok.Encode("wow!<|endoftext|>")), want, "wow!<|endoftext|>");
  CheckIds(Content(tok.Encode("<|StartOfText|>")), Ids{49406}, "<|startoftext|> matched after lowercasing");
  // Uppercase <|ENDOFTEXT|> is ordinary text: "<|" "endoftext" "|>".
  Ids pieces = Content(tok.Encode("<| endoftext |>"));
  CheckIds(Content(tok.Encode("<|ENDOFTEXT|>")), pieces, "<|ENDOFTEXT|>");
}

// The windowed BPE of very long pieces must agree with whole-piece BPE. With
// context 77 every id comes from the first window, so a long context is used
// as well to cross many window cuts.
void TestLongPieces(const std::string& vocab, const std::string& merges, const Tokenizer& tok) {
  TokenizerOptions exact_options = tok.options();
  exact_options.bpe_window_bytes = 0;
  exact_options.cache_capacity = 0;
  auto exact = Tokenizer::FromHuggingFaceFiles(vocab, merges, exact_options);
  TokenizerOptions long_options = tok.options();
  long_options.context_length = 3000;
  auto windowed_long = Tokenizer::FromHuggingFaceFiles(vocab, merges, long_options);
  long_options.bpe_window_bytes = 0;
  auto exact_long = Tokenizer::FromHuggingFaceFiles(vocab, merges, long_options);

  std::mt19937 rng(7);
  std::vector<std::string> words;
  for (const std::string& alphabet : {std::string("abcdefghijklmnopqrstuvwxyz"), std::string("aeiourstln"),
                                      std::string("ab"), std::string("!?.,;:-_'\"()[]")}) {
    for (int k = 0; k < 3; ++k) {
      std::string w;
      for (int n = 0; n < 9000; ++n) w += alphabet[rng() % alphabet.size()];
      words.push_back(w);
    }
  }
  words.push_back(Repeat("banana", 2000));
  words.push_back(Repeat("\xF0\x9F\x98\x82", 3000));          // emoji run
  words.push_back(Repeat("\xD0\xBF\xD1\x80\xD0\xB8", 2000));  // Cyrillic
  words.push_back(Repeat("\xE7\x8C\xAB", 4000));              // CJK
  for (const std::string& w : words) {
    CheckIds(tok.Encode(w), exact->Encode(w), "windowed vs exact BPE of long piece " + Quote(w));
    std::string tail = w.substr(0, 3000) + " cat";
    CheckIds(tok.Encode(tail), exact->Encode(tail), "windowed vs exact BPE of 3000-byte piece " + Quote(tail));
    CheckIds(windowed_long->Encode(w), exact_long->Encode(w), "windowed vs exact BPE, context 3000, " + Quote(w));
  }
}

void TestLoadErrors(const std::string& vocab, const std::string& merges) {
  TokenizerOptions o;
  const std::string missing = "/nonexistent/clip/vocab.json";
  ExpectClipError([&] { Tokenizer::FromHuggingFaceFiles(missing, merges, o); }, ErrorCode::kModelLoadFailed, missing,
                  "missing vocab");
  const std::string missing_merges = "/nonexistent/clip/merges.txt";
  ExpectClipError([&] { Tokenizer::FromHuggingFaceFiles(vocab, missing_merges, o); }, ErrorCode::kModelLoadFailed,
                  missing_merges, "missing merges");

  std::string corrupt = TempPath("corrupt_vocab.json");
  WriteFile(corrupt, "{\"a\": 1, \"b\": ");
  ExpectClipError([&] { Tokenizer::FromHuggingFaceFiles(corrupt, merges, o); }, ErrorCode::kModelLoadFailed, corrupt,
                  "corrupt vocab JSON");
  WriteFile(corrupt, "[1, 2, 3]");
  ExpectClipError([&] { Tokenizer::FromHuggingFaceFiles(corrupt, merges, o); }, ErrorCode::kModelLoadFailed, corrupt,
                  "vocab not an object");
  WriteFile(corrupt, "{\"a\": \"one\"}");
  ExpectClipError([&] { Tokenizer::FromHuggingFaceFiles(corrupt, merges, o); }, ErrorCode::kModelLoadFailed, corrupt,
                  "vocab id not integer");
  // Valid JSON, but the merges use tokens it lacks.
  std::string vocab_text = ReadFile(vocab);
  nlohmann::json vocab_json = nlohmann::json::parse(vocab_text);
  vocab_json.erase("in</w>");
  WriteFile(corrupt, vocab_json.dump());
  ExpectClipError([&] { Tokenizer::FromHuggingFaceFiles(corrupt, merges, o); }, ErrorCode::kModelLoadFailed, corrupt,
                  "vocab lacking a merged token");
  WriteFile(corrupt, "");
  ExpectClipError([&] { Tokenizer::FromHuggingFaceFiles(corrupt, merges, o); }, ErrorCode::kModelLoadFailed, corrupt,
                  "empty vocab file");
  std::remove(corrupt.c_str());

  std::string bad_merges = TempPath("bad_merges.txt");
  WriteFile(bad_merges, "#version: 0.2\ni n\nt h e\n");
  ExpectClipError([&] { Tokenizer::FromHuggingFaceFiles(vocab, bad_merges, o); }, ErrorCode::kModelLoadFailed,
                  bad_merges, "malformed merges line");
  WriteFile(bad_merges, "#version: 0.2\ni n\nqqqq zzzz\n");
  ExpectClipError([&] { Tokenizer::FromHuggingFaceFiles(vocab, bad_merges, o); }, ErrorCode::kModelLoadFailed,
                  bad_merges, "merge of unknown tokens");
  std::remove(bad_merges.c_str());

  const std::string missing_gz = "/nonexistent/clip/bpe_simple_vocab_16e6.txt.gz";
  ExpectClipError([&] { Tokenizer::FromOpenAiBpe(missing_gz, o); }, ErrorCode::kModelLoadFailed, missing_gz,
                  "missing gz");
  std::string not_gz = TempPath("not_gzip.txt.gz");
  WriteFile(not_gz, ReadFile(merges));
  ExpectClipError([&] { Tokenizer::FromOpenAiBpe(not_gz, o); }, ErrorCode::kModelLoadFailed, not_gz,
                  "plain text as gz");
  // A gzip of the merges without openai's header line is one line short.
  std::string short_gz = TempPath("short.txt.gz");
  WriteGzip(short_gz, "header\ni n\nt h\n");
  ExpectClipError([&] { Tokenizer::FromOpenAiBpe(short_gz, o); }, ErrorCode::kModelLoadFailed, short_gz,
                  "gz with too few lines");
  // Truncated gzip stream.
  std::string merges_text = ReadFile(merges);
  WriteGzip(short_gz, "header\n" + merges_text.substr(merges_text.find('\n') + 1));
  std::string gz_bytes = ReadFile(short_gz);
  WriteFile(short_gz, gz_bytes.substr(0, gz_bytes.size() / 2));
  ExpectClipError([&] { Tokenizer::FromOpenAiBpe(short_gz, o); }, ErrorCode::kModelLoadFailed, short_gz,
                  "truncated gz");
  std::remove(not_gz.c_str());
  std::remove(short_gz.c_str());
}

std::vector<std::string> SampleTexts() {
  std::vector<std::string> texts = {
      "a photo of a cat",
      "A Photo Of A DOG!!!",
      "it's what we'd've done, isn't it?",
      "caf\xC3\xA9 na\xC3\xAFve r\xC3\xA9sum\xC3\xA9",
      "\xE4\xB8\x80\xE5\x8F\xAA\xE7\x8C\xAB\xE5\x9C\xA8\xE6\xA1\x8C\xE5\xAD"
      "\x90",
      "\xF0\x9F\x90\xB1\xF0\x9F\x90\xB6\xF0\x9F\x8E\x89 party",
      "numbers 1234567890 and 3.14159",
      "<|startoftext|>hello<|endoftext|>",
      Repeat("a long caption that goes on and on ", 20),
      "",
      "   ",
      "x\xFFy\xED\xA0\x80z",
  };
  std::mt19937 rng(99);
  const char* words[] = {"red", "car", "parked", "near", "the", "old", "barn", "under", "a", "blue", "sky", "cloudy"};
  for (int k = 0; k < 200; ++k) {
    std::string text;
    int n = 3 + rng() % 25;
    for (int w = 0; w < n; ++w) text += std::string(words[rng() % 12]) + " ";
    texts.push_back(text + std::to_string(k));
  }
  return texts;
}

void TestConcurrency(const std::string& vocab, const std::string& merges) {
  std::vector<std::string> texts = SampleTexts();
  TokenizerOptions uncached;
  uncached.cache_capacity = 0;
  auto reference = Tokenizer::FromHuggingFaceFiles(vocab, merges, uncached);
  std::vector<Ids> want;
  for (const std::string& text : texts) want.push_back(reference->Encode(text));

  // A tiny cache so that the threads also race on evictions.
  for (size_t capacity : {size_t{40}, size_t{65536}}) {
    TokenizerOptions options;
    options.cache_capacity = capacity;
    auto shared = Tokenizer::FromHuggingFaceFiles(vocab, merges, options);
    std::vector<int> wrong(4, 0);
    std::vector<std::thread> threads;
    for (int t = 0; t < 4; ++t) {
      threads.emplace_back([&, t] {
        for (int round = 0; round < 20; ++round) {
          for (size_t k = 0; k < texts.size(); ++k) {
            size_t index = (k * 7 + static_cast<size_t>(t) * 13 + round) % texts.size();
            if (shared->Encode(texts[index]) != want[index]) ++wrong[t];
          }
        }
      });
    }
    for (std::thread& thread : threads) thread.join();
    for (int t = 0; t < 4; ++t) {
      Check(wrong[t] == 0, "thread " + std::to_string(t) + " with cache " + std::to_string(capacity) + ": " +
                               std::to_string(wrong[t]) + " wrong results");
    }
  }
}

}  // namespace

int main(int argc, char** argv) {
  if (argc != 3 && argc != 4) {
    std::cerr << "usage: " << argv[0] << " <vocab.json> <merges.txt> [<clip-reference-dir>]\n";
    return 2;
  }
  const std::string vocab = argv[1];
  const std::string merges = argv[2];
  try {
    auto tok = Tokenizer::FromHuggingFaceFiles(vocab, merges, TokenizerOptions());
    Check(tok->vocab_size() == 49408, "vocab size " + std::to_string(tok->vocab_size()));
    if (argc == 4) TestReference(*tok, argv[3]);
    TestTruncation(*tok);
    TestSmallContext(vocab, merges);
    TestEmpty(*tok);
    TestInvalidUtf8(*tok);
    TestControlCharacters(*tok);
    TestSpecialLiterals(*tok);
    TestChunkBoundaries(*tok);
    TestHugeInputs(*tok);
    TestLongPieces(vocab, merges, *tok);
    TestLoadErrors(vocab, merges);
    TestConcurrency(vocab, merges);
  } catch (const std::exception& e) {
    Check(false, std::string("unexpected exception: ") + e.what());
  }
  return clip::test::Summary();
}

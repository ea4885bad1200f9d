#include "manifest.h"

#include <sys/stat.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "errors.h"

namespace clip {
namespace {

using nlohmann::json;

[[noreturn]] void Fail(const std::string& file, const std::string& why) {
  throw ClipError(ErrorCode::kModelLoadFailed, file + ": " + why);
}

bool IsRegularFile(const std::string& path) {
  struct stat st;
  return stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

std::string JoinPath(const std::string& dir, const std::string& name) {
  if (!name.empty() && name[0] == '/') return name;
  if (dir.empty() || dir.back() == '/') return dir + name;
  return dir + "/" + name;
}

template <typename T>
T Field(const json& object, const char* key, const T& fallback, const std::string& file, const std::string& where) {
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return fallback;
  try {
    return it->get<T>();
  } catch (const json::exception&) {
    Fail(file, "field " + where + key + " has the wrong type");
  }
}

int PositiveInt(const json& object, const char* key, int fallback, const std::string& file, const std::string& where) {
  int value = Field<int>(object, key, fallback, file, where);
  if (value <= 0) Fail(file, "field " + where + key + " must be positive");
  return value;
}

std::array<float, 3> Triple(const json& object, const char* key, const std::array<float, 3>& fallback,
                            const std::string& file) {
  auto it = object.find(key);
  if (it == object.end()) return fallback;
  if (!it->is_array() || it->size() != 3) {
    Fail(file, std::string("field image.") + key + " must be an array of 3 numbers");
  }
  std::array<float, 3> out;
  for (int i = 0; i < 3; ++i) {
    if (!(*it)[i].is_number()) {
      Fail(file, std::string("field image.") + key + " must be an array of 3 numbers");
    }
    out[i] = (*it)[i].get<float>();
  }
  return out;
}

}  // namespace

Manifest ReadManifest(const std::string& directory) {
  struct stat st;
  if (stat(directory.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    throw ClipError(ErrorCode::kModelLoadFailed,
                    directory + ": not a model directory (it does not exist or is not a directory)");
  }
  const std::string file = JoinPath(directory, "clip.json");
  std::ifstream in(file, std::ios::binary);
  if (!in) Fail(file, "missing or unreadable manifest");
  std::stringstream buffer;
  buffer << in.rdbuf();

  json root;
  try {
    root = json::parse(buffer.str());
  } catch (const json::exception& e) {
    Fail(file, std::string("not valid JSON (") + e.what() + ")");
  }
  if (!root.is_object()) Fail(file, "the manifest must be a JSON object");

  Manifest m;
  m.directory = directory;
  m.format = Field<std::string>(root, "format", "", file, "");
  if (m.format.rfind("clip-native/", 0) != 0) {
    Fail(file, "field format must be \"clip-native/1\" (found \"" + m.format + "\")");
  }
  if (m.format != "clip-native/1") {
    Fail(file, "unsupported format \"" + m.format + "\"; this version reads clip-native/1");
  }
  m.name = Field<std::string>(root, "name", "", file, "");
  m.embed_dim = PositiveInt(root, "embedDim", 512, file, "");

  json image = root.value("image", json::object());
  json text = root.value("text", json::object());
  json files = root.value("files", json::object());
  if (!image.is_object()) Fail(file, "field image must be an object");
  if (!text.is_object()) Fail(file, "field text must be an object");
  if (!files.is_object()) Fail(file, "field files must be an object");

  m.image.size = PositiveInt(image, "size", 224, file, "image.");
  m.image.resize_shortest_edge = PositiveInt(image, "resizeShortestEdge", m.image.size, file, "image.");
  m.image.interpolation = Field<std::string>(image, "interpolation", "bicubic", file, "image.");
  if (m.image.interpolation != "bicubic") {
    Fail(file, "field image.interpolation: only \"bicubic\" is supported");
  }
  if (m.image.resize_shortest_edge < m.image.size) {
    Fail(file, "field image.resizeShortestEdge must be at least image.size");
  }
  m.image.mean = Triple(image, "mean", m.image.mean, file);
  m.image.std = Triple(image, "std", m.image.std, file);
  for (float s : m.image.std) {
    if (!(s > 0.0f)) Fail(file, "field image.std must hold positive numbers");
  }

  m.text.context_length = PositiveInt(text, "contextLength", 77, file, "text.");
  if (m.text.context_length < 2) Fail(file, "field text.contextLength must be at least 2");
  m.text.vocab_size = PositiveInt(text, "vocabSize", 49408, file, "text.");
  m.text.bos = Field<int32_t>(text, "bos", 49406, file, "text.");
  m.text.eos = Field<int32_t>(text, "eos", 49407, file, "text.");
  m.text.pad = Field<int32_t>(text, "pad", 49407, file, "text.");
  for (int32_t id : {m.text.bos, m.text.eos, m.text.pad}) {
    if (id < 0 || id >= m.text.vocab_size) {
      Fail(file, "fields text.bos/eos/pad must be ids below text.vocabSize");
    }
  }

  auto resolve = [&](const char* key, const char* fallback) {
    std::string path = JoinPath(directory, Field<std::string>(files, key, fallback, file, "files."));
    if (!IsRegularFile(path)) Fail(path, std::string("missing (named by files.") + key + " in clip.json)");
    return path;
  };
  m.image_encoder_path = resolve("imageEncoder", "image_encoder.pt");
  m.text_encoder_path = resolve("textEncoder", "text_encoder.pt");
  m.vocab_path = resolve("vocab", "vocab.json");
  m.merges_path = resolve("merges", "merges.txt");
  return m;
}

}  // namespace clip

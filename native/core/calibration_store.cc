#include "calibration_store.h"

#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <mutex>
#include <sstream>

namespace clip {
namespace {

constexpr const char* kHeader = "clip-native calibration 1";

// One writer per process at a time; other processes are met by the rename.
std::mutex g_write_mutex;

bool Storable(const std::string& text) { return !text.empty() && text.find_first_of("\t\r\n") == std::string::npos; }

// The lines of the file as key -> value. Absent or empty: no lines. Not a
// calibration file (its first line is another): nullopt.
std::optional<std::map<std::string, std::string>> ReadLines(const std::string& path) {
  std::map<std::string, std::string> lines;
  std::ifstream in(path, std::ios::binary);
  std::string line;
  if (!in || !std::getline(in, line)) return lines;
  if (line != kHeader) return std::nullopt;
  while (std::getline(in, line)) {
    const size_t tab = line.find('\t');
    if (tab == std::string::npos || tab == 0 || tab + 1 == line.size()) continue;
    lines[line.substr(0, tab)] = line.substr(tab + 1);
  }
  return lines;
}

}  // namespace

std::optional<std::string> CalibrationStore::Find(const std::string& key) const {
  if (!enabled() || !Storable(key)) return std::nullopt;
  const auto lines = ReadLines(path_);
  if (!lines) return std::nullopt;
  auto it = lines->find(key);
  if (it == lines->end()) return std::nullopt;
  return it->second;
}

std::string CalibrationStore::Put(const std::string& key, const std::string& value) const {
  if (!enabled()) return "";
  if (!Storable(key) || !Storable(value)) return "a key or value with a tab or line break";
  std::lock_guard<std::mutex> lock(g_write_mutex);
  // A file that is there but is not a calibration file is not replaced.
  std::optional<std::map<std::string, std::string>> lines = ReadLines(path_);
  if (!lines) return "the file exists and is not a clip-native calibration file";
  (*lines)[key] = value;
  std::ostringstream text;
  text << kHeader << '\n';
  for (const auto& [k, v] : *lines) text << k << '\t' << v << '\n';
  const std::string temporary = path_ + ".tmp" + std::to_string(getpid());
  {
    std::ofstream out(temporary, std::ios::binary | std::ios::trunc);
    if (!out) return std::string("cannot write ") + temporary + ": " + std::strerror(errno);
    out << text.str();
    out.flush();
    if (!out) {
      std::remove(temporary.c_str());
      return std::string("cannot write ") + temporary;
    }
  }
  if (std::rename(temporary.c_str(), path_.c_str()) != 0) {
    const std::string error = std::strerror(errno);
    std::remove(temporary.c_str());
    return "cannot replace the file: " + error;
  }
  return "";
}

}  // namespace clip

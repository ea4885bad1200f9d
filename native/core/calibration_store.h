#ifndef CLIP_NATIVE_CORE_CALIBRATION_STORE_H_
#define CLIP_NATIVE_CORE_CALIBRATION_STORE_H_

#include <optional>
#include <string>
#include <utility>

namespace clip {

// A file of kernel measurements that outlives the process
// (LoadOptions.calibrationCache): a load that calibrates reads what an
// earlier process on the same machine measured instead of timing every
// candidate again (seconds per model on a small CPU), and writes what it
// measured itself. A text file: a header line, then one `key<TAB>value` per
// line. The keys name everything a measurement depends on (the caller's
// concern); a line that cannot be read is ignored, as if absent.
//
// Thread-safe; writes from several processes replace the file atomically
// (write a temporary file beside it, rename), so a reader sees one whole
// version; when two processes write at once one's new line may be lost, and
// the next load measures it again.
class CalibrationStore {
 public:
  // An empty path stores nothing and finds nothing.
  explicit CalibrationStore(std::string path) : path_(std::move(path)) {}

  bool enabled() const { return !path_.empty(); }
  const std::string& path() const { return path_; }

  // The value stored for `key`, or nullopt (no file, no such line, a key or
  // value that a line cannot hold).
  std::optional<std::string> Find(const std::string& key) const;

  // Stores `value` for `key`, replacing an earlier line of that key. Returns
  // what went wrong ("" when stored): the load warns and goes on.
  std::string Put(const std::string& key, const std::string& value) const;

 private:
  std::string path_;
};

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_CALIBRATION_STORE_H_

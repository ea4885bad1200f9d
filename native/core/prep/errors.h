// Error codes shared by the core and the addon. The same list lives in
// lib/errors.ts; test/errors.test.ts keeps the two equal.
#ifndef CLIP_NATIVE_CORE_PREP_ERRORS_H_
#define CLIP_NATIVE_CORE_PREP_ERRORS_H_

#include <stdexcept>
#include <string>

namespace clip {

// X-macro so the enum, the names and the test list cannot drift apart.
#define CLIP_ERROR_CODES(X)                                   \
  X(kInvalidArgument, "CLIP_INVALID_ARGUMENT")                \
  X(kModelLoadFailed, "CLIP_MODEL_LOAD_FAILED")               \
  X(kImageDecodeFailed, "CLIP_IMAGE_DECODE_FAILED")           \
  X(kUnsupportedImageFormat, "CLIP_UNSUPPORTED_IMAGE_FORMAT") \
  X(kImageTooLarge, "CLIP_IMAGE_TOO_LARGE")                   \
  X(kQueueFull, "CLIP_QUEUE_FULL")                            \
  X(kAborted, "CLIP_ABORTED")                                 \
  X(kDisposed, "CLIP_DISPOSED")                               \
  X(kDeviceUnavailable, "CLIP_DEVICE_UNAVAILABLE")            \
  X(kImageFetchFailed, "CLIP_IMAGE_FETCH_FAILED")             \
  X(kUrlForbidden, "CLIP_URL_FORBIDDEN")                      \
  X(kAddonUnavailable, "CLIP_ADDON_UNAVAILABLE")              \
  X(kErrorThresholdExceeded, "CLIP_ERROR_THRESHOLD_EXCEEDED") \
  X(kInternal, "CLIP_INTERNAL")

enum class ErrorCode {
#define CLIP_ERROR_ENUM(name, str) name,
  CLIP_ERROR_CODES(CLIP_ERROR_ENUM)
#undef CLIP_ERROR_ENUM
};

inline const char* ErrorCodeName(ErrorCode code) {
  switch (code) {
#define CLIP_ERROR_CASE(name, str) \
  case ErrorCode::name:            \
    return str;
    CLIP_ERROR_CODES(CLIP_ERROR_CASE)
#undef CLIP_ERROR_CASE
  }
  return "CLIP_INTERNAL";
}

class ClipError : public std::runtime_error {
 public:
  ClipError(ErrorCode code, const std::string& message) : std::runtime_error(message), code_(code) {}
  ErrorCode code() const { return code_; }

 private:
  ErrorCode code_;
};

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_PREP_ERRORS_H_

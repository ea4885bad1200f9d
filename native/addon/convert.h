// Conversions between core values and JavaScript values. JS thread only.
#ifndef CLIP_NATIVE_ADDON_CONVERT_H_
#define CLIP_NATIVE_ADDON_CONVERT_H_

#include <napi.h>

#include <string>

#include "errors.h"

namespace clip::addon {

// An Error whose `code` is the stable string code and whose name is
// "ClipError"; lib/errors.ts turns it into a ClipError instance.
Napi::Error MakeError(Napi::Env env, ErrorCode code, const std::string& message);

}  // namespace clip::addon

#endif  // CLIP_NATIVE_ADDON_CONVERT_H_

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

// Plain-object option readers: absent or undefined keeps the fallback.
std::string OptionString(const Napi::Object& options, const char* key, const std::string& fallback);
double OptionNumber(const Napi::Object& options, const char* key, double fallback);
bool OptionBool(const Napi::Object& options, const char* key, bool fallback);

}  // namespace clip::addon

#endif  // CLIP_NATIVE_ADDON_CONVERT_H_

#include "convert.h"

namespace clip::addon {

Napi::Error MakeError(Napi::Env env, ErrorCode code, const std::string& message) {
  Napi::Error error = Napi::Error::New(env, message);
  error.Set("code", Napi::String::New(env, ErrorCodeName(code)));
  error.Set("name", Napi::String::New(env, "ClipError"));
  return error;
}

}  // namespace clip::addon

// Every option object the binding takes, read in one place: load()'s options
// into the core's ModelOptions and EngineOptions, submit()'s per-call options
// into what each task carries. JS thread only.
//
// lib/ validates the values first; these readers convert, and an absent or
// undefined key (or one of another type) keeps the core's default.
#ifndef CLIP_NATIVE_ADDON_OPTIONS_H_
#define CLIP_NATIVE_ADDON_OPTIONS_H_

#include <napi.h>

#include "engine.h"
#include "image.h"
#include "model.h"

namespace clip::addon {

struct LoadOptions {
  ModelOptions model;
  EngineOptions engine;
};

// load(directory, options). Throws a ClipError-shaped Napi::Error
// (CLIP_INVALID_ARGUMENT) for a dtype the core does not know.
LoadOptions ParseLoadOptions(Napi::Env env, const Napi::Object& options);

struct SubmitOptions {
  ImageDecodeOptions decode;
  bool together = false;  // run the call's tasks as batches of their own
};

// submit(kind, inputs, options, callback).
SubmitOptions ParseSubmitOptions(const Napi::Object& options);

}  // namespace clip::addon

#endif  // CLIP_NATIVE_ADDON_OPTIONS_H_

// Module entry: per-environment data, load(), and the error code list.
// Every function here runs on the JS thread of the environment that calls it.
#include <napi.h>
#include <torch/version.h>

#include "convert.h"
#include "cpu_allocator.h"
#include "cpu_features.h"
#include "cpu_linear.h"
#include "cpu_team.h"
#include "load_worker.h"
#include "model.h"
#include "model_wrap.h"
#include "options.h"

namespace clip::addon {
namespace {

// One per environment (main thread and each worker_thread), freed by Node
// when that environment is torn down.
struct AddonData {
  Napi::FunctionReference model_constructor;
};

// load(directory: string, options: object) -> Promise<NativeModel>
Napi::Value Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsObject()) {
    throw MakeError(env, ErrorCode::kInvalidArgument, "load(directory, options)");
  }
  LoadOptions options = ParseLoadOptions(env, info[1].As<Napi::Object>());

  auto* data = env.GetInstanceData<AddonData>();
  auto* worker = new LoadWorker(env, &data->model_constructor, info[0].As<Napi::String>().Utf8Value(), options.model,
                                options.engine);
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

// shutdownAll(): stops every engine of the process, waiting for batches in
// flight. process.exit() on the main thread ends the process with exit(),
// which skips environment cleanup hooks, so lib/binding.ts calls this from
// the 'exit' event: engine threads must stop before exit() destroys
// libtorch's (and oneDNN's) static objects under them.
Napi::Value ShutdownAll(const Napi::CallbackInfo& info) {
  ShutdownAllEngines();
  return info.Env().Undefined();
}

// Main thread; blocks it for one parallel region on a short-lived thread.
Napi::Value ParallelThreads(const Napi::CallbackInfo& info) {
  return Napi::Number::New(info.Env(), ParallelForThreads());
}

// cpuAllocator() -> the process's CPU tensor allocator (cpu_allocator.h).
Napi::Value CpuAllocator(const Napi::CallbackInfo& info) {
  const CpuAllocatorStats stats = GetCpuAllocatorStats();
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("installed", stats.installed);
  out.Set("maxCachedBytes", static_cast<double>(stats.max_cached_bytes));
  out.Set("cachedBytes", static_cast<double>(stats.cached_bytes));
  out.Set("inUseBytes", static_cast<double>(stats.in_use_bytes));
  out.Set("hits", static_cast<double>(stats.hits));
  out.Set("misses", static_cast<double>(stats.misses));
  out.Set("mappedBytes", static_cast<double>(stats.mapped_bytes));
  return out;
}

// forwardTeam() -> where CPU forwards' threads ran (cpu_team.h, and the image
// batches run in lanes: model.h). Main thread.
Napi::Value ForwardTeam(const Napi::CallbackInfo& info) {
  const TeamPlacementStats stats = GetTeamPlacementStats();
  Napi::Object out = Napi::Object::New(info.Env());
  out.Set("enabled", stats.enabled);
  out.Set("forwards", static_cast<double>(stats.scopes));
  out.Set("placed", static_cast<double>(stats.placed));
  out.Set("starved", static_cast<double>(stats.starved));
  const ImageLaneStats lanes = GetImageLaneStats();
  out.Set("laneBatches", static_cast<double>(lanes.batches));
  out.Set("laneBatchesOnTwoThreads", static_cast<double>(lanes.on_two_threads));
  return out;
}

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  ForwardMaxCpuIsa();
  auto* data = new AddonData();
  data->model_constructor = Napi::Persistent(ModelWrap::Define(env));
  env.SetInstanceData<AddonData>(data);

  exports.Set("load", Napi::Function::New(env, Load, "load"));
  exports.Set("shutdownAll", Napi::Function::New(env, ShutdownAll, "shutdownAll"));
  exports.Set("parallelThreads", Napi::Function::New(env, ParallelThreads, "parallelThreads"));
  exports.Set("cpuAllocator", Napi::Function::New(env, CpuAllocator, "cpuAllocator"));
  exports.Set("forwardTeam", Napi::Function::New(env, ForwardTeam, "forwardTeam"));
  exports.Set("NativeModel", data->model_constructor.Value());

  Napi::Array codes = Napi::Array::New(env);
  uint32_t i = 0;
#define CLIP_ERROR_PUSH(name, str) codes.Set(i++, Napi::String::New(env, str));
  CLIP_ERROR_CODES(CLIP_ERROR_PUSH)
#undef CLIP_ERROR_PUSH
  exports.Set("errorCodes", codes);
  exports.Set("builtWithCuda", Napi::Boolean::New(env, BuiltWithCuda()));
  exports.Set("torchVersion", Napi::String::New(env, TORCH_VERSION));
  Napi::Array isa = Napi::Array::New(env);
  uint32_t j = 0;
  for (const auto& name : GetCpuFeatures().Names()) isa.Set(j++, Napi::String::New(env, name));
  exports.Set("cpuIsa", isa);
  return exports;
}

}  // namespace
}  // namespace clip::addon

static Napi::Object InitClipNative(Napi::Env env, Napi::Object exports) { return clip::addon::Init(env, exports); }

NODE_API_MODULE(clip_native, InitClipNative)

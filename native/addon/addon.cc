// Module entry: per-environment data, load(), and the error code list.
// Every function here runs on the JS thread of the environment that calls it.
#include <napi.h>
#include <torch/version.h>

#include "convert.h"
#include "cpu_features.h"
#include "load_worker.h"
#include "model_wrap.h"

namespace clip::addon {
namespace {

// One per environment (main thread and each worker_thread), freed by Node
// when that environment is torn down.
struct AddonData {
  Napi::FunctionReference model_constructor;
};

Precision ParsePrecision(Napi::Env env, const std::string& name) {
  if (name == "float32") return Precision::kFloat32;
  if (name == "float16") return Precision::kFloat16;
  if (name == "bfloat16") return Precision::kBFloat16;
  if (name == "int8") return Precision::kInt8;
  throw MakeError(env, ErrorCode::kInvalidArgument,
                  "Expected \"float32\", \"float16\", \"bfloat16\" or \"int8\" for dtype but received \"" + name +
                      "\"");
}

// load(directory: string, options: object) -> Promise<NativeModel>
Napi::Value Load(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (info.Length() < 2 || !info[0].IsString() || !info[1].IsObject()) {
    throw MakeError(env, ErrorCode::kInvalidArgument, "load(directory, options)");
  }
  Napi::Object options = info[1].As<Napi::Object>();
  ModelOptions model_options;
  model_options.device = OptionString(options, "device", "auto");
  model_options.precision = ParsePrecision(env, OptionString(options, "dtype", "float32"));
  model_options.threads = static_cast<int>(OptionNumber(options, "threads", 0));
  model_options.cpu_kernels = OptionString(options, "cpuKernels", "");
  EngineOptions engine_options;
  engine_options.max_batch_images = static_cast<int>(OptionNumber(options, "maxBatchImages", 0));
  engine_options.max_batch_texts = static_cast<int>(OptionNumber(options, "maxBatchTexts", 0));
  engine_options.max_batch_tokens = static_cast<int>(OptionNumber(options, "maxBatchTokens", 0));
  engine_options.pad_image_batches = OptionBool(options, "padImageBatches", false);
  engine_options.max_wait_ms = OptionNumber(options, "maxWaitMs", engine_options.max_wait_ms);
  engine_options.queue_capacity =
      static_cast<size_t>(OptionNumber(options, "queueCapacity", static_cast<double>(engine_options.queue_capacity)));
  engine_options.prep_threads = static_cast<int>(OptionNumber(options, "prepThreads", 0));
  engine_options.thread_niceness =
      static_cast<int>(OptionNumber(options, "threadNiceness", engine_options.thread_niceness));

  auto* data = env.GetInstanceData<AddonData>();
  auto* worker = new LoadWorker(env, &data->model_constructor, info[0].As<Napi::String>().Utf8Value(),
                                model_options, engine_options);
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

Napi::Object Init(Napi::Env env, Napi::Object exports) {
  auto* data = new AddonData();
  data->model_constructor = Napi::Persistent(ModelWrap::Define(env));
  env.SetInstanceData<AddonData>(data);

  exports.Set("load", Napi::Function::New(env, Load, "load"));
  exports.Set("shutdownAll", Napi::Function::New(env, ShutdownAll, "shutdownAll"));
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

static Napi::Object InitClipNative(Napi::Env env, Napi::Object exports) {
  return clip::addon::Init(env, exports);
}

NODE_API_MODULE(clip_native, InitClipNative)

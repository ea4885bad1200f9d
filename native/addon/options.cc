#include "options.h"

#include <string>

#include "convert.h"

namespace clip::addon {
namespace {

std::string OptionString(const Napi::Object& options, const char* key, const std::string& fallback) {
  Napi::Value value = options.Get(key);
  return value.IsString() ? value.As<Napi::String>().Utf8Value() : fallback;
}

double OptionNumber(const Napi::Object& options, const char* key, double fallback) {
  Napi::Value value = options.Get(key);
  return value.IsNumber() ? value.As<Napi::Number>().DoubleValue() : fallback;
}

bool OptionBool(const Napi::Object& options, const char* key, bool fallback) {
  Napi::Value value = options.Get(key);
  return value.IsBoolean() ? value.As<Napi::Boolean>().Value() : fallback;
}

Precision ParsePrecision(Napi::Env env, const std::string& name) {
  if (name == "float32") return Precision::kFloat32;
  if (name == "float16") return Precision::kFloat16;
  if (name == "bfloat16") return Precision::kBFloat16;
  if (name == "int8") return Precision::kInt8;
  throw MakeError(
      env, ErrorCode::kInvalidArgument,
      "Expected \"float32\", \"float16\", \"bfloat16\" or \"int8\" for dtype but received \"" + name + "\"");
}

}  // namespace

LoadOptions ParseLoadOptions(Napi::Env env, const Napi::Object& options) {
  LoadOptions parsed;
  ModelOptions& model = parsed.model;
  model.device = OptionString(options, "device", "auto");
  model.precision = ParsePrecision(env, OptionString(options, "dtype", "float32"));
  model.threads = static_cast<int>(OptionNumber(options, "threads", 0));
  model.cpu_kernels = OptionString(options, "cpuKernels", "");
  model.calibration_cache = OptionString(options, "calibrationCache", "");
  EngineOptions& engine = parsed.engine;
  engine.max_batch_images = static_cast<int>(OptionNumber(options, "maxBatchImages", 0));
  engine.max_batch_texts = static_cast<int>(OptionNumber(options, "maxBatchTexts", 0));
  engine.max_batch_tokens = static_cast<int>(OptionNumber(options, "maxBatchTokens", 0));
  engine.pad_image_batches = OptionBool(options, "padImageBatches", false);
  engine.max_wait_ms = OptionNumber(options, "maxWaitMs", engine.max_wait_ms);
  engine.queue_capacity =
      static_cast<size_t>(OptionNumber(options, "queueCapacity", static_cast<double>(engine.queue_capacity)));
  engine.prep_threads = static_cast<int>(OptionNumber(options, "prepThreads", 0));
  engine.thread_niceness = static_cast<int>(OptionNumber(options, "threadNiceness", engine.thread_niceness));
  return parsed;
}

SubmitOptions ParseSubmitOptions(const Napi::Object& options) {
  SubmitOptions parsed;
  parsed.decode.apply_exif_orientation = OptionBool(options, "applyExifOrientation", false);
  parsed.together = OptionBool(options, "together", false);
  const double max_pixels = OptionNumber(options, "maxPixels", static_cast<double>(parsed.decode.max_pixels));
  if (max_pixels >= 1) parsed.decode.max_pixels = static_cast<uint64_t>(max_pixels);
  return parsed;
}

}  // namespace clip::addon

// load(dir, options): reads and checks a model directory off the JS thread.
#ifndef CLIP_NATIVE_ADDON_LOAD_WORKER_H_
#define CLIP_NATIVE_ADDON_LOAD_WORKER_H_

#include <napi.h>

#include <memory>
#include <string>

#include "engine.h"
#include "errors.h"

namespace clip::addon {

class LoadWorker : public Napi::AsyncWorker {
 public:
  LoadWorker(Napi::Env env, Napi::FunctionReference* model_constructor, std::string directory,
             ModelOptions model_options, EngineOptions engine_options);
  Napi::Promise Promise() { return deferred_.Promise(); }

  void Execute() override;  // libuv pool thread; touches no N-API
  void OnOK() override;     // JS thread
  void OnError(const Napi::Error& error) override;

 private:
  Napi::Promise::Deferred deferred_;
  Napi::FunctionReference* model_constructor_;  // owned by the addon's instance data
  std::string directory_;
  ModelOptions model_options_;
  EngineOptions engine_options_;
  std::shared_ptr<Engine> engine_;
  ErrorCode error_code_ = ErrorCode::kInternal;
};

}  // namespace clip::addon

#endif  // CLIP_NATIVE_ADDON_LOAD_WORKER_H_

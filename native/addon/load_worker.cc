#include "load_worker.h"

#include "convert.h"

namespace clip::addon {

LoadWorker::LoadWorker(Napi::Env env, Napi::FunctionReference* model_constructor, std::string directory,
                       ModelOptions model_options, EngineOptions engine_options)
    : Napi::AsyncWorker(env, "clip-native:load"),
      deferred_(Napi::Promise::Deferred::New(env)),
      model_constructor_(model_constructor),
      directory_(std::move(directory)),
      model_options_(std::move(model_options)),
      engine_options_(engine_options) {}

void LoadWorker::Execute() {
  try {
    std::shared_ptr<Model> model = Model::Load(directory_, model_options_);
    engine_ = std::make_shared<Engine>(std::move(model), engine_options_);
  } catch (const ClipError& e) {
    error_code_ = e.code();
    SetError(e.what());
  } catch (const c10::Error& e) {
    error_code_ = ErrorCode::kModelLoadFailed;
    SetError(directory_ + ": " + e.what_without_backtrace());
  } catch (const std::exception& e) {
    error_code_ = ErrorCode::kModelLoadFailed;
    SetError(directory_ + ": " + e.what());
  }
}

void LoadWorker::OnOK() {
  Napi::Env env = Env();
  auto* handle = new std::shared_ptr<Engine>(std::move(engine_));
  Napi::External<std::shared_ptr<Engine>> external = Napi::External<std::shared_ptr<Engine>>::New(
      env, handle, [](Napi::Env, std::shared_ptr<Engine>* h) { delete h; });
  try {
    deferred_.Resolve(model_constructor_->New({external}));
  } catch (const Napi::Error& e) {
    if (*handle) (*handle)->Shutdown();
    deferred_.Reject(e.Value());
  }
}

void LoadWorker::OnError(const Napi::Error& error) {
  deferred_.Reject(MakeError(Env(), error_code_, error.Message()).Value());
}

}  // namespace clip::addon

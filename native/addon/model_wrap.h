// NativeModel: the JS handle of one loaded model and its engine.
#ifndef CLIP_NATIVE_ADDON_MODEL_WRAP_H_
#define CLIP_NATIVE_ADDON_MODEL_WRAP_H_

#include <napi.h>

#include <memory>
#include <mutex>
#include <unordered_map>
#include <vector>

#include "engine.h"

namespace clip::addon {

class ModelWrap;

// Carries task results from engine threads to the JS thread. Push() runs on
// any thread; everything else on the JS thread. Results pushed after Close()
// are dropped, which is what makes teardown order safe.
class Delivery {
 public:
  struct Completion {
    uint64_t request_id;
    uint32_t index;
    TaskResult result;
  };

  static std::shared_ptr<Delivery> Create(Napi::Env env, ModelWrap* owner);
  void Push(Completion&& completion);
  std::vector<Completion> Take();
  void Close();
  void Ref(Napi::Env env);
  void Unref(Napi::Env env);
  void Detach() { owner_ = nullptr; }
  ModelWrap* owner() const { return owner_; }

 private:
  static void CallJs(Napi::Env env, Napi::Function, Delivery* delivery, void*);

  std::mutex mutex_;
  bool closed_ = false;
  std::vector<Completion> pending_;
  Napi::TypedThreadSafeFunction<Delivery, void, CallJs> tsfn_;
  ModelWrap* owner_ = nullptr;  // JS thread only; null once the wrap is gone
};

class ModelWrap : public Napi::ObjectWrap<ModelWrap> {
 public:
  static Napi::Function Define(Napi::Env env);
  // JS thread. Takes the loaded engine; `info[0]` is an External to it.
  explicit ModelWrap(const Napi::CallbackInfo& info);
  ~ModelWrap() override;

  // JS thread: settles requests whose tasks have all completed.
  void Drain(Napi::Env env);

 private:
  struct Request {
    uint32_t remaining;
    bool int32_results;  // token ids rather than floats
    Napi::Reference<Napi::Array> results;
    // Per item: prepare, queue and inference seconds (zeros for a failed item).
    std::vector<double> stages;
    Napi::FunctionReference callback;
    std::shared_ptr<CancelFlag> cancel;
  };
  struct Block {
    Napi::Reference<Napi::ArrayBuffer> buffer;
    size_t remaining;
  };

  Napi::Value Submit(const Napi::CallbackInfo& info);
  Napi::Value Cancel(const Napi::CallbackInfo& info);
  Napi::Value HoldForTesting(const Napi::CallbackInfo& info);
  Napi::Value Stats(const Napi::CallbackInfo& info);
  Napi::Value Info(const Napi::CallbackInfo& info);
  Napi::Value Dispose(const Napi::CallbackInfo& info);

  Napi::Value Convert(Napi::Env env, TaskResult& result, bool int32_results);
  void ShutdownNow();
  void CloseDelivery();
  void RequestDone();
  static void CleanupHook(void* arg);

  std::shared_ptr<Engine> engine_;
  std::shared_ptr<Delivery> delivery_;
  std::unordered_map<uint64_t, Request> requests_;
  std::unordered_map<uint64_t, Block> blocks_;
  uint64_t next_request_id_ = 1;
  bool disposing_ = false;
  bool cleanup_hook_added_ = false;
  napi_env env_ = nullptr;

  friend class DisposeWorker;
};

}  // namespace clip::addon

#endif  // CLIP_NATIVE_ADDON_MODEL_WRAP_H_

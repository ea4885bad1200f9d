#include "model_wrap.h"

#include <cstring>
#include <optional>

#include "convert.h"
#include "options.h"

namespace clip::addon {

// ---------------------------------------------------------------------------
// Delivery
// ---------------------------------------------------------------------------

std::shared_ptr<Delivery> Delivery::Create(Napi::Env env, ModelWrap* owner) {
  auto delivery = std::make_shared<Delivery>();
  delivery->owner_ = owner;
  // The TSFN's finalizer holds the last JS-side reference; engine threads
  // hold their own, so the object outlives whichever side goes first.
  auto* keep = new std::shared_ptr<Delivery>(delivery);
  delivery->tsfn_ = Napi::TypedThreadSafeFunction<Delivery, void, CallJs>::New(
      env, "clip-native:delivery", 0, 1, delivery.get(),
      [](Napi::Env, std::shared_ptr<Delivery>* keep, Delivery* self) {
        {
          std::lock_guard<std::mutex> lock(self->mutex_);
          self->closed_ = true;
        }
        delete keep;
      },
      keep);
  delivery->tsfn_.Unref(env);
  return delivery;
}

// Any thread. Coalesces: the JS thread is woken once per burst of results.
void Delivery::Push(Completion&& completion) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_) return;
  const bool wake = pending_.empty();
  pending_.push_back(std::move(completion));
  if (wake) tsfn_.NonBlockingCall();
}

std::vector<Delivery::Completion> Delivery::Take() {
  std::lock_guard<std::mutex> lock(mutex_);
  std::vector<Completion> out;
  out.swap(pending_);
  return out;
}

void Delivery::Close() {
  std::lock_guard<std::mutex> lock(mutex_);
  if (closed_) return;
  closed_ = true;
  pending_.clear();
  tsfn_.Release();
}

void Delivery::Ref(Napi::Env env) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!closed_) tsfn_.Ref(env);
}

void Delivery::Unref(Napi::Env env) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (!closed_) tsfn_.Unref(env);
}

void Delivery::CallJs(Napi::Env env, Napi::Function, Delivery* delivery, void*) {
  if (env == nullptr || delivery == nullptr) return;  // the environment is going away
  try {
    if (ModelWrap* owner = delivery->owner_) owner->Drain(env);
  } catch (const Napi::Error& e) {
    // JS cannot run any more (a worker being terminated) or a call failed:
    // hand it back to Node rather than letting it escape into libuv.
    e.ThrowAsJavaScriptException();
  }
}

// ---------------------------------------------------------------------------
// DisposeWorker: Engine::Shutdown waits for the batch in flight, so it runs
// off the JS thread; the results it flushes are drained before resolving.
// ---------------------------------------------------------------------------

class DisposeWorker : public Napi::AsyncWorker {
 public:
  DisposeWorker(Napi::Env env, ModelWrap* wrap, std::shared_ptr<Engine> engine)
      : Napi::AsyncWorker(env, "clip-native:dispose"),
        deferred_(Napi::Promise::Deferred::New(env)),
        engine_(std::move(engine)) {
    wrap_ref_ = Napi::Persistent(wrap->Value());
    wrap_ = wrap;
  }
  Napi::Promise Promise() { return deferred_.Promise(); }

  // libuv pool thread; touches no N-API.
  void Execute() override { engine_->Shutdown(); }

  void OnOK() override {
    engine_.reset();
    wrap_->Drain(Env());
    wrap_->CloseDelivery();
    deferred_.Resolve(Env().Undefined());
  }

 private:
  Napi::Promise::Deferred deferred_;
  std::shared_ptr<Engine> engine_;
  Napi::ObjectReference wrap_ref_;  // keeps the wrap alive until done
  ModelWrap* wrap_;
};

// ---------------------------------------------------------------------------
// ModelWrap
// ---------------------------------------------------------------------------

Napi::Function ModelWrap::Define(Napi::Env env) {
  return DefineClass(env, "NativeModel",
                     {
                         InstanceMethod<&ModelWrap::Submit>("submit"),
                         InstanceMethod<&ModelWrap::Cancel>("cancel"),
                         InstanceMethod<&ModelWrap::HoldForTesting>("holdForTesting"),
                         InstanceMethod<&ModelWrap::Stats>("stats"),
                         InstanceMethod<&ModelWrap::Info>("info"),
                         InstanceMethod<&ModelWrap::Dispose>("dispose"),
                     });
}

ModelWrap::ModelWrap(const Napi::CallbackInfo& info) : Napi::ObjectWrap<ModelWrap>(info) {
  Napi::Env env = info.Env();
  if (info.Length() < 1 || !info[0].IsExternal()) {
    throw MakeError(env, ErrorCode::kInvalidArgument, "NativeModel is created by load()");
  }
  auto* engine = info[0].As<Napi::External<std::shared_ptr<Engine>>>().Data();
  engine_ = std::move(*engine);
  delivery_ = Delivery::Create(env, this);
  env_ = env;
  napi_add_env_cleanup_hook(env, CleanupHook, this);
  cleanup_hook_added_ = true;
}

ModelWrap::~ModelWrap() {
  // Reached by GC without dispose(), or at environment teardown.
  if (cleanup_hook_added_) napi_remove_env_cleanup_hook(env_, CleanupHook, this);
  ShutdownNow();
}

void ModelWrap::CleanupHook(void* arg) {
  auto* self = static_cast<ModelWrap*>(arg);
  self->cleanup_hook_added_ = false;
  self->ShutdownNow();
}

// JS thread, synchronous: used when the environment or the wrap goes away,
// where nothing can be delivered any more.
void ModelWrap::ShutdownNow() {
  if (delivery_) {
    delivery_->Detach();
    delivery_->Close();
  }
  if (engine_) {
    engine_->Shutdown();
    engine_.reset();
  }
}

void ModelWrap::CloseDelivery() {
  if (!delivery_) return;
  delivery_->Detach();
  delivery_->Close();
}

// info: (kind: number, inputs: Array, options: object, callback: Function) -> request id.
// JS thread. Inputs are copied into the tasks, so the caller may reuse its
// buffers as soon as this returns.
Napi::Value ModelWrap::Submit(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!engine_ || disposing_) throw MakeError(env, ErrorCode::kDisposed, "the model has been disposed");
  if (info.Length() < 4 || !info[0].IsNumber() || !info[1].IsArray() || !info[2].IsObject() || !info[3].IsFunction()) {
    throw MakeError(env, ErrorCode::kInvalidArgument, "submit(kind, inputs, options, callback)");
  }
  const int kind_number = info[0].As<Napi::Number>().Int32Value();
  if (kind_number < 0 || kind_number > static_cast<int>(TaskKind::kPreprocess)) {
    throw MakeError(env, ErrorCode::kInvalidArgument, "unknown task kind " + std::to_string(kind_number));
  }
  const TaskKind kind = static_cast<TaskKind>(kind_number);
  Napi::Array inputs = info[1].As<Napi::Array>();
  const uint32_t count = inputs.Length();
  if (count == 0) throw MakeError(env, ErrorCode::kInvalidArgument, "Expected at least one input");
  // Checked before any input is copied: a call that can never be queued
  // must not cost a copy of every input first.
  try {
    engine_->CheckCapacity(count);
  } catch (const ClipError& e) {
    throw MakeError(env, e.code(), e.what());
  }

  const SubmitOptions options = ParseSubmitOptions(info[2].As<Napi::Object>());

  const uint64_t request_id = next_request_id_++;
  auto cancel = std::make_shared<CancelFlag>();
  std::weak_ptr<Delivery> delivery = delivery_;
  std::vector<std::unique_ptr<Task>> tasks;
  tasks.reserve(count);
  for (uint32_t i = 0; i < count; ++i) {
    Napi::Value value = inputs.Get(i);
    auto task = std::make_unique<Task>();
    task->kind = kind;
    task->decode = options.decode;
    task->cancel = cancel;
    auto bad = [&](const char* expected) {
      return MakeError(env, ErrorCode::kInvalidArgument,
                       std::string("Expected ") + expected + " for inputs[" + std::to_string(i) + "]");
    };
    switch (kind) {
      case TaskKind::kImageBytes:
      case TaskKind::kPreprocess: {
        if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_uint8_array) {
          throw bad("a Uint8Array");
        }
        auto bytes = value.As<Napi::Uint8Array>();
        task->input.assign(reinterpret_cast<const char*>(bytes.Data()), bytes.ByteLength());
        break;
      }
      case TaskKind::kImagePixels: {
        if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_float32_array) {
          throw bad("a Float32Array");
        }
        auto pixels = value.As<Napi::Float32Array>();
        task->pixels.resize(pixels.ElementLength());
        std::memcpy(task->pixels.data(), pixels.Data(), pixels.ElementLength() * sizeof(float));
        break;
      }
      case TaskKind::kText:
      case TaskKind::kTokenize:
        if (!value.IsString()) throw bad("a string");
        task->input = value.As<Napi::String>().Utf8Value();
        break;
      case TaskKind::kTokenIds: {
        if (!value.IsTypedArray() || value.As<Napi::TypedArray>().TypedArrayType() != napi_int32_array) {
          throw bad("an Int32Array");
        }
        auto ids = value.As<Napi::Int32Array>();
        task->ids.assign(ids.Data(), ids.Data() + ids.ElementLength());
        break;
      }
    }
    // Engine thread. The weak pointer lets a task finishing after teardown
    // find nothing to deliver to.
    task->done = [delivery, request_id, i](TaskResult&& result) {
      if (auto target = delivery.lock()) target->Push({request_id, i, std::move(result)});
    };
    tasks.push_back(std::move(task));
  }

  try {
    engine_->Submit(std::move(tasks), options.together);
  } catch (const ClipError& e) {
    throw MakeError(env, e.code(), e.what());
  }
  Request request;
  request.remaining = count;
  request.int32_results = kind == TaskKind::kTokenize;
  request.results = Napi::Persistent(Napi::Array::New(env, count));
  request.stages.assign(static_cast<size_t>(count) * 3, 0.0);
  request.callback = Napi::Persistent(info[3].As<Napi::Function>());
  request.cancel = cancel;
  if (requests_.empty()) {
    delivery_->Ref(env);
    Ref();  // the wrap stays alive while work is outstanding
  }
  requests_.emplace(request_id, std::move(request));
  return Napi::Number::New(env, static_cast<double>(request_id));
}

Napi::Value ModelWrap::Convert(Napi::Env env, TaskResult& result, bool int32_results) {
  if (!result.ok) return MakeError(env, result.code, result.message).Value();
  Napi::ArrayBuffer buffer;
  auto make_buffer = [&] {
    // The buffer owns one reference to the result's memory block.
    auto* keep = new std::shared_ptr<void>(result.owner);
    return Napi::ArrayBuffer::New(
        env, const_cast<void*>(result.block), result.block_bytes,
        [](Napi::Env, void*, std::shared_ptr<void>* keep) { delete keep; }, keep);
  };
  if (result.batch_id == 0) {
    buffer = make_buffer();
  } else {
    // One ArrayBuffer per batch: V8 must never see two buffers over the same
    // memory, and every batch-mate becomes a view into it.
    auto it = blocks_.find(result.batch_id);
    if (it == blocks_.end()) {
      buffer = make_buffer();
      it = blocks_.emplace(result.batch_id, Block{Napi::Persistent(buffer), result.block_results}).first;
    } else {
      buffer = it->second.buffer.Value();
    }
    if (--it->second.remaining == 0) blocks_.erase(it);
  }
  const size_t offset = static_cast<const char*>(result.data) - static_cast<const char*>(result.block);
  if (int32_results) return Napi::Int32Array::New(env, result.length, buffer, offset);
  return Napi::Float32Array::New(env, result.length, buffer, offset);
}

void ModelWrap::Drain(Napi::Env env) {
  if (!delivery_) return;
  Napi::HandleScope scope(env);
  std::vector<Delivery::Completion> completions = delivery_->Take();
  struct Settled {
    Napi::FunctionReference callback;
    Napi::Reference<Napi::Array> results;
    std::vector<double> stages;
  };
  std::vector<Settled> settled;
  for (auto& completion : completions) {
    auto it = requests_.find(completion.request_id);
    if (it == requests_.end()) continue;
    Request& request = it->second;
    Napi::Value value = Convert(env, completion.result, request.int32_results);
    request.results.Value().Set(completion.index, value);
    double* stage = request.stages.data() + static_cast<size_t>(completion.index) * 3;
    stage[0] = completion.result.prepare_seconds;
    stage[1] = completion.result.queue_seconds;
    stage[2] = completion.result.inference_seconds;
    if (--request.remaining == 0) {
      settled.push_back({std::move(request.callback), std::move(request.results), std::move(request.stages)});
      requests_.erase(it);
    }
  }
  if (!settled.empty() && requests_.empty()) {
    delivery_->Unref(env);
    Unref();
  }
  // Callbacks only settle promises, but should one throw, the others still
  // run and the first error is handed back to Node as an uncaught exception.
  std::optional<Napi::Error> first_error;
  for (auto& [callback, results, stages] : settled) {
    try {
      Napi::Float64Array times = Napi::Float64Array::New(env, stages.size());
      std::copy(stages.begin(), stages.end(), times.Data());
      callback.Call({results.Value(), times});
    } catch (const Napi::Error& e) {
      if (!first_error) first_error = e;
    }
  }
  if (first_error) first_error->ThrowAsJavaScriptException();
}

Napi::Value ModelWrap::Cancel(const Napi::CallbackInfo& info) {
  if (info.Length() >= 1 && info[0].IsNumber()) {
    auto it = requests_.find(static_cast<uint64_t>(info[0].As<Napi::Number>().DoubleValue()));
    if (it != requests_.end()) it->second.cancel->cancelled.store(true);
  }
  return info.Env().Undefined();
}

// JS thread. Test hook: holds (true) or releases (false) the engine's inference thread.
Napi::Value ModelWrap::HoldForTesting(const Napi::CallbackInfo& info) {
  if (engine_ && info.Length() >= 1 && info[0].IsBoolean()) engine_->HoldForTesting(info[0].As<Napi::Boolean>());
  return info.Env().Undefined();
}

Napi::Value ModelWrap::Stats(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  Napi::Object out = Napi::Object::New(env);
  const char* names[2] = {"image", "text"};
  for (int e = 0; e < 2; ++e) {
    EncoderStats stats;
    if (engine_) stats = engine_->Stats(static_cast<Encoder>(e));
    Napi::Object o = Napi::Object::New(env);
    o.Set("queueDepth", static_cast<double>(stats.queue_depth));
    o.Set("batches", static_cast<double>(stats.batches));
    o.Set("forwards", static_cast<double>(stats.forwards));
    o.Set("items", static_cast<double>(stats.items));
    o.Set("meanBatchSize", stats.mean_batch_size);
    o.Set("itemsPerSecond", stats.items_per_second);
    out.Set(names[e], o);
  }
  return out;
}

Napi::Value ModelWrap::Info(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!engine_) throw MakeError(env, ErrorCode::kDisposed, "the model has been disposed");
  const Model& model = engine_->model();
  const Manifest& m = model.manifest();
  Napi::Object out = Napi::Object::New(env);
  out.Set("name", m.name);
  out.Set("device", model.device().str());
  out.Set("dtype", PrecisionName(model.precision()));
  out.Set("embedDim", m.embed_dim);
  out.Set("imageSize", m.image.size);
  out.Set("contextLength", m.text.context_length);
  out.Set("vocabSize", m.text.vocab_size);
  out.Set("maxBatchImages", engine_->max_batch(Encoder::kImage));
  out.Set("maxBatchTexts", engine_->max_batch(Encoder::kText));
  out.Set("maxBatchTokens", engine_->max_batch_tokens());
  out.Set("queueCapacity", static_cast<double>(engine_->queue_capacity()));
  out.Set("padImageBatches", engine_->pad_image_batches());
  // A stream id fits a double exactly: libtorch's pool streams have small ids.
  if (model.is_cuda()) {
    out.Set("cudaStream", static_cast<double>(model.cuda_stream_id()));
  } else {
    out.Set("cudaStream", env.Null());
  }
  if (!model.is_cuda()) {
    const CpuKernelChoice& k = model.cpu_kernels();
    Napi::Object kernels = Napi::Object::New(env);
    kernels.Set("image", k.image);
    kernels.Set("text", k.text);
    kernels.Set("selectedBy", k.selected_by);
    Napi::Array candidates = Napi::Array::New(env, k.candidates.size());
    for (uint32_t i = 0; i < k.candidates.size(); ++i) candidates.Set(i, k.candidates[i]);
    kernels.Set("candidates", candidates);
    auto timings = [&](const std::vector<std::pair<std::string, double>>& ms) {
      Napi::Object o = Napi::Object::New(env);
      for (const auto& [name, value] : ms) o.Set(name, value);
      return o;
    };
    kernels.Set("imageMsPerItem", timings(k.image_ms));
    kernels.Set("textMsPerItem", timings(k.text_ms));
    auto images_per_forward = [&](int64_t most) {
      return most > 0 ? Napi::Value(Napi::Number::New(env, static_cast<double>(most))) : env.Null();
    };
    if (k.image_batch_from > 0) {
      Napi::Object batch = Napi::Object::New(env);
      batch.Set("kernel", k.image_batch);
      batch.Set("fromImages", static_cast<double>(k.image_batch_from));
      batch.Set("maxImagesPerForward", images_per_forward(k.image_batch_max_images_per_forward));
      kernels.Set("imageBatch", batch);
    } else {
      kernels.Set("imageBatch", env.Null());
    }
    kernels.Set("imageBatchMsPerItem", timings(k.image_batch_ms));
    kernels.Set("maxImagesPerForward", images_per_forward(k.max_images_per_forward));
    Napi::Object calibration = Napi::Object::New(env);
    auto source = [&](const std::string& by) { return by.empty() ? env.Null() : Napi::String::New(env, by); };
    calibration.Set("image", source(k.image_measured_by));
    calibration.Set("text", source(k.text_measured_by));
    calibration.Set("cacheFile", source(k.calibration_cache));
    kernels.Set("calibration", calibration);
    // A count per encoder, as { image, text }.
    auto per_encoder = [&](const char* name, int image, int text) {
      Napi::Object o = Napi::Object::New(env);
      o.Set("image", image);
      o.Set("text", text);
      kernels.Set(name, o);
    };
    per_encoder("attentionMatmuls", k.image_attention_matmuls, k.text_attention_matmuls);
    per_encoder("fusedAttentions", k.image_fused_attentions, k.text_fused_attentions);
    per_encoder("fusedMlps", k.image_fused_mlps, k.text_fused_mlps);
    per_encoder("layerNorms", k.image_layer_norms, k.text_layer_norms);
    per_encoder("fusedLayerNorms", k.image_fused_norms, k.text_fused_norms);
    Napi::Object attention_choice = Napi::Object::New(env);
    attention_choice.Set("kernel", k.attention_kernel);
    attention_choice.Set("selectedBy", k.attention_selected_by);
    const bool measured = k.attention_kernel_us >= 0;
    attention_choice.Set("kernelMicroseconds",
                         measured ? Napi::Value(Napi::Number::New(env, k.attention_kernel_us)) : env.Null());
    attention_choice.Set("atenMicroseconds",
                         measured ? Napi::Value(Napi::Number::New(env, k.attention_aten_us)) : env.Null());
    kernels.Set("attentionKernel", attention_choice);
    Napi::Object lanes = Napi::Object::New(env);
    lanes.Set("lanes", k.image_lanes_from > 0);
    lanes.Set("fromImages", k.image_lanes_from > 0
                                ? Napi::Value(Napi::Number::New(env, static_cast<double>(k.image_lanes_from)))
                                : env.Null());
    lanes.Set("selectedBy", k.image_lanes_selected_by);
    kernels.Set("imageLanes", lanes);
    kernels.Set("packedTexts", k.packed_texts);
    kernels.Set("packedAttentions", k.text_packed_attentions);
    out.Set("cpuKernels", kernels);
  } else {
    out.Set("cpuKernels", env.Null());
  }
  return out;
}

Napi::Value ModelWrap::Dispose(const Napi::CallbackInfo& info) {
  Napi::Env env = info.Env();
  if (!engine_ || disposing_) {
    auto deferred = Napi::Promise::Deferred::New(env);
    deferred.Resolve(env.Undefined());
    return deferred.Promise();
  }
  disposing_ = true;
  auto* worker = new DisposeWorker(env, this, std::move(engine_));
  Napi::Promise promise = worker->Promise();
  worker->Queue();
  return promise;
}

}  // namespace clip::addon

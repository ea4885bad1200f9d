#include "model.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/version.h>

#include <cstdlib>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>
#include <utility>
#include <vector>

#include "errors.h"

#ifdef CLIP_WITH_CUDA
// Only c10's CUDA headers: they need the CUDA runtime's headers, not cuBLAS
// and friends, and c10::Event waits through libtorch's own CUDA hooks.
#include <c10/core/Event.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/cuda.h>
#endif

namespace clip {

#ifdef CLIP_WITH_CUDA
// The engine's own stream and an event per forward, so that waiting for a
// result never synchronizes the whole device.
struct Model::CudaState {
  c10::cuda::CUDAStream stream;
  explicit CudaState(c10::DeviceIndex index)
      : stream(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index)) {}
};
#else
struct Model::CudaState {};
#endif

namespace {

std::once_flag g_threads_once;

// Thread pools are process-wide in libtorch and set_num_threads rebuilds
// them, so this happens once, before the first forward.
void ConfigureThreadsOnce(int threads) {
  std::call_once(g_threads_once, [threads] {
    try {
      at::set_num_interop_threads(1);
    } catch (const c10::Error&) {
      // Already fixed by an earlier user of libtorch in this process.
    }
    if (threads > 0) at::set_num_threads(threads);
  });
}

torch::Device ParseDevice(const std::string& spec) {
  if (spec == "cpu") return torch::Device(torch::kCPU);
  if (spec == "auto") {
#ifdef CLIP_WITH_CUDA
    if (torch::cuda::is_available()) return torch::Device(torch::kCUDA, 0);
#endif
    return torch::Device(torch::kCPU);
  }
  if (spec == "cuda" || spec.rfind("cuda:", 0) == 0) {
#ifdef CLIP_WITH_CUDA
    if (!torch::cuda::is_available()) {
      throw ClipError(ErrorCode::kDeviceUnavailable,
                      "device \"" + spec + "\" was asked for but no CUDA device is available");
    }
    torch::Device device(spec == "cuda" ? std::string("cuda:0") : spec);
    if (device.index() >= static_cast<int>(torch::cuda::device_count())) {
      throw ClipError(ErrorCode::kDeviceUnavailable, "device \"" + spec + "\" does not exist");
    }
    return device;
#else
    throw ClipError(ErrorCode::kDeviceUnavailable,
                    "device \"" + spec +
                        "\" was asked for but this build of clip-native uses a libtorch without CUDA");
#endif
  }
  throw ClipError(ErrorCode::kInvalidArgument,
                  "Expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\" for device but received \"" +
                      spec + "\"");
}

void SetCpuAutocast(bool enabled) {
#if TORCH_VERSION_MAJOR >= 2 && TORCH_VERSION_MINOR >= 4 || TORCH_VERSION_MAJOR >= 3
  at::autocast::set_autocast_enabled(at::kCPU, enabled);
  at::autocast::set_autocast_dtype(at::kCPU, at::kBFloat16);
#else
  at::autocast::set_cpu_enabled(enabled);
  at::autocast::set_autocast_cpu_dtype(at::kBFloat16);
#endif
}

torch::jit::script::Module LoadArchive(const std::string& path, const torch::Device& device) {
  try {
    torch::jit::script::Module module = torch::jit::load(path, torch::kCPU);
    module.eval();
    for (auto parameter : module.parameters()) parameter.requires_grad_(false);
    module.to(device);
    return module;
  } catch (const c10::Error& e) {
    throw ClipError(ErrorCode::kModelLoadFailed,
                    path + ": not a loadable TorchScript archive (" + e.what_without_backtrace() + ")");
  } catch (const std::exception& e) {
    throw ClipError(ErrorCode::kModelLoadFailed,
                    path + ": not a loadable TorchScript archive (" + e.what() + ")");
  }
}

// --- CPU inference graph ------------------------------------------------------
// libtorch runs float32 aten::linear on MKL's sgemm, which takes a generic
// code path on CPUs other than Intel's: on the AVX-512 AMD EPYC of
// bench/RESULTS.md oneDNN's linear is about 2x faster. So on the CPU the
// encoders are frozen (weights become constants) and every linear with
// constant weights becomes oneDNN's mkldnn::_linear_pointwise on weights
// packed once at load. A QuickGELU after it, x * sigmoid(s * x) with
// s = 1.702, becomes oneDNN's swish post-op on weights and bias scaled by s,
// and the next linear's weights take the 1/s (swish(s x) / s == x * sigmoid(s x)).
// With bfloat16 the packed weights are bfloat16 and the input is cast, which
// autocast did on every forward, weight casts included. Residual adds as
// oneDNN binary post-ops measured about 7% slower; bench/RESULTS.md lists
// what was tried.

std::optional<at::Tensor> ConstantTensor(torch::jit::Value* value) {
  if (value->node()->kind() != c10::prim::Constant) return std::nullopt;
  auto ivalue = torch::jit::toIValue(value);
  if (!ivalue || !ivalue->isTensor()) return std::nullopt;
  return ivalue->toTensor();
}

bool IsNoneConstant(torch::jit::Value* value) {
  return value->node()->kind() == c10::prim::Constant && value->type()->kind() == c10::TypeKind::NoneType;
}

std::optional<double> ConstantNumber(torch::jit::Value* value) {
  if (value->node()->kind() != c10::prim::Constant) return std::nullopt;
  auto ivalue = torch::jit::toIValue(value);
  if (!ivalue) return std::nullopt;
  if (ivalue->isDouble()) return ivalue->toDouble();
  if (ivalue->isInt()) return static_cast<double>(ivalue->toInt());
  return std::nullopt;
}

bool HasOperator(const char* name, const char* overload) {
  return c10::Dispatcher::singleton().findSchema({name, overload}).has_value();
}

// The nodes of x * sigmoid(s * x) where x is `linear`'s output and feeds only them.
struct SigmoidGate {
  torch::jit::Node* scale;
  torch::jit::Node* sigmoid;
  torch::jit::Node* product;
  double s;
};

std::optional<SigmoidGate> MatchSigmoidGate(torch::jit::Node* linear) {
  torch::jit::Value* x = linear->output();
  if (x->uses().size() != 2) return std::nullopt;
  SigmoidGate gate{nullptr, nullptr, nullptr, 0.0};
  for (const auto& use : x->uses()) {
    torch::jit::Node* user = use.user;
    if (user->kind() != c10::aten::mul || user->inputs().size() != 2) return std::nullopt;
    if (auto s = ConstantNumber(user->input(1 - use.offset))) {
      gate.scale = user;
      gate.s = *s;
    } else {
      gate.product = user;
    }
  }
  if (!gate.scale || !gate.product || !(gate.s > 0.0)) return std::nullopt;
  if (gate.scale->output()->uses().size() != 1) return std::nullopt;
  gate.sigmoid = gate.scale->output()->uses()[0].user;
  if (gate.sigmoid->kind() != c10::aten::sigmoid || gate.sigmoid->output()->uses().size() != 1 ||
      gate.sigmoid->output()->uses()[0].user != gate.product) {
    return std::nullopt;
  }
  return gate;
}

// A linear with constant float32 weights (and bias, if any) on the CPU.
bool IsRewritableLinear(torch::jit::Node* linear) {
  auto weight = ConstantTensor(linear->input(1));
  if (!weight || weight->dim() != 2 || weight->scalar_type() != at::kFloat || !weight->device().is_cpu()) return false;
  if (IsNoneConstant(linear->input(2))) return true;
  auto bias = ConstantTensor(linear->input(2));
  return bias && bias->scalar_type() == at::kFloat && bias->device().is_cpu();
}

torch::jit::Value* InsertTensorConstant(torch::jit::Graph& graph, const at::Tensor& tensor) {
  if (!tensor.is_mkldnn()) return graph.insertConstant(tensor);
  // insertConstant refuses opaque (MKLDNN layout) tensors, which have no
  // storage; a constant node holds them as well.
  torch::jit::Node* node = graph.create(c10::prim::Constant);
  node->t_(c10::attr::value, tensor);
  node->output()->setType(c10::TensorType::get());
  return graph.insertNode(node)->output();
}

// Returns how many linears were rewritten.
int RewriteLinearsForOneDnn(const std::shared_ptr<torch::jit::Graph>& graph, bool bfloat16) {
  if (!HasOperator("mkldnn::_linear_pointwise", "")) return 0;  // libtorch < 2.0
  std::optional<c10::OperatorHandle> pack;
  if (HasOperator("mkldnn::_reorder_linear_weight", "")) {
    pack = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
  }
  const auto linear_pointwise = c10::Symbol::fromQualString("mkldnn::_linear_pointwise");
  const at::ScalarType dtype = bfloat16 ? at::kBFloat16 : at::kFloat;

  std::vector<torch::jit::Node*> linears;
  for (torch::jit::Node* node : graph->nodes()) {
    if (node->kind() == c10::aten::linear) linears.push_back(node);
  }
  std::unordered_map<torch::jit::Node*, double> weight_divisors;
  int rewritten = 0;
  for (torch::jit::Node* linear : linears) {
    if (!IsRewritableLinear(linear)) continue;
    at::Tensor w = *ConstantTensor(linear->input(1));
    std::optional<at::Tensor> bias;
    if (!IsNoneConstant(linear->input(2))) bias = ConstantTensor(linear->input(2));
    if (auto it = weight_divisors.find(linear); it != weight_divisors.end()) w = w / it->second;
    auto gate = MatchSigmoidGate(linear);
    if (gate) {
      w = w * gate->s;
      if (bias) bias = *bias * gate->s;
    }
    w = w.to(dtype).contiguous();
    if (bias) bias = bias->to(dtype).contiguous();
    if (pack) {
      torch::jit::Stack stack{w, c10::IValue()};
      pack->callBoxed(&stack);
      w = stack[0].toTensor();
    }

    torch::jit::WithInsertPoint insert_point(linear);
    torch::jit::Value* input = linear->input(0);
    if (bfloat16) {
      torch::jit::Node* cast =
          graph->create(c10::aten::to, {input, graph->insertConstant(static_cast<int64_t>(at::kBFloat16)),
                                        graph->insertConstant(false), graph->insertConstant(false),
                                        graph->insertConstant(c10::IValue())});
      cast->output()->setType(c10::TensorType::get());
      input = graph->insertNode(cast)->output();
    }
    torch::jit::Value* w_value = InsertTensorConstant(*graph, w);
    torch::jit::Value* b_value = bias ? InsertTensorConstant(*graph, *bias) : graph->insertConstant(c10::IValue());
    torch::jit::Node* no_scalars =
        graph->insertNode(graph->createList(c10::OptionalType::create(c10::NumberType::get()), {}));
    torch::jit::Node* fused = graph->create(
        linear_pointwise, {input, w_value, b_value, graph->insertConstant(std::string(gate ? "swish" : "none")),
                           no_scalars->output(), graph->insertConstant(c10::IValue())});
    fused->output()->setType(c10::TensorType::get());
    graph->insertNode(fused);

    if (gate) {
      gate->product->output()->replaceAllUsesWith(fused->output());
      gate->product->destroy();
      gate->sigmoid->destroy();
      gate->scale->destroy();
      torch::jit::Value* h = fused->output();
      if (h->uses().size() == 1 && h->uses()[0].user->kind() == c10::aten::linear && h->uses()[0].offset == 0 &&
          IsRewritableLinear(h->uses()[0].user)) {
        weight_divisors[h->uses()[0].user] = gate->s;
      } else {
        torch::jit::Node* divide = graph->create(c10::aten::div, {h, graph->insertConstant(gate->s)});
        divide->output()->setType(c10::TensorType::get());
        divide->insertAfter(fused);
        h->replaceAllUsesAfterNodeWith(divide, divide->output());
      }
    } else {
      linear->output()->replaceAllUsesWith(fused->output());
    }
    linear->destroy();
    ++rewritten;
  }
  torch::jit::EliminateDeadCode(graph);
  graph->lint();
  return rewritten;
}

// A small input that exercises every op of an encoder, for comparing the
// rewritten graph with the archive as loaded.
torch::Tensor ExampleInput(const Manifest& m, bool image) {
  if (image) {
    auto generator = at::detail::createCPUGenerator(/*seed_val=*/20240601);
    return at::randn({2, 3, m.image.size, m.image.size}, generator);
  }
  torch::Tensor ids = torch::empty({2, 9}, torch::kInt64);
  for (int64_t i = 0; i < 2; ++i) {
    ids[i][0] = m.text.bos;
    for (int64_t j = 1; j < 8; ++j) ids[i][j] = (i * 131 + j * 977) % std::max<int64_t>(1, m.text.bos);
    ids[i][8] = m.text.eos;
  }
  return ids;
}

// Freezes `module` and rewrites its linears for oneDNN (above), keeping the
// result only when it computes what the archive as loaded computes on an
// example input; otherwise warns and returns `module` unchanged.
// CLIP_NATIVE_CPU_GRAPH=0 in the environment keeps the archive as loaded (for
// comparisons, and as a way out should a libtorch version misbehave).
torch::jit::script::Module OptimizeForCpu(torch::jit::script::Module module, const std::string& path,
                                          const torch::Tensor& example, bool bfloat16) {
  const char* setting = std::getenv("CLIP_NATIVE_CPU_GRAPH");
  if (setting && std::string(setting) == "0") return module;
  // The archive's own output first: an archive that cannot run is left to
  // Model::Load's check, which names the problem.
  torch::Tensor expected;
  try {
    torch::InferenceMode guard;
    SetCpuAutocast(bfloat16);
    expected = module.forward({example}).toTensor().to(torch::kFloat32);
    SetCpuAutocast(false);
  } catch (const std::exception&) {
    SetCpuAutocast(false);
    return module;
  }
  try {
    torch::jit::script::Module frozen = torch::jit::freeze(module);
    RewriteLinearsForOneDnn(frozen.get_method("forward").graph(), bfloat16);
    torch::InferenceMode guard;
    SetCpuAutocast(bfloat16);
    torch::Tensor actual = frozen.forward({example}).toTensor().to(torch::kFloat32);
    SetCpuAutocast(false);
    const double min_cosine = at::cosine_similarity(expected, actual, 1).min().item<double>();
    if (min_cosine >= (bfloat16 ? 0.999 : 0.99999)) return frozen;
    TORCH_WARN("clip-native: the oneDNN graph of ", path, " differs from the archive (cosine ", min_cosine,
               "); running the archive as loaded");
  } catch (const c10::Error& e) {
    SetCpuAutocast(false);
    TORCH_WARN("clip-native: could not optimize ", path, " for the CPU (", e.what_without_backtrace(),
               "); running the archive as loaded");
  }
  return module;
}

}  // namespace

bool BuiltWithCuda() {
#ifdef CLIP_WITH_CUDA
  return true;
#else
  return false;
#endif
}

const char* PrecisionName(Precision precision) {
  switch (precision) {
    case Precision::kFloat32: return "float32";
    case Precision::kFloat16: return "float16";
    case Precision::kBFloat16: return "bfloat16";
  }
  return "float32";
}

std::shared_ptr<Model> Model::Load(const std::string& directory, const ModelOptions& options) {
  ConfigureThreadsOnce(options.threads);
  std::shared_ptr<Model> model(new Model());
  model->manifest_ = ReadManifest(directory);
  model->device_ = ParseDevice(options.device);
  model->precision_ = options.precision;
  if (!model->is_cuda() && options.precision == Precision::kFloat16) {
    throw ClipError(ErrorCode::kInvalidArgument,
                    "Expected \"float32\" or \"bfloat16\" for dtype on the CPU but received \"float16\"");
  }

  TokenizerOptions tokenizer_options;
  tokenizer_options.context_length = model->manifest_.text.context_length;
  tokenizer_options.bos = model->manifest_.text.bos;
  tokenizer_options.eos = model->manifest_.text.eos;
  tokenizer_options.pad = model->manifest_.text.pad;
  model->tokenizer_ = Tokenizer::FromHuggingFaceFiles(model->manifest_.vocab_path,
                                                      model->manifest_.merges_path, tokenizer_options);

#ifdef CLIP_WITH_CUDA
  if (model->is_cuda()) model->cuda_ = std::make_shared<CudaState>(model->device_.index());
#endif

  model->image_encoder_ = LoadArchive(model->manifest_.image_encoder_path, model->device_);
  model->text_encoder_ = LoadArchive(model->manifest_.text_encoder_path, model->device_);
  if (!model->is_cuda()) {
    const bool bfloat16 = options.precision == Precision::kBFloat16;
    const Manifest& manifest = model->manifest_;
    model->image_encoder_ = OptimizeForCpu(model->image_encoder_, manifest.image_encoder_path,
                                           ExampleInput(manifest, /*image=*/true), bfloat16);
    model->text_encoder_ = OptimizeForCpu(model->text_encoder_, manifest.text_encoder_path,
                                          ExampleInput(manifest, /*image=*/false), bfloat16);
  }
  if (model->is_cuda() && options.precision != Precision::kFloat32) {
    auto dtype = options.precision == Precision::kFloat16 ? torch::kHalf : torch::kBFloat16;
    model->image_encoder_.to(dtype);
    model->text_encoder_.to(dtype);
  }

  // One small forward per encoder proves the archive computes what the
  // manifest promises, and warms up the allocator and kernels.
  const Manifest& m = model->manifest_;
  torch::InferenceMode guard;
  model->PrepareInferenceThread();
  auto check = [&](const char* what, const std::string& path, auto&& run) {
    torch::Tensor out;
    try {
      out = run();
    } catch (const ClipError&) {
      throw;
    } catch (const c10::Error& e) {
      throw ClipError(ErrorCode::kModelLoadFailed,
                      path + ": the " + what + " failed on a test input (" + e.what_without_backtrace() + ")");
    } catch (const std::exception& e) {
      throw ClipError(ErrorCode::kModelLoadFailed,
                      path + ": the " + what + " failed on a test input (" + e.what() + ")");
    }
    if (out.dim() != 2 || out.size(0) != 1 || out.size(1) != m.embed_dim) {
      throw ClipError(ErrorCode::kModelLoadFailed,
                      path + ": the " + what + " returned shape " + c10::str(out.sizes()) +
                          ", expected [1, " + std::to_string(m.embed_dim) + "] (clip.json embedDim)");
    }
  };
  check("image encoder", m.image_encoder_path, [&] {
    torch::Tensor staging = model->ImageStaging(1);
    staging.zero_();
    return model->EncodeImages(staging);
  });
  check("text encoder", m.text_encoder_path, [&] {
    torch::Tensor staging = model->TextStaging(1, 2);
    staging[0][0] = m.text.bos;
    staging[0][1] = m.text.eos;
    return model->EncodeTexts(staging);
  });
  SetCpuAutocast(false);
  return model;
}

void Model::PrepareInferenceThread() const {
  if (!is_cuda()) SetCpuAutocast(precision_ == Precision::kBFloat16);
}

torch::Tensor Model::ImageStaging(int64_t batch) {
  const int64_t size = manifest_.image.size;
  const int64_t needed = batch * 3 * size * size;
  if (!image_staging_.defined() || image_staging_.numel() < needed) {
    image_staging_ = torch::empty({needed}, torch::TensorOptions().dtype(torch::kFloat32).pinned_memory(is_cuda()));
  }
  return image_staging_.narrow(0, 0, needed).view({batch, 3, size, size});
}

torch::Tensor Model::TextStaging(int64_t batch, int64_t length) {
  const int64_t needed = batch * length;
  if (!text_staging_.defined() || text_staging_.numel() < needed) {
    text_staging_ = torch::empty({std::max<int64_t>(needed, 1)},
                                 torch::TensorOptions().dtype(torch::kInt64).pinned_memory(is_cuda()));
  }
  return text_staging_.narrow(0, 0, needed).view({batch, length});
}

torch::Tensor Model::Run(torch::jit::script::Module& module, const torch::Tensor& input) {
#ifdef CLIP_WITH_CUDA
  if (is_cuda()) {
    c10::cuda::CUDAStreamGuard stream_guard(cuda_->stream);
    torch::Tensor on_device = input.to(device_, /*non_blocking=*/true);
    if (on_device.is_floating_point() && precision_ != Precision::kFloat32) {
      on_device = on_device.to(precision_ == Precision::kFloat16 ? torch::kHalf : torch::kBFloat16);
    }
    torch::Tensor out = module.forward({on_device}).toTensor().to(torch::kFloat32);
    torch::Tensor host = torch::empty(out.sizes(), torch::TensorOptions().dtype(torch::kFloat32).pinned_memory(true));
    host.copy_(out, /*non_blocking=*/true);
    c10::Event done(c10::DeviceType::CUDA);
    done.record(cuda_->stream.unwrap());
    done.synchronize();
    return host;
  }
#endif
  torch::Tensor out = module.forward({input}).toTensor();
  if (out.scalar_type() != torch::kFloat32) out = out.to(torch::kFloat32);
  return out.contiguous();
}

torch::Tensor Model::EncodeImages(const torch::Tensor& pixels) { return Run(image_encoder_, pixels); }

torch::Tensor Model::EncodeTexts(const torch::Tensor& ids) { return Run(text_encoder_, ids); }

}  // namespace clip

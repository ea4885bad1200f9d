#include "model.h"

#ifdef __linux__
#include <sched.h>
#endif
#if defined(__GLIBC__) || defined(__linux__)
#include <malloc.h>
#endif

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <c10/util/Exception.h>
#include <torch/csrc/jit/ir/constants.h>
#include <torch/csrc/jit/ir/ir.h>
#include <torch/csrc/jit/passes/dead_code_elimination.h>
#include <torch/version.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <exception>
#include <filesystem>
#include <map>
#include <mutex>
#include <optional>
#include <set>
#include <sstream>
#include <stdexcept>
#include <thread>
#include <tuple>
#include <unordered_map>
#include <utility>
#include <vector>

#include "calibration_store.h"
#include "cpu_allocator.h"
#include "cpu_attention.h"
#include "cpu_features.h"
#include "cpu_linear.h"
#include "cpu_norm.h"
#include "cpu_team.h"
#include "errors.h"
#include "threads.h"

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
  explicit CudaState(c10::DeviceIndex index) : stream(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, index)) {}
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
    int count = threads;
    if (count <= 0) {
      // libtorch's default (its physical core count), except where a
      // libtorch reports one thread on a machine with more CPUs: Debian's
      // libtorch 1.13 does, and would run every forward on one core.
      count = at::get_num_threads();
      int cpus = static_cast<int>(std::thread::hardware_concurrency());
#ifdef __linux__
      cpu_set_t allowed;
      if (sched_getaffinity(0, sizeof(allowed), &allowed) == 0) cpus = CPU_COUNT(&allowed);
#endif
      if (count <= 1 && cpus > 1) count = cpus;
    }
    if (count > 0) at::set_num_threads(count);
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
                    "device \"" + spec + "\" was asked for but this build of clip-native uses a libtorch without CUDA");
#endif
  }
  throw ClipError(ErrorCode::kInvalidArgument,
                  "Expected \"auto\", \"cpu\", \"cuda\" or \"cuda:N\" for device but received \"" + spec + "\"");
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
    throw ClipError(ErrorCode::kModelLoadFailed, path + ": not a loadable TorchScript archive (" + e.what() + ")");
  }
}

// When `archive` (a text encoder) has the method forward_packed, with
// forward's signature and outputs, makes it the body of forward, so that
// freezing, the kernel rewrites below and every forward take it, and returns
// true. A padded batch spends as much on a padding token as on a real one;
// forward_packed runs the linears on the tokens that reach an output alone
// (tools/clip_native_export/model.py). CPU only: it sizes its rows from the
// ids (a device-to-host copy on CUDA).
bool UsePackedTextForward(torch::jit::script::Module& archive) {
  const auto packed = archive.find_method("forward_packed");
  if (!packed) return false;
  const std::shared_ptr<torch::jit::Graph> source = packed->graph();
  const std::shared_ptr<torch::jit::Graph> forward = archive.get_method("forward").graph();
  if (source->inputs().size() != 2 || forward->inputs().size() != 2 || source->outputs().size() != 1 ||
      forward->outputs().size() != 1 || source->inputs()[0]->type() != forward->inputs()[0]->type()) {
    return false;
  }
  forward->eraseOutput(0);
  for (auto it = forward->nodes().rbegin(); it != forward->nodes().rend(); ++it) it.destroyCurrent();
  const std::vector<torch::jit::Value*> outputs = torch::jit::insertGraph(*forward, *source, forward->inputs());
  forward->registerOutput(outputs.at(0));
  forward->lint();
  return true;
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
  const auto floating = [](const at::Tensor& t) {
    return (t.scalar_type() == at::kFloat || t.scalar_type() == at::kBFloat16) && t.device().is_cpu();
  };
  if (!weight || weight->dim() != 2 || !floating(*weight)) return false;
  if (IsNoneConstant(linear->input(2))) return true;
  auto bias = ConstantTensor(linear->input(2));
  return bias && floating(*bias);
}

// `h` now computes what the gate's product did, times s (the linear before
// it carries s in its weights): the product's uses take `h`, the gate's
// nodes go, and the 1/s goes into the weights of the next linear when `h`
// feeds only that one (`weight_divisors`), else into a division after `h`.
void ReplaceSigmoidGate(torch::jit::Graph& graph, const SigmoidGate& gate, torch::jit::Value* h,
                        std::unordered_map<torch::jit::Node*, double>* weight_divisors) {
  gate.product->output()->replaceAllUsesWith(h);
  gate.product->destroy();
  gate.sigmoid->destroy();
  gate.scale->destroy();
  if (h->uses().size() == 1 && h->uses()[0].user->kind() == c10::aten::linear && h->uses()[0].offset == 0 &&
      IsRewritableLinear(h->uses()[0].user)) {
    (*weight_divisors)[h->uses()[0].user] = gate.s;
    return;
  }
  torch::jit::WithInsertPoint after(h->node()->next());
  torch::jit::Node* divide = graph.create(c10::aten::div, {h, graph.insertConstant(gate.s)});
  divide->output()->setType(c10::TensorType::get());
  graph.insertNode(divide);
  h->replaceAllUsesAfterNodeWith(divide, divide->output());
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

// Returns how many linears were rewritten. With a `panel_width` (32: AVX-512,
// or AVX512-BF16 for bfloat16; 16: AVX2 + FMA, float32) each linear becomes
// clip_native::linear_rows, clip-native's own kernel (cpu_linear.h) on its
// own packed weights, with no oneDNN weights beside them; float32 then needs
// nothing of oneDNN (libtorch 1.13 has no mkldnn::_linear_pointwise).
// `panel_weights`: the float32 kernel's weights, float32 or rounded to
// bfloat16 (float32 inputs and products all the same).
int RewriteLinears(const std::shared_ptr<torch::jit::Graph>& graph, bool bfloat16, int64_t panel_width = 0,
                   at::ScalarType panel_weights = at::kFloat, bool amx = false) {
  const bool panel_kernel = panel_width > 0;
  const bool onednn = HasOperator("mkldnn::_linear_pointwise", "");
  if (!onednn && !(panel_kernel && !bfloat16)) return 0;  // libtorch < 2.0
  std::optional<c10::OperatorHandle> pack;
  if (HasOperator("mkldnn::_reorder_linear_weight", "")) {
    pack = c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_reorder_linear_weight", "");
  }
  const auto linear_pointwise = c10::Symbol::fromQualString("mkldnn::_linear_pointwise");
  const auto linear_rows = c10::Symbol::fromQualString("clip_native::linear_rows");
  const at::ScalarType dtype = bfloat16 ? at::kBFloat16 : at::kFloat;

  std::vector<torch::jit::Node*> linears;
  for (torch::jit::Node* node : graph->nodes()) {
    if (node->kind() == c10::aten::linear) linears.push_back(node);
  }
  std::unordered_map<torch::jit::Node*, double> weight_divisors;
  int rewritten = 0;
  for (torch::jit::Node* linear : linears) {
    if (!IsRewritableLinear(linear)) continue;
    // Scaled in float32 whatever the archive's dtype, rounded to `dtype` once.
    at::Tensor w = ConstantTensor(linear->input(1))->to(at::kFloat);
    std::optional<at::Tensor> bias;
    if (!IsNoneConstant(linear->input(2))) bias = ConstantTensor(linear->input(2))->to(at::kFloat);
    if (auto it = weight_divisors.find(linear); it != weight_divisors.end()) w = w / it->second;
    auto gate = MatchSigmoidGate(linear);
    if (gate) {
      w = w * gate->s;
      if (bias) bias = *bias * gate->s;
    }
    w = w.to(dtype).contiguous();
    const int64_t out_features = w.size(0);
    // The bfloat16 kernel reads inputs in pairs: an odd width stays on oneDNN.
    const bool rows_kernel = panel_kernel && (!bfloat16 || w.size(1) % 2 == 0);
    // clip-native's kernel adds float32 biases to its float32 sums; oneDNN
    // takes them in the weights' dtype.
    if (bias) bias = bias->to(rows_kernel ? at::kFloat : dtype).contiguous();
    at::Tensor panel_weight;
    if (rows_kernel) {
      // On AMX tiles (the kernel takes inputs 32 at a time) or AVX512-BF16.
      if (bfloat16) {
        panel_weight = amx && AmxPanelInputs(w.size(1)) ? PackPanelWeightAmx(w) : PackPanelWeightBf16(w);
      } else {
        panel_weight = PackPanelWeight(w, panel_width, panel_weights);
      }
    } else if (pack) {
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
    torch::jit::Value* b_value = bias ? InsertTensorConstant(*graph, *bias) : graph->insertConstant(c10::IValue());
    torch::jit::Value* attr = graph->insertConstant(std::string(gate ? "swish" : "none"));
    torch::jit::Node* fused = nullptr;
    if (rows_kernel) {
      fused = graph->create(linear_rows, {input, graph->insertConstant(panel_weight), b_value,
                                          graph->insertConstant(out_features), attr});
    } else {
      torch::jit::Value* w_value = InsertTensorConstant(*graph, w);
      torch::jit::Node* no_scalars =
          graph->insertNode(graph->createList(c10::OptionalType::create(c10::NumberType::get()), {}));
      fused = graph->create(linear_pointwise, {input, w_value, b_value, attr, no_scalars->output(),
                                               graph->insertConstant(c10::IValue())});
    }
    fused->output()->setType(c10::TensorType::get());
    graph->insertNode(fused);

    if (gate) {
      ReplaceSigmoidGate(*graph, *gate, fused->output(), &weight_divisors);
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

// The string constant of `value`, if it is one.
std::optional<std::string> ConstantString(torch::jit::Value* value) {
  const std::optional<c10::IValue> constant = torch::jit::toIValue(value);
  if (!constant || !constant->isString()) return std::nullopt;
  return constant->toStringRef();
}

// An MLP on clip-native's linear, linear_rows(x, .., "swish") whose result
// feeds only a linear_rows(.., "none") (in bfloat16 through the cast before
// it, which a bfloat16 result passes unchanged), becomes one
// clip_native::mlp_rows: the same bits, with the hidden rows handed from the
// first linear to the second in the layout the second reads (cpu_linear.h:
// PanelMlp). Returns how many.
int RewriteMlps(const std::shared_ptr<torch::jit::Graph>& graph) {
  const auto linear_rows = c10::Symbol::fromQualString("clip_native::linear_rows");
  const auto mlp_rows = c10::Symbol::fromQualString("clip_native::mlp_rows");
  struct Mlp {
    torch::jit::Node* first;
    torch::jit::Node* cast;  // nullptr in float32
    torch::jit::Node* second;
  };
  std::vector<Mlp> mlps;
  for (torch::jit::Node* first : graph->nodes()) {
    if (first->kind() != linear_rows || ConstantString(first->input(4)) != "swish") continue;
    const std::optional<at::Tensor> weight = ConstantTensor(first->input(1));
    if (!weight || first->output()->uses().size() != 1) continue;
    torch::jit::Node* cast = nullptr;
    torch::jit::Use use = first->output()->uses()[0];
    if (use.user->kind() == c10::aten::to && use.offset == 0 && use.user->inputs().size() == 5 &&
        use.user->output()->uses().size() == 1) {
      const std::optional<c10::IValue> dtype = torch::jit::toIValue(use.user->input(1));
      if (!dtype || !dtype->isInt() || dtype->toInt() != static_cast<int64_t>(at::kBFloat16) ||
          weight->scalar_type() != at::kBFloat16) {
        continue;
      }
      cast = use.user;
      use = cast->output()->uses()[0];
    }
    torch::jit::Node* second = use.user;
    if (second->kind() != linear_rows || use.offset != 0 || ConstantString(second->input(4)) != "none") continue;
    const std::optional<at::Tensor> second_weight = ConstantTensor(second->input(1));
    if (!second_weight || second_weight->scalar_type() != weight->scalar_type()) continue;
    mlps.push_back({first, cast, second});
  }
  for (const Mlp& mlp : mlps) {
    torch::jit::WithInsertPoint insert_point(mlp.second);
    torch::jit::Node* fused =
        graph->create(mlp_rows, {mlp.first->input(0), mlp.first->input(1), mlp.first->input(2), mlp.first->input(3),
                                 mlp.second->input(1), mlp.second->input(2), mlp.second->input(3)});
    fused->output()->setType(c10::TensorType::get());
    graph->insertNode(fused);
    mlp.second->output()->replaceAllUsesWith(fused->output());
    mlp.second->destroy();
    if (mlp.cast) mlp.cast->destroy();
    mlp.first->destroy();
  }
  torch::jit::EliminateDeadCode(graph);
  graph->lint();
  return static_cast<int>(mlps.size());
}

// The node that is the sole user of `value`, if it is of `kind` and takes
// `value` as its first input.
torch::jit::Node* SoleUser(torch::jit::Value* value, c10::Symbol kind) {
  if (value->uses().size() != 1) return nullptr;
  const torch::jit::Use& use = value->uses()[0];
  return use.user->kind() == kind && use.offset == 0 ? use.user : nullptr;
}

// The node of kind `kind` that computes `value`, else null.
torch::jit::Node* Producer(torch::jit::Value* value, c10::Symbol kind) {
  return value->node()->kind() == kind ? value->node() : nullptr;
}

// Whether `value` is the constant integer `expected`.
bool IsConstantInt(torch::jit::Value* value, int64_t expected) {
  const auto ivalue = torch::jit::toIValue(value);
  return ivalue && ivalue->isInt() && ivalue->toInt() == expected;
}

// L when `mask` is triu(ones([L, L], dtype=bool), 1), the text encoder's
// causal mask; else null.
torch::jit::Value* CausalMaskLength(torch::jit::Value* mask) {
  torch::jit::Node* triu = Producer(mask, c10::aten::triu);
  if (!triu || triu->inputs().size() != 2 || !IsConstantInt(triu->input(1), 1)) return nullptr;
  torch::jit::Node* ones = Producer(triu->input(0), c10::aten::ones);
  if (!ones || ones->inputs().size() != 5 || !IsConstantInt(ones->input(1), static_cast<int64_t>(at::kBool))) {
    return nullptr;
  }
  torch::jit::Node* size = Producer(ones->input(0), c10::prim::ListConstruct);
  if (!size || size->inputs().size() != 2 || size->input(0) != size->input(1)) return nullptr;
  return size->input(0);
}

// The attention's two products (aten::matmul of two activations; the
// linears' matmuls have constant weights and are rewritten above) ->
// clip_native::attention_matmul (cpu_attention.h), in the graphs of the
// oneDNN and int8 candidates (float32 or bfloat16 products) where the kernel
// can run and was chosen (ChooseAttentionKernel).
// The scores' scaling by a constant and a causal mask after it go into the
// same node (fewer operators per layer: the interpreter's and the small
// operators' time is most of what a short caption's forward spends outside
// the linears). Returns how many products were rewritten, and sets `fused`
// to how many layers then run as one clip_native::attention.
int RewriteAttentionMatmuls(const std::shared_ptr<torch::jit::Graph>& graph, int* fused) {
  *fused = 0;
  if (!AttentionMatmulAvailable()) return 0;
  const auto attention_matmul = c10::Symbol::fromQualString("clip_native::attention_matmul");
  std::vector<torch::jit::Node*> matmuls;
  for (torch::jit::Node* node : graph->nodes()) {
    if (node->kind() == c10::aten::matmul && node->inputs().size() == 2 &&
        node->input(0)->node()->kind() != c10::prim::Constant &&
        node->input(1)->node()->kind() != c10::prim::Constant) {
      matmuls.push_back(node);
    }
  }
  for (torch::jit::Node* matmul : matmuls) {
    // The chain matmul [-> mul(scale) [-> masked_fill(causal mask, -inf)]]
    // that the new node replaces, `last` its end.
    std::vector<torch::jit::Node*> chain{matmul};
    double scale = 1.0;
    torch::jit::Value* causal_length = nullptr;
    torch::jit::Node* mul = SoleUser(matmul->output(), c10::aten::mul);
    const std::optional<double> factor =
        mul && mul->inputs().size() == 2 ? ConstantNumber(mul->input(1)) : std::nullopt;
    if (factor) {
      scale = *factor;
      chain.push_back(mul);
      torch::jit::Node* fill = SoleUser(mul->output(), c10::aten::masked_fill);
      torch::jit::Value* length = fill && fill->inputs().size() == 3 ? CausalMaskLength(fill->input(1)) : nullptr;
      const std::optional<double> value = length ? ConstantNumber(fill->input(2)) : std::nullopt;
      if (value && std::isinf(*value) && *value < 0) {
        causal_length = length;
        chain.push_back(fill);
      }
    }
    torch::jit::Node* last = chain.back();
    torch::jit::WithInsertPoint insert_point(last);
    if (!causal_length) causal_length = graph->insertConstant(int64_t{-1});
    torch::jit::Node* replacement = graph->create(
        attention_matmul, {matmul->input(0), matmul->input(1), graph->insertConstant(scale), causal_length});
    replacement->output()->setType(c10::TensorType::get());
    graph->insertNode(replacement);
    last->output()->replaceAllUsesWith(replacement->output());
    for (auto it = chain.rbegin(); it != chain.rend(); ++it) (*it)->destroy();
  }
  // A scores product whose only user is a softmax over the keys, itself
  // used only as the weights of a weighted sum: the three as one
  // clip_native::attention (one operator and one parallel region per layer
  // instead of three, and no scores or weights of the whole batch in
  // memory): 3-6% faster for captions, up to 4% for images (Zen 5).
  const auto attention = c10::Symbol::fromQualString("clip_native::attention");
  struct Triple {
    torch::jit::Node* scores;
    torch::jit::Node* softmax;
    torch::jit::Node* weighted;
  };
  std::vector<Triple> triples;  // all found before any is replaced
  for (torch::jit::Node* scores : graph->nodes()) {
    if (scores->kind() != attention_matmul) continue;
    torch::jit::Node* softmax = SoleUser(scores->output(), c10::aten::softmax);
    if (!softmax || softmax->inputs().size() != 3 || ConstantNumber(softmax->input(1)) != -1.0 ||
        !IsNoneConstant(softmax->input(2))) {
      continue;
    }
    torch::jit::Node* weighted = SoleUser(softmax->output(), attention_matmul);
    if (!weighted || ConstantNumber(weighted->input(2)) != 1.0 || ConstantNumber(weighted->input(3)) != -1.0) {
      continue;
    }
    triples.push_back({scores, softmax, weighted});
  }
  for (const Triple& t : triples) {
    torch::jit::WithInsertPoint insert_point(t.weighted);
    torch::jit::Node* fused = graph->create(attention, {t.scores->input(0), t.scores->input(1), t.weighted->input(1),
                                                        t.scores->input(2), t.scores->input(3)});
    fused->output()->setType(c10::TensorType::get());
    graph->insertNode(fused);
    t.weighted->output()->replaceAllUsesWith(fused->output());
    t.weighted->destroy();
    t.softmax->destroy();
    t.scores->destroy();
  }
  *fused = static_cast<int>(triples.size());
  // The mask's own nodes (ones, triu, the size list) now have no users.
  torch::jit::EliminateDeadCode(graph);
  graph->lint();
  return static_cast<int>(matmuls.size());
}

// The attention of a packed text forward (the exporter's forward_packed:
// index_select(qkv, 0, pad_map) viewed as [N, L, -1] and as [N, L, 3, H, D],
// permuted, q k v selected, clip_native::attention, its result transposed,
// reshaped to [N, L, W] and [N * L, -1] and index_select(_, 0, pack_map))
// -> clip_native::packed_attention (cpu_attention.h), which runs each
// text's rows where they are. Returns how many were rewritten.
int RewritePackedAttention(const std::shared_ptr<torch::jit::Graph>& graph) {
  const auto attention = c10::Symbol::fromQualString("clip_native::attention");
  const auto packed_attention = c10::Symbol::fromQualString("clip_native::packed_attention");
  struct Match {
    torch::jit::Node* scatter;
    torch::jit::Value *qkv, *pad_map, *pack_map, *batch, *length;
    int64_t heads;
    double scale;
    bool causal;
  };
  std::vector<Match> matches;
  for (torch::jit::Node* node : graph->nodes()) {
    if (node->kind() != attention || node->inputs().size() != 5) continue;
    // Inputs: q = select(p, 0, 0), k^T = transpose(select(p, 0, 1), -1, -2), v = select(p, 0, 2).
    torch::jit::Node* q = Producer(node->input(0), c10::aten::select);
    torch::jit::Node* kt = Producer(node->input(1), c10::aten::transpose);
    torch::jit::Node* k = kt ? Producer(kt->input(0), c10::aten::select) : nullptr;
    torch::jit::Node* v = Producer(node->input(2), c10::aten::select);
    if (!q || !k || !v || !IsConstantInt(kt->input(1), -1) || !IsConstantInt(kt->input(2), -2)) continue;
    torch::jit::Value* p = q->input(0);
    bool selects = true;
    int64_t index = 0;
    for (torch::jit::Node* select : {q, k, v}) {
      selects = selects && select->input(0) == p && IsConstantInt(select->input(1), 0) &&
                IsConstantInt(select->input(2), index++);
    }
    torch::jit::Node* permute = Producer(p, c10::aten::permute);
    if (!selects || !permute) continue;
    const auto order = torch::jit::toIValue(permute->input(1));
    if (!order || !order->isIntList() || order->toIntVector() != std::vector<int64_t>{2, 0, 3, 1, 4}) continue;
    // view(view(index_select(qkv, 0, pad_map), [N, L, -1]), [N, L, 3, H, D])
    torch::jit::Node* heads_view = Producer(permute->input(0), c10::aten::view);
    torch::jit::Node* rows_view = heads_view ? Producer(heads_view->input(0), c10::aten::view) : nullptr;
    torch::jit::Node* gather = rows_view ? Producer(rows_view->input(0), c10::aten::index_select) : nullptr;
    if (!gather || !IsConstantInt(gather->input(1), 0)) continue;
    torch::jit::Node* heads_size = Producer(heads_view->input(1), c10::prim::ListConstruct);
    torch::jit::Node* rows_size = Producer(rows_view->input(1), c10::prim::ListConstruct);
    if (!heads_size || !rows_size || heads_size->inputs().size() != 5 || rows_size->inputs().size() != 3 ||
        heads_size->input(0) != rows_size->input(0) || heads_size->input(1) != rows_size->input(1) ||
        !IsConstantInt(heads_size->input(2), 3) || !IsConstantInt(rows_size->input(2), -1)) {
      continue;
    }
    const auto heads = torch::jit::toIValue(heads_size->input(3));
    const std::optional<double> scale = ConstantNumber(node->input(3));
    torch::jit::Value* length = rows_size->input(1);
    const bool causal = node->input(4) == length;
    if (!heads || !heads->isInt() || !scale || (!causal && !IsConstantInt(node->input(4), -1))) continue;
    // Output: index_select(reshape(reshape(transpose(out, 1, 2), [N, L, W]), [N * L, -1]), 0, pack_map)
    torch::jit::Node* transpose = SoleUser(node->output(), c10::aten::transpose);
    if (!transpose || !IsConstantInt(transpose->input(1), 1) || !IsConstantInt(transpose->input(2), 2)) continue;
    torch::jit::Node* heads_merged = SoleUser(transpose->output(), c10::aten::reshape);
    torch::jit::Node* flat = heads_merged ? SoleUser(heads_merged->output(), c10::aten::reshape) : nullptr;
    torch::jit::Node* scatter = flat ? SoleUser(flat->output(), c10::aten::index_select) : nullptr;
    if (!scatter || !IsConstantInt(scatter->input(1), 0)) continue;
    matches.push_back({scatter, gather->input(0), gather->input(2), scatter->input(2), rows_size->input(0), length,
                       heads->toInt(), *scale, causal});
  }
  for (const Match& m : matches) {
    torch::jit::WithInsertPoint insert_point(m.scatter);
    torch::jit::Node* fused = graph->create(
        packed_attention, {m.qkv, m.pad_map, m.pack_map, m.batch, m.length, graph->insertConstant(m.heads),
                           graph->insertConstant(m.scale), graph->insertConstant(m.causal)});
    fused->output()->setType(c10::TensorType::get());
    graph->insertNode(fused);
    m.scatter->output()->replaceAllUsesWith(fused->output());
  }
  // The chains' nodes, from the gather to the scatter, now have no users.
  torch::jit::EliminateDeadCode(graph);
  graph->lint();
  return static_cast<int>(matches.size());
}

// Whether `norm` is an aten::layer_norm over the last dimension with
// constant weight and bias (of that dimension's size) and eps.
bool IsConstantLayerNorm(torch::jit::Node* norm) {
  if (norm->kind() != c10::aten::layer_norm || norm->inputs().size() != 6) return false;
  const std::optional<at::Tensor> weight = ConstantTensor(norm->input(2));
  const std::optional<at::Tensor> bias = ConstantTensor(norm->input(3));
  const auto shape = torch::jit::toIValue(norm->input(1));
  return weight && bias && ConstantNumber(norm->input(4)) && shape && shape->isIntList() &&
         shape->toIntVector() == std::vector<int64_t>{weight->numel()} && weight->dim() == 1 &&
         bias->sizes() == weight->sizes();
}

// A residual add whose result a LayerNorm reads, sum = a + b and
// layer_norm(sum, [W], weight, bias, eps) with constant weight and bias of W
// values -> one clip_native::add_layer_norm (cpu_norm.h) giving both; then
// every other such LayerNorm -> clip_native::layer_norm. In every graph
// that is not the archive's own. Returns how many LayerNorms were
// rewritten, and sets `with_add` to how many of them took their add along.
int RewriteLayerNorms(const std::shared_ptr<torch::jit::Graph>& graph, int* with_add) {
  *with_add = 0;
  if (!AddLayerNormAvailable(at::kFloat)) return 0;
  const auto add_layer_norm = c10::Symbol::fromQualString("clip_native::add_layer_norm");
  struct Match {
    torch::jit::Node* add;
    torch::jit::Node* norm;
  };
  std::vector<Match> matches;
  std::set<torch::jit::Node*> taken;  // an add that two LayerNorms read goes with the first
  for (torch::jit::Node* norm : graph->nodes()) {
    if (!IsConstantLayerNorm(norm)) continue;
    torch::jit::Node* add = Producer(norm->input(0), c10::aten::add);
    if (!add || add->inputs().size() != 3 || add->owningBlock() != norm->owningBlock() ||
        !add->input(1)->type()->isSubtypeOf(*c10::TensorType::get()) || ConstantNumber(add->input(2)) != 1.0 ||
        !taken.insert(add).second) {
      continue;
    }
    matches.push_back({add, norm});
  }
  for (const Match& m : matches) {
    // In the add's place: the sum's other users (the residual stream) may
    // come before the norm. The constants it reads move up with it.
    for (torch::jit::Value* constant : {m.norm->input(2), m.norm->input(3), m.norm->input(4)}) {
      torch::jit::Node* node = constant->node();
      if (node->owningBlock() == m.add->owningBlock() && node->isAfter(m.add)) node->moveBefore(m.add);
    }
    torch::jit::Node* fused = graph->create(
        add_layer_norm, {m.add->input(0), m.add->input(1), m.norm->input(2), m.norm->input(3), m.norm->input(4)},
        /*num_outputs=*/2);
    fused->output(0)->setType(c10::TensorType::get());
    fused->output(1)->setType(c10::TensorType::get());
    fused->insertBefore(m.add);
    m.add->output()->replaceAllUsesWith(fused->output(0));
    m.norm->output()->replaceAllUsesWith(fused->output(1));
    m.norm->destroy();
    m.add->destroy();
  }
  const auto layer_norm = c10::Symbol::fromQualString("clip_native::layer_norm");
  std::vector<torch::jit::Node*> alone;
  for (torch::jit::Node* norm : graph->nodes()) {
    if (IsConstantLayerNorm(norm)) alone.push_back(norm);
  }
  for (torch::jit::Node* norm : alone) {
    torch::jit::WithInsertPoint insert_point(norm);
    torch::jit::Node* own = graph->create(layer_norm, {norm->input(0), norm->input(2), norm->input(3), norm->input(4)});
    own->output()->setType(c10::TensorType::get());
    graph->insertNode(own);
    norm->output()->replaceAllUsesWith(own->output());
    norm->destroy();
  }
  torch::jit::EliminateDeadCode(graph);
  graph->lint();
  *with_add = static_cast<int>(matches.size());
  return static_cast<int>(matches.size() + alone.size());
}

// Linears with constant float32 weights -> quantized::linear_dynamic on
// per-channel int8 weights packed once for `engine`: activations are
// quantized per call (per tensor, from their range), products accumulate in
// int32. `reduce_range` keeps activations to 7 bits, for CPUs whose u8 x s8
// instructions saturate at 16 bits (no VNNI). Returns how many were rewritten.
// libtorch warns that its quantized tensor factories are deprecated; the
// packed weights they make are all int8 inference needs, and a user should
// not see that warning on every load.
// (libtorch 2 made the warning a class; 1.13 passes its parts.)
class SilentWarnings : public c10::WarningHandler {
 public:
#if TORCH_VERSION_MAJOR >= 2
  void process(const c10::Warning&) override {}
#else
  void process(const c10::SourceLocation&, const std::string&, const bool) override {}
#endif
};

int RewriteLinearsForInt8(const std::shared_ptr<torch::jit::Graph>& graph, at::QEngine engine, bool reduce_range) {
  SilentWarnings silent;
#if TORCH_VERSION_MAJOR >= 2
  c10::WarningUtils::WarningHandlerGuard silence(&silent);
#else
  c10::Warning::WarningHandlerGuard silence(&silent);
#endif
  auto prepack = c10::Dispatcher::singleton().findSchemaOrThrow("quantized::linear_prepack", "");
  const auto linear_dynamic = c10::Symbol::fromQualString("quantized::linear_dynamic");
  std::vector<torch::jit::Node*> linears;
  for (torch::jit::Node* node : graph->nodes()) {
    if (node->kind() == c10::aten::linear) linears.push_back(node);
  }
  const at::QEngine saved = at::globalContext().qEngine();
  at::globalContext().setQEngine(engine);
  // QuickGELU after a linear, x * sigmoid(s * x), is three passes over the
  // widest activations; as silu(s x) / s, with s folded into this linear's
  // weights and 1/s into the next one's, it is one (as in the oneDNN graph).
  std::unordered_map<torch::jit::Node*, double> weight_divisors;
  int rewritten = 0;
  try {
    for (torch::jit::Node* linear : linears) {
      if (!IsRewritableLinear(linear)) continue;
      at::Tensor w = ConstantTensor(linear->input(1))->to(at::kFloat);
      std::optional<at::Tensor> float_bias;
      if (!IsNoneConstant(linear->input(2))) float_bias = ConstantTensor(linear->input(2))->to(at::kFloat);
      if (auto it = weight_divisors.find(linear); it != weight_divisors.end()) w = w / it->second;
      auto gate = MatchSigmoidGate(linear);
      if (gate) {
        w = w * gate->s;
        if (float_bias) float_bias = *float_bias * gate->s;
      }
      w = w.contiguous();
      c10::IValue bias;
      if (float_bias) bias = float_bias->contiguous();
      at::Tensor scales = (w.abs().amax({1}).clamp_min(1e-12) / 127.0).to(at::kDouble);
      at::Tensor zero_points = at::zeros({w.size(0)}, at::kLong);
      at::Tensor qweight = at::quantize_per_channel(w, scales, zero_points, 0, at::kQInt8);
      torch::jit::Stack stack{qweight, bias};
      prepack.callBoxed(&stack);
      torch::jit::WithInsertPoint insert_point(linear);
      torch::jit::Value* packed = graph->insertConstant(stack[0]);
      torch::jit::Node* q =
          graph->create(linear_dynamic, {linear->input(0), packed, graph->insertConstant(reduce_range)});
      q->output()->setType(c10::TensorType::get());
      graph->insertNode(q);
      if (gate) {
        torch::jit::Node* silu = graph->create(c10::aten::silu, {q->output()});
        silu->output()->setType(c10::TensorType::get());
        graph->insertNode(silu);
        ReplaceSigmoidGate(*graph, *gate, silu->output(), &weight_divisors);
      } else {
        linear->output()->replaceAllUsesWith(q->output());
      }
      linear->destroy();
      ++rewritten;
    }
  } catch (...) {
    at::globalContext().setQEngine(saved);
    throw;
  }
  at::globalContext().setQEngine(saved);
  torch::jit::EliminateDeadCode(graph);
  graph->lint();
  return rewritten;
}

// A small input that exercises every op of an encoder, for comparing a
// candidate graph with the archive as loaded.
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

// Inputs of the shapes the calibration times: one item (the online case)
// and a small batch, since the kernels do not rank the same at both (int8
// images: FBGEMM level with oneDNN for one image, 15% behind it from two up
// on an AMD EPYC). Captions run from about 7 to 22 tokens: one caption of 10
// and one of 20 tokens, and 4 of 16. Images: one, and 4 (50 and 200 rows to
// every linear: both sides of the panel kernel's kPerThreadCopyRows,
// cpu_linear.h).
std::vector<torch::Tensor> CalibrationInputs(const Manifest& m, bool image) {
  std::vector<torch::Tensor> inputs;
  auto generator = at::detail::createCPUGenerator(/*seed_val=*/20240602);
  if (image) {
    for (int64_t batch : {1, 4}) inputs.push_back(at::randn({batch, 3, m.image.size, m.image.size}, generator));
    return inputs;
  }
  const std::pair<int64_t, int64_t> shapes[] = {{1, 10}, {1, 20}, {4, 16}};  // {batch, tokens}
  for (const auto& [batch, tokens] : shapes) {
    const int64_t length = std::min<int64_t>(tokens, std::max<int64_t>(2, m.text.context_length));
    torch::Tensor ids = at::randint(0, std::max<int64_t>(1, m.text.bos), {batch, length}, generator);
    ids.select(1, 0).fill_(m.text.bos);
    ids.select(1, length - 1).fill_(m.text.eos);
    inputs.push_back(ids);
  }
  return inputs;
}

bool HasQEngine(at::QEngine engine) {
  for (at::QEngine e : at::globalContext().supportedQEngines()) {
    if (e == engine) return true;
  }
  return false;
}

bool Int8Available() {
  return HasOperator("quantized::linear_dynamic", "") && HasOperator("quantized::linear_prepack", "") &&
         (HasQEngine(at::QEngine::FBGEMM) || HasQEngine(at::QEngine::ONEDNN));
}

// The calling thread's inference and grad modes (libtorch keeps them per
// thread), for a Scope to set on another thread.
struct AutogradModes {
  bool inference = c10::InferenceMode::is_enabled();
  bool grad = at::GradMode::is_enabled();
  struct Scope {
    explicit Scope(const AutogradModes& modes) : inference_mode(modes.inference), grad_mode(modes.grad) {}
    c10::InferenceMode inference_mode;
    at::AutoGradMode grad_mode;
  };
};

// Runs `fn` on the process's forward thread (threads.h) under the caller's
// inference and grad modes, and returns its result. CPU forwards run there,
// and so does building the CPU candidates (freezing, packing weights), the
// load's only other parallel work: a loading thread that ran parallel
// regions itself would hold a second OpenMP pool while the calibration
// times the candidates on the forward thread.
template <typename Fn>
auto OnForwardThread(Fn&& fn) -> decltype(fn()) {
  const AutogradModes modes;
  std::optional<decltype(fn())> result;
  RunOnForwardThread([&] {
    const AutogradModes::Scope scope(modes);
    result.emplace(fn());
  });
  return std::move(*result);
}

// One forward of `encoder` on the calling thread: the forward thread, or a
// thread of its team running a lane (ForwardInLanes).
torch::Tensor ForwardHere(Model::Encoder& encoder, const torch::Tensor& input) {
  torch::Tensor out;
  torch::Tensor x = input;
  if (x.is_floating_point() && x.scalar_type() != encoder.float_input) x = x.to(encoder.float_input);
  SetCpuAutocast(encoder.autocast);
  try {
    out = encoder.module.forward({x}).toTensor();
  } catch (...) {
    SetCpuAutocast(false);
    throw;
  }
  SetCpuAutocast(false);
  return out;
}

torch::Tensor Forward(Model::Encoder& encoder, const torch::Tensor& input) {
  return OnForwardThread([&] {
    const TeamPlacement placement;
    return ForwardHere(encoder, input);
  });
}

// `input` through `forward` in parts of at most encoder.max_images images
// (all at once where that is 0), the results joined.
template <typename Fn>
torch::Tensor InParts(const Model::Encoder& encoder, const torch::Tensor& input, Fn&& forward) {
  if (encoder.max_images <= 0 || input.size(0) <= encoder.max_images) return forward(input);
  std::vector<torch::Tensor> parts;
  for (int64_t first = 0; first < input.size(0); first += encoder.max_images) {
    parts.push_back(forward(input.narrow(0, first, std::min(encoder.max_images, input.size(0) - first))));
  }
  return torch::cat(parts);
}

// What GetImageLaneStats reports.
std::atomic<uint64_t> g_lane_batches{0};
std::atomic<uint64_t> g_lane_batches_on_two_threads{0};

// A batch as two forwards at once, the first half of its items (rounded up)
// on the forward thread and the rest on the other thread of its 2-thread
// team; inside the lanes' parallel region each forward's own regions run
// inline, on its one thread. Why: on two cores one forward of 8 images
// leaves each core waiting, for the other core's share of each linear to
// end and at the barriers of the forward's hundreds of regions; two
// single-thread forwards of 4 meet once, at the end. The batch sizes it
// runs at: ImageLanesFrom, Model::RunsInLanes. Intel Xeon (family 6 model
// 167), 8 images from JavaScript, median time as lanes / as one forward:
// pixels in, calls of the two alternated in one process, float32 0.964,
// bfloat16 0.930, int8 0.901 (alternated processes: 0.94-0.98, 0.91-0.94,
// 0.83-0.89); encoded photos in, 0.947, 0.977, 0.935; 16 images bfloat16
// 0.850, int8 0.933. With one thread in the region (OMP_DYNAMIC), it runs
// both lanes in turn.
torch::Tensor ForwardInLanes(Model::Encoder& encoder, const torch::Tensor& input) {
  const int64_t n = input.size(0);
  const int64_t first_lane = (n + 1) / 2;
  return OnForwardThread([&] {
    const TeamPlacement placement;
    const AutogradModes modes;  // the other thread's are its own
    torch::Tensor lanes[2];
    std::thread::id threads[2];
    at::parallel_for(0, 2, 1, [&](int64_t begin, int64_t end) {
      const AutogradModes::Scope scope(modes);
      for (int64_t lane = begin; lane < end; ++lane) {
        threads[lane] = std::this_thread::get_id();
        const torch::Tensor part =
            lane == 0 ? input.narrow(0, 0, first_lane) : input.narrow(0, first_lane, n - first_lane);
        lanes[lane] = InParts(encoder, part, [&](const torch::Tensor& x) { return ForwardHere(encoder, x); });
      }
    });
    g_lane_batches.fetch_add(1, std::memory_order_relaxed);
    if (threads[0] != threads[1]) g_lane_batches_on_two_threads.fetch_add(1, std::memory_order_relaxed);
    return torch::cat({lanes[0], lanes[1]});
  });
}

// Builds candidate `name` of `archive` (the module as loaded, left unchanged),
// with the attention's products on clip-native's kernel if `attention_kernel`.
Model::Encoder BuildCandidate(const torch::jit::script::Module& archive, const std::string& name, Precision precision,
                              bool attention_kernel) {
  Model::Encoder encoder;
  // The operators between the linears: LayerNorms (with the residual adds
  // before them) always, the attention where its kernel was chosen.
  auto rewrite_small_ops = [&] {
    const std::shared_ptr<torch::jit::Graph> graph = encoder.module.get_method("forward").graph();
    encoder.layer_norms = RewriteLayerNorms(graph, &encoder.fused_norms);
    if (!attention_kernel) return;
    encoder.attention_matmuls = RewriteAttentionMatmuls(graph, &encoder.fused_attentions);
    encoder.packed_attentions = RewritePackedAttention(graph);
  };
  encoder.kernel = name;
  const bool bfloat16 = precision == Precision::kBFloat16;
  if (name == "archive" || name == "autocast") {
    encoder.module = archive;
    encoder.autocast = bfloat16;
    return encoder;
  }
  if (name == "avx512-vnni") {  // int8 on clip-native's linear (cpu_linear.h: PanelLinearInt8)
    encoder.module = torch::jit::freeze(archive);
    if (RewriteLinears(encoder.module.get_method("forward").graph(), /*bfloat16=*/false, 32, at::kChar) == 0) {
      throw std::runtime_error("no linear layer with constant weights to quantize");
    }
    // No mlp_rows: each linear quantizes its input per row, over all of the
    // row's features, so the hidden rows cannot pass straight to the second.
    rewrite_small_ops();
    return encoder;
  }
  if (precision == Precision::kInt8) {
    encoder.module = torch::jit::freeze(archive);
    const at::QEngine engine = name == "fbgemm" ? at::QEngine::FBGEMM : at::QEngine::ONEDNN;
    // Both engines' u8 x s8 products saturate at 16 bits without VNNI.
    const bool reduce_range = !GetCpuFeatures().int8_dot();
    if (RewriteLinearsForInt8(encoder.module.get_method("forward").graph(), engine, reduce_range) == 0) {
      throw std::runtime_error("no linear layer with constant weights to quantize");
    }
    rewrite_small_ops();
    return encoder;
  }
  if (name == "aten") {
    encoder.module = torch::jit::freeze(archive);
    encoder.autocast = bfloat16;
    return encoder;
  }
  if (name == "avx512" || name == "avx2" || name == "avx512-bf16w" || name == "avx2-bf16w") {
    encoder.module = torch::jit::freeze(archive);
    const bool bf16_weights = name == "avx512-bf16w" || name == "avx2-bf16w";
    RewriteLinears(encoder.module.get_method("forward").graph(), /*bfloat16=*/false,
                   name == "avx512" || name == "avx512-bf16w" ? 32 : 16, bf16_weights ? at::kBFloat16 : at::kFloat);
    encoder.fused_mlps = RewriteMlps(encoder.module.get_method("forward").graph());
    rewrite_small_ops();
    return encoder;
  }
  const bool amx = name == "amx-bf16";
  const bool panel_kernel = name == "avx512-bf16" || amx;
  if (name == "onednn-bf16" || panel_kernel) {
    torch::jit::script::Module copy = archive.clone();
    copy.to(torch::kBFloat16);
    encoder.module = torch::jit::freeze(copy);
    encoder.float_input = torch::kBFloat16;
  } else {
    encoder.module = torch::jit::freeze(archive);
  }
  RewriteLinears(encoder.module.get_method("forward").graph(), bfloat16, panel_kernel ? 32 : 0, at::kFloat, amx);
  if (panel_kernel) encoder.fused_mlps = RewriteMlps(encoder.module.get_method("forward").graph());
  rewrite_small_ops();
  return encoder;
}

// A candidate built by freezing is a clone of the archive whose methods
// (their graphs hold its packed weights as constants) belong to the
// archive's compilation unit, which the winner shares and keeps alive:
// destroying a losing candidate's module alone kept its weights (a float32
// calibration of ViT-B/32 held 1.9 GB resident against 1.1 GB forced).
// Removes the candidate's methods from its type and the unit; it must not
// run afterwards.
void DropCandidateMethods(const torch::jit::script::Module& archive, Model::Encoder* candidate) {
  const c10::ClassTypePtr type = candidate->module.type();
  if (type == archive.type()) return;  // the archive itself ("archive", "autocast")
  const std::shared_ptr<torch::jit::CompilationUnit> unit = candidate->module._ivalue()->compilation_unit();
  std::vector<std::pair<std::string, c10::QualifiedName>> methods;
  for (torch::jit::Function* method : type->methods()) methods.emplace_back(method->name(), method->qualname());
  for (const auto& [name, qualified] : methods) {
    type->unsafeRemoveMethod(name);
    unit->unsafeRemoveMethod(qualified);
  }
  candidate->module = torch::jit::script::Module();
}

double MinCosine(const torch::Tensor& expected, const torch::Tensor& actual) {
  return at::cosine_similarity(expected.to(torch::kFloat32), actual.to(torch::kFloat32), 1).min().item<double>();
}

double RequiredCosine(Precision precision) {
  switch (precision) {
    case Precision::kFloat32:
      return 0.99999;
    case Precision::kInt8:
      return 0.99;
    default:
      return 0.999;
  }
}

// Gives freed memory back to the system after a load (the archives as
// loaded, the candidates not kept) and a dispose (the weights): such blocks
// go to the caching allocator and to malloc's heaps, where free pages between
// live blocks stay resident (a process that loaded and disposed ViT-B/32
// four times held 434-691 MB after each dispose, 233-239 MB with this).
void ReturnFreedMemory() {
  ReleaseCachedCpuMemory();
#if defined(__GLIBC__)
  malloc_trim(0);
#endif
}

// Measured choices, per process: loading the same archive again (another
// worker, a reload) reuses the measurement instead of repeating it.
std::mutex g_calibration_mutex;

// What calibrating one encoder found: the candidate it runs and each
// candidate's score, and for images the candidate that batches of at least
// `batch_from` images run instead ("" and 0: none) with each candidate's
// milliseconds per image on kImageBatchShape images.
struct Calibration {
  std::string winner;
  std::vector<std::pair<std::string, double>> timings;
  std::string batch_winner;
  int64_t batch_from = 0;
  std::vector<std::pair<std::string, double>> batch_timings;
};
std::map<std::string, Calibration> g_calibrations;

// Keyed by the file (absolute path, size, modification time), the
// precision, the thread count, the attention choice, the candidates asked
// for and the batch shape timed for a batch choice (0: none).
std::string CalibrationKey(const std::string& path, Precision precision, const std::vector<std::string>& names,
                           bool attention_kernel, int64_t batch_shape) {
  std::string absolute = path;
  try {
    absolute = std::filesystem::absolute(path).lexically_normal().string();
  } catch (const std::exception&) {
  }
  std::string key = absolute + "|" + PrecisionName(precision) + "|" + std::to_string(at::get_num_threads()) + "|" +
                    (attention_kernel ? "attention kernel" : "attention aten");
  try {
    key += "|" + std::to_string(std::filesystem::file_size(path)) + "|" +
           std::to_string(std::filesystem::last_write_time(path).time_since_epoch().count());
  } catch (const std::exception&) {
  }
  for (const auto& name : names) key += "|" + name;
  if (batch_shape > 0) key += "|batches of " + std::to_string(batch_shape);
  return key;
}

// Raised whenever a kernel changes in a way that may change what calibration
// chooses (2: int8 on AMX-INT8 tiles; 3: bfloat16 AMX panels in groups on
// large inputs), so that calibration files written by an earlier build of
// the same version measure again.
constexpr int kKernelRevision = 3;

// What a measurement kept in a calibration file (CalibrationStore) depends on
// beyond the files and choices of its key: the CPU (brand, family, model,
// stepping and the instructions clip-native may use), the threads, and the
// versions of libtorch and of clip-native's kernels. A machine with other
// values measures again.
std::string MachineKey() {
  return CpuIdentity() + "|threads " + std::to_string(at::get_num_threads()) + "|libtorch " + TORCH_VERSION +
         "|clip-native " + CLIP_NATIVE_VERSION + "|kernels " + std::to_string(kKernelRevision);
}

// "NAME@N" (a candidate and the batch size from which it runs the image
// batches, 2 to 9999) -> {NAME, N}; nullopt when malformed or N < 2.
std::optional<std::pair<std::string, int64_t>> ParseBatchChoice(const std::string& text) {
  const size_t at = text.find('@');
  if (at == std::string::npos) return std::nullopt;
  const std::string from = text.substr(at + 1);
  if (from.empty() || from.size() > 4 || from.find_first_not_of("0123456789") != std::string::npos) return std::nullopt;
  const int64_t images = std::stoll(from);
  if (images < 2) return std::nullopt;
  return std::make_pair(text.substr(0, at), images);
}

// A stored calibration: the winner, then each candidate's milliseconds per
// item, separated by ';' ("avx512;onednn=42.1;avx512=39.7;aten=72.5"); for
// images then "batch=NAME@FROM" when batches run another candidate, and each
// candidate's milliseconds per image on the batch shape as "batch.NAME=MS".
std::string FormatCalibration(const Calibration& c) {
  std::ostringstream out;
  out.precision(17);
  out << c.winner;
  for (const auto& [name, ms] : c.timings) out << ';' << name << '=' << ms;
  if (!c.batch_winner.empty()) out << ";batch=" << c.batch_winner << '@' << c.batch_from;
  for (const auto& [name, ms] : c.batch_timings) out << ";batch." << name << '=' << ms;
  return out.str();
}

// The stored calibration `value` if it names a winner among `names` and
// figures for candidates of `names` only; else nullopt (measure again).
std::optional<Calibration> ParseCalibration(const std::string& value, const std::vector<std::string>& names) {
  auto known = [&](const std::string& name) { return std::find(names.begin(), names.end(), name) != names.end(); };
  std::vector<std::string> fields;
  std::istringstream in(value);
  for (std::string field; std::getline(in, field, ';');) fields.push_back(field);
  if (fields.size() < 2 || !known(fields[0])) return std::nullopt;
  Calibration c;
  c.winner = fields[0];
  for (size_t i = 1; i < fields.size(); ++i) {
    std::string field = fields[i];
    if (field.rfind("batch=", 0) == 0) {
      const auto choice = ParseBatchChoice(field.substr(6));
      if (!choice || !known(choice->first)) return std::nullopt;
      std::tie(c.batch_winner, c.batch_from) = *choice;
      continue;
    }
    const bool batch = field.rfind("batch.", 0) == 0;
    if (batch) field = field.substr(6);
    const size_t equals = field.find('=');
    if (equals == std::string::npos || !known(field.substr(0, equals))) return std::nullopt;
    try {
      size_t used = 0;
      const std::string number = field.substr(equals + 1);
      const double ms = std::stod(number, &used);
      if (used != number.size() || !std::isfinite(ms) || ms <= 0) return std::nullopt;
      (batch ? c.batch_timings : c.timings).emplace_back(field.substr(0, equals), ms);
    } catch (const std::exception&) {
      return std::nullopt;
    }
  }
  return c;
}

// The most images one forward of `kernel`'s image encoder takes (0: any).
// bfloat16 on oneDNN's inner products: 8. On an Intel Xeon with AMX its
// linears took 2.5x as long on 800 rows (16 images) as on 400 (the second
// MLP linear 39.5 against 13.2 ms, the first 26.5 against 10.7), and 16
// images as one forward 14% longer per image than as 8 (one core idle 27% of
// the time against 14%); float32 (clip-native's kernel) ran 16 images level
// with 8 per image, int8 on oneDNN 9% faster. bfloat16 on clip-native's AMX
// tiles: 16. There 16 images took as long per image as 8 (7.81 against 7.82
// ms) and 32 a third longer (10.26 ms): the sums of 1600 rows and the MLP's
// 9.8 MB of hidden rows no longer stay in a core's L2.
int64_t ImagesPerForward(Precision precision, const std::string& kernel) {
  if (precision != Precision::kBFloat16) return 0;
  if (kernel == "onednn" || kernel == "onednn-bf16") return 8;
  return kernel == "amx-bf16" ? 16 : 0;
}

// Images per batch on which calibration also times the image encoder's
// candidates, for a second choice that batches of at least as many images
// run (ChooseCpuEncoder). On an Intel Xeon with AMX-INT8, int8, before
// clip-native's int8 linear ran on the tiles: oneDNN's candidate (AMX tiles)
// ran 8 images in 55-58 ms against 66-67 on the VNNI kernel and 16 in 110
// against 140, level at 4, while one image took 17 ms against 11 and one
// caption 6.9 against 2.7 ms.
constexpr int64_t kImageBatchShape = 8;
// How much faster than the main choice on kImageBatchShape images another
// candidate must be to run the batches: a margin over calibration's noise.
constexpr double kImageBatchMargin = 0.95;

// One timed round of calibration: each candidate of `order` (in reverse
// when `reverse`) runs `input` once; `best_ms[c]` keeps candidate c's best
// milliseconds per item.
void TimeRound(std::vector<Model::Encoder>& built, const std::vector<size_t>& order, bool reverse,
               const torch::Tensor& input, std::vector<double>* best_ms) {
  for (size_t t = 0; t < order.size(); ++t) {
    const size_t c = reverse ? order[order.size() - 1 - t] : order[t];
    const auto start = std::chrono::steady_clock::now();
    Forward(built[c], input);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    (*best_ms)[c] = std::min((*best_ms)[c], ms / static_cast<double>(input.size(0)));
  }
}

// The image encoder's second choice, for batches of at least `from` images.
struct BatchEncoder {
  Model::Encoder encoder;
  int64_t from = 0;
  std::vector<std::pair<std::string, double>> timings;  // ms per image on kImageBatchShape images
};

// Builds each candidate of `names`, drops those that fail or disagree with
// the archive, and with more than one left keeps the fastest: each is timed
// on the calibration inputs, one shape after another (warm-up, then the best
// of interleaved rounds), scored by its mean milliseconds per item over the
// shapes. One more than 1.5 times as slow as the fastest on the first shape
// is not timed on the others (libtorch's own linear, 1.5-3 times behind,
// would otherwise add a second to an image encoder's load), and one more
// than twice as slow in the first round not in the other two; its score is
// from the first shape alone, which still ranks it last. The candidates
// that rank differently by shape differ by 5-20% (int8 on FBGEMM and
// oneDNN).
//
// With `batch` (the image encoder), every candidate not dropped in the first
// round is also timed on kImageBatchShape images (a warm-up, then two rounds in opposite
// orders); one faster there than the winner by kImageBatchMargin becomes
// `*batch`, which batches of that many images or more run.
//
// A measurement of the same files earlier in this process, or in `store`
// from an earlier process on this machine, names the winner instead: only it
// is built (it still has to agree with the archive; a stored winner that
// does not is measured again). `*measured_by` says which: "measured",
// "process" or "file" ("" with one candidate).
Model::Encoder ChooseCpuEncoder(const torch::jit::script::Module& archive, const std::string& path,
                                const Manifest& manifest, bool image, Precision precision,
                                const std::vector<std::string>& names, bool attention_kernel,
                                const CalibrationStore& store, std::vector<std::pair<std::string, double>>* timings,
                                std::string* measured_by, BatchEncoder* batch) {
  torch::InferenceMode guard;
  const torch::Tensor example = ExampleInput(manifest, image);
  torch::Tensor expected;
  try {
    Model::Encoder as_loaded;
    as_loaded.module = archive;
    expected = Forward(as_loaded, example);
  } catch (const std::exception&) {
    // An archive that cannot run is left to Model::Load's check, which
    // names the file and what failed.
    return OnForwardThread([&] { return BuildCandidate(archive, "archive", precision, /*attention_kernel=*/false); });
  }
  std::vector<std::string> to_build = names;
  const std::string key = CalibrationKey(path, precision, names, attention_kernel, batch ? kImageBatchShape : 0);
  const std::string stored_key = store.enabled() ? MachineKey() + "|" + key : "";
  std::optional<Calibration> known;
  measured_by->clear();
  if (names.size() > 1) {
    *measured_by = "measured";
    std::lock_guard<std::mutex> lock(g_calibration_mutex);
    auto it = g_calibrations.find(key);
    if (it != g_calibrations.end()) {
      known = it->second;
      *measured_by = "process";
    }
  }
  if (*measured_by == "measured" && store.enabled()) {
    if (const std::optional<std::string> value = store.Find(stored_key)) {
      if ((known = ParseCalibration(*value, names))) *measured_by = "file";
    }
  }
  if (known) {
    to_build = {known->winner};
    if (batch && !known->batch_winner.empty() && known->batch_winner != known->winner) {
      to_build.push_back(known->batch_winner);
    }
    *timings = known->timings;
  }
  std::vector<Model::Encoder> built;
  std::string failures;
  auto build = [&] {
    for (const std::string& name : to_build) {
      try {
        Model::Encoder candidate =
            OnForwardThread([&] { return BuildCandidate(archive, name, precision, attention_kernel); });
        const double cosine = MinCosine(expected, Forward(candidate, example));
        if (cosine >= RequiredCosine(precision)) {
          built.push_back(std::move(candidate));
          continue;
        }
        DropCandidateMethods(archive, &candidate);
        failures += " " + name + ": cosine " + std::to_string(cosine) + " to the archive;";
      } catch (const c10::Error& e) {
        failures += " " + name + ": " + e.what_without_backtrace() + ";";
      } catch (const std::exception& e) {
        failures += " " + name + ": " + e.what() + ";";
      }
    }
  };
  build();
  const bool batch_lost =
      batch && known && !known->batch_winner.empty() && known->batch_winner != known->winner && built.size() < 2;
  if (known && (built.empty() || built.front().kernel != known->winner || batch_lost)) {
    // The stored winner, or the stored batch candidate, no longer agrees with
    // the archive: measure again.
    for (Model::Encoder& candidate : built) DropCandidateMethods(archive, &candidate);
    built.clear();
    known.reset();
    to_build = names;
    timings->clear();
    failures.clear();
    *measured_by = "measured";
    build();
  }
  if (known) {
    if (*measured_by == "file") {
      std::lock_guard<std::mutex> lock(g_calibration_mutex);
      g_calibrations[key] = *known;
    }
    if (batch && built.size() > 1) {
      batch->encoder = std::move(built[1]);
      batch->from = known->batch_from;
    }
    if (batch) batch->timings = known->batch_timings;
    return std::move(built.front());
  }
  if (built.empty() && precision != Precision::kInt8) {
    // The archive as loaded still computes the model (autocast for bfloat16).
    TORCH_WARN("clip-native: ", path, ": running the archive as loaded (", failures, ")");
    return OnForwardThread([&] { return BuildCandidate(archive, "archive", precision, /*attention_kernel=*/false); });
  }
  if (built.empty()) {
    throw ClipError(ErrorCode::kModelLoadFailed, path + ": no way to run this encoder at " + PrecisionName(precision) +
                                                     " on this CPU (" + failures + ")");
  }
  if (!failures.empty() && names.size() > 1) {
    TORCH_WARN("clip-native: ", path, ": left out", failures);
  }
  if (built.size() == 1) return std::move(built.front());

  const std::vector<torch::Tensor> inputs = CalibrationInputs(manifest, image);
  // Per candidate, the best milliseconds per item on each shape it ran.
  std::vector<std::vector<double>> best(built.size());
  std::vector<size_t> timed(built.size());  // the candidates still timed
  for (size_t c = 0; c < built.size(); ++c) timed[c] = c;
  std::vector<size_t> contenders;  // those not dropped in the first round
  // Three rounds, each in the opposite order of the one before, so that a
  // drift of the machine's speed within a round favours no candidate.
  constexpr int kRounds = 3;
  for (size_t i = 0; i < inputs.size(); ++i) {
    for (size_t c : timed) Forward(built[c], inputs[i]);
    std::vector<double> shape_best(built.size(), 1e300);
    const std::vector<size_t> shape_timed = timed;
    for (int round = 0; round < kRounds; ++round) {
      TimeRound(built, timed, /*reverse=*/round % 2 == 1, inputs[i], &shape_best);
      if (i == 0 && round == 0) {
        // Twice as slow as the fastest in the first round: not timed again.
        double fastest = 1e300;
        for (size_t c : timed) fastest = std::min(fastest, shape_best[c]);
        timed.erase(std::remove_if(timed.begin(), timed.end(), [&](size_t c) { return shape_best[c] > 2 * fastest; }),
                    timed.end());
        contenders = timed;
      }
    }
    double fastest = 1e300;
    for (size_t c : shape_timed) {
      best[c].push_back(shape_best[c]);
      fastest = std::min(fastest, shape_best[c]);
    }
    if (i == 0) {
      timed.erase(std::remove_if(timed.begin(), timed.end(), [&](size_t c) { return shape_best[c] > 1.5 * fastest; }),
                  timed.end());
    }
  }
  size_t winner = 0;
  timings->clear();
  for (size_t c = 0; c < built.size(); ++c) {
    double score = 0;
    for (double ms : best[c]) score += ms;
    score /= static_cast<double>(best[c].size());
    timings->emplace_back(built[c].kernel, score);
    if (score < (*timings)[winner].second) winner = c;
  }
  Calibration calibration;
  calibration.winner = built[winner].kernel;
  calibration.timings = *timings;
  size_t batch_winner = winner;
  if (batch && contenders.size() > 1) {
    const torch::Tensor pixels = at::randn({kImageBatchShape, 3, manifest.image.size, manifest.image.size},
                                           at::detail::createCPUGenerator(/*seed_val=*/20240603));
    std::vector<double> batch_ms(built.size(), 1e300);
    for (size_t c : contenders) Forward(built[c], pixels);  // new shapes: primitives, buffers
    for (int round = 0; round < 2; ++round) TimeRound(built, contenders, /*reverse=*/round == 1, pixels, &batch_ms);
    for (size_t c : contenders) {
      calibration.batch_timings.emplace_back(built[c].kernel, batch_ms[c]);
      if (batch_ms[c] < batch_ms[batch_winner]) batch_winner = c;
    }
    if (batch_winner != winner && batch_ms[batch_winner] < kImageBatchMargin * batch_ms[winner]) {
      calibration.batch_winner = built[batch_winner].kernel;
      calibration.batch_from = kImageBatchShape;
    } else {
      batch_winner = winner;
    }
    batch->timings = calibration.batch_timings;
  }
  for (size_t c = 0; c < built.size(); ++c) {
    if (c != winner && c != batch_winner) DropCandidateMethods(archive, &built[c]);
  }
  {
    std::lock_guard<std::mutex> lock(g_calibration_mutex);
    g_calibrations[key] = calibration;
  }
  if (const std::string problem = store.Put(stored_key, FormatCalibration(calibration)); !problem.empty()) {
    TORCH_WARN("clip-native: the calibration of ", path, " was not kept in ", store.path(), " (", problem, ")");
  }
  if (batch_winner != winner) {
    batch->encoder = std::move(built[batch_winner]);
    batch->from = calibration.batch_from;
  }
  return std::move(built[winner]);
}

// A switch of the environment that takes 0 or 1: unset or empty -> nullopt;
// anything else is refused (CLIP_INVALID_ARGUMENT).
std::optional<bool> SwitchFromEnvironment(const char* name) {
  const char* env = std::getenv(name);
  const std::string value = env ? env : "";
  if (value.empty()) return std::nullopt;
  if (value != "0" && value != "1") {
    throw ClipError(ErrorCode::kInvalidArgument,
                    std::string("Expected 0 or 1 for ") + name + " but received \"" + value + "\"");
  }
  return value == "1";
}

// CLIP_NATIVE_CPU_GRAPH=0 runs the archives as loaded (the stock graph of the
// benchmarks), where the precision allows it: no candidate graphs, texts
// through the archive's padded forward.
bool RunArchivesAsLoaded(Precision precision) {
  const char* graph = std::getenv("CLIP_NATIVE_CPU_GRAPH");
  return graph && std::string(graph) == "0" && precision != Precision::kInt8;
}

// Whether the attention's products run on clip-native's kernel
// (cpu_attention.h) rather than libtorch's matmul: CLIP_NATIVE_ATTENTION_KERNEL
// (1 or 0) when set; else, when `measure` (a calibrating load), whichever
// was faster on this machine, measured once per process; else the fixed rule,
// which every process on the machine follows alike (reproducible bits).
//
// A measurement in `store` (an earlier process on this machine) stands in for
// one of this process.
void ChooseAttentionKernel(Precision precision, bool measure, const CalibrationStore& store, CpuKernelChoice* choice) {
  const std::optional<bool> forced = SwitchFromEnvironment("CLIP_NATIVE_ATTENTION_KERNEL");
  choice->attention_kernel = false;
  // bfloat16 graphs run the products in bfloat16 (onednn-bf16) or on the
  // bfloat16 outputs of the linears (onednn): decided and measured in that
  // type, except on a CPU without bfloat16 products, whose bfloat16 loads
  // run float32 first (CpuKernelCandidates).
  const at::ScalarType dtype =
      precision == Precision::kBFloat16 && GetCpuFeatures().bf16_dot() ? at::kBFloat16 : at::kFloat;
  if (!AttentionMatmulAvailable(dtype)) {
    choice->attention_selected_by = "not applicable";
    return;
  }
  if (forced) {
    choice->attention_kernel = *forced;
    choice->attention_selected_by = "environment";
    return;
  }
  if (!measure) {
    choice->attention_kernel = AttentionMatmulByRule(dtype);
    choice->attention_selected_by = "rule";
    return;
  }
  static std::mutex mutex;
  static std::map<at::ScalarType, AttentionMatmulTimings> measured;
  AttentionMatmulTimings timings;
  {
    std::lock_guard<std::mutex> lock(mutex);
    auto it = measured.find(dtype);
    if (it == measured.end()) {
      const std::string stored_key =
          store.enabled() ? MachineKey() + "|attention|" + std::string(c10::toString(dtype)) : "";
      std::optional<AttentionMatmulTimings> stored;
      if (const std::optional<std::string> value = store.Find(stored_key)) {
        std::istringstream in(*value);
        AttentionMatmulTimings t;
        char separator = 0;
        if (in >> t.kernel_us >> separator >> t.aten_us && separator == ';' &&
            in.peek() == std::char_traits<char>::eof() && t.kernel_us > 0 && t.aten_us > 0) {
          stored = t;
        }
      }
      if (!stored) {
        torch::InferenceMode guard;
        stored = OnForwardThread([dtype] { return MeasureAttentionMatmul(dtype); });
        std::ostringstream value;
        value.precision(17);
        value << stored->kernel_us << ';' << stored->aten_us;
        if (const std::string problem = store.Put(stored_key, value.str()); !problem.empty()) {
          TORCH_WARN("clip-native: the attention measurement was not kept in ", store.path(), " (", problem, ")");
        }
      }
      it = measured.emplace(dtype, *stored).first;
    }
    timings = it->second;
  }
  choice->attention_kernel = timings.kernel_us < timings.aten_us;
  choice->attention_selected_by = "measurement";
  choice->attention_kernel_us = timings.kernel_us;
  choice->attention_aten_us = timings.aten_us;
}

// The smallest batch the rule runs in lanes (0: none): on a CPU with AMX,
// 4 images in float32, 8 in bfloat16 and int8 (Intel Xeon, family 6 model
// 167, bench/lanes.js, 4 images: float32 0.90-0.92x one forward's time,
// bfloat16 1.07x, int8 1.02-1.05x; 2 images: float32 0.96-0.97x). Other
// CPUs run one forward until lanes are measured on them (bench/lanes.js
// and CLIP_NATIVE_IMAGE_LANES try them there).
int64_t ImageLanesFrom(Precision precision) {
  if (!GetCpuFeatures().amx_bf16) return 0;
  return precision == Precision::kFloat32 ? 4 : kImageBatchShape;
}

// CLIP_NATIVE_IMAGE_LANES: unset or empty -> nullopt (the rule); "0" -> 0
// (one forward); "1" -> `rule_from` (the rule's batch size where it has
// one, else kImageBatchShape); N from 2 to 9999 -> N (lanes from N
// images); anything else is refused (CLIP_INVALID_ARGUMENT).
std::optional<int64_t> ImageLanesFromEnvironment(int64_t rule_from) {
  const char* env = std::getenv("CLIP_NATIVE_IMAGE_LANES");
  const std::string value = env ? env : "";
  if (value.empty()) return std::nullopt;
  if (value.size() <= 4 && value.find_first_not_of("0123456789") == std::string::npos) {
    const int64_t images = std::stoll(value);
    if (images == 1) return rule_from > 0 ? rule_from : kImageBatchShape;
    return images;
  }
  throw ClipError(
      ErrorCode::kInvalidArgument,
      "Expected 0, 1 or a batch size from 2 to 9999 for CLIP_NATIVE_IMAGE_LANES but received \"" + value + "\"");
}

// Whether image batches of ImageLanesFrom(precision) images or more run in
// two lanes (ForwardInLanes; odd ones from twice that, Model::RunsInLanes):
// only in a process of 2 threads (the lanes are its team's two threads);
// there CLIP_NATIVE_IMAGE_LANES when set (above), else the rule
// (ImageLanesFrom), whatever the candidates and however they were chosen
// (the lanes give clip-native's kernels the same bits as one forward). A
// rule and not a measurement at load: forwards back to back, as calibration
// times them, ran level either way (8 bfloat16 images 6.09 ms per image as
// one forward, 6.23 as lanes), while calls from JavaScript, with their
// staging and delivery between forwards, ran 2-10% faster in lanes (Intel
// Xeon, family 6 model 167: see ForwardInLanes).
void ChooseImageLanes(Precision precision, CpuKernelChoice* choice) {
  const int64_t rule_from = ImageLanesFrom(precision);
  const std::optional<int64_t> forced = ImageLanesFromEnvironment(rule_from);  // a bad value fails any load
  int64_t from = 0;
  if (OnForwardThread([] { return at::get_num_threads(); }) != 2) {
    choice->image_lanes_selected_by = "not applicable";
  } else {
    from = forced.value_or(rule_from);
    choice->image_lanes_selected_by = forced ? "environment" : "rule";
  }
  choice->image_lanes_from = from;
}

}  // namespace

// clip-native's float32 linear as a candidate: "avx512" where the CPU has
// AVX-512F, else "avx2" where it has AVX2 + FMA, else none (nullptr).
const char* FloatPanelCandidate() {
  return PanelLinearAvailable() ? "avx512" : PanelLinearAvx2Available() ? "avx2" : nullptr;
}

std::vector<std::string> CpuKernelCandidates(Precision precision) {
  const bool onednn = HasOperator("mkldnn::_linear_pointwise", "");
  switch (precision) {
    case Precision::kFloat32: {
      const char* panel = FloatPanelCandidate();
      if (onednn && panel) return {"onednn", panel, "aten"};
      if (onednn) return {"onednn", "aten"};
      if (panel) return {"aten", panel};
      return {"aten"};
    }
    case Precision::kBFloat16: {
      std::vector<std::string> names;
      // oneDNN's bfloat16 inner products need AVX-512 (BW, VL, DQ) or
      // AVX-NE-CONVERT; without them both oneDNN candidates fail to build.
      const bool onednn_bf16 = onednn && GetCpuFeatures().avx512f;
      if (onednn_bf16 && PanelLinearAmxAvailable()) {
        // AMX tiles (Intel Xeon, family 6 model 167), against onednn-bf16,
        // calls alternated in one process: one image 0.82-0.85x the time, 8
        // images 0.91-0.99x (alternated processes: 0.99x), one caption
        // 0.61x, 8 captions 0.81x: first, so `fixed` takes it.
        names = {"amx-bf16", "onednn", "onednn-bf16", "avx512-bf16"};
      } else if (onednn_bf16 && PanelLinearBf16Available()) {
        names = {"onednn", "onednn-bf16", "avx512-bf16"};
      } else if (onednn_bf16) {
        names = {"onednn", "onednn-bf16"};
      } else {
        names = {"autocast"};
      }
      // Without bfloat16 products in hardware, whole encoders on libtorch's
      // bfloat16 linears ran 2.7-2.9x slower than on clip-native's float32
      // one (AVX-512 without BF16) and 3-5x (AVX2). There clip-native's
      // float32 kernel comes first on bfloat16 weights (what `fixed` takes:
      // half the bytes to stream, float32 inputs and products; one caption's
      // linears 1.15-1.6x faster than on float32 weights, 50-400 rows level),
      // then on float32 weights (float32's embeddings).
      if (!GetCpuFeatures().bf16_dot()) {
        if (const char* panel = FloatPanelCandidate()) {
          names.insert(names.begin(), panel);
          names.insert(names.begin(), std::string(panel) + "-bf16w");
        }
      }
      return names;
    }
    case Precision::kInt8: {
      // libtorch's engines: oneDNN first where the CPU has 32-bit integer
      // dot products (VNNI, AMX-INT8), FBGEMM elsewhere. On an AMD EPYC
      // (Zen 5) oneDNN ran batches of 16 images 14% and of 16 captions 7%
      // faster, and level for one item.
      std::vector<std::string> names;
      if (Int8Available()) {
        if (HasQEngine(at::QEngine::FBGEMM)) names.emplace_back("fbgemm");
        if (HasQEngine(at::QEngine::ONEDNN)) {
          names.insert(GetCpuFeatures().int8_dot() ? names.begin() : names.end(), "onednn");
        }
      }
      // clip-native's int8 linear (AVX512-VNNI) before them (what `fixed`
      // takes): on Zen 5 its linears ran 1.5x oneDNN's on one image's 50
      // rows and 2.3x on a caption's 20, and whole encoders 1.1-1.4x. On an
      // Intel Xeon with AMX-INT8, where it runs 32 rows and more on the
      // tiles, 8 images took 5.0 ms per image against oneDNN's 7.3 (oneDNN
      // also on AMX-INT8), one image 8.4 against 18.8, a caption 2.6 against
      // 7.3.
      if (PanelLinearInt8Available()) names.insert(names.begin(), "avx512-vnni");
      return names;
    }
    case Precision::kFloat16:
      return {};
  }
  return {};
}

bool BuiltWithCuda() {
#ifdef CLIP_WITH_CUDA
  return true;
#else
  return false;
#endif
}

const char* PrecisionName(Precision precision) {
  switch (precision) {
    case Precision::kFloat32:
      return "float32";
    case Precision::kFloat16:
      return "float16";
    case Precision::kBFloat16:
      return "bfloat16";
    case Precision::kInt8:
      return "int8";
  }
  return "float32";
}

// The load's forwards and candidate builds run on the forward thread
// (OnForwardThread). Whatever else in libtorch runs a parallel region while
// loading would give the calling thread a pool of OpenMP workers for as long
// as it lives, and the caller's thread (a libuv worker) never exits: a
// thread of its own ends with the load and takes any such pool with it.
std::shared_ptr<Model> Model::Load(const std::string& directory, const ModelOptions& options) {
  std::shared_ptr<Model> model;
  std::exception_ptr error;
  std::thread loader([&] {
    NameThisThread("clip-load");
    try {
      model = LoadOnThisThread(directory, options);
    } catch (...) {
      error = std::current_exception();
    }
  });
  loader.join();
  // The archives as loaded and the candidates not taken are gone now.
  ReturnFreedMemory();
  if (error) std::rethrow_exception(error);
  return model;
}

Model::ReleaseCpuCacheOnDestruction::~ReleaseCpuCacheOnDestruction() { ReturnFreedMemory(); }

std::shared_ptr<Model> Model::LoadOnThisThread(const std::string& directory, const ModelOptions& options) {
  InstallCpuAllocatorOnce();
  ConfigureThreadsOnce(options.threads);
  std::shared_ptr<Model> model(new Model());
  model->manifest_ = ReadManifest(directory);
  model->device_ = ParseDevice(options.device);
  model->precision_ = options.precision;
  if (const std::string problem = MaxCpuIsaProblem(); !problem.empty()) {
    throw ClipError(ErrorCode::kInvalidArgument, problem);
  }
  if (!model->is_cuda() && options.precision == Precision::kFloat16) {
    throw ClipError(ErrorCode::kInvalidArgument,
                    "Expected \"float32\", \"bfloat16\" or \"int8\" for dtype on the CPU but received \"float16\"");
  }
  if (!model->is_cuda() && options.precision == Precision::kInt8 && CpuKernelCandidates(Precision::kInt8).empty()) {
    throw ClipError(ErrorCode::kInvalidArgument,
                    "Expected \"float32\" or \"bfloat16\" for dtype but received \"int8\": this libtorch has no "
                    "quantized CPU kernels (quantized::linear_dynamic with FBGEMM or oneDNN)");
  }

  TokenizerOptions tokenizer_options;
  tokenizer_options.context_length = model->manifest_.text.context_length;
  tokenizer_options.bos = model->manifest_.text.bos;
  tokenizer_options.eos = model->manifest_.text.eos;
  tokenizer_options.pad = model->manifest_.text.pad;
  model->tokenizer_ =
      Tokenizer::FromHuggingFaceFiles(model->manifest_.vocab_path, model->manifest_.merges_path, tokenizer_options);

#ifdef CLIP_WITH_CUDA
  if (model->is_cuda()) model->cuda_ = std::make_shared<CudaState>(model->device_.index());
#endif

  torch::jit::script::Module image_archive = LoadArchive(model->manifest_.image_encoder_path, model->device_);
  if (model->is_cuda()) {
    torch::jit::script::Module text_archive = LoadArchive(model->manifest_.text_encoder_path, model->device_);
    if (options.precision == Precision::kInt8) {
      throw ClipError(ErrorCode::kInvalidArgument,
                      "Expected \"float32\", \"float16\" or \"bfloat16\" for dtype on CUDA but received \"int8\" "
                      "(int8 runs on the CPU)");
    }
    if (options.precision != Precision::kFloat32) {
      auto dtype = options.precision == Precision::kFloat16 ? torch::kHalf : torch::kBFloat16;
      image_archive.to(dtype);
      text_archive.to(dtype);
      model->image_encoder_.float_input = dtype;
      model->text_encoder_.float_input = dtype;
    }
    model->image_encoder_.module = image_archive;
    model->text_encoder_.module = text_archive;
    model->image_encoder_.kernel = model->text_encoder_.kernel = "cuda";
  } else {
    // The text archive is read once the image encoder is chosen and its
    // archive dropped: not beside the image encoder's candidates (ViT-B/32 on
    // Zen 5, peak resident during a calibrating load: float32 1.53 -> 1.29 GB,
    // bfloat16 1.69 -> 1.46, int8 1.19 -> 0.95; fixed 0.23 GB less too).
    model->ChooseCpuKernels(
        std::move(image_archive),
        [&] {
          torch::jit::script::Module text_archive = LoadArchive(model->manifest_.text_encoder_path, model->device_);
          if (SwitchFromEnvironment("CLIP_NATIVE_PACKED_TEXTS").value_or(true) &&
              !RunArchivesAsLoaded(options.precision)) {
            model->cpu_kernels_.packed_texts = UsePackedTextForward(text_archive);
          }
          return text_archive;
        },
        options);
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
      throw ClipError(ErrorCode::kModelLoadFailed, path + ": the " + what + " returned shape " + c10::str(out.sizes()) +
                                                       ", expected [1, " + std::to_string(m.embed_dim) +
                                                       "] (clip.json embedDim)");
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
  // Autocast is switched per forward (Run), as the two encoders may differ.
  SetCpuAutocast(false);
}

void Model::ChooseCpuKernels(torch::jit::script::Module image_archive,
                             const std::function<torch::jit::script::Module()>& load_text_archive,
                             const ModelOptions& options) {
  cpu_kernels_.candidates = CpuKernelCandidates(precision_);
  std::vector<std::string> candidates = cpu_kernels_.candidates;
  std::string forced = options.cpu_kernels;
  std::string source = "option";
  if (forced.empty()) {
    const char* env = std::getenv("CLIP_NATIVE_CPU_KERNELS");
    forced = env ? env : "";
    source = "environment";
  }
  if (RunArchivesAsLoaded(precision_)) {
    candidates = {"archive"};
    forced = "archive";
    source = "environment";
  }
  // "NAME,BATCH@N": NAME for both encoders, and BATCH for batches of at
  // least N images.
  std::string forced_batch;
  int64_t forced_batch_from = 0;
  if (const size_t comma = forced.find(','); comma != std::string::npos) {
    const std::string second = forced.substr(comma + 1);
    const auto choice = ParseBatchChoice(second);
    if (choice) std::tie(forced_batch, forced_batch_from) = *choice;
    forced = forced.substr(0, comma);
    if (!choice || forced.empty() || forced == "auto" || forced == "fixed" || forced == forced_batch ||
        std::find(candidates.begin(), candidates.end(), forced_batch) == candidates.end()) {
      throw ClipError(ErrorCode::kInvalidArgument,
                      "Expected a candidate, then another candidate and the batch size from which it runs the image "
                      "batches (\"NAME,BATCH@N\", N >= 2) for cpuKernels but received \"" +
                          forced + "," + second + "\"" + (source == "environment" ? " (CLIP_NATIVE_CPU_KERNELS)" : ""));
    }
  }
  const bool calibrate = forced.empty() || forced == "auto";
  if (calibrate) {
    cpu_kernels_.selected_by = candidates.size() > 1 ? "calibration" : "only candidate";
  } else if (forced == "fixed") {
    // The first candidate, unmeasured: every process on this machine and
    // libtorch makes the same choice (reproducible bits across processes).
    candidates.resize(1);
    cpu_kernels_.selected_by = "fixed";
  } else {
    if (std::find(candidates.begin(), candidates.end(), forced) == candidates.end()) {
      std::string list;
      for (const auto& name : candidates) list += (list.empty() ? "\"" : ", \"") + name + "\"";
      throw ClipError(ErrorCode::kInvalidArgument, "Expected \"auto\", \"fixed\" or one of " + list +
                                                       " for cpuKernels at " + PrecisionName(precision_) +
                                                       " but received \"" + forced + "\"" +
                                                       (source == "environment" ? " (CLIP_NATIVE_CPU_KERNELS)" : ""));
    }
    candidates = {forced};
    cpu_kernels_.selected_by = source;
  }
  std::string cache = options.calibration_cache;
  if (cache.empty()) {
    const char* env = std::getenv("CLIP_NATIVE_CALIBRATION_CACHE");
    cache = env ? env : "";
  }
  const CalibrationStore store(calibrate ? cache : "");
  cpu_kernels_.calibration_cache = store.path();
  ChooseAttentionKernel(precision_, calibrate, store, &cpu_kernels_);
  BatchEncoder batch;
  image_encoder_ = ChooseCpuEncoder(image_archive, manifest_.image_encoder_path, manifest_, /*image=*/true, precision_,
                                    candidates, cpu_kernels_.attention_kernel, store, &cpu_kernels_.image_ms,
                                    &cpu_kernels_.image_measured_by, calibrate ? &batch : nullptr);
  if (!forced_batch.empty() && forced_batch != image_encoder_.kernel) {
    // Named by the user: a failure fails the load.
    std::vector<std::pair<std::string, double>> unused_ms;
    std::string unused_by;
    batch.encoder =
        ChooseCpuEncoder(image_archive, manifest_.image_encoder_path, manifest_, /*image=*/true, precision_,
                         {forced_batch}, cpu_kernels_.attention_kernel, store, &unused_ms, &unused_by, nullptr);
    batch.from = forced_batch_from;
  }
  image_encoder_.max_images = ImagesPerForward(precision_, image_encoder_.kernel);
  if (batch.from > 0) {
    image_batch_encoder_ = std::move(batch.encoder);
    image_batch_encoder_.max_images = ImagesPerForward(precision_, image_batch_encoder_.kernel);
    image_batch_from_ = batch.from;
    cpu_kernels_.image_batch = image_batch_encoder_.kernel;
    cpu_kernels_.image_batch_from = image_batch_from_;
    cpu_kernels_.image_batch_max_images_per_forward = image_batch_encoder_.max_images;
  }
  cpu_kernels_.max_images_per_forward = image_encoder_.max_images;
  cpu_kernels_.image_batch_ms = std::move(batch.timings);
  // The batch encoder was chosen on one 2-thread forward of 8 images; in
  // lanes it runs 1-thread forwards of half a batch (not timed so).
  ChooseImageLanes(precision_, &cpu_kernels_);
  image_archive = torch::jit::script::Module();
  ReturnFreedMemory();  // else the text archive's reading grows the heap past the image archive's freed blocks
  text_encoder_ = ChooseCpuEncoder(load_text_archive(), manifest_.text_encoder_path, manifest_, /*image=*/false,
                                   precision_, candidates, cpu_kernels_.attention_kernel, store, &cpu_kernels_.text_ms,
                                   &cpu_kernels_.text_measured_by, nullptr);
  cpu_kernels_.image = image_encoder_.kernel;
  cpu_kernels_.text = text_encoder_.kernel;
  cpu_kernels_.image_attention_matmuls = image_encoder_.attention_matmuls;
  cpu_kernels_.text_attention_matmuls = text_encoder_.attention_matmuls;
  cpu_kernels_.image_fused_attentions = image_encoder_.fused_attentions;
  cpu_kernels_.text_fused_attentions = text_encoder_.fused_attentions;
  cpu_kernels_.text_packed_attentions = text_encoder_.packed_attentions;
  cpu_kernels_.image_fused_mlps = image_encoder_.fused_mlps;
  cpu_kernels_.text_fused_mlps = text_encoder_.fused_mlps;
  cpu_kernels_.image_fused_norms = image_encoder_.fused_norms;
  cpu_kernels_.text_fused_norms = text_encoder_.fused_norms;
  cpu_kernels_.image_layer_norms = image_encoder_.layer_norms;
  cpu_kernels_.text_layer_norms = text_encoder_.layer_norms;
}

int64_t Model::cuda_stream_id() const {
#ifdef CLIP_WITH_CUDA
  if (cuda_) return static_cast<int64_t>(cuda_->stream.id());
#endif
  return -1;
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

torch::Tensor Model::Run(Encoder& encoder, const torch::Tensor& input, bool in_lanes) {
#ifdef CLIP_WITH_CUDA
  if (is_cuda()) {
    c10::cuda::CUDAStreamGuard stream_guard(cuda_->stream);
    torch::Tensor on_device = input.to(device_, /*non_blocking=*/true);
    if (on_device.is_floating_point() && on_device.scalar_type() != encoder.float_input) {
      on_device = on_device.to(encoder.float_input);
    }
    torch::Tensor out = encoder.module.forward({on_device}).toTensor().to(torch::kFloat32);
    torch::Tensor host = torch::empty(out.sizes(), torch::TensorOptions().dtype(torch::kFloat32).pinned_memory(true));
    host.copy_(out, /*non_blocking=*/true);
    c10::Event done(c10::DeviceType::CUDA);
    done.record(cuda_->stream.unwrap());
    done.synchronize();
    return host;
  }
#endif
  torch::Tensor out = in_lanes ? ForwardInLanes(encoder, input)
                               : InParts(encoder, input, [&](const torch::Tensor& x) { return Forward(encoder, x); });
  if (out.scalar_type() != torch::kFloat32) out = out.to(torch::kFloat32);
  return out.contiguous();
}

bool Model::RunsImageBatch(int64_t images) const { return image_batch_from_ > 0 && images >= image_batch_from_; }

ImageLaneStats GetImageLaneStats() {
  return {g_lane_batches.load(std::memory_order_relaxed),
          g_lane_batches_on_two_threads.load(std::memory_order_relaxed)};
}

// An odd batch's first lane takes one image more, its forward (n + 1) / n
// as long: below twice the lanes' smallest batch it runs as one forward
// (float32, 3 and 5 images as lanes of 2 and 1, 3 and 2: 1.27x and 1.10x
// one forward's time; 9 images as 5 and 4 in bfloat16 and int8: level,
// 0.97-1.00x).
bool Model::RunsInLanes(int64_t images) const {
  const int64_t from = cpu_kernels_.image_lanes_from;
  return !is_cuda() && from > 0 && images >= from && (images % 2 == 0 || images >= 2 * from);
}

int64_t Model::ImageForwards(int64_t images) const {
  const int64_t most = (RunsImageBatch(images) ? image_batch_encoder_ : image_encoder_).max_images;
  auto forwards = [most](int64_t n) { return most > 0 ? std::max<int64_t>(1, (n + most - 1) / most) : 1; };
  return RunsInLanes(images) ? forwards((images + 1) / 2) + forwards(images / 2) : forwards(images);
}

torch::Tensor Model::EncodeImages(const torch::Tensor& pixels) {
  const int64_t images = pixels.size(0);
  return Run(RunsImageBatch(images) ? image_batch_encoder_ : image_encoder_, pixels, RunsInLanes(images));
}

torch::Tensor Model::EncodeTexts(const torch::Tensor& ids) { return Run(text_encoder_, ids, /*in_lanes=*/false); }

}  // namespace clip

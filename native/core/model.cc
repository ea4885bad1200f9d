#include "model.h"

#include <ATen/Parallel.h>
#include <ATen/autocast_mode.h>
#include <torch/version.h>

#include <mutex>
#include <thread>

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

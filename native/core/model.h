// One exported CLIP model: both TorchScript encoders, loaded once and run
// under InferenceMode on CPU or CUDA.
#ifndef CLIP_NATIVE_CORE_MODEL_H_
#define CLIP_NATIVE_CORE_MODEL_H_

#include <torch/script.h>

#include <memory>
#include <mutex>
#include <string>

#include "manifest.h"
#include "tokenizer.h"

namespace clip {

enum class Precision { kFloat32, kFloat16, kBFloat16 };

struct ModelOptions {
  // "auto" (CUDA when this build and the machine have it, else CPU), "cpu",
  // "cuda" or "cuda:N".
  std::string device = "auto";
  // kBFloat16 on CPU runs under autocast; on CUDA kFloat16/kBFloat16 convert
  // the weights once at load.
  Precision precision = Precision::kFloat32;
  // Intra-op threads for the whole process; 0 keeps libtorch's default.
  // Applied once, by the first model loaded in the process.
  int threads = 0;
};

// True when this build of the core was compiled against a CUDA libtorch.
bool BuiltWithCuda();
const char* PrecisionName(Precision precision);

class Model {
 public:
  // Reads the manifest, the tokenizer files and both archives, moves them to
  // the device and checks each encoder with one small forward. Throws
  // ClipError: kModelLoadFailed naming the file, kDeviceUnavailable,
  // kInvalidArgument for a bad option.
  static std::shared_ptr<Model> Load(const std::string& directory,
                                     const ModelOptions& options);

  // Not thread-safe: the engine runs all forwards on its single inference
  // thread. `pixels` is float32 [N,3,S,S] on the CPU, `ids` int64 [N,L]. The
  // result is float32 [N,embedDim], contiguous, on the CPU.
  torch::Tensor EncodeImages(const torch::Tensor& pixels);
  torch::Tensor EncodeTexts(const torch::Tensor& ids);

  // A CPU buffer for the next batch's inputs, reused between batches; pinned
  // when the model runs on CUDA so the host-to-device copy is asynchronous.
  torch::Tensor ImageStaging(int64_t batch);
  torch::Tensor TextStaging(int64_t batch, int64_t length);

  const Manifest& manifest() const { return manifest_; }
  const Tokenizer& tokenizer() const { return *tokenizer_; }
  const torch::Device& device() const { return device_; }
  Precision precision() const { return precision_; }
  bool is_cuda() const { return device_.is_cuda(); }

  // Applies the thread-local state (InferenceMode is scoped by the caller;
  // autocast here) that every forward on the calling thread needs.
  void PrepareInferenceThread() const;

 private:
  Model() = default;
  torch::Tensor Run(torch::jit::script::Module& module, const torch::Tensor& input);

  Manifest manifest_;
  std::unique_ptr<Tokenizer> tokenizer_;
  torch::jit::script::Module image_encoder_;
  torch::jit::script::Module text_encoder_;
  torch::Device device_{torch::kCPU};
  Precision precision_ = Precision::kFloat32;
  torch::Tensor image_staging_;
  torch::Tensor text_staging_;
  struct CudaState;
  std::shared_ptr<CudaState> cuda_;
};

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_MODEL_H_

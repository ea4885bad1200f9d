// One exported CLIP model: both TorchScript encoders, loaded once and run
// under InferenceMode on CPU or CUDA.
#ifndef CLIP_NATIVE_CORE_MODEL_H_
#define CLIP_NATIVE_CORE_MODEL_H_

#include <torch/script.h>

#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <utility>
#include <vector>

#include "manifest.h"
#include "tokenizer.h"

namespace clip {

enum class Precision { kFloat32, kFloat16, kBFloat16, kInt8 };

struct ModelOptions {
  // "auto" (CUDA when this build and the machine have it, else CPU), "cpu",
  // "cuda" or "cuda:N".
  std::string device = "auto";
  // On the CPU: kFloat32, kBFloat16 (bfloat16 weights packed once at load) or
  // kInt8 (int8 weights, activations quantized per call); on CUDA kFloat16 /
  // kBFloat16 convert the weights once at load.
  Precision precision = Precision::kFloat32;
  // How the CPU encoders run (CpuKernelCandidates lists the names per
  // precision): "auto" measures each candidate at load and keeps the fastest
  // per encoder; "fixed" takes the first candidate without measuring (the
  // same choice in every process); a name forces that candidate for both
  // encoders; "NAME,BATCH@N" forces NAME, and BATCH for batches of at least
  // N images. An empty string reads CLIP_NATIVE_CPU_KERNELS, else "auto".
  // Ignored on CUDA.
  std::string cpu_kernels;
  // A file where calibrating loads keep their measurements for later
  // processes on this machine (CalibrationStore); an empty string reads
  // CLIP_NATIVE_CALIBRATION_CACHE, else none.
  std::string calibration_cache;
  // Intra-op threads for the whole process; 0 keeps libtorch's default.
  // Applied once, by the first model loaded in the process.
  int threads = 0;
};

// True when this build of the core was compiled against a CUDA libtorch.
bool BuiltWithCuda();
const char* PrecisionName(Precision precision);

// The ways this libtorch can run the CPU encoders at `precision`, best first
// where nothing was measured:
//   float32:  "onednn" (oneDNN inner products on weights packed at load,
//             QuickGELU fused), "avx512" (every linear on clip-native's
//             AVX-512 kernel, cpu_linear.h, on its own packed weights; the
//             rest of the graph as "onednn"; it needs no oneDNN, so
//             libtorch 1.13 has it too, after "aten"), "aten" (libtorch's
//             linear: MKL or OpenBLAS)
//   bfloat16: "onednn" (bfloat16 weights, float32 activations between the
//             linears), "onednn-bf16" (bfloat16 activations throughout),
//             "amx-bf16" (the same on clip-native's linear on AMX tiles,
//             where the CPU and the system offer them), "avx512-bf16"
//             (the same on clip-native's AVX512-BF16 linear),
//             "autocast" (libtorch < 2.0); on CPUs without bfloat16
//             products first "avx512-bf16w" / "avx2-bf16w" (clip-native's
//             float32 linear on weights rounded to bfloat16), then "avx512"
//             / "avx2" (float32 weights)
//   int8:     "fbgemm", "onednn" (quantized engines; per-channel int8
//             weights, activations quantized per call and per tensor),
//             "avx512-vnni" (clip-native's int8 linear: per-feature int8
//             weights, activations quantized per call and per row; first
//             on CPUs with AVX512-VNNI; on AMX-INT8 tiles where the CPU
//             has them, from 32 rows on)
std::vector<std::string> CpuKernelCandidates(Precision precision);

// Which candidate each CPU encoder runs and why.
struct CpuKernelChoice {
  std::string image;
  std::string text;
  // "calibration" (measured at load), "fixed", "option" or "environment"
  // (forced) or "only candidate".
  std::string selected_by;
  std::vector<std::string> candidates;
  // Per-item milliseconds of each candidate measured at load, when measured.
  std::vector<std::pair<std::string, double>> image_ms;
  std::vector<std::pair<std::string, double>> text_ms;
  // The candidate that batches of at least image_batch_from images run
  // instead of `image` ("" and 0: every batch runs `image`): faster there by a
  // margin at calibration, or forced ("NAME,BATCH@N"); and each candidate's
  // milliseconds per image on the batch that calibration timed.
  std::string image_batch;
  int64_t image_batch_from = 0;
  std::vector<std::pair<std::string, double>> image_batch_ms;
  // Where each encoder's calibration came from: "measured" (by this load),
  // "process" (an earlier load of the same files in this process), "file"
  // (calibration_cache, from an earlier process); "" when not calibrated.
  std::string image_measured_by;
  std::string text_measured_by;
  // The calibration file of a calibrating load, else "".
  std::string calibration_cache;
  // How many attention products (aten::matmul of two activations) of each
  // chosen encoder run on clip-native's kernel (cpu_attention.h).
  int image_attention_matmuls = 0;
  int text_attention_matmuls = 0;
  // How many attention layers of each encoder run their scores, softmax and
  // weighted sum as one operator (clip_native::attention; 2 of the products
  // above each).
  int image_fused_attentions = 0;
  int text_fused_attentions = 0;
  // How many MLPs (a linear, QuickGELU, a linear) of each encoder run as one
  // operator of clip-native's linear (clip_native::mlp_rows: cpu_linear.h).
  int image_fused_mlps = 0;
  int text_fused_mlps = 0;
  // How many LayerNorms of each encoder run on clip-native's kernel
  // (cpu_norm.h), and how many of them together with the residual add whose
  // sum they read (clip_native::add_layer_norm; the rest clip_native::layer_norm).
  int image_layer_norms = 0;
  int text_layer_norms = 0;
  int image_fused_norms = 0;
  int text_fused_norms = 0;
  // Images per forward of the image encoder at most, larger batches split
  // into forwards of that many (0: any): 8 for bfloat16 on oneDNN's inner
  // products (ImagesPerForward in model.cc). `image`'s, and image_batch's
  // for the batches it runs.
  int64_t max_images_per_forward = 0;
  int64_t image_batch_max_images_per_forward = 0;
  // Whether the oneDNN and int8 candidates' graphs take that kernel, and how
  // that was decided: "measurement" (a calibrating load; the two microsecond
  // figures are set), "rule" (a fixed or named candidate), "environment"
  // (CLIP_NATIVE_ATTENTION_KERNEL) or "not applicable" (neither AVX-512F nor
  // AVX2 + FMA; for bfloat16, no AVX-512F).
  bool attention_kernel = false;
  std::string attention_selected_by;
  double attention_kernel_us = -1;
  double attention_aten_us = -1;
  // Whether the text encoder runs its archive's forward_packed (the linears
  // on each text's tokens alone, not on the batch's padding): archives the
  // exporter writes have it; CLIP_NATIVE_PACKED_TEXTS=0 turns it off.
  bool packed_texts = false;
  // How many of the text encoder's fused attention layers then run each
  // text's rows in place (clip_native::packed_attention).
  int text_packed_attentions = 0;
  // The smallest image batch that runs as two forwards at once, one on each
  // thread of a 2-thread process (model.cc, ForwardInLanes; 0: none), and
  // how that was decided: "rule" (on CPUs with AMX float32 from 4 images,
  // else 8; odd batches from twice that; elsewhere none), "environment"
  // (CLIP_NATIVE_IMAGE_LANES: 0 none, 1 as the rule or from 8 images, N from
  // N images) or "not applicable" (the process runs other than 2 threads).
  int64_t image_lanes_from = 0;
  std::string image_lanes_selected_by;
};

// Counts over the process's image batches run in lanes (CpuKernelChoice::
// image_lanes_from), for diagnostics: all of them, and those whose two lanes ran
// on two threads (the rest ran in turn on one: a team of one thread).
struct ImageLaneStats {
  uint64_t batches = 0;
  uint64_t on_two_threads = 0;
};
ImageLaneStats GetImageLaneStats();

class Model {
 public:
  // Reads the manifest, the tokenizer files and both archives, moves them to
  // the device and checks each encoder with one small forward. Throws
  // ClipError: kModelLoadFailed naming the file, kDeviceUnavailable,
  // kInvalidArgument for a bad option. Runs on a thread of its own that
  // ends before it returns (see model.cc), whatever thread calls it.
  static std::shared_ptr<Model> Load(const std::string& directory, const ModelOptions& options);

  // Not thread-safe: the engine runs all forwards on its single inference
  // thread. `pixels` is float32 [N,3,S,S] on the CPU, `ids` int64 [N,L]. The
  // result is float32 [N,embedDim], contiguous, on the CPU.
  torch::Tensor EncodeImages(const torch::Tensor& pixels);
  // How many forwards EncodeImages runs for a batch of `images` (more than one
  // where the encoder takes fewer images per forward, Encoder::max_images, and
  // where the batch runs in lanes: CpuKernelChoice::image_lanes_from).
  int64_t ImageForwards(int64_t images) const;
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
  // Empty on CUDA.
  const CpuKernelChoice& cpu_kernels() const { return cpu_kernels_; }
  // libtorch's id of the CUDA stream the forwards run on (0 is the device's
  // default stream, which would synchronize with all other work); -1 on the CPU.
  int64_t cuda_stream_id() const;

  // Applies the thread-local state (InferenceMode is scoped by the caller)
  // that every forward on the calling thread needs.
  void PrepareInferenceThread() const;

  // One encoder as it runs: the module, and what its input needs.
  struct Encoder {
    torch::jit::script::Module module;
    std::string kernel;
    // Floating-point inputs are cast to this before the forward.
    torch::ScalarType float_input = torch::kFloat32;
    bool autocast = false;      // CPU autocast to bfloat16 around the forward
    int attention_matmuls = 0;  // rewritten to clip_native::attention_matmul
    int fused_attentions = 0;   // of those, pairs fused into clip_native::attention
    int packed_attentions = 0;  // of those, clip_native::packed_attention
    int fused_mlps = 0;         // pairs of linears run as clip_native::mlp_rows
    int layer_norms = 0;        // LayerNorms on clip_native::add_layer_norm or layer_norm
    int fused_norms = 0;        // of those, with their residual add
    // Images per forward at most (0: any); a larger batch runs in forwards of
    // that many (Model::Run).
    int64_t max_images = 0;
  };

 private:
  Model() = default;
  // Whether a batch of `images` runs on image_batch_encoder_.
  bool RunsImageBatch(int64_t images) const;
  static std::shared_ptr<Model> LoadOnThisThread(const std::string& directory, const ModelOptions& options);
  // Whether a batch of `images` runs as two forwards at once (CpuKernelChoice::image_lanes_from).
  bool RunsInLanes(int64_t images) const;
  // `input` through `encoder`, in forwards of at most encoder.max_images
  // images; `in_lanes`: as two forwards at once, one per thread (CPU).
  torch::Tensor Run(Encoder& encoder, const torch::Tensor& input, bool in_lanes);
  // Takes the image archive, and reads the text archive through
  // `load_text_archive` only once the image encoder is chosen and the image
  // archive dropped: the two archives are never in memory beside the image
  // encoder's candidates (a lower peak of memory at load).
  void ChooseCpuKernels(torch::jit::script::Module image_archive,
                        const std::function<torch::jit::script::Module()>& load_text_archive,
                        const ModelOptions& options);

  // First member, so destroyed last: once the weights and buffers below are
  // freed, the CPU allocator's blocks kept for reuse (cpu_allocator.h) and
  // malloc's free pages go back to the system.
  struct ReleaseCpuCacheOnDestruction {
    ~ReleaseCpuCacheOnDestruction();
  } release_cpu_cache_;
  Manifest manifest_;
  std::unique_ptr<Tokenizer> tokenizer_;
  Encoder image_encoder_;
  Encoder image_batch_encoder_;  // for batches of at least image_batch_from_ images (0: none)
  int64_t image_batch_from_ = 0;
  Encoder text_encoder_;
  CpuKernelChoice cpu_kernels_;
  torch::Device device_{torch::kCPU};
  Precision precision_ = Precision::kFloat32;
  torch::Tensor image_staging_;
  torch::Tensor text_staging_;
  struct CudaState;
  std::shared_ptr<CudaState> cuda_;
};

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_MODEL_H_

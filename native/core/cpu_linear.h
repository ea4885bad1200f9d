// clip-native's own linear on AVX-512 (float32), AVX512-BF16 and AVX2 + FMA
// (float32), on weights packed at load into panels of 32 output features
// (16 on AVX2). It was made for few rows (the text encoder at batch 1-4
// runs 7-64 rows against every weight matrix, where oneDNN's blocked
// kernels leave much of the CPU unused) and blocks larger inputs so that it
// keeps level with oneDNN on them (an image is 50 rows; eight are 400). The
// "avx512", "avx2", "avx512-bf16w", "avx2-bf16w", "avx512-bf16" and (int8,
// AVX512-VNNI) "avx512-vnni" candidates of the model (model.h) run every
// linear on it.
#ifndef CLIP_NATIVE_CORE_CPU_LINEAR_H_
#define CLIP_NATIVE_CORE_CPU_LINEAR_H_

#include <ATen/ATen.h>

namespace clip {

// True when the kernel can run here (x86-64 with AVX-512F, as the OS reports it).
bool PanelLinearAvailable();

// The float32 kernel on AVX2 + FMA, for CPUs without AVX-512 (AMD Zen 2
// and 3, Intel's E-core Xeons): panels of 16 features, tiles of up to 6
// rows (7 where that saves a tile). The model's "avx2" and "avx2-bf16w"
// candidates run every linear on it.
bool PanelLinearAvx2Available();

// Weights [N, K] -> panels of `width` output features, [ceil(N / width), K,
// width] of `dtype`, zero past N: one contiguous stream per panel. Width
// 32 runs on the AVX-512 tiles, 16 on the AVX2 ones (PanelLinear and
// PanelMlp take the kernel from the packed weights' width). bfloat16
// weights (rounded from the float32 ones) stream half the bytes and are
// widened to float32 as they are loaded: inputs, products and sums stay
// float32, for CPUs without bfloat16 products; per step over k each
// panel holds feature j beside feature j + width / 2. dtype int8 (width
// 32) packs for PanelLinearInt8 instead: one byte tensor of the panels'
// int8 weights, four inputs of a feature per 32-bit lane, then each
// feature's float32 scale and int32 sum of its int8 weights.
at::Tensor PackPanelWeight(const at::Tensor& weight, int64_t width = 32, at::ScalarType dtype = at::kFloat);

// The int8 variant (AVX512-VNNI): weights packed with dtype int8 (per
// output feature scaled to int8, one byte tensor with their scales and
// sums; width 32), inputs quantized per call and per row to uint8, int32
// sums scaled back to float32; x and the result are float32. The model's
// "avx512-vnni" int8 candidate runs every linear on it. Where the CPU and
// the system offer AMX-INT8 tiles (PanelLinearInt8AmxAvailable) and the
// inputs are a multiple of 64 (AmxInt8Inputs), the same sums run on the
// tiles (`amx` false keeps them on the VNNI tiles): the same bits.
bool PanelLinearInt8Available();
bool PanelLinearInt8AmxAvailable();
bool AmxInt8Inputs(int64_t in_features);  // a positive multiple of 64
// Whether PanelLinearInt8 (amx true) runs `rows` rows of `in_features` on the tiles.
bool PanelLinearInt8UsesAmx(int64_t rows, int64_t in_features);
at::Tensor PanelLinearInt8(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                           int64_t out_features, bool swish = false, bool amx = true);

// The bfloat16 variant: AVX512-BF16 products of bfloat16 pairs, float32
// accumulation. Weights [N, K] (K even) -> [ceil(N/32), K/2, 32, 2] bfloat16;
// x and the result are bfloat16, the bias any floating type.
bool PanelLinearBf16Available();
at::Tensor PackPanelWeightBf16(const at::Tensor& weight);
at::Tensor PanelLinearBf16(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                           int64_t out_features, bool swish = false);

// The bfloat16 variant on AMX tiles (Intel Xeons from Sapphire Rapids on;
// Linux grants the tiles' state on request, which PanelLinearAmxAvailable
// makes once per process). Weights with a multiple of 32 inputs, packed as
// PackPanelWeightBf16 packs them and viewed as [ceil(N/32), K/32, 16, 32, 2]
// (tiles of 16 pairs of inputs by 16 features): PanelLinearBf16 and PanelMlp
// run such weights on the tiles, x's rows as they lie, the sums rounded as
// the AVX512-BF16 kernel rounds them.
bool PanelLinearAmxAvailable();
bool AmxPanelInputs(int64_t in_features);  // a positive multiple of 32
at::Tensor PackPanelWeightAmx(const at::Tensor& weight);

// y[M, N] = x[M, K] w^T + b, x of any leading shape (flattened to rows);
// with `swish`, y * sigmoid(y), computed on the float32 sums before they
// are stored (and, in bfloat16, rounded).
at::Tensor PanelLinear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                       int64_t out_features, bool swish = false);

// PanelLinear(PanelLinear(x, packed1, bias1, hidden, swish), packed2, bias2,
// out_features) (or the bfloat16 kernels', by the weights' dtype), the same
// bits; the first linear writes its results in the layout the second reads
// (cpu_linear.cc: RunChained), so they are not copied again.
at::Tensor PanelMlp(const at::Tensor& x, const at::Tensor& packed1, const c10::optional<at::Tensor>& bias1,
                    int64_t hidden, const at::Tensor& packed2, const c10::optional<at::Tensor>& bias2,
                    int64_t out_features);

// The rewritten graphs call them through the TorchScript operators
// clip_native::linear_rows(x, packed, bias, out_features, attr) and
// clip_native::mlp_rows(x, packed1, bias1, hidden, packed2, bias2,
// out_features), registered by cpu_linear.cc: the packed weights' dtype picks
// the kernel, and attr "swish" stores y * sigmoid(y) in place of y.

// Rows at or below which each thread of a linear copies the input's row
// tiles for itself, inside the one parallel region (a second region for a
// shared copy costs more than the copy at these sizes). Larger inputs are
// copied once, by all threads, and run in groups of tiles that stay in a
// core's L2 cache (cpu_linear.cc). On AMD Zen 4 (bench/optimizations.md) the
// kernel leads oneDNN's by 20-50% in float32 on 7-28 rows (a caption up to a
// few captions at once) and by 5-9% on 50-85, and is level with it from 100
// to 800 rows.
constexpr int64_t kPerThreadCopyRows = 64;

// Bytes of k-major rows per group when an input above kPerThreadCopyRows
// runs in groups of tiles (cpu_linear.cc: RunInGroups): a quarter of a
// core's L2 cache, within 128 KB to 512 KB, so that the group, the panel
// running against it and the next panel's prefetch all stay in L2; 256 KB
// where the system does not say (RowGroupBytesFor(0)). Zen 4 and Zen 5 (1 MB):
// 256 KB. An Intel Xeon with 2 MB ran 8 images' float32 image encoder 3.3%
// faster on 512 KB than on 256 KB (the linears with 3072 inputs 4-10%), and
// 1.8% slower again on 1 MB (bench/optimizations.md).
int64_t RowGroupBytesFor(int64_t l2_bytes);
int64_t RowGroupBytes();  // RowGroupBytesFor(this machine's L2 per core)

// The kernels fetch the next panel's weights into cache while the row
// tiles run against the current one: with few rows (an image's 50: 4 tiles
// per panel) the first tile of each panel otherwise streamed the panel from
// memory alone and ran ~7% below the tiles after it. A panel holds
// `step_bytes` per step over k (kPanelStepBytes: 32 float32 weights, or 32
// pairs of bfloat16; 64 for the AVX2 kernel's 16 float32 weights). Of a
// panel's `tiles` row tiles, the first 2^s (2^s the largest power of two <=
// the tile count, at most step_bytes) each prefetch one slice of the next
// panel: tile `tile` prefetches the line holding byte offset + k * step of
// it at its step k of `k_steps`, and the slices together reach every line
// of the next panel's k_steps * step_bytes bytes and nothing past them.
// offset -1: the tile prefetches only inside its own panel (the others,
// and a tile alone, which is bound by memory and measured slower with the
// whole next panel fetched beside it).
constexpr int64_t kPanelStepBytes = 128;
struct PanelPrefetch {
  int64_t offset;
  int64_t step;
};
PanelPrefetch NextPanelPrefetch(size_t tiles, size_t tile, int64_t k_steps, int64_t step_bytes = kPanelStepBytes);

// How many threads an at::parallel_for of clip-native's own kernels runs on
// (at most at::get_num_threads()). at::parallel_for is a header template, so
// this is a property of how the core was compiled: 1 where a libtorch on
// OpenMP meets code compiled without it. Runs on a thread of its own, which
// ends before it returns, so the caller's thread gets no OpenMP pool.
int ParallelForThreads();

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_CPU_LINEAR_H_

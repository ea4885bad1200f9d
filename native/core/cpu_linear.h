// A float32 linear for few rows on AVX-512: the text encoder at batch 1-4
// runs 7-64 rows against every weight matrix, where oneDNN's blocked kernels
// leave much of the CPU unused. Larger inputs go to oneDNN, which is faster
// there.
#ifndef CLIP_NATIVE_CORE_CPU_LINEAR_H_
#define CLIP_NATIVE_CORE_CPU_LINEAR_H_

#include <ATen/ATen.h>

namespace clip {

// True when the kernel can run here (x86-64 with AVX-512F, as the OS reports it).
bool SmallRowLinearAvailable();

// Weights [N, K] float32 -> panels of 32 output features, [ceil(N/32), K, 32],
// zero past N: one contiguous stream per panel.
at::Tensor PackSmallRowWeight(const at::Tensor& weight);

// The bfloat16 variant: AVX512-BF16 products of bfloat16 pairs, float32
// accumulation. Weights [N, K] (K even) -> [ceil(N/32), K/2, 32, 2] bfloat16;
// x and the result are bfloat16, the bias any floating type.
bool SmallRowLinearBf16Available();
at::Tensor PackSmallRowWeightBf16(const at::Tensor& weight);
at::Tensor SmallRowLinearBf16(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                              int64_t out_features);

// y[M, N] = x[M, K] w^T + b, x of any leading shape (flattened to rows).
at::Tensor SmallRowLinear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                          int64_t out_features);

// Rows at or below which the TorchScript operator clip_native::linear_rows
// takes SmallRowLinear; above it, oneDNN. On AMD Zen 4 (bench/optimizations.md)
// the kernel leads oneDNN's by 20-50% in float32 on 7-28 rows (a caption up
// to a few captions at once) and by 5-8% on 50-85; from about 200 rows
// oneDNN's blocking is ahead. 64 keeps to the sizes the load's calibration
// times (texts of 10 and 20 tokens, four of 16: 64 rows packed), which
// decides whether a text encoder uses the operator at all (the "+avx512"
// candidates).
constexpr int64_t kSmallRowLimit = 64;

// How many threads an at::parallel_for of clip-native's own kernels runs on
// (at most at::get_num_threads()). at::parallel_for is a header template, so
// this is a property of how the core was compiled: 1 where a libtorch on
// OpenMP meets code compiled without it. Runs on a thread of its own, which
// ends before it returns, so the caller's thread gets no OpenMP pool.
int ParallelForThreads();

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_CPU_LINEAR_H_

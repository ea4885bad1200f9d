// A float32 linear for few rows on AVX-512: the text encoder at batch 1-2
// runs 14-40 rows against every weight matrix, where streaming the weights
// from memory bounds the time and oneDNN's blocked kernels leave bandwidth
// unused. Larger inputs go to oneDNN, which is faster there.
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
// takes SmallRowLinear; above it, oneDNN. That is one tile: on AMD Zen 4
// (bench/optimizations.md) the kernel leads oneDNN's by 25-60% on 7-14 rows
// (a caption at batch 1), but a second pass over the weights for the rows
// past a tile costs more than oneDNN's blocking. Whether a model uses the
// operator at all is decided by measurement at load (the "onednn+avx512"
// candidate).
constexpr int64_t kSmallRowLimit = 14;

// How many threads an at::parallel_for of clip-native's own kernels runs on
// (at most at::get_num_threads()). at::parallel_for is a header template, so
// this is a property of how the core was compiled: 1 where a libtorch on
// OpenMP meets code compiled without it. Runs on a thread of its own, which
// ends before it returns, so the caller's thread gets no OpenMP pool.
int ParallelForThreads();

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_CPU_LINEAR_H_

// A residual add and the LayerNorm that reads its result, as one operator
// (and a LayerNorm alone on the same kernel).
// Every transformer block of CLIP computes x + attention(...) and then
// layer_norm2 of it, and x + mlp(...) and then the next block's layer_norm1:
// as aten operators that is two dispatches, two fresh tensors and, for
// aten::layer_norm, a parallel region even for a caption's 7-20 rows, where
// starting the second thread costs more than the rows (a caption's forward
// spends about a tenth of its time between the linears). One pass per row
// here, on the calling thread for few rows.
#ifndef CLIP_NATIVE_CORE_CPU_NORM_H_
#define CLIP_NATIVE_CORE_CPU_NORM_H_

#include <ATen/ATen.h>

#include <tuple>

namespace clip {

// True when the kernel can run here on tensors of `dtype`: float32 on
// x86-64 with AVX-512F or AVX2 + FMA, bfloat16 with AVX-512F.
bool AddLayerNormAvailable(at::ScalarType dtype = at::kFloat);

// (a + b, layer_norm(a + b, [W], weight, bias, eps)), W the last size of a
// and b: what aten::add and aten::layer_norm return, the sum rounded to the
// operands' type before it is normalized as aten's stored sum is, the norm
// within the rounding of summing a row in another order. Takes the kernel
// (AddLayerNormKernelApplies) for contiguous CPU tensors of one type
// (float32, or bfloat16 on AVX-512F), one of them of the other's sizes or
// of its trailing sizes (a position embedding added to every image; leading
// 1s aside), W a multiple of 16 (8 on AVX2) and weight and bias of W values
// (any floating type); anything else runs as those two operators.
// Rows are split over the threads only where there are enough of them to pay
// for the parallel region (kAddLayerNormParallelValues). Also the TorchScript
// operator clip_native::add_layer_norm, which Model::Load puts in place of
// an aten::add whose result a LayerNorm reads.
bool AddLayerNormKernelApplies(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                               const at::Tensor& bias);
std::tuple<at::Tensor, at::Tensor> AddLayerNorm(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                                                const at::Tensor& bias, double eps);

// layer_norm(x, [W], weight, bias, eps) on the same kernel, without the
// add: for the LayerNorms that no residual add feeds (the one after an
// image's pre-LayerNorm, those after rows are gathered). Takes the kernel
// where AddLayerNorm would for a = b = x, else runs aten::layer_norm. Also
// the TorchScript operator clip_native::layer_norm, which Model::Load puts
// in place of such an aten::layer_norm.
bool LayerNormKernelApplies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias);
at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps);

// Values (rows x W) from which the rows are split over the threads: below,
// one thread normalizes them faster than a parallel region starts.
constexpr int64_t kAddLayerNormParallelValues = 64 * 1024;

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_CPU_NORM_H_

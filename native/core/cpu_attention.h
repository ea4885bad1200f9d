// Attention at CLIP's sizes (50 tokens of an image, up to 77 of a text, 64
// features per head): the two matrix products, scores = q k^T and out =
// weights v, batched over images and heads, and the two with the softmax
// between them as one operator. libtorch runs the products as MKL sgemm
// calls, which on AMD CPUs take MKL's generic path, and bfloat16 ones as
// oneDNN matmuls; for these small products AVX-512 register tiles (k packed
// transposed per image and head, 6 rows by 64 columns of FMAs) were 2-4x
// faster than either on an AMD EPYC (Zen 5; bench/optimizations.md); CPUs
// without AVX-512 take the same tiles on AVX2 + FMA (float32). On an Intel
// Xeon with AMX, where MKL takes its tuned path, the kernel still ran 1.8x
// MKL's sgemm (float32) and 3.2x oneDNN's AMX matmul (bfloat16). On CPUs
// with AMX-BF16 the fused bfloat16 attention of up to 64 tokens runs both
// products on AMX tiles instead (16 x 16 tiles of float32 sums; the same
// roundings): on that Xeon (family 6 model 167) a forward of 8 images 7%
// faster, captions level.
// Whether a model uses the kernel is measured per machine, or follows a rule
// (model.cc).
#ifndef CLIP_NATIVE_CORE_CPU_ATTENTION_H_
#define CLIP_NATIVE_CORE_CPU_ATTENTION_H_

#include <ATen/ATen.h>

namespace clip {

// True when the kernel can run here on operands of `dtype`: float32 on
// x86-64 with AVX-512F or AVX2 + FMA, bfloat16 with AVX-512F.
bool AttentionMatmulAvailable(at::ScalarType dtype = at::kFloat);

// The choice without measuring, the same in every process on a machine and
// libtorch: the kernel wherever it can run.
bool AttentionMatmulByRule(at::ScalarType dtype = at::kFloat);

// Microseconds of one attention layer (scaled scores, softmax, weighted sum)
// on the kernel (Attention) and on aten's operators, summed over the shapes
// of a ViT-B/32 image (50 tokens) and a short caption (8 tokens), 12 heads
// of 64, in `dtype` (float or bfloat16): best of 5 after warm-ups, on the
// calling thread.
struct AttentionMatmulTimings {
  double kernel_us = 0;
  double aten_us = 0;
};
AttentionMatmulTimings MeasureAttentionMatmul(at::ScalarType dtype);

// (a @ b) * scale, with -inf above the diagonal when causal_length >= 0 (the
// graph's masked_fill(scores, triu(ones(L, L), 1), -inf) for L =
// causal_length), equal to at::matmul, at::mul and at::masked_fill within
// the rounding of the operands' type. Takes the kernel for float32 or
// bfloat16 CPU tensors (sums in float) of 4 dimensions with the same two
// leading sizes, a's rows contiguous, and either b = k^T of a k whose rows
// are contiguous (the scores; a mask only when L equals both sizes of the
// scores) or, unscaled and unmasked, b's rows contiguous (the weighted sum,
// returned as a view of [batch, rows, heads, width] memory), the summed and
// the contiguous widths multiples of 16 and at most kMaxAttentionRows rows;
// anything else goes to those aten operators. Also the TorchScript operator
// clip_native::attention_matmul, which Model::Load puts in place of the
// attention's aten::matmul nodes (and the scaling and causal mask that follow
// the scores).
constexpr int64_t kMaxAttentionRows = 256;
at::Tensor AttentionMatmul(const at::Tensor& a, const at::Tensor& b, double scale = 1.0, int64_t causal_length = -1);

// softmax(AttentionMatmul(q, k_t, scale, causal_length), -1) @ v in one
// pass per image and head (scores, softmax and weighted sum without the
// scores and weights of every head in memory), returned as AttentionMatmul
// returns the weighted sum; within the rounding of the operands' type of the
// three operators, for the operands the two products take (v's width at most
// 64; the weights are rounded to the operands' type, as aten::softmax rounds
// them). Anything else runs as those three. Also the TorchScript operator clip_native::attention,
// which Model::Load puts in place of a scores product, its softmax and its
// weighted sum.
at::Tensor Attention(const at::Tensor& q, const at::Tensor& k_t, const at::Tensor& v, double scale = 1.0,
                     int64_t causal_length = -1);

// The attention of a packed text batch (a text encoder's forward_packed):
// qkv [T, 3 W], the input projection's output on the T kept rows of `batch`
// texts; pad_map [batch * length], the row of each slot of the texts padded
// to `length` (a padding slot: its text's last kept row); pack_map [T], the
// slot of each kept row. Returns [T, W]: for each text and each of `heads`
// heads, softmax(q k^T * scale [causal]) v over the text's own rows, what
// index_select(qkv, 0, pad_map) viewed as [batch, length, 3, heads, W /
// heads], Attention per text and head, and index_select of the result's
// [batch * length, W] rows by pack_map compute, and how it computes it
// where the kernel cannot (not causal, maps of another form, other types
// or sizes). The kernel runs each text's rows in place, without the
// padding: no copies of qkv, no products over padding slots. Also the
// TorchScript operator clip_native::packed_attention, which Model::Load puts
// in place of those operators.
at::Tensor PackedAttention(const at::Tensor& qkv, const at::Tensor& pad_map, const at::Tensor& pack_map, int64_t batch,
                           int64_t length, int64_t heads, double scale, bool causal);

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_CPU_ATTENTION_H_

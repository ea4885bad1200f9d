// Standalone test for clip::AttentionMatmul, clip::Attention and
// clip::PackedAttention (cpu_attention.h) against the aten operators they stand for: matmul, then
// mul by the scale, then masked_fill(triu(ones(L, L), 1), -inf) (and for
// Attention softmax and the weighted sum's matmul after them). Covers the kernel's shapes (image
// and caption attention, views into a QKV projection's output), the shapes
// it hands to aten (odd widths, more rows than it takes, a mask that does not
// cover the scores), and the layout of the weighted sum. On a CPU without
// AVX-512F (or run with CLIP_NATIVE_MAX_CPU_ISA=avx2) the float32 cases run
// the AVX2 tiles and the bfloat16 ones the aten path; without AVX2 + FMA
// every case runs the aten path, and all must agree all the same.
// Prints one line per failure, then "N passed, M failed"; exits non-zero on
// any failure.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <iostream>
#include <limits>
#include <string>
#include <vector>

#include "../test_check.h"
#include "cpu_attention.h"
#include "one_thread.h"

namespace {

using clip::test::Check;

at::Tensor Reference(const at::Tensor& a, const at::Tensor& b, double scale, int64_t causal_length) {
  at::Tensor out = at::matmul(a, b);
  if (scale != 1.0) out = at::mul(out, scale);
  if (causal_length >= 0) {
    const at::Tensor future = at::ones({causal_length, causal_length}, out.options().dtype(at::kBool)).triu(1);
    out = at::masked_fill(out, future, -std::numeric_limits<double>::infinity());
  }
  return out;
}

// Same shape and type, -inf exactly where the reference has it, the rest
// within float32 rounding of sums of `depth` products (bfloat16: within two
// units in the last place, as the two sum in different orders before
// rounding).
void CheckClose(const at::Tensor& got_in, const at::Tensor& want_in, const std::string& what) {
  if (got_in.sizes() != want_in.sizes() || got_in.scalar_type() != want_in.scalar_type()) {
    Check(false, what + ": sizes or types differ");
    return;
  }
  const bool bfloat16 = got_in.scalar_type() == at::kBFloat16;
  const at::Tensor got = got_in.to(at::kFloat), want = want_in.to(at::kFloat);
  const at::Tensor got_inf = at::isinf(got), want_inf = at::isinf(want);
  Check(at::equal(got_inf, want_inf), what + ": -inf in the same places");
  const at::Tensor finite = at::logical_not(want_inf);
  const at::Tensor error = at::abs(got.masked_select(finite) - want.masked_select(finite));
  const at::Tensor bound = bfloat16 ? at::abs(want.masked_select(finite)) / 64 + 1e-3 : at::full_like(error, 2e-5);
  Check(at::le(error, bound).all().item<bool>(),
        what + ": max abs diff " + std::to_string(at::max(error).item<double>()));
}

// q, k^T and v as the exported graphs lay them out: views into the QKV
// projection's output [batch, tokens, 3, heads, width].
struct Qkv {
  at::Tensor q, k_t, v;
};
Qkv MakeQkv(int64_t batch, int64_t tokens, int64_t heads, int64_t width, uint64_t seed,
            at::ScalarType dtype = at::kFloat) {
  auto generator = at::detail::createCPUGenerator(seed);
  const at::Tensor qkv = at::randn({batch, tokens, 3, heads, width}, generator).to(dtype).permute({2, 0, 3, 1, 4});
  return {qkv[0], qkv[1].transpose(-1, -2), qkv[2]};
}

void TestShapes() {
  struct Case {
    int64_t batch, tokens, heads, width;
  };
  // Image (50 tokens of 64-wide heads), captions (8, 17 and 77 tokens), a
  // batch, and widths the kernel does not take (40) or takes only for the
  // scores (80: the weighted sum is at most four vectors wide). On AMX tiles
  // (bfloat16, up to 64 tokens of 32- or 64-wide heads): the tiles' edges
  // (16, 17, 33 and 64 tokens) and heads of 32.
  const std::vector<Case> cases = {{1, 50, 12, 64}, {1, 8, 8, 64},  {3, 17, 8, 64}, {2, 77, 8, 64},
                                   {1, 50, 4, 40},  {1, 9, 2, 80},  {1, 1, 8, 64},  {1, 300, 2, 64},
                                   {2, 64, 4, 64},  {1, 16, 2, 64}, {1, 33, 3, 32}, {2, 17, 2, 32}};
  // Seeds 1-16 for the first eight cases of each dtype, as before the tiles'
  // cases came: the bounds below hold for those draws.
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16})
    for (size_t i = 0; i < cases.size(); ++i) {
      const Case& c = cases[i];
      const uint64_t seed = (i < 8 ? 1 : 101) + (dtype == at::kFloat ? 0 : 8) + (i < 8 ? i : i - 8);
      const std::string name = std::string(dtype == at::kFloat ? "float" : "bfloat16") + ", batch " +
                               std::to_string(c.batch) + ", " + std::to_string(c.tokens) + " tokens, " +
                               std::to_string(c.heads) + " heads of " + std::to_string(c.width);
      const Qkv x = MakeQkv(c.batch, c.tokens, c.heads, c.width, seed, dtype);
      const double scale = 1.0 / std::sqrt(static_cast<double>(c.width));
      CheckClose(clip::AttentionMatmul(x.q, x.k_t), Reference(x.q, x.k_t, 1.0, -1), name + ": scores");
      CheckClose(clip::AttentionMatmul(x.q, x.k_t, scale), Reference(x.q, x.k_t, scale, -1), name + ": scaled scores");
      CheckClose(clip::AttentionMatmul(x.q, x.k_t, scale, c.tokens), Reference(x.q, x.k_t, scale, c.tokens),
                 name + ": causal scores");
      const at::Tensor weights = at::softmax(Reference(x.q, x.k_t, scale, c.tokens), -1);
      const at::Tensor sum = clip::AttentionMatmul(weights, x.v);
      CheckClose(sum, Reference(weights, x.v, 1.0, -1), name + ": weighted sum");
      // What the graph does next: [batch, tokens, heads * width].
      const at::Tensor merged = sum.transpose(1, 2).reshape({c.batch, c.tokens, c.heads * c.width});
      CheckClose(merged, at::matmul(weights, x.v).transpose(1, 2).reshape({c.batch, c.tokens, c.heads * c.width}),
                 name + ": weighted sum merged over heads");
      // The three as one operator, unmasked and causal.
      for (const int64_t causal : {int64_t{-1}, c.tokens}) {
        const std::string what = name + (causal < 0 ? ": attention" : ": causal attention");
        const at::Tensor want = at::matmul(at::softmax(Reference(x.q, x.k_t, scale, causal), -1), x.v);
        const at::Tensor got = clip::Attention(x.q, x.k_t, x.v, scale, causal);
        CheckClose(got, want, what);
        CheckClose(got.transpose(1, 2).reshape({c.batch, c.tokens, c.heads * c.width}),
                   want.transpose(1, 2).reshape({c.batch, c.tokens, c.heads * c.width}), what + " merged over heads");
      }
    }
}

void TestMaskNotCoveringScores() {
  const Qkv x = MakeQkv(1, 8, 2, 64, 99);
  // A [1, 1] mask broadcasts and masks nothing; the scores must say so.
  const at::Tensor one = clip::AttentionMatmul(x.q, x.k_t, 0.125, 1);
  CheckClose(one, Reference(x.q, x.k_t, 0.125, 1), "mask of length 1 over 8 tokens");
  Check(!at::isinf(one).any().item<bool>(), "mask of length 1 masks nothing");
  // A mask that cannot broadcast fails as aten fails.
  bool threw = false;
  try {
    clip::AttentionMatmul(x.q, x.k_t, 0.125, 5);
  } catch (const std::exception&) {
    threw = true;
  }
  Check(threw, "mask of length 5 over 8 tokens is refused");
  CheckClose(clip::Attention(x.q, x.k_t, x.v, 0.125, 1),
             at::matmul(at::softmax(Reference(x.q, x.k_t, 0.125, 1), -1), x.v), "attention, mask of length 1");
}

void TestAttentionScores() {
  // Scores all equal (scale 0), close together, and far apart (rows nearly
  // one-hot, most of exp's inputs below its underflow): the weights must
  // still be the reference's. q and k hold small integers, so that both
  // compute the same scores exactly and only the softmax can differ.
  auto generator = at::detail::createCPUGenerator(31);
  const at::Tensor q = at::randint(-3, 4, {1, 2, 50, 64}, generator);
  const at::Tensor k_t = at::randint(-3, 4, {1, 2, 50, 64}, generator).transpose(-1, -2);
  const at::Tensor v = at::randn({1, 2, 50, 64}, generator);
  for (const double scale : {0.0, 1e-3, 0.125, 4.0, 40.0}) {
    CheckClose(clip::Attention(q, k_t, v, scale, -1), at::matmul(at::softmax(Reference(q, k_t, scale, -1), -1), v),
               "attention, scores scaled by " + std::to_string(scale));
  }
}

void TestOtherInputs() {
  // Contiguous q and k (not views), double, and an unscaled product of
  // plain 4-d tensors.
  auto generator = at::detail::createCPUGenerator(7);
  const at::Tensor a = at::randn({2, 3, 16, 32}, generator), b = at::randn({2, 3, 32, 16}, generator);
  CheckClose(clip::AttentionMatmul(a, b), at::matmul(a, b), "contiguous operands");
  CheckClose(clip::AttentionMatmul(a, b, 0.5, 16), Reference(a, b, 0.5, 16), "contiguous operands, causal");
  const at::Tensor ad = a.to(at::kDouble), bd = b.to(at::kDouble);
  Check(at::allclose(clip::AttentionMatmul(ad, bd, 0.5), Reference(ad, bd, 0.5, -1)), "double operands");
  const at::Tensor a3 = at::randn({4, 16, 32}, generator), b3 = at::randn({4, 32, 16}, generator);
  CheckClose(clip::AttentionMatmul(a3, b3), at::matmul(a3, b3), "3-d operands");
  const at::Tensor v = at::randn({2, 3, 16, 32}, generator);
  CheckClose(clip::Attention(a, b, v, 0.5, 16), at::matmul(at::softmax(Reference(a, b, 0.5, 16), -1), v),
             "attention, contiguous operands, causal");
  const at::Tensor vd = v.to(at::kDouble);
  Check(at::allclose(clip::Attention(ad, bd, vd, 0.5), at::matmul(at::softmax(Reference(ad, bd, 0.5, -1), -1), vd)),
        "attention, double operands");
}

void TestThreads() {
  // The kernel splits (batch, head) pairs over the intra-op threads; the
  // result must not depend on how many there are.
  const Qkv x = MakeQkv(2, 50, 12, 64, 5);
  const std::string threads = std::to_string(at::get_num_threads());
  const at::Tensor one = OnOneThread([&] { return clip::AttentionMatmul(x.q, x.k_t, 0.125, 50); });
  const at::Tensor many = clip::AttentionMatmul(x.q, x.k_t, 0.125, 50);
  Check(at::equal(one, many), "the same bits on 1 and " + threads + " threads");
  const at::Tensor fused_one = OnOneThread([&] { return clip::Attention(x.q, x.k_t, x.v, 0.125, 50); });
  const at::Tensor fused_many = clip::Attention(x.q, x.k_t, x.v, 0.125, 50);
  Check(at::equal(fused_one, fused_many), "attention: the same bits on 1 and " + threads + " threads");
}

// A packed batch of texts as a text encoder's forward_packed lays it out:
// qkv [T, 3 * heads * width] (text after text), pad_map (each slot of the
// texts padded to the longest: its row; a padding slot its text's last row)
// and pack_map (each row's slot).
struct Packed {
  at::Tensor qkv, pad_map, pack_map;
  std::vector<int64_t> lengths;
  int64_t length = 0;
};
Packed MakePacked(const std::vector<int64_t>& lengths, int64_t heads, int64_t width, uint64_t seed,
                  at::ScalarType dtype) {
  Packed p;
  p.lengths = lengths;
  int64_t rows = 0;
  for (int64_t l : lengths) {
    rows += l;
    p.length = std::max(p.length, l);
  }
  auto generator = at::detail::createCPUGenerator(seed);
  p.qkv = at::randn({rows, 3 * heads * width}, generator).to(dtype);
  std::vector<int64_t> pad, pack;
  int64_t first = 0;
  for (size_t i = 0; i < lengths.size(); ++i) {
    for (int64_t j = 0; j < p.length; ++j) pad.push_back(first + std::min(j, lengths[i] - 1));
    for (int64_t j = 0; j < lengths[i]; ++j) pack.push_back(static_cast<int64_t>(i) * p.length + j);
    first += lengths[i];
  }
  p.pad_map = at::tensor(pad, at::kLong);
  p.pack_map = at::tensor(pack, at::kLong);
  return p;
}

// Each text's causal attention on its own rows, with the reference chain.
at::Tensor PackedReference(const Packed& p, int64_t heads, double scale) {
  std::vector<at::Tensor> parts;
  int64_t first = 0;
  for (int64_t l : p.lengths) {
    const at::Tensor x = p.qkv.narrow(0, first, l).view({l, 3, heads, -1}).permute({1, 2, 0, 3});  // [3, H, l, D]
    const at::Tensor weights = at::softmax(Reference(x[0], x[1].transpose(-1, -2), scale, l), -1);
    parts.push_back(at::matmul(weights, x[2]).transpose(0, 1).reshape({l, -1}));
    first += l;
  }
  return at::cat(parts);
}

void TestPackedAttention() {
  const int64_t heads = 8, width = 64;
  const double scale = 0.125;
  for (const at::ScalarType dtype : {at::kFloat, at::kBFloat16}) {
    const std::string type = dtype == at::kFloat ? "float32" : "bfloat16";
    for (const std::vector<int64_t>& lengths :
         std::vector<std::vector<int64_t>>{{7}, {1}, {12, 5, 22, 1, 9, 17, 7, 13}, {77, 3, 40}, {2, 2, 2, 2}}) {
      const Packed p = MakePacked(lengths, heads, width, 11 + lengths.size(), dtype);
      const int64_t batch = static_cast<int64_t>(lengths.size());
      const at::Tensor got = clip::PackedAttention(p.qkv, p.pad_map, p.pack_map, batch, p.length, heads, scale, true);
      CheckClose(
          got, PackedReference(p, heads, scale),
          "packed attention, " + type + ", " + std::to_string(batch) + " texts, longest " + std::to_string(p.length));
    }
  }
  // Maps of another form (a padding slot pointing at another text's row),
  // or no causal mask: the operators of the graph, index_select, the padded
  // attention, index_select back.
  Packed p = MakePacked({5, 9, 3}, heads, width, 21, at::kFloat);
  auto chain = [&](const at::Tensor& pad_map, bool causal) {
    const at::Tensor x = p.qkv.index_select(0, pad_map).view({3, p.length, 3, heads, -1}).permute({2, 0, 3, 1, 4});
    const at::Tensor weights = at::softmax(Reference(x[0], x[1].transpose(-1, -2), scale, causal ? p.length : -1), -1);
    return at::matmul(weights, x[2]).transpose(1, 2).reshape({3 * p.length, -1}).index_select(0, p.pack_map);
  };
  at::Tensor odd = p.pad_map.clone();
  odd[7] = 16;  // text 0's padding slot 7 -> text 2's last row
  CheckClose(clip::PackedAttention(p.qkv, odd, p.pack_map, 3, p.length, heads, scale, true), chain(odd, true),
             "packed attention, a map of another form");
  CheckClose(clip::PackedAttention(p.qkv, p.pad_map, p.pack_map, 3, p.length, heads, scale, false),
             chain(p.pad_map, false), "packed attention, not causal");
  // Threads split (text, head) pairs: the same bits on any number.
  const Packed q = MakePacked({12, 5, 22, 1, 9}, heads, width, 31, at::kFloat);
  const at::Tensor one =
      OnOneThread([&] { return clip::PackedAttention(q.qkv, q.pad_map, q.pack_map, 5, q.length, heads, scale, true); });
  const at::Tensor many = clip::PackedAttention(q.qkv, q.pad_map, q.pack_map, 5, q.length, heads, scale, true);
  Check(at::equal(one, many),
        "packed attention: the same bits on 1 and " + std::to_string(at::get_num_threads()) + " threads");
}

}  // namespace

int main() {
  try {
    std::cout << "kernel " << (clip::AttentionMatmulAvailable() ? "available" : "not available (aten path)")
              << std::endl;
    TestShapes();
    TestMaskNotCoveringScores();
    TestAttentionScores();
    TestOtherInputs();
    TestThreads();
    TestPackedAttention();
  } catch (const std::exception& e) {
    Check(false, std::string("unexpected exception: ") + e.what());
  }
  return clip::test::Summary();
}

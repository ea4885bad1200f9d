// Standalone test for clip::PanelLinear, clip::PanelLinearBf16 and the
// TorchScript operator clip_native::linear_rows (cpu_linear.h) against
// at::linear. Covers every tile height the row split makes (1-14 rows per
// tile, several tiles, uneven splits), inputs narrower and wider than a
// panel, features that leave the last panel part-empty, a missing bias,
// inputs of more dimensions and not contiguous, both sides of kPerThreadCopyRows
// (per-thread copies of the rows at and below it; one shared copy run in
// groups of tiles above, one group or many), the same bits on any number of
// threads, linear_rows on either dtype, with and without the swish post-op,
// and mlp_rows against the two linear_rows it stands for; the bfloat16
// kernel on AMX tiles (where the CPU and the system offer them) on every
// row count of its 32-row blocks and on each shape of ViT-B/32; the int8 kernel
// (AVX512-VNNI) against its own arithmetic done in ATen, exact integer sums
// included, and within quantization error of float32; the int8 kernel on
// AMX-INT8 tiles against the VNNI tiles, bit for bit; and the slices of
// the next panel that the tiles prefetch (NextPanelPrefetch).
// Every float32 case runs on both kernels: panels of 32 (AVX-512) and of
// 16 (AVX2 + FMA), on float32 weights and on weights rounded to bfloat16
// (float32 products), the latter against at::linear on the rounded weights. On a CPU without AVX-512F, AVX2 + FMA or
// AVX512-BF16 the cases of that kernel are reported as skipped. Prints one line per failure, then "N passed, M failed";
// exits non-zero on any failure.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <cstdint>
#include <functional>
#include <iostream>
#include <string>
#include <utility>
#include <vector>

#include "../test_check.h"
#include "cpu_linear.h"
#include "one_thread.h"

namespace {

using clip::test::Check;

// `call` must throw c10::Error (a refusal: TORCH_CHECK); anything else it
// throws ends the test program.
void CheckRefused(const std::function<void()>& call, const std::string& what) {
  bool refused = false;
  try {
    call();
  } catch (const c10::Error&) {
    refused = true;
  }
  Check(refused, what);
}

at::Generator& Generator() {
  static at::Generator generator = at::detail::createCPUGenerator(/*seed_val=*/20261204);
  return generator;
}

at::Tensor Random(at::IntArrayRef sizes, double scale = 1.0) { return at::randn(sizes, Generator()) * scale; }

std::string Shape(int64_t m, int64_t k, int64_t n) {
  return std::to_string(m) + "x" + std::to_string(k) + " -> " + std::to_string(n);
}

// float32: within rounding of sums of k products (2e-6 of the sum of the
// products' magnitudes, plus the bias's). bfloat16: the kernel and the
// reference each round a float32 sum to bfloat16 once, so within two units
// in the last place of the result.
void CheckClose(const at::Tensor& got, const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
                const std::string& what) {
  const at::Tensor want = at::linear(x.to(at::kFloat), w.to(at::kFloat),
                                     b ? c10::optional<at::Tensor>(b->to(at::kFloat)) : c10::optional<at::Tensor>());
  if (got.sizes() != want.sizes() || got.scalar_type() != x.scalar_type()) {
    Check(false, what + ": sizes or type differ");
    return;
  }
  const at::Tensor error = at::abs(got.to(at::kFloat) - want);
  at::Tensor bound;
  if (x.scalar_type() == at::kBFloat16) {
    bound = at::abs(want) / 64 + 1e-3;
  } else {
    at::Tensor magnitude = at::linear(at::abs(x), at::abs(w));
    if (b) magnitude = magnitude + at::abs(*b);
    bound = magnitude * 2e-6 + 1e-7;
  }
  Check(at::le(error, bound).all().item<bool>(), what + ": max abs diff " + std::to_string(error.max().item<double>()));
}

// Whether the float32 kernel of panels `width` wide runs here; prints the
// skip otherwise.
bool FloatKernel(int64_t width, const std::string& what) {
  const bool available = width == 32 ? clip::PanelLinearAvailable() : clip::PanelLinearAvx2Available();
  if (!available)
    std::cout << "skipped: " << what << (width == 32 ? " (no AVX-512F)" : " (no AVX2 + FMA)") << std::endl;
  return available;
}

// "float32" (panels of 32: AVX-512) or "float32/16" (AVX2).
std::string FloatName(int64_t width, at::ScalarType weights = at::kFloat) {
  return std::string(width == 32 ? "float32" : "float32/16") + (weights == at::kBFloat16 ? " on bfloat16 weights" : "");
}

// The float32 kernel of panels `width` wide on weights of `weights`
// (float32, or bfloat16: the reference then takes the rounded weights).
void TestFloat32(int64_t width, at::ScalarType weights) {
  if (!FloatKernel(width, FloatName(width, weights) + " panel kernel")) return;
  const std::string name = FloatName(width, weights);
  const auto pack = [&](const at::Tensor& w) { return clip::PackPanelWeight(w, width, weights); };
  const auto rounded = [&](const at::Tensor& w) { return w.to(weights).to(at::kFloat); };
  // Rows: each tile height alone, then splits into several tiles (on the
  // AVX2 tiles up to 18 rows, run in blocks over k: k = 300 ends in a
  // partial block).
  std::vector<int64_t> rows;
  for (int64_t m = 1; m <= 19; ++m) rows.push_back(m);
  for (int64_t m : {27, 28, 29, 41, 43, 50, 57, 63, 64, 65, 100, 200, 401}) rows.push_back(m);
  for (int64_t m : rows) {
    for (const auto& [k, n] :
         std::vector<std::pair<int64_t, int64_t>>{{768, 2304}, {3072, 768}, {300, 40}, {33, 40}, {1, 17}}) {
      const at::Tensor x = Random({m, k});
      const at::Tensor w = Random({n, k}, 0.05);
      const at::Tensor b = Random({n}, 0.1);
      CheckClose(clip::PanelLinear(x, pack(w), b, n), x, rounded(w), b, name + " " + Shape(m, k, n));
    }
  }
  // No bias; features that fill one register and part of the next.
  for (int64_t n : {1, 7, 8, 9, 16, 31, 32, 33, 48, 70}) {
    const at::Tensor x = Random({9, 64});
    const at::Tensor w = Random({n, 64}, 0.1);
    CheckClose(clip::PanelLinear(x, pack(w), c10::nullopt, n), x, rounded(w), c10::nullopt,
               name + " no bias, " + Shape(9, 64, n));
  }
  // Leading dimensions and a view that is not contiguous.
  const at::Tensor w = Random({96, 128}, 0.1);
  const at::Tensor b = Random({96}, 0.1);
  const at::Tensor packed = pack(w);
  const at::Tensor x3 = Random({3, 7, 128});
  CheckClose(clip::PanelLinear(x3, packed, b, 96), x3, rounded(w), b, name + " [3, 7, 128]");
  const at::Tensor strided = Random({128, 20}).t();
  CheckClose(clip::PanelLinear(strided, packed, b, 96), strided, rounded(w), b, name + " transposed view");
  // Threads split the panels; each thread copies the row tiles for itself
  // (50 rows), or all copy them once and run them in groups (400 rows of 768
  // floats, 1.2 MB: 3 to 10 groups, by the L2 cache's size).
  const at::Tensor wide = Random({3072, 768}, 0.05);
  const at::Tensor wide_packed = pack(wide);
  for (int64_t m : {50, 400}) {
    const at::Tensor x = Random({m, 768});
    const at::Tensor one = OnOneThread([&] { return clip::PanelLinear(x, wide_packed, c10::nullopt, 3072); });
    const at::Tensor many = clip::PanelLinear(x, wide_packed, c10::nullopt, 3072);
    Check(at::equal(one, many), name + " " + std::to_string(m) + " rows: the same bits on 1 and " +
                                    std::to_string(at::get_num_threads()) + " threads");
  }
  // Wrong shapes are refused, not read past.
  CheckRefused(
      [&] {
        clip::PanelLinear(Random({4, 100}), packed, b, 96);
      },
      name + ": an input of the wrong width is refused");
}

// Panels of another width than 32 or 16 are refused when packed.
void TestPanelWidths() {
  CheckRefused([&] { clip::PackPanelWeight(Random({40, 64}), 8); }, "PackPanelWeight: a width of 8 is refused");
  const at::Tensor packed = clip::PackPanelWeight(Random({40, 64}), 16);
  Check(packed.sizes() == at::IntArrayRef({3, 64, 16}) && at::equal(packed[2].narrow(1, 8, 8), at::zeros({64, 8})),
        "PackPanelWeight: 40 features in panels of 16 -> [3, 64, 16], zero past the last feature");
  // bfloat16 weights: per step over k, feature j of a panel beside feature
  // j + width / 2.
  for (const int64_t width : {int64_t{32}, int64_t{16}}) {
    const at::Tensor w = Random({40, 64});
    const at::Tensor bf16 = clip::PackPanelWeight(w, width, at::kBFloat16);
    const int64_t panels = (40 + width - 1) / width;
    const at::Tensor features =
        bf16.view({panels, 64, width / 2, 2}).permute({0, 3, 2, 1}).reshape({panels * width, 64});
    Check(
        bf16.scalar_type() == at::kBFloat16 && bf16.sizes() == at::IntArrayRef({panels, 64, width}) &&
            at::equal(features.narrow(0, 0, 40), w.to(at::kBFloat16)) &&
            at::equal(features.narrow(0, 40, panels * width - 40), at::zeros({panels * width - 40, 64}, at::kBFloat16)),
        "PackPanelWeight bfloat16, width " + std::to_string(width) + ": features j and j + " +
            std::to_string(width / 2) + " side by side, rounded, zero past the last feature");
  }
}

// The packed layouts, element for element, against the same layouts made of
// views, permutes and copies (the definition of each): float32 and bfloat16
// weights 32 and 16 wide, the bfloat16 kernel's pairs of inputs, int8 with
// its scales and sums; features and inputs that do not fill a panel or a
// step, a strided weight.
void TestPackedLayouts() {
  const std::vector<std::pair<int64_t, int64_t>> shapes = {{40, 64}, {64, 66}, {33, 7}, {96, 130}, {1, 3}};
  for (const auto& [n, k] : shapes) {
    for (const bool strided : {false, true}) {
      const at::Tensor w = strided ? Random({k, n}).t() : Random({n, k});
      const std::string shape = " [" + std::to_string(n) + ", " + std::to_string(k) + "]" + (strided ? " strided" : "");
      for (const int64_t width : {int64_t{32}, int64_t{16}}) {
        const int64_t panels = (n + width - 1) / width;
        at::Tensor padded = at::zeros({panels * width, k});
        padded.narrow(0, 0, n).copy_(w);
        const at::Tensor f32 = padded.view({panels, width, k}).transpose(1, 2).contiguous();
        Check(at::equal(clip::PackPanelWeight(w, width), f32),
              "PackPanelWeight float32 " + std::to_string(width) + " wide" + shape + ": the transposed panels");
        const at::Tensor bf16 = padded.to(at::kBFloat16)
                                    .view({panels, 2, width / 2, k})
                                    .permute({0, 3, 2, 1})
                                    .contiguous()
                                    .view({panels, k, width});
        Check(at::equal(clip::PackPanelWeight(w, width, at::kBFloat16), bf16),
              "PackPanelWeight bfloat16 " + std::to_string(width) + " wide" + shape + ": features j and j + width / 2");
      }
      const int64_t panels = (n + 31) / 32;
      if (k % 2 == 0) {
        at::Tensor padded = at::zeros({panels * 32, k}, at::kBFloat16);
        padded.narrow(0, 0, n).copy_(w);
        const at::Tensor pairs = padded.view({panels, 32, k / 2, 2}).permute({0, 2, 1, 3}).contiguous();
        Check(at::equal(clip::PackPanelWeightBf16(w), pairs), "PackPanelWeightBf16" + shape + ": pairs of inputs");
      }
      const int64_t steps = (k + 3) / 4;
      const at::Tensor scales = w.abs().amax({1}).clamp_min(1e-30) / 127.0;
      const at::Tensor q = (w / scales.unsqueeze(1)).round().clamp(-127, 127).to(at::kChar);
      at::Tensor padded = at::zeros({panels * 32, steps * 4}, at::kChar);
      padded.narrow(0, 0, n).narrow(1, 0, k).copy_(q);
      at::Tensor scale_bytes = at::zeros({panels * 32});
      scale_bytes.narrow(0, 0, n).copy_(scales);
      const at::Tensor sums = padded.sum({1}, /*keepdim=*/false, at::kInt).contiguous();
      const at::Tensor int8 = at::cat({padded.view({panels, 32, steps, 4}).permute({0, 2, 1, 3}).reshape({-1}),
                                       scale_bytes.view(at::kChar), sums.view(at::kChar)});
      Check(at::equal(clip::PackPanelWeight(w, 32, at::kChar), int8),
            "PackPanelWeight int8" + shape + ": rounded weights in steps of four inputs, scales, sums");
    }
  }
  // Ties round to even, as at::round: weights of 2.5 and -0.5 steps.
  const at::Tensor ties = at::tensor({127.0f, 2.5f, -0.5f, 1.5f}).view({1, 4});
  const at::Tensor packed = clip::PackPanelWeight(ties, 32, at::kChar);
  Check(packed[0].item<int8_t>() == 127 && packed[1].item<int8_t>() == 2 && packed[2].item<int8_t>() == 0 &&
            packed[3].item<int8_t>() == 2,
        "PackPanelWeight int8: halves round to even");
}

void TestBFloat16() {
  if (!clip::PanelLinearBf16Available()) {
    std::cout << "skipped: bfloat16 panel kernel (no AVX512-BF16)" << std::endl;
    return;
  }
  for (int64_t m : {1, 2, 7, 13, 14, 15, 28, 29, 50, 64, 65, 200, 401}) {
    for (const auto& [k, n] : std::vector<std::pair<int64_t, int64_t>>{{768, 768}, {3072, 768}, {2, 33}}) {
      const at::Tensor x = Random({m, k}).to(at::kBFloat16);
      const at::Tensor w = Random({n, k}, 0.05).to(at::kBFloat16);
      const at::Tensor b = Random({n}, 0.1).to(at::kBFloat16);
      CheckClose(clip::PanelLinearBf16(x, clip::PackPanelWeightBf16(w), b, n), x, w, b, "bfloat16 " + Shape(m, k, n));
    }
  }
  const at::Tensor x = Random({2, 5, 64}).to(at::kBFloat16);
  const at::Tensor w = Random({40, 64}, 0.1).to(at::kBFloat16);
  CheckClose(clip::PanelLinearBf16(x, clip::PackPanelWeightBf16(w), c10::nullopt, 40), x, w, c10::nullopt,
             "bfloat16 [2, 5, 64], no bias");
}

// The bfloat16 kernel on AMX tiles: every row count of a 32-row block and
// its two 16-row halves, several blocks, the four linears of a ViT-B/32
// layer (3072 inputs: 12 chunks of the panel loop), the last panel
// part-empty, a missing bias, x not contiguous and of more dimensions; the
// same sums as the AVX512-BF16 kernel up to their order (each rounds once to
// bfloat16); an x larger than L2 keeps (panels in groups) with the same bits
// on 1 thread and on all; weights whose inputs are not a multiple of 32
// refused.
void TestAmx() {
  if (!clip::PanelLinearAmxAvailable()) {
    std::cout << "skipped: bfloat16 on AMX tiles (no AMX-BF16, or the system refused the tiles)" << std::endl;
    return;
  }
  // 320 and 800 inputs: a last chunk shorter than the others.
  const std::vector<std::pair<int64_t, int64_t>> shapes{{768, 2304}, {768, 768}, {768, 3072}, {3072, 768},
                                                        {64, 40},    {320, 40},  {800, 72}};
  for (int64_t m : {1, 2, 15, 16, 17, 31, 32, 33, 48, 50, 63, 64, 65, 200, 401}) {
    for (const auto& [k, n] : shapes) {
      if (m > 65 && k == 3072 && n == 768 && m != 401) continue;
      const at::Tensor x = Random({m, k}).to(at::kBFloat16);
      const at::Tensor w = Random({n, k}, 0.05).to(at::kBFloat16);
      const at::Tensor b = Random({n}, 0.1).to(at::kBFloat16);
      const at::Tensor got = clip::PanelLinearBf16(x, clip::PackPanelWeightAmx(w), b, n);
      CheckClose(got, x, w, b, "AMX " + Shape(m, k, n));
      const at::Tensor pairs = clip::PanelLinearBf16(x, clip::PackPanelWeightBf16(w), b, n);
      const double diff = at::abs(got.to(at::kFloat) - pairs.to(at::kFloat)).max().item<double>();
      const double bound = at::abs(pairs.to(at::kFloat)).max().item<double>() / 64;
      Check(diff <= bound, "AMX " + Shape(m, k, n) + " against AVX512-BF16: max abs diff " + std::to_string(diff));
    }
  }
  // Rows of 3072 inputs (2.4 MB for 401 rows) are more than L2 keeps beside the weights on any CPU, so a thread's
  // panels run in groups: on one thread all of them (24 and 11 panels: groups of several sizes, the last panel
  // part-empty), on more threads fewer or none; the bits must not change. 385 rows: a last block of one row.
  for (const auto& [m, n] : std::vector<std::pair<int64_t, int64_t>>{{401, 768}, {401, 340}, {385, 340}}) {
    const at::Tensor x = Random({m, 3072}).to(at::kBFloat16);
    const at::Tensor w = Random({n, 3072}, 0.05).to(at::kBFloat16);
    const at::Tensor b = Random({n}, 0.1).to(at::kBFloat16);
    const at::Tensor packed = clip::PackPanelWeightAmx(w);
    const at::Tensor one = OnOneThread([&] { return clip::PanelLinearBf16(x, packed, b, n); });
    const at::Tensor many = clip::PanelLinearBf16(x, packed, b, n);
    CheckClose(one, x, w, b, "AMX " + Shape(m, 3072, n) + " on 1 thread");
    Check(at::equal(one, many), "AMX " + Shape(m, 3072, n) + ": the same bits on 1 and " +
                                    std::to_string(at::get_num_threads()) + " threads");
  }
  const at::Tensor w = Random({40, 64}, 0.1).to(at::kBFloat16);
  const at::Tensor none =
      clip::PanelLinearBf16(Random({0, 64}).to(at::kBFloat16), clip::PackPanelWeightAmx(w), c10::nullopt, 40);
  Check(none.sizes() == at::IntArrayRef({0, 40}), "AMX: no rows, no sums");
  const at::Tensor x = Random({3, 7, 128}).to(at::kBFloat16).slice(2, 0, 128, 2);  // [3, 7, 64], not contiguous
  CheckClose(clip::PanelLinearBf16(x, clip::PackPanelWeightAmx(w), c10::nullopt, 40), x, w, c10::nullopt,
             "AMX [3, 7, 64] strided, no bias");
  CheckRefused(
      [&] {
        clip::PackPanelWeightAmx(Random({40, 48}).to(at::kBFloat16));
      },
      "AMX: weights of 48 inputs are refused");
  CheckRefused(
      [&] {
        clip::PanelLinearBf16(Random({4, 96}).to(at::kBFloat16), clip::PackPanelWeightAmx(w), c10::nullopt, 40);
      },
      "AMX: an input of another width is refused");
  CheckRefused(
      [&] {
        clip::PackPanelWeightAmx(Random({40, 0}).to(at::kBFloat16));
      },
      "AMX: weights of no inputs are refused");
  CheckRefused(
      [&] {
        clip::PanelLinearBf16(Random({4, 64}).to(at::kBFloat16), clip::PackPanelWeightAmx(w), c10::nullopt, 20);
      },
      "AMX: fewer features than the packed panels hold are refused");
  // An MLP on the tiles (its two linears, the hidden rows row-major between
  // them) against at::linear, the swish between them.
  for (int64_t m : {5, 50, 100}) {
    const at::Tensor xm = Random({m, 96}).to(at::kBFloat16);
    const at::Tensor w1 = Random({128, 96}, 0.1).to(at::kBFloat16), b1 = Random({128}, 0.1);
    const at::Tensor w2 = Random({40, 128}, 0.1).to(at::kBFloat16), b2 = Random({40}, 0.1);
    const at::Tensor got =
        clip::PanelMlp(xm, clip::PackPanelWeightAmx(w1), b1, 128, clip::PackPanelWeightAmx(w2), b2, 40);
    at::Tensor hidden = at::linear(xm.to(at::kFloat), w1.to(at::kFloat), b1);
    hidden = (hidden * at::sigmoid(hidden)).to(at::kBFloat16).to(at::kFloat);
    const at::Tensor want = at::linear(hidden, w2.to(at::kFloat), b2);
    const double diff = at::abs(got.to(at::kFloat) - want).max().item<double>();
    Check(diff <= 0.02 * (1 + at::abs(want).max().item<double>()),
          "AMX MLP " + std::to_string(m) + " rows: max abs diff " + std::to_string(diff));
  }
}

// The int8 kernel's arithmetic in ATen: each row of x quantized to uint8
// as the kernel quantizes it (scale (max - min) / 255 over the row with
// zero in the range, zero point, x * (1 / scale) rounded to nearest even),
// each feature of w to int8 as PackPanelWeight does, the integer sums
// exact (in double: integers far below 2^53), scaled back in double.
at::Tensor Int8Reference(const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b) {
  const at::Tensor rows = x.reshape({-1, x.size(-1)});
  const at::Tensor low = at::clamp_max(rows.amin({1}), 0), high = at::clamp_min(rows.amax({1}), 0);
  at::Tensor scale = (high - low) / 255.0;
  scale = at::where(scale > 0, scale, at::ones_like(scale));
  const at::Tensor zero = at::clamp(at::round(-low / scale), 0, 255);
  const at::Tensor inverse = at::reciprocal(scale);
  const at::Tensor q = at::clamp(at::round(rows * inverse.unsqueeze(1)) + zero.unsqueeze(1), 0, 255);
  const at::Tensor w_scale = w.abs().amax({1}).clamp_min(1e-30) / 127.0;
  const at::Tensor wq = (w / w_scale.unsqueeze(1)).round().clamp(-127, 127);
  const at::Tensor sums = at::mm((q - zero.unsqueeze(1)).to(at::kDouble), wq.to(at::kDouble).t());
  at::Tensor y = sums * (scale.unsqueeze(1) * w_scale.unsqueeze(0)).to(at::kDouble);
  if (b) y = y + b->to(at::kDouble);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = w.size(0);
  return y.view(shape);
}

// The int8 kernel against Int8Reference: within float32 rounding of its
// epilogue (the int32 sums are exact); and within quantization error of
// the float32 linear (relative error of the whole result under 2%).
void CheckInt8(const at::Tensor& got, const at::Tensor& x, const at::Tensor& w, const c10::optional<at::Tensor>& b,
               const std::string& what) {
  const at::Tensor want = Int8Reference(x, w, b);
  if (got.sizes() != want.sizes() || got.scalar_type() != at::kFloat) {
    Check(false, what + ": sizes or type differ");
    return;
  }
  const at::Tensor error = at::abs(got.to(at::kDouble) - want);
  const at::Tensor bound =
      at::abs(want) * 1e-6 + (b ? at::abs(b->to(at::kDouble)) * 1e-7 : at::zeros({1}).to(at::kDouble)) + 1e-9;
  Check(at::le(error, bound).all().item<bool>(),
        what + ": max abs diff to the quantized reference " + std::to_string(error.max().item<double>()));
  const at::Tensor exact = at::linear(x, w, b);
  const double relative = ((got - exact).norm() / exact.norm().clamp_min(1e-30)).item<double>();
  Check(relative < 0.02, what + ": relative error to float32 " + std::to_string(relative));
}

void TestInt8() {
  if (!clip::PanelLinearInt8Available()) {
    std::cout << "skipped: int8 panel kernel (no AVX512-VNNI)" << std::endl;
    return;
  }
  const auto pack = [](const at::Tensor& w) { return clip::PackPanelWeight(w, 32, at::kChar); };
  // Every tile height, several tiles, both sides of kPerThreadCopyRows;
  // widths that are not a multiple of four; part-empty last panels.
  std::vector<int64_t> rows;
  for (int64_t m = 1; m <= 15; ++m) rows.push_back(m);
  for (int64_t m : {28, 29, 50, 64, 65, 200, 401}) rows.push_back(m);
  for (int64_t m : rows) {
    for (const auto& [k, n] :
         std::vector<std::pair<int64_t, int64_t>>{{768, 2304}, {3072, 768}, {301, 40}, {33, 47}, {1, 17}, {6, 96}}) {
      const at::Tensor x = Random({m, k});
      const at::Tensor w = Random({n, k}, 0.05);
      const at::Tensor b = Random({n}, 0.1);
      CheckInt8(clip::PanelLinearInt8(x, pack(w), b, n), x, w, b, "int8 " + Shape(m, k, n));
    }
  }
  // No bias; inputs of one sign (the zero point at either end), a row of
  // zeros, a constant row; leading dimensions and a view.
  const at::Tensor w = Random({70, 64}, 0.1);
  const at::Tensor packed = pack(w);
  at::Tensor x = Random({6, 64});
  x[0] = at::abs(x[0]);
  x[1] = -at::abs(x[1]);
  x[2].zero_();
  x[3].fill_(0.75);
  x[4] = x[4] * 1e-20;
  CheckInt8(clip::PanelLinearInt8(x, packed, c10::nullopt, 70), x, w, c10::nullopt, "int8 edge rows, no bias");
  Check(at::equal(clip::PanelLinearInt8(x, packed, c10::nullopt, 70)[2], at::zeros({70})),
        "int8: a row of zeros gives zeros");
  const at::Tensor x3 = Random({3, 7, 64});
  CheckInt8(clip::PanelLinearInt8(x3, packed, c10::nullopt, 70), x3, w, c10::nullopt, "int8 [3, 7, 64]");
  const at::Tensor strided = Random({64, 20}).t();
  CheckInt8(clip::PanelLinearInt8(strided, packed, c10::nullopt, 70), strided, w, c10::nullopt, "int8 transposed view");
  // The packed layout: weights, then scales, then sums; a wrong width or
  // feature count is refused.
  Check(packed.scalar_type() == at::kChar && packed.dim() == 1 && packed.numel() == 3 * (16 * 128 + 256),
        "int8 packed size: 3 panels of 16 steps and their scales and sums");
  for (const auto& [width, features] : std::vector<std::pair<int64_t, int64_t>>{{60, 70}, {64, 100}}) {
    CheckRefused(
        [&] {
          clip::PanelLinearInt8(Random({2, width}), packed, c10::nullopt, features);
        },
        "int8: an input of " + std::to_string(width) + " for " + std::to_string(features) + " features is refused");
  }
  CheckRefused([&] { clip::PackPanelWeight(w, 16, at::kChar); }, "PackPanelWeight: int8 panels 16 wide are refused");
}

// The int8 linear on AMX-INT8 tiles against the same linear on the VNNI
// tiles, bit for bit (the same int32 sums and epilogue): every row count of
// a 32-row block's tail and both sides of kPerThreadCopyRows, each ViT-B/32 shape,
// part-empty last panels, with and without bias and swish, a view; inputs
// that are not a multiple of 64 stay on the VNNI tiles.
void TestInt8Amx() {
  if (!clip::PanelLinearInt8AmxAvailable()) {
    std::cout << "skipped: int8 on AMX tiles (no AMX-INT8, or the system did not grant the tiles)" << std::endl;
    return;
  }
  const auto pack = [](const at::Tensor& w) { return clip::PackPanelWeight(w, 32, at::kChar); };
  const auto same = [](const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& b, int64_t n,
                       bool swish, const std::string& what) {
    const at::Tensor tiles = clip::PanelLinearInt8(x, packed, b, n, swish, /*amx=*/true);
    const at::Tensor vnni = clip::PanelLinearInt8(x, packed, b, n, swish, /*amx=*/false);
    Check(tiles.sizes() == vnni.sizes() && at::equal(tiles, vnni), "int8 AMX " + what + ": the VNNI tiles' bits");
  };
  std::vector<int64_t> rows;
  for (int64_t m = 1; m <= 64; ++m) rows.push_back(m);  // up to 31 on the VNNI tiles, then every block tail
  for (int64_t m : {clip::kPerThreadCopyRows, clip::kPerThreadCopyRows + 1, int64_t{100}, int64_t{401}})
    rows.push_back(m);
  for (const auto& [k, n] : std::vector<std::pair<int64_t, int64_t>>{{64, 40}, {128, 96}, {192, 33}}) {
    const at::Tensor w = Random({n, k}, 0.05);
    const at::Tensor b = Random({n}, 0.1);
    const at::Tensor packed = pack(w);
    for (int64_t m : rows) {
      const at::Tensor x = Random({m, k});
      same(x, packed, b, n, false, Shape(m, k, n));
      if (m % 8 == 1) same(x, packed, c10::nullopt, n, true, Shape(m, k, n) + ", swish, no bias");
    }
  }
  for (const auto& [k, n] :
       std::vector<std::pair<int64_t, int64_t>>{{768, 2304}, {768, 768}, {768, 3072}, {3072, 768}}) {
    const at::Tensor w = Random({n, k}, 0.02);
    const at::Tensor b = Random({n}, 0.1);
    const at::Tensor packed = pack(w);
    for (int64_t m : {int64_t{7}, int64_t{50}, int64_t{400}}) {
      const at::Tensor x = Random({m, k});
      same(x, packed, b, n, n == 3072, Shape(m, k, n));
      if (m == 50) CheckInt8(clip::PanelLinearInt8(x, packed, b, n), x, w, b, "int8 AMX " + Shape(m, k, n));
    }
  }
  const at::Tensor w = Random({70, 128}, 0.1);
  const at::Tensor strided = Random({128, 40}).t();
  same(strided, pack(w), c10::nullopt, 70, false, "transposed view");
  same(Random({0, 128}), pack(w), c10::nullopt, 70, false, "no rows");
  Check(!clip::AmxInt8Inputs(0) && !clip::AmxInt8Inputs(96) && clip::AmxInt8Inputs(3072),
        "AmxInt8Inputs: positive multiples of 64 only");
  // The cases above ran on the tiles from 32 rows on (else they compared the VNNI tiles with themselves).
  Check(clip::PanelLinearInt8UsesAmx(32, 64) && clip::PanelLinearInt8UsesAmx(401, 3072) &&
            !clip::PanelLinearInt8UsesAmx(31, 768) && !clip::PanelLinearInt8UsesAmx(400, 96),
        "int8 AMX: the tiles from 32 rows of a multiple of 64 inputs");
}

// clip_native::linear_rows as the rewritten graph calls it, on float32 and
// bfloat16 panels (float32 biases), on both sides of kPerThreadCopyRows.
// The kernels as the operators take them: float32 panels of 32 (AVX-512)
// and of 16 (AVX2) on float32 or bfloat16 weights (`weights`), and
// bfloat16 panels (AVX512-BF16: bfloat16 inputs and results; `amx`: the
// same panels on AMX tiles).
struct Kernel {
  bool bfloat16;
  int64_t width;
  at::ScalarType weights;
  bool amx = false;
};
const Kernel kKernels[] = {{false, 32, at::kFloat},    {false, 16, at::kFloat},   {false, 32, at::kBFloat16},
                           {false, 16, at::kBFloat16}, {true, 32, at::kBFloat16}, {true, 32, at::kBFloat16, true},
                           {false, 32, at::kChar}};

std::string KernelName(const Kernel& kernel) {
  if (kernel.weights == at::kChar) return "int8";
  if (kernel.amx) return "bfloat16 on AMX";
  return kernel.bfloat16 ? "bfloat16" : FloatName(kernel.width, kernel.weights);
}

// Whether `kernel` runs here (printing the skip of `what` otherwise).
bool KernelRuns(const Kernel& kernel, const std::string& what) {
  if (kernel.weights == at::kChar) {
    if (!clip::PanelLinearInt8Available()) std::cout << "skipped: " << what << " on int8 (no AVX512-VNNI)" << std::endl;
    return clip::PanelLinearInt8Available();
  }
  if (!kernel.bfloat16) return FloatKernel(kernel.width, what + " on " + KernelName(kernel));
  if (kernel.amx) {
    if (!clip::PanelLinearAmxAvailable()) std::cout << "skipped: " << what << " on AMX (no AMX-BF16)" << std::endl;
    return clip::PanelLinearAmxAvailable();
  }
  if (!clip::PanelLinearBf16Available())
    std::cout << "skipped: " << what << " on bfloat16 (no AVX512-BF16)" << std::endl;
  return clip::PanelLinearBf16Available();
}

at::Tensor Pack(const Kernel& kernel, const at::Tensor& w) {
  if (kernel.amx) return clip::PackPanelWeightAmx(w);
  return kernel.bfloat16 ? clip::PackPanelWeightBf16(w) : clip::PackPanelWeight(w, kernel.width, kernel.weights);
}

void TestLinearRows() {
  const c10::OperatorHandle op = c10::Dispatcher::singleton().findSchemaOrThrow("clip_native::linear_rows", "");
  const int64_t k = 256, n = 160;
  const at::Tensor w = Random({n, k}, 0.05);
  const at::Tensor b = Random({n}, 0.1);
  for (const Kernel& kernel : kKernels) {
    if (!KernelRuns(kernel, "linear_rows")) continue;
    const bool bfloat16 = kernel.bfloat16;
    const at::ScalarType dtype = bfloat16 ? at::kBFloat16 : at::kFloat;
    const at::Tensor panels = Pack(kernel, w.to(dtype));
    for (int64_t m :
         {int64_t{1}, clip::kPerThreadCopyRows, clip::kPerThreadCopyRows + 1, 3 * clip::kPerThreadCopyRows}) {
      for (const std::string attr : {"none", "swish"}) {
        const at::Tensor x = Random({m, k}).to(dtype);
        torch::jit::Stack stack{x, panels, b, n, attr};
        op.callBoxed(&stack);
        const at::Tensor got = stack[0].toTensor();
        at::Tensor want = kernel.weights == at::kChar
                              ? Int8Reference(x, w, b).to(at::kFloat)
                              : at::linear(x.to(at::kFloat), w.to(kernel.weights).to(at::kFloat), b);
        if (attr == "swish") want = want * at::sigmoid(want);
        const double bound = bfloat16 ? 0.02 * (1 + at::abs(want).max().item<double>()) : 1e-4;
        const double diff = at::abs(got.to(at::kFloat) - want).max().item<double>();
        Check(got.sizes() == want.sizes() && got.scalar_type() == dtype && diff < bound,
              KernelName(kernel) + " linear_rows " + std::to_string(m) + " rows, " + attr + ": max abs diff " +
                  std::to_string(diff));
      }
    }
  }
  if (!clip::PanelLinearAvailable()) return;
  CheckRefused(
      [&] {
        torch::jit::Stack stack{Random({2, k}), clip::PackPanelWeight(w), b, n, std::string("gelu")};
        op.callBoxed(&stack);
      },
      "linear_rows: an unknown post-op is refused");
}

// clip_native::mlp_rows (PanelMlp) against the two linear_rows it replaces,
// bit for bit: above kPerThreadCopyRows the first linear's results go
// straight into the layout the second reads, and must be the same values.
// Hidden widths that leave the last panel part-empty (and, in float32, a
// 16-feature half of it), with and without biases, several row counts.
void TestMlpRows() {
  const c10::OperatorHandle mlp = c10::Dispatcher::singleton().findSchemaOrThrow("clip_native::mlp_rows", "");
  const c10::OperatorHandle linear = c10::Dispatcher::singleton().findSchemaOrThrow("clip_native::linear_rows", "");
  const int64_t k = 160, n = 40;
  for (const Kernel& kernel : kKernels) {
    if (kernel.weights == at::kChar || !KernelRuns(kernel, "mlp_rows")) continue;  // int8: no mlp_rows
    const bool bfloat16 = kernel.bfloat16;
    const at::ScalarType dtype = bfloat16 ? at::kBFloat16 : at::kFloat;
    for (const int64_t hidden : {int64_t{64}, int64_t{96}, int64_t{98}, int64_t{110}, int64_t{200}}) {
      if (bfloat16 && hidden % 2 != 0) continue;
      if (kernel.amx && hidden % 32 != 0) continue;  // the second linear's inputs
      const at::Tensor w1 = Random({hidden, k}, 0.1).to(dtype);
      const at::Tensor w2 = Random({n, hidden}, 0.1).to(dtype);
      const at::Tensor p1 = Pack(kernel, w1), p2 = Pack(kernel, w2);
      for (const bool with_bias : {true, false}) {
        const c10::IValue b1 = with_bias ? c10::IValue(Random({hidden}, 0.1)) : c10::IValue();
        const c10::IValue b2 = with_bias ? c10::IValue(Random({n}, 0.1)) : c10::IValue();
        for (const int64_t m : {int64_t{5}, int64_t{12}, clip::kPerThreadCopyRows, clip::kPerThreadCopyRows + 1,
                                int64_t{100}, int64_t{401}}) {
          const at::Tensor x = Random({m, k}).to(dtype);
          torch::jit::Stack first{x, p1, b1, hidden, std::string("swish")};
          linear.callBoxed(&first);
          torch::jit::Stack second{first[0].toTensor(), p2, b2, n, std::string("none")};
          linear.callBoxed(&second);
          const at::Tensor want = second[0].toTensor();
          torch::jit::Stack fused{x, p1, b1, hidden, p2, b2, n};
          mlp.callBoxed(&fused);
          const at::Tensor got = fused[0].toTensor();
          Check(got.sizes() == want.sizes() && got.scalar_type() == dtype && at::equal(got, want),
                KernelName(kernel) + " mlp_rows " + std::to_string(m) + " rows, hidden " + std::to_string(hidden) +
                    (with_bias ? ", biases" : ", no biases") + ": the two linear_rows' bits");
        }
      }
    }
  }
  if (!clip::PanelLinearAvailable()) return;
  CheckRefused(
      [&] {
        const at::Tensor p1 = clip::PackPanelWeight(Random({64, k}));
        const at::Tensor p2 = clip::PackPanelWeight(Random({n, 32}));  // 32 inputs where the hidden layer has 64
        torch::jit::Stack stack{Random({100, k}), p1, c10::IValue(), int64_t{64}, p2, c10::IValue(), n};
        mlp.callBoxed(&stack);
      },
      "mlp_rows: a second weight that does not fit the hidden width is refused");
  CheckRefused(
      [&] {
        const at::Tensor p1 = clip::PackPanelWeight(Random({64, k}));
        const at::Tensor p2 = clip::PackPanelWeight(Random({n, 64}), 32, at::kBFloat16);
        torch::jit::Stack stack{Random({100, k}), p1, c10::IValue(), int64_t{64}, p2, c10::IValue(), n};
        mlp.callBoxed(&stack);
      },
      "mlp_rows: float32 and bfloat16 weights in one MLP are refused");
  CheckRefused(
      [&] {
        const at::Tensor p1 = clip::PackPanelWeight(Random({64, k}), 32, at::kChar);
        const at::Tensor p2 = clip::PackPanelWeight(Random({n, 64}), 32, at::kChar);
        torch::jit::Stack stack{Random({10, k}), p1, c10::IValue(), int64_t{64}, p2, c10::IValue(), n};
        mlp.callBoxed(&stack);
      },
      "mlp_rows: int8 weights are refused (their linears run one by one)");
  if (!clip::PanelLinearAvx2Available()) return;
  CheckRefused(
      [&] {
        const at::Tensor p1 = clip::PackPanelWeight(Random({64, k}), 32);
        const at::Tensor p2 = clip::PackPanelWeight(Random({n, 64}), 16);
        torch::jit::Stack stack{Random({100, k}), p1, c10::IValue(), int64_t{64}, p2, c10::IValue(), n};
        mlp.callBoxed(&stack);
      },
      "mlp_rows: panels of two widths are refused");
}

// RowGroupBytesFor: a quarter of the L2 cache within 128 KB to 512 KB, 256 KB
// when the size is unknown; RowGroupBytes (this machine) inside those bounds.
void TestRowGroupBytes() {
  constexpr int64_t kKb = 1024;
  const std::pair<int64_t, int64_t> cases[] = {
      {0, 256 * kKb},          {-1, 256 * kKb},         {256 * kKb, 128 * kKb},  {512 * kKb, 128 * kKb},
      {1024 * kKb, 256 * kKb}, {1280 * kKb, 320 * kKb}, {2048 * kKb, 512 * kKb}, {4096 * kKb, 512 * kKb}};
  for (const auto& [l2, expected] : cases) {
    Check(clip::RowGroupBytesFor(l2) == expected,
          "row groups for an L2 of " + std::to_string(l2) + " bytes: " + std::to_string(clip::RowGroupBytesFor(l2)));
  }
  const int64_t here = clip::RowGroupBytes();
  Check(here >= 128 * kKb && here <= 512 * kKb, "row groups on this machine: " + std::to_string(here) + " bytes");
}

// NextPanelPrefetch: for every tile count the slices of the tiles that
// prefetch reach each 64-byte line of the next panel and no byte past it;
// none for one tile; the slices do not overlap.
void TestNextPanelPrefetch() {
  for (const int64_t step_bytes : {clip::kPanelStepBytes, int64_t{64}}) {
    for (int64_t k_steps : {1, 2, 3, 7, 25, 384, 1536}) {
      for (size_t tiles = 1; tiles <= 300; ++tiles) {
        const int64_t bytes = k_steps * step_bytes;
        std::vector<int> hits(static_cast<size_t>(bytes / 64), 0);
        bool inside = true;
        size_t prefetching = 0;
        for (size_t t = 0; t < tiles; ++t) {
          const clip::PanelPrefetch slice = clip::NextPanelPrefetch(tiles, t, k_steps, step_bytes);
          if (slice.step <= 0) inside = false;
          if (slice.offset < 0) continue;
          ++prefetching;
          int64_t last_line = -1;
          for (int64_t k = 0; k < k_steps; ++k) {
            const int64_t at = slice.offset + k * slice.step;
            if (at < 0 || at >= bytes) {
              inside = false;
              break;
            }
            if (at / 64 != last_line) ++hits[static_cast<size_t>(at / 64)];
            last_line = at / 64;
          }
        }
        const std::string what = "next-panel prefetch, " + std::to_string(tiles) + " tiles, " +
                                 std::to_string(k_steps) + " steps of " + std::to_string(step_bytes) + " bytes";
        Check(inside, what + ": every prefetch inside the next panel");
        if (tiles == 1) {
          Check(prefetching == 0, what + ": a tile alone prefetches only its own panel");
          continue;
        }
        bool every = true;
        int64_t total = 0;
        for (int h : hits) {
          every = every && h >= 1;
          total += h;
        }
        Check(every, what + ": every line of the next panel prefetched");
        // Slices side by side share at most the line where one ends and the next begins.
        Check(total <= static_cast<int64_t>(hits.size() + prefetching - 1),
              what + ": the slices do not overlap (" + std::to_string(total) + " line fetches for " +
                  std::to_string(hits.size()) + " lines)");
      }
    }
  }
}

}  // namespace

int main() {
  try {
    std::cout << "kernel " << (clip::PanelLinearAvailable() ? "available" : "not available") << ", AVX2 "
              << (clip::PanelLinearAvx2Available() ? "available" : "not available") << ", bfloat16 "
              << (clip::PanelLinearBf16Available() ? "available" : "not available") << ", AMX "
              << (clip::PanelLinearAmxAvailable() ? "available" : "not available") << ", int8 "
              << (clip::PanelLinearInt8Available() ? "available" : "not available") << ", int8 AMX "
              << (clip::PanelLinearInt8AmxAvailable() ? "available" : "not available") << std::endl;
    for (const at::ScalarType weights : {at::kFloat, at::kBFloat16}) {
      TestFloat32(32, weights);
      TestFloat32(16, weights);
    }
    TestPanelWidths();
    TestPackedLayouts();
    TestBFloat16();
    TestAmx();
    TestInt8();
    TestInt8Amx();
    TestLinearRows();
    TestMlpRows();
    TestNextPanelPrefetch();
    TestRowGroupBytes();
  } catch (const std::exception& e) {
    Check(false, std::string("unexpected exception: ") + e.what());
  }
  return clip::test::Summary();
}

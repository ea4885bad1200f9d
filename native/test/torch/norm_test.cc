// Standalone test for clip::AddLayerNorm and clip::LayerNorm and the
// TorchScript operators clip_native::add_layer_norm and
// clip_native::layer_norm (cpu_norm.h) against what they stand for,
// aten::add and then aten::layer_norm of its result: the sum bit for bit,
// the norm within float32 rounding (bfloat16: within one unit in the last
// place, the two rounding sums made in different orders). Covers a caption's
// and an image's rows, a batch of images (rows split over the threads), a
// position embedding added to every image (either operand the smaller one,
// with and without a leading 1), rows far from zero and rows of one value
// (variance 0), weights of another type than the activations, and the
// inputs the kernel leaves to aten (not contiguous, widths it does not
// take, mismatched sizes): for each, whether the kernel takes it
// (AddLayerNormKernelApplies) as the CPU says it should. On a CPU without
// AVX-512F (or run with CLIP_NATIVE_MAX_CPU_ISA=avx2) the float32 cases run
// the AVX2 kernel and the bfloat16 ones aten's; without AVX2 + FMA every
// case runs aten's, and all must agree all the same. Prints one line per
// failure, then "N passed, M failed"; exits non-zero on any failure.

#include <ATen/ATen.h>
#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>

#include <cstdint>
#include <iostream>
#include <string>
#include <vector>

#include "../test_check.h"
#include "cpu_norm.h"
#include "one_thread.h"

namespace {

using clip::test::Check;

constexpr double kEps = 1e-5;

std::string Sizes(at::IntArrayRef sizes) {
  std::string s = "[";
  for (size_t i = 0; i < sizes.size(); ++i) s += (i ? ", " : "") + std::to_string(sizes[i]);
  return s + "]";
}

std::string TypeName(at::ScalarType type) { return type == at::kFloat ? "float" : "bfloat16"; }

// The norm within float32 rounding of the reference's (bfloat16: one unit
// in the last place of the larger of the two, or 1e-3 near zero).
void CheckNorm(const at::Tensor& got_in, const at::Tensor& want_in, const std::string& what) {
  if (got_in.sizes() != want_in.sizes() || got_in.scalar_type() != want_in.scalar_type()) {
    Check(false, what + ": sizes or types differ");
    return;
  }
  const at::Tensor got = got_in.to(at::kFloat), want = want_in.to(at::kFloat);
  const at::Tensor error = at::abs(got - want);
  const at::Tensor bound = got_in.scalar_type() == at::kBFloat16 ? at::maximum(at::abs(got), at::abs(want)) / 128 + 1e-3
                                                                 : at::abs(want) * 2e-6 + 2e-6;
  Check(error.numel() == 0 || at::le(error, bound).all().item<bool>(),
        what + ": norm, max abs diff " + (error.numel() ? std::to_string(at::max(error).item<double>()) : "-"));
}

// AddLayerNorm(a, b, weight, bias) against aten, and whether the kernel
// took it (`kernel`).
void CheckCase(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight, const at::Tensor& bias, bool kernel,
               const std::string& name) {
  const std::string what = name + " (" + TypeName(a.scalar_type()) + " " + Sizes(a.sizes()) + " + " + Sizes(b.sizes()) +
                           ", weights " + TypeName(weight.scalar_type()) + ")";
  Check(clip::AddLayerNormKernelApplies(a, b, weight, bias) == kernel,
        what + (kernel ? ": the kernel takes it" : ": left to aten"));
  const at::Tensor want_sum = at::add(a, b);
  const at::Tensor want = at::layer_norm(want_sum, {weight.numel()}, weight, bias, kEps);
  const auto [sum, norm] = clip::AddLayerNorm(a, b, weight, bias, kEps);
  Check(sum.sizes() == want_sum.sizes() && sum.scalar_type() == want_sum.scalar_type() && at::equal(sum, want_sum),
        what + ": the sum bit for bit");
  CheckNorm(norm, want, what);
}

// LayerNorm(x, weight, bias) against aten::layer_norm, and whether the
// kernel took it.
void CheckNormOnly(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, bool kernel,
                   const std::string& name) {
  const std::string what = name + ", LayerNorm alone (" + TypeName(x.scalar_type()) + " " + Sizes(x.sizes()) + ")";
  Check(clip::LayerNormKernelApplies(x, weight, bias) == kernel,
        what + (kernel ? ": the kernel takes it" : ": left to aten"));
  CheckNorm(clip::LayerNorm(x, weight, bias, kEps), at::layer_norm(x, {weight.numel()}, weight, bias, kEps), what);
}

struct Inputs {
  at::Tensor a, b, weight, bias;
};

Inputs Make(std::vector<int64_t> a_sizes, std::vector<int64_t> b_sizes, at::ScalarType type, at::ScalarType weight_type,
            uint64_t seed) {
  auto generator = at::detail::createCPUGenerator(seed);
  const int64_t width = a_sizes.back();
  return {at::randn(a_sizes, generator).to(type), at::randn(b_sizes, generator).to(type),
          (at::randn({width}, generator) * 0.5 + 1).to(weight_type),
          (at::randn({width}, generator) * 0.1).to(weight_type)};
}

void TestShapes() {
  const bool avx512 = clip::AddLayerNormAvailable(at::kBFloat16);
  uint64_t seed = 1;
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    const bool available = clip::AddLayerNormAvailable(type);
    struct Case {
      std::vector<int64_t> a, b;
      const char* name;
    };
    // Captions (7 and 20 rows, packed or in a batch), an image (50 rows),
    // eight images (rows split over the threads), a position embedding for
    // every image, and one row.
    const std::vector<Case> cases = {{{7, 512}, {7, 512}, "a short caption"},
                                     {{1, 20, 512}, {1, 20, 512}, "a caption, batch of 1"},
                                     {{4, 13, 512}, {4, 13, 512}, "four captions"},
                                     {{1, 50, 768}, {1, 50, 768}, "an image"},
                                     {{8, 50, 768}, {8, 50, 768}, "eight images"},
                                     {{400, 1024}, {400, 1024}, "400 rows of 1024"},
                                     {{3, 50, 768}, {50, 768}, "position embedding after the images"},
                                     {{1, 50, 768}, {3, 50, 768}, "position embedding before the images"},
                                     {{3, 50, 768}, {1, 50, 768}, "position embedding with a leading 1"},
                                     {{50, 768}, {1, 50, 768}, "the sum one dimension more than a"},
                                     {{1, 768}, {1, 768}, "one row"}};
    for (const Case& c : cases) {
      const Inputs x = Make(c.a, c.b, type, type, seed++);
      CheckCase(x.a, x.b, x.weight, x.bias, available, c.name);
      CheckNormOnly(x.a, x.weight, x.bias, available, c.name);
    }
    // Weights in float32 under bfloat16 activations.
    if (type == at::kBFloat16) {
      const Inputs x = Make({13, 512}, {13, 512}, type, at::kFloat, seed++);
      CheckCase(x.a, x.b, x.weight, x.bias, available, "float32 weights");
    }
    // A width of 8 (not 16) per vector: only the AVX2 kernel takes it.
    const Inputs narrow = Make({5, 24}, {5, 24}, type, type, seed++);
    CheckCase(narrow.a, narrow.b, narrow.weight, narrow.bias, available && !avx512, "width 24");
    CheckNormOnly(narrow.a, narrow.weight, narrow.bias, available && !avx512, "width 24");
    // What goes to aten: a width of no whole vector, a transposed operand,
    // operands that only broadcast elementwise, a 2-d weight.
    const Inputs odd = Make({6, 100}, {6, 100}, type, type, seed++);
    CheckCase(odd.a, odd.b, odd.weight, odd.bias, false, "width 100");
    CheckNormOnly(odd.a, odd.weight, odd.bias, false, "width 100");
    const Inputs square = Make({64, 64}, {64, 64}, type, type, seed++);
    CheckCase(square.a.t(), square.b, square.weight, square.bias, false, "a transposed");
    CheckNormOnly(square.a.t(), square.weight, square.bias, false, "transposed");
    const Inputs column = Make({6, 64}, {6, 1}, type, type, seed++);
    const at::Tensor wide_column = column.b.expand({6, 64}).contiguous();
    CheckCase(column.a, column.b.expand({6, 64}), column.weight, column.bias, false, "b expanded (not contiguous)");
    CheckCase(column.a, wide_column, column.weight, column.bias, available, "b made contiguous");
    const Inputs rows = Make({6, 64}, {2, 64}, type, type, seed++);
    CheckCase(rows.a, rows.b.narrow(0, 0, 1), rows.weight, rows.bias, available, "one row of b for every row");
  }
}

// Rows far from zero with little spread (a one-pass variance would lose
// all of it there), rows of one value (variance 0: the norm is the bias), large
// values.
void TestValues() {
  const bool available = clip::AddLayerNormAvailable(at::kFloat);
  auto generator = at::detail::createCPUGenerator(7);
  const at::Tensor weight = at::randn({512}, generator), bias = at::randn({512}, generator);
  // There float32 itself limits both: the mean is rounded to a unit of
  // 1000's last place, which the norm scales by 1 / 0.01. So both against the
  // norm in float64 of the same values: the kernel's error at most twice aten's.
  const at::Tensor offset = at::randn({9, 512}, generator) * 1e-2 + 1000;
  Check(clip::AddLayerNormKernelApplies(offset, at::zeros_like(offset), weight, bias) == available,
        "rows near 1000: the kernel takes them");
  const at::Tensor exact =
      at::layer_norm(offset.to(at::kDouble), {512}, weight.to(at::kDouble), bias.to(at::kDouble), kEps);
  const double aten_error =
      at::max(at::abs(at::layer_norm(offset, {512}, weight, bias, kEps).to(at::kDouble) - exact)).item<double>();
  const at::Tensor offset_norm = std::get<1>(clip::AddLayerNorm(offset, at::zeros_like(offset), weight, bias, kEps));
  const double own_error = at::max(at::abs(offset_norm.to(at::kDouble) - exact)).item<double>();
  Check(own_error <= 2 * aten_error + 1e-5, "rows near 1000: error " + std::to_string(own_error) + " against aten's " +
                                                std::to_string(aten_error) + " (float64 the reference)");
  const double alone_error =
      at::max(at::abs(clip::LayerNorm(offset, weight, bias, kEps).to(at::kDouble) - exact)).item<double>();
  Check(alone_error <= 2 * aten_error + 1e-5, "rows near 1000, LayerNorm alone: error " + std::to_string(alone_error));
  const at::Tensor constant = at::full({3, 512}, 2.5f);
  CheckCase(constant, at::full({3, 512}, -1.0f), weight, bias, available, "rows of one value");
  const auto [sum, norm] = clip::AddLayerNorm(constant, at::full({3, 512}, -1.0f), weight, bias, kEps);
  Check(at::allclose(norm, bias.expand({3, 512}), 0, 1e-6), "rows of one value: the norm is the bias");
  const at::Tensor large = at::randn({4, 512}, generator) * 1e4;
  CheckCase(large, large, weight, bias, available, "values near 1e4");
  CheckCase(at::empty({0, 512}), at::empty({0, 512}), weight, bias, available, "no rows");
}

// The same bits on one thread and on several (rows are independent), for
// the sizes that are split over the threads.
void TestThreads() {
  const Inputs x = Make({8, 50, 768}, {8, 50, 768}, at::kFloat, at::kFloat, 42);
  const auto [sum1, norm1] = OnOneThread([&] { return clip::AddLayerNorm(x.a, x.b, x.weight, x.bias, kEps); });
  at::set_num_threads(std::max(2, at::get_num_threads()));
  const auto [sum2, norm2] = clip::AddLayerNorm(x.a, x.b, x.weight, x.bias, kEps);
  Check(at::equal(sum1, sum2) && at::equal(norm1, norm2), "eight images: the same bits on 1 and 2+ threads");
}

// clip_native::add_layer_norm through the dispatcher, as the rewritten
// graphs call it: both outputs, the same bits as AddLayerNorm.
void TestOperator() {
  const auto op = c10::Dispatcher::singleton().findSchemaOrThrow("clip_native::add_layer_norm", "");
  const auto alone = c10::Dispatcher::singleton().findSchemaOrThrow("clip_native::layer_norm", "");
  for (const at::ScalarType type : {at::kFloat, at::kBFloat16}) {
    const Inputs x = Make({2, 13, 512}, {2, 13, 512}, type, type, 5);
    torch::jit::Stack stack{x.a, x.b, x.weight, x.bias, kEps};
    op.callBoxed(&stack);
    const auto [sum, norm] = clip::AddLayerNorm(x.a, x.b, x.weight, x.bias, kEps);
    Check(stack.size() == 2 && at::equal(stack[0].toTensor(), sum) && at::equal(stack[1].toTensor(), norm),
          "clip_native::add_layer_norm (" + TypeName(type) + "): AddLayerNorm's two outputs");
    torch::jit::Stack one{x.a, x.weight, x.bias, kEps};
    alone.callBoxed(&one);
    Check(one.size() == 1 && at::equal(one[0].toTensor(), clip::LayerNorm(x.a, x.weight, x.bias, kEps)),
          "clip_native::layer_norm (" + TypeName(type) + "): LayerNorm's output");
  }
}

}  // namespace

int main() {
  try {
    std::cout << "kernel: float32 " << (clip::AddLayerNormAvailable(at::kFloat) ? "yes" : "no (aten path)")
              << ", bfloat16 " << (clip::AddLayerNormAvailable(at::kBFloat16) ? "yes" : "no (aten path)") << std::endl;
    c10::InferenceMode inference;
    TestShapes();
    TestValues();
    TestThreads();
    TestOperator();
  } catch (const std::exception& e) {
    Check(false, std::string("unexpected exception: ") + e.what());
  }
  return clip::test::Summary();
}

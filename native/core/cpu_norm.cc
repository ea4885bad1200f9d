#include "cpu_norm.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <type_traits>

#include "cpu_features.h"
#include "cpu_simd.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLIP_NORM_KERNEL 1
#endif

namespace clip {
namespace {

#ifdef CLIP_NORM_KERNEL
// Values j..j+15 of a row's sum: with kAdd a + b, stored at `sum` and
// returned as stored (bfloat16: rounded); else a's.
template <bool kAdd, typename T>
__attribute__((target("avx512f"))) inline __m512 RowSum16(const T* a, const T* b, T* sum, int64_t j) {
  if constexpr (!kAdd) {
    return simd::Load16(a + j);
  } else {
    __m512 s = _mm512_add_ps(simd::Load16(a + j), simd::Load16(b + j));
    simd::Store16(sum + j, s);
    if constexpr (std::is_same_v<T, c10::BFloat16>) s = simd::RoundToBFloat16(s);
    return s;
  }
}

// The same for 8 float32 values on AVX2.
template <bool kAdd>
__attribute__((target("avx2"))) inline __m256 RowSum8(const float* a, const float* b, float* sum, int64_t j) {
  if constexpr (!kAdd) {
    return _mm256_loadu_ps(a + j);
  } else {
    const __m256 s = _mm256_add_ps(_mm256_loadu_ps(a + j), _mm256_loadu_ps(b + j));
    _mm256_storeu_ps(sum + j, s);
    return s;
  }
}

// Rows [begin, end) of `width` values: with kAdd, sum = a + b, row r of a
// with row r % b_rows of b (stored as T, and read back as stored, so that a
// bfloat16 sum is normalized as aten normalizes the rounded sum it stored),
// else sum = a (b and `sum` unused); then (sum - mean) / sqrt(var + eps) *
// gamma + beta; the moments from the sums in two passes over a row that
// sits in L1 (for the precision of aten's).
template <bool kAdd, typename T, typename W>
__attribute__((target("avx512f"))) void AddLayerNormRows(const T* a, const T* b, int64_t b_rows, const W* gamma,
                                                         const W* beta, T* sum, T* out, int64_t begin, int64_t end,
                                                         int64_t width, float eps) {
  const float inverse_width = 1.0f / static_cast<float>(width);
  for (int64_t r = begin; r < end; ++r) {
    const T* ar = a + r * width;
    const T* br = kAdd ? b + (r % b_rows) * width : nullptr;
    T* sw = kAdd ? sum + r * width : nullptr;
    const T* sr = kAdd ? sw : ar;
    T* yr = out + r * width;
    __m512 total0 = _mm512_setzero_ps(), total1 = _mm512_setzero_ps();
    int64_t j = 0;
    for (; j + 32 <= width; j += 32) {
      total0 = _mm512_add_ps(total0, RowSum16<kAdd>(ar, br, sw, j));
      total1 = _mm512_add_ps(total1, RowSum16<kAdd>(ar, br, sw, j + 16));
    }
    if (j < width) total0 = _mm512_add_ps(total0, RowSum16<kAdd>(ar, br, sw, j));  // width is a multiple of 16
    const float rough_mean = simd::Sum16(_mm512_add_ps(total0, total1)) * inverse_width;
    const __m512 rough16 = _mm512_set1_ps(rough_mean);
    __m512 offsets = _mm512_setzero_ps(), squares0 = _mm512_setzero_ps(), squares1 = _mm512_setzero_ps();
    for (j = 0; j + 32 <= width; j += 32) {
      const __m512 d0 = _mm512_sub_ps(simd::Load16(sr + j), rough16);
      const __m512 d1 = _mm512_sub_ps(simd::Load16(sr + j + 16), rough16);
      offsets = _mm512_add_ps(offsets, _mm512_add_ps(d0, d1));
      squares0 = _mm512_fmadd_ps(d0, d0, squares0);
      squares1 = _mm512_fmadd_ps(d1, d1, squares1);
    }
    if (j < width) {
      const __m512 d = _mm512_sub_ps(simd::Load16(sr + j), rough16);
      offsets = _mm512_add_ps(offsets, d);
      squares0 = _mm512_fmadd_ps(d, d, squares0);
    }
    // The corrected two-pass moments: the rough mean's rounding (a row's sum
    // can be far larger than its spread) taken out by the offsets' mean.
    const float offset = simd::Sum16(offsets) * inverse_width;
    const float variance =
        std::max(0.0f, simd::Sum16(_mm512_add_ps(squares0, squares1)) * inverse_width - offset * offset);
    const __m512 mean16 = _mm512_set1_ps(rough_mean + offset);
    const __m512 scale = _mm512_set1_ps(1.0f / std::sqrt(variance + eps));
    for (j = 0; j < width; j += 16) {
      const __m512 normed = _mm512_mul_ps(_mm512_sub_ps(simd::Load16(sr + j), mean16), scale);
      simd::Store16(yr + j, _mm512_fmadd_ps(normed, simd::Load16(gamma + j), simd::Load16(beta + j)));
    }
  }
}

// The same on AVX2 + FMA, float32 (width a multiple of 8).
template <bool kAdd>
__attribute__((target("avx2,fma"))) void AddLayerNormRowsAvx2(const float* a, const float* b, int64_t b_rows,
                                                              const float* gamma, const float* beta, float* sum,
                                                              float* out, int64_t begin, int64_t end, int64_t width,
                                                              float eps) {
  const float inverse_width = 1.0f / static_cast<float>(width);
  for (int64_t r = begin; r < end; ++r) {
    const float* ar = a + r * width;
    const float* br = kAdd ? b + (r % b_rows) * width : nullptr;
    float* sw = kAdd ? sum + r * width : nullptr;
    const float* sr = kAdd ? sw : ar;
    float* yr = out + r * width;
    __m256 total0 = _mm256_setzero_ps(), total1 = _mm256_setzero_ps();
    int64_t j = 0;
    for (; j + 16 <= width; j += 16) {
      total0 = _mm256_add_ps(total0, RowSum8<kAdd>(ar, br, sw, j));
      total1 = _mm256_add_ps(total1, RowSum8<kAdd>(ar, br, sw, j + 8));
    }
    if (j < width) total0 = _mm256_add_ps(total0, RowSum8<kAdd>(ar, br, sw, j));  // width is a multiple of 8
    const float rough_mean = simd::Sum8(_mm256_add_ps(total0, total1)) * inverse_width;
    const __m256 rough8 = _mm256_set1_ps(rough_mean);
    __m256 offsets = _mm256_setzero_ps(), squares0 = _mm256_setzero_ps(), squares1 = _mm256_setzero_ps();
    for (j = 0; j + 16 <= width; j += 16) {
      const __m256 d0 = _mm256_sub_ps(_mm256_loadu_ps(sr + j), rough8);
      const __m256 d1 = _mm256_sub_ps(_mm256_loadu_ps(sr + j + 8), rough8);
      offsets = _mm256_add_ps(offsets, _mm256_add_ps(d0, d1));
      squares0 = _mm256_fmadd_ps(d0, d0, squares0);
      squares1 = _mm256_fmadd_ps(d1, d1, squares1);
    }
    if (j < width) {
      const __m256 d = _mm256_sub_ps(_mm256_loadu_ps(sr + j), rough8);
      offsets = _mm256_add_ps(offsets, d);
      squares0 = _mm256_fmadd_ps(d, d, squares0);
    }
    const float offset = simd::Sum8(offsets) * inverse_width;
    const float variance =
        std::max(0.0f, simd::Sum8(_mm256_add_ps(squares0, squares1)) * inverse_width - offset * offset);
    const __m256 mean8 = _mm256_set1_ps(rough_mean + offset);
    const __m256 scale = _mm256_set1_ps(1.0f / std::sqrt(variance + eps));
    for (j = 0; j < width; j += 8) {
      const __m256 normed = _mm256_mul_ps(_mm256_sub_ps(_mm256_loadu_ps(sr + j), mean8), scale);
      _mm256_storeu_ps(yr + j, _mm256_fmadd_ps(normed, _mm256_loadu_ps(gamma + j), _mm256_loadu_ps(beta + j)));
    }
  }
}

// fn(begin, end) over `rows` rows of `width`: on the calling thread below
// kAddLayerNormParallelValues values, else split over the threads.
template <typename Fn>
void ForRows(int64_t rows, int64_t width, const Fn& fn) {
  if (rows * width < kAddLayerNormParallelValues) {
    fn(0, rows);
    return;
  }
  const int64_t grain = std::max<int64_t>(1, kAddLayerNormParallelValues / 4 / width);
  at::parallel_for(0, rows, grain, fn);
}

// The operand whose sizes are the sum's, the other's sizes (leading 1s
// aside) its trailing ones, so that row r of it meets row r % rows of the
// other (either way round: the sum is the same); null if neither is.
const at::Tensor* Wider(const at::Tensor& a, const at::Tensor& b) {
  for (const at::Tensor* wide : {&a, &b}) {
    at::IntArrayRef narrow = (wide == &a ? b : a).sizes();
    if (narrow.size() > wide->sizes().size()) continue;  // the sum would have the other's dimensions
    while (!narrow.empty() && narrow.front() == 1) narrow = narrow.slice(1);
    if (!narrow.empty() && wide->sizes().slice(wide->sizes().size() - narrow.size()) == narrow) return wide;
  }
  return nullptr;
}

// The operand of a and b whose sizes are the sum's when the kernel takes
// them (AddLayerNormKernelApplies), else null.
const at::Tensor* KernelWider(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                              const at::Tensor& bias) {
  const at::ScalarType type = a.scalar_type();
  if (!AddLayerNormAvailable(type) || a.dim() == 0 || b.dim() == 0 || b.scalar_type() != type || !a.device().is_cpu() ||
      !b.device().is_cpu() || !a.is_contiguous() || !b.is_contiguous()) {
    return nullptr;
  }
  const at::Tensor* wider = Wider(a, b);
  const int64_t width = a.size(-1);
  const bool avx512 = GetCpuFeatures().avx512f;
  const bool takes = wider && width > 0 && width % (avx512 ? 16 : 8) == 0 && weight.defined() && bias.defined() &&
                     weight.device().is_cpu() && bias.device().is_cpu() && weight.dim() == 1 && bias.dim() == 1 &&
                     weight.numel() == width && bias.numel() == width && weight.is_floating_point() &&
                     bias.is_floating_point() &&
                     !(at::GradMode::is_enabled() &&
                       (a.requires_grad() || b.requires_grad() || weight.requires_grad() || bias.requires_grad()));
  return takes ? wider : nullptr;
}

// The kernel over a's rows: with b (a's row r with b's row r % b_rows),
// the sum into `sum`; the norm into `out`. The operands as
// AddLayerNormKernelApplies takes them.
void RunKernel(const at::Tensor& a, const at::Tensor* b, const at::Tensor& weight, const at::Tensor& bias, double eps,
               at::Tensor* sum, at::Tensor& out) {
  const at::ScalarType type = a.scalar_type();
  const bool avx512 = GetCpuFeatures().avx512f;
  const int64_t width = a.size(-1);
  const int64_t rows = a.numel() / width;
  const int64_t b_rows = b ? std::max<int64_t>(1, b->numel() / width) : 1;
  const float eps_f = static_cast<float>(eps);
  // Weights of the activations' type as they are; any other type as float32.
  const at::ScalarType weight_type = weight.scalar_type() == type && bias.scalar_type() == type ? type : at::kFloat;
  const at::Tensor gamma = weight.to(weight_type).contiguous();
  const at::Tensor beta = bias.to(weight_type).contiguous();
  auto run = [&](auto* tag, auto* weight_tag) {
    using T = std::remove_pointer_t<decltype(tag)>;
    using W = std::remove_pointer_t<decltype(weight_tag)>;
    const T* ap = a.data_ptr<T>();
    const T* bp = b ? b->data_ptr<T>() : nullptr;
    const W* gp = gamma.data_ptr<W>();
    const W* pp = beta.data_ptr<W>();
    T* sp = sum ? sum->data_ptr<T>() : nullptr;
    T* op = out.data_ptr<T>();
    ForRows(rows, width, [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<T, float> && std::is_same_v<W, float>) {
        if (!avx512) {
          if (b) return AddLayerNormRowsAvx2<true>(ap, bp, b_rows, gp, pp, sp, op, begin, end, width, eps_f);
          return AddLayerNormRowsAvx2<false>(ap, bp, b_rows, gp, pp, sp, op, begin, end, width, eps_f);
        }
      }
      if (b) return AddLayerNormRows<true>(ap, bp, b_rows, gp, pp, sp, op, begin, end, width, eps_f);
      AddLayerNormRows<false>(ap, bp, b_rows, gp, pp, sp, op, begin, end, width, eps_f);
    });
  };
  if (type == at::kFloat) {
    run(static_cast<float*>(nullptr), static_cast<float*>(nullptr));
  } else if (weight_type == at::kBFloat16) {
    run(static_cast<c10::BFloat16*>(nullptr), static_cast<c10::BFloat16*>(nullptr));
  } else {
    run(static_cast<c10::BFloat16*>(nullptr), static_cast<float*>(nullptr));
  }
}
#endif

}  // namespace

bool AddLayerNormAvailable(at::ScalarType dtype) {
#ifdef CLIP_NORM_KERNEL
  const CpuFeatures& cpu = GetCpuFeatures();
  if (dtype == at::kFloat) return cpu.avx512f || (cpu.avx2 && cpu.fma);
  return dtype == at::kBFloat16 && cpu.avx512f;
#else
  (void)dtype;
  return false;
#endif
}

bool AddLayerNormKernelApplies(const at::Tensor& a, const at::Tensor& b, const at::Tensor& weight,
                               const at::Tensor& bias) {
#ifdef CLIP_NORM_KERNEL
  return KernelWider(a, b, weight, bias) != nullptr;
#else
  (void)a, (void)b, (void)weight, (void)bias;
  return false;
#endif
}

std::tuple<at::Tensor, at::Tensor> AddLayerNorm(const at::Tensor& a_in, const at::Tensor& b_in,
                                                const at::Tensor& weight, const at::Tensor& bias, double eps) {
#ifdef CLIP_NORM_KERNEL
  if (const at::Tensor* wider = KernelWider(a_in, b_in, weight, bias)) {
    const at::Tensor& a = *wider;
    const at::Tensor& b = wider == &a_in ? b_in : a_in;
    at::Tensor sum = at::empty_like(a, at::MemoryFormat::Contiguous);
    at::Tensor out = at::empty_like(a, at::MemoryFormat::Contiguous);
    RunKernel(a, &b, weight, bias, eps, &sum, out);
    return {sum, out};
  }
#endif
  at::Tensor sum = at::add(a_in, b_in);
  at::Tensor out = at::layer_norm(sum, {weight.defined() ? weight.numel() : sum.size(-1)}, weight, bias, eps);
  return {sum, out};
}

bool LayerNormKernelApplies(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias) {
  return AddLayerNormKernelApplies(x, x, weight, bias);
}

at::Tensor LayerNorm(const at::Tensor& x, const at::Tensor& weight, const at::Tensor& bias, double eps) {
#ifdef CLIP_NORM_KERNEL
  if (LayerNormKernelApplies(x, weight, bias)) {
    at::Tensor out = at::empty_like(x, at::MemoryFormat::Contiguous);
    RunKernel(x, nullptr, weight, bias, eps, nullptr, out);
    return out;
  }
#endif
  return at::layer_norm(x, {weight.defined() ? weight.numel() : x.size(-1)}, weight, bias, eps);
}

TORCH_LIBRARY_FRAGMENT(clip_native, m) {
  m.def("add_layer_norm(Tensor a, Tensor b, Tensor weight, Tensor bias, float eps) -> (Tensor, Tensor)");
  m.def("layer_norm(Tensor x, Tensor weight, Tensor bias, float eps) -> Tensor");
}

TORCH_LIBRARY_IMPL(clip_native, CPU, m) {
  m.impl("add_layer_norm", &AddLayerNorm);
  m.impl("layer_norm", &LayerNorm);
}

}  // namespace clip

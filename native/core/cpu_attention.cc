#include "cpu_attention.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_features.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLIP_ATTENTION_KERNEL 1
#endif

namespace clip {
namespace {

#ifdef CLIP_ATTENTION_KERNEL
// The sum of the 16 lanes (the zero-masked shuffles: GCC 12 warns of an
// uninitialized value inside its headers for the unmasked ones).
__attribute__((target("avx512f"))) inline float Sum16(__m512 a) {
  a = _mm512_add_ps(a, _mm512_maskz_shuffle_f32x4(0xFFFF, a, a, 0x4E));
  a = _mm512_add_ps(a, _mm512_maskz_shuffle_f32x4(0xFFFF, a, a, 0xB1));
  __m128 x = _mm512_maskz_extractf32x4_ps(0xF, a, 0);
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}

// The largest of the 16 lanes (zero-masked shuffles, as in Sum16).
__attribute__((target("avx512f"))) inline float Max16(__m512 a) {
  a = _mm512_maskz_max_ps(0xFFFF, a, _mm512_maskz_shuffle_f32x4(0xFFFF, a, a, 0x4E));
  a = _mm512_maskz_max_ps(0xFFFF, a, _mm512_maskz_shuffle_f32x4(0xFFFF, a, a, 0xB1));
  __m128 x = _mm512_maskz_extractf32x4_ps(0xF, a, 0);
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}

// 16 values from memory as floats (bfloat16: the upper halves of floats,
// exact; zero-masked, for the same GCC warning as above).
__attribute__((target("avx512f"))) inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) inline __m512 Load16(const c10::BFloat16* p) {
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, wide, 16));
}

// A score as the graph computed it: the product rounded to the tensor's
// type, then scaled (aten::mul computes in float and rounds once more).
inline float Scaled(float dot, float scale, float*) { return dot * scale; }
inline c10::BFloat16 Scaled(float dot, float scale, c10::BFloat16*) {
  return c10::BFloat16(static_cast<float>(c10::BFloat16(dot)) * scale);
}

__attribute__((target("avx512f"))) inline void Store16(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
__attribute__((target("avx512f"))) inline void Store16(c10::BFloat16* p, __m512 x) {
  alignas(64) float lanes[16];
  _mm512_store_ps(lanes, x);
  for (int i = 0; i < 16; ++i) p[i] = c10::BFloat16(lanes[i]);  // round to nearest even
}

// out[i, j] = (sum_d q[i, d] k[j, d]) * scale for one (image, head), and
// -inf for j > i when `causal`: rows of q and k contiguous, `depth` a
// multiple of 16; out contiguous [m, n]. Four rows of k at a time share the
// loads of q's row. The sum is rounded to float before the scaling, as a
// product followed by aten::mul rounds it.
// T is float or c10::BFloat16 (sums in float either way).
template <typename T>
__attribute__((target("avx512f"))) void ScoresOne(const T* q, int64_t q_row, const T* k, int64_t k_row, int64_t m,
                                                  int64_t n, int64_t depth, float scale, bool causal, T* out) {
  for (int64_t i = 0; i < m; ++i) {
    const T* qi = q + i * q_row;
    T* oi = out + i * n;
    // Keys past the query are masked, not computed.
    const int64_t keys = causal ? std::min(n, i + 1) : n;
    int64_t j = 0;
    for (; j + 4 <= keys; j += 4) {
      const T* k0 = k + j * k_row;
      __m512 a0 = _mm512_setzero_ps(), a1 = a0, a2 = a0, a3 = a0;
      for (int64_t d = 0; d < depth; d += 16) {
        const __m512 x = Load16(qi + d);
        a0 = _mm512_fmadd_ps(x, Load16(k0 + d), a0);
        a1 = _mm512_fmadd_ps(x, Load16(k0 + k_row + d), a1);
        a2 = _mm512_fmadd_ps(x, Load16(k0 + 2 * k_row + d), a2);
        a3 = _mm512_fmadd_ps(x, Load16(k0 + 3 * k_row + d), a3);
      }
      oi[j] = Scaled(Sum16(a0), scale, oi);
      oi[j + 1] = Scaled(Sum16(a1), scale, oi);
      oi[j + 2] = Scaled(Sum16(a2), scale, oi);
      oi[j + 3] = Scaled(Sum16(a3), scale, oi);
    }
    for (; j < keys; ++j) {
      const T* kj = k + j * k_row;
      __m512 a = _mm512_setzero_ps();
      for (int64_t d = 0; d < depth; d += 16) a = _mm512_fmadd_ps(Load16(qi + d), Load16(kj + d), a);
      oi[j] = Scaled(Sum16(a), scale, oi);
    }
    for (; j < n; ++j) oi[j] = T(-std::numeric_limits<float>::infinity());
  }
}

// out[i, :] = sum_j w[i, j] v[j, :] for one (image, head): rows of w and v
// contiguous, `width` a multiple of 16 and at most 64; out's rows `out_row`
// apart, each contiguous.
template <typename T>
__attribute__((target("avx512f"))) void WeightedOne(const T* w, int64_t w_row, const T* v, int64_t v_row, int64_t m,
                                                    int64_t n, int64_t width, T* out, int64_t out_row) {
  const int64_t vectors = width / 16;
  for (int64_t i = 0; i < m; ++i) {
    const T* wi = w + i * w_row;
    __m512 acc[4] = {_mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps(), _mm512_setzero_ps()};
    for (int64_t j = 0; j < n; ++j) {
      const __m512 s = _mm512_set1_ps(static_cast<float>(wi[j]));
      const T* vj = v + j * v_row;
      for (int64_t c = 0; c < vectors; ++c) acc[c] = _mm512_fmadd_ps(s, Load16(vj + 16 * c), acc[c]);
    }
    for (int64_t c = 0; c < vectors; ++c) Store16(out + i * out_row + 16 * c, acc[c]);
  }
}

// e^x for x <= 0, to about one ulp (what softmax needs after subtracting the
// row's maximum): x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor
// polynomial (degree 7), times 2^n. Below -87.3 (e^x under float's smallest
// normal) it gives about 1e-38, which no sum of at least 1 notices.
__attribute__((target("avx512f"))) inline __m512 ExpNonPositive(__m512 x) {
  x = _mm512_maskz_max_ps(0xFFFF, x, _mm512_set1_ps(-87.3f));
  const __m512 n = _mm512_maskz_roundscale_ps(0xFFFF, _mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693359375f), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.12194440e-4f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  return _mm512_maskz_scalef_ps(0xFFFF, p, n);
}

// The lanes of the 16 values at j of a row of `count` (the rest masked off).
inline __mmask16 TailMask(int64_t j, int64_t count) {
  const int64_t left = count - j;
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// A row of scores -> its softmax, in place: e^(s - max) times 1 / sum, as
// aten::softmax computes it, for the first `keys` of `n` values; the rest
// (keys masked as later than the query) become 0, as e^-inf does there.
// Rounded to T once, at the end, as aten::softmax of a T tensor rounds.
__attribute__((target("avx512f"))) inline void SoftmaxRow(float* row, int64_t keys, int64_t n) {
  __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < keys; j += 16) {
    top = _mm512_mask_max_ps(top, TailMask(j, keys), top, _mm512_maskz_loadu_ps(TailMask(j, keys), row + j));
  }
  const __m512 row_max = _mm512_set1_ps(Max16(top));
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < keys; j += 16) {
    const __mmask16 lanes = TailMask(j, keys);
    const __m512 e =
        _mm512_maskz_mov_ps(lanes, ExpNonPositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, row + j), row_max)));
    _mm512_mask_storeu_ps(row + j, lanes, e);
    total = _mm512_add_ps(total, e);
  }
  const __m512 inverse = _mm512_set1_ps(1.0f / Sum16(total));
  for (int64_t j = 0; j < keys; j += 16) {
    const __mmask16 lanes = TailMask(j, keys);
    _mm512_mask_storeu_ps(row + j, lanes, _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, row + j), inverse));
  }
  for (int64_t j = keys; j < n; ++j) row[j] = 0.0f;
}
inline void SoftmaxRow(float* row, int64_t keys, int64_t n, float*) { SoftmaxRow(row, keys, n); }
inline void SoftmaxRow(c10::BFloat16* row, int64_t keys, int64_t n, float* widened) {
  for (int64_t j = 0; j < keys; ++j) widened[j] = static_cast<float>(row[j]);
  SoftmaxRow(widened, keys, n);
  for (int64_t j = 0; j < n; ++j) row[j] = c10::BFloat16(widened[j]);
}

// softmax(q k^T * scale [causal]) v for one (image, head): the scores of
// all its rows into `scratch` ([m, n] of T), their softmax in place, then
// the weighted sum of v's rows, as ScoresOne, aten::softmax and WeightedOne
// compute them, but as one operator and one parallel region, and without
// the scores and weights of every head in memory. (A query row at a time,
// scores, softmax and weighted sum together, was 6% slower for 8 images:
// k's and v's rows, 9 KiB apart in the QKV projection's output, fall into
// the same few L1 sets, and together they no longer fit there.)
template <typename T>
__attribute__((target("avx512f"))) void AttentionOne(const T* q, int64_t q_row, const T* k, int64_t k_row, const T* v,
                                                     int64_t v_row, int64_t m, int64_t n, int64_t depth, int64_t width,
                                                     float scale, bool causal, T* scratch, T* out, int64_t out_row) {
  ScoresOne(q, q_row, k, k_row, m, n, depth, scale, causal, scratch);
  alignas(64) float widened[kMaxAttentionRows];
  for (int64_t i = 0; i < m; ++i) SoftmaxRow(scratch + i * n, causal ? std::min(n, i + 1) : n, n, widened);
  WeightedOne(scratch, n, v, v_row, m, n, width, out, out_row);
}
#endif

}  // namespace

bool AttentionMatmulAvailable() {
#ifdef CLIP_ATTENTION_KERNEL
  return GetCpuFeatures().avx512f;
#else
  return false;
#endif
}

bool AttentionMatmulByRule() { return AttentionMatmulAvailable() && !(GetCpuFeatures().intel && at::hasMKL()); }

namespace {

// Best of five timings of `run` after three warm-ups, in microseconds.
template <typename Run>
double BestMicroseconds(const Run& run) {
  for (int i = 0; i < 3; ++i) run();
  double best = 1e300;
  for (int i = 0; i < 5; ++i) {
    const auto start = std::chrono::steady_clock::now();
    run();
    best = std::min(best, std::chrono::duration<double, std::micro>(std::chrono::steady_clock::now() - start).count());
  }
  return best;
}

}  // namespace

AttentionMatmulTimings MeasureAttentionMatmul(at::ScalarType dtype) {
  AttentionMatmulTimings timings;
  if (!AttentionMatmulAvailable()) return timings;
  at::NoGradGuard no_grad;
  auto generator = at::detail::createCPUGenerator(/*seed_val=*/7);
  // bfloat16 graphs take the kernel in the text encoder only.
  const std::vector<int64_t> shapes = dtype == at::kBFloat16 ? std::vector<int64_t>{8} : std::vector<int64_t>{50, 8};
  for (int64_t tokens : shapes) {
    // q, k and v as the exported graphs lay them out: views into the QKV
    // projection's output [batch, tokens, 3 * heads * 64].
    const at::Tensor qkv = at::randn({1, tokens, 3, 12, 64}, generator).to(dtype).permute({2, 0, 3, 1, 4});
    const at::Tensor q = qkv[0], k = qkv[1].transpose(-1, -2), v = qkv[2];
    // Alternated, so that a change of machine speed meets both alike.
    double kernel = 1e300, aten = 1e300;
    for (int round = 0; round < 2; ++round) {
      kernel = std::min(kernel, BestMicroseconds([&] { Attention(q, k, v, 0.125); }));
      aten =
          std::min(aten, BestMicroseconds([&] { at::matmul(at::softmax(at::mul(at::matmul(q, k), 0.125), -1), v); }));
    }
    timings.kernel_us += kernel;
    timings.aten_us += aten;
  }
  return timings;
}

namespace {

// What the graph computed without the kernel: the product, scaled, with
// the causal mask of `causal_length` (triu(ones(L, L), 1)) filled with -inf.
at::Tensor ReferenceAttentionMatmul(const at::Tensor& a, const at::Tensor& b, double scale, int64_t causal_length) {
  at::Tensor out = at::matmul(a, b);
  if (scale != 1.0) out = at::mul(out, scale);
  if (causal_length >= 0) {
    const at::Tensor future = at::ones({causal_length, causal_length}, out.options().dtype(at::kBool)).triu(1);
    out = at::masked_fill(out, future, -std::numeric_limits<double>::infinity());
  }
  return out;
}

#ifdef CLIP_ATTENTION_KERNEL
// Whether the kernels take these operands' types and storage: float32 or
// bfloat16 alike, strided CPU tensors, no autograd.
bool KernelOperands(std::initializer_list<const at::Tensor*> operands) {
  const at::ScalarType type = (*operands.begin())->scalar_type();
  if (type != at::kFloat && type != at::kBFloat16) return false;
  for (const at::Tensor* t : operands) {
    if (t->scalar_type() != type || !t->device().is_cpu() || t->layout() != at::kStrided || t->requires_grad()) {
      return false;
    }
  }
  return true;
}
#endif

}  // namespace

at::Tensor AttentionMatmul(const at::Tensor& a, const at::Tensor& b, double scale, int64_t causal_length) {
#ifdef CLIP_ATTENTION_KERNEL
  const bool shapes = a.dim() == 4 && b.dim() == 4 && a.size(0) == b.size(0) && a.size(1) == b.size(1) &&
                      a.size(3) == b.size(2) && a.size(2) <= kMaxAttentionRows && a.numel() > 0 && b.numel() > 0;
  if (shapes && KernelOperands({&a, &b}) && a.stride(3) == 1 && AttentionMatmulAvailable()) {
    const int64_t batch = a.size(0), heads = a.size(1), m = a.size(2), depth = a.size(3), n = b.size(3);
    // Scores: b is k^T, k's rows (b's columns) contiguous. The causal mask
    // is applied here only when it covers the scores exactly.
    const bool causal = causal_length >= 0;
    const bool scores = b.stride(2) == 1 && depth % 16 == 0 && n <= kMaxAttentionRows &&
                        (!causal || (causal_length == m && causal_length == n));
    // Weighted sum (neither scaled nor masked): b's rows contiguous, at most
    // four vectors wide.
    const bool weighted =
        !scores && scale == 1.0 && !causal && b.stride(3) == 1 && n % 16 == 0 && n <= 64 && depth <= kMaxAttentionRows;
    if (scores || weighted) {
      // The weighted sum is written as [batch, m, heads, n] and returned as
      // its [batch, heads, m, n] view: the graph's transpose(1, 2) and
      // reshape to [batch, m, heads * n] that follow then copy nothing.
      at::Tensor out = scores ? at::empty({batch, heads, m, n}, a.options())
                              : at::empty({batch, m, heads, n}, a.options()).permute({0, 2, 1, 3});
      const int64_t a0 = a.stride(0), a1 = a.stride(1), a_row = a.stride(2);
      const int64_t b0 = b.stride(0), b1 = b.stride(1);
      const int64_t o0 = out.stride(0), o1 = out.stride(1), o_row = out.stride(2);
      const float scale_f = static_cast<float>(scale);
      auto run = [&](auto* ap, auto* bp, auto* op) {
        at::parallel_for(0, batch * heads, 1, [&](int64_t first, int64_t last) {
          for (int64_t bh = first; bh < last; ++bh) {
            const int64_t i = bh / heads, h = bh % heads;
            const auto* x = ap + i * a0 + h * a1;
            const auto* y = bp + i * b0 + h * b1;
            auto* o = op + i * o0 + h * o1;
            if (scores) {
              ScoresOne(x, a_row, y, b.stride(3), m, n, depth, scale_f, causal, o);
            } else {
              WeightedOne(x, a_row, y, b.stride(2), m, depth, n, o, o_row);
            }
          }
        });
      };
      if (a.scalar_type() == at::kFloat) {
        run(a.data_ptr<float>(), b.data_ptr<float>(), out.data_ptr<float>());
      } else {
        run(a.data_ptr<c10::BFloat16>(), b.data_ptr<c10::BFloat16>(), out.data_ptr<c10::BFloat16>());
      }
      return out;
    }
  }
#endif
  return ReferenceAttentionMatmul(a, b, scale, causal_length);
}

at::Tensor Attention(const at::Tensor& q, const at::Tensor& k_t, const at::Tensor& v, double scale,
                     int64_t causal_length) {
#ifdef CLIP_ATTENTION_KERNEL
  const bool shapes = q.dim() == 4 && k_t.dim() == 4 && v.dim() == 4 && q.size(0) == k_t.size(0) &&
                      q.size(0) == v.size(0) && q.size(1) == k_t.size(1) && q.size(1) == v.size(1) &&
                      q.size(3) == k_t.size(2) && k_t.size(3) == v.size(2) && q.numel() > 0 && k_t.numel() > 0 &&
                      v.numel() > 0 && q.size(2) <= kMaxAttentionRows && v.size(2) <= kMaxAttentionRows &&
                      q.size(3) % 16 == 0 && v.size(3) % 16 == 0 && v.size(3) <= 64 &&
                      (causal_length < 0 || (causal_length == q.size(2) && causal_length == v.size(2)));
  if (shapes && KernelOperands({&q, &k_t, &v}) && q.stride(3) == 1 && k_t.stride(2) == 1 && v.stride(3) == 1 &&
      AttentionMatmulAvailable()) {
    const int64_t batch = q.size(0), heads = q.size(1), m = q.size(2), depth = q.size(3);
    const int64_t n = v.size(2), width = v.size(3);
    // Written as [batch, m, heads, width], as AttentionMatmul writes the
    // weighted sum.
    at::Tensor out = at::empty({batch, m, heads, width}, q.options()).permute({0, 2, 1, 3});
    const float scale_f = static_cast<float>(scale);
    auto run = [&](auto* qp, auto* kp, auto* vp, auto* op) {
      using T = std::remove_pointer_t<decltype(op)>;
      at::parallel_for(0, batch * heads, 1, [&](int64_t first, int64_t last) {
        std::vector<T> scratch(static_cast<size_t>(m * n));
        for (int64_t bh = first; bh < last; ++bh) {
          const int64_t i = bh / heads, h = bh % heads;
          AttentionOne(qp + i * q.stride(0) + h * q.stride(1), q.stride(2), kp + i * k_t.stride(0) + h * k_t.stride(1),
                       k_t.stride(3), vp + i * v.stride(0) + h * v.stride(1), v.stride(2), m, n, depth, width, scale_f,
                       causal_length >= 0, scratch.data(), op + i * out.stride(0) + h * out.stride(1), out.stride(2));
        }
      });
    };
    if (q.scalar_type() == at::kFloat) {
      run(q.data_ptr<float>(), k_t.data_ptr<float>(), v.data_ptr<float>(), out.data_ptr<float>());
    } else {
      run(q.data_ptr<c10::BFloat16>(), k_t.data_ptr<c10::BFloat16>(), v.data_ptr<c10::BFloat16>(),
          out.data_ptr<c10::BFloat16>());
    }
    return out;
  }
#endif
  return AttentionMatmul(at::softmax(AttentionMatmul(q, k_t, scale, causal_length), -1), v);
}

TORCH_LIBRARY_FRAGMENT(clip_native, m) {
  m.def("attention_matmul(Tensor a, Tensor b, float scale=1., int causal_length=-1) -> Tensor");
  m.def("attention(Tensor q, Tensor k_t, Tensor v, float scale=1., int causal_length=-1) -> Tensor");
}

TORCH_LIBRARY_IMPL(clip_native, CPU, m) {
  m.impl("attention_matmul", &AttentionMatmul);
  m.impl("attention", &Attention);
}

}  // namespace clip

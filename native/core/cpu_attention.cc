#include "cpu_attention.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <initializer_list>
#include <limits>
#include <type_traits>
#include <vector>

#include "cpu_features.h"
#include "cpu_simd.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLIP_ATTENTION_KERNEL 1
#endif

namespace clip {
namespace {

#ifdef CLIP_ATTENTION_KERNEL
// The largest of the 16 lanes (zero-masked shuffles, as in Sum16).
__attribute__((target("avx512f"))) inline float Max16(__m512 a) {
  a = _mm512_maskz_max_ps(0xFFFF, a, _mm512_maskz_shuffle_f32x4(0xFFFF, a, a, 0x4E));
  a = _mm512_maskz_max_ps(0xFFFF, a, _mm512_maskz_shuffle_f32x4(0xFFFF, a, a, 0xB1));
  __m128 x = _mm512_maskz_extractf32x4_ps(0xF, a, 0);
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}

using simd::Load16;
using simd::Store16;
using simd::Sum16;
using simd::Sum8;

// `rows` rows of `cols` values of T (rows `src_row` apart) as contiguous
// float rows.
template <typename T>
__attribute__((target("avx512f"))) void WidenRows(const T* src, int64_t src_row, int64_t rows, int64_t cols,
                                                  float* dst) {
  for (int64_t r = 0; r < rows; ++r) {
    int64_t c = 0;
    for (; c + 16 <= cols; c += 16) _mm512_storeu_ps(dst + r * cols + c, Load16(src + r * src_row + c));
    for (; c < cols; ++c) dst[r * cols + c] = static_cast<float>(src[r * src_row + c]);
  }
}

// k's n rows of `depth` values (rows `k_row` apart) as k^T in floats:
// kt[d * keys + j] = k[j, d], keys = n rounded up to 16, zero past n. The
// scores then take 16 keys per vector and need no horizontal sums.
template <typename T>
__attribute__((target("avx512f"))) void PackKeys(const T* k, int64_t k_row, int64_t n, int64_t depth, int64_t keys,
                                                 float* kt) {
  for (int64_t j0 = 0; j0 < n; j0 += 16) {
    const int64_t rows = std::min<int64_t>(16, n - j0);
    for (int64_t d0 = 0; d0 < depth; d0 += 16) {
      __m512 r[16];
      for (int64_t t = 0; t < 16; ++t) r[t] = t < rows ? Load16(k + (j0 + t) * k_row + d0) : _mm512_setzero_ps();
      simd::Transpose16(r);
      for (int64_t t = 0; t < 16; ++t) _mm512_storeu_ps(kt + (d0 + t) * keys + j0, r[t]);
    }
  }
}

// The register tile of both products: acc[r][c] = sum over i < inner of
// a[r * a_row + i] * b[i * b_row + 16 c, +16), R rows of the result by NV
// vectors of 16 columns (at most 6 x 4: 24 accumulators, the operand vectors
// and a broadcast in AVX-512's 32 registers), each product an FMA of a
// broadcast element of a and a vector of b's row i.
template <int R, int NV>
__attribute__((target("avx512f"), always_inline)) inline void TileProducts(const float* a, int64_t a_row,
                                                                           const float* b, int64_t b_row, int64_t inner,
                                                                           __m512 (&acc)[R][NV]) {
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_setzero_ps();
  for (int64_t i = 0; i < inner; ++i) {
    __m512 row[NV];
    for (int c = 0; c < NV; ++c) row[c] = _mm512_loadu_ps(b + i * b_row + 16 * c);
    for (int r = 0; r < R; ++r) {
      const __m512 x = _mm512_set1_ps(a[r * a_row + i]);
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm512_fmadd_ps(x, row[c], acc[r][c]);
    }
  }
}

// Scores of R query rows against NV * 16 keys: s[r, c] = (q[r, :] . kt[:, c])
// * scale, the sum rounded to float (bfloat16 operands: to bfloat16) before
// the scaling and after it, as a product followed by aten::mul rounds.
template <int R, int NV, bool kBFloat16>
__attribute__((target("avx512f"))) void ScoresTile(const float* q, int64_t q_row, const float* kt, int64_t keys,
                                                   int64_t depth, float scale, float* s, int64_t s_row) {
  __m512 acc[R][NV];
  TileProducts<R, NV>(q, q_row, kt, keys, depth, acc);
  const __m512 factor = _mm512_set1_ps(scale);
  for (int r = 0; r < R; ++r) {
    for (int c = 0; c < NV; ++c) {
      __m512 x = acc[r][c];
      if (kBFloat16)
        x = simd::RoundToBFloat16(_mm512_mul_ps(simd::RoundToBFloat16(x), factor));
      else
        x = _mm512_mul_ps(x, factor);
      _mm512_storeu_ps(s + r * s_row + 16 * c, x);
    }
  }
}

// Weighted sums of R rows: out[r, :] = sum_j w[r, j] v[j, :] over j < n,
// NV * 16 columns, stored as T.
template <int R, int NV, typename T>
__attribute__((target("avx512f"))) void WeightedTile(const float* w, int64_t w_row, const float* v, int64_t v_row,
                                                     int64_t n, T* out, int64_t out_row) {
  __m512 acc[R][NV];
  TileProducts<R, NV>(w, w_row, v, v_row, n, acc);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) Store16(out + r * out_row + 16 * c, acc[r][c]);
}

constexpr int kTileRows = 6;
constexpr int kTileVectors = 4;

// Calls tile<R, NV>() for the run-time rows (1..6) and vectors (1..4).
template <int R, typename Tile>
__attribute__((always_inline)) inline void WithVectors(int vectors, const Tile& tile) {
  switch (vectors) {
    case 1:
      tile(std::integral_constant<int, R>{}, std::integral_constant<int, 1>{});
      break;
    case 2:
      tile(std::integral_constant<int, R>{}, std::integral_constant<int, 2>{});
      break;
    case 3:
      tile(std::integral_constant<int, R>{}, std::integral_constant<int, 3>{});
      break;
    default:
      tile(std::integral_constant<int, R>{}, std::integral_constant<int, 4>{});
      break;
  }
}
template <typename Tile>
__attribute__((always_inline)) inline void WithShape(int rows, int vectors, const Tile& tile) {
  switch (rows) {
    case 1:
      WithVectors<1>(vectors, tile);
      break;
    case 2:
      WithVectors<2>(vectors, tile);
      break;
    case 3:
      WithVectors<3>(vectors, tile);
      break;
    case 4:
      WithVectors<4>(vectors, tile);
      break;
    case 5:
      WithVectors<5>(vectors, tile);
      break;
    default:
      WithVectors<6>(vectors, tile);
      break;
  }
}

// Scores of one (image, head) into s ([m, keys] floats, keys = n rounded
// up to 16): q's rows as floats, kt from PackKeys. With `causal`, the
// columns past a tile's last row are not computed (the caller masks them).
template <bool kBFloat16>
__attribute__((target("avx512f"))) void Scores(const float* q, int64_t q_row, const float* kt, int64_t m, int64_t n,
                                               int64_t depth, float scale, bool causal, float* s) {
  const int64_t keys = (n + 15) / 16 * 16;
  for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - i0));
    const int64_t needed = causal ? std::min(n, i0 + rows) : n;
    for (int64_t j0 = 0; j0 < needed; j0 += 16 * kTileVectors) {
      const int vectors = static_cast<int>(std::min<int64_t>(kTileVectors, (needed - j0 + 15) / 16));
      WithShape(rows, vectors, [&](auto r, auto nv) {
        ScoresTile<decltype(r)::value, decltype(nv)::value, kBFloat16>(q + i0 * q_row, q_row, kt + j0, keys, depth,
                                                                       scale, s + i0 * keys + j0, keys);
      });
    }
  }
}

// Weighted sums of one (image, head): out[i, :] = sum_j w[i, j] v[j, :]
// over j < n (with `causal`, over j <= i: the weights past the query are 0),
// `width` a multiple of 16 and at most 64.
template <typename T>
__attribute__((target("avx512f"))) void Weighted(const float* w, int64_t w_row, const float* v, int64_t v_row,
                                                 int64_t m, int64_t n, int64_t width, bool causal, T* out,
                                                 int64_t out_row) {
  const int vectors = static_cast<int>(width / 16);
  for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - i0));
    const int64_t summed = causal ? std::min(n, i0 + rows) : n;
    WithShape(rows, vectors, [&](auto r, auto nv) {
      WeightedTile<decltype(r)::value, decltype(nv)::value>(w + i0 * w_row, w_row, v, v_row, summed, out + i0 * out_row,
                                                            out_row);
    });
  }
}

// Per-thread scratch for one (image, head) at a time, in floats.
struct Scratch {
  std::vector<float> kt, scores, q, v;
};

// A row of scores -> its softmax, in place: e^(s - max) times 1 / sum, as
// aten::softmax computes it, for the first `keys` of `n` values; the rest
// (keys masked as later than the query) become 0, as e^-inf does there.
__attribute__((target("avx512f"))) inline void SoftmaxRow(float* row, int64_t keys, int64_t n) {
  __m512 top = _mm512_set1_ps(-std::numeric_limits<float>::infinity());
  for (int64_t j = 0; j < keys; j += 16) {
    top =
        _mm512_mask_max_ps(top, simd::TailMask(j, keys), top, _mm512_maskz_loadu_ps(simd::TailMask(j, keys), row + j));
  }
  const __m512 row_max = _mm512_set1_ps(Max16(top));
  __m512 total = _mm512_setzero_ps();
  for (int64_t j = 0; j < keys; j += 16) {
    const __mmask16 lanes = simd::TailMask(j, keys);
    const __m512 e =
        _mm512_maskz_mov_ps(lanes, simd::ExpNonPositive(_mm512_sub_ps(_mm512_maskz_loadu_ps(lanes, row + j), row_max)));
    _mm512_mask_storeu_ps(row + j, lanes, e);
    total = _mm512_add_ps(total, e);
  }
  const __m512 inverse = _mm512_set1_ps(1.0f / Sum16(total));
  for (int64_t j = 0; j < keys; j += 16) {
    const __mmask16 lanes = simd::TailMask(j, keys);
    _mm512_mask_storeu_ps(row + j, lanes, _mm512_mul_ps(_mm512_maskz_loadu_ps(lanes, row + j), inverse));
  }
  for (int64_t j = keys; j < n; ++j) row[j] = 0.0f;
}
// The first n values of a row rounded to bfloat16, kept as floats.
__attribute__((target("avx512f"))) inline void RoundRowToBFloat16(float* row, int64_t n) {
  for (int64_t j = 0; j < n; j += 16) {
    const __mmask16 lanes = simd::TailMask(j, n);
    _mm512_mask_storeu_ps(row + j, lanes, simd::RoundToBFloat16(_mm512_maskz_loadu_ps(lanes, row + j)));
  }
}

// Rows of T as the tiles take them: float32 rows in place, bfloat16 ones
// widened into `scratch`.
struct FloatRows {
  const float* data;
  int64_t row;
};
inline FloatRows AsFloatRows(const float* src, int64_t src_row, int64_t, int64_t, std::vector<float>&) {
  return {src, src_row};
}
inline FloatRows AsFloatRows(const c10::BFloat16* src, int64_t src_row, int64_t rows, int64_t cols,
                             std::vector<float>& scratch) {
  scratch.resize(static_cast<size_t>(rows * cols));
  WidenRows(src, src_row, rows, cols, scratch.data());
  return {scratch.data(), cols};
}

// The scaled (and, with `causal`, masked) scores of one (image, head) into
// s.scores as [m, keys] floats, keys = n rounded up to 16; returns keys.
template <typename T>
__attribute__((target("avx512f"))) int64_t ScoresOne(const T* q, int64_t q_row, const T* k, int64_t k_row, int64_t m,
                                                     int64_t n, int64_t depth, float scale, bool causal, Scratch& s) {
  const int64_t keys = (n + 15) / 16 * 16;
  s.kt.resize(static_cast<size_t>(depth * keys));
  PackKeys(k, k_row, n, depth, keys, s.kt.data());
  const FloatRows qf = AsFloatRows(q, q_row, m, depth, s.q);
  s.scores.resize(static_cast<size_t>(m * keys));
  Scores<std::is_same_v<T, c10::BFloat16>>(qf.data, qf.row, s.kt.data(), m, n, depth, scale, causal, s.scores.data());
  return keys;
}

// softmax(q k^T * scale [causal]) v for one (image, head): the scores of
// all its rows into the scratch, their softmax in place, then the weighted
// sum of v's rows, as the scores product, aten::softmax and the weighted
// sum's product compute them (bfloat16: scores, weights and sums rounded
// where those round), but as one operator and one parallel region, and
// without the scores and weights of every head in memory. (A query row at
// a time, scores, softmax and weighted sum together, was 6% slower for 8
// images: k's and v's rows, 9 KiB apart in the QKV projection's output,
// fall into the same few L1 sets, and together they no longer fit there.)
template <typename T>
__attribute__((target("avx512f"))) void AttentionOne(const T* q, int64_t q_row, const T* k, int64_t k_row, const T* v,
                                                     int64_t v_row, int64_t m, int64_t n, int64_t depth, int64_t width,
                                                     float scale, bool causal, Scratch& s, T* out, int64_t out_row) {
  const int64_t keys = ScoresOne(q, q_row, k, k_row, m, n, depth, scale, causal, s);
  for (int64_t i = 0; i < m; ++i) {
    float* row = s.scores.data() + i * keys;
    SoftmaxRow(row, causal ? std::min(n, i + 1) : n, n);
    if (std::is_same_v<T, c10::BFloat16>) RoundRowToBFloat16(row, n);
  }
  const FloatRows vf = AsFloatRows(v, v_row, n, width, s.v);
  Weighted(s.scores.data(), keys, vf.data, vf.row, m, n, width, causal, out, out_row);
}

// The float32 kernel on AVX2 + FMA (CPUs without AVX-512): the same steps
// on 8-lane registers. Keys are packed in rounds of 8, tiles are up to 6
// rows by 2 vectors (16 columns: 12 accumulators, the operand vectors and a
// broadcast in AVX2's 16 registers).

__attribute__((target("avx2"))) inline float Max8(__m256 a) {
  __m128 x = _mm_max_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  x = _mm_max_ps(x, _mm_movehl_ps(x, x));
  x = _mm_max_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}

// PackKeys with keys rounded up to 8 (depth a multiple of 8).
__attribute__((target("avx2"))) void PackKeysAvx2(const float* k, int64_t k_row, int64_t n, int64_t depth, int64_t keys,
                                                  float* kt) {
  for (int64_t j0 = 0; j0 < n; j0 += 8) {
    const int64_t rows = std::min<int64_t>(8, n - j0);
    for (int64_t d0 = 0; d0 < depth; d0 += 8) {
      __m256 r[8];
      for (int64_t t = 0; t < 8; ++t)
        r[t] = t < rows ? _mm256_loadu_ps(k + (j0 + t) * k_row + d0) : _mm256_setzero_ps();
      simd::Transpose8(r);
      for (int64_t t = 0; t < 8; ++t) _mm256_storeu_ps(kt + (d0 + t) * keys + j0, r[t]);
    }
  }
}

template <int R, int NV>
__attribute__((target("avx2,fma"), always_inline)) inline void TileProductsAvx2(const float* a, int64_t a_row,
                                                                                const float* b, int64_t b_row,
                                                                                int64_t inner, __m256 (&acc)[R][NV]) {
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) acc[r][c] = _mm256_setzero_ps();
  for (int64_t i = 0; i < inner; ++i) {
    __m256 row[NV];
    for (int c = 0; c < NV; ++c) row[c] = _mm256_loadu_ps(b + i * b_row + 8 * c);
    for (int r = 0; r < R; ++r) {
      const __m256 x = _mm256_broadcast_ss(a + r * a_row + i);
      for (int c = 0; c < NV; ++c) acc[r][c] = _mm256_fmadd_ps(x, row[c], acc[r][c]);
    }
  }
}

template <int R, int NV>
__attribute__((target("avx2,fma"))) void ScoresTileAvx2(const float* q, int64_t q_row, const float* kt, int64_t keys,
                                                        int64_t depth, float scale, float* s, int64_t s_row) {
  __m256 acc[R][NV];
  TileProductsAvx2<R, NV>(q, q_row, kt, keys, depth, acc);
  const __m256 factor = _mm256_set1_ps(scale);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) _mm256_storeu_ps(s + r * s_row + 8 * c, _mm256_mul_ps(acc[r][c], factor));
}

template <int R, int NV>
__attribute__((target("avx2,fma"))) void WeightedTileAvx2(const float* w, int64_t w_row, const float* v, int64_t v_row,
                                                          int64_t n, float* out, int64_t out_row) {
  __m256 acc[R][NV];
  TileProductsAvx2<R, NV>(w, w_row, v, v_row, n, acc);
  for (int r = 0; r < R; ++r)
    for (int c = 0; c < NV; ++c) _mm256_storeu_ps(out + r * out_row + 8 * c, acc[r][c]);
}

// Calls tile<R, NV>() for the run-time rows (1..6) and vectors (1..2).
template <int R, typename Tile>
__attribute__((always_inline)) inline void WithVectorsAvx2(int vectors, const Tile& tile) {
  if (vectors == 1) {
    tile(std::integral_constant<int, R>{}, std::integral_constant<int, 1>{});
  } else {
    tile(std::integral_constant<int, R>{}, std::integral_constant<int, 2>{});
  }
}
template <typename Tile>
__attribute__((always_inline)) inline void WithShapeAvx2(int rows, int vectors, const Tile& tile) {
  switch (rows) {
    case 1:
      WithVectorsAvx2<1>(vectors, tile);
      break;
    case 2:
      WithVectorsAvx2<2>(vectors, tile);
      break;
    case 3:
      WithVectorsAvx2<3>(vectors, tile);
      break;
    case 4:
      WithVectorsAvx2<4>(vectors, tile);
      break;
    case 5:
      WithVectorsAvx2<5>(vectors, tile);
      break;
    default:
      WithVectorsAvx2<6>(vectors, tile);
      break;
  }
}

constexpr int kTileVectorsAvx2 = 2;

// Scores as Scores computes them (float32), into [m, keys], keys = n
// rounded up to 8.
__attribute__((target("avx2,fma"))) void ScoresAvx2(const float* q, int64_t q_row, const float* kt, int64_t m,
                                                    int64_t n, int64_t depth, float scale, bool causal, float* s) {
  const int64_t keys = (n + 7) / 8 * 8;
  for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - i0));
    const int64_t needed = causal ? std::min(n, i0 + rows) : n;
    for (int64_t j0 = 0; j0 < needed; j0 += 8 * kTileVectorsAvx2) {
      const int vectors = static_cast<int>(std::min<int64_t>(kTileVectorsAvx2, (needed - j0 + 7) / 8));
      WithShapeAvx2(rows, vectors, [&](auto r, auto nv) {
        ScoresTileAvx2<decltype(r)::value, decltype(nv)::value>(q + i0 * q_row, q_row, kt + j0, keys, depth, scale,
                                                                s + i0 * keys + j0, keys);
      });
    }
  }
}

// Weighted as Weighted computes it (float32), 16 columns at a time.
__attribute__((target("avx2,fma"))) void WeightedAvx2(const float* w, int64_t w_row, const float* v, int64_t v_row,
                                                      int64_t m, int64_t n, int64_t width, bool causal, float* out,
                                                      int64_t out_row) {
  for (int64_t i0 = 0; i0 < m; i0 += kTileRows) {
    const int rows = static_cast<int>(std::min<int64_t>(kTileRows, m - i0));
    const int64_t summed = causal ? std::min(n, i0 + rows) : n;
    for (int64_t c0 = 0; c0 < width; c0 += 8 * kTileVectorsAvx2) {
      WithShapeAvx2(rows, kTileVectorsAvx2, [&](auto r, auto nv) {
        WeightedTileAvx2<decltype(r)::value, decltype(nv)::value>(w + i0 * w_row, w_row, v + c0, v_row, summed,
                                                                  out + i0 * out_row + c0, out_row);
      });
    }
  }
}

// SoftmaxRow on 8 lanes.
__attribute__((target("avx2,fma"))) inline void SoftmaxRowAvx2(float* row, int64_t keys, int64_t n) {
  const __m256 lowest = _mm256_set1_ps(-std::numeric_limits<float>::infinity());
  __m256 top = lowest;
  for (int64_t j = 0; j < keys; j += 8) {
    const __m256i lanes = simd::TailMask8(j, keys);
    top = _mm256_max_ps(top, _mm256_blendv_ps(lowest, _mm256_maskload_ps(row + j, lanes), _mm256_castsi256_ps(lanes)));
  }
  const __m256 row_max = _mm256_set1_ps(Max8(top));
  __m256 total = _mm256_setzero_ps();
  for (int64_t j = 0; j < keys; j += 8) {
    const __m256i lanes = simd::TailMask8(j, keys);
    const __m256 e = _mm256_and_ps(simd::ExpNonPositive(_mm256_sub_ps(_mm256_maskload_ps(row + j, lanes), row_max)),
                                   _mm256_castsi256_ps(lanes));
    _mm256_maskstore_ps(row + j, lanes, e);
    total = _mm256_add_ps(total, e);
  }
  const __m256 inverse = _mm256_set1_ps(1.0f / Sum8(total));
  for (int64_t j = 0; j < keys; j += 8) {
    const __m256i lanes = simd::TailMask8(j, keys);
    _mm256_maskstore_ps(row + j, lanes, _mm256_mul_ps(_mm256_maskload_ps(row + j, lanes), inverse));
  }
  for (int64_t j = keys; j < n; ++j) row[j] = 0.0f;
}

// ScoresOne on AVX2 (float32): returns keys (n rounded up to 8).
int64_t ScoresOneAvx2(const float* q, int64_t q_row, const float* k, int64_t k_row, int64_t m, int64_t n, int64_t depth,
                      float scale, bool causal, Scratch& s) {
  const int64_t keys = (n + 7) / 8 * 8;
  s.kt.resize(static_cast<size_t>(depth * keys));
  PackKeysAvx2(k, k_row, n, depth, keys, s.kt.data());
  s.scores.resize(static_cast<size_t>(m * keys));
  ScoresAvx2(q, q_row, s.kt.data(), m, n, depth, scale, causal, s.scores.data());
  return keys;
}

// AttentionOne on AVX2 (float32).
void AttentionOneAvx2(const float* q, int64_t q_row, const float* k, int64_t k_row, const float* v, int64_t v_row,
                      int64_t m, int64_t n, int64_t depth, int64_t width, float scale, bool causal, Scratch& s,
                      float* out, int64_t out_row) {
  const int64_t keys = ScoresOneAvx2(q, q_row, k, k_row, m, n, depth, scale, causal, s);
  for (int64_t i = 0; i < m; ++i) SoftmaxRowAvx2(s.scores.data() + i * keys, causal ? std::min(n, i + 1) : n, n);
  WeightedAvx2(s.scores.data(), keys, v, v_row, m, n, width, causal, out, out_row);
}

// The entry points' dispatch: AVX-512 where the CPU has it (float32 and
// bfloat16), else AVX2 (float32 only: KernelOperands refuses bfloat16 there).
inline bool UseAvx512() { return GetCpuFeatures().avx512f; }

template <typename T>
int64_t ScoresOneAny(const T* q, int64_t q_row, const T* k, int64_t k_row, int64_t m, int64_t n, int64_t depth,
                     float scale, bool causal, Scratch& s) {
  if constexpr (std::is_same_v<T, float>) {
    if (!UseAvx512()) return ScoresOneAvx2(q, q_row, k, k_row, m, n, depth, scale, causal, s);
  }
  return ScoresOne(q, q_row, k, k_row, m, n, depth, scale, causal, s);
}

template <typename T>
void WeightedAny(const float* w, int64_t w_row, const float* v, int64_t v_row, int64_t m, int64_t n, int64_t width,
                 bool causal, T* out, int64_t out_row) {
  if constexpr (std::is_same_v<T, float>) {
    if (!UseAvx512()) return WeightedAvx2(w, w_row, v, v_row, m, n, width, causal, out, out_row);
  }
  Weighted(w, w_row, v, v_row, m, n, width, causal, out, out_row);
}

// One (image, head) on AMX tiles (bfloat16; depth a multiple of 32 and at
// most 64, width a multiple of 16 and at most 64, m and n at most 64): the
// same steps as AttentionOne, where both products run as TDPBF16PS on
// 16 x 16 tiles of float32 sums. q's rows are copied to 128-byte rows, k
// packed in pairs of depth values and v in pairs of keys (the tiles' second
// operand: 16 pairs x 16 columns); the scores are scaled and rounded as
// ScoresTile rounds them, the softmax and its rounding to bfloat16 are
// AttentionOne's, and the weighted sums are rounded as WeightedTile stores
// them. The products of bfloat16 values are exact in float32 either way;
// the order of the sums differs, and the tiles read denormal inputs as zero
// and flush denormal sums. q's rows past m (up to its last tile's 16) and
// k's and v's keys past n are zero in the scratch; the weights' rows past m
// are left as they are and only reach sums that are not stored.
struct AmxAttentionScratch {
  alignas(64) uint16_t q[64 * 64];        // 64 rows x 64 values
  alignas(64) uint16_t k[32 * 64 * 2];    // 32 depth pairs x 64 keys x 2
  alignas(64) uint16_t v[32 * 64 * 2];    // 32 key pairs x 64 columns x 2
  alignas(64) float scores[64 * 64];      // [row][key]
  alignas(64) uint16_t weights[64 * 64];  // [row][key], bfloat16
  alignas(64) float sums[64 * 64];        // [row][column]
};

// Tiles 0-7 all 16 rows of 64 bytes.
simd::TileConfig AttentionTiles() {
  simd::TileConfig c;
  for (int t = 0; t < 8; ++t) {
    c.rows[t] = 16;
    c.bytes_per_row[t] = 64;
  }
  return c;
}

#define CLIP_AMX_ATTENTION_TARGET __attribute__((target("avx512f,avx512bw,avx512bf16,amx-tile,amx-bf16")))

// Permute indices that interleave 16 values of a (from 16 * h) with the
// same 16 of b: a[16h], b[16h], a[16h + 1], b[16h + 1], ...
struct Interleave {
  alignas(64) uint16_t index[2][32];
  constexpr Interleave() : index() {
    for (int h = 0; h < 2; ++h) {
      for (int i = 0; i < 16; ++i) {
        index[h][2 * i] = static_cast<uint16_t>(16 * h + i);
        index[h][2 * i + 1] = static_cast<uint16_t>(32 + 16 * h + i);
      }
    }
  }
};
constexpr Interleave kInterleaveTable;

// Column tile T (a literal: the tile intrinsics take their registers'
// numbers as text) of one row tile of a product, when T < `tiles`: the sums
// in tile T from the row tile's first operand in tile 4 (and 5 when
// `second`: its inner values 32-63) and b's column tile (rows of pairs 256
// bytes apart, 16 per step), stored as 16 rows of 16 floats at out + 16 T,
// 256 bytes apart.
#define CLIP_PRODUCT_TILE(T, tiles, b, second, out) \
  if (T < (tiles)) {                                \
    _tile_loadd(6, (b) + T * 32, 256);              \
    _tile_dpbf16ps(T, 4, 6);                        \
    if (second) {                                   \
      _tile_loadd(7, (b) + 16 * 128 + T * 32, 256); \
      _tile_dpbf16ps(T, 5, 7);                      \
    }                                               \
    _tile_stored(T, (out) + T * 16, 256);           \
  }

// One row tile (16 rows) of a product: its first operand's 16 rows of 32
// pairs at a (and a + 32 when `second`: inner values 32-63; rows 128 bytes
// apart) against `tiles` column tiles of b, the sums at out.
CLIP_AMX_ATTENTION_TARGET void ProductRow(const uint16_t* a, bool second, int64_t tiles, const uint16_t* b,
                                          float* out) {
  simd::MemoryBarrier();  // a and b written by plain stores
  _tile_loadd(4, a, 128);
  if (second) _tile_loadd(5, a + 32, 128);
  _tile_zero(0);
  _tile_zero(1);
  _tile_zero(2);
  _tile_zero(3);
  CLIP_PRODUCT_TILE(0, tiles, b, second, out)
  CLIP_PRODUCT_TILE(1, tiles, b, second, out)
  CLIP_PRODUCT_TILE(2, tiles, b, second, out)
  CLIP_PRODUCT_TILE(3, tiles, b, second, out)
  simd::MemoryBarrier();  // out read by plain loads
}

CLIP_AMX_ATTENTION_TARGET void AttentionOneAmx(const c10::BFloat16* q, int64_t q_row, const c10::BFloat16* k,
                                               int64_t k_row, const c10::BFloat16* v, int64_t v_row, int64_t m,
                                               int64_t n, int64_t depth, int64_t width, float scale, bool causal,
                                               AmxAttentionScratch& s, c10::BFloat16* out, int64_t out_row) {
  const auto* qb = reinterpret_cast<const uint16_t*>(q);
  const auto* kb = reinterpret_cast<const uint16_t*>(k);
  const auto* vb = reinterpret_cast<const uint16_t*>(v);
  const int64_t row_tiles = (m + 15) / 16, key_tiles = (n + 15) / 16, depth_steps = depth / 32;
  const int64_t key_steps = (n + 31) / 32, column_tiles = width / 16;
  // q: each row's depth values, zero past m up to the last tile's rows.
  for (int64_t i = 0; i < row_tiles * 16; ++i) {
    uint16_t* dst = s.q + i * 64;
    if (i < m) {
      std::memcpy(dst, qb + i * q_row, static_cast<size_t>(depth) * 2);
    } else {
      std::memset(dst, 0, static_cast<size_t>(depth) * 2);
    }
  }
  // k as pairs of depth values, k[d / 2][j][d % 2] = k[j, d], zero past n:
  // a key's pairs are 32-bit values in a row, so 16 x 16 transposes of them.
  for (int64_t j0 = 0; j0 < key_tiles * 16; j0 += 16) {
    for (int64_t p0 = 0; p0 < depth / 2; p0 += 16) {
      __m512 r[16];
      for (int64_t t = 0; t < 16; ++t) {
        r[t] = j0 + t < n ? _mm512_loadu_ps(reinterpret_cast<const float*>(kb + (j0 + t) * k_row + 2 * p0))
                          : _mm512_setzero_ps();
      }
      simd::Transpose16(r);
      for (int64_t t = 0; t < 16; ++t) _mm512_storeu_ps(reinterpret_cast<float*>(s.k) + (p0 + t) * 64 + j0, r[t]);
    }
  }
  // v as pairs of keys, v[j / 2][c][j % 2] = v[j, c], zero past n: two rows'
  // 16-bit values interleaved, 16 columns per permute.
  const __mmask32 first_columns = width >= 32 ? 0xFFFFFFFFu : (1u << width) - 1;
  const __mmask32 last_columns = width >= 64 ? 0xFFFFFFFFu : width > 32 ? (1u << (width - 32)) - 1 : 0;
  for (int64_t j = 0; j < key_steps * 32; j += 2) {
    __m512i a[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    __m512i b[2] = {_mm512_setzero_si512(), _mm512_setzero_si512()};
    if (j < n) {
      a[0] = _mm512_maskz_loadu_epi16(first_columns, vb + j * v_row);
      a[1] = _mm512_maskz_loadu_epi16(last_columns, vb + j * v_row + 32);
    }
    if (j + 1 < n) {
      b[0] = _mm512_maskz_loadu_epi16(first_columns, vb + (j + 1) * v_row);
      b[1] = _mm512_maskz_loadu_epi16(last_columns, vb + (j + 1) * v_row + 32);
    }
    for (int64_t c0 = 0; c0 < width; c0 += 16) {
      const __m512i index = _mm512_load_si512(kInterleaveTable.index[(c0 % 32) / 16]);
      const __m512i pairs = _mm512_permutex2var_epi16(a[c0 / 32], index, b[c0 / 32]);
      _mm512_storeu_si512(s.v + (j / 2) * 128 + 2 * c0, pairs);
    }
  }
  static const simd::TileConfig config = AttentionTiles();
  _tile_loadconfig(&config);
  // Scores: tiles 0-3 the sums of up to 4 key tiles, 4-5 q's depth steps, 6-7 k's.
  for (int64_t rt = 0; rt < row_tiles; ++rt) {
    ProductRow(s.q + rt * 16 * 64, depth_steps > 1, key_tiles, s.k, s.scores + rt * 16 * 64);
  }
  // The scores scaled and rounded as ScoresTile does, their softmax and its
  // rounding as AttentionOne's, as bfloat16 weights, zero past n.
  const __m512 factor = _mm512_set1_ps(scale);
  for (int64_t i = 0; i < m; ++i) {
    float* row = s.scores + i * 64;
    for (int64_t j = 0; j < n; j += 16) {
      const __mmask16 lanes = simd::TailMask(j, n);
      const __m512 x = _mm512_maskz_loadu_ps(lanes, row + j);
      _mm512_mask_storeu_ps(row + j, lanes, simd::RoundToBFloat16(_mm512_mul_ps(simd::RoundToBFloat16(x), factor)));
    }
    SoftmaxRow(row, causal ? std::min(n, i + 1) : n, n);
    for (int64_t j = 0; j < key_steps * 32; j += 16) {
      const __mmask16 lanes = j < n ? simd::TailMask(j, n) : __mmask16{0};
      simd::StoreBFloat16(s.weights + i * 64 + j, 0xFFFF, _mm512_maskz_loadu_ps(lanes, row + j));
    }
  }
  // Weighted sums: tiles 0-3 up to 4 column tiles, 4-5 the weights' key
  // steps, 6-7 v's.
  for (int64_t rt = 0; rt < row_tiles; ++rt) {
    ProductRow(s.weights + rt * 16 * 64, key_steps > 1, column_tiles, s.v, s.sums + rt * 16 * 64);
  }
  _tile_release();
  for (int64_t i = 0; i < m; ++i) {
    for (int64_t c = 0; c < width; c += 16) Store16(out + i * out_row + c, _mm512_loadu_ps(s.sums + i * 64 + c));
  }
}

#undef CLIP_PRODUCT_TILE

// Whether AttentionOneAmx takes this shape here.
bool AmxAttentionFits(int64_t m, int64_t n, int64_t depth, int64_t width) {
  return m <= 64 && n <= 64 && (depth == 32 || depth == 64) && width % 16 == 0 && width <= 64 &&
         GetCpuFeatures().avx512_bf16 && AmxBf16Usable();
}

template <typename T>
void AttentionOneAny(const T* q, int64_t q_row, const T* k, int64_t k_row, const T* v, int64_t v_row, int64_t m,
                     int64_t n, int64_t depth, int64_t width, float scale, bool causal, Scratch& s, T* out,
                     int64_t out_row) {
  if constexpr (std::is_same_v<T, c10::BFloat16>) {
    if (AmxAttentionFits(m, n, depth, width)) {
      thread_local AmxAttentionScratch amx;
      return AttentionOneAmx(q, q_row, k, k_row, v, v_row, m, n, depth, width, scale, causal, amx, out, out_row);
    }
  }
  if constexpr (std::is_same_v<T, float>) {
    if (!UseAvx512()) {
      return AttentionOneAvx2(q, q_row, k, k_row, v, v_row, m, n, depth, width, scale, causal, s, out, out_row);
    }
  }
  AttentionOne(q, q_row, k, k_row, v, v_row, m, n, depth, width, scale, causal, s, out, out_row);
}
#endif

}  // namespace

bool AttentionMatmulAvailable(at::ScalarType dtype) {
#ifdef CLIP_ATTENTION_KERNEL
  const CpuFeatures& cpu = GetCpuFeatures();
  if (dtype == at::kBFloat16) return cpu.avx512f;
  return dtype == at::kFloat && (cpu.avx512f || (cpu.avx2 && cpu.fma));
#else
  return false;
#endif
}

bool AttentionMatmulByRule(at::ScalarType dtype) { return AttentionMatmulAvailable(dtype); }

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
  if (!AttentionMatmulAvailable(dtype)) return timings;
  at::NoGradGuard no_grad;
  auto generator = at::detail::createCPUGenerator(/*seed_val=*/7);
  for (int64_t tokens : {50, 8}) {
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
  if (!AttentionMatmulAvailable(type)) return false;
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
  if (shapes && KernelOperands({&a, &b}) && a.stride(3) == 1) {
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
        using T = std::remove_pointer_t<decltype(op)>;
        at::parallel_for(0, batch * heads, 1, [&](int64_t first, int64_t last) {
          Scratch s;
          for (int64_t bh = first; bh < last; ++bh) {
            const int64_t i = bh / heads, h = bh % heads;
            const auto* x = ap + i * a0 + h * a1;
            const auto* y = bp + i * b0 + h * b1;
            T* o = op + i * o0 + h * o1;
            if (scores) {
              const int64_t keys = ScoresOneAny(x, a_row, y, b.stride(3), m, n, depth, scale_f, causal, s);
              for (int64_t r = 0; r < m; ++r) {
                const int64_t limit = causal ? std::min(n, r + 1) : n;
                for (int64_t c = 0; c < limit; ++c) o[r * o_row + c] = T(s.scores[r * keys + c]);
                for (int64_t c = limit; c < n; ++c) o[r * o_row + c] = T(-std::numeric_limits<float>::infinity());
              }
            } else {
              const FloatRows w = AsFloatRows(x, a_row, m, depth, s.q);
              const FloatRows v = AsFloatRows(y, b.stride(2), depth, n, s.v);
              WeightedAny(w.data, w.row, v.data, v.row, m, depth, n, /*causal=*/false, o, o_row);
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
  if (shapes && KernelOperands({&q, &k_t, &v}) && q.stride(3) == 1 && k_t.stride(2) == 1 && v.stride(3) == 1) {
    const int64_t batch = q.size(0), heads = q.size(1), m = q.size(2), depth = q.size(3);
    const int64_t n = v.size(2), width = v.size(3);
    // Written as [batch, m, heads, width], as AttentionMatmul writes the
    // weighted sum.
    at::Tensor out = at::empty({batch, m, heads, width}, q.options()).permute({0, 2, 1, 3});
    const float scale_f = static_cast<float>(scale);
    auto run = [&](auto* qp, auto* kp, auto* vp, auto* op) {
      at::parallel_for(0, batch * heads, 1, [&](int64_t first, int64_t last) {
        Scratch scratch;
        for (int64_t bh = first; bh < last; ++bh) {
          const int64_t i = bh / heads, h = bh % heads;
          AttentionOneAny(qp + i * q.stride(0) + h * q.stride(1), q.stride(2),
                          kp + i * k_t.stride(0) + h * k_t.stride(1), k_t.stride(3),
                          vp + i * v.stride(0) + h * v.stride(1), v.stride(2), m, n, depth, width, scale_f,
                          causal_length >= 0, scratch, op + i * out.stride(0) + h * out.stride(1), out.stride(2));
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

#ifdef CLIP_ATTENTION_KERNEL
namespace {

// Per text of a packed batch, {first row, rows} when pad_map and pack_map
// are what a text encoder's forward_packed builds for `batch` texts padded
// to `length` over `rows` packed rows (each text's kept slots a prefix of its
// padded row, on consecutive packed rows; each padding slot its text's last
// kept row); else empty.
std::vector<std::pair<int64_t, int64_t>> PackedSegments(const at::Tensor& pad_map, const at::Tensor& pack_map,
                                                        int64_t batch, int64_t length, int64_t rows) {
  std::vector<std::pair<int64_t, int64_t>> segments;
  if (pad_map.scalar_type() != at::kLong || pack_map.scalar_type() != at::kLong || !pad_map.device().is_cpu() ||
      !pack_map.device().is_cpu() || pad_map.dim() != 1 || pack_map.dim() != 1 || batch < 1 || length < 1 ||
      pad_map.size(0) != batch * length || pack_map.size(0) != rows) {
    return {};
  }
  const at::Tensor pad = pad_map.contiguous(), pack = pack_map.contiguous();
  const int64_t* pad_p = pad.data_ptr<int64_t>();
  const int64_t* pack_p = pack.data_ptr<int64_t>();
  int64_t next = 0;  // the first row of text i
  for (int64_t i = 0; i < batch; ++i) {
    const int64_t end = i + 1 < batch ? pad_p[(i + 1) * length] : rows;
    const int64_t count = end - next;
    if (pad_p[i * length] != next || count < 1 || count > length) return {};
    for (int64_t p = 0; p < length; ++p) {
      if (pad_p[i * length + p] != next + std::min(p, count - 1)) return {};
    }
    for (int64_t p = 0; p < count; ++p) {
      if (pack_p[next + p] != i * length + p) return {};
    }
    segments.emplace_back(next, count);
    next = end;
  }
  return segments;
}

}  // namespace
#endif

at::Tensor PackedAttention(const at::Tensor& qkv, const at::Tensor& pad_map, const at::Tensor& pack_map, int64_t batch,
                           int64_t length, int64_t heads, double scale, bool causal) {
#ifdef CLIP_ATTENTION_KERNEL
  const int64_t rows = qkv.dim() == 2 ? qkv.size(0) : -1;
  const int64_t width = heads > 0 && qkv.dim() == 2 && qkv.size(1) % (3 * heads) == 0 ? qkv.size(1) / 3 : -1;
  const int64_t depth = width > 0 ? width / heads : -1;
  if (causal && width > 0 && depth % 16 == 0 && depth <= 64 && length <= kMaxAttentionRows && rows > 0 &&
      KernelOperands({&qkv}) && qkv.stride(1) == 1) {
    const std::vector<std::pair<int64_t, int64_t>> segments = PackedSegments(pad_map, pack_map, batch, length, rows);
    if (!segments.empty()) {
      at::Tensor out = at::empty({rows, width}, qkv.options());
      const int64_t in_row = qkv.stride(0), out_row = out.stride(0);
      const float scale_f = static_cast<float>(scale);
      auto run = [&](auto* base, auto* op) {
        at::parallel_for(0, batch * heads, 1, [&](int64_t first, int64_t last) {
          Scratch scratch;
          for (int64_t th = first; th < last; ++th) {
            const auto [row, count] = segments[static_cast<size_t>(th / heads)];
            const int64_t h = th % heads;
            const auto* q = base + row * in_row + h * depth;
            AttentionOneAny(q, in_row, q + width, in_row, q + 2 * width, in_row, count, count, depth, depth, scale_f,
                            /*causal=*/true, scratch, op + row * out_row + h * depth, out_row);
          }
        });
      };
      if (qkv.scalar_type() == at::kFloat) {
        run(qkv.data_ptr<float>(), out.data_ptr<float>());
      } else {
        run(qkv.data_ptr<c10::BFloat16>(), out.data_ptr<c10::BFloat16>());
      }
      return out;
    }
  }
#endif
  // The operators the graph ran: each text padded to `length` again, the
  // attention per text, its kept rows packed back.
  const at::Tensor padded = qkv.index_select(0, pad_map).view({batch, length, 3, heads, -1}).permute({2, 0, 3, 1, 4});
  const at::Tensor out = Attention(padded[0], padded[1].transpose(-1, -2), padded[2], scale, causal ? length : -1);
  return out.transpose(1, 2).reshape({batch * length, -1}).index_select(0, pack_map);
}

TORCH_LIBRARY_FRAGMENT(clip_native, m) {
  m.def("attention_matmul(Tensor a, Tensor b, float scale=1., int causal_length=-1) -> Tensor");
  m.def("attention(Tensor q, Tensor k_t, Tensor v, float scale=1., int causal_length=-1) -> Tensor");
  m.def(
      "packed_attention(Tensor qkv, Tensor pad_map, Tensor pack_map, int batch, int length, int heads, float scale, "
      "bool causal) -> Tensor");
}

TORCH_LIBRARY_IMPL(clip_native, CPU, m) {
  m.impl("attention_matmul", &AttentionMatmul);
  m.impl("attention", &Attention);
  m.impl("packed_attention", &PackedAttention);
}

}  // namespace clip

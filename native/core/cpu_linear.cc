#include "cpu_linear.h"

#include <ATen/Parallel.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <ATen/core/stack.h>
#include <torch/library.h>

#include <algorithm>
#include <cstdint>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "cpu_features.h"
#include "cpu_simd.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLIP_SMALL_ROW_KERNEL 1
#endif

namespace clip {
namespace {

#ifdef CLIP_SMALL_ROW_KERNEL
constexpr int kPanel = 32;  // output features per panel: two zmm registers
constexpr int kTile = 14;   // rows per two-register tile: 28 accumulators of the 32 registers
static_assert(kTile <= 16, "a row tile is copied through one 16 x 16 transpose");

// Row tiles: the rows of x split as evenly as possible into tiles of at
// most kTile rows (50 rows: 13 + 13 + 12 + 12). Each tile is copied k-major
// ([k][rows], contiguous) before the products, so a tile's step over k
// reads its inputs from one cache line or two; read in place, the rows of a
// wide input (3072 floats, or 2048 bfloat16 pairs: 12 or 8 KB apart) fall
// into one cache set and evict each other.
struct RowTile {
  int64_t first;
  int rows;
};

std::vector<RowTile> SplitRows(int64_t m, int tile) {
  const int64_t count = (m + tile - 1) / tile;
  std::vector<RowTile> tiles;
  tiles.reserve(static_cast<size_t>(count));
  int64_t first = 0;
  for (int64_t i = 0; i < count; ++i) {
    const int rows = static_cast<int>((m - first) / (count - i));
    tiles.push_back({first, rows});
    first += rows;
  }
  return tiles;
}

// x [m, k] of 32-bit values (floats, or pairs of bfloat16) -> each tile's
// rows k-major at offset first * k of `out`, 16 values of each row at a time
// through a 16 x 16 transpose in registers (3-5x a scalar copy). Only vector
// loads and stores touch the values, which may be of either type.
__attribute__((target("avx512f"))) void PackRowTiles(const void* x, int64_t k, const std::vector<RowTile>& tiles,
                                                     void* out) {
  for (const RowTile& tile : tiles) {
    const uint32_t* src = static_cast<const uint32_t*>(x) + tile.first * k;
    uint32_t* dst = static_cast<uint32_t*>(out) + tile.first * k;
    const __mmask16 row_lanes = simd::TailMask(0, tile.rows);
    for (int64_t i0 = 0; i0 < k; i0 += 16) {
      const int64_t count = std::min<int64_t>(16, k - i0);
      const __mmask16 lanes = simd::TailMask(i0, k);
      __m512 r[16];
      for (int t = 0; t < 16; ++t)
        r[t] = t < tile.rows ? _mm512_maskz_loadu_ps(lanes, src + t * k + i0) : _mm512_setzero_ps();
      simd::Transpose16(r);
      for (int64_t t = 0; t < count; ++t) _mm512_mask_storeu_ps(dst + (i0 + t) * tile.rows, row_lanes, r[t]);
    }
  }
}

// The calling thread's k-major copy of x's row tiles (PackRowTiles) in a
// buffer it keeps for the next call. Each thread of a linear's parallel
// region copies them for itself: as long as one thread's copy, and no
// second parallel region (whose wake-up costs more than the copy at these
// sizes). T is the 32-bit element: float, or a pair of bfloat16.
template <typename T>
__attribute__((target("avx512f"))) const T* ThreadRowTiles(const T* x, int64_t k, const std::vector<RowTile>& tiles) {
  thread_local std::vector<T> copy;
  const int64_t m = tiles.empty() ? 0 : tiles.back().first + tiles.back().rows;
  if (copy.size() < static_cast<size_t>(m * k)) copy.resize(static_cast<size_t>(m * k));
  PackRowTiles(x, k, tiles, copy.data());
  return copy.data();
}

// `kRows` rows (k-major, `xt`) against the two registers of one panel. Each
// step over k loads the panel's weights once and uses them for every row.
template <int kRows>
__attribute__((target("avx512f"))) void Tile(const float* xt, const float* panel, int64_t k_size, const __m512* bias,
                                             float* y, int64_t ldy, const __mmask16* mask) {
  __m512 acc[2][kRows];
#pragma GCC unroll 32
  for (int r = 0; r < kRows; ++r) {
    acc[0][r] = bias[0];
    acc[1][r] = bias[1];
  }
  const float* p = panel;
  const float* x = xt;
  for (int64_t k = 0; k < k_size; ++k, p += kPanel, x += kRows) {
    // About 1.5 KB ahead: the hardware prefetcher alone leaves the loads waiting.
    _mm_prefetch(reinterpret_cast<const char*>(p + kPanel * 12), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + kPanel * 12 + 16), _MM_HINT_T0);
    const __m512 w0 = _mm512_load_ps(p);
    const __m512 w1 = _mm512_load_ps(p + 16);
#pragma GCC unroll 32
    for (int r = 0; r < kRows; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r]);
      acc[0][r] = _mm512_fmadd_ps(xv, w0, acc[0][r]);
      acc[1][r] = _mm512_fmadd_ps(xv, w1, acc[1][r]);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < kRows; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, mask[0], acc[0][r]);
    _mm512_mask_storeu_ps(y + r * ldy + 16, mask[1], acc[1][r]);
  }
}

// Runs Tile<rows> for a row count known only at run time.
template <int kRows = 1>
__attribute__((target("avx512f"))) void TileRows(int rows, const float* xt, const float* panel, int64_t k_size,
                                                 const __m512* bias, float* y, int64_t ldy, const __mmask16* mask) {
  if constexpr (kRows <= kTile) {
    if (rows == kRows) return Tile<kRows>(xt, panel, k_size, bias, y, ldy, mask);
    TileRows<kRows + 1>(rows, xt, panel, k_size, bias, y, ldy, mask);
  }
}

// The store masks of a panel's two registers (the last panel of a layer may
// hold fewer than 32 features) and its biases, zero past the features.
struct PanelEdge {
  __mmask16 mask[2];
  __m512 bias[2];
  __attribute__((target("avx512f"))) PanelEdge(const float* biases, int64_t n0, int64_t n_size) {
    const int64_t valid = std::min<int64_t>(kPanel, n_size - n0);
    mask[0] = valid >= 16 ? __mmask16{0xFFFF} : static_cast<__mmask16>((1u << valid) - 1);
    mask[1] = valid >= 32   ? __mmask16{0xFFFF}
              : valid <= 16 ? __mmask16{0}
                            : static_cast<__mmask16>((1u << (valid - 16)) - 1);
    bias[0] = biases ? _mm512_maskz_loadu_ps(mask[0], biases + n0) : _mm512_setzero_ps();
    bias[1] = biases ? _mm512_maskz_loadu_ps(mask[1], biases + n0 + 16) : _mm512_setzero_ps();
  }
};

// Every row tile against panels [first, last), panel by panel: a panel's
// weights come from memory once and stay in cache for the tiles after the
// first.
__attribute__((target("avx512f"))) void Panels(const float* xt, const std::vector<RowTile>& tiles, int64_t k_size,
                                               const float* packed, const float* bias, int64_t n_size, float* y,
                                               int64_t first, int64_t last) {
  for (int64_t p = first; p < last; ++p) {
    const int64_t n0 = p * kPanel;
    const PanelEdge edge(bias, n0, n_size);
    const float* panel = packed + p * k_size * kPanel;
    for (const RowTile& tile : tiles) {
      TileRows(tile.rows, xt + tile.first * k_size, panel, k_size, edge.bias, y + tile.first * n_size + n0, n_size,
               edge.mask);
    }
  }
}

// The same tiles on bfloat16 weights and inputs (AVX512-BF16): each 32-bit
// lane holds a pair of bfloat16 along k, and one vdpbf16ps adds both
// products of a pair to a float32 accumulator. Half the bytes of float32
// weights to stream, twice the products per instruction.
template <int kRows>
__attribute__((target("avx512f,avx512bf16"))) void TileBf16(const uint32_t* xt, const uint16_t* panel, int64_t pairs,
                                                            const __m512* bias, float* y, int64_t ldy) {
  __m512 acc[2][kRows];
#pragma GCC unroll 32
  for (int r = 0; r < kRows; ++r) {
    acc[0][r] = bias[0];
    acc[1][r] = bias[1];
  }
  const uint16_t* p = panel;
  const uint32_t* x = xt;
  for (int64_t k = 0; k < pairs; ++k, p += 2 * kPanel, x += kRows) {
    _mm_prefetch(reinterpret_cast<const char*>(p + 2 * kPanel * 12), _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(p + 2 * kPanel * 12 + 32), _MM_HINT_T0);
    const __m512bh w0 = (__m512bh)_mm512_load_si512(p);
    const __m512bh w1 = (__m512bh)_mm512_load_si512(p + 32);
#pragma GCC unroll 32
    for (int r = 0; r < kRows; ++r) {
      const __m512bh xv = (__m512bh)_mm512_set1_epi32(static_cast<int>(x[r]));
      acc[0][r] = _mm512_dpbf16_ps(acc[0][r], xv, w0);
      acc[1][r] = _mm512_dpbf16_ps(acc[1][r], xv, w1);
    }
  }
#pragma GCC unroll 32
  for (int r = 0; r < kRows; ++r) {
    _mm512_storeu_ps(y + r * ldy, acc[0][r]);
    _mm512_storeu_ps(y + r * ldy + 16, acc[1][r]);
  }
}

template <int kRows = 1>
__attribute__((target("avx512f,avx512bf16"))) void TileRowsBf16(int rows, const uint32_t* xt, const uint16_t* panel,
                                                                int64_t pairs, const __m512* bias, float* y,
                                                                int64_t ldy) {
  if constexpr (kRows <= kTile) {
    if (rows == kRows) return TileBf16<kRows>(xt, panel, pairs, bias, y, ldy);
    TileRowsBf16<kRows + 1>(rows, xt, panel, pairs, bias, y, ldy);
  }
}

// Row tiles of x (bfloat16 pairs, k-major as the float32 tiles) against
// panels [first, last); y is float32 [rows, panels * 32] (whole panels: the
// caller narrows and converts).
__attribute__((target("avx512f,avx512bf16"))) void PanelsBf16(const uint32_t* xt, const std::vector<RowTile>& tiles,
                                                              int64_t pairs, const uint16_t* packed, const float* bias,
                                                              int64_t n_size, float* y, int64_t ldy, int64_t first,
                                                              int64_t last) {
  for (int64_t p = first; p < last; ++p) {
    const int64_t n0 = p * kPanel;
    const PanelEdge edge(bias, n0, n_size);
    const uint16_t* panel = packed + p * pairs * 2 * kPanel;
    for (const RowTile& tile : tiles) {
      TileRowsBf16(tile.rows, xt + tile.first * pairs, panel, pairs, edge.bias, y + tile.first * ldy + n0, ldy);
    }
  }
}
#endif

void CheckFloatCpu(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), "clip_native: ", what,
              " must be a float32 CPU tensor, got ", t.toString());
}

// clip_native::linear_rows: SmallRowLinear up to kSmallRowLimit rows, oneDNN
// (mkldnn::_linear_pointwise on its own packed weights) above; `attr` is
// oneDNN's post-op, "none" or "swish".
at::Tensor LinearRows(const at::Tensor& x, const at::Tensor& packed, const at::Tensor& onednn_weight,
                      const c10::optional<at::Tensor>& bias, int64_t out_features, c10::string_view attr) {
  const int64_t rows = x.dim() == 0 ? 0 : x.numel() / x.size(-1);
  if (rows > kSmallRowLimit) {
    static const c10::OperatorHandle op =
        c10::Dispatcher::singleton().findSchemaOrThrow("mkldnn::_linear_pointwise", "");
    c10::IValue no_bias;
    torch::jit::Stack stack{x,
                            onednn_weight,
                            bias ? c10::IValue(*bias) : no_bias,
                            std::string(attr.data(), attr.size()),
                            c10::List<c10::optional<at::Scalar>>(),
                            c10::IValue()};
    op.callBoxed(&stack);
    return stack[0].toTensor();
  }
  at::Tensor y = packed.scalar_type() == at::kBFloat16 ? SmallRowLinearBf16(x, packed, bias, out_features)
                                                       : SmallRowLinear(x, packed, bias, out_features);
  if (attr == "swish") y.mul_(at::sigmoid(y));
  return y;
}

}  // namespace

bool SmallRowLinearAvailable() {
#ifdef CLIP_SMALL_ROW_KERNEL
  return GetCpuFeatures().avx512f;
#else
  return false;
#endif
}

bool SmallRowLinearBf16Available() {
#ifdef CLIP_SMALL_ROW_KERNEL
  return GetCpuFeatures().avx512f && GetCpuFeatures().avx512_bf16;
#else
  return false;
#endif
}

at::Tensor PackSmallRowWeightBf16(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) % 2 == 0,
              "clip_native: a bfloat16 small-row weight must be 2-D with an even number of inputs, got ",
              weight.sizes());
  const int64_t n = weight.size(0);
  const int64_t k = weight.size(1);
  const int64_t panels = (n + 31) / 32;
  at::Tensor padded = at::zeros({panels * 32, k}, weight.options().dtype(at::kBFloat16));
  padded.narrow(0, 0, n).copy_(weight);
  // [panels, 32, k/2, 2] -> [panels, k/2, 32, 2]: per pair of inputs, 32 features of 2 values.
  return padded.view({panels, 32, k / 2, 2}).permute({0, 2, 1, 3}).contiguous();
}

at::Tensor SmallRowLinearBf16(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                              int64_t out_features) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.device().is_cpu() && packed.scalar_type() == at::kBFloat16 &&
                  packed.device().is_cpu(),
              "clip_native: the bfloat16 small-row linear takes bfloat16 CPU tensors, got ", x.toString(), " and ",
              packed.toString());
  TORCH_CHECK(x.dim() >= 1 && packed.dim() == 4 && packed.size(2) == 32 && packed.size(3) == 2 &&
                  x.size(-1) == 2 * packed.size(1) && packed.size(0) * 32 >= out_features && out_features > 0,
              "clip_native: linear input ", x.sizes(), " does not fit packed weights ", packed.sizes(), " for ",
              out_features, " features");
  at::Tensor bias_float;
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features && bias->device().is_cpu(), "clip_native: a bias of ",
                out_features, " features was expected, got ", bias->sizes());
    bias_float = bias->to(at::kFloat).contiguous();
  }
  TORCH_CHECK(SmallRowLinearBf16Available(), "clip_native: this CPU lacks AVX512-BF16 for the small-row linear");
  const int64_t k = x.size(-1);
  at::Tensor rows = x.reshape({-1, k}).contiguous();
  const int64_t m = rows.size(0);
  const int64_t panels = packed.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  at::Tensor y = at::empty({m, panels * 32}, x.options().dtype(at::kFloat));
#ifdef CLIP_SMALL_ROW_KERNEL
  const int64_t pairs = k / 2;
  const std::vector<RowTile> tiles = SplitRows(m, kTile);
  const auto* xp = reinterpret_cast<const uint32_t*>(rows.data_ptr<at::BFloat16>());
  const auto* pp = reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>());
  const float* bp = bias ? bias_float.data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, panels, 1, [&](int64_t first, int64_t last) {
    PanelsBf16(ThreadRowTiles(xp, pairs, tiles), tiles, pairs, pp, bp, out_features, yp, panels * 32, first, last);
  });
#endif
  return y.narrow(1, 0, out_features).to(at::kBFloat16).view(shape);
}

int ParallelForThreads() {
  std::set<std::thread::id> seen;
  std::mutex mutex;
  std::thread probe([&] {
    at::parallel_for(0, 256, 1, [&](int64_t, int64_t) {
      std::lock_guard<std::mutex> lock(mutex);
      seen.insert(std::this_thread::get_id());
    });
  });
  probe.join();
  return static_cast<int>(seen.size());
}

at::Tensor PackSmallRowWeight(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2, "clip_native: a linear weight must be 2-D, got ", weight.sizes());
  const int64_t n = weight.size(0);
  const int64_t k = weight.size(1);
  const int64_t panels = (n + 31) / 32;
  at::Tensor padded = at::zeros({panels * 32, k}, weight.options().dtype(at::kFloat));
  padded.narrow(0, 0, n).copy_(weight);
  return padded.view({panels, 32, k}).transpose(1, 2).contiguous();
}

at::Tensor SmallRowLinear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                          int64_t out_features) {
  CheckFloatCpu(x, "the input");
  CheckFloatCpu(packed, "the packed weight");
  TORCH_CHECK(x.dim() >= 1 && packed.dim() == 3 && packed.size(2) == 32 && x.size(-1) == packed.size(1) &&
                  packed.size(0) * 32 >= out_features && out_features > 0,
              "clip_native: linear input ", x.sizes(), " does not fit packed weights ", packed.sizes(), " for ",
              out_features, " features");
  if (bias) {
    CheckFloatCpu(*bias, "the bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features && bias->is_contiguous(), "clip_native: a bias of ",
                out_features, " features was expected, got ", bias->sizes());
  }
  TORCH_CHECK(SmallRowLinearAvailable(), "clip_native: this CPU lacks AVX-512F for the small-row linear");
  const int64_t k = x.size(-1);
  at::Tensor rows = x.reshape({-1, k}).contiguous();
  const int64_t m = rows.size(0);
  std::vector<int64_t> shape(x.sizes().begin(), x.sizes().end());
  shape.back() = out_features;
  at::Tensor y = at::empty({m, out_features}, x.options());
#ifdef CLIP_SMALL_ROW_KERNEL
  const std::vector<RowTile> tiles = SplitRows(m, kTile);
  const float* xp = rows.data_ptr<float>();
  const float* pp = packed.data_ptr<float>();
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  float* yp = y.data_ptr<float>();
  at::parallel_for(0, packed.size(0), 1, [&](int64_t first, int64_t last) {
    Panels(ThreadRowTiles(xp, k, tiles), tiles, k, pp, bp, out_features, yp, first, last);
  });
#endif
  return y.view(shape);
}

TORCH_LIBRARY(clip_native, m) {
  m.def(
      "linear_rows(Tensor x, Tensor packed, Tensor onednn_weight, Tensor? bias, int out_features, str attr) -> "
      "Tensor");
}

// The dispatch key comes from the arguments: the oneDNN weight is an
// MkldnnCPU tensor.
TORCH_LIBRARY_IMPL(clip_native, CPU, m) { m.impl("linear_rows", &LinearRows); }
TORCH_LIBRARY_IMPL(clip_native, MkldnnCPU, m) { m.impl("linear_rows", &LinearRows); }

}  // namespace clip

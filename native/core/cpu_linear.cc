#include "cpu_linear.h"

#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <memory>
#include <mutex>
#include <set>
#include <string>
#include <thread>
#include <type_traits>
#include <vector>

#include <unistd.h>

#include "cpu_features.h"
#include "cpu_simd.h"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>
#define CLIP_PANEL_KERNEL 1
#endif

namespace clip {
namespace {

// An int8 linear's steps over k (four inputs each), and the bytes of its
// packed weight (PackInt8): per panel of 32 features its steps of
// kPanelStepBytes, then 32 float32 scales and 32 int32 weight sums.
int64_t Int8Steps(int64_t k) { return (k + 3) / 4; }
int64_t Int8PackedBytes(int64_t k, int64_t out_features) {
  return (out_features + 31) / 32 * (Int8Steps(k) * kPanelStepBytes + 2 * 32 * 4);
}

#ifdef CLIP_PANEL_KERNEL
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
__attribute__((target("avx512f"))) void PackRowTiles(const void* x, int64_t k, const RowTile* begin, const RowTile* end,
                                                     void* out) {
  for (const RowTile* it = begin; it != end; ++it) {
    const RowTile& tile = *it;
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

// PackRowTiles on AVX2: each tile's rows k-major, 8 values of each row at
// a time through an 8 x 8 transpose (float32 only; tiles of at most 8 rows).
__attribute__((target("avx2"))) void PackRowTilesAvx2(const void* x, int64_t k, const RowTile* begin,
                                                      const RowTile* end, void* out) {
  for (const RowTile* it = begin; it != end; ++it) {
    const RowTile& tile = *it;
    const float* src = static_cast<const float*>(x) + tile.first * k;
    float* dst = static_cast<float*>(out) + tile.first * k;
    const __m256i row_lanes = simd::TailMask8(0, tile.rows);
    for (int64_t i0 = 0; i0 < k; i0 += 8) {
      const int64_t count = std::min<int64_t>(8, k - i0);
      const __m256i lanes = simd::TailMask8(i0, k);
      __m256 r[8];
      for (int t = 0; t < 8; ++t)
        r[t] = t < tile.rows ? _mm256_maskload_ps(src + t * k + i0, lanes) : _mm256_setzero_ps();
      simd::Transpose8(r);
      for (int64_t t = 0; t < count; ++t) _mm256_maskstore_ps(dst + (i0 + t) * tile.rows, row_lanes, r[t]);
    }
  }
}

// The instruction set a linear's tiles run on: the panel width and the
// row tile height follow from it.
enum class Isa { kAvx512, kAvx2 };

template <Isa isa>
void PackTiles(const void* x, int64_t k, const RowTile* begin, const RowTile* end, void* out) {
  if constexpr (isa == Isa::kAvx2) {
    PackRowTilesAvx2(x, k, begin, end, out);
  } else {
    PackRowTiles(x, k, begin, end, out);
  }
}

// The calling thread's k-major copy of x's row tiles (PackRowTiles) in a
// buffer it keeps for the next call. Each thread of a linear's parallel
// region copies them for itself: as long as one thread's copy, and no
// second parallel region (whose wake-up costs more than the copy at these
// sizes). T is the 32-bit element: float, or a pair of bfloat16.
template <Isa isa, typename T>
const T* ThreadRowTiles(const T* x, int64_t k, const std::vector<RowTile>& tiles) {
  thread_local std::vector<T> copy;
  const int64_t m = tiles.empty() ? 0 : tiles.back().first + tiles.back().rows;
  if (copy.size() < static_cast<size_t>(m * k)) copy.resize(static_cast<size_t>(m * k));
  PackTiles<isa>(x, k, tiles.data(), tiles.data() + tiles.size(), copy.data());
  return copy.data();
}

// Inputs of more rows than kPerThreadCopyRows (an image encoder's 50 rows per
// image, when it runs on this kernel alone): copied k-major once, by all
// threads together, into one buffer, and run in groups of consecutive tiles
// of at most kGroupBytes of copied rows. Each thread takes every group in
// turn against its own panels: a group stays in the thread's L2 while the
// panels stream past it, once per group. Copying the whole input in every
// thread, and running it against each panel in one pass, measured 5% slower
// than oneDNN at 400 rows (the copies, 4.9 MB each at the image encoder's
// widest input, and rows that no longer stay in L2 from panel to panel).
// The group's size follows the L2 cache (RowGroupBytes, cpu_linear.h).
std::vector<std::vector<RowTile>> GroupTiles(const std::vector<RowTile>& tiles, int64_t row_bytes) {
  static const int64_t group_bytes = RowGroupBytes();
  std::vector<std::vector<RowTile>> groups;
  int64_t bytes = 0;
  for (const RowTile& tile : tiles) {
    const int64_t tile_bytes = tile.rows * row_bytes;
    if (groups.empty() || bytes + tile_bytes > group_bytes) {
      groups.emplace_back();
      bytes = 0;
    }
    groups.back().push_back(tile);
    bytes += tile_bytes;
  }
  return groups;
}

// A buffer a thread keeps from call to call, grown to the largest size asked
// of it (contents unspecified): a fresh one per linear would add blocks of
// every input size to the CPU allocator's cache.
template <typename T>
struct GrowingBuffer {
  std::unique_ptr<T[]> data;
  size_t capacity = 0;
  T* Get(size_t size) {
    if (size > capacity) {
      data.reset(new T[size]);
      capacity = size;
    }
    return data.get();
  }
};

// Runs `panels(copy, group, first, last)` over every group for each thread's
// range of panels, after one shared k-major copy of x (k 32-bit values per
// row). T: float, or a pair of bfloat16. The copy goes to a GrowingBuffer of
// the calling thread, as large as the largest input it has run (16 images of
// 50 rows at 3072 floats: 9.8 MB).
template <Isa isa, typename T, typename PanelsFn>
void RunInGroups(const T* x, int64_t k, const std::vector<RowTile>& tiles, int64_t panel_count,
                 const PanelsFn& panels) {
  static_assert(sizeof(T) == 4, "rows of 32-bit values");
  thread_local GrowingBuffer<T> buffer;
  const int64_t m = tiles.back().first + tiles.back().rows;
  T* copy = buffer.Get(static_cast<size_t>(m * k));
  at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t first, int64_t last) {
    PackTiles<isa>(x, k, tiles.data() + first, tiles.data() + last, copy);
  });
  const std::vector<std::vector<RowTile>> groups = GroupTiles(tiles, k * 4);
  at::parallel_for(0, panel_count, 1, [&](int64_t first, int64_t last) {
    for (const std::vector<RowTile>& group : groups) panels(copy, group, first, last);
  });
}

// Runs `panels(copy, tiles, first, last)` over x's row tiles and panels
// [0, panel_count), split among the threads: with per-thread copies of the
// tiles (ThreadRowTiles) up to kPerThreadCopyRows rows, above in groups of
// one shared copy (RunInGroups).
template <Isa isa, typename T, typename PanelsFn>
void RunPanels(const T* x, int64_t k, const std::vector<RowTile>& tiles, int64_t panel_count, const PanelsFn& panels) {
  const int64_t m = tiles.empty() ? 0 : tiles.back().first + tiles.back().rows;
  if (m > kPerThreadCopyRows) return RunInGroups<isa>(x, k, tiles, panel_count, panels);
  at::parallel_for(0, panel_count, 1,
                   [&](int64_t first, int64_t last) { panels(ThreadRowTiles<isa>(x, k, tiles), tiles, first, last); });
}

// What tile t of a panel's `tiles` prefetches at each of its `k_steps` steps
// over k: the weights `own_ahead` bytes ahead of the step it is at, and
// lines + k * step: its slice of the next panel (NextPanelPrefetch,
// cpu_linear.h) when there is a next panel in this thread's range, else
// lines of `panel` itself (already on their way: no cost worth a branch in
// the loop).
struct NextPanelLines {
  const char* lines;
  int64_t step;       // bytes per step over k
  int64_t own_ahead;  // bytes
  // The float32 tile's prefetches of its own panel go to L2 only
  // (PREFETCHT1): a lone tile on an Intel CPU (LoneTileToL2).
  bool own_to_l2;
};

static_assert(kPanel * 4 == kPanelStepBytes, "a panel step is 32 float32 weights or 32 pairs of bfloat16");

// How far ahead in its own panel a tile prefetches. A tile alone on its
// panel (a caption's rows: up to 14 on the AVX-512 tiles, 7 on the AVX2
// ones) streams the panel from memory with nothing else to overlap, and
// 1.5 KB ahead left its loads waiting: 8 KB ran ViT-B/32's text linears
// (weights from memory) 10-35% faster on Zen 5 for 7 and 13 rows, float32,
// bfloat16 and int8 alike (bench/optimizations.md). The tiles of a shared
// panel prefetch `ahead_steps` steps ahead (12 on the AVX-512 kernels, 24
// on the AVX2 ones: 1.5 KB of float32), the next panel's slices keeping
// memory busy beside them.
constexpr int64_t kLoneTileAhead = 8 << 10;
// How far ahead in its k-major input rows a tile prefetches (the float32
// tile, and the bfloat16 and int8 tiles' StepGroups), in 32-bit values
// (1.75 KB: 32 steps of a 14-row tile). Past the tile's end that is the
// next tile's start, which follows it in the copy. The hardware prefetcher
// alone restarts on every tile: on an Intel Xeon with AMX, 8 float32 images
// took 0.97-0.98x the time with it, one caption 0.94x (bench/optimizations.md).
constexpr int64_t kRowsAhead = 448;
constexpr int64_t kAheadSteps = 12;
constexpr int64_t kAheadStepsAvx2 = 24;

// Where a lone float32 tile's prefetches of its own panel go. On an Intel
// Xeon with AVX-512 and AMX (2 MB L2, about 11.5 GB/s of plain reads per
// core from memory), PREFETCHT1 (to L2, the loads then hitting L2) ran one
// caption 4.5-7% faster than PREFETCHT0 in paired runs; the int8 tiles came
// out 2.6% slower with it there, and on AMD Zen 4 and Zen 5 every distance
// was tuned with PREFETCHT0 (bench/optimizations.md). So: L2 on Intel CPUs,
// float32 tiles only.
bool LoneTileToL2() {
  static const bool intel = GetCpuFeatures().intel;
  return intel;
}

NextPanelLines PrefetchLines(const void* panel, bool has_next, size_t tiles, size_t t, int64_t k_steps,
                             int64_t step_bytes, int64_t ahead_steps) {
  const char* bytes = static_cast<const char*>(panel);
  const bool lone = tiles < 2;
  const int64_t own_ahead = lone ? kLoneTileAhead : ahead_steps * step_bytes;
  const bool own_to_l2 = lone && LoneTileToL2();
  const PanelPrefetch slice = NextPanelPrefetch(tiles, t, k_steps, step_bytes);
  if (!has_next || slice.offset < 0) return {bytes, slice.step, own_ahead, own_to_l2};
  return {bytes + k_steps * step_bytes + slice.offset, slice.step, own_ahead, own_to_l2};
}

// Where a tile's sums start and go when its panel runs in blocks over k
// (RunPanelTiles): `in` null starts them at the bias, else at the sums a
// previous block left there; `out` non-null stores the raw sums there and
// ends (no activation, no store to y). Both hold kRows x the panel's width
// float32 values, row by row.
struct Carry {
  const float* in = nullptr;
  float* out = nullptr;
};

// A panel's row tiles may run in blocks of kBlockBytes of weights over k,
// every tile against one block before the next: the block comes from
// memory in the first tile and from L1 in the others, and each tile
// prefetches its share of the next block (after a panel's last block, the
// next panel's first). Tile by tile over the whole panel, the first tile
// streams the panel alone and the others run on cached weights while
// memory idles: on few rows, where the stream costs about as much as the
// products, the two add up instead of overlapping. Which kernels run in
// blocks, and on how many rows: kBlockedRowsAvx2.
constexpr int64_t kBlockBytes = 8 << 10;

// Runs a panel's `tile_count` row tiles over its `k_size` steps of
// `step_bytes`, as `tile(t, k0, steps, next, carry)` (tile t from step k0
// for `steps` steps, prefetching `next`; `ahead_steps`: PrefetchLines): each
// tile over all of k, or, when `carry` (tile t's sums at carry + t *
// carry_floats) is given, in blocks over k. `has_next`: the thread's next
// panel follows this one.
template <typename TileFn>
void RunPanelTiles(size_t tile_count, int64_t k_size, int64_t step_bytes, int64_t ahead_steps, const void* panel,
                   bool has_next, float* carry, int64_t carry_floats, const TileFn& tile) {
  if (!carry) {
    for (size_t t = 0; t < tile_count; ++t) {
      tile(t, 0, k_size, PrefetchLines(panel, has_next, tile_count, t, k_size, step_bytes, ahead_steps), Carry{});
    }
    return;
  }
  const int64_t block = std::max<int64_t>(1, kBlockBytes / step_bytes);
  for (int64_t k0 = 0; k0 < k_size; k0 += block) {
    const int64_t steps = std::min(block, k_size - k0);
    const bool last = k0 + steps == k_size;
    const char* lines = static_cast<const char*>(panel) + k0 * step_bytes;
    for (size_t t = 0; t < tile_count; ++t) {
      float* sums = carry + static_cast<int64_t>(t) * carry_floats;
      tile(t, k0, steps, PrefetchLines(lines, !last || has_next, tile_count, t, steps, step_bytes, ahead_steps),
           Carry{k0 > 0 ? sums : nullptr, last ? nullptr : sums});
    }
  }
}

// The calling thread's carry buffer for `tiles` tiles of `floats_per_tile`
// sums each, kept from call to call.
float* PanelCarry(size_t tiles, int64_t floats_per_tile) {
  thread_local std::vector<float> carry;
  const size_t size = tiles * static_cast<size_t>(floats_per_tile);
  if (carry.size() < size) carry.resize(size);
  return carry.data();
}

// A tile's results stored k-major, the layout PackRowTiles makes of a
// next linear's input: each of the panel's features (those in `mask`) as
// kRows consecutive values, one per row, at y + feature * kRows.
template <int kRows>
__attribute__((target("avx512f"))) void StoreKMajor(__m512 (&acc)[2][kRows], float* y, const __mmask16* mask) {
  constexpr __mmask16 kRowLanes = static_cast<__mmask16>((1u << kRows) - 1);
  for (int half = 0; half < 2; ++half) {
    __m512 t[16];
#pragma GCC unroll 16
    for (int r = 0; r < 16; ++r) t[r] = r < kRows ? acc[half][r] : _mm512_setzero_ps();
    simd::Transpose16(t);
    for (int f = 0; f < 16; ++f) {
      if (mask[half] >> f & 1) _mm512_mask_storeu_ps(y + (16 * half + f) * kRows, kRowLanes, t[f]);
    }
  }
}

// Two linears in a row (an MLP: the first's results are the second's only
// input): the first linear's panels `first(copy, tiles, first, last,
// hidden)` run through RunPanels (x's row tiles copied k-major by each
// thread for itself up to kPerThreadCopyRows rows, above once for all and
// run in groups) and write their results k-major into one shared `hidden`
// (as PackRowTiles would copy them, `hidden_k` 32-bit values per row); then
// the second's panels `second(hidden, tiles, first, last)` read them as they
// are. Against two linears: no row-major hidden rows, and no copy of them
// (on few rows each thread copied all of them for itself: 0.6 MB per
// thread for an image's fc2); above kPerThreadCopyRows one parallel region
// fewer too. `hidden` is a GrowingBuffer of the calling thread.
template <Isa isa, typename T, typename FirstFn, typename SecondFn>
void RunChained(const T* x, int64_t k, int64_t hidden_k, const std::vector<RowTile>& tiles, int64_t first_panels,
                int64_t second_panels, const FirstFn& first, const SecondFn& second) {
  static_assert(sizeof(T) == 4, "rows of 32-bit values");
  if (tiles.empty()) return;
  thread_local GrowingBuffer<T> buffer;
  const int64_t m = tiles.back().first + tiles.back().rows;
  T* hidden = buffer.Get(static_cast<size_t>(m * hidden_k));
  RunPanels<isa>(x, k, tiles, first_panels,
                 [&](const T* copy, const std::vector<RowTile>& group, int64_t begin, int64_t end) {
                   first(copy, group, begin, end, hidden);
                 });
  const std::vector<std::vector<RowTile>> hidden_groups =
      m > kPerThreadCopyRows ? GroupTiles(tiles, hidden_k * 4) : std::vector<std::vector<RowTile>>{tiles};
  at::parallel_for(0, second_panels, 1, [&](int64_t begin, int64_t end) {
    for (const std::vector<RowTile>& group : hidden_groups) second(hidden, group, begin, end);
  });
}

// `kRows` rows (k-major, `xt`) against the two registers of one panel. Each
// step over k loads the panel's weights once and uses them for every row.
// With `swish`, y * sigmoid(y) is stored instead of the sums y; with
// `kmajor`, stored as StoreKMajor lays them out (ldy unused).
// One step's 32 weights of a panel as two registers (features 0-15 and
// 16-31): float32 weights as they lie; bfloat16 ones (PackPanelWeight's
// bfloat16 layout: each 32-bit lane j holds features j and j + 16) widened
// by a shift and a mask, exact.
__attribute__((target("avx512f"))) inline void LoadStep(const float* p, __m512& w0, __m512& w1) {
  w0 = _mm512_load_ps(p);
  w1 = _mm512_load_ps(p + 16);
}
__attribute__((target("avx512f"))) inline void LoadStep(const uint16_t* p, __m512& w0, __m512& w1) {
  const __m512i pairs = _mm512_load_si512(p);
  w0 = _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, pairs, 16));  // maskz: GCC bug 105593
  w1 = _mm512_castsi512_ps(_mm512_and_si512(pairs, _mm512_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

template <int kRows, typename W>
__attribute__((target("avx512f"))) void Tile(const float* xt, const W* panel, int64_t k_size, const __m512* bias,
                                             float* y, int64_t ldy, const __mmask16* mask, bool swish, bool kmajor,
                                             const NextPanelLines& next) {
  __m512 acc[2][kRows];
#pragma GCC unroll 32
  for (int r = 0; r < kRows; ++r) {
    acc[0][r] = bias[0];
    acc[1][r] = bias[1];
  }
  const W* p = panel;
  const float* x = xt;
  const char* ahead = next.lines;
  for (int64_t k = 0; k < k_size; ++k, p += kPanel, x += kRows, ahead += next.step) {
    // The hardware prefetcher alone leaves the loads waiting.
    const char* own = reinterpret_cast<const char*>(p) + next.own_ahead;
    if (next.own_to_l2) {
      _mm_prefetch(own, _MM_HINT_T1);
      if constexpr (sizeof(W) == 4) _mm_prefetch(own + 64, _MM_HINT_T1);
    } else {
      _mm_prefetch(own, _MM_HINT_T0);
      if constexpr (sizeof(W) == 4) _mm_prefetch(own + 64, _MM_HINT_T0);
    }
    _mm_prefetch(ahead, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(x + kRowsAhead), _MM_HINT_T0);
    __m512 w0, w1;
    LoadStep(p, w0, w1);
#pragma GCC unroll 32
    for (int r = 0; r < kRows; ++r) {
      const __m512 xv = _mm512_set1_ps(x[r]);
      acc[0][r] = _mm512_fmadd_ps(xv, w0, acc[0][r]);
      acc[1][r] = _mm512_fmadd_ps(xv, w1, acc[1][r]);
    }
  }
  if (swish) {
#pragma GCC unroll 32
    for (int r = 0; r < kRows; ++r) {
      acc[0][r] = simd::Swish(acc[0][r]);
      acc[1][r] = simd::Swish(acc[1][r]);
    }
  }
  if (kmajor) return StoreKMajor<kRows>(acc, y, mask);
#pragma GCC unroll 32
  for (int r = 0; r < kRows; ++r) {
    _mm512_mask_storeu_ps(y + r * ldy, mask[0], acc[0][r]);
    _mm512_mask_storeu_ps(y + r * ldy + 16, mask[1], acc[1][r]);
  }
}

// Runs Tile<rows> for a row count known only at run time.
template <typename W, int kRows = 1>
__attribute__((target("avx512f"))) void TileRows(int rows, const float* xt, const W* panel, int64_t k_size,
                                                 const __m512* bias, float* y, int64_t ldy, const __mmask16* mask,
                                                 bool swish, bool kmajor, const NextPanelLines& next) {
  if constexpr (kRows <= kTile) {
    if (rows == kRows) return Tile<kRows>(xt, panel, k_size, bias, y, ldy, mask, swish, kmajor, next);
    TileRows<W, kRows + 1>(rows, xt, panel, k_size, bias, y, ldy, mask, swish, kmajor, next);
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

// Where a tile's results for panel feature n0 go in y [rows, n_size]: row
// by row, or (kmajor) in the k-major tile layout of PackRowTiles, which the
// next linear then reads as it is.
inline int64_t TileOutputOffset(const RowTile& tile, int64_t n0, int64_t n_size, bool kmajor) {
  return tile.first * n_size + (kmajor ? n0 * tile.rows : n0);
}

// Every row tile against panels [first, last), panel by panel: a panel's
// weights come from memory once and stay in cache for the tiles after the
// first. W: float, or uint16_t for bfloat16 weights (float32 inputs and
// sums all the same).
template <typename W>
__attribute__((target("avx512f"))) void Panels(const float* xt, const std::vector<RowTile>& tiles, int64_t k_size,
                                               const W* packed, const float* bias, int64_t n_size, float* y,
                                               int64_t first, int64_t last, bool swish, bool kmajor = false) {
  for (int64_t p = first; p < last; ++p) {
    const int64_t n0 = p * kPanel;
    const PanelEdge edge(bias, n0, n_size);
    const W* panel = packed + p * k_size * kPanel;
    RunPanelTiles(tiles.size(), k_size, kPanel * sizeof(W), kAheadSteps, panel, p + 1 < last, nullptr, 0,
                  [&](size_t t, int64_t, int64_t, const NextPanelLines& next, const Carry&) {
                    const RowTile& tile = tiles[t];
                    TileRows(tile.rows, xt + tile.first * k_size, panel, k_size, edge.bias,
                             y + TileOutputOffset(tile, n0, n_size, kmajor), n_size, edge.mask, swish, kmajor, next);
                  });
  }
}

// The same tiles on bfloat16 weights and inputs (AVX512-BF16): each 32-bit
// lane holds a pair of bfloat16 along k, and one vdpbf16ps adds both
// products of a pair to a float32 accumulator. Half the bytes of float32
// weights to stream, twice the products per instruction.
// The sums are rounded to bfloat16 as they are stored (simd::StoreBFloat16:
// to nearest, ties to even, as at::Tensor::to rounds them).
// StoreKMajor for bfloat16 results: each row's 32 features rounded (as
// StoreBFloat16 rounds) and paired along the features, (2j, 2j + 1) in one
// 32-bit lane as a row of bfloat16 lies in memory, then each pair's kRows
// lanes, one per row, at y + j * kRows (32-bit units).
template <int kRows>
__attribute__((target("avx512f"))) void StoreKMajorBf16(__m512 (&acc)[2][kRows], uint32_t* y, const __mmask16* mask) {
  constexpr __mmask16 kRowLanes = static_cast<__mmask16>((1u << kRows) - 1);
  const __m512i even = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  const __m512i odd = _mm512_setr_epi32(1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 23, 25, 27, 29, 31);
  const __m512i high = _mm512_set1_epi32(static_cast<int>(0xFFFF0000u));
  __m512 t[16];
#pragma GCC unroll 16
  for (int r = 0; r < 16; ++r) {
    if (r < kRows) {
      const __m512i lo = _mm512_castps_si512(simd::RoundToBFloat16(acc[0][r]));
      const __m512i hi = _mm512_castps_si512(simd::RoundToBFloat16(acc[1][r]));
      const __m512i first = _mm512_maskz_srli_epi32(0xFFFF, _mm512_permutex2var_epi32(lo, even, hi), 16);
      const __m512i second = _mm512_and_si512(_mm512_permutex2var_epi32(lo, odd, hi), high);
      t[r] = _mm512_castsi512_ps(_mm512_or_si512(first, second));
    } else {
      t[r] = _mm512_setzero_ps();
    }
  }
  simd::Transpose16(t);
  // Pair j holds features 2j and 2j + 1; the features come in even counts.
  const uint32_t features = static_cast<uint32_t>(mask[0]) | static_cast<uint32_t>(mask[1]) << 16;
  for (int j = 0; j < 16; ++j) {
    if (features >> (2 * j) & 1) {
      _mm512_mask_storeu_ps(reinterpret_cast<float*>(y + j * kRows), kRowLanes, t[j]);
    }
  }
}

// The products of the bfloat16 and int8 tiles, one register of 16 sums:
// vdpbf16ps (two bfloat16 products per lane into float32) and vpdpbusd
// (four u8 x s8 products per lane into int32). Written out: GCC 12 copies
// the accumulator around each _mm512_dpbusd_epi32 and spilled most of a
// tile's 28 to the stack; written out, both need only AVX-512F here.
struct Bf16Pairs {
  __attribute__((target("avx512f"), always_inline)) static inline void Add(__m512& acc, __m512i x, __m512i w) {
    __asm__("vdpbf16ps %[w], %[x], %[acc]" : [acc] "+v"(acc) : [x] "v"(x), [w] "v"(w));
  }
};
struct Int8Quads {
  __attribute__((target("avx512f"), always_inline)) static inline void Add(__m512i& acc, __m512i x, __m512i w) {
    __asm__("vpdpbusd %[w], %[x], %[acc]" : [acc] "+v"(acc) : [x] "v"(x), [w] "v"(w));
  }
};

// The step loop the bfloat16 and int8 tiles share: `steps` steps of a
// panel of 128 bytes (two registers of 32-bit lanes, each a pair or a quad
// of one feature's weights) against `kRows` rows of k-major 32-bit groups
// of inputs, each row's group broadcast and `Products::Add`ed to both of
// its accumulators.
template <typename Products, int kRows, typename Acc>
__attribute__((target("avx512f"), always_inline)) inline void StepGroups(Acc (&acc)[2][kRows], const uint32_t* xt,
                                                                         const void* panel, int64_t steps,
                                                                         const NextPanelLines& next) {
  const char* p = static_cast<const char*>(panel);
  const uint32_t* x = xt;
  const char* ahead = next.lines;
  for (int64_t k = 0; k < steps; ++k, p += kPanelStepBytes, x += kRows, ahead += next.step) {
    _mm_prefetch(p + next.own_ahead, _MM_HINT_T0);
    _mm_prefetch(p + next.own_ahead + 64, _MM_HINT_T0);
    _mm_prefetch(ahead, _MM_HINT_T0);
    _mm_prefetch(reinterpret_cast<const char*>(x + kRowsAhead), _MM_HINT_T0);
    const __m512i w0 = _mm512_load_si512(p);
    const __m512i w1 = _mm512_load_si512(p + 64);
#pragma GCC unroll 32
    for (int r = 0; r < kRows; ++r) {
      const __m512i xv = _mm512_set1_epi32(static_cast<int>(x[r]));
      Products::Add(acc[0][r], xv, w0);
      Products::Add(acc[1][r], xv, w1);
    }
  }
}

template <int kRows>
__attribute__((target("avx512f,avx512bf16"))) void TileBf16(const uint32_t* xt, const uint16_t* panel, int64_t pairs,
                                                            const __m512* bias, uint16_t* y, int64_t ldy,
                                                            const __mmask16* mask, bool swish, bool kmajor,
                                                            const NextPanelLines& next) {
  __m512 acc[2][kRows];
#pragma GCC unroll 32
  for (int r = 0; r < kRows; ++r) {
    acc[0][r] = bias[0];
    acc[1][r] = bias[1];
  }
  StepGroups<Bf16Pairs>(acc, xt, panel, pairs, next);
  if (swish) {
#pragma GCC unroll 32
    for (int r = 0; r < kRows; ++r) {
      acc[0][r] = simd::Swish(acc[0][r]);
      acc[1][r] = simd::Swish(acc[1][r]);
    }
  }
  if (kmajor) return StoreKMajorBf16<kRows>(acc, reinterpret_cast<uint32_t*>(y), mask);
#pragma GCC unroll 32
  for (int r = 0; r < kRows; ++r) {
    simd::StoreBFloat16(y + r * ldy, mask[0], acc[0][r]);
    simd::StoreBFloat16(y + r * ldy + 16, mask[1], acc[1][r]);
  }
}

template <int kRows = 1>
__attribute__((target("avx512f,avx512bf16"))) void TileRowsBf16(int rows, const uint32_t* xt, const uint16_t* panel,
                                                                int64_t pairs, const __m512* bias, uint16_t* y,
                                                                int64_t ldy, const __mmask16* mask, bool swish,
                                                                bool kmajor, const NextPanelLines& next) {
  if constexpr (kRows <= kTile) {
    if (rows == kRows) return TileBf16<kRows>(xt, panel, pairs, bias, y, ldy, mask, swish, kmajor, next);
    TileRowsBf16<kRows + 1>(rows, xt, panel, pairs, bias, y, ldy, mask, swish, kmajor, next);
  }
}

// Row tiles of x (bfloat16 pairs, k-major as the float32 tiles) against
// panels [first, last); y is bfloat16 [rows, n_size], or k-major pairs
// (kmajor; n_size even).
__attribute__((target("avx512f,avx512bf16"))) void PanelsBf16(const uint32_t* xt, const std::vector<RowTile>& tiles,
                                                              int64_t pairs, const uint16_t* packed, const float* bias,
                                                              int64_t n_size, uint16_t* y, int64_t first, int64_t last,
                                                              bool swish, bool kmajor = false) {
  for (int64_t p = first; p < last; ++p) {
    const int64_t n0 = p * kPanel;
    const PanelEdge edge(bias, n0, n_size);
    const uint16_t* panel = packed + p * pairs * 2 * kPanel;
    RunPanelTiles(tiles.size(), pairs, kPanelStepBytes, kAheadSteps, panel, p + 1 < last, nullptr, 0,
                  [&](size_t t, int64_t, int64_t, const NextPanelLines& next, const Carry&) {
                    const RowTile& tile = tiles[t];
                    TileRowsBf16(tile.rows, xt + tile.first * pairs, panel, pairs, edge.bias,
                                 y + TileOutputOffset(tile, n0, n_size, kmajor), n_size, edge.mask, swish, kmajor,
                                 next);
                  });
  }
}

// The same tiles on int8 (AVX512-VNNI): weights quantized at load to int8
// per output feature (symmetric, scale = max |w| / 127), inputs quantized
// per call and per row to uint8 (scale (max - min) / 255 over the row with
// zero inside the range, and a zero point), one vpdpbusd adding four u8 x s8
// products to each int32 sum. Each 32-bit lane of a panel step holds four
// consecutive inputs of one feature, and a row tile's k-major copy holds
// four of each row: the bfloat16 tiles' layout with groups of four bytes
// for pairs. The sums are exact in int32 (|sum| <= 255 * 127 * k, below
// 2^31 up to k = 66,000); the zero point's share, zero * (the feature's sum
// of int8 weights), starts the sums, and the epilogue scales them to
// float32 (row scale x feature scale), adds the bias and stores float32.
// A packed int8 weight (PackPanelWeight with dtype int8: PackInt8) is one
// byte tensor: the panels' weights ([panels][k4][32][4], k4 = ceil(k / 4),
// zero past k and past the features), then the features' float32 scales
// ([panels * 32]), then their int32 weight sums ([panels * 32]).

// Rows [first, last) of x [m, k] quantized to uint8, each row to `steps`
// groups of four bytes at q + row * steps (bytes past k zero: the weights
// there are zero too), with its scale and zero point: x ~ scale * (q - zero).
__attribute__((target("avx512f"))) void QuantizeRows(const float* x, int64_t k, int64_t steps, int64_t first,
                                                     int64_t last, uint32_t* q, float* scale, int32_t* zero) {
  for (int64_t r = first; r < last; ++r) {
    const float* row = x + r * k;
    __m512 lo = _mm512_setzero_ps();
    __m512 hi = _mm512_setzero_ps();
    for (int64_t i = 0; i < k; i += 16) {
      const __m512 v = _mm512_maskz_loadu_ps(simd::TailMask(i, k), row + i);  // masked lanes: 0, inside the range
      lo = _mm512_maskz_min_ps(0xFFFF, lo, v);                                // maskz here and below: GCC bug 105593
      hi = _mm512_maskz_max_ps(0xFFFF, hi, v);
    }
    alignas(64) float lows[16], highs[16];
    _mm512_store_ps(lows, lo);
    _mm512_store_ps(highs, hi);
    const float low = *std::min_element(lows, lows + 16);
    float s = (*std::max_element(highs, highs + 16) - low) / 255.0f;
    if (!(s > 0.0f) || !std::isfinite(s)) s = 1.0f;  // a row of zeros (or not finite: no exact answer anyway)
    const int32_t z = static_cast<int32_t>(std::min(255.0f, std::max(0.0f, std::nearbyint(-low / s))));
    const __m512 inverse = _mm512_set1_ps(1.0f / s);
    const __m512i offset = _mm512_set1_epi32(z);
    auto* bytes = reinterpret_cast<uint8_t*>(q + r * steps);
    for (int64_t i = 0; i < k; i += 16) {
      const __mmask16 lanes = simd::TailMask(i, k);
      const __m512 v = _mm512_maskz_loadu_ps(lanes, row + i);
      __m512i n = _mm512_add_epi32(_mm512_maskz_cvtps_epi32(0xFFFF, _mm512_mul_ps(v, inverse)), offset);
      n = _mm512_maskz_min_epi32(0xFFFF, _mm512_maskz_max_epi32(0xFFFF, n, _mm512_setzero_si512()),
                                 _mm512_set1_epi32(255));
      _mm512_mask_cvtepi32_storeu_epi8(bytes + i, lanes, n);
    }
    for (int64_t i = k; i < steps * 4; ++i) bytes[i] = 0;
    scale[r] = s;
    zero[r] = z;
  }
}

// A panel's per-feature values for the int8 tiles: the store masks, the
// bias, the weights' scales and int32 sums (zero past the features).
struct PanelEdgeInt8 {
  PanelEdge edge;
  __m512 scale[2];
  __m512i sum[2];
  __attribute__((target("avx512f")))
  PanelEdgeInt8(const float* biases, const float* scales, const int32_t* sums, int64_t n0, int64_t n_size)
      : edge(biases, n0, n_size) {
    for (int h = 0; h < 2; ++h) {
      scale[h] = _mm512_loadu_ps(scales + n0 + 16 * h);
      sum[h] = _mm512_loadu_si512(sums + n0 + 16 * h);
    }
  }
};

// One row's 32 int32 sums (the zero point's share included) scaled to
// float32 (row scale x feature scale), the bias added, swish, stored.
__attribute__((target("avx512f"), always_inline)) inline void StoreInt8Row(__m512i lo, __m512i hi, float row_scale,
                                                                           const PanelEdgeInt8& e, float* y,
                                                                           bool swish) {
  const __m512 s = _mm512_set1_ps(row_scale);
  const __m512i acc[2] = {lo, hi};
  for (int h = 0; h < 2; ++h) {
    __m512 v = _mm512_fmadd_ps(_mm512_maskz_cvtepi32_ps(0xFFFF, acc[h]), _mm512_mul_ps(s, e.scale[h]), e.edge.bias[h]);
    if (swish) v = simd::Swish(v);
    _mm512_mask_storeu_ps(y + 16 * h, e.edge.mask[h], v);
  }
}

// `kRows` rows of quantized inputs (k-major groups of four, `xt`; their
// scales and zero points at `row_scale`, `row_zero`) against one panel.
template <int kRows>
__attribute__((target("avx512f,avx512vnni"))) void TileInt8(const uint32_t* xt, const int8_t* panel, int64_t steps,
                                                            const PanelEdgeInt8& e, const float* row_scale,
                                                            const int32_t* row_zero, float* y, int64_t ldy, bool swish,
                                                            const NextPanelLines& next) {
  __m512i acc[2][kRows];
#pragma GCC unroll 32
  for (int r = 0; r < kRows; ++r) {
    const __m512i z = _mm512_set1_epi32(-row_zero[r]);
    acc[0][r] = _mm512_mullo_epi32(z, e.sum[0]);
    acc[1][r] = _mm512_mullo_epi32(z, e.sum[1]);
  }
  StepGroups<Int8Quads>(acc, xt, panel, steps, next);
#pragma GCC unroll 32
  for (int r = 0; r < kRows; ++r) StoreInt8Row(acc[0][r], acc[1][r], row_scale[r], e, y + r * ldy, swish);
}

template <int kRows = 1>
__attribute__((target("avx512f,avx512vnni"))) void TileRowsInt8(int rows, const uint32_t* xt, const int8_t* panel,
                                                                int64_t steps, const PanelEdgeInt8& e,
                                                                const float* row_scale, const int32_t* row_zero,
                                                                float* y, int64_t ldy, bool swish,
                                                                const NextPanelLines& next) {
  if constexpr (kRows <= kTile) {
    if (rows == kRows) return TileInt8<kRows>(xt, panel, steps, e, row_scale, row_zero, y, ldy, swish, next);
    TileRowsInt8<kRows + 1>(rows, xt, panel, steps, e, row_scale, row_zero, y, ldy, swish, next);
  }
}

// The quantized rows of an int8 linear's input, as the tiles read them: the
// row tiles' k-major copy (`steps` 32-bit groups per row; for the AMX-INT8
// tiles the rows as they lie), and each row's scale and zero point.
struct QuantizedRows {
  uint32_t* tiles;
  float* scale;
  int32_t* zero;
};

// Every row tile against the int8 panels [first, last) of `packed`
// (PackInt8's layout, `panels` in all); y float32 [rows, n_size].
__attribute__((target("avx512f,avx512vnni"))) void PanelsInt8(const QuantizedRows& x, const std::vector<RowTile>& tiles,
                                                              int64_t steps, const int8_t* packed, int64_t panels,
                                                              const float* bias, int64_t n_size, float* y,
                                                              int64_t first, int64_t last, bool swish) {
  const auto* scales = reinterpret_cast<const float*>(packed + panels * steps * kPanelStepBytes);
  const auto* sums = reinterpret_cast<const int32_t*>(scales + panels * kPanel);
  for (int64_t p = first; p < last; ++p) {
    const int64_t n0 = p * kPanel;
    const PanelEdgeInt8 edge(bias, scales, sums, n0, n_size);
    const int8_t* panel = packed + p * steps * kPanelStepBytes;
    RunPanelTiles(tiles.size(), steps, kPanelStepBytes, kAheadSteps, panel, p + 1 < last, nullptr, 0,
                  [&](size_t t, int64_t, int64_t, const NextPanelLines& next, const Carry&) {
                    const RowTile& tile = tiles[t];
                    TileRowsInt8(tile.rows, x.tiles + tile.first * steps, panel, steps, edge, x.scale + tile.first,
                                 x.zero + tile.first, y + TileOutputOffset(tile, n0, n_size, false), n_size, swish,
                                 next);
                  });
  }
}

// RunPanels for int8: x's float32 rows quantized (QuantizeRows) and, with
// `k_major`, copied k-major (PackRowTiles on the groups of four bytes), then
// `panels(rows, tiles, first, last)`: up to kPerThreadCopyRows rows by each
// thread for itself inside the one parallel region, above once, by all
// threads together, and (k-major) run in groups of tiles (RunInGroups).
// Without `k_major` (the AMX-INT8 tiles, which read the rows as they lie)
// QuantizedRows::tiles holds the quantized rows row-major, steps * 4 bytes a
// row, and `panels` gets every tile at once.
template <typename PanelsFn>
void RunPanelsInt8(const float* x, int64_t k, const std::vector<RowTile>& tiles, int64_t panel_count, bool k_major,
                   const PanelsFn& panels) {
  if (tiles.empty()) return;
  const int64_t steps = Int8Steps(k);
  const int64_t m = tiles.back().first + tiles.back().rows;
  struct Buffers {
    GrowingBuffer<uint32_t> rows, tiles;
    GrowingBuffer<float> scale;
    GrowingBuffer<int32_t> zero;
    QuantizedRows Get(int64_t m, int64_t steps, bool k_major, uint32_t** rows_out) {
      *rows_out = rows.Get(static_cast<size_t>(m * steps));
      return {k_major ? tiles.Get(static_cast<size_t>(m * steps)) : *rows_out, scale.Get(static_cast<size_t>(m)),
              zero.Get(static_cast<size_t>(m))};
    }
  };
  auto quantize = [&](const QuantizedRows& q, uint32_t* rows, const RowTile* begin, const RowTile* end) {
    QuantizeRows(x, k, steps, begin->first, (end - 1)->first + (end - 1)->rows, rows, q.scale, q.zero);
    if (k_major) PackRowTiles(rows, steps, begin, end, q.tiles);
  };
  if (m > kPerThreadCopyRows) {
    thread_local Buffers buffers;
    uint32_t* rows = nullptr;
    const QuantizedRows q = buffers.Get(m, steps, k_major, &rows);
    at::parallel_for(0, static_cast<int64_t>(tiles.size()), 1, [&](int64_t first, int64_t last) {
      quantize(q, rows, tiles.data() + first, tiles.data() + last);
    });
    const std::vector<std::vector<RowTile>> groups =
        k_major ? GroupTiles(tiles, steps * 4) : std::vector<std::vector<RowTile>>{tiles};
    at::parallel_for(0, panel_count, 1, [&](int64_t first, int64_t last) {
      for (const std::vector<RowTile>& group : groups) panels(q, group, first, last);
    });
    return;
  }
  at::parallel_for(0, panel_count, 1, [&](int64_t first, int64_t last) {
    thread_local Buffers buffers;
    uint32_t* rows = nullptr;
    const QuantizedRows q = buffers.Get(m, steps, k_major, &rows);
    quantize(q, rows, tiles.data(), tiles.data() + tiles.size());
    panels(q, tiles, first, last);
  });
}

// The float32 tiles on AVX2 + FMA (CPUs without AVX-512: AMD Zen 2 and 3,
// Intel's E-core Xeons), on panels of 16 features (two ymm registers) and
// tiles of up to 6 rows: 12 accumulators, two weight registers and a
// broadcast of the 16 registers. A step over k reads one 64-byte line of
// the panel. The structure is the AVX-512 kernel's: row tiles copied
// k-major (PackRowTilesAvx2), panels split among the threads, groups of
// tiles above kPerThreadCopyRows rows, the next panel prefetched.
constexpr int kPanelAvx2 = 16;
constexpr int kTileAvx2 = 6;
// Tiles of 7 rows (14 accumulators, the second weight register read from
// memory by each FMA: 15 loads per 14 FMAs) where they save a tile: 7, 13
// and 14 rows (one tile instead of two, two instead of three of 4-5 rows,
// whose 8-10 accumulators barely cover the FMA latency): 10-20% faster on
// Zen 4 capped at AVX2. From 19 rows on, three tiles of 7 ran 10-15%
// slower than four of 5: the loads, not the FMAs, set the pace.
constexpr int kTallTileAvx2 = 7;
int TileHeightAvx2(int64_t rows, bool float_weights) {
  return float_weights && rows <= 2 * kTallTileAvx2 ? kTallTileAvx2 : kTileAvx2;
}
// The AVX2 tiles run in blocks over k (RunPanelTiles) on up to 18 rows in
// more than one tile (a caption's 7-18 tokens): 8-20% faster per linear on
// Zen 4 capped at AVX2 with the weights streamed from memory; level on
// 19-28 rows, where the products cover the stream. The AVX-512 tiles (14
// rows) measured 3-20% slower in blocks on 15-50 rows: tile by tile there.
constexpr int64_t kBlockedRowsAvx2 = 3 * kTileAvx2;

// StoreKMajor for an AVX2 tile, from its sums stored row by row (`rows`,
// kRows x 16): feature f's kRows values (one per row) at y + f * kRows, for
// the panel's first `valid` features.
template <int kRows>
void StoreKMajorAvx2(const float (&rows)[kRows][kPanelAvx2], float* y, int valid) {
  for (int f = 0; f < valid; ++f) {
    for (int r = 0; r < kRows; ++r) y[f * kRows + r] = rows[r][f];
  }
}

// LoadStep for the AVX2 tiles: 16 weights, features 0-7 and 8-15 (bfloat16
// lane j: features j and j + 8).
__attribute__((target("avx2"))) inline void LoadStepAvx2(const float* p, __m256& w0, __m256& w1) {
  w0 = _mm256_load_ps(p);
  w1 = _mm256_load_ps(p + 8);
}
__attribute__((target("avx2"))) inline void LoadStepAvx2(const uint16_t* p, __m256& w0, __m256& w1) {
  const __m256i pairs = _mm256_load_si256(reinterpret_cast<const __m256i*>(p));
  w0 = _mm256_castsi256_ps(_mm256_slli_epi32(pairs, 16));
  w1 = _mm256_castsi256_ps(_mm256_and_si256(pairs, _mm256_set1_epi32(static_cast<int>(0xFFFF0000u))));
}

// The tallest AVX2 tile for weights of type W: the 7-row one reads float32
// weights from memory in its FMAs, which bfloat16 ones cannot be.
template <typename W>
constexpr int kTallestAvx2 = sizeof(W) == 4 ? kTallTileAvx2 : kTileAvx2;

template <int kRows, typename W>
__attribute__((target("avx2,fma"))) void TileAvx2(const float* xt, const W* panel, int64_t k_size, const __m256* bias,
                                                  float* y, int64_t ldy, const __m256i* mask, int valid, bool swish,
                                                  bool kmajor, const NextPanelLines& next, const Carry& carry) {
  __m256 acc[2][kRows];
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    acc[0][r] = carry.in ? _mm256_loadu_ps(carry.in + r * kPanelAvx2) : bias[0];
    acc[1][r] = carry.in ? _mm256_loadu_ps(carry.in + r * kPanelAvx2 + 8) : bias[1];
  }
  const W* p = panel;
  const float* x = xt;
  const char* ahead = next.lines;
  for (int64_t k = 0; k < k_size; ++k, p += kPanelAvx2, x += kRows, ahead += next.step) {
    _mm_prefetch(reinterpret_cast<const char*>(p) + next.own_ahead, _MM_HINT_T0);
    _mm_prefetch(ahead, _MM_HINT_T0);
    if constexpr (kRows <= kTileAvx2) {
      __m256 w0, w1;
      LoadStepAvx2(p, w0, w1);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const __m256 xv = _mm256_broadcast_ss(x + r);
        acc[0][r] = _mm256_fmadd_ps(xv, w0, acc[0][r]);
        acc[1][r] = _mm256_fmadd_ps(xv, w1, acc[1][r]);
      }
    } else {
      static_assert(sizeof(W) == 4, "the 7-row tile reads float32 weights");
      const __m256 w0 = _mm256_load_ps(p);
#pragma GCC unroll 8
      for (int r = 0; r < kRows; ++r) {
        const __m256 xv = _mm256_broadcast_ss(x + r);
        acc[0][r] = _mm256_fmadd_ps(xv, w0, acc[0][r]);
        // The second half's weights as the FMA's memory operand, for the
        // register the 14 accumulators leave no room for (written out: GCC
        // loads them once into a register and spills an accumulator).
        __asm__("vfmadd231ps %[w], %[x], %[acc]"
                : [acc] "+x"(acc[1][r])
                : [x] "x"(xv), [w] "m"(*reinterpret_cast<const __m256*>(p + 8)));
      }
    }
  }
  if (carry.out) {
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      _mm256_storeu_ps(carry.out + r * kPanelAvx2, acc[0][r]);
      _mm256_storeu_ps(carry.out + r * kPanelAvx2 + 8, acc[1][r]);
    }
    return;
  }
  if (swish) {
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      acc[0][r] = simd::Swish(acc[0][r]);
      acc[1][r] = simd::Swish(acc[1][r]);
    }
  }
  if (kmajor) {
    alignas(32) float rows[kRows][kPanelAvx2];
#pragma GCC unroll 8
    for (int r = 0; r < kRows; ++r) {
      _mm256_store_ps(rows[r], acc[0][r]);
      _mm256_store_ps(rows[r] + 8, acc[1][r]);
    }
    return StoreKMajorAvx2<kRows>(rows, y, valid);
  }
#pragma GCC unroll 8
  for (int r = 0; r < kRows; ++r) {
    _mm256_maskstore_ps(y + r * ldy, mask[0], acc[0][r]);
    _mm256_maskstore_ps(y + r * ldy + 8, mask[1], acc[1][r]);
  }
}

template <typename W, int kRows = 1>
__attribute__((target("avx2,fma"))) void TileRowsAvx2(int rows, const float* xt, const W* panel, int64_t k_size,
                                                      const __m256* bias, float* y, int64_t ldy, const __m256i* mask,
                                                      int valid, bool swish, bool kmajor, const NextPanelLines& next,
                                                      const Carry& carry) {
  if constexpr (kRows <= kTallestAvx2<W>) {
    if (rows == kRows) {
      return TileAvx2<kRows>(xt, panel, k_size, bias, y, ldy, mask, valid, swish, kmajor, next, carry);
    }
    TileRowsAvx2<W, kRows + 1>(rows, xt, panel, k_size, bias, y, ldy, mask, valid, swish, kmajor, next, carry);
  }
}

// Every row tile against the 16-feature panels [first, last), as Panels.
template <typename W>
__attribute__((target("avx2,fma"))) void PanelsAvx2(const float* xt, const std::vector<RowTile>& tiles, int64_t k_size,
                                                    const W* packed, const float* bias, int64_t n_size, float* y,
                                                    int64_t first, int64_t last, bool swish, bool kmajor = false) {
  const int64_t rows = tiles.empty() ? 0 : tiles.back().first + tiles.back().rows - tiles.front().first;
  float* carry =
      tiles.size() > 1 && rows <= kBlockedRowsAvx2 ? PanelCarry(tiles.size(), kTallTileAvx2 * kPanelAvx2) : nullptr;
  for (int64_t p = first; p < last; ++p) {
    const int64_t n0 = p * kPanelAvx2;
    const int valid = static_cast<int>(std::min<int64_t>(kPanelAvx2, n_size - n0));
    const __m256i mask[2] = {simd::TailMask8(0, valid), valid > 8 ? simd::TailMask8(8, valid) : _mm256_setzero_si256()};
    const __m256 edge_bias[2] = {bias ? _mm256_maskload_ps(bias + n0, mask[0]) : _mm256_setzero_ps(),
                                 bias ? _mm256_maskload_ps(bias + n0 + 8, mask[1]) : _mm256_setzero_ps()};
    const W* panel = packed + p * k_size * kPanelAvx2;
    RunPanelTiles(tiles.size(), k_size, kPanelAvx2 * sizeof(W), kAheadStepsAvx2, panel, p + 1 < last, carry,
                  kTallTileAvx2 * kPanelAvx2,
                  [&](size_t t, int64_t k0, int64_t steps, const NextPanelLines& next, const Carry& sums) {
                    const RowTile& tile = tiles[t];
                    TileRowsAvx2(tile.rows, xt + tile.first * k_size + k0 * tile.rows, panel + k0 * kPanelAvx2, steps,
                                 edge_bias, y + TileOutputOffset(tile, n0, n_size, kmajor), n_size, mask, valid, swish,
                                 kmajor, next, sums);
                  });
  }
}

// The bfloat16 linear on AMX tiles (Intel Xeons from Sapphire Rapids on):
// the same packed weights as PanelsBf16 (per panel of 32 features, per pair
// of inputs, 32 features of 2 values: 128 bytes), read as tiles of 16 pairs
// (32 inputs) by 16 features, and the rows of x as they lie (row-major
// bfloat16). Eight tile registers: four sums of 16 rows x 16 features
// (32 rows x the panel's 32 features), two of x's rows, two of weights; one
// TDPBF16PS multiplies a 16 x 32 block of x by a 32 x 16 block of weights,
// 8192 products. Each thread runs its share of the panels; per panel (per
// group of panels where x outgrows L2: AmxPanelGroup) the inputs go in
// chunks of kAmxChunkBytes (256 inputs), every 32-row block of x against
// one chunk before the next (the chunk's 16 KB of weights stay in L1 for
// the blocks after the first; the sums of the blocks wait in a buffer of
// the thread in between), and the blocks fetch the next chunk's weights to
// L2 as they go. The sums get the bias, the swish and the
// rounding to bfloat16 of PanelsBf16's epilogue. Chunks of 256 inputs
// against 768 (Intel Xeon, family 6 model 167; 400 rows, 2 threads, 12
// layers' weights in turn, with the prefetches): 768 -> 2304 2.07 against
// 1.62 TFLOP/s, 768 -> 768 1.96 against 1.60; 3072 -> 768 level
// (1.25-1.36; in groups of panels since, AmxPanelGroup). oneDNN's packed
// linear on the same: 2.19 / 1.18 / 1.39 TFLOP/s. The int8 linear runs the
// same blocks on AMX-INT8 tiles (PanelsAmxInt8: 512 inputs a chunk, the
// same bytes).
constexpr int64_t kAmxChunkBytes = 512;
constexpr int64_t kAmxRows = 32;

// Tiles 0-3: sums (rows 0-15 x features 0-15, 0-15 x 16-31, 16-31 x 0-15,
// 16-31 x 16-31); 4, 5: x's rows 0-15 and 16-31; 6, 7: the weights of
// features 0-15 and 16-31. A block of `rows` rows (1-32) configures the
// tiles of its second 16 rows only when it has them.
simd::TileConfig AmxBlockConfig(int rows) {
  simd::TileConfig c;
  const int upper = std::min(rows, 16), lower = rows - upper;
  for (int t : {0, 1, 4}) {
    c.rows[t] = static_cast<uint8_t>(upper);
    c.bytes_per_row[t] = 64;
  }
  if (lower > 0) {
    for (int t : {2, 3, 5}) {
      c.rows[t] = static_cast<uint8_t>(lower);
      c.bytes_per_row[t] = 64;
    }
  }
  for (int t : {6, 7}) {
    c.rows[t] = 16;
    c.bytes_per_row[t] = 64;
  }
  return c;
}

#define CLIP_AMX_TARGET __attribute__((target("avx512f,avx512bf16,amx-tile,amx-bf16,amx-int8")))

// The `rows` rows (1-32) of x at x (`stride` bytes apart) against one chunk
// of `chunk` bytes of each row (a multiple of 64) and the panel's weights
// for those inputs at w (2048 bytes per 64 bytes of a row: 16 x 128-byte
// steps of 32 features); the sums start at zero (`first`) or at `carry`,
// and go to `carry` (32 x 32 32-bit sums, a row's 32 sums 128 bytes apart).
// Each step prefetches `prefetch_lines` lines from `prefetch` on. kInt8:
// x's bytes uint8, the weights int8 in groups of four inputs, int32 sums
// (TDPBUSD); else bfloat16 pairs and float32 sums (TDPBF16PS). Both read
// 64 bytes of each row (32 or 64 inputs) and 16 of the weights' steps.
template <bool kInt8>
CLIP_AMX_TARGET void AmxBlock(const char* x, int64_t stride, int rows, const char* w, int64_t chunk, bool first,
                              void* carry, const void* prefetch, int64_t prefetch_lines) {
  const bool lower = rows > 16;
  auto* sums = static_cast<char*>(carry);
  simd::MemoryBarrier();  // x and the carried sums written by plain stores
  if (first) {
    _tile_zero(0);
    _tile_zero(1);
    if (lower) {
      _tile_zero(2);
      _tile_zero(3);
    }
  } else {
    _tile_loadd(0, sums, 128);
    _tile_loadd(1, sums + 64, 128);
    if (lower) {
      _tile_loadd(2, sums + 16 * 128, 128);
      _tile_loadd(3, sums + 16 * 128 + 64, 128);
    }
  }
  const char* ahead = static_cast<const char*>(prefetch);
  for (int64_t s = 0; s < chunk; s += 64, x += 64, w += 2048) {
    for (int64_t i = 0; i < prefetch_lines; ++i, ahead += 64) _mm_prefetch(ahead, _MM_HINT_T1);
    _tile_loadd(4, x, stride);
    _tile_loadd(6, w, 128);
    if constexpr (kInt8) {
      _tile_dpbusd(0, 4, 6);
    } else {
      _tile_dpbf16ps(0, 4, 6);
    }
    _tile_loadd(7, w + 64, 128);
    if constexpr (kInt8) {
      _tile_dpbusd(1, 4, 7);
    } else {
      _tile_dpbf16ps(1, 4, 7);
    }
    if (lower) {
      _tile_loadd(5, x + 16 * stride, stride);
      if constexpr (kInt8) {
        _tile_dpbusd(2, 5, 6);
        _tile_dpbusd(3, 5, 7);
      } else {
        _tile_dpbf16ps(2, 5, 6);
        _tile_dpbf16ps(3, 5, 7);
      }
    }
  }
  _tile_stored(0, sums, 128);
  _tile_stored(1, sums + 64, 128);
  if (lower) {
    _tile_stored(2, sums + 16 * 128, 128);
    _tile_stored(3, sums + 16 * 128 + 64, 128);
  }
  simd::MemoryBarrier();  // the sums read by plain loads
}

// The panels PanelsAmxSums runs together for x of m rows of `row_bytes`
// and `panels` panels: 1 up to three times RowGroupBytes() of x (1.5 MB of
// a 2 MB L2); else, of the fewest groups that keep their sums within
// RowGroupBytes() (groups of 1 where one panel's sums do not fit), the
// size that leaves the last group the least short. bfloat16 only: the 3072
// inputs of the MLP's second linear are 2.4 MB on 400 rows (8 images), and
// ran 1.28-1.38 -> 2.16-2.34 TFLOP/s in groups (Intel Xeon, family 6 model
// 167, 2 threads, 12 layers' weights in turn); int8's 1.2 MB stay in L2,
// and 800 rows of them (16 images) ran 10% slower in groups.
int64_t AmxPanelGroup(int64_t m, int64_t row_bytes, int64_t panels) {
  static const int64_t budget = RowGroupBytes();
  if (m * row_bytes <= 3 * budget || panels <= 1) return 1;
  const int64_t carry_bytes = (m + kAmxRows - 1) / kAmxRows * kAmxRows * 32 * 4;
  const int64_t most = std::max<int64_t>(1, budget / carry_bytes);
  const int64_t groups = (panels + most - 1) / most;
  return (panels + groups - 1) / groups;
}

// x [m rows of `row_bytes`, a multiple of 64] against panels [first, last)
// of `panel_bytes` each (32 x row_bytes: a panel's weights for a row's
// inputs), on the calling thread: the sums of each panel, 32 per row in a
// buffer of the thread, then `epilogue(p, sums)`. The panels go in groups
// of `group` (AmxPanelGroup; 1: one panel at a time, chunk after chunk;
// the last group may be shorter), each chunk of x's inputs against every
// panel of the group before the next chunk, so that an x larger than L2
// keeps beside the weights comes from memory once per group rather than
// once per panel. Each sum gets its products in the same order whatever
// the group. (The int8 instantiation ran 7-12% slower whenever this loop
// took another form, divisions for groups of equal size among them.)
template <bool kInt8, typename Epilogue>
CLIP_AMX_TARGET void PanelsAmxSums(const char* x, int64_t m, int64_t row_bytes, const char* packed, int64_t first,
                                   int64_t last, int64_t group, const Epilogue& epilogue) {
  const int64_t panel_bytes = 32 * row_bytes;
  const int64_t blocks = (m + kAmxRows - 1) / kAmxRows;
  const int tail = static_cast<int>(m - (blocks - 1) * kAmxRows);
  const int64_t carry_floats = blocks * kAmxRows * 32;
  thread_local GrowingBuffer<float> carry_buffer;
  float* carry = carry_buffer.Get(static_cast<size_t>(group * carry_floats));
  const simd::TileConfig full = AmxBlockConfig(kAmxRows), last_block = AmxBlockConfig(tail);
  const int64_t chunk = std::min(row_bytes, kAmxChunkBytes);
  for (int64_t g0 = first; g0 < last; g0 += group) {
    const int64_t g1 = std::min(last, g0 + group);
    for (int64_t k0 = 0; k0 < row_bytes; k0 += chunk) {
      const int64_t size = std::min(chunk, row_bytes - k0);
      for (int64_t p = g0; p < g1; ++p) {
        const char* panel = packed + p * panel_bytes;
        _tile_loadconfig(&full);
        // The weights that run next (the group's next panel on this chunk,
        // else its first panel on the next chunk, else the next group's
        // first chunk) fetched to L2 while the blocks run, spread over them:
        // 32 bytes of weights per byte of a row, so half a line per byte.
        const char* next = panel;
        int64_t next_size = 0;
        if (p + 1 < g1) {
          next = panel + panel_bytes + 32 * k0;
          next_size = size;
        } else if (k0 + size < row_bytes) {
          next = packed + g0 * panel_bytes + 32 * (k0 + size);
          next_size = std::min(chunk, row_bytes - k0 - size);
        } else if (g1 < last) {
          next = packed + g1 * panel_bytes;
          next_size = chunk;
        }
        const int64_t next_lines = next_size / 2;
        const int64_t steps = size / 64;
        const int64_t per_step = (next_lines + blocks * steps - 1) / (blocks * steps);
        float* sums = carry + (p - g0) * carry_floats;
        int64_t issued = 0;
        for (int64_t b = 0; b < blocks; ++b) {
          const bool is_last = b + 1 == blocks;
          if (is_last && tail != kAmxRows) _tile_loadconfig(&last_block);
          // A prefetch never faults: the last block's may reach a few lines
          // past the chunk.
          const int64_t lines = std::max<int64_t>(0, std::min(per_step * steps, next_lines - issued));
          const int64_t lines_per_step = (lines + steps - 1) / steps;
          AmxBlock<kInt8>(x + b * kAmxRows * row_bytes + k0, row_bytes, is_last ? tail : static_cast<int>(kAmxRows),
                          panel + 32 * k0, size, k0 == 0, sums + b * kAmxRows * 32, next + issued * 64, lines_per_step);
          issued += lines_per_step * steps;
        }
      }
    }
    for (int64_t p = g0; p < g1; ++p) epilogue(p, carry + (p - g0) * carry_floats);
  }
  _tile_release();
}

// x [m, k] bfloat16 (k a multiple of 32) against panels [first, last) into
// y [m, n_size], on the calling thread.
CLIP_AMX_TARGET void PanelsAmx(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, const float* bias,
                               int64_t n_size, uint16_t* y, int64_t first, int64_t last, bool swish) {
  const auto epilogue = [&](int64_t p, const float* carry) CLIP_AMX_TARGET {
    const int64_t n0 = p * kPanel;
    const PanelEdge edge(bias, n0, n_size);
    for (int64_t r = 0; r < m; ++r) {
      const float* sums = carry + r * 32;
      __m512 lo = _mm512_add_ps(_mm512_loadu_ps(sums), edge.bias[0]);
      __m512 hi = _mm512_add_ps(_mm512_loadu_ps(sums + 16), edge.bias[1]);
      if (swish) {
        lo = simd::Swish(lo);
        hi = simd::Swish(hi);
      }
      simd::StoreBFloat16(y + r * n_size + n0, edge.mask[0], lo);
      simd::StoreBFloat16(y + r * n_size + n0 + 16, edge.mask[1], hi);
    }
  };
  const char* rows = reinterpret_cast<const char*>(x);
  const char* weights = reinterpret_cast<const char*>(packed);
  PanelsAmxSums<false>(rows, m, k * 2, weights, first, last, AmxPanelGroup(m, k * 2, last - first), epilogue);
}

// The int8 linear on AMX-INT8 tiles: x's rows quantized as for the VNNI
// tiles, read as they lie (row-major uint8, `row_bytes` a multiple of 64),
// against the VNNI kernel's packed panels (per group of four inputs, 32
// features of 4 bytes: 128-byte steps), read as tiles of 16 groups by 16
// features. The int32 sums are the VNNI tiles' (exact, and the zero point's
// share added after them instead of before: the same integers), and the
// epilogue is theirs (StoreInt8Row): the same bits.
CLIP_AMX_TARGET void PanelsAmxInt8(const uint8_t* x, int64_t m, int64_t row_bytes, const float* row_scale,
                                   const int32_t* row_zero, const int8_t* packed, int64_t panels, const float* bias,
                                   int64_t n_size, float* y, int64_t first, int64_t last, bool swish) {
  const int64_t steps = row_bytes / 4;
  const auto* scales = reinterpret_cast<const float*>(packed + panels * steps * kPanelStepBytes);
  const auto* sums = reinterpret_cast<const int32_t*>(scales + panels * kPanel);
  PanelsAmxSums<true>(reinterpret_cast<const char*>(x), m, row_bytes, reinterpret_cast<const char*>(packed), first,
                      last, /*group=*/1, [&](int64_t p, const float* carry) CLIP_AMX_TARGET {
                        const int64_t n0 = p * kPanel;
                        const PanelEdgeInt8 edge(bias, scales, sums, n0, n_size);
                        const auto* ints = reinterpret_cast<const int32_t*>(carry);
                        for (int64_t r = 0; r < m; ++r) {
                          const __m512i z = _mm512_set1_epi32(-row_zero[r]);
                          const __m512i lo =
                              _mm512_add_epi32(_mm512_loadu_si512(ints + r * 32), _mm512_mullo_epi32(z, edge.sum[0]));
                          const __m512i hi = _mm512_add_epi32(_mm512_loadu_si512(ints + r * 32 + 16),
                                                              _mm512_mullo_epi32(z, edge.sum[1]));
                          StoreInt8Row(lo, hi, row_scale[r], edge, y + r * n_size + n0, swish);
                        }
                      });
}

// x [m, k] bfloat16 rows against every panel, split among the threads.
void RunAmx(const uint16_t* x, int64_t m, int64_t k, const uint16_t* packed, int64_t panels, const float* bias,
            int64_t n_size, uint16_t* y, bool swish) {
  if (m == 0) return;
  at::parallel_for(0, panels, 1, [&](int64_t first, int64_t last) {
    PanelsAmx(x, m, k, packed, bias, n_size, y, first, last, swish);
  });
}
#endif

void CheckBf16Input(const at::Tensor& x) {
  TORCH_CHECK(x.scalar_type() == at::kBFloat16 && x.device().is_cpu(),
              "clip_native: the bfloat16 panel linear takes bfloat16 CPU tensors, got ", x.toString());
}

void CheckFloatCpu(const at::Tensor& t, const char* what) {
  TORCH_CHECK(t.scalar_type() == at::kFloat && t.device().is_cpu(), "clip_native: ", what,
              " must be a float32 CPU tensor, got ", t.toString());
}

// The operands of a float32 panel linear on inputs of shape `x` (its last
// size the rows' width): packed weights of that width and at least
// out_features features, a float32 bias of out_features, the kernel.
void CheckFloatOperands(at::IntArrayRef x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                        int64_t out_features) {
  TORCH_CHECK((packed.scalar_type() == at::kFloat || packed.scalar_type() == at::kBFloat16) && packed.device().is_cpu(),
              "clip_native: the packed weight must be a float32 or bfloat16 CPU tensor, got ", packed.toString());
  const int64_t width = packed.dim() == 3 ? packed.size(2) : 0;
  TORCH_CHECK(!x.empty() && (width == 32 || width == 16) && x.back() == packed.size(1) && out_features > 0 &&
                  packed.size(0) == (out_features + width - 1) / width,
              "clip_native: linear input ", x, " does not fit packed weights ", packed.sizes(), " for ", out_features,
              " features");
  if (bias) {
    CheckFloatCpu(*bias, "the bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features && bias->is_contiguous(), "clip_native: a bias of ",
                out_features, " features was expected, got ", bias->sizes());
  }
  if (width == 32) {
    TORCH_CHECK(PanelLinearAvailable(), "clip_native: this CPU lacks AVX-512F for the panel linear");
  } else {
    TORCH_CHECK(PanelLinearAvx2Available(), "clip_native: this CPU lacks AVX2 and FMA for the 16-wide panel linear");
  }
}

// Whether `packed` is laid out for bfloat16 products (PackPanelWeightBf16's
// 4-D pairs, or PackPanelWeightAmx's 5-D view of them) rather than for the
// float32 kernels (3-D, float32 or bfloat16 weights, PackPanelWeight).
bool PackedForBf16Products(const at::Tensor& packed) {
  return packed.scalar_type() == at::kBFloat16 && (packed.dim() == 4 || packed.dim() == 5);
}

// The same for the bfloat16 kernel (bfloat16 weights of half the width in
// pairs, a bias of any floating type); returns the bias as float32, the
// way the kernel adds it (undefined when there is none).
at::Tensor CheckBf16Operands(at::IntArrayRef x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                             int64_t out_features) {
  TORCH_CHECK(packed.scalar_type() == at::kBFloat16 && packed.device().is_cpu(),
              "clip_native: the bfloat16 panel linear takes bfloat16 CPU weights, got ", packed.toString());
  const bool amx = packed.dim() == 5;
  const bool layout =
      amx ? packed.size(2) == 16 && packed.size(3) == 32 && packed.size(4) == 2 && x.back() == 32 * packed.size(1)
          : packed.dim() == 4 && packed.size(2) == 32 && packed.size(3) == 2 && x.back() == 2 * packed.size(1);
  // Exactly the panels of out_features: the kernels store every panel's
  // features up to 32, masked only past the last feature.
  TORCH_CHECK(!x.empty() && layout && packed.is_contiguous() && packed.size(1) > 0 && out_features > 0 &&
                  packed.size(0) == (out_features + 31) / 32,
              "clip_native: linear input ", x, " does not fit packed weights ", packed.sizes(), " for ", out_features,
              " features");
  at::Tensor bias_float;
  if (bias) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features && bias->device().is_cpu(), "clip_native: a bias of ",
                out_features, " features was expected, got ", bias->sizes());
    bias_float = bias->to(at::kFloat).contiguous();
  }
  TORCH_CHECK(PanelLinearBf16Available(), "clip_native: this CPU lacks AVX512-BF16 for the panel linear");
  TORCH_CHECK(!amx || PanelLinearAmxAvailable(), "clip_native: this CPU or system offers no AMX-BF16 tiles");
  return bias_float;
}

// x as the kernels take it: its rows (contiguous [m, k]), and the result
// as rows [m, out_features] with the shape it is returned in (x's, with
// out_features last).
struct RowsIn {
  at::Tensor rows;
  int64_t m;
  std::vector<int64_t> shape;
  at::Tensor y;
  RowsIn(const at::Tensor& x, int64_t out_features)
      : rows(x.reshape({-1, x.size(-1)}).contiguous()),
        m(rows.size(0)),
        shape(x.sizes().begin(), x.sizes().end()),
        y(at::empty({m, out_features}, x.options())) {
    shape.back() = out_features;
  }
};

// clip_native::linear_rows: PanelLinear (float32 panels) or
// PanelLinearBf16 (bfloat16 panels); `attr` is "none" or "swish"
// (y * sigmoid(y) on the float32 sums, in the kernel: QuickGELU on weights
// scaled at load).
at::Tensor LinearRows(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                      int64_t out_features, c10::string_view attr) {
  TORCH_CHECK(attr == "none" || attr == "swish", "clip_native: linear_rows takes \"none\" or \"swish\", got \"",
              std::string(attr.data(), attr.size()), "\"");
  const bool swish = attr == "swish";
  if (packed.scalar_type() == at::kChar) return PanelLinearInt8(x, packed, bias, out_features, swish);
  return PackedForBf16Products(packed) ? PanelLinearBf16(x, packed, bias, out_features, swish)
                                       : PanelLinear(x, packed, bias, out_features, swish);
}

// Gathers the rows of `src` ([n, k], row-major) into panels of `width`
// features, `group` consecutive inputs of a feature side by side:
// out[p][s][t][e] = src[p * width + f(t)][s * group + e], zero for features
// past n and inputs past k, where f(t) = t, or with `halves` (bfloat16
// weights, LoadStep) f(t) = (t % 2) * (width / 2) + t / 2: feature j beside
// feature j + width / 2. One pass over the weights, both threads, each on
// its panels; a panel's `width` source lines stay in L1 while its steps
// consume them. Against the views, permutes and copies of at::Tensor it
// replaces (a zeroed buffer, a copy into it, a strided copy out of it): one
// write of the packed weights instead of three; a float32 ViT-B/32 load on
// this kernel 2.60 -> 2.37 s (medians of 5, Zen 5).
template <int64_t kGroup, typename T>
void GatherPanels(const T* src, int64_t n, int64_t k, int64_t width, bool halves, T* out) {
  const int64_t panels = (n + width - 1) / width;
  const int64_t steps = (k + kGroup - 1) / kGroup;
  at::parallel_for(0, panels, 1, [&](int64_t first, int64_t last) {
    std::vector<const T*> rows(static_cast<size_t>(width));
    for (int64_t p = first; p < last; ++p) {
      for (int64_t t = 0; t < width; ++t) {
        const int64_t f = p * width + (halves ? (t % 2) * (width / 2) + t / 2 : t);
        rows[static_cast<size_t>(t)] = f < n ? src + f * k : nullptr;
      }
      T* o = out + p * steps * width * kGroup;
      for (int64_t c0 = 0; c0 < k; c0 += kGroup) {
        const int64_t valid = std::min(kGroup, k - c0);
        for (const T* row : rows) {
          if (row && valid == kGroup) {
            for (int64_t e = 0; e < kGroup; ++e) o[e] = row[c0 + e];
          } else {
            for (int64_t e = 0; e < kGroup; ++e) o[e] = row && e < valid ? row[c0 + e] : T(0);
          }
          o += kGroup;
        }
      }
    }
  });
}

// PackPanelWeight's int8 packing (the layout PanelsInt8 reads): each
// feature's weights scaled by 127 / max |w| and rounded to int8 (to the
// nearest, ties to even, as at::round), then gathered four inputs at a time;
// after the panels, 32 float32 scales and 32 int32 sums of the int8 weights
// per panel (zero past the last feature).
at::Tensor PackInt8(const at::Tensor& weight, int64_t panels) {
  const at::Tensor w = weight.contiguous();
  const int64_t n = w.size(0);
  const int64_t k = w.size(1);
  const int64_t steps = Int8Steps(k);
  const at::Tensor scales = (w.abs().amax({1}).clamp_min(1e-30) / 127.0).contiguous();
  at::Tensor q = at::empty({n, k}, w.options().dtype(at::kChar));
  at::Tensor out = at::empty({Int8PackedBytes(k, n)}, w.options().dtype(at::kChar));
  const float* wp = w.data_ptr<float>();
  const float* sp = scales.data_ptr<float>();
  int8_t* qp = q.data_ptr<int8_t>();
  int8_t* op = out.data_ptr<int8_t>();
  const int64_t weight_bytes = panels * steps * kPanelStepBytes;
  auto* scale_out = reinterpret_cast<float*>(op + weight_bytes);
  auto* sum_out = reinterpret_cast<int32_t*>(scale_out + panels * 32);
  std::fill(scale_out + n, scale_out + panels * 32, 0.0f);
  std::fill(sum_out + n, sum_out + panels * 32, 0);
  at::parallel_for(0, n, 1, [&](int64_t first, int64_t last) {
    for (int64_t f = first; f < last; ++f) {
      int32_t sum = 0;
      for (int64_t i = 0; i < k; ++i) {
        const float v = std::nearbyint(wp[f * k + i] / sp[f]);
        const auto value = static_cast<int8_t>(std::min(127.0f, std::max(-127.0f, v)));
        qp[f * k + i] = value;
        sum += value;
      }
      scale_out[f] = sp[f];
      sum_out[f] = sum;
    }
  });
  GatherPanels<4>(qp, n, k, 32, /*halves=*/false, op);
  return out;
}

// The operands of an int8 panel linear: packed int8 weights (PackInt8) for
// inputs of x's width and out_features features, a float32 bias of
// out_features, the kernel.
void CheckInt8Operands(at::IntArrayRef x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                       int64_t out_features) {
  TORCH_CHECK(
      packed.scalar_type() == at::kChar && packed.device().is_cpu() && packed.dim() == 1 && packed.is_contiguous(),
      "clip_native: the packed int8 weight must be a 1-D int8 CPU tensor, got ", packed.toString());
  TORCH_CHECK(
      !x.empty() && out_features > 0 && x.back() > 0 && packed.numel() == Int8PackedBytes(x.back(), out_features),
      "clip_native: linear input ", x, " does not fit ", packed.numel(), " bytes of int8 weights for ", out_features,
      " features");
  if (bias) {
    CheckFloatCpu(*bias, "the bias");
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == out_features && bias->is_contiguous(), "clip_native: a bias of ",
                out_features, " features was expected, got ", bias->sizes());
  }
  TORCH_CHECK(PanelLinearInt8Available(), "clip_native: this CPU lacks AVX512-VNNI for the int8 panel linear");
}

}  // namespace

#ifdef CLIP_PANEL_KERNEL
constexpr bool kPanelKernelBuilt = true;
#else
constexpr bool kPanelKernelBuilt = false;
#endif

bool PanelLinearAvailable() { return kPanelKernelBuilt && GetCpuFeatures().avx512f; }

bool PanelLinearAvx2Available() { return kPanelKernelBuilt && GetCpuFeatures().avx2 && GetCpuFeatures().fma; }

bool PanelLinearInt8Available() {
  return kPanelKernelBuilt && GetCpuFeatures().avx512f && GetCpuFeatures().avx512_vnni;
}

bool PanelLinearInt8AmxAvailable() { return PanelLinearInt8Available() && AmxInt8Usable(); }

bool AmxInt8Inputs(int64_t in_features) { return in_features > 0 && in_features % 64 == 0; }

// Fewer rows than one block of the tiles (a caption) stay on the VNNI tiles:
// their weights come from memory either way, and the AMX tiles ran captions
// of 6-17 tokens 1.04-1.11x slower (Intel Xeon, family 6 model 167); 8
// captions 0.72x the time, one image 0.82x, 8 images 0.61x.
bool PanelLinearInt8UsesAmx(int64_t rows, int64_t in_features) {
#ifdef CLIP_PANEL_KERNEL
  return rows >= kAmxRows && AmxInt8Inputs(in_features) && PanelLinearInt8AmxAvailable();
#else
  return false;
#endif
}

bool PanelLinearBf16Available() {
  return kPanelKernelBuilt && GetCpuFeatures().avx512f && GetCpuFeatures().avx512_bf16;
}

at::Tensor PackPanelWeightBf16(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) % 2 == 0,
              "clip_native: a bfloat16 panel weight must be 2-D with an even number of inputs, got ", weight.sizes());
  const at::Tensor w = weight.to(at::kBFloat16).contiguous();
  const int64_t n = w.size(0);
  const int64_t k = w.size(1);
  const int64_t panels = (n + 31) / 32;
  // [panels, k/2, 32, 2]: per pair of inputs, 32 features of 2 values.
  at::Tensor packed = at::empty({panels, k / 2, 32, 2}, w.options());
  GatherPanels<2>(reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), n, k, 32, /*halves=*/false,
                  reinterpret_cast<uint16_t*>(packed.data_ptr<at::BFloat16>()));
  return packed;
}

bool PanelLinearAmxAvailable() { return PanelLinearBf16Available() && AmxBf16Usable(); }

bool AmxPanelInputs(int64_t in_features) { return in_features > 0 && in_features % 32 == 0; }

at::Tensor PackPanelWeightAmx(const at::Tensor& weight) {
  TORCH_CHECK(weight.dim() == 2 && AmxPanelInputs(weight.size(1)),
              "clip_native: an AMX panel weight must be 2-D with a positive multiple of 32 inputs, got ",
              weight.sizes());
  const at::Tensor pairs = PackPanelWeightBf16(weight);
  return pairs.view({pairs.size(0), weight.size(1) / 32, 16, 32, 2});
}

at::Tensor PanelLinearBf16(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                           int64_t out_features, bool swish) {
  CheckBf16Input(x);
  const at::Tensor bias_float = CheckBf16Operands(x.sizes(), packed, bias, out_features);
  const int64_t k = x.size(-1);
  RowsIn in(x, out_features);
  const int64_t panels = packed.size(0);
#ifdef CLIP_PANEL_KERNEL
  if (packed.dim() == 5) {
    RunAmx(reinterpret_cast<const uint16_t*>(in.rows.data_ptr<at::BFloat16>()), in.m, k,
           reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>()), panels,
           bias ? bias_float.data_ptr<float>() : nullptr, out_features,
           reinterpret_cast<uint16_t*>(in.y.data_ptr<at::BFloat16>()), swish);
    return in.y.view(in.shape);
  }
  const int64_t pairs = k / 2;
  const std::vector<RowTile> tiles = SplitRows(in.m, kTile);
  const auto* xp = reinterpret_cast<const uint32_t*>(in.rows.data_ptr<at::BFloat16>());
  const auto* pp = reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>());
  const float* bp = bias ? bias_float.data_ptr<float>() : nullptr;
  auto* yp = reinterpret_cast<uint16_t*>(in.y.data_ptr<at::BFloat16>());
  RunPanels<Isa::kAvx512>(xp, pairs, tiles, panels,
                          [&](const uint32_t* copy, const std::vector<RowTile>& group, int64_t first, int64_t last) {
                            PanelsBf16(copy, group, pairs, pp, bp, out_features, yp, first, last, swish);
                          });
#endif
  return in.y.view(in.shape);
}

at::Tensor PanelLinearInt8(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                           int64_t out_features, bool swish, bool amx) {
  CheckFloatCpu(x, "the input");
  CheckInt8Operands(x.sizes(), packed, bias, out_features);
  const int64_t k = x.size(-1);
  RowsIn in(x, out_features);
#ifdef CLIP_PANEL_KERNEL
  const int64_t panels = (out_features + kPanel - 1) / kPanel;
  const int64_t steps = Int8Steps(k);
  const int8_t* pp = packed.data_ptr<int8_t>();
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  float* yp = in.y.data_ptr<float>();
  const bool tiles_amx = amx && PanelLinearInt8UsesAmx(in.m, k);
  const std::vector<RowTile> tiles = SplitRows(in.m, kTile);
  RunPanelsInt8(in.rows.data_ptr<float>(), k, tiles, panels, /*k_major=*/!tiles_amx,
                [&](const QuantizedRows& q, const std::vector<RowTile>& group, int64_t first, int64_t last) {
                  if (tiles_amx) {
                    PanelsAmxInt8(reinterpret_cast<const uint8_t*>(q.tiles), in.m, steps * 4, q.scale, q.zero, pp,
                                  panels, bp, out_features, yp, first, last, swish);
                  } else {
                    PanelsInt8(q, group, steps, pp, panels, bp, out_features, yp, first, last, swish);
                  }
                });
#endif
  return in.y.view(in.shape);
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

int64_t RowGroupBytesFor(int64_t l2_bytes) {
  if (l2_bytes <= 0) return 256 << 10;
  return std::clamp<int64_t>(l2_bytes / 4, 128 << 10, 512 << 10);
}

int64_t RowGroupBytes() {
#ifdef _SC_LEVEL2_CACHE_SIZE
  return RowGroupBytesFor(sysconf(_SC_LEVEL2_CACHE_SIZE));
#else
  return RowGroupBytesFor(0);
#endif
}

PanelPrefetch NextPanelPrefetch(size_t tiles, size_t tile, int64_t k_steps, int64_t step_bytes) {
  size_t sharing = 1;
  while (sharing * 2 <= tiles && sharing * 2 <= static_cast<size_t>(step_bytes)) sharing *= 2;
  const int64_t step = step_bytes / static_cast<int64_t>(sharing);
  if (tiles < 2 || tile >= sharing) return {-1, step};
  return {static_cast<int64_t>(tile) * k_steps * step, step};
}

at::Tensor PackPanelWeight(const at::Tensor& weight, int64_t width, at::ScalarType dtype) {
  TORCH_CHECK(weight.dim() == 2, "clip_native: a linear weight must be 2-D, got ", weight.sizes());
  TORCH_CHECK(width == 32 || width == 16, "clip_native: panels are 32 or 16 features wide, got ", width);
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kBFloat16 || (dtype == at::kChar && width == 32),
              "clip_native: panel weights are float32 or bfloat16 (or int8, 32 wide), got ", dtype, ", ", width,
              " wide");
  const int64_t n = weight.size(0);
  const int64_t k = weight.size(1);
  const int64_t panels = (n + width - 1) / width;
  if (dtype == at::kChar) return PackInt8(weight.to(at::kFloat), panels);
  const at::Tensor w = weight.to(dtype).contiguous();
  at::Tensor packed = at::empty({panels, k, width}, w.options());
  if (dtype == at::kFloat) {
    GatherPanels<1>(w.data_ptr<float>(), n, k, width, /*halves=*/false, packed.data_ptr<float>());
  } else {
    // Per step over k, feature j and feature j + width / 2 side by side.
    GatherPanels<1>(reinterpret_cast<const uint16_t*>(w.data_ptr<at::BFloat16>()), n, k, width, /*halves=*/true,
                    reinterpret_cast<uint16_t*>(packed.data_ptr<at::BFloat16>()));
  }
  return packed;
}

at::Tensor PanelLinear(const at::Tensor& x, const at::Tensor& packed, const c10::optional<at::Tensor>& bias,
                       int64_t out_features, bool swish) {
  CheckFloatCpu(x, "the input");
  CheckFloatOperands(x.sizes(), packed, bias, out_features);
  const int64_t k = x.size(-1);
  RowsIn in(x, out_features);
#ifdef CLIP_PANEL_KERNEL
  const bool avx2 = packed.size(2) == kPanelAvx2;
  const bool float_weights = packed.scalar_type() == at::kFloat;
  const std::vector<RowTile> tiles = SplitRows(in.m, avx2 ? TileHeightAvx2(in.m, float_weights) : kTile);
  const float* xp = in.rows.data_ptr<float>();
  const float* bp = bias ? bias->data_ptr<float>() : nullptr;
  float* yp = in.y.data_ptr<float>();
  auto run = [&](const auto* pp) {
    if (avx2) {
      RunPanels<Isa::kAvx2>(xp, k, tiles, packed.size(0),
                            [&](const float* copy, const std::vector<RowTile>& group, int64_t first, int64_t last) {
                              PanelsAvx2(copy, group, k, pp, bp, out_features, yp, first, last, swish);
                            });
    } else {
      RunPanels<Isa::kAvx512>(xp, k, tiles, packed.size(0),
                              [&](const float* copy, const std::vector<RowTile>& group, int64_t first, int64_t last) {
                                Panels(copy, group, k, pp, bp, out_features, yp, first, last, swish);
                              });
    }
  };
  if (float_weights) {
    run(packed.data_ptr<float>());
  } else {
    run(reinterpret_cast<const uint16_t*>(packed.data_ptr<at::BFloat16>()));
  }
#endif
  return in.y.view(in.shape);
}

at::Tensor PanelMlp(const at::Tensor& x, const at::Tensor& packed1, const c10::optional<at::Tensor>& bias1,
                    int64_t hidden, const at::Tensor& packed2, const c10::optional<at::Tensor>& bias2,
                    int64_t out_features) {
  // bfloat16 products (AVX512-BF16 pairs), else float32 products on float32
  // or bfloat16 weights.
  const bool bfloat16 = PackedForBf16Products(packed1);
  TORCH_CHECK(x.dim() >= 1, "clip_native: an MLP input must have at least one dimension, got ", x.sizes());
  if (bfloat16 && (packed1.dim() == 5 || packed2.dim() == 5)) {
    // On AMX tiles the hidden rows lie row-major between the two linears.
    return PanelLinearBf16(PanelLinearBf16(x, packed1, bias1, hidden, /*swish=*/true), packed2, bias2, out_features);
  }
  std::vector<int64_t> hidden_shape(x.sizes().begin(), x.sizes().end());
  hidden_shape.back() = hidden;
  at::Tensor bias1_float, bias2_float;
  if (bfloat16) {
    CheckBf16Input(x);
    bias1_float = CheckBf16Operands(x.sizes(), packed1, bias1, hidden);
    bias2_float = CheckBf16Operands(hidden_shape, packed2, bias2, out_features);
  } else {
    CheckFloatCpu(x, "the input");
    CheckFloatOperands(x.sizes(), packed1, bias1, hidden);
    CheckFloatOperands(hidden_shape, packed2, bias2, out_features);
    TORCH_CHECK(packed1.size(2) == packed2.size(2) && packed1.scalar_type() == packed2.scalar_type(),
                "clip_native: the MLP's panels differ (", packed1.size(2), " and ", packed2.size(2), " features, ",
                packed1.scalar_type(), " and ", packed2.scalar_type(), ")");
  }
  const int64_t k = x.size(-1);
  RowsIn in(x, out_features);
#ifdef CLIP_PANEL_KERNEL
  const bool avx2 = !bfloat16 && packed1.size(2) == kPanelAvx2;
  const bool float_weights = packed1.scalar_type() == at::kFloat;
  const std::vector<RowTile> tiles = SplitRows(in.m, avx2 ? TileHeightAvx2(in.m, float_weights) : kTile);
  if (bfloat16) {
    const int64_t pairs = k / 2;
    const int64_t hidden_pairs = hidden / 2;
    const auto* xp = reinterpret_cast<const uint32_t*>(in.rows.data_ptr<at::BFloat16>());
    const auto* p1 = reinterpret_cast<const uint16_t*>(packed1.data_ptr<at::BFloat16>());
    const auto* p2 = reinterpret_cast<const uint16_t*>(packed2.data_ptr<at::BFloat16>());
    const float* b1 = bias1 ? bias1_float.data_ptr<float>() : nullptr;
    const float* b2 = bias2 ? bias2_float.data_ptr<float>() : nullptr;
    auto* yp = reinterpret_cast<uint16_t*>(in.y.data_ptr<at::BFloat16>());
    RunChained<Isa::kAvx512>(
        xp, pairs, hidden_pairs, tiles, packed1.size(0), packed2.size(0),
        [&](const uint32_t* copy, const std::vector<RowTile>& group, int64_t first, int64_t last, uint32_t* h) {
          PanelsBf16(copy, group, pairs, p1, b1, hidden, reinterpret_cast<uint16_t*>(h), first, last, true, true);
        },
        [&](const uint32_t* h, const std::vector<RowTile>& group, int64_t first, int64_t last) {
          PanelsBf16(h, group, hidden_pairs, p2, b2, out_features, yp, first, last, false);
        });
  } else {
    const float* xp = in.rows.data_ptr<float>();
    const float* b1 = bias1 ? bias1->data_ptr<float>() : nullptr;
    const float* b2 = bias2 ? bias2->data_ptr<float>() : nullptr;
    float* yp = in.y.data_ptr<float>();
    // The float32 kernels differ in their instruction set only: `isa` the
    // row copies', `panels` the products'.
    auto chain = [&](auto isa, auto panels, const auto* p1, const auto* p2) {
      RunChained<decltype(isa)::value>(
          xp, k, hidden, tiles, packed1.size(0), packed2.size(0),
          [&](const float* copy, const std::vector<RowTile>& group, int64_t first, int64_t last, float* h) {
            panels(copy, group, k, p1, b1, hidden, h, first, last, true, true);
          },
          [&](const float* h, const std::vector<RowTile>& group, int64_t first, int64_t last) {
            panels(h, group, hidden, p2, b2, out_features, yp, first, last, false, false);
          });
    };
    auto run = [&](const auto* p1, const auto* p2) {
      if (avx2) {
        chain(
            std::integral_constant<Isa, Isa::kAvx2>(), [](auto&&... a) { PanelsAvx2(a...); }, p1, p2);
      } else {
        chain(
            std::integral_constant<Isa, Isa::kAvx512>(), [](auto&&... a) { Panels(a...); }, p1, p2);
      }
    };
    if (float_weights) {
      run(packed1.data_ptr<float>(), packed2.data_ptr<float>());
    } else {
      run(reinterpret_cast<const uint16_t*>(packed1.data_ptr<at::BFloat16>()),
          reinterpret_cast<const uint16_t*>(packed2.data_ptr<at::BFloat16>()));
    }
  }
#endif
  return in.y.view(in.shape);
}

TORCH_LIBRARY(clip_native, m) {
  m.def("linear_rows(Tensor x, Tensor packed, Tensor? bias, int out_features, str attr) -> Tensor");
  m.def(
      "mlp_rows(Tensor x, Tensor packed1, Tensor? bias1, int hidden, Tensor packed2, Tensor? bias2, int out_features) "
      "-> Tensor");
}

TORCH_LIBRARY_IMPL(clip_native, CPU, m) {
  m.impl("linear_rows", &LinearRows);
  m.impl("mlp_rows", &PanelMlp);
}

}  // namespace clip

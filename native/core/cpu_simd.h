// AVX-512 and AVX2 helpers the CPU kernels share (x86-64 with GCC or Clang).
#ifndef CLIP_NATIVE_CORE_CPU_SIMD_H_
#define CLIP_NATIVE_CORE_CPU_SIMD_H_

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

#include <c10/util/BFloat16.h>

#include <cstdint>

namespace clip {
namespace simd {

// A compiler barrier for memory: GCC's AMX tile loads and stores are asm
// statements that name no memory, so around them the compiler is told that
// memory may have been read or written (nothing is emitted).
inline void MemoryBarrier() { __asm__ __volatile__("" ::: "memory"); }

// The tile configuration LDTILECFG takes (palette 1): each tile register's
// rows and bytes per row (zero: unused).
struct TileConfig {
  uint8_t palette = 1;
  uint8_t start_row = 0;
  uint8_t reserved[14] = {};
  uint16_t bytes_per_row[16] = {};
  uint8_t rows[16] = {};
};

// The lanes of the 16 values at j of a row of `count` (the rest masked off;
// j < count).
inline __mmask16 TailMask(int64_t j, int64_t count) {
  const int64_t left = count - j;
  return left >= 16 ? static_cast<__mmask16>(0xFFFF) : static_cast<__mmask16>((1u << left) - 1);
}

// Transposes the 16 x 16 floats of r[0..15] in place.
__attribute__((target("avx512f"))) inline void Transpose16(__m512 r[16]) {
  __m512 t[16];
  for (int i = 0; i < 8; ++i) {
    t[2 * i] = _mm512_maskz_unpacklo_ps(0xFFFF, r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm512_maskz_unpackhi_ps(0xFFFF, r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 4; ++i) {
    r[4 * i] = _mm512_maskz_shuffle_ps(0xFFFF, t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm512_maskz_shuffle_ps(0xFFFF, t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm512_maskz_shuffle_ps(0xFFFF, t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm512_maskz_shuffle_ps(0xFFFF, t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int h = 0; h < 2; ++h) {
    for (int i = 0; i < 4; ++i) {
      t[8 * h + i] = _mm512_maskz_shuffle_f32x4(0xFFFF, r[8 * h + i], r[8 * h + 4 + i], 0x88);
      t[8 * h + 4 + i] = _mm512_maskz_shuffle_f32x4(0xFFFF, r[8 * h + i], r[8 * h + 4 + i], 0xDD);
    }
  }
  for (int i = 0; i < 8; ++i) {
    r[i] = _mm512_maskz_shuffle_f32x4(0xFFFF, t[i], t[8 + i], 0x88);
    r[8 + i] = _mm512_maskz_shuffle_f32x4(0xFFFF, t[i], t[8 + i], 0xDD);
  }
}

// x rounded to the nearest bfloat16 (ties to even), kept as a float: what
// c10::BFloat16(x) holds, NaN included.
__attribute__((target("avx512f"))) inline __m512 RoundToBFloat16(__m512 x) {
  const __m512i bits = _mm512_castps_si512(x);
  const __m512i odd = _mm512_and_si512(_mm512_maskz_srli_epi32(0xFFFF, bits, 16), _mm512_set1_epi32(1));
  const __m512i rounded = _mm512_and_si512(_mm512_add_epi32(_mm512_add_epi32(bits, _mm512_set1_epi32(0x7FFF)), odd),
                                           _mm512_set1_epi32(static_cast<int>(0xFFFF0000u)));
  const __mmask16 nan = _mm512_cmp_ps_mask(x, x, _CMP_UNORD_Q);
  return _mm512_mask_mov_ps(_mm512_castsi512_ps(rounded), nan, _mm512_castsi512_ps(_mm512_set1_epi32(0x7FC00000)));
}

// The lanes of x in `lanes` rounded to bfloat16 as RoundToBFloat16 rounds
// them, stored as 16-bit values at p (AVX-512F only).
__attribute__((target("avx512f"))) inline void StoreBFloat16(void* p, __mmask16 lanes, __m512 x) {
  const __m512i high = _mm512_maskz_srli_epi32(0xFFFF, _mm512_castps_si512(RoundToBFloat16(x)), 16);
  _mm512_mask_cvtepi32_storeu_epi16(p, lanes, high);
}

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

// 16 values from memory as floats (bfloat16: the upper halves of floats,
// exact; zero-masked, for the same GCC warning as above).
__attribute__((target("avx512f"))) inline __m512 Load16(const float* p) { return _mm512_loadu_ps(p); }
__attribute__((target("avx512f"))) inline __m512 Load16(const c10::BFloat16* p) {
  const __m512i wide = _mm512_maskz_cvtepu16_epi32(0xFFFF, _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p)));
  return _mm512_castsi512_ps(_mm512_maskz_slli_epi32(0xFFFF, wide, 16));
}

// 16 floats to memory as T (bfloat16: rounded to nearest even).
__attribute__((target("avx512f"))) inline void Store16(float* p, __m512 x) { _mm512_storeu_ps(p, x); }
__attribute__((target("avx512f"))) inline void Store16(c10::BFloat16* p, __m512 x) { StoreBFloat16(p, 0xFFFF, x); }

// e^x for x <= 0, to about one ulp (what softmax needs after subtracting the
// row's maximum): x = n ln2 + r with |r| <= ln2 / 2, e^r by its Taylor
// polynomial (degree 7), times 2^n. Below -87.3 (e^x under float's smallest
// normal) it gives about 1e-38, which no sum of at least 1 notices. The
// constants, shared by the 16- and 8-lane versions: the clamp, log2(e), ln2
// in two parts (the first exact in few bits) and the polynomial's
// coefficients, highest degree first.
constexpr float kExpLowest = -87.3f;
constexpr float kLog2E = 1.44269504088896341f;
constexpr float kLn2High = 0.693359375f;
constexpr float kLn2Low = -2.12194440e-4f;
constexpr float kExpTaylor[] = {1.0f / 5040, 1.0f / 720, 1.0f / 120, 1.0f / 24, 1.0f / 6, 0.5f, 1.0f, 1.0f};

__attribute__((target("avx512f"))) inline __m512 ExpNonPositive(__m512 x) {
  x = _mm512_maskz_max_ps(0xFFFF, x, _mm512_set1_ps(kExpLowest));
  const __m512 n = _mm512_maskz_roundscale_ps(0xFFFF, _mm512_mul_ps(x, _mm512_set1_ps(kLog2E)),
                                              _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2High), x);
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(kLn2Low), r);
  __m512 p = _mm512_set1_ps(kExpTaylor[0]);
  for (int i = 1; i < 8; ++i) p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(kExpTaylor[i]));
  return _mm512_maskz_scalef_ps(0xFFFF, p, n);
}

// x * sigmoid(x) = x / (1 + e^-x), from e = e^-|x| so that no e^x overflows:
// x / (1 + e) for x >= 0, x e / (1 + e) below.
__attribute__((target("avx512f"))) inline __m512 Swish(__m512 x) {
  const __m512 e = ExpNonPositive(_mm512_maskz_min_ps(0xFFFF, x, _mm512_sub_ps(_mm512_setzero_ps(), x)));
  const __mmask16 negative = _mm512_cmp_ps_mask(x, _mm512_setzero_ps(), _CMP_LT_OQ);
  const __m512 numerator = _mm512_mask_mul_ps(x, negative, x, e);
  return _mm512_div_ps(numerator, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
}

// The AVX2 + FMA counterparts, for CPUs without AVX-512 (AMD Zen 2 and 3,
// Intel's E-core Xeons): 8 floats per register, masks as vectors.

// The lanes of the 8 values at j of a row of `count` (j < count), as the
// sign bits _mm256_maskload_ps / _mm256_maskstore_ps read.
__attribute__((target("avx2"))) inline __m256i TailMask8(int64_t j, int64_t count) {
  const int64_t left = count - j;
  const int lanes = left >= 8 ? 8 : static_cast<int>(left);
  return _mm256_cmpgt_epi32(_mm256_set1_epi32(lanes), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
}

// The sum of the 8 lanes.
__attribute__((target("avx2"))) inline float Sum8(__m256 a) {
  __m128 x = _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps(a, 1));
  x = _mm_add_ps(x, _mm_movehl_ps(x, x));
  x = _mm_add_ss(x, _mm_shuffle_ps(x, x, 1));
  return _mm_cvtss_f32(x);
}

// Transposes the 8 x 8 floats of r[0..7] in place.
__attribute__((target("avx2"))) inline void Transpose8(__m256 r[8]) {
  __m256 t[8];
  for (int i = 0; i < 4; ++i) {
    t[2 * i] = _mm256_unpacklo_ps(r[2 * i], r[2 * i + 1]);
    t[2 * i + 1] = _mm256_unpackhi_ps(r[2 * i], r[2 * i + 1]);
  }
  for (int i = 0; i < 2; ++i) {
    r[4 * i] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0x44);
    r[4 * i + 1] = _mm256_shuffle_ps(t[4 * i], t[4 * i + 2], 0xEE);
    r[4 * i + 2] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0x44);
    r[4 * i + 3] = _mm256_shuffle_ps(t[4 * i + 1], t[4 * i + 3], 0xEE);
  }
  for (int i = 0; i < 4; ++i) {
    t[i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x20);
    t[4 + i] = _mm256_permute2f128_ps(r[i], r[4 + i], 0x31);
  }
  for (int i = 0; i < 8; ++i) r[i] = t[i];
}

// ExpNonPositive on 8 lanes: the same reduction and polynomial; 2^n made
// from its exponent bits (n >= -126 after the clamp, so 2^n is normal).
__attribute__((target("avx2,fma"))) inline __m256 ExpNonPositive(__m256 x) {
  x = _mm256_max_ps(x, _mm256_set1_ps(kExpLowest));
  const __m256 n =
      _mm256_round_ps(_mm256_mul_ps(x, _mm256_set1_ps(kLog2E)), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m256 r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2High), x);
  r = _mm256_fnmadd_ps(n, _mm256_set1_ps(kLn2Low), r);
  __m256 p = _mm256_set1_ps(kExpTaylor[0]);
  for (int i = 1; i < 8; ++i) p = _mm256_fmadd_ps(p, r, _mm256_set1_ps(kExpTaylor[i]));
  const __m256i bits = _mm256_slli_epi32(_mm256_add_epi32(_mm256_cvtps_epi32(n), _mm256_set1_epi32(127)), 23);
  return _mm256_mul_ps(p, _mm256_castsi256_ps(bits));
}

// Swish on 8 lanes, as the AVX-512 one computes it.
__attribute__((target("avx2,fma"))) inline __m256 Swish(__m256 x) {
  const __m256 e = ExpNonPositive(_mm256_min_ps(x, _mm256_sub_ps(_mm256_setzero_ps(), x)));
  const __m256 negative = _mm256_cmp_ps(x, _mm256_setzero_ps(), _CMP_LT_OQ);
  const __m256 numerator = _mm256_blendv_ps(x, _mm256_mul_ps(x, e), negative);
  return _mm256_div_ps(numerator, _mm256_add_ps(_mm256_set1_ps(1.0f), e));
}

}  // namespace simd
}  // namespace clip

#endif
#endif  // CLIP_NATIVE_CORE_CPU_SIMD_H_

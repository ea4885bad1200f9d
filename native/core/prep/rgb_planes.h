// RGB8 pixels split into channel planes with AVX-512 (VBMI): the resize's
// horizontal pass and CLIP's rescale-and-normalize both work on one
// channel at a time.
#ifndef CLIP_NATIVE_CORE_PREP_RGB_PLANES_H_
#define CLIP_NATIVE_CORE_PREP_RGB_PLANES_H_

#include <cstdint>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <immintrin.h>

namespace clip {

// `n` (1 to 16) RGB8 pixels at `rgb` (no byte after them is read) -> one
// register whose 128-bit lanes 0, 1 and 2 hold their red, green and blue
// bytes, in pixel order (bytes past the n-th of each lane: zero).
__attribute__((target("avx512f,avx512bw,avx512vbmi"))) inline __m512i SplitRgb16(const uint8_t* rgb, int n) {
  alignas(64) static constexpr uint8_t kSplit[64] = {0, 3, 6, 9,  12, 15, 18, 21, 24, 27, 30, 33, 36, 39, 42, 45,
                                                     1, 4, 7, 10, 13, 16, 19, 22, 25, 28, 31, 34, 37, 40, 43, 46,
                                                     2, 5, 8, 11, 14, 17, 20, 23, 26, 29, 32, 35, 38, 41, 44, 47,
                                                     0, 0, 0, 0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0,  0};
  const __mmask64 bytes = (__mmask64{1} << (3 * n)) - 1;
  return _mm512_permutexvar_epi8(_mm512_load_si512(kSplit), _mm512_maskz_loadu_epi8(bytes, rgb));
}

}  // namespace clip

#endif

#endif  // CLIP_NATIVE_CORE_PREP_RGB_PLANES_H_

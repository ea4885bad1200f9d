// What the CPU running this process can do, for choosing inference and
// image preparation kernels and for reporting the machine next to benchmark
// figures. Torch-free (clip_prep), so the preparation code shares the cap.
#ifndef CLIP_NATIVE_CORE_CPU_FEATURES_H_
#define CLIP_NATIVE_CORE_CPU_FEATURES_H_

#include <string>
#include <vector>

namespace clip {

struct CpuFeatures {
  bool avx2 = false;
  bool fma = false;
  bool avx512f = false;
  bool avx512_bf16 = false;
  bool avx512_vnni = false;
  // AVX-512 BW + VL + VBMI (byte permutes), which the image resampler's
  // AVX-512 passes need (resample.cc).
  bool avx512_vbmi = false;
  bool avx_vnni = false;
  bool amx_bf16 = false;
  bool amx_int8 = false;
  // The vendor string of CPUID leaf 0 is "GenuineIntel" (libraries such as
  // MKL take their tuned paths only there).
  bool intel = false;

  // Integer dot products that accumulate in 32 bits (no 16-bit saturation of
  // u8 x s8 pairs), so dynamically quantized activations may use all 8 bits.
  bool int8_dot() const { return avx512_vnni || avx_vnni || amx_int8; }
  // Products of bfloat16 pairs in hardware (AVX512-BF16 or AMX-BF16);
  // elsewhere libtorch widens bfloat16 to float32 around every product.
  bool bf16_dot() const { return avx512_bf16 || amx_bf16; }
  // The flags above that are set, by their /proc/cpuinfo names.
  std::vector<std::string> Names() const;
};

// Read once per process; all false on other architectures. Capped by
// CLIP_NATIVE_MAX_CPU_ISA when it holds a valid level (below).
const CpuFeatures& GetCpuFeatures();

// Whether this process may run AMX-BF16 tiles: the CPU has them (capped as
// GetCpuFeatures is) and the system granted their register state. Linux
// hands out the tiles' 8 KB of state per process, on request (arch_prctl
// ARCH_REQ_XCOMP_PERM for XTILEDATA, made here once); a process that has
// not asked faults on its first tile instruction.
bool AmxBf16Usable();
// The same for AMX-INT8 tiles (the same register state, the same request).
bool AmxInt8Usable();

// The CPU's brand string, family, model and stepping, and the flags of
// GetCpuFeatures (capped): what a measurement of kernels on this machine
// depends on, as one line.
std::string CpuIdentity();

// CLIP_NATIVE_MAX_CPU_ISA: the highest instruction set the kernels may use,
// by oneDNN's names for the same levels (any case): "avx2" (no AVX-512),
// "avx512_core" (AVX-512 without VNNI, BF16 and AMX), "avx512_core_vnni",
// "avx512_core_bf16" (no AMX) or "avx512_core_amx" (everything). A fleet of
// mixed CPUs can then run the same kernels everywhere, and one machine can
// run the choices of an older one. Returns "" when the variable is unset or
// valid, else what is wrong with it (the model load refuses to run then).
std::string MaxCpuIsaProblem();

// Hands the cap on to libtorch's own kernel libraries where the user has
// not set theirs: ONEDNN_MAX_CPU_ISA (oneDNN) and, for "avx2",
// ATEN_CPU_CAPABILITY (ATen's vectorized operators). Both are read when
// first used, so this runs before anything of libtorch computes.
void ForwardMaxCpuIsa();

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_CPU_FEATURES_H_

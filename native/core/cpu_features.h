// What the CPU running this process can do, for choosing inference kernels
// and for reporting the machine next to benchmark figures.
#ifndef CLIP_NATIVE_CORE_CPU_FEATURES_H_
#define CLIP_NATIVE_CORE_CPU_FEATURES_H_

#include <string>
#include <vector>

namespace clip {

struct CpuFeatures {
  bool avx2 = false;
  bool avx512f = false;
  bool avx512_bf16 = false;
  bool avx512_vnni = false;
  bool avx_vnni = false;
  bool amx_bf16 = false;
  bool amx_int8 = false;
  // The vendor string of CPUID leaf 0 is "GenuineIntel" (libraries such as
  // MKL take their tuned paths only there).
  bool intel = false;

  // Integer dot products that accumulate in 32 bits (no 16-bit saturation of
  // u8 x s8 pairs), so dynamically quantized activations may use all 8 bits.
  bool int8_dot() const { return avx512_vnni || avx_vnni || amx_int8; }
  // The flags above that are set, by their /proc/cpuinfo names.
  std::vector<std::string> Names() const;
};

// Read once per process; all false on other architectures.
const CpuFeatures& GetCpuFeatures();

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_CPU_FEATURES_H_

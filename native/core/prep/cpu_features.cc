#include "cpu_features.h"

#if defined(__x86_64__) || defined(_M_X64)
#include <cpuid.h>
#endif
#if defined(__linux__)
#include <sys/syscall.h>
#include <unistd.h>
#endif

#include <algorithm>
#include <cctype>
#include <cstdint>
#include <cstdlib>
#include <cstring>

namespace clip {
namespace {

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
bool Cpuid(unsigned leaf, unsigned subleaf, unsigned regs[4]) {
  // The highest leaf of the range (basic or extended) that `leaf` is in.
  if (__get_cpuid_max(leaf & 0x80000000u, nullptr) < leaf) return false;
  __cpuid_count(leaf, subleaf, regs[0], regs[1], regs[2], regs[3]);
  return true;
}

// CPUID leaf 0's vendor string ("GenuineIntel", "AuthenticAMD"): EBX, EDX,
// ECX; "" where the leaf cannot be read.
std::string Vendor() {
  unsigned regs[4] = {0, 0, 0, 0};
  if (!Cpuid(0, 0, regs)) return "";
  char vendor[13] = {};
  std::memcpy(vendor, &regs[1], 4);
  std::memcpy(vendor + 4, &regs[3], 4);
  std::memcpy(vendor + 8, &regs[2], 4);
  return vendor;
}

// XCR0: which register states the OS saves on context switches. A CPU flag
// is usable only when the OS also saves the registers it needs.
uint64_t Xcr0() {
  uint32_t eax = 0, edx = 0;
  __asm__ volatile("xgetbv" : "=a"(eax), "=d"(edx) : "c"(0));
  return (static_cast<uint64_t>(edx) << 32) | eax;
}

CpuFeatures Detect() {
  CpuFeatures f;
  f.intel = Vendor() == "GenuineIntel";
  unsigned r1[4] = {0, 0, 0, 0};
  if (!Cpuid(1, 0, r1)) return f;
  const bool osxsave = (r1[2] >> 27) & 1;
  if (!osxsave) return f;
  const uint64_t xcr0 = Xcr0();
  const bool ymm = (xcr0 & 0x6) == 0x6;
  const bool zmm = ymm && (xcr0 & 0xe0) == 0xe0;
  const bool tiles = (xcr0 & 0x60000) == 0x60000;
  unsigned r7[4] = {0, 0, 0, 0};
  unsigned r71[4] = {0, 0, 0, 0};
  if (!Cpuid(7, 0, r7)) return f;
  Cpuid(7, 1, r71);
  f.avx2 = ymm && ((r7[1] >> 5) & 1);
  f.fma = ymm && ((r1[2] >> 12) & 1);
  f.avx512f = zmm && ((r7[1] >> 16) & 1);
  f.avx512_vnni = zmm && ((r7[2] >> 11) & 1);
  f.avx512_vbmi = zmm && ((r7[1] >> 30) & 1) && ((r7[1] >> 31) & 1) && ((r7[2] >> 1) & 1);
  f.avx512_bf16 = zmm && ((r71[0] >> 5) & 1);
  f.avx_vnni = ymm && ((r71[0] >> 4) & 1);
  // Linux hands out AMX tile state on request (arch_prctl); libtorch's
  // oneDNN asks for it. The tile state bits of XCR0 say the OS supports it.
  f.amx_bf16 = tiles && ((r7[3] >> 22) & 1);
  f.amx_int8 = tiles && ((r7[3] >> 25) & 1);
  return f;
}
#else
CpuFeatures Detect() { return CpuFeatures(); }
#endif

// The levels of CLIP_NATIVE_MAX_CPU_ISA, lowest first.
constexpr const char* kIsaLevels[] = {"avx2", "avx512_core", "avx512_core_vnni", "avx512_core_bf16", "avx512_core_amx"};
constexpr int kIsaLevelCount = sizeof(kIsaLevels) / sizeof(kIsaLevels[0]);

std::string MaxCpuIsaValue() {
  const char* env = std::getenv("CLIP_NATIVE_MAX_CPU_ISA");
  std::string value = env ? env : "";
  std::transform(value.begin(), value.end(), value.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return value;
}

// The level asked for: an index of kIsaLevels, or -1 (unset or invalid:
// no cap).
int MaxCpuIsaLevel() {
  const std::string value = MaxCpuIsaValue();
  for (int i = 0; i < kIsaLevelCount; ++i) {
    if (value == kIsaLevels[i]) return i;
  }
  return -1;
}

CpuFeatures Capped(CpuFeatures f, int level) {
  if (level < 0) return f;
  if (level < 1) f.avx512f = false;
  if (level < 2 || !f.avx512f) f.avx512_vnni = false;
  // VBMI came with Ice Lake / Zen 4, after the levels below AMX's (Skylake,
  // Cascade Lake and Cooper Lake lack it).
  if (level < 4 || !f.avx512f) f.avx512_vbmi = false;
  if (level < 3 || !f.avx512f) f.avx512_bf16 = false;
  if (level < 4 || !f.avx512f) f.amx_bf16 = f.amx_int8 = false;
  // AVX-VNNI (oneDNN's "avx2_vnni") came with Alder Lake and Sapphire
  // Rapids: of the levels only AMX's has it, and oneDNN capped below that
  // does not use it (with it kept, int8 loads capped at avx512_core on a
  // Zen 5 took oneDNN's saturating u8 x s8 products for VNNI: cosine 0.91).
  if (level < 4) f.avx_vnni = false;
  return f;
}

}  // namespace

std::string MaxCpuIsaProblem() {
  const std::string value = MaxCpuIsaValue();
  if (value.empty() || MaxCpuIsaLevel() >= 0) return "";
  std::string list;
  for (const char* level : kIsaLevels) list += (list.empty() ? "\"" : ", \"") + std::string(level) + "\"";
  return "Expected one of " + list + " for CLIP_NATIVE_MAX_CPU_ISA but received \"" +
         std::string(std::getenv("CLIP_NATIVE_MAX_CPU_ISA")) + "\"";
}

void ForwardMaxCpuIsa() {
  const int level = MaxCpuIsaLevel();
  if (level < 0) return;
  std::string onednn = kIsaLevels[level];
  std::transform(onednn.begin(), onednn.end(), onednn.begin(),
                 [](unsigned char c) { return static_cast<char>(std::toupper(c)); });
  setenv("ONEDNN_MAX_CPU_ISA", onednn.c_str(), /*overwrite=*/0);
  if (level == 0) setenv("ATEN_CPU_CAPABILITY", "avx2", /*overwrite=*/0);
}

std::vector<std::string> CpuFeatures::Names() const {
  std::vector<std::string> names;
  if (avx2) names.emplace_back("avx2");
  if (fma) names.emplace_back("fma");
  if (avx512f) names.emplace_back("avx512f");
  if (avx512_bf16) names.emplace_back("avx512_bf16");
  if (avx512_vnni) names.emplace_back("avx512_vnni");
  if (avx512_vbmi) names.emplace_back("avx512_vbmi");
  if (avx_vnni) names.emplace_back("avx_vnni");
  if (amx_bf16) names.emplace_back("amx_bf16");
  if (amx_int8) names.emplace_back("amx_int8");
  return names;
}

namespace {

// Whether the system granted this process the tiles' register state (asked
// once, whatever the CPU has).
bool AmxTileDataGranted() {
  static const bool granted = [] {
#if defined(__x86_64__) && defined(__linux__)
    constexpr long kRequestPermission = 0x1023;  // ARCH_REQ_XCOMP_PERM
    constexpr long kTileData = 18;               // XFEATURE_XTILEDATA
    const CpuFeatures& f = GetCpuFeatures();
    return (f.amx_bf16 || f.amx_int8) && syscall(SYS_arch_prctl, kRequestPermission, kTileData) == 0;
#else
    return false;
#endif
  }();
  return granted;
}

}  // namespace

bool AmxBf16Usable() { return GetCpuFeatures().amx_bf16 && AmxTileDataGranted(); }

bool AmxInt8Usable() { return GetCpuFeatures().amx_int8 && AmxTileDataGranted(); }

const CpuFeatures& GetCpuFeatures() {
  static const CpuFeatures features = Capped(Detect(), MaxCpuIsaLevel());
  return features;
}

std::string CpuIdentity() {
  std::string identity;
#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
  identity = Vendor();
  unsigned regs[4] = {0, 0, 0, 0};
  // The brand string: 48 bytes in leaves 0x80000002-4 (EAX, EBX, ECX, EDX).
  if (Cpuid(0x80000000u, 0, regs) && regs[0] >= 0x80000004u) {
    char brand[49] = {};
    for (unsigned leaf = 0; leaf < 3; ++leaf) {
      if (Cpuid(0x80000002u + leaf, 0, regs)) std::memcpy(brand + 16 * leaf, regs, 16);
    }
    std::string name = brand;
    const size_t first = name.find_first_not_of(' ');
    if (first != std::string::npos) identity += " " + name.substr(first, name.find_last_not_of(' ') + 1 - first);
  }
  // Family, model and stepping as Linux computes them (leaf 1's EAX).
  if (Cpuid(1, 0, regs)) {
    const unsigned eax = regs[0];
    unsigned family = (eax >> 8) & 0xf;
    unsigned model = (eax >> 4) & 0xf;
    if (family == 0xf) family += (eax >> 20) & 0xff;
    if (family >= 6) model += ((eax >> 16) & 0xf) << 4;
    identity += " (family " + std::to_string(family) + " model " + std::to_string(model) + " stepping " +
                std::to_string(eax & 0xf) + ")";
  }
#endif
  const CpuFeatures& features = GetCpuFeatures();
  for (const std::string& name : features.Names()) identity += " " + name;
  return identity;
}

}  // namespace clip

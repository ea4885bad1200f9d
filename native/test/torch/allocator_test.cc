// Standalone test for clip-native's CPU tensor allocator (cpu_allocator.h),
// installed as libtorch's, with a bound of 8 MiB on the blocks it keeps
// (CLIP_NATIVE_CPU_CACHE_MB): blocks of kHugePageBytes and up are mapped on
// 2 MiB boundaries and advised as huge pages (the "hg" flag of their mapping
// in /proc/self/smaps, where the kernel has transparent huge pages) and go
// back to the system when they leave the cache; smaller ones come from
// libtorch's allocator; freed blocks are handed to the next request of their
// size, the oldest kept evicted first. Prints one line per failure, then
// "N passed, M failed"; exits non-zero on any failure.

#include <ATen/ATen.h>

#include <cstdint>
#include <cstdlib>
#include <fstream>
#include <iostream>
#include <sstream>
#include <string>

#include "../test_check.h"
#include "cpu_allocator.h"

namespace {

using clip::test::Check;

constexpr int64_t kMiB = int64_t{1} << 20;

// A float32 tensor of `bytes` bytes, every value set (the pages touched).
at::Tensor Block(int64_t bytes) { return at::full({bytes / 4}, 1.0f); }

uintptr_t Address(const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()); }

// The "VmFlags" line of the mapping that holds `address` in /proc/self/smaps,
// "" when no mapping holds it; `*found` says whether one does.
std::string MappingFlags(uintptr_t address, bool* found) {
  std::ifstream smaps("/proc/self/smaps");
  std::string line;
  bool inside = false;
  *found = false;
  while (std::getline(smaps, line)) {
    uintptr_t begin = 0, end = 0;
    char dash = 0;
    std::istringstream head(line);
    if (head >> std::hex >> begin >> dash >> end && dash == '-' && line.find(':') > line.find(' ')) {
      inside = begin <= address && address < end;
      if (inside) *found = true;
      continue;
    }
    if (inside && line.rfind("VmFlags:", 0) == 0) return line;
  }
  return "";
}

bool Mapped(uintptr_t address) {
  bool found = false;
  MappingFlags(address, &found);
  return found;
}

bool AdvisedHuge(uintptr_t address) {
  bool found = false;
  const std::string flags = MappingFlags(address, &found);
  return found && (flags + " ").find(" hg ") != std::string::npos;
}

}  // namespace

int main() {
  try {
    setenv("CLIP_NATIVE_CPU_CACHE_MB", "8", 1);
    clip::InstallCpuAllocatorOnce();
    Check(clip::GetCpuAllocatorStats().installed, "installed");
    Check(clip::GetCpuAllocatorStats().max_cached_bytes == static_cast<size_t>(8 * kMiB), "bound of 8 MiB");

    // Large blocks: on 2 MiB boundaries, advised, usable, counted.
    at::Tensor a = Block(3 * kMiB);
    const uintptr_t a_address = Address(a);
    Check(a_address % (2 * kMiB) == 0, "a 3 MiB block starts on a 2 MiB boundary");
    Check(a.sum().item<double>() == static_cast<double>(3 * kMiB / 4), "a 3 MiB block holds what was written");
    Check(clip::GetCpuAllocatorStats().mapped_bytes == static_cast<size_t>(3 * kMiB), "3 MiB mapped");
#if defined(__linux__)
    // A kernel built without transparent huge pages refuses the advice.
    if (std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled").good()) {
      Check(AdvisedHuge(a_address), "the 3 MiB block's mapping is advised as huge pages (VmFlags hg)");
    } else {
      std::cout << "skipped: the huge page advice (no transparent huge pages in this kernel)" << std::endl;
    }
#endif
    at::Tensor exact = Block(2 * kMiB);
    Check(Address(exact) % (2 * kMiB) == 0 && clip::GetCpuAllocatorStats().mapped_bytes == size_t{5} * kMiB,
          "a block of exactly 2 MiB is mapped too");
    exact.reset();

    // Below kHugePageBytes: libtorch's allocator, nothing mapped.
    const size_t mapped_before = clip::GetCpuAllocatorStats().mapped_bytes;
    at::Tensor small = Block(kMiB);
    Check(small.sum().item<double>() == static_cast<double>(kMiB / 4), "a 1 MiB block holds what was written");
    Check(clip::GetCpuAllocatorStats().mapped_bytes == mapped_before, "a 1 MiB block is not mapped by the allocator");
    small.reset();

    // A freed block is kept and handed to the next request of its size.
    a.reset();
    Check(Mapped(a_address), "a freed block stays mapped while kept");
    at::Tensor again = Block(3 * kMiB);
    Check(Address(again) == a_address, "the next 3 MiB request gets the kept block");
    again.reset();

    clip::ReleaseCachedCpuMemory();
    Check(!Mapped(a_address), "ReleaseCachedCpuMemory unmaps the blocks kept");

    // Beyond the bound the oldest block kept goes back to the system.
    at::Tensor b = Block(3 * kMiB);
    at::Tensor c = Block(3 * kMiB);
    at::Tensor d = Block(3 * kMiB);
    const uintptr_t b_address = Address(b);
    const uintptr_t c_address = Address(c);
    const uintptr_t d_address = Address(d);
    b.reset();
    c.reset();  // kept: b, c (6 of 8 MiB)
    d.reset();  // 9 MiB: b, the oldest, leaves
    Check(!Mapped(b_address), "the oldest kept block is unmapped when the bound is reached");
    Check(Mapped(c_address) && Mapped(d_address), "the newer ones stay kept");
    const clip::CpuAllocatorStats kept = clip::GetCpuAllocatorStats();
    Check(kept.cached_bytes == static_cast<size_t>(6 * kMiB) && kept.mapped_bytes == static_cast<size_t>(6 * kMiB),
          "6 MiB kept, all of it mapped by the allocator");

    // A block larger than the bound is not kept at all.
    at::Tensor big = Block(10 * kMiB);
    const uintptr_t big_address = Address(big);
    big.reset();
    Check(!Mapped(big_address), "a block over the bound goes back to the system when freed");

    clip::ReleaseCachedCpuMemory();
    const clip::CpuAllocatorStats released = clip::GetCpuAllocatorStats();
    Check(released.cached_bytes == 0 && released.mapped_bytes == 0 && released.in_use_bytes == 0,
          "ReleaseCachedCpuMemory frees every kept block");
    Check(!Mapped(c_address) && !Mapped(d_address), "and unmaps them");
  } catch (const std::exception& e) {
    std::cout << "FAIL: exception " << e.what() << std::endl;
    clip::test::Check(false, "no exception");
  }
  return clip::test::Summary();
}

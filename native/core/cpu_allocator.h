// libtorch's CPU tensors, kept for reuse between forwards.
//
// A forward of a batch allocates the same large activations (megabytes each)
// every time and frees them again. libtorch's default CPU allocator hands each
// one to malloc. On glibc a thread's arena whose heap is nearly full answers a
// large request with a fresh 64 MiB heap and unmaps it again as soon as the
// block is freed, so every forward page-faults its activations in anew: on a
// 2-CPU machine the int8 image encoder then ran 2-3x slower for the whole life
// of about one process in four, depending only on where earlier allocations
// happened to land. Blocks of at least kMinCachedBytes are therefore kept
// after use (bounded) and handed to the next request of about their size.
#ifndef CLIP_NATIVE_CORE_CPU_ALLOCATOR_H_
#define CLIP_NATIVE_CORE_CPU_ALLOCATOR_H_

#include <cstddef>
#include <cstdint>

#include "huge_pages.h"

namespace clip {

// Requests below this go straight to the allocator that was installed before.
constexpr size_t kMinCachedBytes = size_t{128} << 10;

// Requests of kHugePageBytes and up are mapped by the allocator itself
// (MapHugeBlock: 2 MiB boundaries, transparent huge pages where the kernel
// offers them): a ViT-B/32 load faults in its weights and their packed
// copies 2 MiB at a time instead of 4 KiB (2-core Zen 5 EPYC: loads 31-54%
// shorter in every dtype, the same peak and resident memory, forwards
// unchanged).

// The bound on bytes kept free for reuse when CLIP_NATIVE_CPU_CACHE_MB does
// not set one.
constexpr size_t kDefaultMaxCachedBytes = size_t{256} << 20;

struct CpuAllocatorStats {
  bool installed = false;
  size_t max_cached_bytes = 0;
  size_t cached_bytes = 0;  // free, kept for reuse
  size_t in_use_bytes = 0;  // handed out and not yet freed (large blocks only)
  uint64_t hits = 0;        // large requests answered from the cache
  uint64_t misses = 0;      // large requests passed on
  size_t mapped_bytes = 0;  // blocks of kHugePageBytes and up mapped on huge page boundaries, in use or free
};

// Makes the caching allocator libtorch's CPU allocator for the process, once;
// later calls do nothing. CLIP_NATIVE_CPU_CACHE_MB sets the bound in MiB, and
// 0 leaves libtorch's allocator alone. It is not installed either where the
// allocator before it lacks libtorch's raw interface.
void InstallCpuAllocatorOnce();

// Frees every block kept for reuse (blocks in use stay theirs).
void ReleaseCachedCpuMemory();

CpuAllocatorStats GetCpuAllocatorStats();

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_CPU_ALLOCATOR_H_

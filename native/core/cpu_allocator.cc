#include "cpu_allocator.h"

#include <c10/core/Allocator.h>
#include <c10/core/CPUAllocator.h>
#include <torch/version.h>

#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <list>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <utility>
#include <vector>

// libtorch made Allocator::allocate non-const, and added copy_data, in 2.3.
#if TORCH_VERSION_MAJOR > 2 || (TORCH_VERSION_MAJOR == 2 && TORCH_VERSION_MINOR >= 3)
#define CLIP_ALLOCATE_CONST
#define CLIP_HAS_COPY_DATA 1
#else
#define CLIP_ALLOCATE_CONST const
#define CLIP_HAS_COPY_DATA 0
#endif

namespace clip {
namespace {

constexpr size_t kPage = 4096;

// Every pointer it hands out has itself as context and Delete as deleter, so
// libtorch's raw interface (raw_allocate / raw_deallocate) keeps working.
// Small requests pass through to the allocator it replaced; large ones are
// rounded up to whole pages and, once freed, kept for reuse up to the bound,
// the longest kept going first when a new one needs the room. Large ones of
// kHugePageBytes and more are mapped by it (MapHugeBlock) and unmapped when
// they leave the cache.
class CachingCpuAllocator final : public c10::Allocator {
 public:
  CachingCpuAllocator(c10::Allocator* base, c10::DeleterFnPtr base_delete, size_t max_cached)
      : base_(base), base_delete_(base_delete), max_cached_(max_cached) {}

  c10::DataPtr allocate(size_t n) CLIP_ALLOCATE_CONST override {
    void* p = n < kMinCachedBytes ? base_->raw_allocate(n) : TakeLarge(n);
    return {p, p, &Delete, c10::Device(c10::DeviceType::CPU)};
  }

  c10::DeleterFnPtr raw_deleter() const override { return &Delete; }

#if CLIP_HAS_COPY_DATA
  void copy_data(void* dest, const void* src, std::size_t count) const override { default_copy_data(dest, src, count); }
#endif

  void Release() {
    std::vector<Freed> freed;
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      for (const FreeBlock& block : state_->lru) freed.push_back(Forget(block.p));
      state_->lru.clear();
      state_->by_size.clear();
      state_->cached_bytes = 0;
    }
    FreeAll(freed);
  }

  CpuAllocatorStats Stats() const {
    std::lock_guard<std::mutex> lock(state_->mutex);
    CpuAllocatorStats stats;
    stats.installed = true;
    stats.max_cached_bytes = max_cached_;
    stats.cached_bytes = state_->cached_bytes;
    stats.in_use_bytes = state_->in_use_bytes;
    stats.hits = state_->hits;
    stats.misses = state_->misses;
    stats.mapped_bytes = state_->mapped_bytes;
    return stats;
  }

 private:
  struct FreeBlock;
  using Lru = std::list<FreeBlock>;
  using BySize = std::multimap<size_t, Lru::iterator>;
  struct FreeBlock {
    void* p;
    size_t size;
    BySize::iterator index;
  };
  struct Block {
    size_t size;
    bool mapped;  // MapHugeBlock's, else the base allocator's
  };
  // A block on its way back to where it came from.
  struct Freed {
    void* p;
    Block block;
  };
  struct State {
    std::mutex mutex;
    std::unordered_map<void*, Block> sizes;  // every large block, in use or free
    Lru lru;                                 // free large blocks, oldest first
    BySize by_size;                          // the same, by size
    size_t cached_bytes = 0;
    size_t in_use_bytes = 0;
    uint64_t hits = 0;
    uint64_t misses = 0;
    size_t mapped_bytes = 0;
  };

  // Drops large block p from `sizes` (the caller holds the mutex).
  Freed Forget(void* p) const {
    auto it = state_->sizes.find(p);
    const Freed freed{p, it->second};
    if (freed.block.mapped) state_->mapped_bytes -= freed.block.size;
    state_->sizes.erase(it);
    return freed;
  }

  void FreeAll(const std::vector<Freed>& freed) const {
    for (const Freed& f : freed) {
      if (f.block.mapped) {
        UnmapHugeBlock(f.p, f.block.size);
      } else {
        base_delete_(f.p);
      }
    }
  }

  void* TakeLarge(size_t n) const {
    const size_t size = (n + kPage - 1) / kPage * kPage;
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      // The smallest free block that fits, unless it would waste more than a
      // quarter of itself: the next forward asks for the same sizes again.
      auto it = state_->by_size.lower_bound(size);
      if (it != state_->by_size.end() && it->first - size <= it->first / 4) {
        void* p = it->second->p;
        state_->cached_bytes -= it->first;
        state_->in_use_bytes += it->first;
        state_->lru.erase(it->second);
        state_->by_size.erase(it);
        ++state_->hits;
        return p;
      }
      ++state_->misses;
    }
    void* p = size >= kHugePageBytes ? MapHugeBlock(size) : nullptr;
    const bool mapped = p != nullptr;
    if (!mapped) p = base_->raw_allocate(size);
    std::lock_guard<std::mutex> lock(state_->mutex);
    state_->sizes.emplace(p, Block{size, mapped});
    state_->in_use_bytes += size;
    if (mapped) state_->mapped_bytes += size;
    return p;
  }

  // Keeps a freed large block, making room by freeing the blocks kept
  // longest (the weights a model converted at load, buffers of a batch size
  // no longer seen).
  void Give(void* p) {
    std::vector<Freed> evicted;
    {
      std::lock_guard<std::mutex> lock(state_->mutex);
      auto it = state_->sizes.find(p);
      if (it == state_->sizes.end()) {
        evicted.push_back({p, {0, false}});  // a small block: the base allocator's
      } else {
        const size_t size = it->second.size;
        state_->in_use_bytes -= size;
        if (size > max_cached_) {
          evicted.push_back(Forget(p));
        } else {
          while (state_->cached_bytes + size > max_cached_) {
            const FreeBlock& oldest = state_->lru.front();
            evicted.push_back(Forget(oldest.p));
            state_->cached_bytes -= oldest.size;
            state_->by_size.erase(oldest.index);
            state_->lru.pop_front();
          }
          auto block = state_->lru.insert(state_->lru.end(), FreeBlock{p, size, {}});
          block->index = state_->by_size.emplace(size, block);
          state_->cached_bytes += size;
        }
      }
    }
    FreeAll(evicted);
  }

  static void Delete(void* p);

  c10::Allocator* base_;
  c10::DeleterFnPtr base_delete_;
  size_t max_cached_;
  // Behind a pointer: allocate() is const in older libtorch.
  std::unique_ptr<State> state_ = std::make_unique<State>();
};

// Never destroyed: tensors may be freed during static destruction, after
// anything of this file would have been.
CachingCpuAllocator* g_allocator = nullptr;
std::once_flag g_install_once;

void CachingCpuAllocator::Delete(void* p) {
  if (p != nullptr) g_allocator->Give(p);
}

size_t MaxCachedBytesFromEnvironment() {
  const char* value = std::getenv("CLIP_NATIVE_CPU_CACHE_MB");
  if (value == nullptr || *value == '\0') return kDefaultMaxCachedBytes;
  char* end = nullptr;
  const unsigned long long mib = std::strtoull(value, &end, 10);
  if (end == value || *end != '\0') return kDefaultMaxCachedBytes;
  return static_cast<size_t>(mib) << 20;
}

}  // namespace

void InstallCpuAllocatorOnce() {
  std::call_once(g_install_once, [] {
    const size_t max_cached = MaxCachedBytesFromEnvironment();
    if (max_cached == 0) return;
    c10::Allocator* base = c10::GetCPUAllocator();
    c10::DeleterFnPtr base_delete = base->raw_deleter();
    if (base_delete == nullptr) return;
    g_allocator = new CachingCpuAllocator(base, base_delete, max_cached);
    // Priority above libtorch's own default (0) and its mobile allocator.
    c10::SetCPUAllocator(g_allocator, /*priority=*/10);
  });
}

void ReleaseCachedCpuMemory() {
  if (g_allocator != nullptr) g_allocator->Release();
}

CpuAllocatorStats GetCpuAllocatorStats() {
  if (g_allocator == nullptr) return {};
  return g_allocator->Stats();
}

}  // namespace clip

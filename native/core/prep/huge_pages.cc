#include "huge_pages.h"

#if defined(__linux__)
#include <sys/mman.h>
#include <unistd.h>
#endif

#include <atomic>
#include <cstdint>
#include <cstdlib>

namespace clip {

namespace {
std::atomic<uint64_t> g_mappings{0};
}  // namespace

uint64_t HugeBlockMappings() { return g_mappings.load(std::memory_order_relaxed); }

#if defined(__linux__) && defined(MADV_HUGEPAGE)
namespace {

size_t PageRounded(size_t size) {
  static const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return (size + page - 1) / page * page;
}

}  // namespace

bool HugeBlocksSupported() { return true; }

void* MapHugeBlock(size_t size) {
  size = PageRounded(size);
  // Over-map by 2 MiB, then unmap what lies before the first boundary and
  // after the block.
  const size_t span = size + kHugePageBytes;
  void* raw = mmap(nullptr, span, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  if (raw == MAP_FAILED) return nullptr;
  const uintptr_t first = reinterpret_cast<uintptr_t>(raw);
  const uintptr_t start = (first + kHugePageBytes - 1) / kHugePageBytes * kHugePageBytes;
  if (start > first) munmap(raw, start - first);
  const size_t tail = first + span - (start + size);
  if (tail > 0) munmap(reinterpret_cast<void*>(start + size), tail);
  void* p = reinterpret_cast<void*>(start);
  madvise(p, size, MADV_HUGEPAGE);
  g_mappings.fetch_add(1, std::memory_order_relaxed);
  return p;
}

void UnmapHugeBlock(void* p, size_t size) { munmap(p, PageRounded(size)); }
#else
bool HugeBlocksSupported() { return false; }
void* MapHugeBlock(size_t) { return nullptr; }
void UnmapHugeBlock(void*, size_t) {}
#endif

void* AllocateImageBuffer(size_t bytes) { return MapsImageBuffer(bytes) ? MapHugeBlock(bytes) : std::malloc(bytes); }

void FreeImageBuffer(void* p, size_t bytes) {
  if (MapsImageBuffer(bytes)) {
    UnmapHugeBlock(p, bytes);
  } else {
    std::free(p);
  }
}

namespace {
thread_local ThreadScratch::Block t_scratch[static_cast<int>(ScratchSlot::kCount)];
}  // namespace

void ThreadScratch::Block::Release() {
  if (data == nullptr) return;
  FreeImageBuffer(data, capacity);
  data = nullptr;
  capacity = 0;
}

ThreadScratch::ThreadScratch(ScratchSlot slot) : block_(&t_scratch[static_cast<int>(slot)]) {
  if (block_->leased) {
    block_ = &own_;
  } else {
    block_->leased = true;
  }
}

ThreadScratch::~ThreadScratch() {
  if (block_ == &own_) return;  // own_ frees itself
  if (block_->capacity > kKeepBytes) block_->Release();
  block_->leased = false;
}

uint8_t* ThreadScratch::Get(size_t bytes) {
  Block& b = *block_;
  if (bytes > b.capacity) {
    b.Release();
    b.data = static_cast<uint8_t*>(AllocateImageBuffer(bytes));
    b.capacity = b.data ? bytes : 0;
  }
  return b.data;
}

}  // namespace clip

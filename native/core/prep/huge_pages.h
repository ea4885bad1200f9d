// Large buffers on transparent huge pages: the mapping the CPU allocator
// (cpu_allocator.h) gives libtorch's large blocks, and an allocator with the
// same mapping for the image buffers of the preparation code.
//
// A fresh allocation of tens of megabytes (a 12-megapixel photo is 36 MB of
// RGB) is mapped anew by the C library and then faulted in 4 KiB at a time,
// each fault zeroing its page; on a 2-core Zen 5 EPYC virtual machine that
// cost more than decoding the image (a 4032x3024 WebP: 171 ms decoded into a
// fresh buffer, 68 ms into a reused one, 70 ms into a fresh one on huge pages).
#ifndef CLIP_NATIVE_CORE_PREP_HUGE_PAGES_H_
#define CLIP_NATIVE_CORE_PREP_HUGE_PAGES_H_

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <new>

namespace clip {

// Blocks from this size up are worth mapping on their own.
constexpr size_t kHugePageBytes = size_t{2} << 20;

// Whether this platform maps blocks on their own (Linux); elsewhere
// MapHugeBlock always fails and image buffers come from malloc.
bool HugeBlocksSupported();

// A block of at least `size` bytes mapped on its own, starting on a 2 MiB
// boundary and advised as transparent huge pages (MADV_HUGEPAGE), so that
// where the kernel offers them (/sys/kernel/mm/transparent_hugepage/enabled
// "always" or "madvise") each 2 MiB of it faults in at once instead of as 512
// pages. Its bytes read as zero until written. nullptr if the mapping fails.
// The advice is only advice: under "never", or without a free huge page, the
// block has small pages.
void* MapHugeBlock(size_t size);
// Unmaps a block of MapHugeBlock's, given the size it was asked for.
void UnmapHugeBlock(void* p, size_t size);
// How many blocks MapHugeBlock has mapped in this process so far.
uint64_t HugeBlockMappings();

// The C library's malloc (glibc) maps every block from 32 MiB up anew and
// unmaps it when freed. Smaller ones come from its heaps once a block of their
// size has been freed (its mmap threshold follows the largest freed block up
// to 32 MiB), but only while the heap keeps them: once the free space at its
// top passes twice that threshold it is given back to the system, so that an
// image that frees a few such blocks together has the next one fault them in
// again (ThreadScratch below).
constexpr size_t kMinMappedImageBytes = size_t{32} << 20;

// Whether an image buffer of `bytes` is mapped (MapHugeBlock) rather than
// taken from malloc.
inline bool MapsImageBuffer(size_t bytes) { return bytes >= kMinMappedImageBytes && HugeBlocksSupported(); }

// An image buffer of `bytes`: mapped where MapsImageBuffer says (its bytes
// then read as zero), else from malloc (contents unspecified); nullptr when
// out of memory. Freed by FreeImageBuffer with the same size.
void* AllocateImageBuffer(size_t bytes);
void FreeImageBuffer(void* p, size_t bytes);

// Zeroed memory: requests of kMinMappedImageBytes and up from MapHugeBlock
// where the platform has it, smaller ones (and all elsewhere) from malloc,
// zeroed. Elements are default-initialized, so a vector on it grows
// without writing zeros again: a mapped buffer's pages are first touched by
// whatever fills them. For trivially constructible element types.
template <class T>
class HugePageAllocator {
 public:
  using value_type = T;

  HugePageAllocator() noexcept = default;
  template <class U>
  HugePageAllocator(const HugePageAllocator<U>&) noexcept {}  // NOLINT(runtime/explicit)

  T* allocate(size_t n) {
    if (n > static_cast<size_t>(-1) / sizeof(T)) throw std::bad_array_new_length();
    const size_t bytes = n * sizeof(T);
    void* p = AllocateImageBuffer(bytes);
    if (p == nullptr) throw std::bad_alloc();
    if (!MapsImageBuffer(bytes)) std::memset(p, 0, bytes);  // a mapped one reads zero already
    return static_cast<T*>(p);
  }

  void deallocate(T* p, size_t n) noexcept { FreeImageBuffer(p, n * sizeof(T)); }

  template <class U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <class U, class... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(static_cast<Args&&>(args)...);
  }

  template <class U>
  bool operator==(const HugePageAllocator<U>&) const noexcept {
    return true;
  }
  template <class U>
  bool operator!=(const HugePageAllocator<U>&) const noexcept {
    return false;
  }
};

// The buffers a thread keeps from one image to the next, one per use.
enum class ScratchSlot {
  kDecodedRows,       // the decoder's rows: the whole image for WebP, GIF and Adam7 PNG
  kResizeRows,        // the resize's rows after its horizontal pass
  kPngStream,         // a PNG's IDAT chunks joined
  kPngRaw,            // a PNG's inflated rows
  kJpegCoefficients,  // a JPEG scan's coefficients, decoded ahead (jpeg_entropy.h)
  kCount,
};

// A lease on one of the calling thread's kept buffers, for memory that every
// image needs anew. Freed and allocated again per image, such buffers were
// faulted in again per image (above). On a 2-core Zen 5 EPYC virtual machine,
// kept buffers made 8 WebP and progressive JPEG photos of 3-5 megapixels
// 5-11% faster end to end (int8), and a 1280x960 WebP decoded and prepared
// after another decode 23.4 -> 13.0 ms; photos under a megapixel level.
// A buffer above kKeepBytes is freed when its lease ends, and one of
// kMinMappedImageBytes and up is on huge pages (MapHugeBlock). A lease taken
// while the slot is already leased on this thread gets a buffer of its own,
// freed with it. Leases are made and destroyed on one thread.
class ThreadScratch {
 public:
  static constexpr size_t kKeepBytes = size_t{16} << 20;

  explicit ThreadScratch(ScratchSlot slot);
  ~ThreadScratch();
  ThreadScratch(const ThreadScratch&) = delete;
  ThreadScratch& operator=(const ThreadScratch&) = delete;

  // Room for `bytes` bytes, contents unspecified (what an earlier image left
  // there, or zeros); nullptr when out of memory. Valid until the next Get
  // that asks for more, or the end of the lease.
  uint8_t* Get(size_t bytes);

  struct Block {
    uint8_t* data = nullptr;
    size_t capacity = 0;
    bool leased = false;
    ~Block() { Release(); }
    void Release();
  };

 private:
  Block* block_;
  Block own_;
};

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_PREP_HUGE_PAGES_H_

// Bicubic resampling that reproduces Pillow's libImaging/Resample.c bit for
// bit (Image.resize(size, BICUBIC, reducing_gap=None) on an RGB image).
#ifndef CLIP_NATIVE_CORE_PREP_RESAMPLE_H_
#define CLIP_NATIVE_CORE_PREP_RESAMPLE_H_

#include <cstddef>
#include <cstdint>
#include <memory>

namespace clip {

// Which implementation of the passes a resize runs. Every kernel gives the
// same bytes; kGeneric (SSE2 where the target has it, otherwise scalar)
// exists so that tests can compare it with the kernel kAuto picks.
enum class ResampleKernel {
  kAuto,  // The fastest one this CPU runs (AVX-512 where it has F, BW, VL, VBMI and VNNI, else AVX2 where it has it).
  kGeneric,  // What any CPU of the target architecture runs.
};

// Whether kAuto may use the AVX-512 kernel on this CPU (decided once).
bool ResampleAvx512Supported();

// Computes the window [window_x, window_x + window_width) x
// [window_y, window_y + window_height) of the resize of an RGB8 image to
// resized_width x resized_height, from source rows fed in any order.
//
// Each output pixel depends only on its own filter taps, so computing just
// the window that a center crop keeps gives exactly the pixels Pillow
// computes for the whole image, at a fraction of the cost (a 1x100000 image
// resizes to 224x22400000 of which 224x224 are kept). Rows go through the
// horizontal pass as they arrive, so a decoder can stream its rows without
// the whole source image ever being held. Like Pillow, an axis whose size
// does not change is copied, not filtered.
//
// Not thread-safe, but for AddRows on two lanes (AddLane); use one instance
// per resize, made and destroyed on one thread (its rows are in a buffer
// that thread keeps, huge_pages.h).
class BicubicWindowResizer {
 public:
  // Throws ClipError kInvalidArgument when a size is not positive or the
  // window is not inside the resized image.
  BicubicWindowResizer(int src_width, int src_height, int resized_width, int resized_height, int window_x, int window_y,
                       int window_width, int window_height, ResampleKernel kernel = ResampleKernel::kAuto);
  ~BicubicWindowResizer();
  BicubicWindowResizer(const BicubicWindowResizer&) = delete;
  BicubicWindowResizer& operator=(const BicubicWindowResizer&) = delete;

  // The window reads source rows [row_begin(), row_end()) only, and of
  // each row the columns [column_begin(), column_end()).
  int row_begin() const;
  int row_end() const;
  int column_begin() const;
  int column_end() const;

  // Source rows [y, y + count), each src_width * 3 bytes, `stride` bytes
  // apart; only their columns [column_begin(), column_end()) are read. Rows
  // outside [row_begin(), row_end()) are ignored. `lane` 1 (after AddLane)
  // may run on another thread at the same time as lane 0, on other rows.
  void AddRows(int y, int count, const uint8_t* rows, size_t stride, int lane = 0);

  // Makes lane 1: a second horizontal pass with scratch of its own, so that
  // two threads can add disjoint rows at once. Call before either adds rows.
  void AddLane();

  // Writes the window as RGB8 rows dst_stride bytes apart. Throws ClipError
  // kInternal when some row in [row_begin(), row_end()) was never added.
  void Finish(uint8_t* dst, size_t dst_stride);

 private:
  struct State;
  std::unique_ptr<State> state_;
};

// One-shot form for a source held in memory (RGB8, HWC, rows
// src_width * 3 bytes apart).
void ResizeBicubicWindow(const uint8_t* src, int src_width, int src_height, int resized_width, int resized_height,
                         int window_x, int window_y, int window_width, int window_height, uint8_t* dst,
                         size_t dst_stride, ResampleKernel kernel = ResampleKernel::kAuto);

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_PREP_RESAMPLE_H_

// Bicubic resampling that reproduces Pillow's libImaging/Resample.c bit for
// bit (Image.resize(size, BICUBIC, reducing_gap=None) on an RGB image).
#ifndef CLIP_NATIVE_CORE_RESAMPLE_H_
#define CLIP_NATIVE_CORE_RESAMPLE_H_

#include <cstddef>
#include <cstdint>

namespace clip {

// Computes the window [window_x, window_x + window_width) x
// [window_y, window_y + window_height) of the resize of `src` (RGB8, HWC,
// tightly packed) to resized_width x resized_height, and writes it as RGB8
// rows dst_stride bytes apart. Each output pixel depends only on its own
// filter taps, so computing just the window that a center crop keeps gives
// exactly the pixels Pillow computes for the whole image, at a fraction of the
// cost (a 1x100000 image resizes to 224x22400000 of which 224x224 are kept).
// Like Pillow, an axis whose size does not change is copied, not filtered.
// Throws ClipError kInvalidArgument when the window is not inside the resized
// image or a size is not positive.
void ResizeBicubicWindow(const uint8_t* src, int src_width, int src_height,
                         int resized_width, int resized_height, int window_x,
                         int window_y, int window_width, int window_height,
                         uint8_t* dst, size_t dst_stride);

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_RESAMPLE_H_

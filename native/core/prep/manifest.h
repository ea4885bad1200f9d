// The model directory's clip.json (CONTRACT section 2).
#ifndef CLIP_NATIVE_CORE_PREP_MANIFEST_H_
#define CLIP_NATIVE_CORE_PREP_MANIFEST_H_

#include <array>
#include <cstdint>
#include <string>

namespace clip {

struct ImageManifest {
  int size = 224;
  int resize_shortest_edge = 224;
  std::string interpolation = "bicubic";
  std::array<float, 3> mean = {0.48145466f, 0.4578275f, 0.40821073f};
  std::array<float, 3> std = {0.26862954f, 0.26130258f, 0.27577711f};
};

struct TextManifest {
  int context_length = 77;
  int vocab_size = 49408;
  int32_t bos = 49406;
  int32_t eos = 49407;
  int32_t pad = 49407;
};

struct Manifest {
  std::string directory;
  std::string format;
  std::string name;
  int embed_dim = 512;
  ImageManifest image;
  TextManifest text;
  // Absolute paths, resolved against the directory.
  std::string image_encoder_path;
  std::string text_encoder_path;
  std::string vocab_path;
  std::string merges_path;
};

// Reads and validates DIR/clip.json. Throws ClipError(kModelLoadFailed) naming
// the file and the field on any problem, including a referenced file that is
// missing.
Manifest ReadManifest(const std::string& directory);

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_PREP_MANIFEST_H_

// The engine: bounded queues per encoder, a preparation pool (decode,
// preprocess, tokenize) and one inference thread that forms micro-batches
// across concurrent callers.
#ifndef CLIP_NATIVE_CORE_ENGINE_H_
#define CLIP_NATIVE_CORE_ENGINE_H_

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "errors.h"
#include "image.h"
#include "model.h"
#include "threads.h"

namespace clip {

enum class Encoder { kImage = 0, kText = 1 };

enum class TaskKind {
  kImageBytes,   // encoded image -> embedding
  kImagePixels,  // preprocessed float32 pixels -> embedding
  kText,         // UTF-8 text -> embedding
  kTokenIds,     // token ids -> embedding
  kTokenize,     // UTF-8 text -> padded ids (no inference)
  kPreprocess,   // encoded image -> pixels (no inference)
};

// Shared between a caller and its tasks; set from any thread.
struct CancelFlag {
  std::atomic<bool> cancelled{false};
};

// What a task ends with. On success `data` points at `length` values (float,
// or int32 for kTokenize) that stay valid while `owner` is held; all tasks of
// one inference batch share the owner of the batch's [N,E] output.
struct TaskResult {
  bool ok = false;
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  std::shared_ptr<void> owner;
  const void* data = nullptr;
  size_t length = 0;
  // All results of one inference batch share one block of memory: its start,
  // its size in bytes and how many results point into it. batch_id 0 means
  // the result has a block of its own.
  uint64_t batch_id = 0;
  const void* block = nullptr;
  size_t block_bytes = 0;
  size_t block_results = 1;
  // Seconds this task spent in each stage (successful inference only):
  // submitted -> prepared (decode, preprocess or tokenize), prepared -> in a
  // batch (queue wait), and the batch's inference.
  double prepare_seconds = 0;
  double queue_seconds = 0;
  double inference_seconds = 0;
};

using TaskCallback = std::function<void(TaskResult&&)>;

// Tasks submitted together that run as batches of their own: never mixed with
// other tasks, formed in submission order once every member is prepared. The
// same submission then gives the same batches whatever the timing.
struct TaskGroup {
  size_t unsettled = 0;  // members still being prepared; guarded by the engine's mutex
};

// The tasks of one submission (not `together`) still being prepared. A batch
// whose first task belongs to a submission waits for the rest of it, up to a
// full batch: the caller needs them all anyway, and starting early would run
// two smaller batches, the first beside the preparation of the rest. On a
// machine with few cores the two then fight over the cores: the forward's
// threads wait at every barrier for the thread that decoding displaced.
struct TaskCohort {
  size_t unsettled = 0;  // guarded by the engine's mutex
  // On the CPU, for a submission of 2 to max_batch_images images to decode:
  // [images, 3, size, size], each image's pixels prepared into its row
  // (Task::cohort_row), so that a batch of those images in submission order
  // runs on a view of it, not on a copy into the model's staging tensor
  // (4.8 MB for 8 images). Undefined otherwise.
  torch::Tensor pixels;
};

// An allocator whose value-initialization leaves floats uninitialized:
// an image's pixels are written in full by preprocessing or a copy, so the
// zeros a std::vector would write first (600 KB per 224 x 224 image) are
// only work.
template <typename T>
struct UninitializedAllocator : std::allocator<T> {
  template <typename U>
  struct rebind {
    using other = UninitializedAllocator<U>;
  };
  UninitializedAllocator() = default;
  template <typename U>
  UninitializedAllocator(const UninitializedAllocator<U>&) noexcept {}
  template <typename U>
  void construct(U* p) noexcept {
    ::new (static_cast<void*>(p)) U;
  }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
};
using FloatPixels = std::vector<float, UninitializedAllocator<float>>;

struct Task {
  TaskKind kind = TaskKind::kText;
  std::string input;         // image bytes or UTF-8 text
  FloatPixels pixels;        // kImagePixels input; prepared pixels unless cohort_row >= 0
  int64_t cohort_row = -1;   // kImageBytes: the row of cohort->pixels its pixels are prepared into
  std::vector<int64_t> ids;  // kTokenIds input; prepared ids
  ImageDecodeOptions decode;
  std::shared_ptr<CancelFlag> cancel;
  // Called exactly once, on an engine thread (or the submitting thread when
  // the engine is shutting down).
  TaskCallback done;
  std::chrono::steady_clock::time_point submitted_at;  // set by Engine::Submit
  std::chrono::steady_clock::time_point ready_at;
  uint64_t sequence = 0;               // submission order, set by Engine::Submit
  std::shared_ptr<TaskGroup> group;    // set by Engine::Submit with `together`
  std::shared_ptr<TaskCohort> cohort;  // set by Engine::Submit for several tasks without `together`
};

struct EngineOptions {
  int max_batch_images = 0;  // 0: the device default
  int max_batch_texts = 0;
  // Largest text batch in token rows (batch size x its longest sequence);
  // 0: the device default. A batch always takes at least one text.
  int max_batch_tokens = 0;
  // Runs every image batch at max_batch_images rows, zeros after the real
  // images. An image's features vary in their last bits with the size of its
  // batch (BLAS blocking), not with its batch-mates: with a constant size
  // they are the same bits however the items happen to be batched.
  bool pad_image_batches = false;
  double max_wait_ms = 2.0;
  size_t queue_capacity = 4096;           // tasks waiting per encoder
  int prep_threads = 0;                   // 0: one per core, at most 8
  int thread_niceness = kEngineNiceness;  // added to the engine threads' nice value (Linux)
};

struct EncoderStats {
  size_t queue_depth = 0;
  uint64_t batches = 0;
  uint64_t forwards = 0;  // a text batch may run as several (TextGroups)
  uint64_t items = 0;
  double mean_batch_size = 0;
  double items_per_second = 0;
};

// Shuts down every engine of the process. For exit paths that skip the
// owners' own cleanup (Node's process.exit() calls exit() directly): engine
// threads must stop before libtorch's static objects are destroyed.
void ShutdownAllEngines();

class Engine {
 public:
  Engine(std::shared_ptr<Model> model, const EngineOptions& options);
  ~Engine();
  Engine(const Engine&) = delete;
  Engine& operator=(const Engine&) = delete;

  // Takes all tasks or none: throws ClipError kQueueFull when the encoder's
  // queue cannot hold them now, kInvalidArgument when it never could (more
  // tasks than its capacity), kDisposed after Shutdown(). With `together`
  // the tasks form a TaskGroup.
  void Submit(std::vector<std::unique_ptr<Task>> tasks, bool together = false);

  // Throws ClipError kInvalidArgument when `count` tasks of one encoder could
  // never be queued (more than the capacity); Submit checks it too.
  void CheckCapacity(size_t count) const;

  // Idempotent. Fails every task not yet started with kDisposed, waits for
  // the batch in flight, joins the threads and releases the model.
  void Shutdown();

  // Test hook: while held, the inference thread takes no batch, so submitted
  // work waits without progress (what a wedged engine looks like from outside).
  void HoldForTesting(bool hold);

  EncoderStats Stats(Encoder encoder) const;
  const Model& model() const { return *model_; }
  int max_batch(Encoder encoder) const { return max_batch_[static_cast<int>(encoder)]; }
  int max_batch_tokens() const { return max_batch_tokens_; }
  size_t queue_capacity() const { return queue_capacity_; }
  bool pad_image_batches() const { return pad_image_batches_; }

 private:
  struct Queue {
    std::deque<std::unique_ptr<Task>> ready;  // prepared, waiting for a batch
    size_t waiting = 0;                       // submitted, not yet in a batch
    uint64_t batches = 0;
    uint64_t forwards = 0;
    uint64_t items = 0;
    std::deque<std::pair<std::chrono::steady_clock::time_point, size_t>> recent;
  };

  void PrepLoop();
  void InferenceLoop();
  // The first ready task that can run now: one outside a group, or a member
  // of a group whose members are all prepared (a group still in preparation
  // holds up neither other calls nor the other encoder). Needs mutex_.
  static const Task* NextRunnable(const Queue& queue);
  // Moves the next batch of encoder `e`, starting at `first` (its
  // NextRunnable), out of its ready queue (aborted tasks into `aborted`).
  // Called with `lock` held; may wait on it, for batch-mates, at most max_wait_.
  bool TakeBatch(int e, const Task* first, std::unique_lock<std::mutex>& lock,
                 std::vector<std::unique_ptr<Task>>* batch, std::vector<std::unique_ptr<Task>>* aborted);
  void Prepare(std::unique_ptr<Task> task);
  void RunBatch(Encoder encoder, std::vector<std::unique_ptr<Task>>& batch);
  // The image batch's input: a view of its submission's cohort pixels where
  // the batch is rows of it in order, else the model's staging tensor filled
  // with the batch's pixels.
  torch::Tensor ImageBatchInput(const std::vector<std::unique_ptr<Task>>& batch);
  // Where `task` (cohort_row >= 0) is prepared into its cohort's pixels.
  float* CohortPixels(const Task& task) const;
  void Finish(std::unique_ptr<Task> task, TaskResult&& result);
  void Fail(std::unique_ptr<Task> task, ErrorCode code, const std::string& message);
  static Encoder EncoderOf(TaskKind kind);

  std::shared_ptr<Model> model_;
  int max_batch_[2];
  int max_batch_tokens_;
  std::chrono::microseconds max_wait_;
  size_t queue_capacity_;
  bool pad_image_batches_;
  PreprocessOptions preprocess_;

  mutable std::mutex mutex_;
  std::condition_variable prep_cv_;
  std::condition_variable ready_cv_;
  std::deque<std::unique_ptr<Task>> prep_queue_;
  Queue queues_[2];
  bool stopping_ = false;
  bool held_ = false;  // HoldForTesting; guarded by mutex_
  std::atomic<uint64_t> next_batch_id_{1};
  uint64_t next_sequence_ = 0;  // guarded by mutex_

  std::mutex shutdown_mutex_;
  bool shut_down_ = false;
  std::vector<std::thread> prep_threads_;
  std::thread inference_thread_;
};

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_ENGINE_H_

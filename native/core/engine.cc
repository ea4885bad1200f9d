#include "engine.h"

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <numeric>
#include <vector>

#include "threads.h"

namespace clip {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kRateWindow = std::chrono::seconds(10);

// Maps whatever a task's work threw to a code and a message; never lets an
// exception escape a worker thread.
template <typename Fn>
bool Guard(Fn&& fn, ErrorCode* code, std::string* message) {
  try {
    fn();
    return true;
  } catch (const ClipError& e) {
    *code = e.code();
    *message = e.what();
  } catch (const c10::Error& e) {
    *code = ErrorCode::kInternal;
    *message = e.what_without_backtrace();
  } catch (const std::bad_alloc&) {
    *code = ErrorCode::kInternal;
    *message = "out of memory";
  } catch (const std::exception& e) {
    *code = ErrorCode::kInternal;
    *message = e.what();
  }
  return false;
}

// Live engines, for ShutdownAllEngines(). Leaked on purpose: it must outlive
// every static destructor that could run while an engine still exists.
struct EngineRegistry {
  std::mutex mutex;
  std::vector<Engine*> engines;
};
EngineRegistry& Registry() {
  static EngineRegistry* registry = new EngineRegistry();
  return *registry;
}

// A batch of texts pads to its longest, and on the CPU a padding token costs
// the linears as much as a real one (about a third of a millisecond per token
// row for ViT-B/32's text encoder in float32 on a 2-core AMD EPYC, Zen 4),
// while a forward has a fixed cost of about 10-30 such rows there (the small
// operators, thin products; bench/optimizations.md).
// So the CPU runs a batch of mixed lengths as groups of neighbouring lengths:
// the split of the texts sorted by length that minimizes the sum, over the
// groups, of kForwardRows + texts x longest. Returns the groups as indices
// into `lengths`, shortest first; one group when splitting saves nothing.
constexpr size_t kForwardRows = 16;

std::vector<std::vector<size_t>> TextGroups(const std::vector<size_t>& lengths) {
  const size_t n = lengths.size();
  std::vector<size_t> order(n);
  for (size_t i = 0; i < n; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return lengths[a] < lengths[b]; });
  // rows[j]: the least cost of the first j sorted texts; start[j]: where its last group starts.
  std::vector<size_t> rows(n + 1, 0), start(n + 1, 0);
  for (size_t j = 1; j <= n; ++j) {
    rows[j] = SIZE_MAX;
    for (size_t i = 0; i < j; ++i) {
      const size_t cost = rows[i] + kForwardRows + (j - i) * lengths[order[j - 1]];
      if (cost < rows[j]) {
        rows[j] = cost;
        start[j] = i;
      }
    }
  }
  std::vector<std::vector<size_t>> groups;
  for (size_t j = n; j > 0; j = start[j]) groups.emplace_back(order.begin() + start[j], order.begin() + j);
  std::reverse(groups.begin(), groups.end());
  return groups;
}

// What an encoder must return for `rows` inputs: [rows, dim], contiguous.
void CheckEncoderOutput(const torch::Tensor& output, int64_t rows) {
  if (output.dim() != 2 || output.size(0) != rows || !output.is_contiguous()) {
    throw ClipError(ErrorCode::kInternal, "the encoder returned shape " + c10::str(output.sizes()));
  }
}

}  // namespace

void ShutdownAllEngines() {
  std::vector<Engine*> engines;
  {
    std::lock_guard<std::mutex> lock(Registry().mutex);
    engines = Registry().engines;
  }
  // Shutdown() is idempotent and unregisters; an engine whose owner shuts it
  // down concurrently is waited for by the shutdown mutex.
  for (Engine* engine : engines) engine->Shutdown();
}

Encoder Engine::EncoderOf(TaskKind kind) {
  switch (kind) {
    case TaskKind::kImageBytes:
    case TaskKind::kImagePixels:
    case TaskKind::kPreprocess:
      return Encoder::kImage;
    default:
      return Encoder::kText;
  }
}

Engine::Engine(std::shared_ptr<Model> model, const EngineOptions& options)
    : model_(std::move(model)),
      max_wait_(static_cast<int64_t>(std::max(0.0, options.max_wait_ms) * 1000.0)),
      queue_capacity_(options.queue_capacity),
      pad_image_batches_(options.pad_image_batches) {
  // CPU throughput flattens out early while latency grows with the batch;
  // a GPU keeps gaining up to a few hundred images.
  const bool cuda = model_->is_cuda();
  max_batch_[0] = options.max_batch_images > 0 ? options.max_batch_images : (cuda ? 128 : 16);
  max_batch_[1] = options.max_batch_texts > 0 ? options.max_batch_texts : (cuda ? 256 : 64);
  const Manifest& m = model_->manifest();
  // Text batches are bounded by token rows too: on the CPU throughput per
  // text is flat from about 8 x 77 tokens up (bench/RESULTS.md), so 64
  // full-length texts in one batch would only hold every caller for ~1.5 s;
  // 16 x 77 keeps a batch near the cost of 16 images, and short captions
  // still batch by 64.
  max_batch_tokens_ = options.max_batch_tokens > 0 ? options.max_batch_tokens
                      : cuda                       ? max_batch_[1] * m.text.context_length
                                                   : 16 * m.text.context_length;
  preprocess_.crop_size = m.image.size;
  preprocess_.resize_shortest_edge = m.image.resize_shortest_edge;
  preprocess_.mean = m.image.mean;
  preprocess_.std = m.image.std;

  int prep = options.prep_threads;
  if (prep <= 0) prep = std::clamp<int>(static_cast<int>(std::thread::hardware_concurrency()), 1, 8);
  const int niceness = options.thread_niceness;
  for (int i = 0; i < prep; ++i) {
    prep_threads_.emplace_back([this, niceness] {
      NameThisThread("clip-prep");
      LowerThreadPriority(niceness);
      PrepLoop();
    });
  }
  inference_thread_ = std::thread([this, niceness] {
    // Forms the batches; their CPU forwards run on the forward thread (threads.h).
    NameThisThread("clip-infer");
    LowerThreadPriority(niceness);
    InferenceLoop();
  });
  std::lock_guard<std::mutex> lock(Registry().mutex);
  Registry().engines.push_back(this);
}

Engine::~Engine() { Shutdown(); }

void Engine::CheckCapacity(size_t count) const {
  if (count > queue_capacity_) {
    // Would never fit, so not "full": retrying cannot help.
    throw ClipError(ErrorCode::kInvalidArgument, "Expected at most " + std::to_string(queue_capacity_) +
                                                     " inputs (the queue capacity) but received " +
                                                     std::to_string(count));
  }
}

void Engine::Submit(std::vector<std::unique_ptr<Task>> tasks, bool together) {
  // Images of one submission are prepared into one tensor on the CPU (see
  // TaskCohort::pixels); allocated before the lock is taken.
  torch::Tensor cohort_pixels;
  if (!together && tasks.size() > 1 && !model_->is_cuda() && !pad_image_batches_) {
    const auto images =
        std::count_if(tasks.begin(), tasks.end(), [](const auto& task) { return task->kind == TaskKind::kImageBytes; });
    if (images > 1 && images <= max_batch_[0]) {
      const int64_t size = model_->manifest().image.size;
      try {
        cohort_pixels = torch::empty({images, 3, size, size}, torch::kFloat32);
      } catch (const std::exception&) {
        // No room for it now: each image is prepared into a buffer of its own.
      }
    }
  }
  std::unique_lock<std::mutex> lock(mutex_);
  if (stopping_) throw ClipError(ErrorCode::kDisposed, "the model has been disposed");
  size_t per_encoder[2] = {0, 0};
  for (const auto& task : tasks) ++per_encoder[static_cast<int>(EncoderOf(task->kind))];
  for (int e = 0; e < 2; ++e) {
    if (per_encoder[e] == 0) continue;
    CheckCapacity(per_encoder[e]);
    if (queues_[e].waiting + per_encoder[e] > queue_capacity_) {
      throw ClipError(ErrorCode::kQueueFull, std::string("the ") + (e == 0 ? "image" : "text") + " queue is full (" +
                                                 std::to_string(queues_[e].waiting) + " waiting, capacity " +
                                                 std::to_string(queue_capacity_) + ")");
    }
  }
  for (int e = 0; e < 2; ++e) queues_[e].waiting += per_encoder[e];
  if (together && !tasks.empty()) {
    auto group = std::make_shared<TaskGroup>();
    group->unsettled = tasks.size();
    for (auto& task : tasks) task->group = group;
  } else if (tasks.size() > 1) {
    auto cohort = std::make_shared<TaskCohort>();
    cohort->unsettled = tasks.size();
    cohort->pixels = std::move(cohort_pixels);
    int64_t row = 0;
    for (auto& task : tasks) {
      task->cohort = cohort;
      if (cohort->pixels.defined() && task->kind == TaskKind::kImageBytes) task->cohort_row = row++;
    }
  }
  const auto now = Clock::now();
  for (auto& task : tasks) {
    task->submitted_at = now;
    task->sequence = next_sequence_++;
  }
  // A submission's batch starts once its last item is prepared, so its
  // largest inputs (the costliest to decode, roughly) go first and the
  // preparation threads finish close together: 8 mixed JPEGs and PNGs took
  // 7.7 ms instead of 9.1 on two threads. Batches keep submission order
  // (Task::sequence).
  std::stable_sort(tasks.begin(), tasks.end(),
                   [](const auto& a, const auto& b) { return a->input.size() > b->input.size(); });
  for (auto& task : tasks) prep_queue_.push_back(std::move(task));
  lock.unlock();
  prep_cv_.notify_all();
}

void Engine::Finish(std::unique_ptr<Task> task, TaskResult&& result) {
  TaskCallback done = std::move(task->done);
  task.reset();  // free inputs before handing control to the caller
  if (done) done(std::move(result));
}

void Engine::Fail(std::unique_ptr<Task> task, ErrorCode code, const std::string& message) {
  TaskResult result;
  result.ok = false;
  result.code = code;
  result.message = message;
  Finish(std::move(task), std::move(result));
}

void Engine::PrepLoop() {
  for (;;) {
    std::unique_ptr<Task> task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      prep_cv_.wait(lock, [this] { return stopping_ || !prep_queue_.empty(); });
      if (prep_queue_.empty()) return;  // stopping, and nothing left
      task = std::move(prep_queue_.front());
      prep_queue_.pop_front();
    }
    Prepare(std::move(task));
  }
}

void Engine::Prepare(std::unique_ptr<Task> task) {
  const int e = static_cast<int>(EncoderOf(task->kind));
  const std::shared_ptr<TaskGroup> group = task->group;
  const std::shared_ptr<TaskCohort> cohort = task->cohort;
  // Shutdown() zeroes the counts, so tasks finishing after it leave no trace.
  // The inference thread may be waiting for this task as a batch-mate, or
  // for its group to settle.
  auto leave_queue = [&] {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      if (!stopping_) --queues_[e].waiting;
      if (group) --group->unsettled;
      if (cohort) --cohort->unsettled;
    }
    ready_cv_.notify_all();
  };
  if (task->cancel && task->cancel->cancelled.load()) {
    leave_queue();
    return Fail(std::move(task), ErrorCode::kAborted, "the operation was aborted");
  }
  {
    std::unique_lock<std::mutex> lock(mutex_);
    if (stopping_) {
      lock.unlock();
      return Fail(std::move(task), ErrorCode::kDisposed, "the model has been disposed");
    }
  }

  const Manifest& m = model_->manifest();
  const size_t pixel_count = PreprocessedSize(preprocess_);
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  TaskResult immediate;
  bool has_immediate = false;

  bool ok = Guard(
      [&] {
        switch (task->kind) {
          case TaskKind::kImageBytes:
          case TaskKind::kPreprocess: {
            std::shared_ptr<FloatPixels> pixels;
            if (task->cohort_row < 0) pixels = std::make_shared<FloatPixels>(pixel_count);
            PreprocessImage(reinterpret_cast<const uint8_t*>(task->input.data()), task->input.size(), task->decode,
                            preprocess_, pixels ? pixels->data() : CohortPixels(*task));
            std::string().swap(task->input);
            if (task->kind == TaskKind::kPreprocess) {
              immediate.ok = true;
              immediate.data = pixels->data();
              immediate.length = pixels->size();
              immediate.block = pixels->data();
              immediate.block_bytes = pixels->size() * sizeof(float);
              immediate.owner = std::move(pixels);
              has_immediate = true;
            } else if (pixels) {
              task->pixels = std::move(*pixels);
            }
            break;
          }
          case TaskKind::kImagePixels:
            if (task->pixels.size() != pixel_count) {
              throw ClipError(ErrorCode::kInvalidArgument, "Expected " + std::to_string(pixel_count) +
                                                               " pixel values but received " +
                                                               std::to_string(task->pixels.size()));
            }
            break;
          case TaskKind::kText: {
            std::vector<int32_t> ids = model_->tokenizer().Encode(task->input);
            task->ids.assign(ids.begin(), ids.end());
            std::string().swap(task->input);
            break;
          }
          case TaskKind::kTokenize: {
            auto ids = std::make_shared<std::vector<int32_t>>(m.text.context_length);
            model_->tokenizer().EncodePadded(task->input, ids->data());
            immediate.ok = true;
            immediate.data = ids->data();
            immediate.length = ids->size();
            immediate.block = ids->data();
            immediate.block_bytes = ids->size() * sizeof(int32_t);
            immediate.owner = std::move(ids);
            has_immediate = true;
            break;
          }
          case TaskKind::kTokenIds: {
            const auto& ids = task->ids;
            if (ids.empty() || ids.size() > static_cast<size_t>(m.text.context_length)) {
              throw ClipError(ErrorCode::kInvalidArgument, "Expected between 1 and " +
                                                               std::to_string(m.text.context_length) +
                                                               " token ids but received " + std::to_string(ids.size()));
            }
            for (int64_t id : ids) {
              if (id < 0 || id >= m.text.vocab_size) {
                throw ClipError(ErrorCode::kInvalidArgument, "Expected token ids below " +
                                                                 std::to_string(m.text.vocab_size) + " but received " +
                                                                 std::to_string(id));
              }
            }
            break;
          }
        }
      },
      &code, &message);

  if (!ok || has_immediate) {
    leave_queue();
    if (!ok) return Fail(std::move(task), code, message);
    return Finish(std::move(task), std::move(immediate));
  }
  task->ready_at = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!stopping_) {
      queues_[e].ready.push_back(std::move(task));
      if (group) --group->unsettled;
      if (cohort) --cohort->unsettled;
    }
  }
  if (task) return Fail(std::move(task), ErrorCode::kDisposed, "the model has been disposed");
  ready_cv_.notify_all();
}

void Engine::InferenceLoop() {
  torch::InferenceMode inference_mode;
  model_->PrepareInferenceThread();
  std::unique_lock<std::mutex> lock(mutex_);
  for (;;) {
    const Task* next[2] = {nullptr, nullptr};
    ready_cv_.wait(lock, [&] {
      if (held_) return stopping_;
      next[0] = NextRunnable(queues_[0]);
      next[1] = NextRunnable(queues_[1]);
      return stopping_ || next[0] || next[1];
    });
    if (stopping_) return;

    // Serve the encoder whose oldest runnable task has waited longest.
    int e;
    if (!next[0]) {
      e = 1;
    } else if (!next[1]) {
      e = 0;
    } else {
      e = next[0]->ready_at <= next[1]->ready_at ? 0 : 1;
    }
    std::vector<std::unique_ptr<Task>> batch;
    std::vector<std::unique_ptr<Task>> aborted;
    if (!TakeBatch(e, next[e], lock, &batch, &aborted)) return;
    lock.unlock();
    for (auto& task : aborted) Fail(std::move(task), ErrorCode::kAborted, "the operation was aborted");
    if (!batch.empty()) RunBatch(static_cast<Encoder>(e), batch);
    lock.lock();
  }
}

const Task* Engine::NextRunnable(const Queue& queue) {
  for (const auto& task : queue.ready) {
    if (!task->group || task->group->unsettled == 0) return task.get();
  }
  return nullptr;
}

bool Engine::TakeBatch(int e, const Task* first, std::unique_lock<std::mutex>& lock,
                       std::vector<std::unique_ptr<Task>>* batch, std::vector<std::unique_ptr<Task>>* aborted) {
  auto& ready = queues_[e].ready;
  const size_t limit = static_cast<size_t>(max_batch_[e]);
  const bool text = e == static_cast<int>(Encoder::kText);
  // A text batch costs its token rows: where it runs packed (the CPU with an
  // archive's forward_packed) the sum of its texts' tokens, else its texts
  // times the longest of them (the most its padding can take).
  const bool packed = text && !model_->is_cuda() && model_->cpu_kernels().packed_texts;
  size_t longest = 0;
  size_t tokens = 0;
  // Whether `task` still fits the batch (limit, and for texts the token budget).
  auto fits = [&](const Task& task) {
    if (batch->size() >= limit) return false;
    if (!text || batch->empty()) return true;
    const size_t rows = packed ? tokens + task.ids.size() : (batch->size() + 1) * std::max(longest, task.ids.size());
    return rows <= static_cast<size_t>(max_batch_tokens_);
  };
  auto take = [&](std::unique_ptr<Task> task) {
    --queues_[e].waiting;
    if (task->cancel && task->cancel->cancelled.load()) {
      aborted->push_back(std::move(task));
    } else {
      longest = std::max(longest, task->ids.size());
      tokens += task->ids.size();
      batch->push_back(std::move(task));
    }
  };
  auto by_sequence = [](const auto& a, const auto& b) { return a->sequence < b->sequence; };

  if (const std::shared_ptr<TaskGroup> group = first->group) {
    std::vector<std::unique_ptr<Task>> members;
    for (auto it = ready.begin(); it != ready.end();) {
      if ((*it)->group == group) {
        members.push_back(std::move(*it));
        it = ready.erase(it);
      } else {
        ++it;
      }
    }
    std::sort(members.begin(), members.end(), by_sequence);
    size_t taken = 0;
    while (taken < members.size() && fits(*members[taken])) take(std::move(members[taken++]));
    // The rest of the group goes first next time, still in order.
    for (size_t i = members.size(); i > taken; --i) ready.push_front(std::move(members[i - 1]));
    return true;
  }

  // The rest of the first task's submission (TaskCohort), then briefly for
  // other batch-mates, but only while more are on the way.
  // `first` may be gone once the lock is released (Shutdown clears the queues).
  const auto deadline = first->ready_at + max_wait_;
  if (const std::shared_ptr<TaskCohort> cohort = first->cohort) {
    ready_cv_.wait(lock, [&] { return stopping_ || cohort->unsettled == 0 || ready.size() >= limit; });
  }
  while (!stopping_ && ready.size() < limit && queues_[e].waiting > ready.size()) {
    if (ready_cv_.wait_until(lock, deadline) == std::cv_status::timeout) break;
  }
  if (stopping_) return false;
  for (auto it = ready.begin(); it != ready.end();) {
    if ((*it)->group) {  // groups run on their own
      ++it;
      continue;
    }
    if (!fits(**it)) break;
    auto task = std::move(*it);
    it = ready.erase(it);
    take(std::move(task));
  }
  // Parallel preparation finishes out of order; a batch keeps submission
  // order, so the same submissions make the same batch.
  std::sort(batch->begin(), batch->end(), by_sequence);
  return true;
}

float* Engine::CohortPixels(const Task& task) const {
  return task.cohort->pixels.data_ptr<float>() + static_cast<size_t>(task.cohort_row) * PreprocessedSize(preprocess_);
}

torch::Tensor Engine::ImageBatchInput(const std::vector<std::unique_ptr<Task>>& batch) {
  const int64_t n = static_cast<int64_t>(batch.size());
  const Task& first = *batch.front();
  // Cohort rows exist only where batches are not padded (Submit).
  const bool cohort_rows =
      first.cohort_row >= 0 && std::all_of(batch.begin(), batch.end(), [&](const auto& task) {
        return task->cohort == first.cohort && task->cohort_row == first.cohort_row + (&task - batch.data());
      });
  if (cohort_rows) return first.cohort->pixels.narrow(0, first.cohort_row, n);
  const int64_t rows = pad_image_batches_ ? std::max<int64_t>(n, max_batch_[0]) : n;
  torch::Tensor staging = model_->ImageStaging(rows);
  float* dst = staging.data_ptr<float>();
  const size_t per_item = PreprocessedSize(preprocess_);
  for (int64_t i = 0; i < n; ++i) {
    const Task& task = *batch[i];
    const float* pixels = task.cohort_row >= 0 ? CohortPixels(task) : task.pixels.data();
    std::memcpy(dst + i * per_item, pixels, per_item * sizeof(float));
  }
  if (rows > n) std::memset(dst + n * per_item, 0, (rows - n) * per_item * sizeof(float));
  return staging;
}

void Engine::RunBatch(Encoder encoder, std::vector<std::unique_ptr<Task>>& batch) {
  const int64_t n = static_cast<int64_t>(batch.size());
  const Manifest& m = model_->manifest();
  const auto started = Clock::now();
  torch::Tensor output;
  uint64_t forwards = 0;
  ErrorCode code = ErrorCode::kInternal;
  std::string message;
  bool ok = Guard(
      [&] {
        if (encoder == Encoder::kImage) {
          const torch::Tensor input = ImageBatchInput(batch);
          const int64_t rows = input.size(0);
          output = model_->EncodeImages(input);
          forwards += static_cast<uint64_t>(model_->ImageForwards(rows));
          // Rows [0, n) of a contiguous [rows, dim] tensor: still contiguous.
          if (rows > n) output = output.narrow(0, 0, n);
        } else {
          // Pad to the longest sequence of each group, not to the context length:
          // pooling happens at the first eos, so the padding never reaches it.
          std::vector<size_t> lengths(batch.size());
          for (size_t i = 0; i < batch.size(); ++i) lengths[i] = std::max<size_t>(1, batch[i]->ids.size());
          // On CUDA padding costs little beside another pass, and a packed
          // text encoder (Model's forward_packed) runs no padding through its
          // linears: one group.
          std::vector<std::vector<size_t>> groups;
          if (!model_->is_cuda() && !model_->cpu_kernels().packed_texts) groups = TextGroups(lengths);
          if (groups.size() <= 1) {  // the batch in its own order
            groups.assign(1, std::vector<size_t>(batch.size()));
            std::iota(groups[0].begin(), groups[0].end(), size_t{0});
          }
          for (const std::vector<size_t>& group : groups) {
            size_t length = 1;
            for (size_t i : group) length = std::max(length, lengths[i]);
            const int64_t count = static_cast<int64_t>(group.size());
            torch::Tensor staging = model_->TextStaging(count, static_cast<int64_t>(length));
            int64_t* dst = staging.data_ptr<int64_t>();
            for (int64_t k = 0; k < count; ++k) {
              const auto& ids = batch[group[k]]->ids;
              std::copy(ids.begin(), ids.end(), dst + k * length);
              std::fill(dst + k * length + ids.size(), dst + (k + 1) * length, static_cast<int64_t>(m.text.pad));
            }
            torch::Tensor part = model_->EncodeTexts(staging);
            ++forwards;
            if (groups.size() == 1) {
              output = part;
              break;
            }
            CheckEncoderOutput(part, count);
            const int64_t dim = part.size(1);
            if (!output.defined()) output = torch::empty({n, dim}, part.options());
            // Rows back in the batch's order.
            const float* from = part.data_ptr<float>();
            float* to = output.data_ptr<float>();
            for (int64_t k = 0; k < count; ++k) std::memcpy(to + group[k] * dim, from + k * dim, dim * sizeof(float));
          }
        }
        CheckEncoderOutput(output, n);
      },
      &code, &message);

  const auto now = Clock::now();
  {
    std::lock_guard<std::mutex> lock(mutex_);
    Queue& q = queues_[static_cast<int>(encoder)];
    if (ok) {
      ++q.batches;
      q.forwards += forwards;
      q.items += n;
      q.recent.emplace_back(now, static_cast<size_t>(n));
    }
    while (!q.recent.empty() && now - q.recent.front().first > kRateWindow) q.recent.pop_front();
  }
  if (!ok) {
    for (auto& task : batch) Fail(std::move(task), code, message);
    return;
  }
  auto holder = std::make_shared<torch::Tensor>(std::move(output));
  const float* base = holder->data_ptr<float>();
  const int64_t dim = holder->size(1);
  const uint64_t batch_id = next_batch_id_.fetch_add(1);
  for (int64_t i = 0; i < n; ++i) {
    TaskResult result;
    result.ok = true;
    result.owner = holder;
    result.data = base + i * dim;
    result.length = static_cast<size_t>(dim);
    result.batch_id = batch_id;
    result.block = base;
    result.block_bytes = static_cast<size_t>(n * dim) * sizeof(float);
    result.block_results = static_cast<size_t>(n);
    const auto seconds = [](Clock::duration d) { return std::chrono::duration<double>(d).count(); };
    result.prepare_seconds = seconds(batch[i]->ready_at - batch[i]->submitted_at);
    result.queue_seconds = seconds(started - batch[i]->ready_at);
    result.inference_seconds = seconds(now - started);
    Finish(std::move(batch[i]), std::move(result));
  }
}

void Engine::HoldForTesting(bool hold) {
  {
    std::lock_guard<std::mutex> guard(mutex_);
    held_ = hold;
  }
  ready_cv_.notify_all();
}

void Engine::Shutdown() {
  std::lock_guard<std::mutex> shutdown_lock(shutdown_mutex_);
  if (shut_down_) return;
  shut_down_ = true;
  {
    std::lock_guard<std::mutex> lock(Registry().mutex);
    auto& engines = Registry().engines;
    engines.erase(std::remove(engines.begin(), engines.end(), this), engines.end());
  }
  std::deque<std::unique_ptr<Task>> dropped;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
    for (auto& task : prep_queue_) dropped.push_back(std::move(task));
    prep_queue_.clear();
    for (auto& q : queues_) {
      for (auto& task : q.ready) dropped.push_back(std::move(task));
      q.ready.clear();
      q.waiting = 0;
    }
  }
  prep_cv_.notify_all();
  ready_cv_.notify_all();
  for (auto& task : dropped) Fail(std::move(task), ErrorCode::kDisposed, "the model has been disposed");
  // The batch in flight, and tasks being prepared, finish before the join.
  if (inference_thread_.joinable()) inference_thread_.join();
  for (auto& thread : prep_threads_) {
    if (thread.joinable()) thread.join();
  }
  model_.reset();
}

EncoderStats Engine::Stats(Encoder encoder) const {
  std::lock_guard<std::mutex> lock(mutex_);
  const Queue& q = queues_[static_cast<int>(encoder)];
  EncoderStats stats;
  stats.queue_depth = q.waiting;
  stats.batches = q.batches;
  stats.forwards = q.forwards;
  stats.items = q.items;
  stats.mean_batch_size = q.batches ? static_cast<double>(q.items) / q.batches : 0.0;
  const auto now = Clock::now();
  size_t recent_items = 0;
  auto oldest = now;
  for (const auto& [when, count] : q.recent) {
    if (now - when > kRateWindow) continue;
    recent_items += count;
    oldest = std::min(oldest, when);
  }
  if (recent_items > 0) {
    // Over the window, or since the first batch in it when that is shorter
    // (at least one second, so a single batch does not read as a huge rate).
    double seconds = std::chrono::duration<double>(now - oldest).count();
    seconds = std::max(seconds, 1.0);
    stats.items_per_second = recent_items / seconds;
  }
  return stats;
}

}  // namespace clip

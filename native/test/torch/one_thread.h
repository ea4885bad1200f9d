// The torch tests' way to run a call on one intra-op thread, to compare it
// with the same call on all of them (kernels that split work over threads
// must give the same bits on any number).
#ifndef CLIP_NATIVE_TEST_TORCH_ONE_THREAD_H_
#define CLIP_NATIVE_TEST_TORCH_ONE_THREAD_H_

#include <ATen/Parallel.h>

// `run()` on one thread; the thread count is restored after, thrown or not.
template <typename Fn>
auto OnOneThread(Fn&& run) -> decltype(run()) {
  struct Restore {
    int threads = at::get_num_threads();
    ~Restore() { at::set_num_threads(threads); }
  } restore;
  at::set_num_threads(1);
  return run();
}

#endif  // CLIP_NATIVE_TEST_TORCH_ONE_THREAD_H_

#include "threads.h"

#include <algorithm>
#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>

#ifdef __linux__
#include <pthread.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cerrno>
#endif

namespace clip {
namespace {

class ForwardThread {
 public:
  ForwardThread()
      : thread_([this] {
          NameThisThread("clip-forward");
          LowerThreadPriority(kEngineNiceness);
          Loop();
        }) {
    id_ = thread_.get_id();
    thread_.detach();  // never stopped: see Get()
  }

  bool IsCurrent() const { return std::this_thread::get_id() == id_; }

  void Run(const std::function<void()>& fn) {
    Job job{&fn, nullptr, false};
    std::unique_lock<std::mutex> lock(mutex_);
    jobs_.push_back(&job);
    work_cv_.notify_one();
    done_cv_.wait(lock, [&] { return job.done; });
    if (job.error) std::rethrow_exception(job.error);
  }

  // Leaked on purpose: an exiting process destroys static objects while this
  // thread may still wait for work, so it and its state must outlive them.
  static ForwardThread& Get() {
    static ForwardThread* thread = new ForwardThread();
    return *thread;
  }

 private:
  struct Job {
    const std::function<void()>* fn;
    std::exception_ptr error;
    bool done = false;
  };

  void Loop() {
    std::unique_lock<std::mutex> lock(mutex_);
    for (;;) {
      work_cv_.wait(lock, [&] { return !jobs_.empty(); });
      Job* job = jobs_.front();
      jobs_.pop_front();
      lock.unlock();
      try {
        (*job->fn)();
      } catch (...) {
        job->error = std::current_exception();
      }
      lock.lock();
      job->done = true;
      done_cv_.notify_all();
    }
  }

  std::mutex mutex_;
  std::condition_variable work_cv_;
  std::condition_variable done_cv_;
  std::deque<Job*> jobs_;
  std::thread thread_;  // after the members its loop uses
  std::thread::id id_;  // set before Get() returns, read-only after
};

}  // namespace

void NameThisThread(const char* name) {
#ifdef __linux__
  pthread_setname_np(pthread_self(), name);
#else
  (void)name;
#endif
}

void LowerThreadPriority(int niceness) {
#ifdef __linux__
  if (niceness > 0) {
    const int tid = static_cast<int>(syscall(SYS_gettid));
    errno = 0;
    const int current = getpriority(PRIO_PROCESS, tid);
    if (errno == 0) setpriority(PRIO_PROCESS, tid, std::min(19, current + niceness));
  }
#else
  (void)niceness;
#endif
}

void RunOnForwardThread(const std::function<void()>& fn) {
  ForwardThread& thread = ForwardThread::Get();
  if (thread.IsCurrent()) return fn();
  thread.Run(fn);
}

}  // namespace clip

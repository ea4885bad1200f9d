// The threads the core starts: names, priorities, and the one thread that
// runs every CPU forward of the process.
#ifndef CLIP_NATIVE_CORE_THREADS_H_
#define CLIP_NATIVE_CORE_THREADS_H_

#include <functional>

namespace clip {

// Names the calling thread (at most 15 characters; Linux only, else nothing),
// as tools like top -H and /proc/<pid>/task show it. Threads it starts later,
// the OpenMP workers of its parallel regions included, inherit the name.
void NameThisThread(const char* name);

// Adds `niceness` to the calling thread's nice value (Linux; at most 19).
// Threads it starts later inherit the result.
void LowerThreadPriority(int niceness);

// The niceness of engine threads and of the CPU forward thread: below the
// caller's, so a process's event loop wins the CPU when both want it.
constexpr int kEngineNiceness = 10;

// Runs `fn` on the process's CPU forward thread ("clip-forward", started on
// first use, never stopped) and returns when it has run, rethrowing what it
// threw. Called from that thread itself, runs `fn` in place.
//
// Why one thread: with libtorch on OpenMP every thread that enters a parallel
// region gets a pool of OpenMP workers that lives as long as it does. Each
// model's engine thread would keep a pool of its own, and once the OpenMP
// runtime manages more threads than there are CPUs it stops spin-waiting
// between parallel regions: every region of every forward then pays futex
// wake-ups, which cost a caption's forward about a quarter of its time on a
// 2-CPU virtual machine. One forward thread keeps one pool however many models
// a process loads, and forwards of different models take turns on the cores
// instead of oversubscribing them.
void RunOnForwardThread(const std::function<void()>& fn);

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_THREADS_H_

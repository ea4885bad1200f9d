// Small helpers for the threads the core starts.
#ifndef CLIP_NATIVE_CORE_THREADS_H_
#define CLIP_NATIVE_CORE_THREADS_H_

namespace clip {

// Names the calling thread (at most 15 characters; Linux only, else nothing),
// as tools like top -H and /proc/<pid>/task show it. Threads it starts later,
// the OpenMP workers of its parallel regions included, inherit the name.
void NameThisThread(const char* name);

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_THREADS_H_

// Where the threads of a CPU forward run: the forward thread and the other
// threads of its parallel regions on different CPUs while it works.
#ifndef CLIP_NATIVE_CORE_CPU_TEAM_H_
#define CLIP_NATIVE_CORE_CPU_TEAM_H_

#include <chrono>
#include <cstdint>

#ifdef __linux__
#include <sched.h>
#endif

namespace clip {

// From construction to destruction, holds the calling thread on the CPU it
// runs on and keeps the other threads of its parallel regions (libtorch's
// OpenMP workers, which oneDNN shares) off that CPU. Linux only; does nothing
// where the team does not fit the CPUs the thread may use, where one thread
// runs the regions, inside a parallel region, within 2 ms of the last scope's
// end (the team still awake: back to back or a busy queue, where the scheduler
// places it as well and can make way for the threads preparing the next
// batch), while a starved forward's pause lasts (below), where OMP_PROC_BIND,
// OMP_PLACES or GOMP_CPU_AFFINITY leave placement to the OpenMP runtime, or
// with CLIP_NATIVE_TEAM_PLACEMENT=0.
//
// Why: a forward is a few hundred parallel regions, and each waits at its end
// for every thread of the team. Once a process has idled for some tens of
// milliseconds its OpenMP workers sleep, and the next forward's first region
// wakes them. Where the kernel sees no cache shared between the CPUs (as
// virtual machines often present them), it may wake a worker on the CPU of
// the thread that woke it while another CPU idles; the two then take turns on
// one CPU, each region waits for the one that is not running, and the pair
// moves between CPUs together until the load balancer parts them: on a 2-CPU
// virtual machine a forward after 100 ms of idling took 2-3x its time.
//
// The workers' CPUs are set once for the CPU the forward thread is on and
// again only when that changes; the forward thread's own pin ends with the
// scope, so that between forwards the scheduler places it freely. A pinned
// team cannot make way for a busy process: its member on that process's CPU
// gets a fraction of it (the forward thread runs at a lower priority), and
// every region waits for that member. So each scope checks afterwards that the
// forward thread ran at least half of its wall time; one that did not leaves
// the team to the scheduler for a second (the workers get every CPU back),
// twice as long each time in a row, up to a minute, then tries again.
class TeamPlacement {
 public:
  TeamPlacement();
  ~TeamPlacement();
  TeamPlacement(const TeamPlacement&) = delete;
  TeamPlacement& operator=(const TeamPlacement&) = delete;

  // Whether this scope placed the team (the calling thread is pinned).
  bool placed() const { return placed_; }

 private:
  bool placed_ = false;
  bool on_team_ = false;  // the scope took part in placement's decisions
#ifdef __linux__
  cpu_set_t allowed_;  // the calling thread's CPUs before the scope
  std::chrono::steady_clock::time_point start_;
  std::chrono::nanoseconds start_cpu_{0};
#endif
};

// Counts over the process's TeamPlacement scopes, for diagnostics.
struct TeamPlacementStats {
  uint64_t scopes = 0;   // scopes constructed
  uint64_t placed = 0;   // scopes that placed the team
  uint64_t starved = 0;  // placed scopes judged starved (each began a pause)
  // False where the environment leaves placement to others or moving a
  // worker failed; true does not mean every scope places (see above).
  bool enabled = false;
};
TeamPlacementStats GetTeamPlacementStats();

// The clocks the calling thread's TeamPlacement scopes read: the wall clock
// (for the gap since the last scope and the pause after a starved one) and
// the thread's own CPU time (for the share it ran). A test sets its own to
// decide what each scope's gap and share were, whatever else the machine
// runs; nullptr restores the real ones.
struct TeamClocks {
  std::chrono::steady_clock::time_point (*now)();
  std::chrono::nanoseconds (*thread_cpu)();
};
void SetTeamClocks(const TeamClocks* clocks);

}  // namespace clip

#endif  // CLIP_NATIVE_CORE_CPU_TEAM_H_

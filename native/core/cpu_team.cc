#include "cpu_team.h"

#include <ATen/Parallel.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstdlib>
#include <cstring>
#include <thread>

#ifdef __linux__
#include <strings.h>
#include <time.h>
#endif

namespace clip {
namespace {

std::atomic<uint64_t> g_scopes{0};
std::atomic<uint64_t> g_placed{0};
std::atomic<uint64_t> g_starved{0};
std::atomic<bool> g_refused{false};

#ifdef __linux__
using Clock = std::chrono::steady_clock;

// A placed forward whose thread ran less than this share of its wall time
// waited for a starved teammate: another process (or a thread of this one)
// holds a CPU the team was pinned to.
constexpr double kStarvedShare = 0.5;
// Shorter forwards say too little to judge by.
constexpr std::chrono::microseconds kShortestJudged{1000};
// How long a starved forward leaves the team to the scheduler: the first
// time, and at most while forwards keep starving.
constexpr std::chrono::seconds kFirstPause{1};
constexpr std::chrono::seconds kLongestPause{64};
// A forward that starts sooner than this after the last one ended finds its
// team awake (back to back, or a busy queue) and leaves it to the scheduler,
// which then places it as well as a pin could and can make way for the
// threads preparing the next batch.
constexpr std::chrono::milliseconds kRested{2};

bool PlacementLeftToOthers() {
  static const bool left = [] {
    const char* own = std::getenv("CLIP_NATIVE_TEAM_PLACEMENT");
    if (own != nullptr && std::strcmp(own, "0") == 0) return true;
    const char* bind = std::getenv("OMP_PROC_BIND");
    if (bind != nullptr && *bind != '\0' && strcasecmp(bind, "false") != 0) return true;
    for (const char* name : {"OMP_PLACES", "GOMP_CPU_AFFINITY"}) {
      const char* value = std::getenv(name);
      if (value != nullptr && *value != '\0') return true;
    }
    return false;
  }();
  return left;
}

// The placement of the calling thread's team. Each thread that enters
// parallel regions has an OpenMP team of its own, hence thread_local.
struct TeamState {
  // The CPU the workers are kept off (they have `allowed` but it); -1: the
  // workers have the CPUs the OpenMP runtime gave them.
  int kept_off = -1;
  int threads = 0;
  cpu_set_t allowed;
  // Moving a worker failed (a sandbox that forbids it, say): the team stays
  // where the scheduler puts it.
  bool refused = false;
  // After a starved forward no placement before `resume_at`; the pause
  // doubles while forwards keep starving.
  Clock::time_point resume_at;
  Clock::duration pause = kFirstPause;
  // When the last scope of this thread ended.
  Clock::time_point last_end;
};
thread_local TeamState t_team;

// Gives every other thread of the calling thread's team the CPUs `cpus`;
// false if one of them could not be moved, which ends placement for the team
// (and says so in the process's stats).
bool MoveWorkers(TeamState& team, const cpu_set_t& cpus, int threads) {
  const std::thread::id self = std::this_thread::get_id();
  std::atomic<int> moved{0};
  std::atomic<bool> failed{false};
  // One index per thread, so that every thread of the team runs the body once.
  at::parallel_for(0, threads, 1, [&](int64_t, int64_t) {
    if (std::this_thread::get_id() == self) return;
    if (sched_setaffinity(0, sizeof(cpus), &cpus) == 0) {
      moved.fetch_add(1, std::memory_order_relaxed);
    } else {
      failed.store(true, std::memory_order_relaxed);
    }
  });
  if (!failed.load() && moved.load() == threads - 1) return true;
  team.refused = true;
  g_refused.store(true, std::memory_order_relaxed);
  return false;
}

// Leaves the team to the scheduler: workers kept off a CPU get every CPU back.
void ReleaseWorkers(TeamState& team) {
  if (team.kept_off < 0) return;
  team.kept_off = -1;
  MoveWorkers(team, team.allowed, team.threads);
}

std::chrono::nanoseconds ThreadCpuTime() {
  timespec now{};
  clock_gettime(CLOCK_THREAD_CPUTIME_ID, &now);
  return std::chrono::seconds(now.tv_sec) + std::chrono::nanoseconds(now.tv_nsec);
}

// The clocks SetTeamClocks gave the calling thread; nullptr: the real ones.
thread_local const TeamClocks* t_clocks = nullptr;

Clock::time_point Now() { return t_clocks != nullptr ? t_clocks->now() : Clock::now(); }

std::chrono::nanoseconds CpuNow() { return t_clocks != nullptr ? t_clocks->thread_cpu() : ThreadCpuTime(); }
#endif

}  // namespace

TeamPlacement::TeamPlacement() {
  g_scopes.fetch_add(1, std::memory_order_relaxed);
#ifdef __linux__
  if (PlacementLeftToOthers() || at::in_parallel_region()) return;
  TeamState& team = t_team;
  if (team.refused) return;
  on_team_ = true;
  const Clock::time_point now = Now();
  if (now - team.last_end < kRested || now < team.resume_at) {
    ReleaseWorkers(team);
    return;
  }
  const int threads = at::get_num_threads();
  cpu_set_t allowed;
  if (sched_getaffinity(0, sizeof(allowed), &allowed) != 0) return;
  const int cpu = sched_getcpu();
  const bool fits =
      threads >= 2 && CPU_COUNT(&allowed) >= threads && cpu >= 0 && cpu < CPU_SETSIZE && CPU_ISSET(cpu, &allowed);
  if (!fits) {
    ReleaseWorkers(team);
    return;
  }
  if (team.kept_off != cpu || team.threads != threads || !CPU_EQUAL(&team.allowed, &allowed)) {
    // Before the pin below: a worker the OpenMP runtime starts for this
    // region inherits the calling thread's CPUs.
    cpu_set_t others = allowed;
    CPU_CLR(cpu, &others);
    team.kept_off = -1;
    if (!MoveWorkers(team, others, threads)) return;
    team.kept_off = cpu;
    team.threads = threads;
    team.allowed = allowed;
  }
  cpu_set_t one;
  CPU_ZERO(&one);
  CPU_SET(cpu, &one);
  if (sched_setaffinity(0, sizeof(one), &one) != 0) return;
  allowed_ = allowed;
  placed_ = true;
  start_ = Now();
  start_cpu_ = CpuNow();
  g_placed.fetch_add(1, std::memory_order_relaxed);
#endif
}

TeamPlacement::~TeamPlacement() {
#ifdef __linux__
  if (!on_team_) return;
  TeamState& team = t_team;
  team.last_end = Now();
  if (!placed_) return;
  sched_setaffinity(0, sizeof(allowed_), &allowed_);
  const auto wall = team.last_end - start_;
  const auto ran = CpuNow() - start_cpu_;
  if (wall < kShortestJudged) return;
  if (static_cast<double>(ran.count()) < kStarvedShare * static_cast<double>(wall.count())) {
    g_starved.fetch_add(1, std::memory_order_relaxed);
    team.resume_at = team.last_end + team.pause;
    team.pause = std::min<Clock::duration>(team.pause * 2, kLongestPause);
  } else {
    team.pause = kFirstPause;
  }
#endif
}

void SetTeamClocks(const TeamClocks* clocks) {
#ifdef __linux__
  t_clocks = clocks;
#else
  (void)clocks;
#endif
}

TeamPlacementStats GetTeamPlacementStats() {
  TeamPlacementStats stats;
  stats.scopes = g_scopes.load(std::memory_order_relaxed);
  stats.placed = g_placed.load(std::memory_order_relaxed);
  stats.starved = g_starved.load(std::memory_order_relaxed);
#ifdef __linux__
  stats.enabled = !PlacementLeftToOthers() && !g_refused.load(std::memory_order_relaxed);
#endif
  return stats;
}

}  // namespace clip

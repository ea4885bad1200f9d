// Standalone test for TeamPlacement (cpu_team.h), on two threads: inside a
// scope the calling thread is held on its CPU and the other thread of its
// parallel regions is kept off that CPU; after the scope the calling thread
// has its CPUs back; a scope whose thread ran less than half its wall time (a
// starved forward) leaves the scopes after it unplaced, the worker's CPUs
// given back, for 1 s, doubling to 64 s while scopes keep starving; a scope
// that starts within 2 ms of the last one's end (a team still awake) is not
// placed either; no placement inside a parallel region or on one thread. The
// gaps and CPU shares come from clocks the test moves (SetTeamClocks), so the
// checks hold on a busy machine. With the argument "off" (run
// with CLIP_NATIVE_TEAM_PLACEMENT=0) it checks that no scope places. Linux
// with at least two CPUs; elsewhere it says what it skipped. Prints one line
// per failure, then "N passed, M failed"; exits non-zero on any failure.

#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <chrono>
#include <cstring>
#include <iostream>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "../test_check.h"
#include "cpu_team.h"

namespace {

using clip::test::Check;

#ifdef __linux__
struct Member {
  bool caller;
  int cpu;
  cpu_set_t cpus;
};

// Where each thread of the calling thread's team runs, after some work each.
std::vector<Member> Team() {
  const std::thread::id self = std::this_thread::get_id();
  std::vector<Member> members;
  std::mutex mutex;
  at::parallel_for(0, at::get_num_threads(), 1, [&](int64_t, int64_t) {
    volatile double x = 1;
    for (int i = 0; i < 200000; ++i) x = x * 1.0000001 + 1e-9;
    Member member{std::this_thread::get_id() == self, sched_getcpu(), {}};
    sched_getaffinity(0, sizeof(member.cpus), &member.cpus);
    std::lock_guard<std::mutex> lock(mutex);
    members.push_back(member);
  });
  return members;
}

cpu_set_t OwnCpus() {
  cpu_set_t cpus;
  sched_getaffinity(0, sizeof(cpus), &cpus);
  return cpus;
}

// The clocks the scopes read after UseTestClocks: the test moves them, so
// that what a scope's gap and CPU share were does not depend on what else
// the machine runs.
std::chrono::steady_clock::time_point g_now;
std::chrono::nanoseconds g_cpu{0};
const clip::TeamClocks kTestClocks{[] { return g_now; }, [] { return g_cpu; }};

void UseTestClocks() {
  // Well after the real clock's reading of any scope before.
  g_now = std::chrono::steady_clock::now() + std::chrono::hours(1);
  clip::SetTeamClocks(&kTestClocks);
}

// Time passes with the calling thread idle (a rest between forwards, a
// starved forward's wait).
void Idle(std::chrono::microseconds time) { g_now += time; }
// The calling thread runs for `time` of wall time, `share` of it on a CPU.
void Run(std::chrono::microseconds time, double share = 1.0) {
  g_now += time;
  g_cpu += std::chrono::duration_cast<std::chrono::nanoseconds>(time * share);
}

using std::chrono::microseconds;
using std::chrono::milliseconds;

// The workers have every CPU of `allowed`.
bool WorkersFree(const cpu_set_t& allowed) {
  bool free = true;
  for (const Member& m : Team()) {
    if (!m.caller) free = free && CPU_EQUAL(&m.cpus, &allowed);
  }
  return free;
}

// Longer than the gap after which a scope counts its team as rested.
void Rest() { Idle(milliseconds(10)); }

// Scopes on the real clocks: the first scope of a thread finds its team
// rested, and a placed scope holds the calling thread and keeps the worker off
// its CPU, whatever the share it ran.
void TestPlaced(const cpu_set_t& allowed) {
  {
    const clip::TeamPlacement scope;
    Check(scope.placed(), "a scope on two threads with two CPUs places the team");
    const int cpu = sched_getcpu();
    cpu_set_t own = OwnCpus();
    Check(CPU_COUNT(&own) == 1 && CPU_ISSET(cpu, &own), "the calling thread is held on the CPU it runs on");
    for (int round = 0; round < 3; ++round) {
      const std::vector<Member> team = Team();
      Check(team.size() == 2, "two threads in the team");
      for (const Member& m : team) {
        if (m.caller) {
          Check(m.cpu == cpu, "the calling thread stays on its CPU in a region");
          continue;
        }
        cpu_set_t inside;
        CPU_AND(&inside, &m.cpus, &allowed);
        Check(!CPU_ISSET(cpu, &m.cpus), "the worker may not run on the calling thread's CPU");
        Check(CPU_EQUAL(&inside, &m.cpus) && CPU_COUNT(&m.cpus) == CPU_COUNT(&allowed) - 1,
              "the worker may run on every other allowed CPU");
        Check(m.cpu != cpu, "the worker runs on another CPU than the calling thread");
      }
    }
  }
  cpu_set_t own = OwnCpus();
  Check(CPU_EQUAL(&own, &allowed), "after the scope the calling thread has its CPUs back");
}

// The rest of the rules on the test's clocks.
void TestRested(const cpu_set_t& allowed) {
  Rest();
  {
    const clip::TeamPlacement scope;
    Check(scope.placed(), "a scope after a rest places the team");
    Run(milliseconds(5));
  }
  {
    const clip::TeamPlacement scope;
    Check(!scope.placed(), "a scope right after the last one (its team awake) does not place the team");
    Check(WorkersFree(allowed), "and the worker has every CPU back");
    Run(milliseconds(5));
  }
  Idle(microseconds(1999));
  {
    const clip::TeamPlacement scope;
    Check(!scope.placed(), "nor one that starts 1.999 ms after the last one ended");
  }
  Idle(milliseconds(2));
  {
    const clip::TeamPlacement scope;
    Check(scope.placed(), "one that starts 2 ms after the last one ended places the team again");
    Run(milliseconds(5));
  }
}

// A placed scope that ran `share` of `time` on a CPU, after a rest.
bool PlacedScope(std::chrono::microseconds time, double share) {
  Rest();
  const clip::TeamPlacement scope;
  Run(time, share);
  return scope.placed();
}

// A pause that ends `left` from now: a scope 1 ms before its end does not
// place the team, one 1 ms after it does (and 2 ms after the scope before:
// every scope, placed or not, ends a gap), and that one starves again.
void StarvedPauseEnds(milliseconds left, const std::string& pause) {
  Idle(left - milliseconds(1));
  {
    const clip::TeamPlacement scope;
    Check(!scope.placed(), pause + ": a scope 1 ms before its end does not place the team");
  }
  Idle(milliseconds(2));
  const clip::TeamPlacement scope;
  Check(scope.placed(), pause + ": a scope 1 ms after its end places the team");
  Run(milliseconds(20), 0.1);
}

bool NextPlaced() {
  Rest();
  const clip::TeamPlacement scope;
  Run(milliseconds(5));
  return scope.placed();
}

void TestStarved(const cpu_set_t& allowed) {
  Check(PlacedScope(milliseconds(20), 0.5), "placed: a scope that ran half its wall time");
  Check(NextPlaced(), "running half the wall time is not starved");
  Check(PlacedScope(microseconds(999), 0.0), "placed: a scope shorter than 1 ms that never ran");
  Check(NextPlaced(), "a scope shorter than 1 ms is not judged");
  const uint64_t starved = clip::GetTeamPlacementStats().starved;
  Check(PlacedScope(milliseconds(20), 0.49), "placed: the first starved scope");
  Check(clip::GetTeamPlacementStats().starved == starved + 1, "it counts as starved");
  Rest();
  {
    const clip::TeamPlacement scope;
    Check(!scope.placed(), "a scope soon after a starved one does not place the team");
    Check(WorkersFree(allowed), "and the worker has every CPU back");
    cpu_set_t own = OwnCpus();
    Check(CPU_EQUAL(&own, &allowed), "and the calling thread is not held");
    Run(milliseconds(5));
  }
  // The pause counts from the starved scope's end; 10 + 5 ms have passed.
  StarvedPauseEnds(milliseconds(1000 - 15), "the pause after a starved scope, 1 s");
  // Each starved scope in a row doubles the pause: 2, 4, 8, 16, 32, 64 s,
  // then stays at 64 s.
  for (int seconds : {2, 4, 8, 16, 32, 64, 64}) {
    StarvedPauseEnds(milliseconds(seconds * 1000), "a pause of " + std::to_string(seconds) + " s");
  }
  Idle(milliseconds(64000));
  Check(PlacedScope(milliseconds(5), 1.0), "placed after the last pause");
  Check(NextPlaced(), "a forward that was not starved leaves the next placed");
  Check(PlacedScope(milliseconds(20), 0.0), "placed: a starved scope after one that was not");
  Idle(milliseconds(1000));
  Check(NextPlaced(), "a scope that was not starved sets the pause back to a second");
}

void TestNotPlaced() {
  at::parallel_for(0, 2, 1, [&](int64_t, int64_t) {
    const clip::TeamPlacement scope;
    Check(!scope.placed(), "no placement inside a parallel region");
  });
  at::set_num_threads(1);
  const clip::TeamPlacement scope;
  Check(!scope.placed(), "no placement on one thread");
}
#endif

}  // namespace

int main(int argc, char** argv) {
  try {
#ifdef __linux__
    const bool off = argc > 1 && std::strcmp(argv[1], "off") == 0;
    const cpu_set_t allowed = OwnCpus();
    if (CPU_COUNT(&allowed) < 2) {
      std::cout << "skipped: placement needs two CPUs, this process may use one" << std::endl;
      return clip::test::Summary();
    }
    at::set_num_threads(2);
    if (off) {
      const clip::TeamPlacement scope;
      Check(!scope.placed(), "CLIP_NATIVE_TEAM_PLACEMENT=0: no placement");
      Check(WorkersFree(allowed), "CLIP_NATIVE_TEAM_PLACEMENT=0: the worker has every CPU");
      return clip::test::Summary();
    }
    TestPlaced(allowed);
    UseTestClocks();
    TestRested(allowed);
    TestStarved(allowed);
    clip::SetTeamClocks(nullptr);
    TestNotPlaced();
#else
    (void)argc;
    (void)argv;
    std::cout << "skipped: placement is Linux only" << std::endl;
#endif
  } catch (const std::exception& e) {
    Check(false, std::string("exception: ") + e.what());
  }
  return clip::test::Summary();
}

// Standalone test for TeamPlacement (cpu_team.h), on two threads: inside a
// scope the calling thread is held on its CPU and the other thread of its
// parallel regions is kept off that CPU; after the scope the calling thread
// has its CPUs back; a scope whose thread ran less than half its wall time (a
// starved forward) leaves the scopes after it unplaced, the worker's CPUs
// given back, for 1 s, then 2 s after a second one in a row; a scope that
// starts within 2 ms of the last one's end (a team still awake) is not placed
// either; no placement inside a parallel region or on one thread. With the argument "off" (run
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

// The calling thread busy for `ms` milliseconds (a forward that is not starved).
void Work(int ms) {
  const auto end = std::chrono::steady_clock::now() + std::chrono::milliseconds(ms);
  volatile double x = 1;
  while (std::chrono::steady_clock::now() < end) x = x * 1.0000001 + 1e-9;
}

// The workers have every CPU of `allowed`.
bool WorkersFree(const cpu_set_t& allowed) {
  bool free = true;
  for (const Member& m : Team()) {
    if (!m.caller) free = free && CPU_EQUAL(&m.cpus, &allowed);
  }
  return free;
}

// Longer than the gap after which a scope counts its team as rested.
void Rest() { std::this_thread::sleep_for(std::chrono::milliseconds(10)); }

void TestPlaced(const cpu_set_t& allowed) {
  Rest();
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
    Work(5);
  }
  cpu_set_t own = OwnCpus();
  Check(CPU_EQUAL(&own, &allowed), "after the scope the calling thread has its CPUs back");
  {
    const clip::TeamPlacement scope;
    Check(!scope.placed(), "a scope right after the last one (its team awake) does not place the team");
    Check(WorkersFree(allowed), "and the worker has every CPU back");
  }
  Rest();
  {
    const clip::TeamPlacement scope;
    Check(scope.placed(), "the next scope after a rest places the team again");
    Work(5);
  }
}

void TestStarved(const cpu_set_t& allowed) {
  Rest();
  {
    const clip::TeamPlacement scope;
    Check(scope.placed(), "placed before the starved scope");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  Rest();
  {
    const clip::TeamPlacement scope;
    Check(!scope.placed(), "a scope soon after a starved one does not place the team");
    Check(WorkersFree(allowed), "and the worker has every CPU back");
    cpu_set_t own = OwnCpus();
    Check(CPU_EQUAL(&own, &allowed), "and the calling thread is not held");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  {
    const clip::TeamPlacement scope;
    Check(scope.placed(), "a second after a starved scope the team is placed again");
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  {
    const clip::TeamPlacement scope;
    Check(!scope.placed(), "after a second starved scope in a row the pause is longer than a second");
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(1100));
  {
    const clip::TeamPlacement scope;
    Check(scope.placed(), "and over after two seconds");
    Work(5);
  }
  Rest();
  {
    const clip::TeamPlacement scope;
    Check(scope.placed(), "a forward that was not starved leaves the next placed");
    Work(5);
  }
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
    TestStarved(allowed);
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

// The pass/fail count the core's test programs share: Check() counts one
// check and prints a line for a failure; Summary() prints "N passed, M
// failed" (the last line, which test/build reads) and gives the exit status.
#ifndef CLIP_NATIVE_TEST_TEST_CHECK_H_
#define CLIP_NATIVE_TEST_TEST_CHECK_H_

#include <iostream>
#include <string>

namespace clip {
namespace test {

struct Counts {
  int passed = 0;
  int failed = 0;
};

inline Counts& TheCounts() {
  static Counts counts;
  return counts;
}

inline void Check(bool ok, const std::string& what) {
  if (ok) {
    ++TheCounts().passed;
  } else {
    ++TheCounts().failed;
    std::cout << "FAIL: " << what << std::endl;
  }
}

inline int Summary() {
  std::cout << TheCounts().passed << " passed, " << TheCounts().failed << " failed" << std::endl;
  return TheCounts().failed == 0 ? 0 : 1;
}

}  // namespace test
}  // namespace clip

#endif  // CLIP_NATIVE_TEST_TEST_CHECK_H_

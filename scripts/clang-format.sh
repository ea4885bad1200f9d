#!/usr/bin/env bash
# clang-format over the C++ of native/ and bench/*.cc, with the repository's
# .clang-format (Google style, 120 columns).
#
#   scripts/clang-format.sh check   exit non-zero and list the differences where a file is not formatted
#   scripts/clang-format.sh fix     format the files in place
#
# The binary: $CLANG_FORMAT, else clang-format, else the newest versioned
# clang-format-N on PATH (Debian 12's package clang-format installs
# clang-format-14 and the clang-format link). Versions format a few
# constructs differently; the tree is formatted with clang-format 14.
set -euo pipefail
cd "$(dirname "$0")/.."

find_clang_format() {
  if [ -n "${CLANG_FORMAT:-}" ]; then
    command -v "$CLANG_FORMAT" && return
    echo "clang-format.sh: CLANG_FORMAT=$CLANG_FORMAT is not an executable" >&2
    return 1
  fi
  command -v clang-format && return
  local version
  for version in $(seq 30 -1 10); do
    command -v "clang-format-$version" && return
  done
  echo "clang-format.sh: no clang-format on PATH (Debian: apt-get install clang-format; or set CLANG_FORMAT)" >&2
  return 1
}

binary=$(find_clang_format)
mapfile -t files < <(find native -type f \( -name '*.cc' -o -name '*.h' \) | sort; ls bench/*.cc 2>/dev/null)
case "${1:-check}" in
  check)
    if ! "$binary" --dry-run -Werror "${files[@]}"; then
      echo "clang-format.sh: ${binary} ($("$binary" --version)) wants the changes above: run npm run format:cpp" >&2
      exit 1
    fi
    ;;
  fix)
    "$binary" -i "${files[@]}"
    ;;
  *)
    echo "usage: scripts/clang-format.sh check | fix" >&2
    exit 2
    ;;
esac

#!/usr/bin/env bash
# Sanitizer and fuzzing builds of the torch-free core (native/fuzz), with
# clang, in build-fuzz/ (never build/, which is the addon's).
#
#   scripts/sanitize.sh build               configure + build the fuzzers and the ASan/UBSan test programs
#   scripts/sanitize.sh test                build, then run image_test, tokenizer_test and inflate_test under ASan/UBSan
#   scripts/sanitize.sh fuzz [SECONDS] [JOBS] [TARGET...]
#                                           build, then run each fuzzer (default all three: image_fuzzer,
#                                           tokenizer_fuzzer, inflate_fuzzer) SECONDS (default 60) from the seed corpora;
#                                           JOBS > 1 runs that many fuzzing processes per target.
#                                           Exits non-zero on the first crash, leak, timeout or
#                                           contract violation; the input is in $CLIP_FUZZ_WORK/TARGET-findings/
#   scripts/sanitize.sh seeds DIR           write the seed corpora into DIR/{image_fuzzer,tokenizer_fuzzer,inflate_fuzzer}
#
# Needs clang with its sanitizer runtimes (scripts/setup.sh installs clang and
# libclang-rt-14-dev) and the fixtures (node scripts/fixtures.js).
# Environment: CLIP_FUZZ_BUILD_DIR (default build-fuzz), CLIP_FUZZ_WORK (where
# the growing corpora and crash files go; default build-fuzz/work); relative
# paths are taken from the repository root.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
build=$(realpath -m "${CLIP_FUZZ_BUILD_DIR:-$root/build-fuzz}")
work=$(realpath -m "${CLIP_FUZZ_WORK:-$build/work}")

# The sanitizers abort on the first finding with a stack; leaks count.
export ASAN_OPTIONS=${ASAN_OPTIONS:-abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1}
export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}

need_fixtures() {
  if [ ! -f test/fixtures/vocab/vocab.json ] || [ ! -d test/fixtures/images ]; then
    echo "sanitize.sh: test/fixtures is missing: run node scripts/fixtures.js first" >&2
    exit 2
  fi
}

do_build() {
  command -v clang++ >/dev/null || { echo "sanitize.sh: clang++ not found (scripts/setup.sh installs it)" >&2; exit 2; }
  local generator=()
  command -v ninja >/dev/null && generator=(-G Ninja)
  if [ ! -f "$build/CMakeCache.txt" ]; then
    CC=clang CXX=clang++ cmake "${generator[@]}" -S native/fuzz -B "$build" -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
  fi
  # -j2: the machines this runs on are small and shared.
  cmake --build "$build" -j 2
}

do_seeds() {
  local out=$1
  need_fixtures
  mkdir -p "$out/image_fuzzer" "$out/tokenizer_fuzzer" "$out/inflate_fuzzer"
  # The fixture images up to 64 KiB (bigger ones make each run slow), and
  # tiny images of every container variant from Pillow when the venv has it.
  for f in test/fixtures/images/*.{jpg,png,webp,gif,bmp}; do
    if [ -f "$f" ] && [ "$(stat -c %s "$f")" -le 65536 ]; then cp "$f" "$out/image_fuzzer/"; fi
  done
  local python=${CLIP_PYTHON:-.venv/bin/python}
  if ! "$python" native/fuzz/make_seeds.py "$out/image_fuzzer" >/dev/null 2>&1; then
    echo "sanitize.sh: no Pillow in $python: the image seeds are the fixture images only" >&2
  fi
  node - "$out/tokenizer_fuzzer" <<'JS'
const fs = require('node:fs');
const path = require('node:path');
const out = process.argv[2];
const texts = [
  'a photo of a cat', '', ' ', 'A Photo Of A CAT!!', "don't they're we've I'm you'll he'd",
  '<|startoftext|>x<|endoftext|>y', '<|ENDOFTEXT|>', 'İstanbul ΣΊΣΥΦΟΣ straße', 'e\u0301\u0301\u0301 n\u0303',
  '日本語のテキスト 中文 한국어', '🐱🐶👍🏽 family 👨‍👩‍👧', 'x'.repeat(300), 'ab1 2cd3 4.5e6', '\u00a0\t\r\n\u3000 tabs',
  Buffer.from([0xff, 0xfe, 0xc0, 0xaf, 0xed, 0xa0, 0x80, 0xf4, 0x90, 0x80, 0x80, 0x61]).toString('latin1'),
];
const tokens = path.join('test', 'fixtures', 'tokens', 'hf77.jsonl');
if (fs.existsSync(tokens)) {
  for (const line of fs.readFileSync(tokens, 'utf8').split('\n')) if (line.trim()) texts.push(JSON.parse(line).text);
}
texts.forEach((text, i) => {
  // latin1 keeps the deliberately invalid UTF-8 bytes above as they are.
  const bytes = /[^\x00-\xff]/.test(text) ? Buffer.from(text, 'utf8') : Buffer.from(text, 'latin1');
  fs.writeFileSync(path.join(out, `seed-${String(i).padStart(3, '0')}`), bytes);
});
JS
  # zlib streams of a few kinds of data at every strategy, a leading even byte
  # (the stream as it is; see inflate_fuzzer.cc), and some raw deflate bodies.
  "$python" - "$out/inflate_fuzzer" <<'PY'
import os, random, sys, zlib
out = sys.argv[1]
rng = random.Random(0)
kinds = [
    bytes(rng.randrange(256) for _ in range(600)),
    bytes((128 + (i % 37) - 18) % 256 if i % 97 else 0 for i in range(3000)),
    b"a photo of a cat on a mat " * 40,
    bytes([7] * 500 + [1, 2, 3] * 200),
    b"",
]
strategies = [zlib.Z_DEFAULT_STRATEGY, zlib.Z_FILTERED, zlib.Z_HUFFMAN_ONLY, zlib.Z_RLE, zlib.Z_FIXED]
n = 0
for data in kinds:
    for level in (0, 1, 9):
        for strategy in strategies:
            c = zlib.compressobj(level, zlib.DEFLATED, 15 if n % 2 else 9, 8, strategy)
            stream = c.compress(data[: len(data) // 2]) + c.flush(zlib.Z_FULL_FLUSH) + c.compress(data[len(data) // 2 :]) + c.flush()
            with open(os.path.join(out, f"seed-{n:03d}"), "wb") as f:
                f.write(b"\x00" + stream)
            with open(os.path.join(out, f"raw-{n:03d}"), "wb") as f:
                f.write(b"\x01" + stream[2:-4])
            n += 1
PY
}

# run_fuzzer NAME SECONDS JOBS EXTRA_ARGS...: the corpus grows in $work/NAME;
# crash, leak and timeout inputs land in $work/NAME-findings.
run_fuzzer() {
  local name=$1 seconds=$2 jobs=$3
  shift 3
  mkdir -p "$work/$name" "$work/$name-findings"
  local args=(-max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 -print_final_stats=1
              -artifact_prefix="$work/$name-findings/" "$@")
  if [ "$jobs" -gt 1 ]; then
    args+=(-jobs="$jobs" -workers="$jobs")
  fi
  (cd "$work" && "$build/$name" "${args[@]}" "$work/$name" "$work/seeds/$name")
}

cmd=${1:-test}
case "$cmd" in
  build)
    do_build
    ;;
  test)
    need_fixtures
    do_build
    "$build/tokenizer_test" test/fixtures/vocab/vocab.json test/fixtures/vocab/merges.txt ${2:+"$2"}
    "$build/image_test" ${2:+"$2"}
    "$build/inflate_test"
    ;;
  seeds)
    do_seeds "${2:?usage: sanitize.sh seeds DIR}"
    ;;
  fuzz)
    seconds=${2:-60}
    jobs=${3:-1}
    need_fixtures
    do_build
    do_seeds "$work/seeds"
    shift $(( $# < 3 ? $# : 3 ))
    targets=("$@")
    [ ${#targets[@]} -eq 0 ] && targets=(image_fuzzer tokenizer_fuzzer inflate_fuzzer)
    for target in "${targets[@]}"; do
      case "$target" in
        image_fuzzer) run_fuzzer image_fuzzer "$seconds" "$jobs" -dict="$root/native/fuzz/image.dict" -max_len=65536 ;;
        tokenizer_fuzzer) run_fuzzer tokenizer_fuzzer "$seconds" "$jobs" -dict="$root/native/fuzz/tokenizer.dict" -max_len=8192 ;;
        inflate_fuzzer) run_fuzzer inflate_fuzzer "$seconds" "$jobs" -max_len=16384 ;;
        *) echo "sanitize.sh: no fuzz target $target" >&2; exit 2 ;;
      esac
    done
    ;;
  *)
    echo "usage: scripts/sanitize.sh build | test [REFERENCE_DIR] | fuzz [SECONDS] [JOBS] [TARGET...] | seeds DIR" >&2
    exit 2
    ;;
esac

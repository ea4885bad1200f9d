#!/usr/bin/env bash
# Builds, tests and benchmarks clip-native's CUDA path on a GPU machine in one
# go, from the repository root, with what scripts/device-pack.sh put in
# .device/ (Node.js, the codec/ICU packages, the npm dependencies):
#
#   1. unpacks the pack into .cache/device-run/ (never over /)
#   2. builds the addon with CUDA against python3's torch (CLIP_LIBTORCH=venv, CLIP_PYTHON)
#      and dist/ with tsc; exports the tiny and the random full-size ViT-B/32 models
#   3. test/device/device.test.ts with CLIP_TEST_DEVICE=cuda
#   4. bench/run.js on CUDA: model only and end to end from JPEG bytes (16 prep
#      threads) at batch 1, 32, 128, 512 for float32/float16/bfloat16, texts
#      likewise, PyTorch eager float16 on the same weights as the peer
#   5. $OUT/device-results.json, $OUT/device-log.txt and a one-screen summary
#
# Every stage is time-boxed and the whole run ends within 8 minutes; what a
# stage finished is kept when a later one fails or runs out of time.
#
#   scripts/device-check.sh                the GPU run (device call: see scripts/device-pack.sh)
#   scripts/device-check.sh --cpu          the same flow on the CPU with this machine's Node,
#                                          node_modules and built addon (built if missing)
#   scripts/device-check.sh --cpu --short  the same on the tiny model with a minimal bench (CI)
set -uo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mode=cuda
short=0
for arg in "$@"; do
  case $arg in
    --cpu) mode=cpu ;;
    --short) short=1 ;;
    *) echo "usage: scripts/device-check.sh [--cpu] [--short]" >&2; exit 2 ;;
  esac
done

started=$(date +%s)
total=${CLIP_DEVICE_CHECK_SECONDS:-470} # 7 min 50 s: inside the 8 minutes with the summary
work=$root/.cache/device-run
out=${OUT:-$work/out}
mkdir -p "$out"
log=$out/device-log.txt
stages=$out/stages.tsv
: >"$log"
: >"$stages"

mkdir -p "$work"

say() { echo "[device-check $(date -u +%H:%M:%S)] $*" | tee -a "$log"; }
remaining() { echo $((started + total - $(date +%s))); }

# stage NAME SECONDS COMMAND...: runs COMMAND for at most SECONDS (less when the
# run's time is nearly spent), its output into the log, and records the outcome.
stage() {
  local name=$1 budget=$2
  shift 2
  local left
  left=$(($(remaining) - 10))
  ((budget > left)) && budget=$left
  if ((budget < 5)); then
    say "$name: skipped, out of time"
    printf '%s\tskipped\t0\n' "$name" >>"$stages"
    return 124
  fi
  say "$name (at most ${budget} s)"
  local t0 rc
  t0=$(date +%s)
  # Through bash, so that a stage may be one of the functions below (exported with the variables they read).
  timeout --kill-after=5 "$budget" bash -c '"$@"' stage "$@" >>"$log" 2>&1
  rc=$?
  local took=$(($(date +%s) - t0))
  if ((rc == 0)); then say "$name: ok in ${took} s"; else say "$name: FAILED (exit $rc) after ${took} s"; fi
  printf '%s\t%s\t%s\n' "$name" "$rc" "$took" >>"$stages"
  return $rc
}

# --- 1. the pack --------------------------------------------------------------------------------
unxz_to() { # FILE.xz DEST: xz where it is installed, else Python's lzma
  if command -v xz >/dev/null; then xz -dc "$1" >"$2"; else python3 -c 'import lzma,shutil,sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$1" "$2"; fi
}
untar_xz() { # FILE.tar.xz DIR
  mkdir -p "$2"
  if command -v xz >/dev/null; then tar -C "$2" -xJf "$1"; else python3 -c 'import sys,tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"; fi
}
unpack() {
  local pack=$root/.device
  for f in node.xz prefix.tar.xz node_modules.tar.xz fixtures.tar.xz; do
    [[ -f $pack/$f ]] || { echo "missing $pack/$f: run scripts/device-pack.sh first and carry .device"; return 1; }
  done
  mkdir -p "$work/bin"
  unxz_to "$pack/node.xz" "$work/bin/node" && chmod +x "$work/bin/node"
  rm -rf "$work/prefix" && untar_xz "$pack/prefix.tar.xz" "$work/prefix"
  # A node_modules left as a link (a worktree's) points nowhere here.
  [[ -L node_modules ]] && rm node_modules
  [[ -d node_modules/tap ]] || untar_xz "$pack/node_modules.tar.xz" node_modules
  untar_xz "$pack/fixtures.tar.xz" "$root"
  local lib=$work/prefix/usr/lib/x86_64-linux-gnu
  # The machine's own zlib runtime, where it has one: programs of the machine load it too.
  if [[ -e /lib/x86_64-linux-gnu/libz.so.1 ]]; then
    rm -f "$lib"/libz.so.1*
    ln -sf /lib/x86_64-linux-gnu/libz.so.1 "$lib/libz.so"
  fi
  "$work/bin/node" --version
}

export -f unxz_to untar_xz unpack
export root work mode short

if [[ $mode == cuda ]]; then
  say "GPU run: $(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>&1 | head -1)"
  stage unpack 60 unpack || { say "no pack, nothing to run"; }
  export PATH=$work/bin:$PATH
  prefix=$work/prefix/usr
  lib=$prefix/lib/x86_64-linux-gnu
  export CMAKE_PREFIX_PATH=$prefix${CMAKE_PREFIX_PATH:+:$CMAKE_PREFIX_PATH}
  export PKG_CONFIG_LIBDIR=$lib/pkgconfig:$prefix/share/pkgconfig
  command -v pkg-config >/dev/null || export PKG_CONFIG=$prefix/bin/pkgconf
  # jconfig.h sits in the multiarch include folder, which only /usr's is searched by default.
  export CPATH=$prefix/include/x86_64-linux-gnu${CPATH:+:$CPATH}
  export LIBRARY_PATH=$lib${LIBRARY_PATH:+:$LIBRARY_PATH}
  export LD_LIBRARY_PATH=$lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  if ! command -v nvcc >/dev/null && [[ -x /usr/local/cuda/bin/nvcc ]]; then export PATH=$PATH:/usr/local/cuda/bin; fi
  export CLIP_LIBTORCH=venv CLIP_PYTHON=${CLIP_PYTHON:-$(command -v python3)}
  # The addon has no kernels of its own; this keeps TorchConfig from probing the GPU for its arch.
  export TORCH_CUDA_ARCH_LIST=${TORCH_CUDA_ARCH_LIST:-9.0}
  python=$CLIP_PYTHON
  "$python" - >>"$log" 2>&1 <<'EOF'
import torch
print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())
try:
    import onnxruntime
    print("onnxruntime", onnxruntime.__version__, onnxruntime.get_available_providers())
except ImportError as error:
    print("onnxruntime:", error)
EOF
else
  python=${CLIP_PYTHON:-$root/.venv/bin/python}
  export CLIP_PYTHON=$python
fi
node=$(command -v node || true)
[[ -n $node ]] || say "no node on the PATH"

# --- 2. build -----------------------------------------------------------------------------------
build_addon() {
  node node_modules/cmake-js/bin/cmake-js compile --parallel "$(nproc)" --CDCLIP_BUILD_TESTS=OFF &&
    node -e "const b = require('./build/Release/clip_native.node'); console.log('builtWithCuda', b.builtWithCuda, 'libtorch', b.torchVersion); process.exit(b.builtWithCuda || process.argv[1] === 'cpu' ? 0 : 1)" "$mode"
}
export -f build_addon
if [[ $mode == cpu && -f build/Release/clip_native.node ]]; then
  say "build: reusing build/Release/clip_native.node"
else
  stage build 300 build_addon
fi
if [[ -f dist/index.js ]]; then
  say "dist/: reusing the compiled TypeScript (the pack's on a GPU machine)"
else
  stage tsc 90 node node_modules/typescript/bin/tsc -p tsconfig.json
fi

models() {
  local vocab=test/fixtures/vocab
  if [[ ! -f test/fixtures/tiny/clip.json ]]; then
    "$python" tools/export.py --random --config tiny --seed 1 --vocab-dir "$vocab" --out test/fixtures/tiny --force --quiet || return
  fi
  if ((short == 0)) && [[ ! -f bench/models/vit-b-32/clip.json ]]; then
    "$python" tools/export.py --random --config vit-b-32 --seed 0 --vocab-dir "$vocab" --out bench/models/vit-b-32 --force --quiet
  fi
}
export -f models
export python
[[ -f test/fixtures/vocab/vocab.json ]] || stage fixtures 120 node scripts/fixtures.js
stage models 120 models

# --- 3. tests -----------------------------------------------------------------------------------
tap_out=$out/tests.tap
run_tests() {
  CLIP_TEST_DEVICE=$([[ $mode == cuda ]] && echo cuda || echo cpu) \
    node node_modules/tap/dist/esm/run.mjs --disable-coverage --allow-incomplete-coverage --reporter=tap \
    --timeout=180 test/device/device.test.ts >"$tap_out" 2>&1
  local rc=$?
  cat "$tap_out"
  return $rc
}
export -f run_tests
export tap_out
stage tests 150 run_tests

# --- 4. bench -----------------------------------------------------------------------------------
bench_out=$work/bench
mkdir -p "$bench_out"
rm -rf "$bench_out/results"
run_bench() {
  export CLIP_BENCH_OUT=$bench_out CLIP_BENCH_SERVE_SECONDS=0 CLIP_BENCH_STOCK=0 CLIP_BENCH_ROUNDS=1
  if [[ $mode == cuda ]]; then
    CLIP_BENCH_DEVICE=cuda CLIP_BENCH_DTYPES=float32,float16,bfloat16 CLIP_BENCH_PYTORCH_DTYPES=float16 \
      CLIP_BENCH_PYTORCH_MODES=model CLIP_BENCH_BATCHES=1,32,128,512 CLIP_BENCH_PREP_THREADS=16 \
      CLIP_BENCH_IMAGES=jpg CLIP_BENCH_WARMUP=all CLIP_BENCH_MIN_SECONDS=${CLIP_BENCH_MIN_SECONDS:-0.3} \
      node bench/run.js
  elif ((short)); then
    CLIP_BENCH_MODEL=$root/test/fixtures/tiny CLIP_BENCH_DTYPES=float32 CLIP_BENCH_PYTORCH_DTYPES=float32 \
      CLIP_BENCH_PYTORCH_MODES=model CLIP_BENCH_ONLY='clip-native fp32,PyTorch fp32' CLIP_BENCH_BATCHES=1,4 \
      CLIP_BENCH_IMAGES=jpg CLIP_BENCH_CASES='^(image|text-caption)/' CLIP_BENCH_MIN_SECONDS=0.05 node bench/run.js
  else
    CLIP_BENCH_DTYPES=float32,bfloat16 CLIP_BENCH_PYTORCH_DTYPES=float32 CLIP_BENCH_PYTORCH_MODES=model \
      CLIP_BENCH_ONLY='clip-native fp32,clip-native bf16,PyTorch fp32' CLIP_BENCH_BATCHES=1,32 \
      CLIP_BENCH_IMAGES=jpg CLIP_BENCH_MIN_SECONDS=0.3 node bench/run.js
  fi
}
export -f run_bench
export bench_out
stage bench 300 run_bench

# --- 5. results ---------------------------------------------------------------------------------
if [[ -z $(command -v node) ]]; then
  say "no Node.js to summarize with; stages:" && cat "$stages" | tee -a "$log"
  exit 1
fi
# bench/run.js writes one report per CPU model under results/ (not the --quick one).
bench_json=$(ls "$bench_out"/results/*.json 2>/dev/null | grep -v -- '-quick\.json$' | head -n 1)
node scripts/device-summary.js --mode "$mode" --stages "$stages" --tap "$tap_out" \
  --bench "${bench_json:-$bench_out/results/none.json}" --out "$out/device-results.json" --seconds $(($(date +%s) - started)) |
  tee -a "$log"
exit "${PIPESTATUS[0]}"

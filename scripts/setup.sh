#!/usr/bin/env bash
# One-command set-up on Debian 12 + Node 20: system packages, the Python
# virtualenv with torch (libtorch for the build, the exporter, reference
# outputs), the npm dependencies and the native build.
#
#   CLIP_LIBTORCH=system   build against Debian's libtorch-dev 1.13 instead of the venv's torch
#   CLIP_TORCH_SPEC=...    the torch requirement for the venv (default torch==2.13.0)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { printf '\n== %s\n' "$*"; }

# clang + libclang-rt-14-dev (its ASan/UBSan/libFuzzer runtimes, not a dependency
# of clang on Debian 12): the sanitizer and fuzzing builds of scripts/sanitize.sh.
# clang-format: npm run lint:cpp (scripts/clang-format.sh).
packages=(build-essential cmake ninja-build pkg-config zlib1g-dev
          libjpeg62-turbo-dev libpng-dev libwebp-dev libgif-dev libicu-dev nlohmann-json3-dev
          python3-venv clang libclang-rt-14-dev clang-format)
if [ "${CLIP_LIBTORCH:-venv}" = system ]; then
  # Without an optimized BLAS, Debian's libtorch falls back to reference BLAS (about 40x slower).
  packages+=(libtorch-dev libopenblas0-openmp)
fi
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  log "apt: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" -ne 0 ] && SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${missing[@]}"
fi

PYTHON_BIN=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  log "python venv (.venv)"
  "$PYTHON_BIN" -m venv .venv
fi
log "python packages"
PIP_RETRIES=0 .venv/bin/pip install --retries 0 -q -r tools/requirements.txt "${CLIP_TORCH_SPEC:-torch==2.13.0}"

log "npm ci (builds the addon when no fitting prebuild exists)"
# onnxruntime-node (benchmarks only) would download CUDA add-ons at install: skip them.
ONNXRUNTIME_NODE_INSTALL=skip npm ci --no-audit --no-fund
log "build"
npm run build
log "done: run npm test"

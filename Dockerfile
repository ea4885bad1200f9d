# syntax=docker/dockerfile:1
# clip-native on the CPU: Debian bookworm, Node 20, the CPU build of the torch
# wheel in /opt/venv, the addon built from source against it. The addon's
# RUNPATH points at /opt/venv's torch, which the runtime stage has at the same
# path, so no LD_LIBRARY_PATH is set.
#
#   docker build -t clip-native:cpu .
#   docker run --rm -p 5001:5001 -v "$PWD/models/clip-vit-base-patch32:/models/clip:ro" clip-native:cpu
#
# The default command serves /models/clip; any clip-native command can replace
# it: docker run … clip-native:cpu batch --model /models/clip --input /data/in --output /data/out

FROM node:20-bookworm-slim AS build
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      build-essential cmake ninja-build pkg-config python3 python3-venv \
      zlib1g-dev libjpeg62-turbo-dev libpng-dev libwebp-dev libgif-dev libicu-dev nlohmann-json3-dev \
 && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/venv \
 && /opt/venv/bin/pip install --no-cache-dir --index-url "${TORCH_INDEX_URL}" "torch==${TORCH_VERSION}"
ENV CLIP_PYTHON=/opt/venv/bin/python
WORKDIR /opt/clip-native
COPY package.json package-lock.json ./
RUN npm ci --ignore-scripts --no-audit --no-fund
COPY tsconfig.json CMakeLists.txt ./
COPY cmake ./cmake
COPY lib ./lib
COPY native ./native
COPY bin ./bin
COPY esm ./esm
COPY tools ./tools
COPY scripts ./scripts
RUN npx cmake-js compile --parallel "$(nproc)" \
 && npx tsc -p tsconfig.json \
 && npm prune --omit=dev --no-audit --no-fund \
 && rm -rf build/CMakeFiles build/*.a build/*_test build/*_bench

FROM node:20-bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
 && apt-get install -y --no-install-recommends \
      tini python3 zlib1g libjpeg62-turbo libpng16-16 libwebp7 libwebpdemux2 libgif7 libicu72 \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --user-group --home-dir /nonexistent --no-create-home clip
COPY --from=build /opt/venv /opt/venv
COPY --from=build /opt/clip-native /opt/clip-native
RUN ln -s /opt/clip-native/bin/clip-native.js /usr/local/bin/clip-native
ENV NODE_ENV=production \
    CLIP_PYTHON=/opt/venv/bin/python
USER 10001:10001
EXPOSE 5001
HEALTHCHECK --interval=30s --timeout=5s --start-period=120s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:5001/').then(async (r) => process.exit(r.ok && (await r.text()) === 'Healthy' ? 0 : 1), () => process.exit(1))"]
ENTRYPOINT ["/usr/bin/tini", "--", "clip-native"]
CMD ["serve", "--host", "0.0.0.0", "--model", "/models/clip"]

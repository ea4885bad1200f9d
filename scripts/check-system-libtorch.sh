#!/usr/bin/env bash
# Builds the addon against Debian's libtorch-dev (1.13) into build-system/ and
# checks that it embeds the tiny model as the default (venv) build does. Two
# libtorch versions cannot share a process, so each runs in its own.
# Needs: CLIP_LIBTORCH=system npm run setup (installs libtorch-dev and
# libopenblas0-openmp), and the test fixtures (node scripts/fixtures.js).
set -euo pipefail
cd "$(dirname "$0")/.."
CLIP_LIBTORCH=system npx cmake-js compile -O build-system -p 2 --CDCLIP_BUILD_TESTS=OFF
root=$(mktemp -d)
mkdir -p "$root/build/Release"
cp build-system/Release/clip_native.node "$root/build/Release/"
embed='
const { loadBinding } = require("./dist/native/binding");
const { sampleImages } = require("./test/helpers/images.js");
const submit = (m, kind, inputs) => new Promise((resolve) => m.submit(kind, inputs, {}, resolve));
(async () => {
  const { binding } = loadBinding(process.argv[1] ? { root: process.argv[1] } : {});
  const model = await binding.load("test/fixtures/tiny", { device: "cpu", dtype: "float32" });
  const out = [...(await submit(model, 0, sampleImages(4))), ...(await submit(model, 2, ["a photo of a cat", "two dogs on a beach"]))];
  await model.dispose();
  console.log(JSON.stringify({ torch: binding.torchVersion, out: out.map((a) => Array.from(a)) }));
})();'
CLIP_LIBTORCH=system node -e "$embed" "$root" > "$root/system.json"
node -e "$embed" "" > "$root/venv.json"
node -e '
const [a, b] = process.argv.slice(1).map((f) => JSON.parse(require("fs").readFileSync(f, "utf8")));
let worst = 0;
a.out.forEach((v, i) => v.forEach((x, j) => (worst = Math.max(worst, Math.abs(x - b.out[i][j])))));
console.log(`libtorch ${a.torch} build vs libtorch ${b.torch} build: max abs diff ${worst}`);
process.exit(worst <= 1e-5 ? 0 : 1);' "$root/system.json" "$root/venv.json"

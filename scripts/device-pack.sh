#!/usr/bin/env bash
# Fills .device/ with what a bare GPU machine (CUDA toolkit, CMake, ninja,
# python3 with a CUDA torch; no Node, no network) lacks to build, test and
# benchmark clip-native with scripts/device-check.sh:
#
#   node.xz               this machine's Node.js binary
#   prefix.tar.xz         the codec/ICU/JSON runtime and -dev Debian packages (and pkgconf), unpacked
#                         here into a prefix and pruned (no static libraries, docs or ICU tools); their
#                         .pc files find the prefix wherever it lands (${pcfiledir})
#   node_modules.tar.xz   the production dependencies, tap and typescript, with what they need: the tests
#                         run there as here (TypeScript through tap)
#   fixtures.tar.xz       the CLIP vocabulary of test/fixtures/vocab (made from an npm package) and dist/
#   MANIFEST              versions and sizes
#
# Run it from the repository root on Debian 12 (apt-get download needs the
# Debian registry). The pack must stay under 55 MiB: the device run carries at
# most 64 MiB with the working tree. It prints the device call to make.
#
#   scripts/device-pack.sh           build (or refresh) the pack
#   scripts/device-pack.sh --check   only check an existing pack's size
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
pack=$root/.device
work=$root/.cache/device-pack
limit_mib=55

size_check() {
  local bytes
  bytes=$(du -sb "$pack" | cut -f1)
  local tree
  tree=$(git ls-files -z --cached --others --exclude-standard | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
  printf 'pack: %s bytes (%.1f MiB, limit %d MiB); working tree that travels with it: %.1f MiB (limit 64 MiB together)\n' \
    "$bytes" "$(echo "$bytes / 1048576" | bc -l)" "$limit_mib" "$(echo "$tree / 1048576" | bc -l)"
  if ((bytes > limit_mib * 1048576)); then
    echo "device-pack: the pack is over ${limit_mib} MiB" >&2
    return 1
  fi
  if ((bytes + tree > 63 * 1048576)); then
    echo "device-pack: pack plus working tree are over 63 MiB" >&2
    return 1
  fi
}

if [[ ${1:-} == --check ]]; then
  [[ -f $pack/MANIFEST ]] || { echo "device-pack: no pack in $pack (run scripts/device-pack.sh)" >&2; exit 1; }
  size_check
  exit
fi

mkdir -p "$pack" "$work"
grep -qxF '.device/' .gitignore || { echo ".gitignore must ignore .device/" >&2; exit 1; }

# --- Node.js: compressed once per binary (xz -9 takes minutes on two cores; -6 for the rest) ----------------------
node_bin=$(readlink -f "$(command -v node)")
node_stamp="$(node --version) $(stat -c %s "$node_bin")"
if [[ ! -f $pack/node.xz || "$(cat "$work/node.stamp" 2>/dev/null)" != "$node_stamp" ]]; then
  echo "device-pack: compressing $node_bin ($node_stamp)"
  xz -9 -T0 -c "$node_bin" >"$pack/node.xz.tmp"
  mv "$pack/node.xz.tmp" "$pack/node.xz"
  echo "$node_stamp" >"$work/node.stamp"
fi

# --- Debian packages into a prefix ---------------------------------------------------------------
# The build's find_package/pkg_check_modules (cmake/clip_codecs.cmake) and their shared libraries.
debs=(libjpeg62-turbo libjpeg62-turbo-dev libpng16-16 libpng-dev libgif7 libgif-dev
  libwebp7 libwebpdemux2 libwebpmux3 libwebp-dev
  libicu72 libicu-dev zlib1g zlib1g-dev nlohmann-json3-dev pkgconf-bin libpkgconf3)
mkdir -p "$work/debs"
(cd "$work/debs" && for d in "${debs[@]}"; do
  ls "${d}"_*.deb >/dev/null 2>&1 || apt-get download "$d" >/dev/null
done)
rm -rf "$work/prefix"
mkdir -p "$work/prefix"
for f in "$work"/debs/*.deb; do dpkg-deb -x "$f" "$work/prefix"; done
# What the build and the run do not read: static libraries, documentation, ICU's data tools.
find "$work/prefix" \( -name '*.a' -o -path '*/share/doc*' -o -path '*/share/man*' -o -path '*/share/lintian*' \) -prune -exec rm -rf {} +
rm -rf "$work/prefix/usr/lib/x86_64-linux-gnu/icu" "$work/prefix/usr/share/aclocal"
# .pc files name /usr; make them name their own prefix wherever it is unpacked.
while IFS= read -r pc; do
  rel=$(realpath --relative-to="$(dirname "$pc")" "$work/prefix/usr")
  sed -i -E "s#(^|[=[:space:]])/usr(/|[[:space:]]|\$)#\1\${pcfiledir}/${rel}\2#g" "$pc"
done < <(find "$work/prefix" -name '*.pc')
PKG_CONFIG_LIBDIR="$work/prefix/usr/lib/x86_64-linux-gnu/pkgconfig:$work/prefix/usr/share/pkgconfig" \
  pkg-config --cflags --libs icu-uc icu-i18n libwebp libwebpdemux libpng | grep -q "$work/prefix" ||
  { echo "device-pack: the rewritten .pc files do not point into the prefix" >&2; exit 1; }
tar -C "$work/prefix" -cf - . | xz -6 -T0 >"$pack/prefix.tar.xz"

# --- npm dependencies ----------------------------------------------------------------------------
node - "$work/npm-list" <<'EOF'
// The closure of package.json's dependencies plus tap and typescript, resolved as Node resolves them.
const fs = require('node:fs');
const path = require('node:path');
const root = process.cwd();
const pkg = JSON.parse(fs.readFileSync('package.json', 'utf8'));
const seen = new Set();
const dirs = [];
function resolve(name, from) {
  for (let dir = from; ; dir = path.dirname(dir)) {
    const candidate = path.join(dir, 'node_modules', name);
    if (fs.existsSync(path.join(candidate, 'package.json'))) return candidate;
    if (dir === root || dir === path.dirname(dir)) return undefined;
  }
}
function visit(name, from, optional) {
  const dir = resolve(name, from);
  if (!dir) {
    if (!optional) throw new Error(`${name} (needed from ${from}) is not installed`);
    return;
  }
  if (seen.has(dir)) return;
  seen.add(dir);
  const rel = path.relative(path.join(root, 'node_modules'), dir);
  if (!rel.includes(`node_modules${path.sep}`)) dirs.push(rel); // nested copies travel with their parent
  const p = JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8'));
  for (const dep of Object.keys(p.dependencies ?? {})) visit(dep, dir, false);
  // Peers the package marks optional (tap's alternative TypeScript loaders, …) stay behind.
  const optionalPeers = p.peerDependenciesMeta ?? {};
  for (const dep of Object.keys(p.peerDependencies ?? {})) if (!optionalPeers[dep]?.optional) visit(dep, dir, true);
}
for (const name of [...Object.keys(pkg.dependencies), 'tap', 'typescript']) visit(name, root, false);
const bins = ['tap', 'tsc', 'cmake-js'].map((b) => path.join('.bin', b)).filter((b) => fs.existsSync(path.join(root, 'node_modules', b)));
fs.writeFileSync(process.argv[2], [...dirs.sort(), ...bins].join('\n') + '\n');
EOF
# Source maps, type declarations and docs are not read at run time (tap transpiles the tests without type-checking).
tar -C "$(readlink -f node_modules)" --exclude='*.map' --exclude='*.d.ts' --exclude='*.d.mts' --exclude='*.d.cts' \
  --exclude='*.md' --exclude='*.markdown' -cf - -T "$work/npm-list" | xz -6 -T0 >"$pack/node_modules.tar.xz"

# --- the vocabulary fixture (its stamp lets scripts/fixtures.js keep it) and dist/ -------------
# dist/ is compiled here: tsc there would need @types/node and the declarations left out above.
[[ -f test/fixtures/vocab/vocab.json ]] || node scripts/fixtures.js
npx tsc -p tsconfig.json
tar -C "$root" -cf - test/fixtures/vocab dist | xz -6 -T0 >"$pack/fixtures.tar.xz"

{
  echo "node $(node --version)"
  echo "debian $(for f in "$work"/debs/*.deb; do basename "$f" .deb; done | tr '\n' ' ')"
  echo "npm packages $(grep -vc '^\.bin' "$work/npm-list")"
  (cd "$pack" && ls -l --time-style=+ node.xz prefix.tar.xz node_modules.tar.xz fixtures.tar.xz | awk '{print $5, $6}')
} >"$pack/MANIFEST"
cat "$pack/MANIFEST"
size_check

cat <<'EOF'

The device call (one run; the script stops itself within 8 minutes):
  run(command: "bash scripts/device-check.sh", carry: [".device"], timeout_s: 560)
Results come back as device-results.json and device-log.txt under the run's files.
EOF

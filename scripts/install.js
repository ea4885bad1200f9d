#!/usr/bin/env node
// npm install hook: nothing to do when a prebuild fits a libtorch found here
// (the same test the loader makes, lib/native/locate.ts) or a local build exists;
// otherwise build from source with cmake-js against the libtorch CMake finds.
//
//   CLIP_NATIVE_SKIP_BUILD=1   never build
//   CLIP_NATIVE_FORCE_BUILD=1  build even when a prebuild fits or a local build exists
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const root = path.resolve(__dirname, '..');
const localBuild = path.join(root, 'build', 'Release', 'clip_native.node');

/** Why no build is needed, or undefined; `tried` collects what was looked at. */
function reasonToSkip(tried) {
  const loader = path.join(root, 'dist', 'native', 'locate.js');
  // A fresh clone has neither dist/ (made by `prepare`, after this hook) nor prebuilds.
  if (fs.existsSync(loader)) {
    const fit = require(loader).findFittingPrebuild({ root }, tried);
    if (fit) {
      return (
        `${path.relative(root, fit.prebuild.file)} fits libtorch ${fit.libtorch.version} ` +
        `${fit.libtorch.variant} in ${fit.libtorch.libDir}`
      );
    }
  }
  if (fs.existsSync(localBuild)) return `the local build ${path.relative(root, localBuild)} exists`;
  return undefined;
}

function main() {
  if (process.env.CLIP_NATIVE_SKIP_BUILD === '1') return 0;
  const tried = [];
  if (process.env.CLIP_NATIVE_FORCE_BUILD !== '1') {
    const reason = reasonToSkip(tried);
    if (reason) {
      console.log(`clip-native: no build needed: ${reason}`);
      return 0;
    }
  }
  for (const line of tried) console.log(`clip-native: ${line}`);
  console.log('clip-native: building the addon from source (cmake-js)');

  let cmakeJs;
  try {
    cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
  } catch {
    console.error('clip-native: no prebuilt addon fits this machine and cmake-js is not installed to build one.');
    return 1;
  }
  const result = spawnSync(process.execPath, [cmakeJs, 'compile', '--parallel', '2'], {
    cwd: root,
    stdio: 'inherit',
  });
  if (result.status !== 0) {
    console.error(
      'clip-native: building the addon failed. It needs cmake, a C++17 compiler, the codec -dev packages ' +
        'and libtorch (a Python with torch, CLIP_LIBTORCH=system for Debian libtorch-dev, or LIBTORCH=<dir>); ' +
        'or install the torch a prebuild was made for (listed above) and run `npm rebuild clip-native`. ' +
        'See the README, "Install".',
    );
    return result.status ?? 1;
  }
  return 0;
}

process.exitCode = main();

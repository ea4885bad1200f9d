#!/usr/bin/env node
// npm run prebuild: builds the addon with cmake-js into build-prebuild/ and
// places it in prebuilds/<platform>-<arch>/ under a name that says which
// libtorch it needs:
//
//   prebuilds/linux-x64/clip-native.torch-2.13.0.cpu.napi.node   the addon, RUNPATH cleared
//   prebuilds/linux-x64/clip-native.torch-2.13.0.cpu.napi.json   sidecar: the libtorch libraries to preload, …
//
// The libtorch is the one the build finds (CLIP_LIBTORCH / LIBTORCH, as for any
// build; see the README). The loader (lib/native/binding.ts, lib/native/locate.ts) uses a prebuild only
// where a libtorch of the same version and variant is found, and loads that
// libtorch's libraries before the addon, so the prebuild carries no path of
// the machine that built it.
//
//   node scripts/prebuild.js [--from FILE] [--out DIR]
//     --from FILE  tag an addon that is already built (e.g. build/Release/clip_native.node) instead of building
//     --out DIR    the prebuilds folder to write to (default: prebuilds/ in the package root)
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');

const root = path.resolve(__dirname, '..');
const buildDirectory = path.join(root, 'build-prebuild');

const DT_NEEDED = 1;
const DT_STRTAB = 5;
const DT_RPATH = 15;
const DT_RUNPATH = 29;

/**
 * The dynamic section of a 64-bit little-endian ELF shared object: NEEDED
 * entries, RUNPATH/RPATH and the file offsets of those strings.
 */
function readDynamic(bytes) {
  if (bytes.length < 64 || bytes.readUInt32BE(0) !== 0x7f454c46) throw new Error('not an ELF file');
  if (bytes[4] !== 2 || bytes[5] !== 1) throw new Error('only 64-bit little-endian ELF files are supported');
  const programHeaders = Number(bytes.readBigUInt64LE(0x20));
  const entrySize = bytes.readUInt16LE(0x36);
  const count = bytes.readUInt16LE(0x38);
  const loads = [];
  let dynamic;
  for (let i = 0; i < count; i++) {
    const at = programHeaders + i * entrySize;
    const type = bytes.readUInt32LE(at);
    const segment = {
      offset: Number(bytes.readBigUInt64LE(at + 8)),
      address: Number(bytes.readBigUInt64LE(at + 16)),
      size: Number(bytes.readBigUInt64LE(at + 32)),
    };
    if (type === 1) loads.push(segment);
    if (type === 2) dynamic = segment;
  }
  if (!dynamic) throw new Error('no dynamic section');
  const fileOffset = (address) => {
    const segment = loads.find((s) => address >= s.address && address < s.address + s.size);
    if (!segment) throw new Error(`address 0x${address.toString(16)} is outside the loaded segments`);
    return address - segment.address + segment.offset;
  };
  const entries = [];
  let strings;
  for (let at = dynamic.offset; at + 16 <= dynamic.offset + dynamic.size; at += 16) {
    const tag = Number(bytes.readBigInt64LE(at));
    const value = Number(bytes.readBigUInt64LE(at + 8));
    if (tag === 0) break;
    if (tag === DT_STRTAB) strings = fileOffset(value);
    entries.push({ tag, value });
  }
  if (strings === undefined) throw new Error('no string table');
  const text = (offset) => bytes.toString('utf8', offset, bytes.indexOf(0, offset));
  const out = { needed: [], runpath: [], runpathOffsets: [] };
  for (const { tag, value } of entries) {
    if (tag === DT_NEEDED) out.needed.push(text(strings + value));
    if (tag === DT_RUNPATH || tag === DT_RPATH) {
      out.runpath.push(
        ...text(strings + value)
          .split(':')
          .filter(Boolean),
      );
      out.runpathOffsets.push(strings + value);
    }
  }
  return out;
}

/** Dependency order, so each library's own NEEDED entries are loaded before it. */
function loadRank(name) {
  const order = ['libc10.', 'libtorch_cpu.', 'libc10_cuda.', 'libtorch_cuda', 'libtorch.'];
  const i = order.findIndex((prefix) => name.startsWith(prefix));
  return i < 0 ? order.length : i;
}

function parseArguments(argv) {
  const options = { from: undefined, out: path.join(root, 'prebuilds') };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i];
    if ((arg === '--from' || arg === '--out') && argv[i + 1]) {
      options[arg.slice(2)] = path.resolve(argv[++i]);
    } else if (arg === '--help' || arg === '-h') {
      console.log('Usage: node scripts/prebuild.js [--from FILE] [--out DIR]');
      process.exit(0);
    } else {
      console.error(`prebuild: unknown argument ${JSON.stringify(arg)} (try --help)`);
      process.exit(2);
    }
  }
  return options;
}

/**
 * npm runs a script named "prebuild" before "build" as its pre-hook. This one
 * is meant only for `npm run prebuild`, so it stands aside when the npm
 * process above it was asked for another script (npm names its process
 * "npm run <script>"; where that cannot be read, it runs).
 */
function isPreHookOfAnotherScript() {
  if (process.env.npm_lifecycle_event !== 'prebuild') return false;
  let pid = process.ppid;
  for (let depth = 0; depth < 6 && pid > 1; depth++) {
    let command;
    let stat;
    try {
      command = fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0').join(' ');
      stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      return false;
    }
    const asked = /\bnpm(?:-cli\.js)?\s+(?:run|run-script|rum|urn)\s+(\S+)/.exec(command);
    if (asked) return asked[1] !== 'prebuild';
    pid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
  }
  return false;
}

function loadLoader() {
  const file = path.join(root, 'dist', 'native', 'locate.js');
  if (!fs.existsSync(file)) {
    console.error('prebuild: dist/native/locate.js is missing: run `npm run build:ts` first.');
    process.exit(1);
  }
  return require(file);
}

/** Builds into build-prebuild/, fresh whenever the libtorch choice changed (CMake caches where it found torch). */
function build() {
  const choice = process.env.CLIP_LIBTORCH || process.env.LIBTORCH || 'venv';
  const stamp = path.join(buildDirectory, '.clip-libtorch');
  if (fs.existsSync(stamp) && fs.readFileSync(stamp, 'utf8') !== choice) {
    fs.rmSync(buildDirectory, { recursive: true, force: true });
  }
  fs.mkdirSync(buildDirectory, { recursive: true });
  fs.writeFileSync(stamp, choice);
  const cmakeJs = require.resolve('cmake-js/bin/cmake-js', { paths: [root] });
  const result = spawnSync(process.execPath, [cmakeJs, 'compile', '-O', 'build-prebuild', '-p', '2'], {
    cwd: root,
    stdio: 'inherit',
  });
  if (result.status !== 0) {
    console.error('prebuild: the cmake-js build failed (see above).');
    process.exit(result.status ?? 1);
  }
  return path.join(buildDirectory, 'Release', 'clip_native.node');
}

/** What the built addon reports about itself, loaded in a child process through its own RUNPATH. */
function selfReport(file) {
  const script =
    'const b = require(process.argv[1]);' +
    'console.log(JSON.stringify({ torchVersion: b.torchVersion, builtWithCuda: b.builtWithCuda }));';
  const result = spawnSync(process.execPath, ['-e', script, file], { encoding: 'utf8' });
  if (result.status !== 0) {
    throw new Error(`${file} does not load: ${result.stderr.trim().split('\n').pop()}`);
  }
  return JSON.parse(result.stdout.trim().split('\n').pop());
}

function writeAtomically(file, bytes, mode) {
  const temporary = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(temporary, bytes, { mode });
  fs.renameSync(temporary, file);
}

function main() {
  if (isPreHookOfAnotherScript()) {
    console.log('prebuild: skipped (it runs as `npm run prebuild`, not as the pre-hook of `npm run build`)');
    return;
  }
  const options = parseArguments(process.argv.slice(2));
  const loader = loadLoader();
  const source = options.from ?? build();
  if (!fs.existsSync(source)) throw new Error(`${source} does not exist`);
  if (process.platform !== 'linux') {
    throw new Error('prebuilds are made on Linux only so far (the loader preloads ELF libraries)');
  }

  const bytes = fs.readFileSync(source);
  const dynamic = readDynamic(bytes);
  const torchDir = dynamic.runpath.find((dir) =>
    dynamic.needed.some((name) => /^libtorch(_cpu)?\.so/.test(name) && fs.existsSync(path.join(dir, name))),
  );
  if (!torchDir) {
    throw new Error(`${source} has no RUNPATH entry that holds its libtorch (RUNPATH: ${dynamic.runpath.join(':')})`);
  }
  const libtorch = loader.describeLibtorch(torchDir);
  if ('problem' in libtorch) throw new Error(`the libtorch in ${torchDir}: ${libtorch.problem}`);

  const report = selfReport(source);
  const compiled = /^(\d+\.\d+\.\d+)/.exec(report.torchVersion)?.[1];
  if (compiled !== libtorch.version) {
    throw new Error(`${source} was compiled with torch ${report.torchVersion} but links ${libtorch.version}`);
  }
  if (report.builtWithCuda !== (libtorch.variant !== 'cpu')) {
    throw new Error(
      `${source} was built ${report.builtWithCuda ? 'with' : 'without'} CUDA against a ${libtorch.variant} libtorch`,
    );
  }

  const preload = dynamic.needed
    .filter((name) => fs.existsSync(path.join(torchDir, name)))
    .sort((a, b) => loadRank(a) - loadRank(b));
  // An empty RUNPATH is ignored by ld.so; zeroing the whole string leaves no build-machine path behind.
  for (const offset of dynamic.runpathOffsets) bytes.fill(0, offset, bytes.indexOf(0, offset));

  const name = loader.prebuildName(libtorch.version, libtorch.variant);
  const directory = path.join(options.out, `${process.platform}-${process.arch}`);
  fs.mkdirSync(directory, { recursive: true });
  const file = path.join(directory, name);
  const sidecar = {
    format: 'clip-native-prebuild/1',
    addon: name,
    platform: process.platform,
    arch: process.arch,
    libc: 'glibc',
    napi: 8,
    torch: { version: libtorch.version, variant: libtorch.variant, compiledWith: report.torchVersion },
    preload,
    needed: dynamic.needed,
    builtAgainst: torchDir,
    package: `${require(path.join(root, 'package.json')).name}@${require(path.join(root, 'package.json')).version}`,
  };
  writeAtomically(file, bytes, 0o755);
  writeAtomically(file.replace(/\.node$/, '.json'), `${JSON.stringify(sidecar, null, 2)}\n`, 0o644);
  console.log(
    `prebuild: ${file} (libtorch ${libtorch.version} ${libtorch.variant}; ` +
      `preloads ${preload.join(', ')} from the libtorch found at run time)`,
  );
  const fromTree = path.resolve(options.out) === path.join(root, 'prebuilds');
  if (fromTree && fs.existsSync(loader.localBuildPath(root))) {
    console.log(
      'prebuild: note: where it fits, this prebuild is loaded before build/Release; ' +
        'remove it when you go back to changing the C++ code.',
    );
  }
}

if (require.main === module) {
  try {
    main();
  } catch (error) {
    console.error(`prebuild: ${error.message}`);
    process.exit(1);
  }
}

module.exports = { readDynamic };

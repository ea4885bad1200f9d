// Where the addon and its libtorch are: the prebuilds of this platform, the
// local build, and the libtorch installations of this machine. Nothing here
// loads a library; the loader (./binding.ts) and the install scripts
// (scripts/install.js, scripts/prebuild.js) share it.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';

/** A libtorch installation: its library folder, version and variant. */
export interface LibtorchInfo {
  /** The folder that holds libtorch_cpu.so, libc10.so, … */
  libDir: string;
  /** major.minor.patch, e.g. "2.13.0". */
  version: string;
  /** "cpu", "cu128" for CUDA 12.8, or "cuda" when the CUDA version is unknown. */
  variant: string;
}

/** One place a libtorch was looked for. */
export interface LibtorchCandidate {
  /** How the place was chosen, e.g. "VIRTUAL_ENV=/app/.venv", "system". */
  origin: string;
  /** The folder that was looked in. */
  where: string;
  /** What was found there. */
  libtorch?: LibtorchInfo;
  /** Why nothing usable is there. */
  problem?: string;
}

/** A prebuilt addon and the libtorch libraries to load before it. */
export interface Prebuild {
  file: string;
  torchVersion: string;
  variant: string;
  /** File names, in load order, looked up in the libtorch's library folder. */
  preload: string[];
  /** Every library the addon links (its NEEDED entries), when the sidecar lists them. */
  needed: string[];
}

/** The addon file that was (or would be) loaded. */
export interface AddonChoice {
  kind: 'prebuild' | 'local';
  file: string;
  /** For a prebuild: the libtorch it is loaded with. */
  libtorch?: LibtorchInfo;
}

/** Where to look: the package root and the environment (CLIP_LIBTORCH, LIBTORCH, CLIP_PYTHON, VIRTUAL_ENV, PATH). */
export interface AddonSearchOptions {
  root?: string;
  env?: NodeJS.ProcessEnv;
}

const PREBUILD_NAME = /^clip-native\.torch-(\d+\.\d+\.\d+)\.([a-z0-9]+)\.napi\.node$/;
const LIB_SUFFIX = process.platform === 'darwin' ? '.dylib' : process.platform === 'win32' ? '.dll' : '.so';

/** The package root: this file is dist/native/locate.js. */
export const packageRoot = path.resolve(__dirname, '..', '..');

/** The local build's path: where `cmake-js compile` puts it. */
export function localBuildPath(root = packageRoot): string {
  return path.join(root, 'build', 'Release', 'clip_native.node');
}

/** The prebuilds folder of this platform. */
export function prebuildDirectory(root = packageRoot): string {
  return path.join(root, 'prebuilds', `${process.platform}-${process.arch}`);
}

/** The prebuild file name for a libtorch version and variant. */
export function prebuildName(torchVersion: string, variant: string): string {
  return `clip-native.torch-${torchVersion}.${variant}.napi.node`;
}

/**
 * The prebuild of this platform that fits a libtorch found here, without
 * loading anything. Used by the loader and by the install script (which builds
 * from source only when this finds none).
 */
export function findFittingPrebuild(
  options: AddonSearchOptions = {},
  tried: string[] = [],
): { prebuild: Prebuild; libtorch: LibtorchInfo } | undefined {
  const root = options.root ?? packageRoot;
  const env = options.env ?? process.env;
  const directory = prebuildDirectory(root);
  const prebuilds = listPrebuilds(directory);
  if (prebuilds.length === 0) {
    tried.push(`prebuilds: none for ${process.platform}-${process.arch} in ${directory}`);
    return undefined;
  }
  const names = prebuilds.map((p) => `${path.basename(p.file)} (libtorch ${p.torchVersion} ${p.variant})`);
  tried.push(`prebuilds in ${directory}: ${names.join(', ')}`);
  for (const candidate of libtorchCandidates({ root, env })) {
    const libtorch = candidate.libtorch;
    if (!libtorch) {
      tried.push(`libtorch from ${candidate.origin}: ${candidate.where}: ${candidate.problem}`);
      continue;
    }
    const label = `libtorch ${libtorch.version} ${libtorch.variant} from ${candidate.origin}: ${libtorch.libDir}`;
    const prebuild = prebuilds.find((p) => p.torchVersion === libtorch.version && p.variant === libtorch.variant);
    if (!prebuild) {
      tried.push(`${label}: no prebuild for it`);
      continue;
    }
    const missing = prebuild.preload.filter((name) => !fs.existsSync(path.join(libtorch.libDir, name)));
    if (missing.length > 0) {
      tried.push(`${label}: lacks ${missing.join(', ')} that ${path.basename(prebuild.file)} links to`);
      continue;
    }
    return { prebuild, libtorch };
  }
  return undefined;
}

/** Prebuilds in a folder, from their names and JSON sidecars. */
export function listPrebuilds(directory: string): Prebuild[] {
  const out: Prebuild[] = [];
  for (const name of readDirectory(directory).sort()) {
    const match = PREBUILD_NAME.exec(name);
    if (!match) continue;
    const file = path.join(directory, name);
    let preload = [`libc10${LIB_SUFFIX}`, `libtorch_cpu${LIB_SUFFIX}`, `libtorch${LIB_SUFFIX}`];
    let needed: string[] = [];
    const names = (value: unknown): value is string[] =>
      Array.isArray(value) && value.every((n) => typeof n === 'string' && n.length > 0 && !n.includes('/'));
    try {
      const sidecar = JSON.parse(fs.readFileSync(file.replace(/\.node$/, '.json'), 'utf8')) as Record<string, unknown>;
      if (names(sidecar.preload)) preload = sidecar.preload;
      if (names(sidecar.needed)) needed = sidecar.needed;
    } catch {
      // No sidecar: a prebuild made by hand links the three core libraries.
    }
    out.push({ file, torchVersion: match[1], variant: match[2], preload, needed });
  }
  return out;
}

/**
 * The places a libtorch is looked for, in order, described lazily (python3 is
 * only run when the places before it did not serve). `CLIP_LIBTORCH` and
 * `LIBTORCH` mean what they mean to the build: `CLIP_LIBTORCH=<dir>` or
 * `LIBTORCH=<dir>` is the only place; `venv` is CLIP_PYTHON's torch,
 * VIRTUAL_ENV, a `.venv` in the package root or a folder above it, then
 * python3's; `system` is the system library folders. Unset: venv, then system.
 */
export function* libtorchCandidates(options: AddonSearchOptions = {}): Generator<LibtorchCandidate> {
  const root = options.root ?? packageRoot;
  const env = options.env ?? process.env;
  const choice = env.CLIP_LIBTORCH || (env.LIBTORCH ? undefined : 'auto');
  if (choice !== 'auto' && choice !== 'venv' && choice !== 'system') {
    const dir = path.resolve(choice ?? env.LIBTORCH ?? '');
    const origin = choice ? `CLIP_LIBTORCH=${choice}` : `LIBTORCH=${env.LIBTORCH}`;
    yield fromDirectory(origin, dir);
    return;
  }
  const seen = new Set<string>();
  const fresh = (candidate: LibtorchCandidate): boolean => {
    if (!candidate.libtorch) return true;
    const key = realPath(candidate.libtorch.libDir);
    if (seen.has(key)) return false;
    seen.add(key);
    return true;
  };
  if (choice !== 'system') {
    if (env.CLIP_PYTHON) {
      const c = fromPython(`CLIP_PYTHON=${env.CLIP_PYTHON}`, env.CLIP_PYTHON, env);
      if (fresh(c)) yield c;
    }
    if (env.VIRTUAL_ENV) {
      const c = fromVenv(`VIRTUAL_ENV=${env.VIRTUAL_ENV}`, env.VIRTUAL_ENV);
      if (fresh(c)) yield c;
    }
    const venvs = ancestors(root)
      .map((dir) => path.join(dir, '.venv'))
      .filter((dir) => isDirectory(dir));
    for (const venv of venvs) {
      const c = fromVenv('a project .venv', venv);
      if (fresh(c)) yield c;
    }
    if (venvs.length === 0) {
      yield { origin: 'a project .venv', where: `${root} and the folders above it`, problem: 'no .venv folder' };
    }
    const c = fromPython('python3 on PATH', 'python3', env);
    if (fresh(c)) yield c;
  }
  if (choice !== 'venv') {
    const dirs = systemLibraryDirectories();
    let found = false;
    for (const dir of dirs) {
      if (!hasLibrary(dir, 'libtorch_cpu') && !hasLibrary(dir, 'libtorch')) continue;
      found = true;
      const c = fromDirectory('the system', dir);
      if (fresh(c)) yield c;
    }
    if (!found) yield { origin: 'the system', where: dirs.join(', ') || '(none)', problem: 'no libtorch' };
  }
}

/**
 * Version and variant of the libtorch in a library folder: from torch's
 * version.py (pip), build-version (an unpacked libtorch), TorchConfigVersion.cmake
 * (Debian's libtorch-dev) or the versioned file name (Debian's runtime package).
 */
export function describeLibtorch(libDir: string): LibtorchInfo | { problem: string } {
  if (!isDirectory(libDir)) return { problem: 'not found' };
  if (!hasLibrary(libDir, 'libtorch_cpu') && !hasLibrary(libDir, 'libtorch')) {
    return { problem: `no libtorch_cpu${LIB_SUFFIX} in it` };
  }
  let full: string | undefined;
  let cuda: string | undefined;
  const versionPy = readText(path.join(libDir, '..', 'version.py'));
  if (versionPy) {
    full = /^__version__\s*=\s*['"]([^'"]+)['"]/m.exec(versionPy)?.[1];
    cuda = /^cuda\s*(?::[^=]*)?=\s*['"]([^'"]+)['"]/m.exec(versionPy)?.[1];
  }
  full ??= readText(path.join(libDir, '..', 'build-version'))?.trim();
  if (!full) {
    for (const dir of [path.join(libDir, 'cmake', 'Torch'), path.join(libDir, '..', 'share', 'cmake', 'Torch')]) {
      const text = readText(path.join(dir, 'TorchConfigVersion.cmake'));
      full = text && /set\(PACKAGE_VERSION\s+"([^"]+)"\)/.exec(text)?.[1];
      if (full) break;
    }
  }
  if (!full) {
    full = readDirectory(libDir)
      .map((name) => /^libtorch_cpu\.so\.(\d+\.\d+\.\d+)$/.exec(name)?.[1])
      .find((v) => v !== undefined);
  }
  const version = full ? /^(\d+\.\d+\.\d+)/.exec(full)?.[1] : undefined;
  if (!full || !version) {
    return { problem: 'its version is unknown (no version.py, build-version or TorchConfigVersion.cmake)' };
  }
  const local = /\+([a-z0-9.]+)$/.exec(full)?.[1];
  let variant = 'cpu';
  if (cuda) variant = `cu${cuda.split('.').slice(0, 2).join('')}`;
  else if (local && /^cu\d+$/.test(local)) variant = local;
  else if (hasLibrary(libDir, 'libtorch_cuda')) variant = 'cuda';
  return { libDir, version, variant };
}

function fromDirectory(origin: string, dir: string): LibtorchCandidate {
  // An unpacked libtorch or a pip torch package has lib/; a library folder is taken as it is.
  const libDir = isDirectory(path.join(dir, 'lib')) && !hasLibrary(dir, 'libtorch_cpu') ? path.join(dir, 'lib') : dir;
  const info = describeLibtorch(libDir);
  return 'problem' in info
    ? { origin, where: libDir, problem: info.problem }
    : { origin, where: libDir, libtorch: info };
}

function fromVenv(origin: string, venv: string): LibtorchCandidate {
  for (const lib of ['lib', 'lib64']) {
    for (const python of readDirectory(path.join(venv, lib))
      .filter((n) => n.startsWith('python'))
      .sort()) {
      const torch = path.join(venv, lib, python, 'site-packages', 'torch');
      if (isDirectory(torch)) return fromDirectory(origin, path.join(torch, 'lib'));
    }
  }
  return { origin, where: path.join(venv, 'lib', 'python3.*', 'site-packages'), problem: 'no torch package' };
}

function fromPython(origin: string, python: string, env: NodeJS.ProcessEnv): LibtorchCandidate {
  // A virtualenv's python needs no run: its site-packages is next to it.
  if (python.includes(path.sep)) {
    const venv = path.dirname(path.dirname(path.resolve(python)));
    if (fs.existsSync(path.join(venv, 'pyvenv.cfg'))) return fromVenv(origin, venv);
  }
  const code =
    'import importlib.util as u\ns = u.find_spec("torch")\nprint(s.submodule_search_locations[0] if s else "")';
  const result = spawnSync(python, ['-c', code], { encoding: 'utf8', timeout: 20_000, env });
  if (result.error) {
    const reason = (result.error as NodeJS.ErrnoException).code === 'ENOENT' ? 'not found' : result.error.message;
    return { origin, where: python, problem: reason };
  }
  const torch = result.status === 0 ? result.stdout.trim() : '';
  if (!torch) return { origin, where: python, problem: 'no torch module' };
  return fromDirectory(origin, path.join(torch, 'lib'));
}

function systemLibraryDirectories(): string[] {
  if (process.platform === 'win32') return [];
  const multiarch: Record<string, string> = {
    x64: 'x86_64-linux-gnu',
    arm64: 'aarch64-linux-gnu',
    ppc64: 'powerpc64le-linux-gnu',
    s390x: 's390x-linux-gnu',
  };
  const dirs = process.platform === 'linux' && multiarch[process.arch] ? [`/usr/lib/${multiarch[process.arch]}`] : [];
  return [...dirs, '/usr/local/lib', '/usr/lib64', '/usr/lib'];
}

function ancestors(dir: string): string[] {
  const out: string[] = [];
  for (let current = path.resolve(dir); ; current = path.dirname(current)) {
    out.push(current);
    if (path.dirname(current) === current) return out;
  }
}

function hasLibrary(dir: string, stem: string): boolean {
  return readDirectory(dir).some((name) => name === stem + LIB_SUFFIX || name.startsWith(`${stem}${LIB_SUFFIX}.`));
}

function readDirectory(dir: string): string[] {
  try {
    return fs.readdirSync(dir);
  } catch {
    return [];
  }
}

function readText(file: string): string | undefined {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch {
    return undefined;
  }
}

function isDirectory(dir: string): boolean {
  try {
    return fs.statSync(dir).isDirectory();
  } catch {
    return false;
  }
}

function realPath(file: string): string {
  try {
    return fs.realpathSync(file);
  } catch {
    return file;
  }
}

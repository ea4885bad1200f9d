import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { isMainThread } from 'node:worker_threads';
import { ClipError } from '../errors';
import {
  findFittingPrebuild,
  listPrebuilds,
  localBuildPath,
  packageRoot,
  prebuildDirectory,
  type AddonChoice,
  type AddonSearchOptions,
} from './locate';

/** Per-call options of the raw binding. */
export interface NativeSubmitOptions {
  applyExifOrientation?: boolean;
  maxPixels?: number;
  /** Run these inputs as batches of their own, formed in input order once all are prepared. */
  together?: boolean;
}

/** A failed item as the native layer reports it. */
export interface NativeItemError extends Error {
  code: string;
}

export type NativeResult = Float32Array | Int32Array | NativeItemError;

/** Task kinds; the order matches clip::TaskKind. */
export enum TaskKind {
  ImageBytes = 0,
  ImagePixels = 1,
  Text = 2,
  TokenIds = 3,
  Tokenize = 4,
  Preprocess = 5,
}

export interface NativeEncoderStats {
  queueDepth: number;
  batches: number;
  forwards: number;
  items: number;
  meanBatchSize: number;
  itemsPerSecond: number;
}

export interface NativeModelInfo {
  name: string;
  device: string;
  dtype: string;
  embedDim: number;
  imageSize: number;
  contextLength: number;
  vocabSize: number;
  maxBatchImages: number;
  maxBatchTexts: number;
  maxBatchTokens: number;
  queueCapacity: number;
  padImageBatches: boolean;
  /** How the CPU encoders run; null on CUDA. */
  cpuKernels: NativeCpuKernels | null;
  /**
   * libtorch's id of the CUDA stream the encoders run on; 0 would be the device's default stream, which
   * synchronizes with all other work on the device. null on the CPU.
   */
  cudaStream: number | null;
}

/** The kernel candidate each CPU encoder runs, and how it was chosen. */
export interface NativeCpuKernels {
  image: string;
  text: string;
  /** `calibration` (measured at load), `option`, `environment` or `only candidate`. */
  selectedBy: string;
  /** The candidates of this dtype in this libtorch. */
  candidates: string[];
  /**
   * Milliseconds per item of each candidate measured at load, the mean over the shapes timed (one item and a small
   * batch; a candidate over 1.5 times the fastest's time on one item is not timed further). Empty unless measured.
   */
  imageMsPerItem: Record<string, number>;
  textMsPerItem: Record<string, number>;
  /**
   * The candidate that image batches of at least `fromImages` images run instead of `image`: one that calibration
   * found faster than `image` by 5% or more on a batch of 8 images (e.g. int8's `onednn` against `avx512-vnni` on a
   * CPU where the second wins on one image and on captions), or forced as `cpuKernels: 'NAME,BATCH@N'`.
   * null where every batch runs `image`. `maxImagesPerForward`: as the field below, for the batches it runs. With
   * `padImageBatches` every batch runs at the largest batch size, so on this candidate when that is `fromImages` or
   * more.
   */
  imageBatch: { kernel: string; fromImages: number; maxImagesPerForward: number | null } | null;
  /**
   * Milliseconds per image of each candidate on the batch of 8 images that calibration times for `imageBatch`
   * (every candidate not dropped in the first round); empty unless measured.
   */
  imageBatchMsPerItem: Record<string, number>;
  /**
   * The most images one forward of the image encoder takes (`image`'s; `imageBatch` has its own); larger batches run
   * as forwards of that many, their results joined. 8 for bfloat16 on oneDNN's inner products (`onednn`,
   * `onednn-bf16`): on an Intel Xeon with AMX its linears took 2.5x as long on 16 images as on 8; 16 on AMX tiles
   * (`amx-bf16`), where 32 images took a third longer per image than 16. null: any.
   */
  maxImagesPerForward: number | null;
  /**
   * Where each encoder's calibration came from: `measured` (timed by this load), `process` (an earlier load of the
   * same files in this process), `file` (the calibration cache file, written by an earlier process on this machine);
   * null where nothing was calibrated (a fixed or forced candidate, or a single one). `cacheFile`: the calibration
   * cache of a calibrating load, else null.
   */
  calibration: { image: string | null; text: string | null; cacheFile: string | null };
  /**
   * How many attention products (scores and weighted sums) of each chosen encoder run on clip-native's own
   * AVX-512 or AVX2 kernel instead of libtorch's matmul (0 where `attentionKernel.kernel` is false).
   */
  attentionMatmuls: { image: number; text: number };
  /**
   * How many attention layers of each chosen encoder run their scores, softmax and weighted sum as one operator of
   * that kernel (two of the products above each).
   */
  fusedAttentions: { image: number; text: number };
  /**
   * How many MLPs (linear, QuickGELU, linear) of each chosen encoder run as one operator of clip-native's own linear
   * (the `avx512`, `avx2`, `avx512-bf16w`, `avx2-bf16w` and `avx512-bf16` candidates), which hands the hidden rows
   * to the second linear in the layout it reads instead of copying them again.
   */
  fusedMlps: { image: number; text: number };
  /**
   * How many LayerNorms of each chosen encoder run on clip-native's own kernel (every candidate but `archive`,
   * `autocast` and `aten`, on x86-64 with AVX-512F or AVX2 + FMA): one pass per row, and no parallel region for the
   * few rows of a caption.
   */
  layerNorms: { image: number; text: number };
  /** Of those, how many run together with the residual add whose sum they read, as one operator. */
  fusedLayerNorms: { image: number; text: number };
  /**
   * Whether the graphs of the oneDNN and int8 candidates take that kernel, and how it was decided: `measurement` (a
   * calibrating load: both ways timed once per process and dtype on ViT-B/32's shapes; the two figures are
   * microseconds of one layer's scaled scores, softmax and weighted sum, summed over 50 and 8 tokens),
   * `rule` (`cpuKernels: 'fixed'` or a named candidate: the kernel wherever it runs, the same in
   * every process), `environment` (`CLIP_NATIVE_ATTENTION_KERNEL` 1 or 0) or `not applicable` (neither AVX-512F
   * nor AVX2 + FMA; for bfloat16 products, no AVX-512F).
   */
  attentionKernel: {
    kernel: boolean;
    selectedBy: string;
    kernelMicroseconds: number | null;
    atenMicroseconds: number | null;
  };
  /**
   * Whether image batches of at least `fromImages` images run as two forwards at once, each half of the batch on one
   * of the process's two threads (README, "image batches in two lanes"), and how that was decided: `rule` (on CPUs
   * with AMX float32 from 4 images, bfloat16 and int8 from 8, odd batches from twice that, whatever `cpuKernels` chose;
   * elsewhere none, until measured there), `environment` (`CLIP_NATIVE_IMAGE_LANES`: 0 none, 1 as the rule or from 8
   * images, N from N images) or `not applicable` (the process runs other than 2 threads).
   */
  imageLanes: { lanes: boolean; fromImages: number | null; selectedBy: string };
  /**
   * Whether a batch of texts runs packed: the text encoder's linears, layer norms and activations on each text's
   * tokens alone (up to its end-of-text token), not on the padding to the batch's longest text. True for archives
   * with `forward_packed` (the exporter writes it) unless `CLIP_NATIVE_PACKED_TEXTS=0`.
   */
  packedTexts: boolean;
  /**
   * How many of the text encoder's attention layers, when packed, run each text's rows where they lie (clip-native's
   * kernel, without padding them again); 0 where the attention runs on libtorch's operators.
   */
  packedAttentions: number;
}

export interface NativeModel {
  /** Queues every input at once or throws (CLIP_QUEUE_FULL, CLIP_DISPOSED); the callback gets one result per input. */
  submit(
    kind: TaskKind,
    inputs: ReadonlyArray<Uint8Array | Float32Array | Int32Array | string>,
    options: NativeSubmitOptions,
    /** `stages`: per input, the seconds of preparation, queue wait and inference (zeros where it failed). */
    callback: (results: NativeResult[], stages?: Float64Array) => void,
  ): number;
  cancel(requestId: number): void;
  /** Test hook: while held, the inference thread takes no batch (a wedged engine, seen from outside). */
  holdForTesting?(hold: boolean): void;
  stats(): { image: NativeEncoderStats; text: NativeEncoderStats };
  info(): NativeModelInfo;
  dispose(): Promise<void>;
}

export interface NativeLoadOptions {
  device: string;
  dtype: string;
  threads?: number;
  cpuKernels?: string;
  calibrationCache?: string;
  maxBatchImages?: number;
  maxBatchTexts?: number;
  maxBatchTokens?: number;
  padImageBatches?: boolean;
  maxWaitMs?: number;
  queueCapacity?: number;
  prepThreads?: number;
}

export interface NativeCpuAllocatorStats {
  installed: boolean;
  /** The bound on bytes kept free for reuse. */
  maxCachedBytes: number;
  /** Bytes kept free for reuse now. */
  cachedBytes: number;
  /** Bytes of large blocks handed out and not yet freed. */
  inUseBytes: number;
  /** Large requests answered from the blocks kept. */
  hits: number;
  /** Large requests passed on to the system allocator. */
  misses: number;
  /** Bytes of the large blocks (2 MiB and up) mapped on huge page boundaries, in use or kept. */
  mappedBytes: number;
}

export interface NativeForwardTeamStats {
  /** False where OMP_PROC_BIND, OMP_PLACES, GOMP_CPU_AFFINITY or CLIP_NATIVE_TEAM_PLACEMENT=0 leave placement to others, or moving a worker thread failed; always false off Linux. */
  enabled: boolean;
  /** CPU forwards run so far in the process (model loads' calibration included; a batch run in lanes counts once). */
  forwards: number;
  /** Those run with the forward thread held on its CPU and its OpenMP workers kept off it. */
  placed: number;
  /** Placed forwards whose thread ran less than half of their wall time; each left the team to the scheduler for a while. */
  starved: number;
  /** Image batches run as two forwards at once (`info.cpuKernels.imageLanes`). */
  laneBatches: number;
  /** Of those, the batches whose two forwards ran on two threads (the rest ran in turn on one). */
  laneBatchesOnTwoThreads: number;
}

export interface NativeBinding {
  load(directory: string, options: NativeLoadOptions): Promise<NativeModel>;
  /** Stops every engine of the process (see native/addon/addon.cc). */
  shutdownAll(): void;
  /**
   * How many threads one parallel loop of clip-native's own CPU kernels runs on: libtorch's
   * thread count when the addon was compiled for libtorch's threading, 1 when it was not.
   */
  parallelThreads(): number;
  /**
   * The CPU tensor allocator the first model load installs for the process: large blocks are kept
   * for reuse between forwards (native/core/cpu_allocator.h). `installed` is false before any load
   * and where CLIP_NATIVE_CPU_CACHE_MB=0 turned it off.
   */
  cpuAllocator(): NativeCpuAllocatorStats;
  /**
   * Where the threads of CPU forwards ran (native/core/cpu_team.h; README, "Requests after idle time"):
   * counts over the process.
   */
  forwardTeam(): NativeForwardTeamStats;
  errorCodes: string[];
  builtWithCuda: boolean;
  torchVersion: string;
  /** The instruction set extensions of this CPU that kernel choices depend on (avx512f, avx512_bf16, amx_bf16, …). */
  cpuIsa: string[];
}

let cached: NativeBinding | undefined;
let loaded: AddonChoice | undefined;

// ---------------------------------------------------------------------------
// Loading the addon.
//
// A prebuild (prebuilds/<platform>-<arch>/clip-native.torch-<version>.<variant>.napi.node)
// is built against one libtorch and carries no RUNPATH: it is used only when a
// libtorch of exactly that version and variant is found here, and those
// libtorch libraries are loaded first, by absolute path. The dynamic loader
// then satisfies the prebuild's NEEDED entries (libtorch.so, libc10.so, …) with
// the libraries already in the process (it matches them by soname), so no
// LD_LIBRARY_PATH and no machine-specific RUNPATH is involved. The local build
// (build/Release) carries a RUNPATH to the libtorch it was built against and
// is loaded as it is.
// ---------------------------------------------------------------------------

// Keeps a preloaded libtorch mapped after process.dlopen closes the handle of a
// library that is not an addon (glibc and musl: 0x1000; macOS: 0x80).
const RTLD_NODELETE = process.platform === 'darwin' ? 0x80 : 0x1000;

/**
 * Loads the addon once per process: a prebuild whose libtorch is found here,
 * else the local build (build/Release), else throws one error that lists what
 * was looked for and how to fix it.
 */
export function binding(): NativeBinding {
  if (!cached) {
    const { binding: native, choice } = withOpenMpSpinLimit(() => loadBinding());
    cached = native;
    loaded = choice;
    // process.exit() skips native cleanup hooks; engines must stop before
    // exit() tears libtorch down. Workers are torn down with their hooks.
    if (isMainThread) process.once('exit', () => native.shutdownAll());
  }
  return cached;
}

/** The spin count libgomp gets from {@link withOpenMpSpinLimit}. */
export const OPENMP_SPIN_COUNT = '3000';

/**
 * Runs `load` with GOMP_SPINCOUNT set to {@link OPENMP_SPIN_COUNT} in the environment, unless the user set it or
 * OMP_WAIT_POLICY, and removes it again afterwards (child processes do not inherit it). libgomp, libtorch's OpenMP
 * runtime, reads it once, when the addon's libraries are loaded. By default a waiting OpenMP thread spins 300,000
 * times before it sleeps: milliseconds of a core after every forward, taken from the next call's image decoding,
 * and, when another process wants a core, the core that the worker it waits for (descheduled behind that process)
 * could have run on. With 3,000 (under 0.1 ms) a waiting thread soon sleeps and the scheduler moves the descheduled
 * worker onto the freed core, while the gaps between the parallel regions of one forward (serial operators of a
 * few tens of microseconds on a caption) are still covered: on a 2-core AMD EPYC (Zen 5) with a busy-looping
 * process beside it, int8 captions took 14 instead of 104 ms and 8 images 134 instead of 305 ms (30,000 spins;
 * 1,000 spins: 7.4 and 120 ms, but every short wait on an idle machine then ends in a sleep and a wake-up). The
 * variable reaches libgomp only from the main thread (a worker's `process.env` is its own copy).
 */
export function withOpenMpSpinLimit<T>(load: () => T): T {
  if (process.env.GOMP_SPINCOUNT !== undefined || process.env.OMP_WAIT_POLICY !== undefined) return load();
  process.env.GOMP_SPINCOUNT = OPENMP_SPIN_COUNT;
  try {
    return load();
  } finally {
    delete process.env.GOMP_SPINCOUNT;
  }
}

/** Which addon {@link binding} loaded, once it has. */
export function loadedAddon(): AddonChoice | undefined {
  return loaded;
}

/** Loads the addon as {@link binding} does, without caching, from any package root (tests use that). */
export function loadBinding(options: AddonSearchOptions = {}): { binding: NativeBinding; choice: AddonChoice } {
  const root = options.root ?? packageRoot;
  const env = options.env ?? process.env;
  const tried: string[] = [];
  const fit = findFittingPrebuild({ root, env }, tried);
  if (fit) {
    try {
      // The other libraries first (the codecs, ICU): a prebuild that cannot load must not leave a libtorch behind.
      for (const name of fit.prebuild.needed) {
        if (!fit.prebuild.preload.includes(name)) checkLoadable(name);
      }
      for (const name of fit.prebuild.preload) preloadLibrary(path.join(fit.libtorch.libDir, name));
      const native = requireAddon(fit.prebuild.file);
      return { binding: native, choice: { kind: 'prebuild', file: fit.prebuild.file, libtorch: fit.libtorch } };
    } catch (error) {
      const { version, variant, libDir } = fit.libtorch;
      tried.push(
        `${fit.prebuild.file}: fits libtorch ${version} ${variant} in ${libDir}, but failed to load: ${firstLine(error)}`,
      );
    }
  }
  const local = localBuildPath(root);
  if (fs.existsSync(local)) {
    try {
      return { binding: requireAddon(local), choice: { kind: 'local', file: local } };
    } catch (error) {
      tried.push(`local build ${local}: failed to load: ${firstLine(error)}`);
    }
  } else {
    tried.push(`local build ${local}: not built`);
  }
  throw new ClipError('CLIP_ADDON_UNAVAILABLE', noAddonMessage(root, tried));
}

/** Loads a shared library into the process for good, so that the addon's NEEDED entries find it. */
function preloadLibrary(file: string): void {
  if (process.platform === 'win32') return;
  const flags = os.constants.dlopen.RTLD_LAZY | RTLD_NODELETE;
  try {
    process.dlopen({ exports: {} }, file, flags);
  } catch (error) {
    // A library that is not an addon loads, then fails registration: that is the expected path.
    if (!/did not self-register/.test(String((error as Error).message))) throw error;
  }
}

/** Throws when a library the addon links (by soname, from the default search path) cannot be loaded. */
function checkLoadable(soname: string): void {
  if (process.platform !== 'linux') return;
  try {
    process.dlopen({ exports: {} }, soname, os.constants.dlopen.RTLD_LAZY);
  } catch (error) {
    if (!/did not self-register/.test(String((error as Error).message))) {
      throw new Error(`it needs ${soname}, which cannot be loaded here (${firstLine(error)})`, { cause: error });
    }
  }
}

function requireAddon(file: string): NativeBinding {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  return require(file) as NativeBinding;
}

function noAddonMessage(root: string, tried: string[]): string {
  const prebuilds = listPrebuilds(prebuildDirectory(root));
  const wanted = [...new Set(prebuilds.map((p) => `libtorch ${p.torchVersion} (${p.variant})`))];
  const lines = [
    `clip-native: no native addon could be loaded for ${process.platform}-${process.arch}.`,
    'Looked for:',
    ...tried.map((line) => `  - ${line}`),
    'To fix it, either:',
  ];
  if (wanted.length > 0) {
    lines.push(
      `  - make ${wanted.join(' or ')} available for the prebuild: activate the Python virtualenv that has ` +
        'that torch (or set CLIP_PYTHON=/path/to/venv/bin/python), set LIBTORCH=/path/to/libtorch ' +
        '(an unpacked libtorch or a pip torch package folder), or CLIP_LIBTORCH=system for the system libtorch;',
    );
  }
  lines.push(
    '  - or build the addon against the libtorch you have: `npm rebuild clip-native` (in a clone of the ' +
      'repository: `npm run setup`, then `npx cmake-js compile`). Building needs cmake, a C++17 compiler and the ' +
      'codec -dev packages; CLIP_LIBTORCH=venv|system|<dir> or LIBTORCH=<dir> chooses the libtorch it builds ' +
      `against (README, "Which libtorch"). Package root: ${root}`,
  );
  return lines.join('\n');
}

function firstLine(error: unknown): string {
  return String((error as Error)?.message ?? error).split('\n')[0];
}

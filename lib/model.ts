import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { score, type ScoreOptions } from './azure/score';
import { checkCacheOptions, EmbeddingCache, type CacheOptions, type CacheStats } from './cache';
import type { ScoreResponse } from './azure/types';
import { checkInteger } from './check';
import { ClipError, invalidArgument, orList, toClipError } from './errors';
import {
  binding,
  TaskKind,
  type NativeModel,
  type NativeModelInfo,
  type NativeResult,
  type NativeSubmitOptions,
} from './native/binding';
import {
  rank,
  zeroShot,
  type RankItem,
  type RankOptions,
  type RankResult,
  type ZeroShotOptions,
  type ZeroShotResult,
} from './retrieval';
import { parseHubReference } from './hub/reference';
import type { ModelProgress } from './hub/progress';

/** Where the encoders run. `auto` picks CUDA when this build and the machine have it. */
export type Device = 'auto' | 'cpu' | 'cuda' | `cuda:${number}`;

/**
 * Numeric precision of inference. On the CPU: `float32`, `bfloat16` (bfloat16 weights packed at load; fast on
 * CPUs with AVX-512 BF16 or AMX) or `int8` (int8 weights, activations quantized per call; fast on CPUs with VNNI
 * or AMX-INT8). On CUDA: `float32`, `float16` or `bfloat16` (weights converted once at load).
 */
export type DType = (typeof DTYPES)[number];

/** Every {@link DType}. */
export const DTYPES = ['float32', 'bfloat16', 'float16', 'int8'] as const;

/** The form of a {@link Device}. */
export const DEVICE_PATTERN = /^(auto|cpu|cuda|cuda:\d+)$/;

/** Options of {@link ClipModel.load}. */
export interface LoadOptions {
  /** Default `auto`. */
  device?: Device;
  /** Default `float32`. */
  dtype?: DType;
  /** Intra-op threads of libtorch, set once per process by the first model loaded. Default: libtorch's. */
  threads?: number;
  /**
   * How the CPU encoders run: `auto` (default) times each candidate of the dtype at load and keeps the fastest
   * per encoder; `fixed` takes the first candidate without measuring, so every process on a machine makes the
   * same choice (the bits of an embedding can depend on the kernel: the batch command uses it); a candidate's
   * name forces it (`info.cpuKernels.candidates` lists them: float32 `onednn`, `avx512` (`avx2` on CPUs without
   * AVX-512), `aten` (libtorch 1.13: `aten`, `avx512` or `avx2`); bfloat16 `onednn`, `onednn-bf16`,
   * `avx512-bf16` (on CPUs with AMX-BF16 first `amx-bf16`, clip-native's linear on AMX tiles), and on CPUs without bfloat16 products (no AVX512-BF16 or AMX) clip-native's float32 linear
   * first, on bfloat16 weights (`avx512-bf16w` or `avx2-bf16w`), then on float32 ones (`avx512` or `avx2`); int8 `avx512-vnni` (clip-native's int8 linear, on CPUs with AVX512-VNNI), `onednn`, `fbgemm` on CPUs with VNNI or AMX-INT8, else `fbgemm`, `onednn`); `NAME,BATCH@N` forces NAME, and BATCH for image batches of N or more images (`info.cpuKernels.imageBatch`; `auto` may choose such a pair). The environment
   * variable `CLIP_NATIVE_CPU_KERNELS` does the same when this option is absent; `CLIP_NATIVE_MAX_CPU_ISA` caps the
   * instruction set the candidates may use. Ignored on CUDA.
   */
  cpuKernels?: string;
  /**
   * A file in which `cpuKernels: 'auto'` keeps what it measured, so that later processes on this machine load in
   * about the time of `fixed` instead of timing every candidate again (2-4 s of a ViT-B/32 load on 2 cores). A
   * stored choice is reused only for the same model files (path, size, modification time), dtype, threads, CPU
   * (model, stepping, usable instructions) and libtorch and clip-native versions, and still has to agree with the
   * archive; the file is replaced atomically, so processes may share it. Delete it to measure again. The
   * environment variable `CLIP_NATIVE_CALIBRATION_CACHE` does the same when this option is absent. Default: none
   * (each process measures once). `info.cpuKernels.calibration` says where a load's choice came from.
   */
  calibrationCache?: string;
  /** Largest image batch. Default 16 on CPU, 128 on CUDA. */
  maxBatchImages?: number;
  /** Largest text batch. Default 64 on CPU, 256 on CUDA. */
  maxBatchTexts?: number;
  /**
   * Largest text batch in token rows. Where texts run packed (the CPU, with a model whose text encoder has
   * `forward_packed`; `info.cpuKernels.packedTexts`) that is the sum of the batch's texts' tokens, else the texts
   * in the batch times the longest of them (the most their padding can take; padded CPU batches run as groups of
   * similar length, see {@link EncoderStats.forwards}). A batch always takes at least one text. Default 16 x 77 on
   * CPU (64 captions, or 16 full-length texts), `maxBatchTexts` x 77 on CUDA.
   */
  maxBatchTokens?: number;
  /**
   * Run every image batch at `maxBatchImages`, zeros after the real images. An image's embedding varies in
   * its last bits with the size of the batch it ran in (not with its batch-mates); with this option it is the
   * same bits however calls happen to be batched, at the cost of computing the padding. The batch job does not
   * need it: it submits each chunk as batches of its own. Default off.
   */
  padImageBatches?: boolean;
  /** How long a prepared item may wait for batch-mates while more are on the way. Default 2. */
  maxWaitMs?: number;
  /**
   * Items that may wait per encoder before calls reject with `CLIP_QUEUE_FULL`; also the most items one call
   * may pass (more reject with `CLIP_INVALID_ARGUMENT`). Default 4096.
   */
  queueCapacity?: number;
  /** Threads that decode, preprocess and tokenize. Default: one per core, at most 8. */
  prepThreads?: number;
  /** Default for {@link ImageOptions.maxPixels}. 50 megapixels. */
  maxImagePixels?: number;
  /** Default for {@link ImageOptions.applyExifOrientation}. Off, as the Hugging Face processor. */
  applyExifOrientation?: boolean;
  /**
   * Keep computed embeddings in memory, keyed by the sha256 of the image bytes or the text (and the model,
   * dtype, device and `padImageBatches`), and answer repeated inputs from there without entering the engine
   * queue; `true` takes the defaults of {@link CacheOptions}. A cached answer is the same bits as the first.
   * Default off.
   */
  cache?: boolean | CacheOptions;
  /**
   * Progress of a load by repo id (download, conversion). Default: a bar on stderr when it is a terminal,
   * plain lines otherwise; pass a function of your own to log elsewhere or to stay silent.
   */
  onProgress?: (event: ModelProgress) => void;
}

/** Options every call takes. */
export interface CallOptions {
  /** Aborting rejects the call with `CLIP_ABORTED` and drops its items that have not started. */
  signal?: AbortSignal;
}

/** Options of the calls that decode images. */
export interface ImageOptions extends CallOptions {
  /** Rotate and flip by the EXIF orientation before preprocessing. */
  applyExifOrientation?: boolean;
  /** Refuse images with more pixels than this, before decoding them, with `CLIP_IMAGE_TOO_LARGE`. */
  maxPixels?: number;
}

/** Counters of one encoder. */
export interface EncoderStats {
  /** Items submitted and not yet in a batch. */
  queueDepth: number;
  /** Inference batches run. */
  batches: number;
  /**
   * Forward passes run. On the CPU a packed text batch (`info.cpuKernels.packedTexts`) is one pass; a padded one of
   * mixed lengths runs as groups of similar length (each pads only to its own longest text) where that saves more
   * padded tokens than a forward pass costs. An image batch larger than `info.cpuKernels.maxImagesPerForward` (or
   * `imageBatch.maxImagesPerForward` for the batches it runs) counts one pass per forward of that many, and a batch
   * run in lanes (`info.cpuKernels.imageLanes`) one per lane and forward.
   */
  forwards: number;
  /** Items embedded. */
  items: number;
  /** items / batches. */
  meanBatchSize: number;
  /** Items embedded per second over the last 10 seconds. */
  itemsPerSecond: number;
}

/** {@link ClipModel.stats}. */
export interface ModelStats {
  image: EncoderStats;
  text: EncoderStats;
  /** Present when the load option `cache` is on. */
  cache?: CacheStats;
}

/** What was loaded and how it runs. */
export type ModelInfo = NativeModelInfo & {
  /** CLIP's learned temperature, exp'd (clip.json's `logitScale`; 100 when the model directory has none). */
  logitScale: number;
};

/** The temperature of the model directory's clip.json; 100 (OpenAI CLIP's) when it records none. */
async function readLogitScale(directory: string): Promise<number> {
  try {
    const manifest = JSON.parse(await readFile(path.join(directory, 'clip.json'), 'utf8')) as { logitScale?: unknown };
    const value = manifest.logitScale;
    return typeof value === 'number' && Number.isFinite(value) && value > 0 ? value : 100;
  } catch {
    // The native loader has read and checked clip.json already; a race with its removal changes nothing here.
    return 100;
  }
}

/** An image as encoded bytes (JPEG, PNG, WebP, GIF or BMP); the format comes from the bytes. */
export type ImageInput = Uint8Array | ArrayBuffer;

/** One input of the mixed-input calls ({@link ClipModel.embed}): a text or an encoded image. */
export type EmbedItem = { text: string; image?: undefined } | { image: ImageInput; text?: undefined };

/**
 * Receives the seconds each embedded item spent in each stage of the engine: `prepare` (decode and
 * preprocess, or tokenize), `queue` (waiting for a batch) and `inference` (its batch's forward pass).
 * @internal
 */
export type StageObserver = (encoder: 'image' | 'text', prepare: number, queue: number, inference: number) => void;

/**
 * Options of the per-row calls ({@link ClipModel._embedEach}).
 * @internal
 */
export interface EmbedEachOptions {
  applyExifOrientation?: boolean;
  maxPixels?: number;
  /** Run the inputs as batches of their own, in input order (reproducible bits). */
  together?: boolean;
  signal?: AbortSignal;
}

function checkSignal(options: CallOptions | undefined, name: string): AbortSignal | undefined {
  if (options === undefined) return undefined;
  if (options === null || typeof options !== 'object') throw invalidArgument('an options object', name, options);
  const signal = options.signal;
  if (signal !== undefined && !(signal instanceof AbortSignal)) {
    throw invalidArgument('an AbortSignal', `${name}.signal`, signal);
  }
  return signal;
}

function toBytes(value: unknown, name: string): Uint8Array {
  if (value instanceof Uint8Array) return value;
  if (value instanceof ArrayBuffer) return new Uint8Array(value);
  throw invalidArgument('a Uint8Array, Buffer or ArrayBuffer of encoded image bytes', name, value);
}

function abortError(signal: AbortSignal): ClipError {
  return new ClipError('CLIP_ABORTED', 'The operation was aborted', { cause: signal.reason });
}

/**
 * A loaded CLIP model: both encoders, the tokenizer and the preprocessing,
 * with a batching engine on threads of its own. Every method that computes
 * returns a promise and never blocks the event loop.
 */
export class ClipModel {
  readonly #native: NativeModel;
  readonly #defaults: { applyExifOrientation: boolean; maxPixels: number };
  readonly #cache: EmbeddingCache | undefined;
  #disposed: Promise<void> | undefined;
  readonly #stageObservers = new Set<StageObserver>();
  /** What was loaded and how it runs. */
  readonly info: ModelInfo;

  private constructor(native: NativeModel, options: LoadOptions, logitScale: number, cache: CacheOptions | undefined) {
    this.#native = native;
    this.#defaults = {
      applyExifOrientation: options.applyExifOrientation ?? false,
      maxPixels: options.maxImagePixels ?? 50_000_000,
    };
    this.info = Object.freeze({ ...native.info(), logitScale });
    const { name, dtype, device, padImageBatches } = this.info;
    this.#cache = cache && new EmbeddingCache(cache, { model: name, dtype, device, padImageBatches });
  }

  /**
   * Loads a model directory (clip.json, both TorchScript encoders, vocab.json,
   * merges.txt; the README's "Model directory" describes it), or a Hugging Face
   * repo id `org/name[@revision]`: downloaded, converted once into the
   * clip-native cache and loaded from there (an existing directory of that name
   * wins).
   *
   * Rejects with `CLIP_INVALID_ARGUMENT` (bad options), `CLIP_MODEL_LOAD_FAILED`
   * (a missing or broken file, named in the message; a repo that cannot be
   * fetched or converted, named with its revision and the cause) or
   * `CLIP_DEVICE_UNAVAILABLE`.
   */
  static async load(directory: string, options: LoadOptions = {}): Promise<ClipModel> {
    if (typeof directory !== 'string' || directory.length === 0) {
      throw invalidArgument('a model directory or a Hugging Face repo id', 'directory', directory);
    }
    if (options === null || typeof options !== 'object') throw invalidArgument('an options object', 'options', options);
    const device = options.device ?? 'auto';
    if (typeof device !== 'string' || !DEVICE_PATTERN.test(device)) {
      throw invalidArgument('"auto", "cpu", "cuda" or "cuda:N"', 'options.device', device);
    }
    const dtype = options.dtype ?? 'float32';
    if (typeof dtype !== 'string' || !(DTYPES as readonly string[]).includes(dtype)) {
      throw invalidArgument(orList(DTYPES.map((d) => `"${d}"`)), 'options.dtype', dtype);
    }
    if (options.cpuKernels !== undefined && (typeof options.cpuKernels !== 'string' || options.cpuKernels === '')) {
      throw invalidArgument('"auto", "fixed" or a kernel candidate name', 'options.cpuKernels', options.cpuKernels);
    }
    if (
      options.calibrationCache !== undefined &&
      (typeof options.calibrationCache !== 'string' || options.calibrationCache === '')
    ) {
      throw invalidArgument('a file path', 'options.calibrationCache', options.calibrationCache);
    }
    const native = {
      device,
      dtype,
      threads: checkInteger(options.threads, 'options.threads', 1),
      cpuKernels: options.cpuKernels,
      calibrationCache: options.calibrationCache,
      maxBatchImages: checkInteger(options.maxBatchImages, 'options.maxBatchImages', 1),
      maxBatchTexts: checkInteger(options.maxBatchTexts, 'options.maxBatchTexts', 1),
      maxBatchTokens: checkInteger(options.maxBatchTokens, 'options.maxBatchTokens', 1),
      padImageBatches: options.padImageBatches,
      queueCapacity: checkInteger(options.queueCapacity, 'options.queueCapacity', 1),
      prepThreads: checkInteger(options.prepThreads, 'options.prepThreads', 1),
      maxWaitMs: options.maxWaitMs,
    };
    if (native.maxWaitMs !== undefined && (typeof native.maxWaitMs !== 'number' || !(native.maxWaitMs >= 0))) {
      throw invalidArgument('a number >= 0', 'options.maxWaitMs', native.maxWaitMs);
    }
    checkInteger(options.maxImagePixels, 'options.maxImagePixels', 1);
    if (options.applyExifOrientation !== undefined && typeof options.applyExifOrientation !== 'boolean') {
      throw invalidArgument('a boolean', 'options.applyExifOrientation', options.applyExifOrientation);
    }
    if (options.padImageBatches !== undefined && typeof options.padImageBatches !== 'boolean') {
      throw invalidArgument('a boolean', 'options.padImageBatches', options.padImageBatches);
    }
    const cache = checkCacheOptions(options.cache);
    if (options.onProgress !== undefined && typeof options.onProgress !== 'function') {
      throw invalidArgument('a function', 'options.onProgress', options.onProgress);
    }
    // A repo id becomes the directory of its converted model (lib/hub is loaded only for repo ids).
    if (parseHubReference(directory)) {
      const hub = await import('./hub/index');
      directory = await hub.resolveModel(directory, { onProgress: options.onProgress ?? hub.streamProgress() });
    }
    let handle: NativeModel;
    try {
      handle = await binding().load(directory, native);
    } catch (error) {
      throw toClipError(error);
    }
    return new ClipModel(handle, options, await readLogitScale(directory), cache);
  }

  /**
   * One 512-d (embedDim) embedding per text, unnormalized. Texts longer than
   * the context are truncated as Hugging Face's `truncation=True` does.
   *
   * Rejects with `CLIP_INVALID_ARGUMENT`, `CLIP_QUEUE_FULL`, `CLIP_ABORTED`, `CLIP_DISPOSED`.
   */
  async embedTexts(texts: readonly string[], options?: CallOptions): Promise<Float32Array[]> {
    const signal = checkSignal(options, 'options');
    const inputs = this.#checkTexts(texts, 'texts');
    return this.#all(await this.#submit(TaskKind.Text, inputs, {}, signal), 'texts') as Float32Array[];
  }

  /**
   * One embedding per encoded image. A bad image fails the call with its
   * `index`, never its batch-mates from other calls.
   *
   * Rejects with `CLIP_INVALID_ARGUMENT`, `CLIP_IMAGE_DECODE_FAILED`,
   * `CLIP_UNSUPPORTED_IMAGE_FORMAT`, `CLIP_IMAGE_TOO_LARGE`, `CLIP_QUEUE_FULL`,
   * `CLIP_ABORTED`, `CLIP_DISPOSED`.
   */
  async embedImages(images: readonly ImageInput[], options?: ImageOptions): Promise<Float32Array[]> {
    const { signal, native } = this.#imageOptions(options);
    const inputs = this.#checkImages(images, 'images');
    return this.#all(await this.#submit(TaskKind.ImageBytes, inputs, native, signal), 'images') as Float32Array[];
  }

  /**
   * One embedding per item, in item order, for a list that mixes texts (`{ text }`) and encoded images
   * (`{ image }`): texts go through the text encoder and images through the image encoder, both at once, so
   * `embed(items)[i]` equals what {@link embedTexts} or {@link embedImages} gives for that item alone.
   * A failing item rejects the call with its `index` in `items`.
   *
   * Rejects like {@link embedTexts} and {@link embedImages}.
   */
  async embed(items: readonly EmbedItem[], options?: ImageOptions): Promise<Float32Array[]> {
    const { signal, native } = this.#imageOptions(options);
    if (!Array.isArray(items)) throw invalidArgument('an array of { text } or { image } items', 'items', items);
    this.#checkCapacity(items, 'items');
    const texts: string[] = [];
    const images: Uint8Array[] = [];
    const where: Array<{ text: boolean; at: number }> = items.map((item: unknown, i) => {
      const name = `items[${i}]`;
      if (item === null || typeof item !== 'object')
        throw invalidArgument('a { text } or { image } object', name, item);
      const { text, image } = item as { text?: unknown; image?: unknown };
      if ((text === undefined) === (image === undefined)) {
        throw invalidArgument('an object with exactly one of text or image', name, item);
      }
      if (text !== undefined) {
        if (typeof text !== 'string') throw invalidArgument('a string', `${name}.text`, text);
        return { text: true, at: texts.push(text) - 1 };
      }
      return { text: false, at: images.push(toBytes(image, `${name}.image`)) - 1 };
    });
    const [textResults, imageResults] = await Promise.all([
      this.#submit(TaskKind.Text, texts, {}, signal),
      this.#submit(TaskKind.ImageBytes, images, native, signal),
    ]);
    return where.map(({ text, at }, i) => {
      const result = (text ? textResults : imageResults)[at];
      if (result instanceof Error) throw toClipError(result, i, `items[${i}]`);
      return result as Float32Array;
    });
  }

  /**
   * Token ids as the model sees them: contextLength (77) ids each, bos … eos,
   * padded with the manifest's `pad`.
   *
   * Rejects with `CLIP_INVALID_ARGUMENT`, `CLIP_QUEUE_FULL`, `CLIP_ABORTED`, `CLIP_DISPOSED`.
   */
  async tokenize(texts: readonly string[], options?: CallOptions): Promise<Int32Array[]> {
    const signal = checkSignal(options, 'options');
    const inputs = this.#checkTexts(texts, 'texts');
    return this.#all(await this.#submit(TaskKind.Tokenize, inputs, {}, signal), 'texts') as Int32Array[];
  }

  /**
   * The model's input for one image: 3×224×224 floats, CHW, RGB, normalized,
   * equal to Hugging Face's CLIP processor with Pillow.
   *
   * Rejects like {@link embedImages}.
   */
  async preprocessImage(image: ImageInput, options?: ImageOptions): Promise<Float32Array> {
    const { signal, native } = this.#imageOptions(options);
    const bytes = toBytes(image, 'image');
    const [result] = await this.#submit(TaskKind.Preprocess, [bytes], native, signal);
    if (result instanceof Error) throw toClipError(result);
    return result as Float32Array;
  }

  /**
   * The Azure ML CLIP embeddings endpoint's contract: `input_data` in split
   * format with columns `image` and `text`; one object per row with
   * `image_features` and/or `text_features` (see the README, "Online endpoint").
   *
   * Rejects with a ClipError whose `code` names the reason and, for a row, `row`
   * (the codes are listed at `score` in the package's `azure/score`).
   */
  score(request: unknown, options?: ScoreOptions): Promise<ScoreResponse> {
    return score(this, request, options);
  }

  /**
   * Zero-shot classification of one image: each label's text (through the template(s)) against the image,
   * sorted best first, with `score` = softmax(logitScale x cosine) over the labels.
   *
   * Rejects like {@link embedImages}, and with `CLIP_INVALID_ARGUMENT` for bad labels or templates.
   */
  async zeroShot(image: ImageInput, labels: readonly string[], options?: ZeroShotOptions): Promise<ZeroShotResult[]> {
    return zeroShot(this, image, labels, options);
  }

  /**
   * Ranks candidates against a query by cosine similarity, best first, with `score` = softmax(logitScale x
   * cosine) over all candidates; `topK` keeps the best ones. Each is a `{ text }`, an `{ image }` (encoded
   * bytes) or a Float32Array embedding computed before (an index), used as it is.
   *
   * Rejects like {@link embed}, and with `CLIP_INVALID_ARGUMENT` for an empty candidate list or a bad topK.
   */
  async rank(query: RankItem, candidates: readonly RankItem[], options?: RankOptions): Promise<RankResult[]> {
    return rank(this, query, candidates, options);
  }

  /** Queue depth, batches, mean batch size and throughput per encoder, and the cache's counters. */
  stats(): ModelStats {
    const stats: ModelStats = this.#native.stats();
    if (this.#cache) stats.cache = this.#cache.stats();
    return stats;
  }

  /**
   * Rejects calls still queued with `CLIP_DISPOSED`, waits for the batch in
   * flight and frees the model. Idempotent: every call returns the same promise.
   */
  dispose(): Promise<void> {
    this.#disposed ??= this.#native.dispose();
    return this.#disposed;
  }

  /** `await using model = await ClipModel.load(…)` disposes at the end of the scope. */
  [Symbol.asyncDispose](): Promise<void> {
    return this.dispose();
  }

  /**
   * One embedding per input for the callers that report errors per row (the Azure contract's `score` and
   * `scoreRows`, the batch job): a failing input gets its ClipError in its place instead of failing the
   * call. Inputs are not checked again: strings for `text`, encoded image bytes for `image`, token ids (bos
   * and eos included, in the vocabulary, at most contextLength) for `tokens`. With `together`
   * the inputs run as batches of their own, formed in input order once all are prepared, so their bits do
   * not depend on other calls.
   *
   * Rejects for the whole call only: `CLIP_QUEUE_FULL`, `CLIP_ABORTED`, `CLIP_DISPOSED`.
   * @internal
   */
  _embedEach(
    encoder: 'image' | 'text' | 'tokens',
    inputs: readonly Uint8Array[] | readonly string[] | readonly Int32Array[],
    options: EmbedEachOptions = {},
  ): Promise<Array<Float32Array | ClipError>> {
    const kind = encoder === 'text' ? TaskKind.Text : encoder === 'tokens' ? TaskKind.TokenIds : TaskKind.ImageBytes;
    return this._submit(kind, inputs, options) as Promise<Array<Float32Array | ClipError>>;
  }

  /**
   * Test hook: holds (`true`) or releases (`false`) the engine's inference thread, so that submitted work waits
   * without progress as in a wedged engine. The health watchdog's tests use it.
   * @internal
   */
  _holdForTesting(hold: boolean): void {
    this.#native.holdForTesting?.(hold);
  }

  /**
   * Calls `observer` with the stage times of every item embedded from now on (the server's metrics use it);
   * returns the function that stops it.
   * @internal
   */
  _observeStages(observer: StageObserver): () => void {
    this.#stageObservers.add(observer);
    return () => this.#stageObservers.delete(observer);
  }

  /**
   * Per-item results of one submission of any task kind, errors included; the tensor-level tests and
   * benchmarks build on it.
   * @internal
   */
  _submit(
    kind: TaskKind,
    inputs: ReadonlyArray<Uint8Array | Float32Array | Int32Array | string>,
    options: EmbedEachOptions = {},
  ): Promise<Array<Float32Array | Int32Array | ClipError>> {
    const { signal, ...native } = options;
    return this.#submit(kind, inputs, { ...this.#defaults, ...native }, signal).then((results) =>
      results.map((r) => (r instanceof Error ? toClipError(r) : r)),
    );
  }

  #checkTexts(texts: unknown, name: string): string[] {
    if (!Array.isArray(texts)) throw invalidArgument('an array of strings', name, texts);
    this.#checkCapacity(texts, name);
    texts.forEach((text, i) => {
      if (typeof text !== 'string') throw invalidArgument('a string', `${name}[${i}]`, text);
    });
    return texts as string[];
  }

  #checkImages(images: unknown, name: string): Uint8Array[] {
    if (!Array.isArray(images)) throw invalidArgument('an array of encoded images', name, images);
    this.#checkCapacity(images, name);
    return images.map((image, i) => toBytes(image, `${name}[${i}]`));
  }

  /** A call larger than the queue could never be queued: not "full", a caller's mistake. */
  #checkCapacity(items: unknown[], name: string): void {
    const capacity = this.info.queueCapacity;
    if (items.length > capacity) {
      throw invalidArgument(`an array of at most ${capacity} items (the model's queueCapacity)`, name, items);
    }
  }

  #imageOptions(options: ImageOptions | undefined) {
    const signal = checkSignal(options, 'options');
    const native = { ...this.#defaults };
    if (options?.applyExifOrientation !== undefined) {
      if (typeof options.applyExifOrientation !== 'boolean') {
        throw invalidArgument('a boolean', 'options.applyExifOrientation', options.applyExifOrientation);
      }
      native.applyExifOrientation = options.applyExifOrientation;
    }
    if (options?.maxPixels !== undefined) native.maxPixels = checkInteger(options.maxPixels, 'options.maxPixels', 1)!;
    return { signal, native };
  }

  #all(results: NativeResult[], name: string): Array<Float32Array | Int32Array> {
    results.forEach((result, i) => {
      if (result instanceof Error) throw toClipError(result, i, `${name}[${i}]`);
    });
    return results as Array<Float32Array | Int32Array>;
  }

  #submit(
    kind: TaskKind,
    inputs: ReadonlyArray<Uint8Array | Float32Array | Int32Array | string>,
    options: NativeSubmitOptions,
    signal: AbortSignal | undefined,
  ): Promise<NativeResult[]> {
    const cache = this.#cache;
    if (!cache || (kind !== TaskKind.Text && kind !== TaskKind.ImageBytes) || inputs.length === 0) {
      return this.#submitNative(kind, inputs, options, signal);
    }
    if (this.#disposed) return Promise.reject(new ClipError('CLIP_DISPOSED', 'The model has been disposed'));
    if (signal?.aborted) return Promise.reject(abortError(signal));
    const embedded = inputs as ReadonlyArray<Uint8Array | string>;
    // Only what changes an embedding goes into the key; the batching options do not.
    const keyed =
      kind === TaskKind.Text
        ? {}
        : { applyExifOrientation: options.applyExifOrientation, maxPixels: options.maxPixels };
    const encoder = kind === TaskKind.Text ? 'text' : 'image';
    const keys = embedded.map((input) => cache.key(encoder, keyed, input));
    // Text and image tasks answer Float32Arrays or errors, never token ids.
    const compute = (misses: Array<Uint8Array | string>) =>
      this.#submitNative(kind, misses, options, signal) as Promise<Array<Float32Array | Error>>;
    return cache.get(keys, embedded, compute) as Promise<NativeResult[]>;
  }

  #submitNative(
    kind: TaskKind,
    inputs: ReadonlyArray<Uint8Array | Float32Array | Int32Array | string>,
    options: NativeSubmitOptions,
    signal: AbortSignal | undefined,
  ): Promise<NativeResult[]> {
    if (this.#disposed) {
      return Promise.reject(new ClipError('CLIP_DISPOSED', 'The model has been disposed'));
    }
    if (inputs.length === 0) return Promise.resolve([]);
    if (signal?.aborted) return Promise.reject(abortError(signal));
    return new Promise((resolve, reject) => {
      let requestId = 0;
      const onAbort = () => {
        this.#native.cancel(requestId);
        reject(abortError(signal!));
      };
      try {
        requestId = this.#native.submit(kind, inputs, options, (results, stages) => {
          signal?.removeEventListener('abort', onAbort);
          if (
            stages !== undefined &&
            this.#stageObservers.size > 0 &&
            kind !== TaskKind.Tokenize &&
            kind !== TaskKind.Preprocess
          ) {
            const encoder = kind === TaskKind.Text || kind === TaskKind.TokenIds ? 'text' : 'image';
            results.forEach((result, i) => {
              if (result instanceof Error) return;
              for (const observe of this.#stageObservers)
                observe(encoder, stages[i * 3], stages[i * 3 + 1], stages[i * 3 + 2]);
            });
          }
          resolve(results);
        });
      } catch (error) {
        reject(toClipError(error));
        return;
      }
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }
}

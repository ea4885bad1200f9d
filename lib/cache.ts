import { createHash } from 'node:crypto';
import { LRUCache } from 'lru-cache';
import { checkInteger } from './check';
import { invalidArgument } from './errors';

/** The load option `cache`: an LRU of computed embeddings, keyed by content. */
export interface CacheOptions {
  /** Most embeddings kept. Default 100000. */
  maxEntries?: number;
  /** Most bytes kept (embeddings and keys). Default 256 MiB. */
  maxBytes?: number;
}

/** {@link ModelStats.cache}. */
export interface CacheStats {
  /** Inputs answered from the cache (or by a computation already in flight for the same input). */
  hits: number;
  /** Inputs that were computed. */
  misses: number;
  /** Embeddings held. */
  entries: number;
  /** Bytes held (embeddings and keys). */
  bytes: number;
}

/** What an input's embedding depends on besides its content. */
export interface CacheIdentity {
  model: string;
  dtype: string;
  device: string;
  padImageBatches: boolean;
}

/** An embedding, an error for this input alone, or undefined when the whole computation failed. */
type Outcome = Float32Array | Error | undefined;

const KEY_BYTES = 64;

/**
 * Content-keyed embeddings shared by every call of one model. A key is the sha256 of the model identity, the
 * encoder, the options that change the result and the input (the image bytes or the text). Hits are copies,
 * so a caller writing into its result leaves the cache alone; the bits are those first computed.
 * @internal
 */
export class EmbeddingCache {
  readonly #lru: LRUCache<string, Float32Array>;
  readonly #inFlight = new Map<string, Promise<Outcome>>();
  readonly #identity: string;
  #hits = 0;
  #misses = 0;

  constructor(options: CacheOptions, identity: CacheIdentity) {
    this.#lru = new LRUCache<string, Float32Array>({
      max: options.maxEntries ?? 100_000,
      maxSize: options.maxBytes ?? 256 * 1024 * 1024,
      sizeCalculation: (value) => value.byteLength + KEY_BYTES,
    });
    this.#identity = JSON.stringify(identity);
  }

  /** Key of one input under the options that change its embedding. */
  key(encoder: string, options: object, input: Uint8Array | string): string {
    const hash = createHash('sha256').update(this.#identity).update(encoder).update(JSON.stringify(options));
    hash.update(typeof input === 'string' ? 'text:' : 'bytes:');
    return hash.update(input).digest('hex');
  }

  /**
   * One outcome per input: cached ones at once, those in flight from another call by waiting for it, the rest
   * through `compute` (with the misses only, or not at all). Inputs whose computation elsewhere failed as a
   * whole (aborted, queue full) are computed again here, so one caller's abort is not another's.
   */
  async get<T extends Uint8Array | string>(
    keys: readonly string[],
    inputs: readonly T[],
    compute: (misses: T[]) => Promise<Outcome[]>,
  ): Promise<Outcome[]> {
    const outcomes = new Array<Outcome>(inputs.length);
    const waits: Array<Promise<void>> = [];
    const own: number[] = [];
    const settle: Array<(outcome: Outcome) => void> = [];
    keys.forEach((key, i) => {
      const cached = this.#lru.get(key);
      if (cached) {
        this.#hits++;
        outcomes[i] = cached.slice();
        return;
      }
      const pending = this.#inFlight.get(key);
      if (pending) {
        // Computed by another call, or earlier in this one: wait for it rather than embed it twice.
        this.#hits++;
        waits.push(
          pending.then((outcome) => void (outcomes[i] = outcome instanceof Float32Array ? outcome.slice() : outcome)),
        );
        return;
      }
      this.#misses++;
      own.push(i);
      this.#inFlight.set(key, new Promise<Outcome>((resolve) => settle.push(resolve)));
    });
    if (own.length > 0) {
      let results: Outcome[] | undefined;
      let failure: unknown;
      try {
        results = await compute(own.map((i) => inputs[i]));
      } catch (error) {
        failure = error;
      }
      own.forEach((i, at) => {
        const outcome = results?.[at];
        if (outcome instanceof Float32Array) this.#lru.set(keys[i], outcome.slice());
        this.#inFlight.delete(keys[i]);
        settle[at](outcome);
        outcomes[i] = outcome;
      });
      if (results === undefined) throw failure;
    }
    await Promise.all(waits);
    // What failed as a whole in another call (aborted, queue full) is this call's to compute.
    const retry = outcomes.flatMap((outcome, i) => (outcome === undefined ? [i] : []));
    if (retry.length > 0) {
      this.#misses += retry.length;
      this.#hits -= retry.length;
      const results = await compute(retry.map((i) => inputs[i]));
      retry.forEach((i, at) => (outcomes[i] = results[at]));
    }
    return outcomes;
  }

  stats(): CacheStats {
    return { hits: this.#hits, misses: this.#misses, entries: this.#lru.size, bytes: this.#lru.calculatedSize };
  }
}

/**
 * Checks the load option `cache`; undefined when off.
 * Throws `CLIP_INVALID_ARGUMENT`.
 * @internal
 */
export function checkCacheOptions(value: unknown): CacheOptions | undefined {
  if (value === undefined || value === false) return undefined;
  if (value === true) return {};
  if (value === null || typeof value !== 'object')
    throw invalidArgument('a { maxEntries?, maxBytes? } object', 'options.cache', value);
  const o = value as CacheOptions;
  return {
    maxEntries: checkInteger(o.maxEntries, 'options.cache.maxEntries', 1),
    maxBytes: checkInteger(o.maxBytes, 'options.cache.maxBytes', 1),
  };
}

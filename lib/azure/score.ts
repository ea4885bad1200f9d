import { checkBoolean, checkInteger } from '../check';
import { mapLimit } from '../concurrency';
import { ClipError, invalidArgument, toClipError } from '../errors';
import type { ClipModel } from '../model';
import {
  fetchImage,
  resolveImageSourceOptions,
  type ImageSourceOptions,
  type ResolvedImageSourceOptions,
} from '../net/fetch';
import { isRowError, parseScoreRequest, rowError, splitRows, type RowError } from './rows';
import type { ScoreResponse, ScoreRowInput, ScoreRowResult } from './types';

export type { ScoreRequest, ScoreResponse, ScoreRowInput, ScoreRowResult } from './types';
export type { RowError } from './rows';

/** Options of {@link score} and {@link scoreRows}. */
export interface ScoreOptions extends ImageSourceOptions {
  /** Aborting rejects (or fails every row) with `CLIP_ABORTED` and drops the work not yet started. */
  signal?: AbortSignal;
  /** Rotate and flip images by their EXIF orientation. Default: the model's. */
  applyExifOrientation?: boolean;
  /** Refuse images with more pixels, with `CLIP_IMAGE_TOO_LARGE`. Default: the model's. */
  maxPixels?: number;
  /** Image URLs of one call fetched at the same time. Default 16. */
  fetchConcurrency?: number;
}

/** @internal */
export interface ResolvedScoreOptions {
  signal?: AbortSignal;
  submit: { applyExifOrientation?: boolean; maxPixels?: number };
  fetch: ResolvedImageSourceOptions;
  fetchConcurrency: number;
}

/**
 * Checks {@link ScoreOptions} once and fills in defaults.
 * Throws `CLIP_INVALID_ARGUMENT`.
 * @internal
 */
export function resolveScoreOptions(options: unknown, name = 'options'): ResolvedScoreOptions {
  if (options === undefined) options = {};
  if (options === null || typeof options !== 'object') throw invalidArgument('an options object', name, options);
  const o = options as ScoreOptions;
  if (o.signal !== undefined && !(o.signal instanceof AbortSignal)) {
    throw invalidArgument('an AbortSignal', `${name}.signal`, o.signal);
  }
  const submit: ResolvedScoreOptions['submit'] = {};
  if (o.applyExifOrientation !== undefined) {
    submit.applyExifOrientation = checkBoolean(o.applyExifOrientation, `${name}.applyExifOrientation`, false);
  }
  if (o.maxPixels !== undefined) submit.maxPixels = checkInteger(o.maxPixels, `${name}.maxPixels`, 1, 0);
  return {
    signal: o.signal,
    submit,
    fetch: resolveImageSourceOptions(o, name),
    fetchConcurrency: checkInteger(o.fetchConcurrency, `${name}.fetchConcurrency`, 1, 16),
  };
}

/** One submission's per-item results; a rejection of the whole call becomes every item's error. */
async function submitAll(
  model: ClipModel,
  encoder: 'image' | 'text',
  inputs: Uint8Array[] | string[],
  options: ResolvedScoreOptions['submit'] & { signal?: AbortSignal },
  callErrors: Set<ClipError>,
): Promise<Array<Float32Array | ClipError>> {
  if (inputs.length === 0) return [];
  try {
    return await model._embedEach(encoder, inputs, options);
  } catch (error) {
    const failed = toClipError(error);
    callErrors.add(failed);
    return inputs.map(() => failed);
  }
}

interface RunResult {
  results: Array<ScoreRowResult | RowError>;
  /** Errors of a whole submission (queue full, disposed, aborted), not of one row. */
  callErrors: Set<ClipError>;
}

/**
 * The row engine of {@link score} and {@link scoreRows}. With `failFast`, the
 * first error stops the work (throwing the lowest failing row's error) before
 * anything is submitted when it can.
 */
async function run(
  model: ClipModel,
  rows: readonly unknown[],
  options: ResolvedScoreOptions,
  failFast: boolean,
): Promise<RunResult> {
  const results = new Array<ScoreRowResult | RowError>(rows.length);
  const callErrors = new Set<ClipError>();
  const split = splitRows(rows, { failFast });
  for (const [row, error] of split.errors) results[row] = error;
  const textRows = split.texts.map(({ at }) => at);
  const texts = split.texts.map(({ text }) => text);
  const imageRows = split.images.map(({ at }) => at);
  const sources = split.images.map(({ source }) => source);
  const firstError = () => results.find((r): r is RowError => isRowError(r));
  if (failFast) {
    // More rows of a kind than the engine's queue holds can never be served;
    // "retry later" (CLIP_QUEUE_FULL) would be wrong.
    const capacity = model.info.queueCapacity;
    for (const [count, kind] of [
      [imageRows.length, 'image'],
      [textRows.length, 'text'],
    ] as const) {
      if (count > capacity) {
        throw new ClipError(
          'CLIP_REQUEST_TOO_LARGE',
          `The request has ${count} ${kind} rows; at most ${capacity} are taken in one request (the model's queueCapacity)`,
        );
      }
    }
  }

  // Work of this call stops when the caller aborts or, with failFast, at the first error.
  const controller = new AbortController();
  const outer = options.signal;
  const onAbort = () => controller.abort(outer!.reason);
  if (outer?.aborted) controller.abort(outer.reason);
  outer?.addEventListener('abort', onAbort, { once: true });
  const submitOptions = { ...options.submit, signal: controller.signal };
  try {
    const textResults = submitAll(model, 'text', texts, submitOptions, callErrors);
    const bytes = await mapLimit(sources, options.fetchConcurrency, async (source) => {
      if (source.kind === 'inline') return source.bytes;
      try {
        return await fetchImage(source.url, options.fetch, controller.signal);
      } catch (error) {
        const failed = toClipError(error);
        if (failFast && !controller.signal.aborted) controller.abort(failed);
        return failed;
      }
    });
    bytes.forEach((value, i) => {
      if (value instanceof ClipError && results[imageRows[i]] === undefined) {
        results[imageRows[i]] = rowError(imageRows[i], value);
      }
    });
    if (failFast) {
      const failed = firstError();
      if (failed) {
        controller.abort(failed);
        // Fetches this call aborted itself are no one's error; report the real one.
        const real = results.find((r): r is RowError => isRowError(r) && r.code !== 'CLIP_ABORTED');
        throw real ?? failed;
      }
    }
    const imageIndices: number[] = [];
    const imageInputs: Uint8Array[] = [];
    bytes.forEach((value, i) => {
      if (value instanceof ClipError) return;
      imageIndices.push(i);
      imageInputs.push(value);
    });
    const [imageResults, textOutputs] = await Promise.all([
      submitAll(model, 'image', imageInputs, submitOptions, callErrors),
      textResults,
    ]);
    imageResults.forEach((value, k) => {
      const row = imageRows[imageIndices[k]];
      if (results[row] !== undefined) return;
      results[row] = value instanceof Error ? rowError(row, value) : { image_features: Array.from(value) };
    });
    textOutputs.forEach((value, k) => {
      const row = textRows[k];
      const current = results[row];
      if (isRowError(current)) return;
      if (value instanceof Error) results[row] = rowError(row, value);
      else results[row] = { ...current, text_features: Array.from(value) };
    });
    return { results, callErrors };
  } finally {
    outer?.removeEventListener('abort', onAbort);
  }
}

/**
 * Per-row embeddings of many rows, errors as values. All image rows go to the
 * model in one submission and all text rows in another, so they batch. A row gets `image_features` where it has an image
 * and `text_features` where it has text (embedDim numbers each, unnormalized);
 * a failing row gets a ClipError with `row` (0-based) and the reason as its
 * message.
 *
 * Row error codes: `CLIP_INVALID_ARGUMENT` (neither image nor text, not a
 * string, not an image string), `CLIP_URL_FORBIDDEN`, `CLIP_IMAGE_FETCH_FAILED`,
 * `CLIP_IMAGE_DECODE_FAILED`, `CLIP_UNSUPPORTED_IMAGE_FORMAT`,
 * `CLIP_IMAGE_TOO_LARGE`, and for every row of a failed submission
 * `CLIP_QUEUE_FULL`, `CLIP_ABORTED`, `CLIP_DISPOSED`.
 * Rejects only with `CLIP_INVALID_ARGUMENT` for bad `rows` or `options`.
 */
export async function scoreRows(
  model: ClipModel,
  rows: ReadonlyArray<ScoreRowInput>,
  options?: ScoreOptions,
): Promise<Array<ScoreRowResult | RowError>> {
  if (!Array.isArray(rows)) throw invalidArgument('an array of rows', 'rows', rows);
  return (await run(model, rows, resolveScoreOptions(options), false)).results;
}

/**
 * The Azure ML CLIP embeddings endpoint's contract: the body of `POST /score`
 * in, its 200 answer out.
 *
 * `input_data` is a DataFrame in split format with columns `image` and/or
 * `text` in any order; `index`, when present, must be as long as `data`;
 * `""` or `null` in a cell means absent; rows may mix kinds. An image is an
 * http(s) URL (fetched within the bounds of `options`; non-public addresses
 * refused unless `allowPrivateUrls`), base64 (MIME line breaks allowed) or a
 * `data:` URI. Text past the context is truncated.
 *
 * Rejects with the error of the lowest failing row (which carries `row`) or
 * of the request: `CLIP_INVALID_ARGUMENT` (shape, index length, empty row,
 * not an image string), `CLIP_URL_FORBIDDEN`, `CLIP_IMAGE_FETCH_FAILED`,
 * `CLIP_IMAGE_DECODE_FAILED`, `CLIP_UNSUPPORTED_IMAGE_FORMAT`,
 * `CLIP_IMAGE_TOO_LARGE`, `CLIP_QUEUE_FULL`, `CLIP_ABORTED`, `CLIP_DISPOSED`,
 * and `CLIP_REQUEST_TOO_LARGE` when more image or text rows than the model's
 * `queueCapacity` come in one request.
 */
export async function score(model: ClipModel, request: unknown, options?: ScoreOptions): Promise<ScoreResponse> {
  const resolved = resolveScoreOptions(options);
  const rows = parseScoreRequest(request);
  const { results, callErrors } = await run(model, rows, resolved, true);
  const failed = results.find((r): r is RowError => isRowError(r));
  if (failed) {
    // A whole submission failed (queue full, disposed, aborted): no single row is to blame.
    const cause = failed.cause;
    throw cause instanceof ClipError && callErrors.has(cause) ? cause : failed;
  }
  return results as ScoreResponse;
}

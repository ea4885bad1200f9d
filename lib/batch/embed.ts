import fs from 'node:fs';
import { splitRows } from '../azure/rows';
import { mapLimit } from '../concurrency';
import { ClipError } from '../errors';
import type { ClipModel } from '../model';
import { fetchImage, resolveImageSourceOptions, type ResolvedImageSourceOptions } from '../net/fetch';
import type { RowOutcome } from './outputs';
import type { SourceRow } from './inputs';

/** One row handed to {@link ChunkEmbedder.embed}. */
export interface EmbedRow {
  fileName: string;
  row: number;
  /** A CSV/JSON Lines row, the path of an image file, or the row's error. */
  source: SourceRow | string | ClipError;
}

/** Codes that mean the job, not a row, failed. */
const JOB_LEVEL_CODES = new Set<string>(['CLIP_QUEUE_FULL', 'CLIP_DISPOSED', 'CLIP_ABORTED']);

/** Image URLs of one chunk fetched at the same time. */
const FETCH_CONCURRENCY = 16;

/** Where an image comes from: inline bytes, a URL, or a file of an image folder. */
type ImageSource = Uint8Array | URL | { file: string; fileName: string };

/** Options of {@link ChunkEmbedder}. */
export interface EmbedderOptions {
  allowPrivateUrls?: boolean;
  signal: AbortSignal;
}

/** A row's reason, or a throw for the errors that fail the whole job. */
function rowReason(error: ClipError): { code: string; message: string } {
  if (JOB_LEVEL_CODES.has(error.code)) throw error;
  return { code: error.code, message: error.message };
}

/**
 * Embeds chunks of rows so that every row's features are the same bits in
 * every run and shard, whatever else runs at the time. A feature's last bits
 * vary with its batch: for images with the batch's size, for texts also with
 * the batch-mates and their order. So a chunk's images go to the engine in
 * one submission and its texts in another, each `together`: the engine runs
 * such a submission as batches of its own, formed in row order once all of
 * it is prepared, and chunks lie on a fixed grid over the job's rows
 * (see chunkRanges), so a chunk's batches are the same in every run.
 *
 * Chunks overlap: reading, fetching and decoding run ahead while earlier
 * chunks are in inference. Rows are read as the endpoint reads them (image
 * strings, URLs, empty rows).
 */
export class ChunkEmbedder {
  readonly #model: ClipModel;
  readonly #signal: AbortSignal;
  readonly #fetch: ResolvedImageSourceOptions;

  constructor(model: ClipModel, options: EmbedderOptions) {
    this.#model = model;
    this.#signal = options.signal;
    this.#fetch = resolveImageSourceOptions({ allowPrivateUrls: options.allowPrivateUrls ?? false });
  }

  /**
   * One outcome per row, in row order; a row's failure is its outcome.
   * Rejects with `CLIP_ABORTED`, `CLIP_QUEUE_FULL` or `CLIP_DISPOSED` (the job failed, not a row).
   */
  embed(rows: readonly EmbedRow[]): Promise<RowOutcome[]> {
    const outcomes: RowOutcome[] = rows.map(({ fileName, row }) => ({ fileName, row }));
    // CSV and JSON Lines rows are read as the endpoint reads them; a row of an image folder is a file.
    const tableRows: number[] = [];
    const fileImages: Array<{ at: number; source: ImageSource }> = [];
    rows.forEach(({ source, fileName }, i) => {
      if (source instanceof ClipError) outcomes[i].error = { code: source.code, message: source.message };
      else if (typeof source === 'string') fileImages.push({ at: i, source: { file: source, fileName } });
      else tableRows.push(i);
    });
    const split = splitRows(
      tableRows.map((i) => rows[i].source),
      { rowNumber: (k) => rows[tableRows[k]].row },
    );
    for (const [k, error] of split.errors) outcomes[tableRows[k]].error = { code: error.code, message: error.message };
    const tableImages = split.images.map(({ at, source }) => ({
      at: tableRows[at],
      source: source.kind === 'inline' ? source.bytes : source.url,
    }));
    // Row order within the chunk: the order of the engine's batches.
    const imageEntries = [...fileImages, ...tableImages].sort((a, b) => a.at - b.at);
    const imageRows = imageEntries.map(({ at }) => at);
    const images: ImageSource[] = imageEntries.map(({ source }) => source);
    const textRows = split.texts.map(({ at }) => tableRows[at]);
    const texts = split.texts.map(({ text }) => text);

    // Texts whatever becomes of their rows' images, so the work never depends on a fetch.
    const textResults = this.#embedTexts(texts);
    const imageResults = this.#embedImages(images);

    return Promise.all([imageResults, textResults]).then(([imageOut, textOut]) => {
      imageOut.forEach((result, k) => {
        const outcome = outcomes[imageRows[k]];
        if (result instanceof ClipError) outcome.error = rowReason(result);
        else outcome.image = result;
      });
      textOut.forEach((result, k) => {
        const outcome = outcomes[textRows[k]];
        if (result instanceof ClipError) {
          if (!outcome.error) outcome.error = rowReason(result);
        } else if (!outcome.error) {
          outcome.text = result;
        }
      });
      for (const outcome of outcomes) if (outcome.error) delete outcome.image;
      return outcomes;
    });
  }

  /** Bytes of each image: inline, fetched, or read from a file. */
  #load(source: ImageSource): Promise<Uint8Array | ClipError> {
    if (source instanceof Uint8Array) return Promise.resolve(source);
    if (source instanceof URL) {
      return fetchImage(source, this.#fetch, this.#signal).catch((error: unknown) =>
        error instanceof ClipError ? error : new ClipError('CLIP_IMAGE_FETCH_FAILED', String(error)),
      );
    }
    return fs.promises
      .readFile(source.file)
      .catch(
        (error: Error) => new ClipError('CLIP_IMAGE_FETCH_FAILED', `Cannot read ${source.fileName}: ${error.message}`),
      );
  }

  #embedTexts(texts: string[]): Promise<Array<Float32Array | ClipError>> {
    return this.#submit('text', texts);
  }

  async #embedImages(images: ImageSource[]): Promise<Array<Float32Array | ClipError>> {
    if (images.length === 0) return [];
    const out: Array<Uint8Array | Float32Array | ClipError> = await mapLimit(images, FETCH_CONCURRENCY, (s) =>
      this.#load(s),
    );
    const decodable = out.map((v, k) => [v, k] as const).filter(([v]) => !(v instanceof ClipError));
    const embedded = await this.#submit(
      'image',
      decodable.map(([v]) => v as Uint8Array),
    );
    embedded.forEach((result, j) => (out[decodable[j][1]] = result));
    return out as Array<Float32Array | ClipError>;
  }

  async #submit(encoder: 'image' | 'text', inputs: Uint8Array[] | string[]): Promise<Array<Float32Array | ClipError>> {
    if (inputs.length === 0) return [];
    return this.#model._embedEach(encoder, inputs, { together: true, signal: this.#signal });
  }
}

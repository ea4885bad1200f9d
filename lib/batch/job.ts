import { setMaxListeners } from 'node:events';
import fs from 'node:fs';
import path from 'node:path';
import { checkInteger } from '../check';
import { ClipError, invalidArgument, toClipError } from '../errors';
import type { ClipModel } from '../model';
import { ChunkEmbedder } from './embed';
import { listInputs, type InputListing } from './inputs';
import { assemble, checkThreshold, completeOutputs, finishedErrors, type ErrorsByUnit } from './merge';
import { ERRORS_SUFFIX, outputFormat, type OutputFormat, type PartBuilder, type RowOutcome } from './outputs';
import { jobIdentity, makePlan, shardOfUnits, type BatchFormat, type JobIdentity } from './plan';
import { Progress, say, type Log } from './progress';
import { chunkRanges, RowCursor, unitStarts, type ChunkRow } from './rows';
import { PartStore, writeAtomic, type Manifest } from './store';

export { ERROR_THRESHOLD_EXCEEDED, mergeBatchOutput, type MergeOptions } from './merge';
export type { ErrorRecord } from './outputs';
export type { BatchFormat } from './plan';

/** The formats of {@link BatchJobOptions.format}. */
export const BATCH_FORMATS: readonly BatchFormat[] = ['azure-csv', 'jsonl', 'npy'];

/** Options of {@link runBatchJob}. */
export interface BatchJobOptions {
  /** A CSV or JSON Lines file, one image file, or a folder of them (read recursively, sorted by path). */
  input: string;
  /** The output folder; created when missing. Holds `.progress/` with the job's record and parts. */
  output: string;
  /** Default `azure-csv`. */
  format?: BatchFormat;
  /** This process's share of the job. Default `{ index: 0, count: 1 }`. */
  shard?: { index: number; count: number };
  /** Failed rows tolerated over the whole job; -1 for any number. Default 0, as Azure's batch deployments. */
  errorThreshold?: number;
  /** Fetch image URLs on private, loopback and link-local addresses. Default false. */
  allowPrivateUrls?: boolean;
  /** Chunks of rows in flight at once (read, fetched and decoded ahead of inference). Default 4. */
  concurrency?: number;
  /**
   * Rows per chunk, the grain of read-ahead. Default: the model's image batch size (16 on CPU, 128
   * on CUDA) when the job starts; reruns and shards take the job's.
   *
   * Byte-identical results across reruns and shards need the same model, device, dtype, CPU kernels
   * (load the model with `cpuKernels: 'fixed'`, as the batch command does, or a named candidate, and the
   * same `CLIP_NATIVE_ATTENTION_KERNEL` where it is set),
   * image batch size and chunk rows; other work on the same model does not matter (the job's chunks
   * run as batches of their own).
   */
  chunkRows?: number;
  /** Rows per part file: the grain of resuming and sharding. Default 1000. Fixed for an output folder. */
  partRows?: number;
  /** Keep `.progress/` parts after the final files are written. Default false. */
  keepParts?: boolean;
  /** Where progress and the summary go; `null` for nowhere. Default process.stderr. */
  log?: Log;
  /** Time between progress lines when `log` is not a TTY. Default 10000. */
  progressIntervalMs?: number;
  /** Aborting stops the job (finished parts stay) and rejects with `CLIP_ABORTED`. */
  signal?: AbortSignal;
}

/** What a run did. */
export interface BatchJobResult {
  /** Rows this run embedded or failed (rows of parts finished before are not counted). */
  rows: number;
  /** Rows of this run that failed. */
  failed: number;
  /** Parts of this shard finished by earlier runs, skipped by this one. */
  skippedParts: number;
  /** Rows of the whole job. */
  totalRows: number;
  /** Parts of the whole job. */
  totalParts: number;
  seconds: number;
  /** True when the job's final files exist (written by this run, another shard or an earlier run). */
  complete: boolean;
  /** The final files, when complete. */
  outputs: string[];
}

interface Settings {
  format: BatchFormat;
  shard: { index: number; count: number };
  errorThreshold: number;
  concurrency: number;
  chunkRows: number | undefined;
  partRows: number;
  keepParts: boolean;
  log: Log;
}

function checkSettings(options: BatchJobOptions): Settings {
  if (options === null || typeof options !== 'object') throw invalidArgument('an options object', 'options', options);
  if (typeof options.input !== 'string' || !options.input)
    throw invalidArgument('an input path', 'options.input', options.input);
  if (typeof options.output !== 'string' || !options.output)
    throw invalidArgument('an output folder', 'options.output', options.output);
  const format = options.format ?? 'azure-csv';
  if (!BATCH_FORMATS.includes(format)) throw invalidArgument('"azure-csv", "jsonl" or "npy"', 'options.format', format);
  const shard = options.shard ?? { index: 0, count: 1 };
  const count = checkInteger(shard?.count, 'options.shard.count', 1, 1);
  const index = checkInteger(shard?.index, 'options.shard.index', 0, 0);
  if (index >= count) throw invalidArgument(`an integer below shard.count (${count})`, 'options.shard.index', index);
  if (options.signal !== undefined && !(options.signal instanceof AbortSignal)) {
    throw invalidArgument('an AbortSignal', 'options.signal', options.signal);
  }
  return {
    format,
    shard: { index, count },
    errorThreshold: checkInteger(options.errorThreshold, 'options.errorThreshold', -1, 0),
    concurrency: checkInteger(options.concurrency, 'options.concurrency', 1, 4),
    chunkRows: options.chunkRows === undefined ? undefined : checkInteger(options.chunkRows, 'options.chunkRows', 1, 1),
    partRows: checkInteger(options.partRows, 'options.partRows', 1, 1000),
    keepParts: options.keepParts ?? false,
    log: options.log === undefined ? process.stderr : options.log,
  };
}

/** Names the first field where a job differs from the one recorded in the output folder. */
function identityDifference(now: JobIdentity, recorded: JobIdentity): string | undefined {
  if (now.version !== recorded.version) return 'the record version';
  if (now.format !== recorded.format) return `the format (${recorded.format}, now ${now.format})`;
  if (now.partRows !== recorded.partRows) return `part rows (${recorded.partRows}, now ${now.partRows})`;
  if (JSON.stringify(now.model) !== JSON.stringify(recorded.model)) {
    const describe = (m: JobIdentity['model']) => [m.name, m.dtype, m.cpuKernels].filter(Boolean).join(' ');
    return `the model (${describe(recorded.model)}, now ${describe(now.model)})`;
  }
  if (now.files.length !== recorded.files.length)
    return `the input files (${recorded.files.length}, now ${now.files.length})`;
  const changed = now.files.findIndex((file, i) => JSON.stringify(file) !== JSON.stringify(recorded.files[i]));
  return changed >= 0 ? `input ${now.files[changed][0]} (name, size or modification time)` : undefined;
}

/**
 * The job recorded in the output folder, or a new record (scanning the
 * inputs) when there is none; `complete` with the final files when an
 * earlier run finished it.
 */
async function openJob(
  model: ClipModel,
  settings: Settings,
  listing: InputListing,
  store: PartStore,
): Promise<{ manifest: Manifest; complete?: string[] }> {
  const kernels = model.info.cpuKernels;
  const identity = jobIdentity(listing, settings.format, settings.partRows, {
    name: model.info.name,
    dtype: model.info.dtype,
    embedDim: model.info.embedDim,
    // Packed and padded text batches differ in the last bits (the linears see other rows).
    ...(kernels ? { cpuKernels: `${kernels.image}/${kernels.text}${kernels.packedTexts ? ' packed' : ''}` } : {}),
  });
  await fs.promises.mkdir(store.dir, { recursive: true });
  const recorded = await store.readManifest();
  if (recorded) {
    const difference = identityDifference(identity, recorded.identity);
    if (difference) {
      throw new ClipError(
        'CLIP_INVALID_ARGUMENT',
        `The output folder ${store.output} holds another job (${difference} differs); choose another output folder or remove ${store.dir}`,
      );
    }
    const complete = await completeOutputs(store, recorded);
    if (complete) return { manifest: recorded, complete };
    if (await store.isComplete()) {
      // The final files went missing after the parts were removed: start over.
      await fs.promises.rm(store.dir, { recursive: true, force: true });
      await fs.promises.mkdir(store.dir, { recursive: true });
    } else {
      return { manifest: recorded };
    }
  }
  const plan = await makePlan(listing, settings.partRows);
  const batching = {
    chunkRows: settings.chunkRows ?? model.info.maxBatchImages,
    imageBatch: model.info.maxBatchImages,
    device: model.info.device,
  };
  const manifest = await store.createManifest({ identity, plan, errorThreshold: settings.errorThreshold, batching });
  const difference = identityDifference(identity, manifest.identity);
  if (difference) {
    throw new ClipError(
      'CLIP_INVALID_ARGUMENT',
      `Another job started in ${store.output} at the same time (${difference} differs)`,
    );
  }
  return { manifest };
}

/** Writes one unit's files: side files and errors first, the main part (the "finished" mark) last. */
async function writeUnit(store: PartStore, format: OutputFormat, unit: number, part: PartBuilder): Promise<void> {
  for (const [suffix, data] of part.sideFiles()) await writeAtomic(store.partPath(unit, suffix), data);
  const errorsPath = store.partPath(unit, ERRORS_SUFFIX);
  // An errors file of an interrupted earlier try (a fetch that failed then) must not outlive it.
  if (part.errors.length) await writeAtomic(errorsPath, part.errors);
  else await fs.promises.rm(errorsPath, { force: true });
  await writeAtomic(store.partPath(unit, format.mainSuffix), part.mainFile());
}

interface EmbedContext {
  model: ClipModel;
  settings: Settings;
  options: BatchJobOptions;
  manifest: Manifest;
  format: OutputFormat;
  store: PartStore;
  root: string;
  todo: number[];
  /** Errors so far (finished parts included); grows with this run's. */
  errors: ErrorsByUnit;
  progress: Progress;
}

/**
 * Embeds the units of this run chunk by chunk, `concurrency` chunks in
 * flight, handling results in order: each unit's part is written once its
 * last row is handled. Rejects at the first row over the error threshold.
 */
async function embedUnits(context: EmbedContext): Promise<void> {
  const { model, settings, options, manifest, format, store, todo, errors, progress } = context;
  const { plan } = manifest;
  const controller = new AbortController();
  setMaxListeners(0, controller.signal); // every submission in flight listens
  const onAbort = () => controller.abort(options.signal!.reason);
  if (options.signal?.aborted) controller.abort(options.signal.reason);
  options.signal?.addEventListener('abort', onAbort, { once: true });

  const embedder = new ChunkEmbedder(model, { allowPrivateUrls: options.allowPrivateUrls, signal: controller.signal });
  const chunkRows = settings.chunkRows ?? manifest.batching.chunkRows;
  const { batching } = manifest;
  if (
    chunkRows !== batching.chunkRows ||
    model.info.maxBatchImages !== batching.imageBatch ||
    model.info.device !== batching.device
  ) {
    say(
      settings.log,
      `batch: note: this run batches unlike the one that started the job (${chunkRows} rows per chunk, image batch ` +
        `${model.info.maxBatchImages} on ${model.info.device}; then ${batching.chunkRows}, ${batching.imageBatch} on ${batching.device}): ` +
        'its features will differ in their last bits from those of parts finished before',
    );
  }
  const starts = unitStarts(plan);
  const lastRow = (unit: number) => starts[unit] + plan.units[unit].rows - 1;
  const keep = new Set(todo);
  const cursor = new RowCursor(plan, context.root);
  const ranges = chunkRanges(plan, todo, chunkRows);
  const inflight: Array<{ rows: ChunkRow[]; outcomes: Promise<RowOutcome[]> }> = [];
  const fill = async () => {
    while (inflight.length < settings.concurrency && !controller.signal.aborted) {
      const range = ranges.next();
      if (range.done) return;
      const rows = await cursor.read(...range.value);
      const outcomes = embedder.embed(rows);
      outcomes.catch(() => undefined); // awaited in order below
      inflight.push({ rows, outcomes });
    }
  };

  const parts = new Map<number, PartBuilder>();
  let filling: Promise<void> = fill();
  try {
    for (;;) {
      await filling;
      if (controller.signal.aborted)
        throw new ClipError('CLIP_ABORTED', 'The batch job was aborted', { cause: controller.signal.reason });
      const head = inflight.shift();
      if (!head) break;
      filling = fill(); // read and decode ahead while the head chunk finishes
      filling.catch(() => undefined);
      const outcomes = await head.outcomes;
      let kept = 0;
      let chunkFailed = 0;
      const finishedUnits: number[] = [];
      outcomes.forEach((outcome, i) => {
        const { unit, global } = head.rows[i];
        if (!keep.has(unit)) return;
        kept += 1;
        let part = parts.get(unit);
        if (!part) parts.set(unit, (part = format.createPart()));
        part.add(outcome);
        if (outcome.error) {
          chunkFailed += 1;
          const list = errors.get(unit) ?? [];
          list.push({ file_name: outcome.fileName, row_number_per_file: outcome.row, ...outcome.error });
          errors.set(unit, list);
        }
        if (global === lastRow(unit)) finishedUnits.push(unit);
      });
      progress.add(kept, chunkFailed);
      // Finished parts are kept even past the threshold: a rerun with a higher one resumes from them.
      for (const unit of finishedUnits) {
        await writeUnit(store, format, unit, parts.get(unit)!);
        parts.delete(unit);
      }
      if (chunkFailed) {
        const refused = await checkThreshold(store, errors, settings.errorThreshold);
        if (refused) throw refused;
      }
    }
  } catch (error) {
    controller.abort(error);
    await filling.catch(() => undefined);
    await Promise.allSettled(inflight.map((chunk) => chunk.outcomes));
    throw error instanceof ClipError ? error : toClipError(error);
  } finally {
    options.signal?.removeEventListener('abort', onAbort);
    await cursor.close().catch(() => undefined);
    progress.finish();
  }
}

/**
 * Runs a batch job, or this process's shard of it: embeds every row of the
 * inputs into the output folder in the Azure batch endpoint's formats
 * (README, "Batch job"), resuming from the parts earlier runs finished. The
 * process that finishes the last part writes the final files.
 *
 * Rejects with `CLIP_INVALID_ARGUMENT` (bad options, unreadable input, an
 * output folder holding another job), `CLIP_ERROR_THRESHOLD_EXCEEDED` (more
 * failed rows than `errorThreshold`; the error names the first, with `row`
 * and `fileName`, and errors.jsonl lists them), `CLIP_ABORTED`, or the
 * model's job-level errors (`CLIP_QUEUE_FULL`, `CLIP_DISPOSED`).
 */
export async function runBatchJob(model: ClipModel, options: BatchJobOptions): Promise<BatchJobResult> {
  const settings = checkSettings(options);
  const { log } = settings;
  const started = Date.now();
  const listing = await listInputs(options.input, options.output);
  const store = new PartStore(path.resolve(options.output));
  const { manifest, complete } = await openJob(model, settings, listing, store);
  const { plan } = manifest;
  const totals = { totalRows: plan.totalRows, totalParts: plan.units.length };
  if (complete) {
    await store.removeParts().catch(() => undefined); // left by a merge killed after it finished
    say(log, `batch: ${options.output} already holds this job's final files; nothing to do`);
    return { rows: 0, failed: 0, skippedParts: 0, ...totals, seconds: 0, complete: true, outputs: complete };
  }

  const format = outputFormat(settings.format, plan);
  const finished = await store.unitsWith(format.mainSuffix);
  const shardOf = shardOfUnits(plan, settings.shard.count);
  const mine = plan.units.map((_, i) => i).filter((i) => shardOf[i] === settings.shard.index);
  const todo = mine.filter((i) => !finished.has(i));
  const todoRows = todo.reduce((sum, i) => sum + plan.units[i].rows, 0);
  const label = settings.shard.count > 1 ? `batch: shard ${settings.shard.index}/${settings.shard.count}:` : 'batch:';
  say(
    log,
    `${label} ${plan.inputs.length} input file${plan.inputs.length === 1 ? '' : 's'}, ${plan.totalRows} rows in ${plan.units.length} parts; ` +
      `${todo.length} parts (${todoRows} rows) to do` +
      (mine.length > todo.length ? `, ${mine.length - todo.length} finished before` : '') +
      (listing.ignored ? `; ${listing.ignored} other files ignored` : ''),
  );

  // Failed rows of finished parts count, so a resumed job fails where an uninterrupted one would.
  const errors = await finishedErrors(store, finished);
  const refused = await checkThreshold(store, errors, settings.errorThreshold);
  if (refused) throw refused;
  const progress = new Progress({
    stream: log,
    total: todoRows,
    intervalMs: options.progressIntervalMs,
    label: label.slice(0, -1),
  });
  await embedUnits({ model, settings, options, manifest, format, store, root: listing.root, todo, errors, progress });

  const { done, failed, seconds } = progress.counts;
  say(
    log,
    `${label} ${done} rows in ${seconds.toFixed(1)} s (${seconds > 0 ? (done / seconds).toFixed(1) : '0'} rows/s)${failed ? `, ${failed} failed` : ''}`,
  );
  const result: BatchJobResult = {
    rows: done,
    failed,
    skippedParts: mine.length - todo.length,
    ...totals,
    seconds: 0,
    complete: false,
    outputs: [],
  };
  const remaining = plan.units.length - (await store.unitsWith(format.mainSuffix)).size;
  if (remaining > 0) {
    say(
      log,
      `${label} done; ${remaining} parts of other shards remain: the shard that finishes last writes the final files (or run clip-native batch --merge)`,
    );
  } else {
    result.outputs = await assemble(store, manifest, format, {
      threshold: settings.errorThreshold,
      keepParts: settings.keepParts,
      log,
    });
    result.complete = true;
  }
  result.seconds = (Date.now() - started) / 1000;
  return result;
}

import fs from 'node:fs';
import path from 'node:path';
import { ClipError, invalidArgument } from '../errors';
import { ERRORS_FILE, ERRORS_SUFFIX, outputFormat, type ErrorRecord, type OutputFormat } from './outputs';
import { say, type Log } from './progress';
import { PartStore, writeAtomic, type Manifest } from './store';

/** Code of the error a job rejects with when more rows failed than its error threshold allows. */
export const ERROR_THRESHOLD_EXCEEDED = 'CLIP_ERROR_THRESHOLD_EXCEEDED' as const;

/** Failed rows of a job, by unit. */
export type ErrorsByUnit = Map<number, ErrorRecord[]>;

/** Options of {@link mergeBatchOutput}. */
export interface MergeOptions {
  /** Failed rows tolerated, -1 for any number. Default: the threshold of the run that started the job. */
  errorThreshold?: number;
  /** Keep `.progress/` parts after writing the final files. Default false. */
  keepParts?: boolean;
  /** Where messages go; `null` for nowhere. Default process.stderr. */
  log?: Log;
}

/** The records of the errors files of finished units. */
export async function finishedErrors(store: PartStore, finished: Set<number>): Promise<ErrorsByUnit> {
  const out: ErrorsByUnit = new Map();
  // Only finished units count: an errors file without its main part is a leftover of a killed run.
  const units = [...(await store.unitsWith(ERRORS_SUFFIX))].filter((u) => finished.has(u)).sort((a, b) => a - b);
  for (const unit of units) {
    const text = await fs.promises.readFile(store.partPath(unit, ERRORS_SUFFIX), 'utf8');
    out.set(
      unit,
      text
        .split('\n')
        .filter(Boolean)
        .map((line) => JSON.parse(line) as ErrorRecord),
    );
  }
  return out;
}

export function countErrors(errors: ErrorsByUnit): number {
  let count = 0;
  for (const list of errors.values()) count += list.length;
  return count;
}

/** Writes errors.jsonl in job order, or removes a stale one when no row failed. */
async function writeErrors(store: PartStore, errors: ErrorsByUnit): Promise<void> {
  const units = [...errors.keys()].sort((a, b) => a - b);
  const lines = units.flatMap((u) => errors.get(u)!.map((record) => `${JSON.stringify(record)}\n`));
  const file = path.join(store.output, ERRORS_FILE);
  if (lines.length) await writeAtomic(file, lines);
  else await fs.promises.rm(file, { force: true });
}

/**
 * When more rows failed than the threshold allows: writes errors.jsonl and
 * returns the error naming the first failing row (in job order) to reject with.
 */
export async function checkThreshold(
  store: PartStore,
  errors: ErrorsByUnit,
  threshold: number,
): Promise<ClipError | undefined> {
  const failed = countErrors(errors);
  if (threshold < 0 || failed <= threshold) return undefined;
  await writeErrors(store, errors);
  const unit = Math.min(...[...errors.keys()].filter((u) => errors.get(u)!.length));
  const first = errors.get(unit)![0];
  const error = new ClipError(
    ERROR_THRESHOLD_EXCEEDED,
    `row ${first.row_number_per_file} of ${first.file_name} failed (${first.code}: ${first.message}); ` +
      `${failed} failed row${failed === 1 ? '' : 's'} exceed${failed === 1 ? 's' : ''} the error threshold of ${threshold}; ` +
      `see ${path.join(store.output, ERRORS_FILE)}`,
  );
  return Object.assign(error, { row: first.row_number_per_file, fileName: first.file_name, failed });
}

async function exists(file: string): Promise<boolean> {
  return fs.promises.access(file).then(
    () => true,
    () => false,
  );
}

/** The final files of a job, when it is complete and they are all there. */
export async function completeOutputs(store: PartStore, manifest: Manifest): Promise<string[] | undefined> {
  if (!(await store.isComplete())) return undefined;
  const { plan } = manifest;
  const outputs = outputFormat(manifest.identity.format, plan)
    .outputs(plan)
    .map((name) => path.join(store.output, name));
  for (const file of outputs) if (!(await exists(file))) return undefined;
  const errors = path.join(store.output, ERRORS_FILE);
  return (await exists(errors)) ? [...outputs, errors] : outputs;
}

/**
 * Writes the final files from every unit's part: refuses (writing
 * errors.jsonl) when more rows failed than the threshold allows, else the
 * format's files and errors.jsonl, each atomically; then marks the job
 * complete and removes the parts. Any number of processes may do this at
 * once: they write the same bytes, and one that finds the parts gone behind
 * it finds the complete mark.
 */
export async function assemble(
  store: PartStore,
  manifest: Manifest,
  format: OutputFormat,
  options: { threshold: number; keepParts: boolean; log: Log },
): Promise<string[]> {
  const { plan } = manifest;
  const outputs = format.outputs(plan).map((name) => path.join(store.output, name));
  try {
    const errors = await finishedErrors(store, new Set(plan.units.keys()));
    const refused = await checkThreshold(store, errors, options.threshold);
    if (refused) throw refused;
    await format.assemble(store, plan, manifest.identity.model.embedDim);
    await writeErrors(store, errors);
    if (countErrors(errors)) outputs.push(path.join(store.output, ERRORS_FILE));
    await store.markComplete();
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === 'ENOENT' && (await store.isComplete())) {
      say(options.log, `batch: another process wrote the final files in ${store.output}`);
      return (await completeOutputs(store, manifest)) ?? outputs;
    }
    throw error;
  }
  if (!options.keepParts) await store.removeParts();
  say(options.log, `batch: wrote ${outputs.join(', ')}`);
  return outputs;
}

/**
 * `clip-native batch --merge`: writes the final files of a job whose parts
 * are all finished (its shards ran without the last one merging, or a
 * different error threshold is wanted). Resolves to the final files.
 *
 * Rejects with `CLIP_INVALID_ARGUMENT` (no job in the folder, parts
 * unfinished) or `CLIP_ERROR_THRESHOLD_EXCEEDED`.
 */
export async function mergeBatchOutput(output: string, options: MergeOptions = {}): Promise<string[]> {
  if (typeof output !== 'string' || !output) throw invalidArgument('an output folder', 'output', output);
  const log = options.log === undefined ? process.stderr : options.log;
  const store = new PartStore(path.resolve(output));
  const manifest = await store.readManifest();
  if (!manifest)
    throw new ClipError(
      'CLIP_INVALID_ARGUMENT',
      `Expected a batch job in ${output} but found no ${store.manifestPath}`,
    );
  const done = await completeOutputs(store, manifest);
  if (done) {
    say(log, `batch: ${output} already holds the job's final files`);
    return done;
  }
  const format = outputFormat(manifest.identity.format, manifest.plan);
  const finished = await store.unitsWith(format.mainSuffix);
  const missing = manifest.plan.units.length - finished.size;
  if (missing > 0) {
    throw new ClipError(
      'CLIP_INVALID_ARGUMENT',
      `Expected every part of the job in ${output} to be finished but ${missing} of ${manifest.plan.units.length} are not; run the shards that own them first`,
    );
  }
  const threshold = options.errorThreshold ?? manifest.errorThreshold;
  if (!Number.isInteger(threshold) || threshold < -1)
    throw invalidArgument('an integer >= -1', 'options.errorThreshold', threshold);
  return assemble(store, manifest, format, { threshold, keepParts: options.keepParts ?? false, log });
}

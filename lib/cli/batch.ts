import fs from 'node:fs';
import { BATCH_FORMATS, mergeBatchOutput, runBatchJob, type BatchFormat } from '../batch/job';
import { ClipModel } from '../model';
import { deviceFlags, integerFlag, parseCommandLine, required, UsageError } from './common';
import { DEFAULT_MODEL, parseHubReference } from '../hub/reference';

const USAGE = `Usage: clip-native batch [--model DIR|ID] --input PATH --output DIR [options]
       clip-native batch --merge --output DIR [--error-threshold N]

The batch job (Azure batch endpoint inputs and outputs). PATH is a CSV file
or JSON Lines file with "image" and/or "text" columns (keys), a folder of
them, or a folder of image files (jpg, jpeg, png, webp, gif, bmp); folders
are read recursively in sorted path order.

Options:
  --model DIR|ID          model directory, or Hugging Face repo id org/name[@revision]
                          (default ${DEFAULT_MODEL})
  --input PATH            input file or folder (required)
  --output DIR            output folder (required; created when missing)
  --format F              azure-csv | jsonl | npy (default azure-csv: OUTPUT/predictions.csv)
  --error-threshold N     failed rows tolerated, -1 for any number (default 0);
                          failed rows are listed in OUTPUT/errors.jsonl
  --shard I/N             run shard I of N (0-based); the shard that finishes
                          last writes the final files
  --shards N              N shards, this one's index from JOB_COMPLETION_INDEX
                          (Kubernetes Indexed Jobs)
  --merge                 only write the final files from finished parts
  --device D              auto | cpu | cuda | cuda:N (default auto)
  --dtype T               float32 | bfloat16 | float16 | int8 (default float32;
                          int8 and bfloat16 on the CPU, float16 on CUDA)
  --threads N             libtorch intra-op threads
  --allow-private-urls    let image URLs reach private, loopback and link-local addresses
  --concurrency N         chunks of rows in flight (default 4)
  --chunk-rows N          rows per chunk (default: the model's image batch
                          size, 16 on CPU, 128 on CUDA)
  --part-rows N           rows per part file, the grain of resuming and
                          sharding (default 1000; fixed for an output folder)
  --keep-parts            keep OUTPUT/.progress parts after writing the final files
  -h, --help              this help

A rerun with the same inputs and output folder resumes: parts finished in
OUTPUT/.progress are kept, and the final files are byte-identical to those
of an uninterrupted run. Progress goes to stderr. Exit status: 0 done (or
this shard done), 1 failed (over the error threshold, unreadable input),
2 bad arguments, 130 interrupted.
`;

/** `--shard I/N`, or `--shards N` with JOB_COMPLETION_INDEX; undefined when neither. */
function shard(values: Record<string, unknown>): { index: number; count: number } | undefined {
  const spec = values.shard as string | undefined;
  const shards = values.shards as string | undefined;
  if (spec !== undefined && shards !== undefined) throw new UsageError('--shard and --shards exclude each other');
  if (spec !== undefined) {
    const match = /^(\d+)\/(\d+)$/.exec(spec);
    const index = match ? Number(match[1]) : NaN;
    const count = match ? Number(match[2]) : NaN;
    if (!match || count < 1 || index >= count)
      throw new UsageError(`--shard must be I/N with 0 <= I < N, not "${spec}"`);
    return { index, count };
  }
  if (shards !== undefined) {
    const count = integerFlag(values, 'shards', 1)!;
    const env = process.env.JOB_COMPLETION_INDEX;
    const index = Number(env);
    if (env === undefined || env.trim() === '' || !Number.isInteger(index) || index < 0 || index >= count) {
      throw new UsageError(
        `--shards ${count} needs JOB_COMPLETION_INDEX set to an integer from 0 to ${count - 1}, not "${env ?? ''}"`,
      );
    }
    return { index, count };
  }
  return undefined;
}

/** `--error-threshold -1` as `--error-threshold=-1`: parseArgs takes a value starting with a dash only after `=`. */
function joinNegativeValues(args: string[]): string[] {
  const out: string[] = [];
  for (let i = 0; i < args.length; i++) {
    if (args[i] === '--error-threshold' && i + 1 < args.length && /^-\d+$/.test(args[i + 1])) {
      out.push(`--error-threshold=${args[++i]}`);
    } else {
      out.push(args[i]);
    }
  }
  return out;
}

/** `clip-native batch`: resolves to the exit status. */
export async function runBatch(args: string[]): Promise<number> {
  const { values: parsed } = parseCommandLine(joinNegativeValues(args), {
    model: { type: 'string' },
    input: { type: 'string' },
    output: { type: 'string' },
    format: { type: 'string' },
    'error-threshold': { type: 'string' },
    shard: { type: 'string' },
    shards: { type: 'string' },
    merge: { type: 'boolean' },
    device: { type: 'string' },
    dtype: { type: 'string' },
    threads: { type: 'string' },
    'allow-private-urls': { type: 'boolean' },
    concurrency: { type: 'string' },
    'chunk-rows': { type: 'string' },
    'part-rows': { type: 'string' },
    'keep-parts': { type: 'boolean' },
  } as const);
  const values = parsed as Record<string, string | undefined> & {
    help?: boolean;
    merge?: boolean;
    'allow-private-urls'?: boolean;
    'keep-parts'?: boolean;
  };
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const output = required(values, 'output');
  const threshold = integerFlag(values, 'error-threshold', -1);
  if (values.merge) {
    for (const name of [
      'model',
      'input',
      'format',
      'shard',
      'shards',
      'device',
      'dtype',
      'threads',
      'concurrency',
      'chunk-rows',
      'part-rows',
    ]) {
      if (values[name] !== undefined)
        throw new UsageError(`--merge takes only --output, --error-threshold and --keep-parts, not --${name}`);
    }
    await mergeBatchOutput(output, { errorThreshold: threshold, keepParts: values['keep-parts'] ?? false });
    return 0;
  }
  const modelDir = values.model ?? DEFAULT_MODEL;
  const input = required(values, 'input');
  if (!fs.existsSync(input)) throw new UsageError(`--input ${input} does not exist`);
  if (!fs.existsSync(modelDir) && !parseHubReference(modelDir)) {
    throw new UsageError(`--model ${modelDir} is neither a directory nor a Hugging Face repo id org/name[@revision]`);
  }
  const format = (values.format ?? 'azure-csv') as BatchFormat;
  if (!BATCH_FORMATS.includes(format))
    throw new UsageError(`--format must be ${BATCH_FORMATS.join(', ')}, not "${format}"`);
  const { device, dtype } = deviceFlags(values);
  const jobOptions = {
    input,
    output,
    format,
    shard: shard(values),
    errorThreshold: threshold,
    allowPrivateUrls: values['allow-private-urls'] ?? false,
    concurrency: integerFlag(values, 'concurrency', 1),
    chunkRows: integerFlag(values, 'chunk-rows', 1),
    partRows: integerFlag(values, 'part-rows', 1),
    keepParts: values['keep-parts'] ?? false,
  };
  const threads = integerFlag(values, 'threads', 1);

  // A model of the job's own: the job submits whole chunks, each run as batches of its own
  // (see ChunkEmbedder), so its features are the same bits in every run. Its kernels are the
  // fixed choice, not one measured per process, so that shards and reruns agree too
  // (CLIP_NATIVE_CPU_KERNELS still names others).
  const cpuKernels = process.env.CLIP_NATIVE_CPU_KERNELS ? undefined : 'fixed';
  const model = await ClipModel.load(modelDir, { device, dtype, threads, cpuKernels });
  const controller = new AbortController();
  let interrupted = false;
  const onSignal = () => {
    if (interrupted) process.exit(130);
    interrupted = true;
    process.stderr.write(
      '\nclip-native batch: interrupted; finished parts are kept, a rerun resumes (signal again to exit at once)\n',
    );
    controller.abort();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    await runBatchJob(model, { ...jobOptions, signal: controller.signal });
    return 0;
  } catch (error) {
    if (interrupted && (error as { code?: string }).code === 'CLIP_ABORTED') return 130;
    throw error;
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    await model.dispose();
  }
}

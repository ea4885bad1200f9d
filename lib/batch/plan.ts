import path from 'node:path';
import { scanCsv, scanJsonl, type CsvLayout, type InputKind, type InputListing } from './inputs';

/** The output formats of a batch job. */
export type BatchFormat = 'azure-csv' | 'jsonl' | 'npy';

/** One input file of a plan, with what the scan learnt. */
export interface PlannedInput {
  name: string;
  kind: InputKind;
  rows: number;
  /** CSV only. */
  layout?: CsvLayout;
}

/**
 * A unit of work: what one part file holds and the grain of resuming and
 * sharding. Rows of one CSV or JSON Lines file (a byte range of whole
 * records), or a run of consecutive image files (one row each).
 */
export type Unit =
  | { kind: 'rows'; input: number; firstRow: number; rows: number; start: number; end: number }
  | { kind: 'images'; input: number; rows: number };

/** Everything the job does, decided before it starts; the same for every shard and rerun. */
export interface Plan {
  inputs: PlannedInput[];
  units: Unit[];
  /** Whether any row of the job has an image / a text: which feature columns the outputs carry. */
  columns: { image: boolean; text: boolean };
  totalRows: number;
}

/**
 * What must not change between the runs and shards that share an output
 * folder: a rerun with a different identity is refused instead of mixing results.
 */
export interface JobIdentity {
  version: 1;
  format: BatchFormat;
  partRows: number;
  /** `cpuKernels`: the image/text kernels on the CPU, and ` packed` for packed text batches (absent on CUDA). */
  model: { name: string; dtype: string; embedDim: number; cpuKernels?: string };
  /** [name, size, mtimeMs] of every input file, in job order. */
  files: Array<[string, number, number]>;
}

export function jobIdentity(
  listing: InputListing,
  format: BatchFormat,
  partRows: number,
  model: JobIdentity['model'],
): JobIdentity {
  return {
    version: 1,
    format,
    partRows,
    model,
    files: listing.files.map((f) => [f.name, f.size, Math.round(f.mtimeMs)]),
  };
}

/**
 * Scans every CSV and JSON Lines input once (row counts, feature columns,
 * row-range byte offsets) and cuts the job into units of at most partRows rows.
 * Rejects with `CLIP_INVALID_ARGUMENT` for a file that is not CSV with an
 * image/text header.
 */
export async function makePlan(listing: InputListing, partRows: number): Promise<Plan> {
  const plan: Plan = { inputs: [], units: [], columns: { image: false, text: false }, totalRows: 0 };
  let imageRun: Extract<Unit, { kind: 'images' }> | undefined;
  for (const [index, file] of listing.files.entries()) {
    if (file.kind === 'image') {
      plan.inputs.push({ name: file.name, kind: 'image', rows: 1 });
      plan.columns.image = true;
      if (!imageRun || imageRun.rows >= partRows) {
        imageRun = { kind: 'images', input: index, rows: 0 };
        plan.units.push(imageRun);
      }
      imageRun.rows += 1;
      plan.totalRows += 1;
      continue;
    }
    imageRun = undefined;
    const full = path.join(listing.root, file.name);
    const scan =
      file.kind === 'csv' ? await scanCsv(full, file.name, partRows) : await scanJsonl(full, file.name, partRows);
    plan.inputs.push({
      name: file.name,
      kind: file.kind,
      rows: scan.rows,
      ...(scan.layout ? { layout: scan.layout } : {}),
    });
    if (scan.hasImage) plan.columns.image = true;
    if (scan.hasText) plan.columns.text = true;
    const count = Math.ceil(scan.rows / partRows);
    for (let k = 0; k < count; k++) {
      plan.units.push({
        kind: 'rows',
        input: index,
        firstRow: k * partRows,
        rows: Math.min(partRows, scan.rows - k * partRows),
        start: k === 0 ? scan.start : scan.splits[k - 1],
        end: k + 1 < count ? scan.splits[k] : scan.end,
      });
    }
    plan.totalRows += scan.rows;
  }
  return plan;
}

/** Which shard a unit belongs to: contiguous runs of units, balanced by rows. */
export function shardOfUnits(plan: Plan, count: number): number[] {
  const shards: number[] = [];
  let before = 0;
  for (const unit of plan.units) {
    const middle = before + unit.rows / 2;
    shards.push(Math.min(count - 1, Math.floor((middle * count) / Math.max(1, plan.totalRows))));
    before += unit.rows;
  }
  return shards;
}

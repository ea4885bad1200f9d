import path from 'node:path';
import { ClipError } from '../errors';
import type { EmbedRow } from './embed';
import { readCsvRows, readJsonlRows, type RowOrError } from './inputs';
import type { Plan } from './plan';

/** Index in the job of the first row of each unit. */
export function unitStarts(plan: Plan): number[] {
  const starts: number[] = [];
  plan.units.reduce((sum, unit) => (starts.push(sum), sum + unit.rows), 0);
  return starts;
}

/**
 * The chunks that cover the given units, as [from, to) ranges of job row
 * indices. Chunks lie on one grid over all rows of the job, chunkRows rows
 * each, whatever a run does: a row's batch-mates, and with them the last bits
 * of its features, are then the same in every run and shard. A chunk at the
 * edge of the units also covers rows of other units; their results are dropped.
 */
export function* chunkRanges(plan: Plan, units: readonly number[], chunkRows: number): Generator<[number, number]> {
  const starts = unitStarts(plan);
  let lastChunk = -1;
  for (const unit of units) {
    const first = Math.floor(starts[unit] / chunkRows);
    const last = Math.floor((starts[unit] + plan.units[unit].rows - 1) / chunkRows);
    for (let chunk = Math.max(first, lastChunk + 1); chunk <= last; chunk++) {
      lastChunk = chunk;
      yield [chunk * chunkRows, Math.min((chunk + 1) * chunkRows, plan.totalRows)];
    }
  }
}

/** A row of a chunk and where it sits in the job. */
export interface ChunkRow extends EmbedRow {
  unit: number;
  /** Index of the row among all rows of the job. */
  global: number;
}

/**
 * Rows of a plan by their index in the job, read forward: the rows of a
 * chunk may come from several units, and a chunk at the edge of the work
 * of a run also reads rows of units it does not keep (see {@link chunkRanges}).
 */
export class RowCursor {
  #unit = -1;
  #rows: AsyncIterator<RowOrError | string> | undefined;
  #position = 0;

  private readonly starts: number[];

  constructor(
    private readonly plan: Plan,
    private readonly root: string,
  ) {
    this.starts = unitStarts(plan);
  }

  #unitAt(global: number): number {
    let low = 0;
    let high = this.starts.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if (this.starts[middle] <= global) low = middle;
      else high = middle - 1;
    }
    return low;
  }

  async #open(index: number): Promise<void> {
    await this.close();
    const unit = this.plan.units[index];
    this.#unit = index;
    this.#position = this.starts[index];
    if (unit.kind === 'images') {
      const paths = Array.from({ length: unit.rows }, (_, k) =>
        path.join(this.root, this.plan.inputs[unit.input + k].name),
      );
      this.#rows = (async function* () {
        yield* paths;
      })();
      return;
    }
    const input = this.plan.inputs[unit.input];
    const file = path.join(this.root, input.name);
    this.#rows =
      input.kind === 'csv'
        ? readCsvRows(file, input.name, input.layout!, unit.start, unit.end)
        : readJsonlRows(file, input.name, unit.start, unit.end, unit.firstRow);
  }

  async #next(): Promise<ChunkRow> {
    const index = this.#unit;
    const unit = this.plan.units[index];
    const next = await this.#rows!.next();
    const offset = this.#position - this.starts[index];
    if (next.done) {
      const input = this.plan.inputs[unit.input];
      throw new ClipError(
        'CLIP_INVALID_ARGUMENT',
        `Expected ${unit.rows} rows in part ${index} (${input.name}) but read ${offset}: the file changed during the job`,
      );
    }
    const global = this.#position++;
    if (unit.kind === 'images') {
      return { unit: index, global, fileName: this.plan.inputs[unit.input + offset].name, row: 0, source: next.value };
    }
    const source = next.value as RowOrError;
    return { unit: index, global, fileName: this.plan.inputs[unit.input].name, row: unit.firstRow + offset, source };
  }

  /** The rows with job indices from (inclusive) to to (exclusive). */
  async read(from: number, to: number): Promise<ChunkRow[]> {
    const rows: ChunkRow[] = [];
    for (let global = from; global < to;) {
      const index = this.#unitAt(global);
      if (index !== this.#unit || global < this.#position) await this.#open(index);
      while (this.#position < global) await this.#next();
      const end = Math.min(to, this.starts[index] + this.plan.units[index].rows);
      for (; global < end; global++) rows.push(await this.#next());
    }
    return rows;
  }

  async close(): Promise<void> {
    const rows = this.#rows;
    this.#rows = undefined;
    this.#unit = -1;
    await rows?.return?.(undefined);
  }
}

import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { formatVector } from './floats';
import type { BatchFormat, Plan } from './plan';
import { writeAtomic, type PartStore } from './store';

/** What became of one input row. */
export interface RowOutcome {
  /** The input file (or image file) the row came from, relative to the input root. */
  fileName: string;
  /** `row_number_per_file`: 0-based among the file's rows (0 for an image file). */
  row: number;
  image?: ArrayLike<number>;
  text?: ArrayLike<number>;
  /** Set for a failed row, which gets no features. */
  error?: { code: string; message: string };
}

/** A failed row as a line of errors.jsonl. */
export interface ErrorRecord {
  file_name: string;
  row_number_per_file: number;
  code: string;
  message: string;
}

/** Suffix of the part file with a unit's failed rows (absent when none failed). */
export const ERRORS_SUFFIX = '.errors.jsonl';

/** The name under the output folder of the failed rows of a job. */
export const ERRORS_FILE = 'errors.jsonl';

/** A CSV field, quoted when it must be (RFC 4180, as pandas writes). */
function csvField(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

/** One unit's rendered output, built row by row in order. */
export abstract class PartBuilder {
  readonly errors: string[] = [];

  add(outcome: RowOutcome): void {
    if (outcome.error) {
      const record: ErrorRecord = {
        file_name: outcome.fileName,
        row_number_per_file: outcome.row,
        code: outcome.error.code,
        message: outcome.error.message,
      };
      this.errors.push(`${JSON.stringify(record)}\n`);
      return;
    }
    this.addRow(outcome);
  }

  protected abstract addRow(outcome: RowOutcome): void;

  /** Files to write before the main one, as [suffix, data]. */
  abstract sideFiles(): Array<[string, Array<string | Uint8Array>]>;

  /** The main part file: its presence marks the unit finished. */
  abstract mainFile(): Array<string | Uint8Array>;
}

class TextPart extends PartBuilder {
  private readonly lines: string[] = [];

  constructor(private readonly render: (outcome: RowOutcome) => string) {
    super();
  }

  protected addRow(outcome: RowOutcome): void {
    this.lines.push(this.render(outcome));
  }

  sideFiles(): Array<[string, Array<string | Uint8Array>]> {
    return [];
  }

  mainFile(): Array<string | Uint8Array> {
    return this.lines;
  }
}

/** Feature vectors of one unit, collected for raw float32 part files. */
class NpyPart extends PartBuilder {
  private readonly image: Float32Array[] = [];
  private readonly text: Float32Array[] = [];
  private readonly index: string[] = [];

  protected addRow(outcome: RowOutcome): void {
    const imageRow = outcome.image ? this.image.push(Float32Array.from(outcome.image)) - 1 : -1;
    const textRow = outcome.text ? this.text.push(Float32Array.from(outcome.text)) - 1 : -1;
    this.index.push(`${JSON.stringify([outcome.fileName, outcome.row, imageRow, textRow])}\n`);
  }

  sideFiles(): Array<[string, Array<string | Uint8Array>]> {
    const asBytes = (v: Float32Array) => new Uint8Array(v.buffer, v.byteOffset, v.byteLength);
    return [
      ['.image.f32', this.image.map(asBytes)],
      ['.text.f32', this.text.map(asBytes)],
    ];
  }

  mainFile(): Array<string | Uint8Array> {
    return this.index;
  }
}

/** A format: how units are rendered into parts and parts into the final files. */
export interface OutputFormat {
  readonly name: BatchFormat;
  /** Suffix of the main part file of a unit. */
  readonly mainSuffix: string;
  createPart(): PartBuilder;
  /** The final files (names under the output folder) for a plan. */
  outputs(plan: Plan): string[];
  /** Writes the final files from the parts of every unit, each atomically. */
  assemble(store: PartStore, plan: Plan, embedDim: number): Promise<void>;
}

async function* readParts(files: string[]): AsyncGenerator<Uint8Array> {
  for (const file of files) yield await fs.promises.readFile(file);
}

function unitIndices(plan: Plan): number[] {
  return plan.units.map((_, i) => i);
}

/**
 * `azure-csv`: predictions.csv as the Azure batch endpoint writes it: no
 * header; `row_number_per_file`, `image_features`, `text_features`,
 * `file_name`; a feature column only when some row of the job has that input.
 */
function azureCsv(plan: Plan): OutputFormat {
  const { image, text } = plan.columns;
  const render = (o: RowOutcome) => {
    let line = String(o.row);
    if (image) line += o.image ? `,"${formatVector(o.image)}"` : ',';
    if (text) line += o.text ? `,"${formatVector(o.text)}"` : ',';
    return `${line},${csvField(o.fileName)}\n`;
  };
  return {
    name: 'azure-csv',
    mainSuffix: '.csv',
    createPart: () => new TextPart(render),
    outputs: () => ['predictions.csv'],
    async assemble(store) {
      const parts = unitIndices(plan).map((u) => store.partPath(u, '.csv'));
      await writeAtomic(path.join(store.output, 'predictions.csv'), readParts(parts));
    },
  };
}

/** `jsonl`: predictions.jsonl, one object per row with the features it has. */
function jsonLines(plan: Plan): OutputFormat {
  const render = (o: RowOutcome) => {
    let line = `{"file_name":${JSON.stringify(o.fileName)},"row_number_per_file":${o.row}`;
    if (o.image) line += `,"image_features":${formatVector(o.image)}`;
    if (o.text) line += `,"text_features":${formatVector(o.text)}`;
    return `${line}}\n`;
  };
  return {
    name: 'jsonl',
    mainSuffix: '.jsonl',
    createPart: () => new TextPart(render),
    outputs: () => ['predictions.jsonl'],
    async assemble(store) {
      const parts = unitIndices(plan).map((u) => store.partPath(u, '.jsonl'));
      await writeAtomic(path.join(store.output, 'predictions.jsonl'), readParts(parts));
    },
  };
}

/** The header of a version 1.0 .npy file of float32 [rows, dim], padded to 64 bytes as numpy does. */
export function npyHeader(rows: number, dim: number): Buffer {
  const descr = os.endianness() === 'LE' ? '<f4' : '>f4';
  const dict = `{'descr': '${descr}', 'fortran_order': False, 'shape': (${rows}, ${dim}), }`;
  const unpadded = 10 + dict.length + 1;
  const padding = (64 - (unpadded % 64)) % 64;
  const header = `${dict}${' '.repeat(padding)}\n`;
  const out = Buffer.alloc(10 + header.length);
  out.write('\x93NUMPY', 0, 'latin1');
  out[6] = 1;
  out[7] = 0;
  out.writeUInt16LE(header.length, 8);
  out.write(header, 10, 'latin1');
  return out;
}

/**
 * `npy`: image_features.npy and text_features.npy (float32 [rows, dim], the
 * rows that have that feature, in job order; a file only when some row of the
 * job has that input) and index.csv, one line per embedded row:
 * `file_name,row_number_per_file,image_row,text_row` (the row in each .npy, empty when absent).
 */
function npy(plan: Plan): OutputFormat {
  const { image, text } = plan.columns;
  return {
    name: 'npy',
    mainSuffix: '.index.jsonl',
    createPart: () => new NpyPart(),
    outputs: () => [...(image ? ['image_features.npy'] : []), ...(text ? ['text_features.npy'] : []), 'index.csv'],
    async assemble(store, _plan, embedDim) {
      const units = unitIndices(plan);
      let imageRows = 0;
      let textRows = 0;
      const header = [
        'file_name',
        'row_number_per_file',
        ...(image ? ['image_row'] : []),
        ...(text ? ['text_row'] : []),
      ];
      const lines: string[] = [`${header.join(',')}\n`];
      for (const unit of units) {
        const index = await fs.promises.readFile(store.partPath(unit, '.index.jsonl'), 'utf8');
        let unitImages = 0;
        let unitTexts = 0;
        for (const line of index.split('\n')) {
          if (!line) continue;
          const [fileName, row, imageRow, textRow] = JSON.parse(line) as [string, number, number, number];
          let out = `${csvField(fileName)},${row}`;
          if (image) out += imageRow >= 0 ? `,${imageRows + imageRow}` : ',';
          if (text) out += textRow >= 0 ? `,${textRows + textRow}` : ',';
          lines.push(`${out}\n`);
          if (imageRow >= 0) unitImages += 1;
          if (textRow >= 0) unitTexts += 1;
        }
        imageRows += unitImages;
        textRows += unitTexts;
      }
      const features = async (suffix: string, rows: number, file: string) => {
        const parts = units.map((u) => store.partPath(u, suffix));
        async function* data() {
          yield npyHeader(rows, embedDim);
          yield* readParts(parts);
        }
        await writeAtomic(path.join(store.output, file), data());
      };
      if (image) await features('.image.f32', imageRows, 'image_features.npy');
      if (text) await features('.text.f32', textRows, 'text_features.npy');
      await writeAtomic(path.join(store.output, 'index.csv'), lines);
    },
  };
}

/** The output format of a plan. */
export function outputFormat(format: BatchFormat, plan: Plan): OutputFormat {
  switch (format) {
    case 'azure-csv':
      return azureCsv(plan);
    case 'jsonl':
      return jsonLines(plan);
    case 'npy':
      return npy(plan);
  }
}

// Inputs in the layout of Azure's batch CLIP sample, and readers of the job's outputs.
import { spawn, spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { parse } from 'csv-parse/sync';
import { mimeBase64 } from './azure';
import { root, tinyModel } from './env';
import { bin } from './process';

export { mimeBase64 } from './azure';

function csvField(value: string): string {
  return /[",\r\n]/.test(value) ? `"${value.replace(/"/g, '""')}"` : value;
}

/** A CSV as pandas' DataFrame.to_csv writes it: an unnamed index column first, "" as an empty field. */
export function pandasCsv(rows: Array<{ image?: string; text?: string }>, firstIndex = 0): string {
  const lines = [',image,text'];
  rows.forEach((row, i) => lines.push(`${firstIndex + i},${csvField(row.image ?? '')},${csvField(row.text ?? '')}`));
  return `${lines.join('\n')}\n`;
}

/** The rows of each file of an Azure-style input folder. */
export type InputFiles = Record<string, Array<{ image?: string; text?: string }>>;

/**
 * Azure's sample: files of image-only, text-only and image+text rows named
 * `<first index>batch_input.csv` (the index continues across files, as the
 * sample slices one DataFrame).
 */
export function azureFolder(
  dir: string,
  parts: { images: Uint8Array[]; texts: string[]; both: Array<[Uint8Array, string]> },
): InputFiles {
  fs.mkdirSync(dir, { recursive: true });
  const files: InputFiles = {};
  let index = 0;
  const write = (rows: Array<{ image?: string; text?: string }>) => {
    if (rows.length === 0) return;
    const name = `${index}batch_input.csv`;
    fs.writeFileSync(path.join(dir, name), pandasCsv(rows, index));
    files[name] = rows;
    index += rows.length;
  };
  write(parts.images.map((bytes) => ({ image: mimeBase64(bytes), text: '' })));
  write(parts.texts.map((text) => ({ image: '', text })));
  write(parts.both.map(([bytes, text]) => ({ image: mimeBase64(bytes), text })));
  return files;
}

/** One line of predictions.csv, parsed. */
export interface Prediction {
  row: number;
  image?: number[];
  text?: number[];
  fileName: string;
  /** The feature fields as written. */
  fields: string[];
}

/** Parses predictions.csv given which feature columns the job has. */
export function readPredictions(file: string, columns: { image: boolean; text: boolean }): Prediction[] {
  const records = parse(fs.readFileSync(file), { relax_column_count: true }) as string[][];
  const width = 2 + Number(columns.image) + Number(columns.text);
  return records.map((record) => {
    if (record.length !== width) throw new Error(`Expected ${width} fields but found ${record.length}`);
    const out: Prediction = { row: Number(record[0]), fileName: record[width - 1], fields: record.slice(1, width - 1) };
    let k = 1;
    if (columns.image) {
      if (record[k]) out.image = JSON.parse(record[k]) as number[];
      k += 1;
    }
    if (columns.text && record[k]) out.text = JSON.parse(record[k]) as number[];
    return out;
  });
}

/** Reads a float32 .npy file written by the job: its shape and values. */
export function readNpy(file: string): { shape: number[]; data: Float32Array } {
  const bytes = fs.readFileSync(file);
  if (bytes.toString('latin1', 0, 6) !== '\x93NUMPY') throw new Error(`${file} is not .npy`);
  const headerLength = bytes.readUInt16LE(8);
  const header = bytes.toString('latin1', 10, 10 + headerLength);
  const shape = /'shape': \((\d+), (\d+)\)/.exec(header)!.slice(1).map(Number);
  const start = 10 + headerLength;
  const data = new Float32Array(bytes.buffer.slice(bytes.byteOffset + start, bytes.byteOffset + bytes.length));
  return { shape, data };
}

/** Runs the CLI to the end. */
export function runCli(args: string[], env: NodeJS.ProcessEnv = {}): SpawnSyncReturns<string> {
  return spawnSync(process.execPath, [bin, ...args], {
    cwd: root,
    encoding: 'utf8',
    timeout: 300_000,
    env: { ...process.env, ...env },
  });
}

/** Starts the CLI; resolves with its exit code, signal and stderr once it ends. */
export function startCli(args: string[]) {
  const child = spawn(process.execPath, [bin, ...args], { cwd: root, stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr.setEncoding('utf8').on('data', (chunk: string) => (stderr += chunk));
  const ended = new Promise<{ code: number | null; signal: NodeJS.Signals | null; stderr: string }>((resolve) =>
    child.on('close', (code, signal) => resolve({ code, signal, stderr })),
  );
  return { child, ended };
}

/** Largest |a - b| between a parsed feature row and a float32 vector. */
export function featureDiff(a: ArrayLike<number> | undefined, b: ArrayLike<number> | undefined): number {
  if (!a || !b || a.length !== b.length) return Infinity;
  let max = 0;
  for (let i = 0; i < a.length; i++) max = Math.max(max, Math.abs(a[i] - b[i]));
  return max;
}

/** The objects of a JSON Lines output file, in order; none when the file is not there. */
export function readJsonLines(file: string): Array<Record<string, any>> {
  if (!fs.existsSync(file)) return [];
  return fs
    .readFileSync(file, 'utf8')
    .split('\n')
    .filter((line) => line.trim() !== '')
    .map((line) => JSON.parse(line) as Record<string, any>);
}

/** `batch` with the tiny model on the CPU, then `more`. */
export function batchArgs(input: string, output: string, ...more: string[]): string[] {
  return ['batch', '--model', tinyModel, '--device', 'cpu', '--input', input, '--output', output, ...more];
}

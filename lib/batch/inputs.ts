import fs from 'node:fs';
import path from 'node:path';
import { parse, type Options as CsvOptions } from 'csv-parse';
import { ClipError, invalidArgument } from '../errors';

/** What one input file holds. */
export type InputKind = 'csv' | 'jsonl' | 'image';

/** One input file of a job, as listed (before scanning). */
export interface InputFile {
  /** Path relative to the input root with `/` separators; the `file_name` of the outputs. */
  name: string;
  kind: InputKind;
  size: number;
  mtimeMs: number;
}

/** The image file extensions a folder input takes (any case). */
export const IMAGE_EXTENSIONS = new Set(['.jpg', '.jpeg', '.png', '.webp', '.gif', '.bmp']);
const CSV_EXTENSIONS = new Set(['.csv']);
const JSONL_EXTENSIONS = new Set(['.jsonl', '.ndjson']);

/** The kind of a file by its extension, or undefined when a job does not take it. */
export function kindOf(fileName: string): InputKind | undefined {
  const extension = path.extname(fileName).toLowerCase();
  if (CSV_EXTENSIONS.has(extension)) return 'csv';
  if (JSONL_EXTENSIONS.has(extension)) return 'jsonl';
  if (IMAGE_EXTENSIONS.has(extension)) return 'image';
  return undefined;
}

/** Code-unit order: the same on every machine and locale. */
export function compareNames(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** The files of a job: root is the folder names are relative to. */
export interface InputListing {
  root: string;
  files: InputFile[];
  /** Files in the folder that no reader takes (neither CSV, JSON Lines nor an image). */
  ignored: number;
}

/**
 * Lists a job's inputs: one file, or every CSV, JSON Lines and image file
 * under a folder (recursively; names starting with a dot and the job's
 * own output folder are skipped), sorted by relative path.
 *
 * Rejects with `CLIP_INVALID_ARGUMENT` when the path does not exist, a
 * single file has an extension no reader takes, or a folder holds nothing usable.
 */
export async function listInputs(inputPath: string, outputDir?: string): Promise<InputListing> {
  const resolved = path.resolve(inputPath);
  let stat: fs.Stats;
  try {
    stat = await fs.promises.stat(resolved);
  } catch {
    throw new ClipError(
      'CLIP_INVALID_ARGUMENT',
      `Expected an existing file or folder for input but received "${inputPath}"`,
    );
  }
  if (stat.isFile()) {
    const kind = kindOf(resolved);
    if (!kind) {
      throw new ClipError(
        'CLIP_INVALID_ARGUMENT',
        `Expected a .csv, .jsonl or image file (jpg, jpeg, png, webp, gif, bmp) for input but received "${inputPath}"`,
      );
    }
    const name = path.basename(resolved);
    return {
      root: path.dirname(resolved),
      files: [{ name, kind, size: stat.size, mtimeMs: stat.mtimeMs }],
      ignored: 0,
    };
  }
  const skip = outputDir ? await realpathOrSelf(path.resolve(outputDir)) : undefined;
  if (skip !== undefined && skip === (await realpathOrSelf(resolved))) {
    throw new ClipError(
      'CLIP_INVALID_ARGUMENT',
      `Expected an output folder other than the input folder but received "${outputDir}"`,
    );
  }
  const files: InputFile[] = [];
  let ignored = 0;
  const walk = async (dir: string, prefix: string): Promise<void> => {
    const entries = await fs.promises.readdir(dir, { withFileTypes: true });
    for (const entry of entries) {
      if (entry.name.startsWith('.')) continue;
      const full = path.join(dir, entry.name);
      const name = prefix ? `${prefix}/${entry.name}` : entry.name;
      let entryStat: fs.Stats;
      try {
        entryStat = await fs.promises.stat(full); // follows links, as a reader would
      } catch {
        ignored += 1;
        continue;
      }
      if (entryStat.isDirectory()) {
        if (skip !== undefined && (await realpathOrSelf(full)) === skip) continue;
        await walk(full, name);
        continue;
      }
      const kind = entryStat.isFile() ? kindOf(entry.name) : undefined;
      if (!kind) {
        ignored += 1;
        continue;
      }
      files.push({ name, kind, size: entryStat.size, mtimeMs: entryStat.mtimeMs });
    }
  };
  await walk(resolved, '');
  files.sort((a, b) => compareNames(a.name, b.name));
  if (files.length === 0) {
    throw new ClipError(
      'CLIP_INVALID_ARGUMENT',
      `Expected CSV, JSON Lines or image files in the input folder but found none in "${inputPath}"`,
    );
  }
  return { root: resolved, files, ignored };
}

async function realpathOrSelf(p: string): Promise<string> {
  try {
    return await fs.promises.realpath(p);
  } catch {
    return p;
  }
}

/** One row of a CSV or JSON Lines input; `""` counts as absent. */
export interface SourceRow {
  image?: string;
  text?: string;
}

/** A row that could not be read (a JSON Lines line that is not an object of strings). */
export type RowOrError = SourceRow | ClipError;

/** Where the columns of a CSV file are. */
export interface CsvLayout {
  /** Index of the `image` column, or -1. */
  image: number;
  /** Index of the `text` column, or -1. */
  text: number;
}

/** What a scan learns about one CSV or JSON Lines file. */
export interface FileScan {
  rows: number;
  hasImage: boolean;
  hasText: boolean;
  /** CSV only. */
  layout?: CsvLayout;
  /** Byte offset where the rows begin (after the header and BOM). */
  start: number;
  /** Byte offsets just past rows partRows-1, 2*partRows-1, …: where row ranges may split. */
  splits: number[];
  /** Byte length of the file. */
  end: number;
}

// Both the scan and the readers parse with the same options, so the byte
// offsets the scan records are record boundaries for the readers.
const CSV_OPTIONS: CsvOptions = {
  bom: true,
  info: true,
  record_delimiter: ['\r\n', '\n'],
  skip_empty_lines: true,
  relax_column_count: true,
};

function csvLayout(header: string[], file: string): CsvLayout {
  const names = header.map((h) => h.trim());
  const layout = { image: names.indexOf('image'), text: names.indexOf('text') };
  if (layout.image < 0 && layout.text < 0) {
    throw new ClipError(
      'CLIP_INVALID_ARGUMENT',
      `Expected a header with an "image" and/or "text" column in ${file} but received ${JSON.stringify(header.join(','))}`,
    );
  }
  return layout;
}

function csvError(error: unknown, file: string): ClipError {
  const message = (error as Error).message ?? String(error);
  return new ClipError('CLIP_INVALID_ARGUMENT', `Cannot parse ${file} as CSV: ${message}`, { cause: error });
}

/**
 * Reads a CSV file once: header, row count, whether any row has an image or
 * text, and the byte offsets of every partRows-th row boundary.
 */
export async function scanCsv(file: string, name: string, partRows: number): Promise<FileScan> {
  const parser = fs.createReadStream(file).pipe(parse(CSV_OPTIONS));
  let layout: CsvLayout | undefined;
  const scan: FileScan = { rows: 0, hasImage: false, hasText: false, start: 0, splits: [], end: 0 };
  try {
    for await (const { record, info } of parser as AsyncIterable<{ record: string[]; info: { bytes: number } }>) {
      if (!layout) {
        layout = csvLayout(record, name);
        scan.layout = layout;
        scan.start = info.bytes;
        continue;
      }
      if (!scan.hasImage && layout.image >= 0 && record[layout.image]) scan.hasImage = true;
      if (!scan.hasText && layout.text >= 0 && record[layout.text]) scan.hasText = true;
      scan.rows += 1;
      if (scan.rows % partRows === 0) scan.splits.push(info.bytes);
    }
  } catch (error) {
    if (error instanceof ClipError) throw error;
    throw csvError(error, name);
  }
  if (!layout) throw new ClipError('CLIP_INVALID_ARGUMENT', `Expected a header line in ${name} but the file is empty`);
  scan.end = (await fs.promises.stat(file)).size;
  return scan;
}

/** The rows of a CSV byte range [start, end) that holds whole records only. */
export async function* readCsvRows(
  file: string,
  name: string,
  layout: CsvLayout,
  start: number,
  end: number,
): AsyncGenerator<SourceRow> {
  if (end <= start) return;
  const parser = fs.createReadStream(file, { start, end: end - 1 }).pipe(parse(CSV_OPTIONS));
  try {
    for await (const { record } of parser as AsyncIterable<{ record: string[] }>) {
      const row: SourceRow = {};
      if (layout.image >= 0 && record[layout.image]) row.image = record[layout.image];
      if (layout.text >= 0 && record[layout.text]) row.text = record[layout.text];
      yield row;
    }
  } catch (error) {
    throw csvError(error, name);
  }
}

/**
 * Lines of a byte range with the byte offset just past each; blank lines
 * (whitespace only) are skipped, a trailing `\r` is dropped.
 */
async function* readLines(file: string, start: number, end?: number): AsyncGenerator<{ line: string; next: number }> {
  if (end !== undefined && end <= start) return;
  const stream = fs.createReadStream(file, { start, end: end === undefined ? undefined : end - 1 });
  let pending: Buffer[] = [];
  let pendingLength = 0;
  let offset = start; // file offset of pending[0][0]
  const emit = (bytes: Buffer, next: number) => {
    let text = bytes.toString('utf8');
    if (text.endsWith('\r')) text = text.slice(0, -1);
    return text.trim() === '' ? undefined : { line: text, next };
  };
  for await (const chunk of stream as AsyncIterable<Buffer>) {
    let from = 0;
    for (;;) {
      const newline = chunk.indexOf(0x0a, from);
      if (newline < 0) break;
      const piece = chunk.subarray(from, newline);
      const bytes = pendingLength ? Buffer.concat([...pending, piece]) : piece;
      const next = offset + bytes.length + 1;
      pending = [];
      pendingLength = 0;
      offset = next;
      const item = emit(bytes, next);
      if (item) yield item;
      from = newline + 1;
    }
    if (from < chunk.length) {
      pending.push(chunk.subarray(from));
      pendingLength += chunk.length - from;
    }
  }
  if (pendingLength) {
    const item = emit(Buffer.concat(pending), offset + pendingLength);
    if (item) yield item;
  }
}

function jsonRow(line: string, name: string, row: number): RowOrError {
  let value: unknown;
  try {
    value = JSON.parse(line);
  } catch (error) {
    return new ClipError(
      'CLIP_INVALID_ARGUMENT',
      `Expected a JSON object for row ${row} of ${name} but the line is not JSON`,
      { cause: error },
    );
  }
  if (value === null || typeof value !== 'object' || Array.isArray(value)) {
    return invalidArgument('a JSON object', `row ${row} of ${name}`, value);
  }
  const { image, text } = value as { image?: unknown; text?: unknown };
  const result: SourceRow = {};
  for (const [key, field] of [
    ['image', image],
    ['text', text],
  ] as const) {
    if (field === undefined || field === null || field === '') continue;
    if (typeof field !== 'string') return invalidArgument('a string', `${key} in row ${row} of ${name}`, field);
    result[key] = field;
  }
  return result;
}

/** Like {@link scanCsv} for JSON Lines: one object per non-blank line with optional `image` and `text` strings. */
export async function scanJsonl(file: string, name: string, partRows: number): Promise<FileScan> {
  const scan: FileScan = { rows: 0, hasImage: false, hasText: false, start: 0, splits: [], end: 0 };
  for await (const { line, next } of readLines(file, 0)) {
    const row = jsonRow(line, name, scan.rows);
    if (!(row instanceof ClipError)) {
      if (row.image) scan.hasImage = true;
      if (row.text) scan.hasText = true;
    }
    scan.rows += 1;
    if (scan.rows % partRows === 0) scan.splits.push(next);
  }
  scan.end = (await fs.promises.stat(file)).size;
  return scan;
}

/** The rows of a JSON Lines byte range; a bad line is a row error, numbered from firstRow. */
export async function* readJsonlRows(
  file: string,
  name: string,
  start: number,
  end: number,
  firstRow: number,
): AsyncGenerator<RowOrError> {
  let row = firstRow;
  for await (const { line } of readLines(file, start, end)) yield jsonRow(line, name, row++);
}

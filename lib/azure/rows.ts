import { ClipError, invalidArgument } from '../errors';
import { parseImageSource, type ImageSource } from './image_string';
import type { ScoreRowInput } from './types';

/** A ClipError failing one row: `row` is its 0-based position in `data` order (or in its input file). */
export type RowError = ClipError & { row: number };

/**
 * The error of one row: the reason's code and message, with `row` (and `index`, the same number). Whoever
 * shows it to people names the row (the endpoint's answer starts its message with `row N: `).
 */
export function rowError(row: number, error: ClipError): RowError {
  return new ClipError(error.code, error.message, { index: row, row, cause: error }) as RowError;
}

/** True for the row errors of {@link rowError}. */
export function isRowError(value: unknown): value is RowError {
  return value instanceof ClipError && typeof (value as Partial<RowError>).row === 'number';
}

/** Either value of a cell that means "this row has no such input". */
function isAbsent(value: unknown): boolean {
  return value === undefined || value === null || value === '';
}

/**
 * Checks one row of {@link scoreRows}: strings or absent, and at least one
 * input. Empty strings and null count as absent, as Azure sends `""` for the
 * missing column. Returns the row's error instead of throwing.
 */
export function checkRow(input: unknown, row: number): ScoreRowInput | RowError {
  if (input === null || typeof input !== 'object' || Array.isArray(input)) {
    return rowError(row, invalidArgument('an object with image and/or text', 'the row', input));
  }
  const { image, text } = input as Record<string, unknown>;
  const out: ScoreRowInput = {};
  if (!isAbsent(image)) {
    if (typeof image !== 'string') {
      return rowError(row, invalidArgument('a string (http(s) URL, base64 or data: URI)', 'image', image));
    }
    out.image = image;
  }
  if (!isAbsent(text)) {
    if (typeof text !== 'string') return rowError(row, invalidArgument('a string', 'text', text));
    out.text = text;
  }
  if (out.image === undefined && out.text === undefined) {
    return rowError(
      row,
      new ClipError('CLIP_INVALID_ARGUMENT', 'Expected an image or a text for the row but received neither'),
    );
  }
  return out;
}

const COLUMNS = new Set(['image', 'text']);

/**
 * Checks the split-format body of `POST /score` and returns its rows in
 * `data` order. Columns other than `image` and `text` are ignored, as a
 * DataFrame-based scorer ignores them; rows are checked by {@link checkRow}
 * later, so every row error carries its row.
 *
 * Throws `CLIP_INVALID_ARGUMENT` for a bad shape: no `input_data`, columns
 * that are not distinct strings or name neither `image` nor `text`, `data`
 * rows of the wrong length, or an `index` whose length differs from `data`'s.
 */
export function parseScoreRequest(request: unknown): Array<Record<string, unknown>> {
  if (request === null || typeof request !== 'object' || Array.isArray(request)) {
    throw invalidArgument('a JSON object with input_data', 'the request body', request);
  }
  const inputData = (request as Record<string, unknown>).input_data;
  if (inputData === null || typeof inputData !== 'object' || Array.isArray(inputData)) {
    throw invalidArgument('an object with columns and data (split format)', 'input_data', inputData);
  }
  const { columns, data, index } = inputData as Record<string, unknown>;
  if (!Array.isArray(columns)) throw invalidArgument('an array of column names', 'input_data.columns', columns);
  const seen = new Set<string>();
  columns.forEach((column, i) => {
    if (typeof column !== 'string') throw invalidArgument('a column name string', `input_data.columns[${i}]`, column);
    if (seen.has(column)) throw invalidArgument('distinct column names', 'input_data.columns', column);
    seen.add(column);
  });
  const names = columns as string[];
  if (!names.some((column) => COLUMNS.has(column))) {
    throw invalidArgument('columns including "image" and/or "text"', 'input_data.columns', JSON.stringify(columns));
  }
  if (!Array.isArray(data)) throw invalidArgument('an array of rows', 'input_data.data', data);
  if (index !== undefined && index !== null) {
    if (!Array.isArray(index)) throw invalidArgument('an array', 'input_data.index', index);
    if (index.length !== data.length) {
      throw invalidArgument(`an array as long as input_data.data (${data.length})`, 'input_data.index', index);
    }
  }
  const imageColumn = names.indexOf('image');
  const textColumn = names.indexOf('text');
  return (data as unknown[]).map((cells, row) => {
    if (!Array.isArray(cells) || cells.length !== names.length) {
      throw rowError(row, invalidArgument(`an array of ${names.length} values`, `input_data.data[${row}]`, cells));
    }
    const values: unknown[] = cells;
    return {
      image: imageColumn >= 0 ? values[imageColumn] : undefined,
      text: textColumn >= 0 ? values[textColumn] : undefined,
    };
  });
}

/** The inputs of a list of rows, split by encoder: what {@link splitRows} returns. */
export interface RowSplit {
  /** The rows with an image, in row order: the row's position in the list and where its image is. */
  images: Array<{ at: number; source: ImageSource }>;
  /** The rows with text, in row order. */
  texts: Array<{ at: number; text: string }>;
  /** The rows that failed their checks, by position in the list. */
  errors: Map<number, RowError>;
}

/** Options of {@link splitRows}. */
export interface SplitOptions {
  /** The row number of the row at a position (its errors' `row`). Default: the position. */
  rowNumber?: (at: number) => number;
  /**
   * Throw the first failing row's error, and check nothing after it: a body of a million bad rows must not
   * build a million errors (seconds of event loop and gigabytes of heap).
   */
  failFast?: boolean;
}

/**
 * Checks rows as the Azure contract reads them ({@link checkRow}, image strings by
 * {@link parseImageSource}) and splits them into the images and texts to embed: the one reading of rows
 * that `score`, `scoreRows` and the batch job share. A failing row is in `errors` only, never in
 * `images` or `texts`.
 *
 * With `failFast`, throws the first failing row's error (`CLIP_INVALID_ARGUMENT`, `CLIP_URL_FORBIDDEN`).
 */
export function splitRows(rows: readonly unknown[], options: SplitOptions = {}): RowSplit {
  const split: RowSplit = { images: [], texts: [], errors: new Map() };
  const fail = (at: number, error: RowError) => {
    if (options.failFast) throw error;
    split.errors.set(at, error);
  };
  for (let at = 0; at < rows.length; at++) {
    const row = options.rowNumber ? options.rowNumber(at) : at;
    const checked = checkRow(rows[at], row);
    if (isRowError(checked)) {
      fail(at, checked);
      continue;
    }
    if (checked.image !== undefined) {
      let source: ImageSource;
      try {
        source = parseImageSource(checked.image);
      } catch (error) {
        fail(at, rowError(row, error as ClipError));
        continue;
      }
      split.images.push({ at, source });
    }
    if (checked.text !== undefined) split.texts.push({ at, text: checked.text });
  }
  return split;
}

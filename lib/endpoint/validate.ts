import { ClipError, invalidArgument, type ClipErrorCode } from '../errors';
import type { ScoreRowInput } from './types';

/**
 * Codes of the endpoint's contract, next to {@link ClipErrorCode}: the HTTP
 * layer ({@link createServer}) answers with them, and `score` rejects with
 * `CLIP_REQUEST_TOO_LARGE`; no other call of the library does.
 */
export const ENDPOINT_ERROR_CODES = [
  'CLIP_UNAUTHORIZED',
  'CLIP_NOT_FOUND',
  'CLIP_REQUEST_TOO_LARGE',
  'CLIP_REQUEST_TIMEOUT',
  'CLIP_HEADERS_TOO_LARGE',
  'CLIP_UNSUPPORTED_MEDIA_TYPE',
  'CLIP_NOT_READY',
] as const;

/** A code of {@link ENDPOINT_ERROR_CODES}. */
export type EndpointErrorCode = (typeof ENDPOINT_ERROR_CODES)[number];

/** A ClipError failing one row: `row` is its 0-based position in `data` order. */
export type RowError = ClipError & { row: number };

/** A ClipError with a library code or one of the HTTP layer's. */
export function endpointError(
  code: ClipErrorCode | EndpointErrorCode,
  message: string,
  options: { index?: number; cause?: unknown } = {},
): ClipError {
  return new ClipError(code as ClipErrorCode, message, options);
}

/** The error of one row: its message starts with `row N: `, and it carries `row`. */
export function rowError(row: number, error: ClipError): RowError {
  const failed = endpointError(error.code, `row ${row}: ${error.message}`, { index: row, cause: error }) as RowError;
  failed.row = row;
  return failed;
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
  if (!columns.some((column) => COLUMNS.has(column))) {
    throw invalidArgument('columns including "image" and/or "text"', 'input_data.columns', JSON.stringify(columns));
  }
  if (!Array.isArray(data)) throw invalidArgument('an array of rows', 'input_data.data', data);
  if (index !== undefined && index !== null) {
    if (!Array.isArray(index)) throw invalidArgument('an array', 'input_data.index', index);
    if (index.length !== data.length) {
      throw invalidArgument(
        `an array as long as input_data.data (${data.length})`,
        'input_data.index',
        index,
      );
    }
  }
  const imageColumn = columns.indexOf('image');
  const textColumn = columns.indexOf('text');
  return data.map((cells, row) => {
    if (!Array.isArray(cells) || cells.length !== columns.length) {
      throw rowError(row, invalidArgument(`an array of ${columns.length} values`, `input_data.data[${row}]`, cells));
    }
    return {
      image: imageColumn >= 0 ? cells[imageColumn] : undefined,
      text: textColumn >= 0 ? cells[textColumn] : undefined,
    };
  });
}

/** A finite integer option >= min, or its default. */
export function checkInteger(value: unknown, name: string, min: number, fallback: number): number {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw invalidArgument(`an integer >= ${min}`, name, value);
  }
  return value;
}

/** A boolean option, or its default. */
export function checkBoolean(value: unknown, name: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw invalidArgument('a boolean', name, value);
  return value;
}

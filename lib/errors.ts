/**
 * Every error clip-native rejects with is a {@link ClipError} carrying one of
 * these stable codes. The same list lives in native/core/prep/errors.h; a test
 * keeps the two equal.
 */
export const ERROR_CODES = [
  'CLIP_INVALID_ARGUMENT',
  'CLIP_MODEL_LOAD_FAILED',
  'CLIP_IMAGE_DECODE_FAILED',
  'CLIP_UNSUPPORTED_IMAGE_FORMAT',
  'CLIP_IMAGE_TOO_LARGE',
  'CLIP_QUEUE_FULL',
  'CLIP_ABORTED',
  'CLIP_DISPOSED',
  'CLIP_DEVICE_UNAVAILABLE',
  'CLIP_IMAGE_FETCH_FAILED',
  'CLIP_URL_FORBIDDEN',
  'CLIP_ADDON_UNAVAILABLE',
  'CLIP_ERROR_THRESHOLD_EXCEEDED',
  'CLIP_INTERNAL',
] as const;

/**
 * The codes only the HTTP endpoint answers with, next to {@link ERROR_CODES}; `score` also rejects with
 * `CLIP_REQUEST_TOO_LARGE`. The native layer never reports them.
 */
export const HTTP_ERROR_CODES = [
  'CLIP_UNAUTHORIZED',
  'CLIP_NOT_FOUND',
  'CLIP_REQUEST_TOO_LARGE',
  'CLIP_REQUEST_TIMEOUT',
  'CLIP_HEADERS_TOO_LARGE',
  'CLIP_UNSUPPORTED_MEDIA_TYPE',
  'CLIP_NOT_READY',
] as const;

/** A stable error code; match on it, never on the message. */
export type ClipErrorCode = (typeof ERROR_CODES)[number] | (typeof HTTP_ERROR_CODES)[number];

/** Options of {@link ClipError}. */
export interface ClipErrorOptions {
  /** Position of the failing item in the input list, when one item failed. */
  index?: number;
  /** The failing row (0-based) of an Azure request or batch input, for row-level errors. */
  row?: number;
  /** The underlying error or abort reason. */
  cause?: unknown;
}

/** The error type of clip-native: a message for people and a `code` for programs. */
export class ClipError extends Error {
  /** One of {@link ERROR_CODES}. */
  readonly code: ClipErrorCode;
  /** Position of the failing item in the input list, when one item failed. */
  readonly index?: number;
  /** The failing row (0-based) of an Azure request or batch input, for row-level errors. */
  readonly row?: number;

  constructor(code: ClipErrorCode, message: string, options: ClipErrorOptions = {}) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'ClipError';
    this.code = code;
    if (options.index !== undefined) this.index = options.index;
    if (options.row !== undefined) this.row = options.row;
  }
}

const KNOWN = new Set<string>(ERROR_CODES);

/** Turns whatever the native layer threw or returned into a ClipError (native codes only). */
export function toClipError(error: unknown, index?: number, prefix?: string): ClipError {
  if (error instanceof ClipError && index === undefined && prefix === undefined) return error;
  const source = error as { code?: unknown; message?: unknown } | null;
  const code =
    source && typeof source.code === 'string' && KNOWN.has(source.code)
      ? (source.code as ClipErrorCode)
      : 'CLIP_INTERNAL';
  const message = source && typeof source.message === 'string' ? source.message : String(error);
  return new ClipError(code, prefix ? `${prefix}: ${message}` : message, { index, cause: error });
}

/** Short, safe description of a value for "Expected … but received …" messages. */
export function describe(value: unknown): string {
  if (value === null) return 'null';
  if (value === undefined) return 'undefined';
  if (typeof value === 'string') {
    return value.length > 40 ? `a string of length ${value.length}` : JSON.stringify(value);
  }
  if (typeof value === 'number' || typeof value === 'boolean' || typeof value === 'bigint') {
    return `${typeof value} ${String(value)}`;
  }
  if (Array.isArray(value)) return `an array of length ${value.length}`;
  if (ArrayBuffer.isView(value)) return `a ${value.constructor.name} of ${value.byteLength} bytes`;
  if (value instanceof ArrayBuffer) return `an ArrayBuffer of ${value.byteLength} bytes`;
  if (typeof value === 'function') return 'a function';
  const name = value.constructor?.name;
  return name && name !== 'Object' ? `an instance of ${name}` : 'an object';
}

/** `a, b or c`: a list of choices as the messages name them. */
export function orList(items: readonly string[]): string {
  return items.length < 2 ? items.join('') : `${items.slice(0, -1).join(', ')} or ${items[items.length - 1]}`;
}

/** Builds the CLIP_INVALID_ARGUMENT error of the boundary's one message form. */
export function invalidArgument(what: string, name: string, value: unknown): ClipError {
  return new ClipError('CLIP_INVALID_ARGUMENT', `Expected ${what} for ${name} but received ${describe(value)}`);
}

import { parseArgs, type ParseArgsConfig } from 'node:util';
import { orList } from '../errors';
import { DEVICE_PATTERN, DTYPES, type Device, type DType } from '../model';

/** A bad command line: printed as one line, exit status 2. */
export class UsageError extends Error {}

/**
 * parseArgs in strict mode, with its errors turned into one-line
 * UsageErrors. `--help` is handled by the caller.
 */
export function parseCommandLine(
  args: string[],
  options: NonNullable<ParseArgsConfig['options']>,
  allowPositionals = false,
): { values: Record<string, string | boolean | (string | boolean)[] | undefined>; positionals: string[] } {
  try {
    return parseArgs({
      args,
      options: { ...options, help: { type: 'boolean', short: 'h' } },
      strict: true,
      allowPositionals,
    });
  } catch (error) {
    throw new UsageError((error as Error).message.split('\n')[0]);
  }
}

/** A required string flag. */
export function required(values: Record<string, unknown>, name: string): string {
  const value = values[name];
  if (typeof value !== 'string' || value.length === 0) throw new UsageError(`--${name} is required`);
  return value;
}

/** A flag's value as the command line had it. */
function flagText(value: unknown): string {
  return typeof value === 'string' ? value : JSON.stringify(value);
}

/**
 * An optional integer flag from `min` (to `max`): the one check of the commands' integer flags, as
 * {@link checkInteger} is the library's.
 */
export function integerFlag(
  values: Record<string, unknown>,
  name: string,
  min: number,
  max?: number,
): number | undefined {
  const value = values[name];
  if (value === undefined) return undefined;
  const text = flagText(value);
  const n = Number(text);
  if (text.trim() === '' || !Number.isInteger(n) || n < min || (max !== undefined && n > max)) {
    const range = max === undefined ? `an integer >= ${min}` : `an integer from ${min} to ${max}`;
    throw new UsageError(`--${name} must be ${range}, not "${text}"`);
  }
  return n;
}

/** `--device` and `--dtype`, checked against the library's lists (defaults: auto, float32). */
export function deviceFlags(values: Record<string, unknown>): { device: Device; dtype: DType } {
  const device = values.device ?? 'auto';
  if (typeof device !== 'string' || !DEVICE_PATTERN.test(device)) {
    throw new UsageError(`--device must be auto, cpu, cuda or cuda:N, not "${flagText(device)}"`);
  }
  const dtype = values.dtype ?? 'float32';
  if (typeof dtype !== 'string' || !(DTYPES as readonly string[]).includes(dtype)) {
    throw new UsageError(`--dtype must be ${orList(DTYPES)}, not "${flagText(dtype)}"`);
  }
  return { device: device as Device, dtype: dtype as DType };
}

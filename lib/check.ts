import { invalidArgument } from './errors';

/**
 * An integer option >= `min`: `fallback` when absent (`undefined` without one).
 * Throws `CLIP_INVALID_ARGUMENT` for anything else (fractions, NaN, infinities, other types).
 */
export function checkInteger(value: unknown, name: string, min: number): number | undefined;
export function checkInteger(value: unknown, name: string, min: number, fallback: number): number;
export function checkInteger(value: unknown, name: string, min: number, fallback?: number): number | undefined {
  if (value === undefined) return fallback;
  if (typeof value !== 'number' || !Number.isInteger(value) || value < min) {
    throw invalidArgument(`an integer >= ${min}`, name, value);
  }
  return value;
}

/** A boolean option, or `fallback` when absent. Throws `CLIP_INVALID_ARGUMENT`. */
export function checkBoolean(value: unknown, name: string, fallback: boolean): boolean {
  if (value === undefined) return fallback;
  if (typeof value !== 'boolean') throw invalidArgument('a boolean', name, value);
  return value;
}

/**
 * Text form of float32 embeddings: the shortest decimal that reads back
 * (as a double, then rounded to float32) to the same float32 value, in
 * JavaScript's number syntax (`Number.prototype.toString`). Deterministic,
 * about 60% of the size of printing the widened double, and exact: a reader
 * that parses with float32 precision gets the model's bits back.
 */

const scratch = new Float32Array(1);
const scratchBits = new Uint32Array(scratch.buffer);
const POW10: number[] = Array.from({ length: 23 }, (_, i) => 10 ** i);

/** The reference definition: the fewest significant digits that round-trip. Slow (several toPrecision calls). */
function shortestByPrecision(value: number): string {
  let low = 1;
  let high = 9; // 9 significant digits always round-trip a float32
  while (low < high) {
    const middle = (low + high) >> 1;
    if (Math.fround(Number(value.toPrecision(middle))) === value) high = middle;
    else low = middle + 1;
  }
  return String(Number(value.toPrecision(low)));
}

/** The p-digit candidate n / 10^j inside (low, high), or -1 when there is none. */
function candidate(low: number, high: number, magnitude: number, j: number): number {
  const scale = POW10[j];
  const first = Math.ceil(low * scale);
  const last = Math.floor(high * scale);
  if (first > last) return -1;
  const nearest = Math.round(magnitude * scale);
  return nearest < first ? first : nearest > last ? last : nearest;
}

/**
 * Shortest round-trip text of a float32 value (given as the number it
 * widens to). Non-finite values, which JSON cannot hold, become `null`.
 *
 * Embedding components lie almost all in [1e-4, 1e3), where every product
 * below is exact in double precision: the rounding interval of the float32
 * is scaled by 10^j and searched for an integer, starting at 8 digits
 * (where nearly all values end). Anything unusual takes the reference path;
 * a test checks both paths agree over millions of bit patterns.
 */
export function formatFloat32(value: number): string {
  if (!Number.isFinite(value)) return 'null';
  if (value === 0) return '0';
  const magnitude = value < 0 ? -value : value;
  if (!(magnitude >= 1e-4 && magnitude < 1e3)) return shortestByPrecision(value);
  scratch[0] = magnitude;
  const bits = scratchBits[0];
  scratchBits[0] = bits + 1;
  const high = (magnitude + scratch[0]) / 2;
  scratchBits[0] = bits - 1;
  const low = (magnitude + scratch[0]) / 2;
  const exponent = Math.floor(Math.log10(magnitude));
  // j decimal places give p = j + exponent + 1 significant digits.
  let j = 7 - exponent;
  let n = candidate(low, high, magnitude, j);
  if (n < 0) {
    j = 8 - exponent;
    if (j > 12) return shortestByPrecision(value);
    n = candidate(low, high, magnitude, j);
    if (n < 0) return shortestByPrecision(value);
  } else {
    while (j > 1 && j > 1 - exponent) {
      const shorter = candidate(low, high, magnitude, j - 1);
      if (shorter < 0) break;
      j -= 1;
      n = shorter;
    }
    if (j <= 1 || j <= 1 - exponent) return shortestByPrecision(value);
  }
  const decimal = n / POW10[j];
  if (Math.fround(decimal) !== magnitude) return shortestByPrecision(value);
  const text = String(decimal);
  return value < 0 ? `-${text}` : text;
}

/** @internal The reference path, for the test that compares the two. */
export const formatFloat32Reference = (value: number): string =>
  !Number.isFinite(value) ? 'null' : value === 0 ? '0' : shortestByPrecision(value);

/** A vector as a JSON array of {@link formatFloat32} numbers, without spaces. */
export function formatVector(vector: ArrayLike<number>): string {
  const parts = new Array<string>(vector.length);
  for (let i = 0; i < vector.length; i++) parts[i] = formatFloat32(vector[i]);
  return `[${parts.join(',')}]`;
}

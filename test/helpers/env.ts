import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';

export const root = path.resolve(__dirname, '..', '..');
export const fixtures = path.join(root, 'test', 'fixtures');
export const tinyModel = path.join(fixtures, 'tiny');
export const hfCheckpoint = path.join(fixtures, 'hf-checkpoint');
export const hfModel = path.join(fixtures, 'hf-model');
export const python = process.env.CLIP_PYTHON || path.join(root, '.venv', 'bin', 'python');

/** ../shared/clip-reference when present (CI has it); tests that need it skip otherwise. */
export const reference = (() => {
  const dir = process.env.CLIP_REFERENCE_DIR || path.resolve(root, '..', 'shared', 'clip-reference');
  return fs.existsSync(path.join(dir, 'README.md')) ? dir : undefined;
})();
export const skipWithoutReference = reference ? false : 'needs ../shared/clip-reference';

/** Runs a project Python tool; throws with its stderr on failure. */
export function runPython(args: string[]): string {
  const result = spawnSync(python, args, { cwd: root, encoding: 'utf8', maxBuffer: 64 << 20 });
  if (result.status !== 0) {
    throw new Error(`${args.join(' ')} failed (${result.status}):\n${result.stderr}`);
  }
  return result.stdout;
}

/** Sets environment variable `name` (undefined: unsets it); returns what puts the previous value back. */
export function setEnv(name: string, value: string | undefined): () => void {
  const saved = process.env[name];
  if (value === undefined) delete process.env[name];
  else process.env[name] = value;
  return () => {
    if (saved === undefined) delete process.env[name];
    else process.env[name] = saved;
  };
}

const tempDirs: string[] = [];

/**
 * A fresh folder under the OS temp folder, removed with all it holds when the test process exits (each test file
 * runs in a process of its own), so that runs leave nothing behind: a hub test's caches hold hundreds of MB.
 */
export function tempDir(prefix: string): string {
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), `clip-native-${prefix}-`));
  if (tempDirs.length === 0) {
    process.on('exit', () => {
      for (const created of tempDirs) fs.rmSync(created, { recursive: true, force: true });
    });
  }
  tempDirs.push(dir);
  return dir;
}

/** The fixture images drawn with Pillow (test/fixtures/images: every format and mode), as paths, sorted. */
export function fixtureImages(): string[] {
  const dir = path.join(fixtures, 'images');
  return fs
    .readdirSync(dir)
    .filter((name) => /\.(jpg|png|webp|gif|bmp)$/.test(name))
    .sort()
    .map((name) => path.join(dir, name));
}

export function readF32(file: string): Float32Array {
  const bytes = fs.readFileSync(file);
  return new Float32Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 4).slice();
}

export function readI64(file: string): BigInt64Array {
  const bytes = fs.readFileSync(file);
  return new BigInt64Array(bytes.buffer, bytes.byteOffset, bytes.byteLength / 8).slice();
}

/** Splits a flat [rows, width] array into rows. */
export function rows<T extends Float32Array | BigInt64Array>(flat: T, width: number): T[] {
  const out: T[] = [];
  for (let i = 0; i < flat.length; i += width) out.push(flat.subarray(i, i + width) as T);
  return out;
}

export function maxAbsDiff(a: ArrayLike<number>, b: ArrayLike<number>): number {
  if (a.length !== b.length) return Infinity;
  let max = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= max)) max = Number.isNaN(d) ? Infinity : d;
  }
  return max;
}

export { cosine } from './vectors';

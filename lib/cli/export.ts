import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../native/locate';

/** The Python that runs the exporter: $CLIP_PYTHON, the project venv, else python3. */
export function exporterPython(): string {
  if (process.env.CLIP_PYTHON) return process.env.CLIP_PYTHON;
  const venv = path.join(packageRoot, '.venv', 'bin', 'python');
  return fs.existsSync(venv) ? venv : 'python3';
}

/** `clip-native export …`: the Python exporter (needs only torch), with its own --help. */
export function runExport(args: string[]): number {
  const script = path.join(packageRoot, 'tools', 'export.py');
  const result = spawnSync(exporterPython(), [script, ...args], { stdio: 'inherit' });
  if (result.error) {
    process.stderr.write(`clip-native export: cannot run ${exporterPython()}: ${result.error.message}\n`);
    return 1;
  }
  return result.status ?? 1;
}

import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { packageRoot } from '../native/locate';
import { exporterPython as findPython } from '../hub/python';
import { parseHubReference } from '../hub/reference';
import { parseCommandLine, required, UsageError } from './common';

/** The Python that runs the exporter: $CLIP_PYTHON, the virtualenv, a project .venv, else python3. */
export function exporterPython(): string {
  return findPython(packageRoot);
}

/**
 * `clip-native export ID --out DIR`: downloads a repo id's checkpoint and converts it into DIR (absent or
 * empty), with its source recorded in clip.json.
 */
async function exportRepo(id: string, args: string[]): Promise<number> {
  const { values } = parseCommandLine(args, { out: { type: 'string' } });
  const out = path.resolve(required(values, 'out'));
  if (fs.existsSync(out) && (!fs.statSync(out).isDirectory() || fs.readdirSync(out).length > 0)) {
    throw new UsageError(`--out ${out} exists and is not an empty directory`);
  }
  const reference = parseHubReference(id)!;
  const hub = await import('../hub/index');
  const { hubLoadFailed } = await import('../hub/errors');
  const { checkpoint, commit } = await hub.downloadCheckpoint(reference, { onProgress: hub.streamProgress() });
  try {
    await hub.convertCheckpoint(checkpoint, out, { ...reference, commit });
  } catch (error) {
    throw hubLoadFailed(reference, (error as Error).message, error);
  }
  process.stderr.write(`clip-native export: wrote ${out} from ${id} (commit ${commit})\n`);
  return 0;
}

/**
 * `clip-native export …`: the Python exporter (needs only torch), with its own --help; or, with a repo id
 * first, `export ID --out DIR`.
 */
export function runExport(args: string[]): number | Promise<number> {
  if (args.length > 0 && !args[0].startsWith('-') && parseHubReference(args[0]))
    return exportRepo(args[0], args.slice(1));
  const script = path.join(packageRoot, 'tools', 'export.py');
  const result = spawnSync(exporterPython(), [script, ...args], { stdio: 'inherit' });
  if (result.error) {
    process.stderr.write(`clip-native export: cannot run ${exporterPython()}: ${result.error.message}\n`);
    return 1;
  }
  return result.status ?? 1;
}

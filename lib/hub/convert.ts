import { spawn } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { exporterPython } from './python';

/** The package folder (dist/hub/ or lib/hub/ are two below it): tools/export.py lives there. */
export const packageRoot = path.resolve(__dirname, '..', '..');

/** Where a converted model came from; recorded in its clip.json `source`. */
export interface ModelSource {
  repo: string;
  revision: string;
  commit: string;
}

/** Why a conversion failed, with the fix where there is one. */
export class ConversionError extends Error {}

const HOW_TO =
  'converting a Hugging Face checkpoint needs Python with torch (and safetensors): set CLIP_PYTHON to such a ' +
  'python (python3 -m venv .venv && .venv/bin/pip install torch safetensors), or run `clip-native pull ID` ' +
  'where Python is installed and load the directory it prints (copy it over, or into CLIP_NATIVE_CACHE)';

function run(
  python: string,
  args: string[],
  signal?: AbortSignal,
): Promise<{ status: number | null; stderr: string; error?: Error }> {
  return new Promise((resolve) => {
    // Asynchronous: `serve` keeps answering while the exporter runs.
    const child = spawn(python, args, { stdio: ['ignore', 'ignore', 'pipe'], signal });
    let stderr = '';
    child.stderr.setEncoding('utf8');
    child.stderr.on('data', (chunk: string) => {
      stderr = (stderr + chunk).slice(-8192);
    });
    child.on('error', (error) => resolve({ status: null, stderr, error }));
    child.on('close', (status) => resolve({ status, stderr }));
  });
}

/**
 * Converts a Hugging Face checkpoint folder into a model directory `out` with the project's exporter, and
 * records the source in clip.json. Everything is written into a temporary sibling of `out` that is renamed
 * into place at the end, so `out` is either absent or complete; a failure removes the temporary folder.
 * `out` may exist only as an empty folder, or with `replace` as a model directory that the new one takes the
 * place of (the old one is left as it was if the conversion fails). Rejects with a ConversionError.
 */
export async function convertCheckpoint(
  checkpoint: string,
  out: string,
  source: ModelSource,
  signal?: AbortSignal,
  options: { replace?: boolean } = {},
): Promise<void> {
  const python = exporterPython(packageRoot);
  const parent = path.dirname(path.resolve(out));
  const created = fs.mkdirSync(parent, { recursive: true });
  const tmp = fs.mkdtempSync(path.join(parent, `.${path.basename(out)}.convert-`));
  try {
    const staged = path.join(tmp, 'model');
    const script = path.join(packageRoot, 'tools', 'export.py');
    const result = await run(
      python,
      [script, '--checkpoint', checkpoint, '--out', staged, '--name', source.repo, '--quiet'],
      signal,
    );
    if (result.error) {
      const code = (result.error as NodeJS.ErrnoException).code;
      throw new ConversionError(
        code === 'ENOENT' ? `no Python found (${python}); ${HOW_TO}` : `cannot run ${python}: ${result.error.message}`,
      );
    }
    if (result.status !== 0) {
      if (/No module named '?(torch|safetensors)/.test(result.stderr))
        throw new ConversionError(`${python} has no torch; ${HOW_TO}`);
      if (/No space left on device|Disk quota exceeded/.test(result.stderr)) {
        throw new ConversionError(`disk full while converting into ${parent}`);
      }
      const last = result.stderr.trim().split('\n').pop() ?? '';
      throw new ConversionError(`the exporter (${python}) failed with status ${result.status}: ${last}`);
    }
    const manifestPath = path.join(staged, 'clip.json');
    const manifest = JSON.parse(fs.readFileSync(manifestPath, 'utf8')) as { source?: Record<string, unknown> };
    manifest.source = {
      ...manifest.source,
      kind: 'huggingface',
      repo: source.repo,
      revision: source.revision,
      commit: source.commit,
    };
    fs.writeFileSync(manifestPath, `${JSON.stringify(manifest, null, 2)}\n`);
    try {
      fs.rmdirSync(out); // an empty folder given as --out
    } catch {
      // absent (or not empty: the rename below refuses it)
    }
    if (options.replace && fs.existsSync(out)) {
      // Into the temporary folder, which goes at the end; back into place if the new one cannot move in.
      const previous = path.join(tmp, 'previous');
      fs.renameSync(out, previous);
      try {
        fs.renameSync(staged, out);
      } catch (error) {
        fs.renameSync(previous, out);
        throw error;
      }
    } else {
      fs.renameSync(staged, out);
    }
  } catch (error) {
    fs.rmSync(tmp, { recursive: true, force: true });
    // Leave no empty folders of ours behind either.
    for (let dir = parent; created !== undefined && dir.startsWith(created); dir = path.dirname(dir)) {
      try {
        fs.rmdirSync(dir);
      } catch {
        break;
      }
    }
    throw error;
  }
  fs.rmSync(tmp, { recursive: true, force: true });
}

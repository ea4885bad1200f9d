import fs from 'node:fs';
import path from 'node:path';

/**
 * The Python that runs the exporter, looked for where the build looks for libtorch's: `CLIP_PYTHON`, the
 * activated virtualenv (`VIRTUAL_ENV`), a `.venv` in `root` or a folder above it (the project's), then
 * `python3` on the PATH. Returns where each came from, for error messages.
 */
export function exporterPythonCandidates(
  root: string,
  env: NodeJS.ProcessEnv = process.env,
): { python: string; origin: string }[] {
  const out: { python: string; origin: string }[] = [];
  if (env.CLIP_PYTHON) out.push({ python: env.CLIP_PYTHON, origin: 'CLIP_PYTHON' });
  if (env.VIRTUAL_ENV) out.push({ python: path.join(env.VIRTUAL_ENV, 'bin', 'python'), origin: 'VIRTUAL_ENV' });
  for (let dir = path.resolve(root); ; dir = path.dirname(dir)) {
    const python = path.join(dir, '.venv', 'bin', 'python');
    if (fs.existsSync(python)) out.push({ python, origin: 'a project .venv' });
    if (path.dirname(dir) === dir) break;
  }
  out.push({ python: 'python3', origin: 'python3 on PATH' });
  return out;
}

/** The first candidate that exists (CLIP_PYTHON is taken as given, so a wrong one fails loudly). */
export function exporterPython(root: string, env: NodeJS.ProcessEnv = process.env): string {
  const candidates = exporterPythonCandidates(root, env);
  if (env.CLIP_PYTHON) return env.CLIP_PYTHON;
  return candidates.find((c) => c.python === 'python3' || fs.existsSync(c.python))!.python;
}

import { DEFAULT_MODEL, parseHubReference } from '../hub/reference';
import { parseCommandLine, UsageError } from './common';

const USAGE = `Usage: clip-native pull [ID]

Downloads a Hugging Face CLIP checkpoint (only the files the exporter needs)
and converts it once into the clip-native cache, then prints the model
directory on stdout (progress goes to stderr). ID is org/name or
org/name@revision (a branch, tag or commit); default ${DEFAULT_MODEL}.
Later loads of the same ID need neither network nor Python: use it to bake
a model into a container image.

Environment: HF_ENDPOINT (a mirror), HF_TOKEN (gated or private repos),
HF_HOME / HF_HUB_CACHE (the Hugging Face cache), HF_HUB_OFFLINE=1 (caches
only), CLIP_NATIVE_CACHE (converted models, default ~/.cache/clip-native),
CLIP_PYTHON (the Python with torch that converts).
`;

/** `clip-native pull [ID]`: resolves to the exit status. */
export async function runPull(args: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine(args, {}, true);
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  if (positionals.length > 1) throw new UsageError(`takes one model id, not ${positionals.length}`);
  const id = positionals[0] ?? DEFAULT_MODEL;
  if (!parseHubReference(id))
    throw new UsageError(`Expected a Hugging Face repo id org/name[@revision] for ID but received "${id}"`);
  const { resolveModel, streamProgress } = await import('../hub/index');
  const directory = await resolveModel(id, { onProgress: streamProgress() });
  process.stdout.write(`${directory}\n`);
  return 0;
}

import os from 'node:os';
import path from 'node:path';
import { getHFHubCachePath } from '@huggingface/hub';

/** Where and how the hub is reached, read from the environment as Hugging Face's own clients read it. */
export interface HubSettings {
  /** `HF_ENDPOINT` (a mirror), else https://huggingface.co; no trailing slash. */
  endpoint: string;
  /** `HF_TOKEN` (or the older `HUGGING_FACE_HUB_TOKEN`), sent as a bearer token. */
  token?: string;
  /** The Hugging Face hub cache: `HF_HUB_CACHE`, else `$HF_HOME/hub`, else ~/.cache/huggingface/hub. */
  hubCache: string;
  /** The converted models: `CLIP_NATIVE_CACHE`, else ~/.cache/clip-native. */
  modelCache: string;
  /** `HF_HUB_OFFLINE=1`: never touch the network, use what the caches hold. */
  offline: boolean;
}

const TRUE = new Set(['1', 'on', 'yes', 'true']);

/** The settings the environment gives (read at call time, so a process may change them). */
export function hubSettings(env: NodeJS.ProcessEnv = process.env): HubSettings {
  const endpoint = (env.HF_ENDPOINT || 'https://huggingface.co').replace(/\/+$/, '');
  const token = env.HF_TOKEN || env.HUGGING_FACE_HUB_TOKEN || undefined;
  // @huggingface/hub's own reading of HF_HUB_CACHE / HUGGINGFACE_HUB_CACHE / HF_HOME / XDG_CACHE_HOME,
  // so both clients share one cache; it reads process.env, so another env is resolved here the same way.
  const hubCache =
    env === process.env
      ? getHFHubCachePath()
      : (env.HF_HUB_CACHE ??
        env.HUGGINGFACE_HUB_CACHE ??
        path.join(
          env.HF_HOME ?? path.join(env.XDG_CACHE_HOME ?? path.join(os.homedir(), '.cache'), 'huggingface'),
          'hub',
        ));
  const modelCache =
    env.CLIP_NATIVE_CACHE || path.join(env.XDG_CACHE_HOME || path.join(os.homedir(), '.cache'), 'clip-native');
  const offline = TRUE.has((env.HF_HUB_OFFLINE ?? env.TRANSFORMERS_OFFLINE ?? '').toLowerCase());
  return { endpoint, token, hubCache: path.resolve(hubCache), modelCache: path.resolve(modelCache), offline };
}

/** The cache folder name of a model repo in both caches: `models--org--name`, as huggingface_hub names it. */
export function repoFolderName(repo: string): string {
  return `models--${repo.split('/').join('--')}`;
}

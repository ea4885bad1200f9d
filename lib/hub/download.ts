import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { Readable, Transform } from 'node:stream';
import { pipeline } from 'node:stream/promises';
import type { ReadableStream as WebReadableStream } from 'node:stream/web';
import { HubHttpError } from './errors';
import { isCommitSha, type HubReference } from './reference';
import { repoFolderName, type HubSettings } from './settings';

/** One file of a repo at a commit, as the hub's tree lists it. */
export interface HubFile {
  path: string;
  size: number;
  /** The blob's name in the cache: the LFS sha256 for LFS files, else the git blob sha1. */
  etag: string;
  /** How `etag` checks the bytes. */
  hash: 'sha256' | 'git-sha1';
}

/** Bytes of the selected files done so far, for progress reports. */
export interface DownloadProgress {
  file: string;
  fileBytes: number;
  fileSize: number;
  bytes: number;
  totalBytes: number;
}

/** The files the exporter reads; the others (other frameworks' weights, ONNX, …) are never fetched. */
const REQUIRED = ['config.json', 'vocab.json', 'merges.txt'];
const OPTIONAL = ['preprocessor_config.json', 'tokenizer_config.json', 'special_tokens_map.json'];
// Safetensors first: it loads without pickle and is what the exporter prefers too.
const WEIGHTS: { single: string; index: string; shard: RegExp }[] = [
  { single: 'model.safetensors', index: 'model.safetensors.index.json', shard: /^model-\d+-of-\d+\.safetensors$/ },
  { single: 'pytorch_model.bin', index: 'pytorch_model.bin.index.json', shard: /^pytorch_model-\d+-of-\d+\.bin$/ },
];

/** The subset of a repo's files that a conversion needs; throws naming what is missing. */
export function selectFiles<T extends { path: string }>(files: T[]): T[] {
  const byPath = new Map(files.map((f) => [f.path, f]));
  const missing = REQUIRED.filter((name) => !byPath.has(name));
  if (missing.length > 0) throw new Error(`the repository has no ${missing.join(', ')} (is it a CLIP checkpoint?)`);
  const chosen = [...REQUIRED, ...OPTIONAL.filter((name) => byPath.has(name))].map((name) => byPath.get(name)!);
  for (const weights of WEIGHTS) {
    if (byPath.has(weights.single)) return [...chosen, byPath.get(weights.single)!];
    if (byPath.has(weights.index)) {
      return [...chosen, byPath.get(weights.index)!, ...files.filter((f) => weights.shard.test(f.path))];
    }
  }
  throw new Error('the repository has neither model.safetensors nor pytorch_model.bin');
}

let proxyAgent: import('undici').Dispatcher | undefined;

/**
 * fetch, through the proxy that HTTPS_PROXY / HTTP_PROXY name (NO_PROXY excepted) when one is set: Node's
 * own fetch ignores them before Node 24, so undici's EnvHttpProxyAgent reads them as curl and Python do.
 */
function hubFetch(url: string, init: RequestInit): Promise<Response> {
  const env = process.env;
  if (!(env.HTTPS_PROXY || env.https_proxy || env.HTTP_PROXY || env.http_proxy)) return fetch(url, init);
  // eslint-disable-next-line @typescript-eslint/no-require-imports -- loaded only when a proxy is configured
  const undici = require('undici') as typeof import('undici');
  proxyAgent ??= new undici.EnvHttpProxyAgent();
  // undici's Response is typed apart from Node's global one but has the same members (status, headers, body).
  return undici.fetch(url, {
    ...init,
    dispatcher: proxyAgent,
  }) as Promise<unknown> as Promise<Response>;
}

function headers(settings: HubSettings, extra: Record<string, string> = {}): Record<string, string> {
  return { ...(settings.token ? { authorization: `Bearer ${settings.token}` } : {}), ...extra };
}

/** How long an API call may take before the hub counts as unreachable (huggingface_hub waits 10 s too). */
const API_TIMEOUT_MS = 10_000;

function apiSignal(signal?: AbortSignal): AbortSignal {
  const timeout = AbortSignal.timeout(API_TIMEOUT_MS);
  return signal ? AbortSignal.any([signal, timeout]) : timeout;
}

async function getJson(url: string, settings: HubSettings, signal?: AbortSignal): Promise<unknown> {
  const response = await hubFetch(url, {
    headers: headers(settings, { accept: 'application/json' }),
    signal: apiSignal(signal),
  });
  if (!response.ok) {
    await response.body?.cancel();
    throw new HubHttpError(response.status, url, response.headers.get('x-error-code') ?? undefined);
  }
  return response.json();
}

const repoPath = (repo: string) => repo.split('/').map(encodeURIComponent).join('/');

/**
 * The commit a revision points at, and the files the exporter needs there, from the hub's API
 * (`/api/models/{repo}/revision/{rev}`, then the tree at that commit).
 */
export async function remoteSnapshot(
  reference: HubReference,
  settings: HubSettings,
  signal?: AbortSignal,
): Promise<{ commit: string; files: HubFile[] }> {
  const base = `${settings.endpoint}/api/models/${repoPath(reference.repo)}`;
  const info = (await getJson(`${base}/revision/${encodeURIComponent(reference.revision)}`, settings, signal)) as {
    sha?: unknown;
  };
  if (typeof info.sha !== 'string' || !isCommitSha(info.sha)) {
    throw new Error(`the hub's model info for ${reference.repo} has no commit sha`);
  }
  const commit = info.sha;
  const entries: { type?: string; path?: string; size?: number; oid?: string; lfs?: { oid?: string } }[] = [];
  // The tree pages through a Link header, as @huggingface/hub's listFiles follows it.
  let url: string | undefined = `${base}/tree/${commit}`;
  while (url) {
    const response: Response = await hubFetch(url, {
      headers: headers(settings, { accept: 'application/json' }),
      signal,
    });
    if (!response.ok) {
      await response.body?.cancel();
      throw new HubHttpError(response.status, url, response.headers.get('x-error-code') ?? undefined);
    }
    entries.push(...((await response.json()) as typeof entries));
    url = /<([^>]+)>;\s*rel="next"/.exec(response.headers.get('link') ?? '')?.[1];
  }
  const files: HubFile[] = [];
  for (const entry of entries) {
    if (entry.type !== 'file' || typeof entry.path !== 'string' || typeof entry.size !== 'number') continue;
    const lfs = entry.lfs?.oid;
    if (typeof lfs === 'string' && /^[0-9a-f]{64}$/.test(lfs)) {
      files.push({ path: entry.path, size: entry.size, etag: lfs, hash: 'sha256' });
    } else if (typeof entry.oid === 'string' && /^[0-9a-f]{40}$/.test(entry.oid)) {
      files.push({ path: entry.path, size: entry.size, etag: entry.oid, hash: 'git-sha1' });
    }
  }
  return { commit, files: selectFiles(files) };
}

/** Where a repo lives in the Hugging Face cache. */
export function hubRepoDir(settings: HubSettings, repo: string): string {
  return path.join(settings.hubCache, repoFolderName(repo));
}

/** The commit a revision pointed at when it was last fetched (the cache's refs/), or the revision if it is one. */
export function cachedCommit(repoDir: string, revision: string): string | undefined {
  if (isCommitSha(revision)) return revision;
  try {
    const commit = fs.readFileSync(path.join(repoDir, 'refs', revision), 'utf8').trim();
    return isCommitSha(commit) ? commit : undefined;
  } catch {
    return undefined;
  }
}

/** Records revision -> commit in a cache's refs/ (atomically: a reader sees the old or the new sha). */
export function writeRef(repoDir: string, revision: string, commit: string): void {
  if (revision === commit) return;
  const file = path.join(repoDir, 'refs', revision);
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const tmp = `${file}.${process.pid}.tmp`;
  fs.writeFileSync(tmp, commit);
  fs.renameSync(tmp, file);
}

/** The snapshot folder of a commit, when it holds every file the exporter needs. */
export function cachedSnapshot(repoDir: string, commit: string): string | undefined {
  const dir = path.join(repoDir, 'snapshots', commit);
  try {
    const names = fs.readdirSync(dir).filter((name) => fs.existsSync(path.join(dir, name)));
    selectFiles(names.map((name) => ({ path: name })));
    return dir;
  } catch {
    return undefined;
  }
}

async function hashFile(file: string, kind: HubFile['hash'], size: number): Promise<string> {
  const hash = createHash(kind === 'sha256' ? 'sha256' : 'sha1');
  if (kind === 'git-sha1') hash.update(`blob ${size}\0`);
  await pipeline(fs.createReadStream(file), hash);
  return hash.digest('hex');
}

function stripEtag(value: string | null): string | undefined {
  return value ? value.replace(/^W\//, '').replace(/"/g, '') : undefined;
}

/**
 * Downloads one file into `blobs/<etag>` of the repo's cache folder and links `snapshots/<commit>/<path>` to
 * it, as huggingface_hub lays the cache out. The bytes go to `blobs/<etag>.incomplete` first: a download
 * that stops midway leaves only that file, and the next try asks for the rest with a Range request. The
 * finished file is checked against the etag (sha256 for LFS files, git's blob sha1 otherwise) before it is
 * renamed into place, so `blobs/` and `snapshots/` only ever hold checked files.
 */
export async function downloadFile(options: {
  reference: HubReference;
  commit: string;
  file: HubFile;
  settings: HubSettings;
  onBytes: (bytes: number) => void;
  signal?: AbortSignal;
}): Promise<void> {
  const { reference, commit, file, settings, onBytes, signal } = options;
  const repoDir = hubRepoDir(settings, reference.repo);
  const blob = path.join(repoDir, 'blobs', file.etag);
  const link = path.join(repoDir, 'snapshots', commit, file.path);
  fs.mkdirSync(path.dirname(blob), { recursive: true });
  if (!fs.existsSync(blob)) {
    const partial = `${blob}.incomplete`;
    let offset = partialSize(partial);
    if (offset > file.size) {
      fs.rmSync(partial, { force: true });
      offset = 0;
    }
    const url = `${settings.endpoint}/${repoPath(reference.repo)}/resolve/${commit}/${file.path.split('/').map(encodeURIComponent).join('/')}`;
    if (offset < file.size || file.size === 0) {
      const extra: Record<string, string> = offset > 0 ? { range: `bytes=${offset}-` } : {};
      const response = await hubFetch(url, { headers: headers(settings, extra), signal, redirect: 'follow' });
      if (response.status === 416 && offset === file.size) {
        await response.body?.cancel();
      } else {
        if (!response.ok) {
          await response.body?.cancel();
          throw new HubHttpError(response.status, url, response.headers.get('x-error-code') ?? undefined);
        }
        const served = stripEtag(response.headers.get('x-linked-etag') ?? response.headers.get('etag'));
        const servedCommit = response.headers.get('x-repo-commit');
        if ((served && served !== file.etag) || (servedCommit && servedCommit !== commit)) {
          await response.body?.cancel();
          throw new Error(
            `${file.path}: the hub served etag ${served} of commit ${servedCommit}, expected ${file.etag} of ${commit}`,
          );
        }
        // 206 continues the partial file; a 200 (a server without Range support) starts it again.
        const resumed = response.status === 206 && offset > 0;
        if (resumed) {
          const start = /^bytes (\d+)-/.exec(response.headers.get('content-range') ?? '')?.[1];
          if (Number(start) !== offset) {
            await response.body?.cancel();
            throw new Error(
              `${file.path}: the hub answered range ${response.headers.get('content-range')} for bytes=${offset}-`,
            );
          }
        } else if (offset > 0) {
          onBytes(-offset);
        }
        if (!response.body) throw new Error(`${file.path}: empty answer from the hub`);
        const counter = new Transform({
          transform(chunk: Buffer, _encoding, callback) {
            onBytes(chunk.length);
            callback(null, chunk);
          },
        });
        await pipeline(
          Readable.fromWeb(response.body as WebReadableStream<Uint8Array>),
          counter,
          fs.createWriteStream(partial, { flags: resumed ? 'a' : 'w' }),
        );
      }
    }
    const size = fs.statSync(partial).size;
    const digest = size === file.size ? await hashFile(partial, file.hash, size) : undefined;
    if (digest !== file.etag) {
      // A corrupt file cannot be resumed into a good one: start over next time.
      fs.rmSync(partial, { force: true });
      throw new Error(
        `${file.path}: checksum mismatch (${size} bytes, ${file.hash} ${digest ?? 'not computed'}; expected ${file.size} bytes, ${file.etag})`,
      );
    }
    fs.renameSync(partial, blob);
  }
  fs.mkdirSync(path.dirname(link), { recursive: true });
  const target = path.relative(path.dirname(link), blob);
  try {
    if (fs.readlinkSync(link) === target) return;
    fs.rmSync(link, { force: true });
  } catch {
    // no link yet
  }
  try {
    fs.symlinkSync(target, link);
  } catch (error) {
    // Where symlinks are not allowed, huggingface_hub copies the blob; so do we.
    if ((error as NodeJS.ErrnoException).code !== 'EPERM') throw error;
    fs.copyFileSync(blob, link);
  }
}

/** Downloads the selected files of a commit into the Hugging Face cache and returns its snapshot folder. */
export async function downloadSnapshot(options: {
  reference: HubReference;
  commit: string;
  files: HubFile[];
  settings: HubSettings;
  onProgress?: (progress: DownloadProgress) => void;
  signal?: AbortSignal;
}): Promise<string> {
  const { reference, commit, files, settings, onProgress, signal } = options;
  const repoDir = hubRepoDir(settings, reference.repo);
  const totalBytes = files.reduce((sum, f) => sum + f.size, 0);
  let bytes = 0;
  for (const file of files) {
    const blob = path.join(repoDir, 'blobs', file.etag);
    let fileBytes = fs.existsSync(blob) ? file.size : partialSize(`${blob}.incomplete`);
    bytes += fileBytes;
    onProgress?.({ file: file.path, fileBytes, fileSize: file.size, bytes, totalBytes });
    await downloadFile({
      reference,
      commit,
      file,
      settings,
      signal,
      onBytes: (n) => {
        fileBytes += n;
        bytes += n;
        onProgress?.({ file: file.path, fileBytes, fileSize: file.size, bytes, totalBytes });
      },
    });
    bytes += file.size - fileBytes;
  }
  writeRef(repoDir, reference.revision, commit);
  return path.join(repoDir, 'snapshots', commit);
}

function partialSize(file: string): number {
  try {
    return fs.statSync(file).size;
  } catch {
    return 0;
  }
}

import fs from 'node:fs';
import path from 'node:path';
import { ConversionError, convertCheckpoint } from './convert';
import { cachedCommit, cachedSnapshot, downloadSnapshot, hubRepoDir, remoteSnapshot, writeRef } from './download';
import { describeHubError, hubLoadFailed, isDiskFull, isNetworkError } from './errors';
import { acquireLock } from './lock';
import type { ModelProgress } from './progress';
import { isCommitSha, parseHubReference, type HubReference } from './reference';
import { hubSettings, repoFolderName, type HubSettings } from './settings';

export { DEFAULT_MODEL, parseHubReference, formatReference } from './reference';
export type { HubReference } from './reference';
export type { ModelProgress } from './progress';
export { streamProgress, describeProgress } from './progress';
export { hubSettings } from './settings';
export { convertCheckpoint } from './convert';

/** Options of {@link resolveModel}. */
export interface ResolveOptions {
  /** Called as the download and the conversion go on. */
  onProgress?: (event: ModelProgress) => void;
  /** Stops waiting, downloading and converting (what is done stays cached). */
  signal?: AbortSignal;
}

/** The converted model of a commit in the clip-native cache. */
function modelDirectory(settings: HubSettings, repo: string, commit: string): string {
  return path.join(settings.modelCache, repoFolderName(repo), 'snapshots', commit);
}

const isModel = (dir: string) => fs.existsSync(path.join(dir, 'clip.json'));

/**
 * The exporter whose conversions are current (`exportedBy: "clip-native-export/N"` in clip.json). 2: the text
 * encoder has `forward_packed`, which the CPU runs mixed-length text batches through.
 */
const CURRENT_EXPORTER = 2;

/** Whether a converted model was written by an older exporter (an unreadable manifest is left to the load). */
function convertedByOlderExporter(dir: string): boolean {
  try {
    const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'clip.json'), 'utf8')) as { exportedBy?: unknown };
    const exporter = typeof manifest.exportedBy === 'string' ? manifest.exportedBy : '';
    const match = /^clip-native-export\/(\d+)$/.exec(exporter);
    return match !== null && Number(match[1]) < CURRENT_EXPORTER;
  } catch {
    return false;
  }
}

const isCurrentModel = (dir: string) => isModel(dir) && !convertedByOlderExporter(dir);

// Loads of one id in this process share one promise; other processes are kept apart by the lock file.
const inFlight = new Map<string, Promise<string>>();

/**
 * The model directory of a reference: a directory is returned as it is; a hub repo id `org/name[@revision]`
 * is resolved to a commit, downloaded into the Hugging Face cache (only the files the exporter needs),
 * converted once into the clip-native cache (`CLIP_NATIVE_CACHE/models--org--name/snapshots/<commit>`) and
 * that folder returned. A converted commit loads without network or Python; with `HF_HUB_OFFLINE=1`, or
 * when the hub cannot be reached, the revision is looked up in the caches instead.
 *
 * Rejects with `CLIP_MODEL_LOAD_FAILED` naming the repo, revision and cause (unknown repo, access denied,
 * network down, disk full, no Python for the conversion).
 */
export async function resolveModel(reference: string, options: ResolveOptions = {}): Promise<string> {
  const hub = parseHubReference(reference);
  if (!hub) return reference;
  const settings = hubSettings();
  const key = `${settings.modelCache}\0${hub.repo}\0${hub.revision}`;
  let pending = inFlight.get(key);
  if (!pending) {
    pending = resolveHub(hub, settings, options).finally(() => inFlight.delete(key));
    inFlight.set(key, pending);
  }
  return pending;
}

async function resolveHub(reference: HubReference, settings: HubSettings, options: ResolveOptions): Promise<string> {
  const { onProgress, signal } = options;
  const hubDir = hubRepoDir(settings, reference.repo);
  const ourDir = path.join(settings.modelCache, repoFolderName(reference.repo));
  const fromCache = () => cachedCommit(ourDir, reference.revision) ?? cachedCommit(hubDir, reference.revision);

  let commit: string | undefined;
  let remote: Awaited<ReturnType<typeof remoteSnapshot>> | undefined;
  if (isCommitSha(reference.revision) && isCurrentModel(modelDirectory(settings, reference.repo, reference.revision))) {
    // A pinned commit that is converted cannot change: no need to ask the hub.
    commit = reference.revision;
  } else if (settings.offline) {
    commit = fromCache();
    if (!commit) {
      throw hubLoadFailed(
        reference,
        'HF_HUB_OFFLINE is set and the caches hold no commit for this revision (load it once online first)',
      );
    }
  } else {
    try {
      remote = await remoteSnapshot(reference, settings, signal);
      commit = remote.commit;
    } catch (error) {
      // As huggingface_hub does: when the hub cannot be reached at all, what the caches hold is used.
      commit = isNetworkError(error) ? fromCache() : undefined;
      if (!commit) throw hubLoadFailed(reference, describeHubError(error, settings), error);
    }
  }

  const directory = modelDirectory(settings, reference.repo, commit);
  const ready = () => {
    try {
      writeRef(ourDir, reference.revision, commit);
    } catch {
      // a read-only cache still serves the model; the ref only saves a lookup
    }
    onProgress?.({ phase: 'ready', reference, commit, directory });
    return directory;
  };
  if (isCurrentModel(directory)) return ready();
  // A conversion by an older exporter is converted anew where the checkpoint can be had and converted;
  // else it serves as it is (it loads and computes the same embeddings, perhaps without what the newer
  // exporter adds), with a warning.
  const keepOlder = (why: string) => {
    process.emitWarning(
      `${directory} was converted by an older exporter and is used as it is (texts run padded if it lacks ` +
        `the packed text entry point): ${why}. ` +
        'Remove the folder to convert it again on the next load.',
      { code: 'CLIP_NATIVE_OLDER_CONVERSION' },
    );
    return ready();
  };

  let release: () => void;
  try {
    release = await acquireLock(
      path.join(settings.modelCache, '.locks', `${repoFolderName(reference.repo)}--${commit}.lock`),
      () => onProgress?.({ phase: 'wait', reference, commit }),
      signal,
    );
  } catch (error) {
    if (isModel(directory) && !signal?.aborted) {
      return keepOlder(`cannot lock the model cache ${settings.modelCache}: ${describeHubError(error, settings)}`);
    }
    throw hubLoadFailed(
      reference,
      `cannot lock the model cache ${settings.modelCache}: ${describeHubError(error, settings)}`,
      error,
    );
  }
  try {
    if (isCurrentModel(directory)) return ready(); // another process converted it while we waited
    const older = isModel(directory);
    let checkpoint: string | undefined;
    if (remote) {
      try {
        checkpoint = await downloadSnapshot({
          reference,
          commit,
          files: remote.files,
          settings,
          signal,
          onProgress: (p) => onProgress?.({ phase: 'download', reference, commit, ...p }),
        });
      } catch (error) {
        if (isDiskFull(error)) removeIncomplete(hubDir);
        if (older && !signal?.aborted) return keepOlder(describeHubError(error, settings));
        throw hubLoadFailed(reference, describeHubError(error, settings), error);
      }
    } else {
      checkpoint = cachedSnapshot(hubDir, commit);
      if (!checkpoint) {
        const why = settings.offline ? 'HF_HUB_OFFLINE is set' : 'the hub cannot be reached';
        if (older) return keepOlder(`${why} and commit ${commit} is not complete in ${settings.hubCache}`);
        throw hubLoadFailed(
          reference,
          `${why} and commit ${commit} is neither converted in ${settings.modelCache} nor complete in ${settings.hubCache}`,
        );
      }
    }
    sweepConversions(directory);
    onProgress?.({ phase: 'convert', reference, commit });
    try {
      await convertCheckpoint(checkpoint, directory, { ...reference, commit }, signal, { replace: older });
    } catch (error) {
      if (older && !signal?.aborted) {
        return keepOlder(error instanceof ConversionError ? error.message : describeHubError(error, settings));
      }
      // Empty snapshots/ and models--org--name/ folders would look like a half-made entry: drop them.
      for (const dir of [path.dirname(directory), path.dirname(path.dirname(directory))]) {
        try {
          fs.rmdirSync(dir);
        } catch {
          break; // not empty: other commits live there
        }
      }
      const cause = error instanceof ConversionError ? error.message : describeHubError(error, settings);
      throw hubLoadFailed(reference, cause, error);
    }
    return ready();
  } finally {
    release();
  }
}

/**
 * Removes what a conversion of this commit killed midway (SIGKILL, power loss) left: its temporary
 * folders. Called under the commit's lock, so no live conversion owns them.
 */
function sweepConversions(directory: string): void {
  const parent = path.dirname(directory);
  const prefix = `.${path.basename(directory)}.convert-`;
  try {
    for (const name of fs.readdirSync(parent)) {
      if (name.startsWith(prefix)) fs.rmSync(path.join(parent, name), { recursive: true, force: true });
    }
  } catch {
    // no snapshots folder yet
  }
}

/** After a disk-full failure the partial blobs cannot be finished: free their space. */
function removeIncomplete(hubDir: string): void {
  try {
    for (const name of fs.readdirSync(path.join(hubDir, 'blobs'))) {
      if (name.endsWith('.incomplete')) fs.rmSync(path.join(hubDir, 'blobs', name), { force: true });
    }
  } catch {
    // nothing there
  }
}

/** Downloads a repo id's checkpoint into the Hugging Face cache without converting it (`clip-native export ID`). */
export async function downloadCheckpoint(
  reference: HubReference,
  options: ResolveOptions = {},
): Promise<{ checkpoint: string; commit: string }> {
  const settings = hubSettings();
  const hubDir = hubRepoDir(settings, reference.repo);
  if (settings.offline) {
    const commit = cachedCommit(hubDir, reference.revision);
    const checkpoint = commit && cachedSnapshot(hubDir, commit);
    if (!commit || !checkpoint)
      throw hubLoadFailed(reference, `HF_HUB_OFFLINE is set and ${settings.hubCache} does not hold it`);
    return { checkpoint, commit };
  }
  try {
    const { commit, files } = await remoteSnapshot(reference, settings, options.signal);
    const checkpoint = await downloadSnapshot({
      reference,
      commit,
      files,
      settings,
      signal: options.signal,
      onProgress: (p) => options.onProgress?.({ phase: 'download', reference, commit, ...p }),
    });
    return { checkpoint, commit };
  } catch (error) {
    if (isDiskFull(error)) removeIncomplete(hubDir);
    throw hubLoadFailed(reference, describeHubError(error, settings), error);
  }
}

import fs from 'node:fs';
import path from 'node:path';
import { ClipError } from '../errors';
import type { JobIdentity, Plan } from './plan';

/** The folder under the output folder that records a job's finished units. */
export const PROGRESS_DIR = '.progress';

/** What `.progress/job.json` holds: the job, decided once for every run and shard. */
export interface Manifest {
  identity: JobIdentity;
  plan: Plan;
  /** The error threshold of the run that created the manifest: the default of `--merge`. */
  errorThreshold: number;
  /**
   * How the run that created the manifest batched: the default chunk rows of later runs, and
   * what they compare theirs with (features differ in their last bits when these differ).
   */
  batching: { chunkRows: number; imageBatch: number; device: string };
}

let sequence = 0;

/** A temporary name next to `file`, unique to this process and call. */
function temporaryName(file: string): string {
  sequence += 1;
  return path.join(path.dirname(file), `.${path.basename(file)}.tmp-${process.pid}-${sequence}`);
}

/** True for the temporary files of {@link writeAtomic}. */
export function isTemporaryName(name: string): boolean {
  return name.startsWith('.') && /\.tmp-\d+-\d+$/.test(name);
}

/**
 * Writes `file` so that it either holds all of `data` or does not change:
 * a temporary file in the same folder, flushed to disk, then renamed over it.
 */
export async function writeAtomic(
  file: string,
  data: Iterable<string | Uint8Array> | AsyncIterable<string | Uint8Array>,
): Promise<void> {
  const temporary = temporaryName(file);
  const handle = await fs.promises.open(temporary, 'w');
  try {
    for await (const piece of data) {
      if (piece.length === 0) continue;
      if (typeof piece === 'string') await handle.write(piece);
      else await handle.write(piece);
    }
    await handle.sync();
  } catch (error) {
    await handle.close().catch(() => undefined);
    await fs.promises.rm(temporary, { force: true });
    throw error;
  }
  await handle.close();
  await fs.promises.rename(temporary, file);
}

/** Part files of one output folder: `.progress/part-000042<suffix>`. */
export class PartStore {
  readonly dir: string;

  constructor(readonly output: string) {
    this.dir = path.join(output, PROGRESS_DIR);
  }

  get manifestPath(): string {
    return path.join(this.dir, 'job.json');
  }

  get completePath(): string {
    return path.join(this.dir, 'complete');
  }

  partPath(unit: number, suffix: string): string {
    return path.join(this.dir, `part-${String(unit).padStart(6, '0')}${suffix}`);
  }

  async readManifest(): Promise<Manifest | undefined> {
    let text: string;
    try {
      text = await fs.promises.readFile(this.manifestPath, 'utf8');
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw error;
    }
    try {
      return JSON.parse(text) as Manifest;
    } catch (error) {
      throw new ClipError(
        'CLIP_INVALID_ARGUMENT',
        `Cannot read ${this.manifestPath}: not JSON; remove ${this.dir} to start over`,
        { cause: error },
      );
    }
  }

  /**
   * Records the manifest unless one is there already (shards starting
   * together race here), and returns the one that holds.
   */
  async createManifest(manifest: Manifest): Promise<Manifest> {
    await fs.promises.mkdir(this.dir, { recursive: true });
    const temporary = temporaryName(this.manifestPath);
    await writeAtomic(temporary, [JSON.stringify(manifest)]);
    try {
      await fs.promises.link(temporary, this.manifestPath);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      if (code === 'EEXIST') {
        await fs.promises.rm(temporary, { force: true });
        return (await this.readManifest())!;
      }
      // Filesystems without hard links: the last writer wins, and rivals wrote the same job.
      await fs.promises.rename(temporary, this.manifestPath);
      return manifest;
    }
    await fs.promises.rm(temporary, { force: true });
    return manifest;
  }

  /** Units that have a part file with this suffix (with the main suffix: the finished units). */
  async unitsWith(suffix: string): Promise<Set<number>> {
    const done = new Set<number>();
    let names: string[];
    try {
      names = await fs.promises.readdir(this.dir);
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') return done;
      throw error;
    }
    for (const name of names) {
      if (!name.startsWith('part-') || !name.endsWith(suffix)) continue;
      const digits = name.slice(5, name.length - suffix.length);
      if (/^\d{6,}$/.test(digits)) done.add(Number(digits));
    }
    return done;
  }

  async isComplete(): Promise<boolean> {
    return fs.promises.access(this.completePath).then(
      () => true,
      () => false,
    );
  }

  async markComplete(): Promise<void> {
    await writeAtomic(this.completePath, ['complete\n']);
  }

  /** Removes every part and temporary file, keeping job.json and the complete marker. */
  async removeParts(): Promise<void> {
    let names: string[];
    try {
      names = await fs.promises.readdir(this.dir);
    } catch {
      return;
    }
    for (const name of names) {
      if (name.startsWith('part-') || isTemporaryName(name)) {
        await fs.promises.rm(path.join(this.dir, name), { force: true });
      }
    }
  }
}

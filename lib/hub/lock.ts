import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';

const POLL_MS = 200;

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/**
 * An exclusive lock between processes: a file created with O_EXCL holding `pid@host`. A lock left by a
 * process of this host that no longer runs (killed mid-conversion) is taken over; one held by another host
 * (a shared volume) is waited for. Resolves to the function that releases it.
 */
export async function acquireLock(file: string, onWait?: () => void, signal?: AbortSignal): Promise<() => void> {
  fs.mkdirSync(path.dirname(file), { recursive: true });
  const owner = `${process.pid}@${os.hostname()}`;
  let waited = false;
  for (;;) {
    signal?.throwIfAborted();
    try {
      fs.writeFileSync(file, owner, { flag: 'wx' });
      return () => fs.rmSync(file, { force: true });
    } catch (error) {
      if ((error as NodeJS.ErrnoException).code !== 'EEXIST') throw error;
    }
    let holder: string;
    try {
      holder = fs.readFileSync(file, 'utf8');
    } catch {
      continue; // released between our open and read
    }
    const [pid, host] = holder.split('@');
    if (host === os.hostname() && /^\d+$/.test(pid) && Number(pid) !== process.pid && !alive(Number(pid))) {
      // Move the stale lock aside under a unique name before looking again, so that two waiters
      // cannot both delete it and one of them delete the other's fresh lock.
      const aside = `${file}.${process.pid}.stale`;
      try {
        fs.renameSync(file, aside);
        if (fs.readFileSync(aside, 'utf8') === holder) fs.rmSync(aside, { force: true });
        else fs.renameSync(aside, file);
      } catch {
        // another waiter moved it first
      }
      continue;
    }
    if (!waited) onWait?.();
    waited = true;
    await sleep(POLL_MS, undefined, { signal });
  }
}

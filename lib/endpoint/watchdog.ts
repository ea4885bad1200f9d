import type { ModelStats } from '../model';

/** The engine's liveness as the health routes report it. */
export interface Watchdog {
  /** Milliseconds the engine has had work waiting without finishing any; 0 when idle or moving. */
  stalledMs(): number;
  /** Stops the sampling timer. */
  close(): void;
}

/**
 * Watches the engine through `stats()`: it is stalled while items wait (queue depth above 0) and the count of
 * embedded items does not move. Samples every quarter interval (an unref'd timer) so that the stall is counted
 * from when it began, not from when someone last asked; `stats` returns undefined while no model is loaded.
 */
export function createWatchdog(stats: () => ModelStats | undefined, intervalMs: number): Watchdog {
  let items = -1;
  let movedAt = performance.now();
  const sample = () => {
    const now = performance.now();
    const current = stats();
    if (!current) {
      movedAt = now;
      return;
    }
    const done = current.image.items + current.text.items;
    const waiting = current.image.queueDepth + current.text.queueDepth;
    if (done !== items || waiting === 0) {
      items = done;
      movedAt = now;
    }
  };
  const timer = setInterval(sample, Math.max(5, Math.floor(intervalMs / 4)));
  timer.unref();
  return {
    stalledMs() {
      sample();
      return performance.now() - movedAt;
    },
    close() {
      clearInterval(timer);
    },
  };
}

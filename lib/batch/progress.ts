/** Where a job's messages go: a stream (stderr by default), or `null` for nowhere. */
export type Log = (NodeJS.WritableStream & { isTTY?: boolean }) | null;

/** Writes one line to the log, if any. */
export function say(log: Log | undefined, message: string): void {
  log?.write(`${message}\n`);
}

/** Where progress goes: a TTY gets one line redrawn in place, anything else a plain line now and then. */
export interface ProgressOptions {
  /** `null` keeps count without writing anything. */
  stream: Log;
  /** Rows this run has to embed (finished parts excluded). */
  total: number;
  /** Minimum time between plain lines. Default 10 s. */
  intervalMs?: number;
  /** Prefix of every line. Default `batch`. */
  label?: string;
}

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '?';
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m${String(s % 60).padStart(2, '0')}s`;
  return `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m`;
}

/** Rows per second over the last `windowMs`, from (time, count) samples. */
class Rate {
  private readonly samples: Array<[number, number]> = [];

  constructor(private readonly windowMs = 10_000) {}

  add(now: number, count: number): void {
    this.samples.push([now, count]);
    while (this.samples.length > 2 && now - this.samples[1][0] > this.windowMs) this.samples.shift();
  }

  perSecond(): number {
    if (this.samples.length < 2) return 0;
    const [t0, c0] = this.samples[0];
    const [t1, c1] = this.samples[this.samples.length - 1];
    return t1 > t0 ? ((c1 - c0) * 1000) / (t1 - t0) : 0;
  }
}

/** Progress of a batch job on stderr: rows done, rows/s, ETA, failures. */
export class Progress {
  private done = 0;
  private failed = 0;
  private readonly started = Date.now();
  private lastDraw = 0;
  private readonly rate = new Rate();
  private readonly tty: boolean;
  private readonly intervalMs: number;
  private readonly label: string;

  constructor(private readonly options: ProgressOptions) {
    this.tty = options.stream?.isTTY === true;
    this.intervalMs = this.tty ? 250 : (options.intervalMs ?? 10_000);
    this.label = options.label ?? 'batch';
    this.rate.add(this.started, 0);
  }

  /** Rows embedded so far in this run, and how many of them failed. */
  get counts(): { done: number; failed: number; seconds: number } {
    return { done: this.done, failed: this.failed, seconds: (Date.now() - this.started) / 1000 };
  }

  add(rows: number, failed: number): void {
    this.done += rows;
    this.failed += failed;
    const now = Date.now();
    this.rate.add(now, this.done);
    if (now - this.lastDraw >= this.intervalMs) {
      this.lastDraw = now;
      this.draw();
    }
  }

  /** One line on the state of things (a TTY's line is redrawn in place). */
  line(): string {
    const { total } = this.options;
    const perSecond = this.rate.perSecond();
    const percent = total > 0 ? ((100 * this.done) / total).toFixed(1) : '100.0';
    const eta = perSecond > 0 ? duration((total - this.done) / perSecond) : '?';
    const failed = this.failed ? `, ${this.failed} failed` : '';
    return `${this.label}: ${this.done}/${total} rows (${percent}%), ${perSecond.toFixed(1)} rows/s, ETA ${eta}${failed}`;
  }

  private draw(): void {
    this.options.stream?.write(this.tty ? `\r\x1b[K${this.line()}` : `${this.line()}\n`);
  }

  /** Clears the redrawn line on a TTY. */
  finish(): void {
    if (this.tty && this.lastDraw) this.options.stream?.write('\r\x1b[K');
  }
}

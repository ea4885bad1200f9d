import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { ModelStats } from '../model';

/** Options of {@link createMetrics}. */
export interface MetricsOptions {
  /** Also collect prom-client's process and Node.js metrics (memory, CPU, event loop lag). Default true. */
  defaultMetrics?: boolean;
}

/** The Prometheus metrics of one server, in a registry of its own. */
export interface EndpointMetrics {
  registry: Registry;
  /** Counts one answered request and its latency. */
  observeRequest(method: string, route: string, status: number, seconds: number): void;
  /** Counts the rows of a scored request by the inputs they had. */
  observeRows(images: number, texts: number): void;
  /** Observes the seconds one item spent in one stage: `fetch` (an image URL), `prepare`, `queue`, `inference`. */
  observeStage(stage: 'fetch' | 'prepare' | 'queue' | 'inference', encoder: 'image' | 'text', seconds: number): void;
}

const ENCODERS = ['image', 'text'] as const;

/**
 * Creates the endpoint's metrics. HTTP metrics are counted as requests end;
 * the engine's (queue depth, batches, batch size, items per second) are read
 * from `stats()` at scrape time, so they cost nothing between scrapes.
 * `stats` returns undefined while no model is loaded.
 */
export function createMetrics(stats: () => ModelStats | undefined, options: MetricsOptions = {}): EndpointMetrics {
  const registry = new Registry();
  if (options.defaultMetrics ?? true) collectDefaultMetrics({ register: registry });

  const requests = new Counter({
    name: 'clip_http_requests_total',
    help: 'HTTP requests answered, by method, route and status code.',
    labelNames: ['method', 'route', 'status'] as const,
    registers: [registry],
  });
  const duration = new Histogram({
    name: 'clip_http_request_duration_seconds',
    help: 'Time from request start to the end of the answer, by method and route.',
    labelNames: ['method', 'route'] as const,
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });
  const rows = new Counter({
    name: 'clip_score_rows_total',
    help: 'Rows of successful /score requests, by input (a row with both counts once for each).',
    labelNames: ['input'] as const,
    registers: [registry],
  });

  const stages = new Histogram({
    name: 'clip_stage_duration_seconds',
    help: 'Seconds one item spent in one stage: fetch (an image URL), prepare (decode and preprocess, or tokenize), queue (waiting for a batch), inference (its batch).',
    labelNames: ['stage', 'encoder'] as const,
    buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30],
    registers: [registry],
  });

  new Gauge({
    name: 'clip_model_ready',
    help: '1 once the model is loaded and the endpoint serves /score, else 0.',
    registers: [registry],
    collect() {
      this.set(stats() ? 1 : 0);
    },
  });
  const engineGauge = (name: string, help: string, read: (s: ModelStats['image']) => number) =>
    new Gauge({
      name,
      help,
      labelNames: ['encoder'] as const,
      registers: [registry],
      collect() {
        const current = stats();
        this.reset();
        if (current) for (const encoder of ENCODERS) this.set({ encoder }, read(current[encoder]));
      },
    });
  const engineCounter = (name: string, help: string, read: (s: ModelStats['image']) => number) =>
    new Counter({
      name,
      help,
      labelNames: ['encoder'] as const,
      registers: [registry],
      collect() {
        const current = stats();
        this.reset();
        if (current) for (const encoder of ENCODERS) this.inc({ encoder }, read(current[encoder]));
      },
    });
  engineGauge('clip_engine_queue_depth', 'Items submitted and not yet in a batch.', (s) => s.queueDepth);
  engineGauge('clip_engine_mean_batch_size', 'Items per inference batch since load.', (s) => s.meanBatchSize);
  engineGauge(
    'clip_engine_items_per_second',
    'Items embedded per second over the last 10 seconds.',
    (s) => s.itemsPerSecond,
  );
  engineCounter('clip_engine_batches_total', 'Inference batches run since load.', (s) => s.batches);
  engineCounter(
    'clip_engine_forwards_total',
    'Forward passes run since load (a text batch of mixed lengths may run as several).',
    (s) => s.forwards,
  );
  engineCounter('clip_engine_items_total', 'Items embedded since load.', (s) => s.items);

  const cacheCounter = (name: string, help: string, read: (s: NonNullable<ModelStats['cache']>) => number) =>
    new Counter({
      name,
      help,
      registers: [registry],
      collect() {
        const cache = stats()?.cache;
        this.reset();
        if (cache) this.inc(read(cache));
      },
    });
  cacheCounter('clip_cache_hits_total', 'Inputs answered from the embedding cache since load.', (s) => s.hits);
  cacheCounter('clip_cache_misses_total', 'Inputs the embedding cache had to compute since load.', (s) => s.misses);
  new Gauge({
    name: 'clip_cache_bytes',
    help: 'Bytes held by the embedding cache.',
    registers: [registry],
    collect() {
      this.set(stats()?.cache?.bytes ?? 0);
    },
  });

  return {
    registry,
    observeRequest(method, route, status, seconds) {
      requests.inc({ method, route, status: String(status) });
      duration.observe({ method, route }, seconds);
    },
    observeRows(images, texts) {
      if (images > 0) rows.inc({ input: 'image' }, images);
      if (texts > 0) rows.inc({ input: 'text' }, texts);
    },
    observeStage(stage, encoder, seconds) {
      stages.observe({ stage, encoder }, seconds);
    },
  };
}

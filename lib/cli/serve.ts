import type { AddressInfo } from 'node:net';
import { createServer } from '../endpoint/server';
import { ClipModel } from '../model';
import { deviceFlags, integerFlag, parseCommandLine, UsageError } from './common';
import { DEFAULT_MODEL } from '../hub/reference';
import { describeProgress, type ModelProgress } from '../hub/progress';

const USAGE = `Usage: clip-native serve [--model DIR|ID] [options]

The online endpoint (Azure ML CLIP embeddings wire format):
POST /score, POST /v1/classify, POST /v1/rank, GET / (health), GET /swagger.json, GET /metrics; beside it
POST /v1/embeddings (+ /embeddings; OpenAI, with images), POST /v1/embeddings/image,
GET /v1/models, GET /info, POST /invocations + GET /ping (SageMaker), GET /health.

Options:
  --model DIR|ID          model directory, or Hugging Face repo id org/name[@revision],
                          downloaded and converted on first use
                          (default ${DEFAULT_MODEL}; about 600 MB)
  --host H                address to listen on (default 127.0.0.1; use 0.0.0.0 in a container)
  --port P                port (default 5001; 0 picks a free one)
  --device D              auto | cpu | cuda | cuda:N (default auto)
  --dtype T               float32 | bfloat16 | float16 | int8 (default float32;
                          int8 and bfloat16 on the CPU, float16 on CUDA)
  --max-batch N           largest image batch (default 16 on CPU, 128 on CUDA)
  --max-batch-texts N     largest text batch (default 64 on CPU, 256 on CUDA)
  --max-batch-tokens N    largest text batch in token rows (default 16 x 77 on CPU)
  --queue-capacity N      items that may wait per encoder before 429 (default 4096)
  --threads N             libtorch intra-op threads
  --api-key K             require "Authorization: Bearer K" on the POST routes
  --cache-mb N            keep up to N MiB of computed embeddings and answer repeats from there (default off)
                          (default: the CLIP_NATIVE_API_KEY environment variable)
  --body-limit-mb N       largest request body in MiB (default 100)
  --allow-private-urls    let image URLs reach private, loopback and link-local addresses
  --retry-after S         Retry-After seconds of 429 and 503 answers (default 1)
  --route-prefix P        serve every route under the path P (e.g. /clip), for proxies
  --max-concurrent-requests N
                          engine requests served at once; more get 429 (default unbounded)
  --watchdog-ms N         health answers 503 once queued work has not moved for N ms (default 30000)
  --log-level L           fatal | error | warn | info | debug | trace | silent (default info)
  -h, --help              this help

Logs are JSON lines (pino) on stdout; the first says where it listens.
SIGTERM or SIGINT: stop accepting, finish the requests in flight, free the
model, exit 0. A second signal exits at once with status 1.
`;

const LOG_LEVELS = new Set(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']);

function cacheOption(values: Record<string, unknown>) {
  const megabytes = integerFlag(values, 'cache-mb', 1);
  return megabytes === undefined ? undefined : { maxBytes: megabytes * 1024 * 1024 };
}

function routePrefix(value: string | undefined): string | undefined {
  if (value === undefined) return undefined;
  const trimmed = value.replace(/\/+$/, '');
  if (trimmed !== '' && !/^(\/[A-Za-z0-9._~-]+)+$/.test(trimmed)) {
    throw new UsageError(`--route-prefix must be a path such as /clip, not "${value}"`);
  }
  return trimmed;
}

/**
 * `clip-native serve`: listens first, then loads the model (`GET /` answers
 * 503 until it is loaded), and resolves to the exit status once a signal has
 * drained and closed the server.
 */
export async function runServe(args: string[]): Promise<number> {
  const { values: parsed } = parseCommandLine(args, {
    model: { type: 'string' },
    host: { type: 'string' },
    port: { type: 'string' },
    device: { type: 'string' },
    dtype: { type: 'string' },
    'max-batch': { type: 'string' },
    'max-batch-texts': { type: 'string' },
    'max-batch-tokens': { type: 'string' },
    'queue-capacity': { type: 'string' },
    threads: { type: 'string' },
    'api-key': { type: 'string' },
    'body-limit-mb': { type: 'string' },
    'allow-private-urls': { type: 'boolean' },
    'retry-after': { type: 'string' },
    'route-prefix': { type: 'string' },
    'max-concurrent-requests': { type: 'string' },
    'watchdog-ms': { type: 'string' },
    'log-level': { type: 'string' },
    'cache-mb': { type: 'string' },
  } as const);
  const values = parsed as Record<string, string | undefined> & { help?: boolean; 'allow-private-urls'?: boolean };
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const directory = values.model ?? DEFAULT_MODEL;
  if (directory.length === 0) throw new UsageError('--model must not be empty');
  const { device, dtype } = deviceFlags(values);
  const logLevel = values['log-level'] ?? 'info';
  if (!LOG_LEVELS.has(logLevel))
    throw new UsageError(`--log-level must be one of ${[...LOG_LEVELS].join(', ')}, not "${logLevel}"`);
  const apiKey = values['api-key'] ?? (process.env.CLIP_NATIVE_API_KEY || undefined);
  if (apiKey !== undefined && apiKey.length === 0) throw new UsageError('--api-key must not be empty');
  const host = values.host ?? '127.0.0.1';
  const listenPort = integerFlag(values, 'port', 0, 65535) ?? 5001;
  const bodyLimitMb = integerFlag(values, 'body-limit-mb', 1) ?? 100;
  const loadOptions = {
    device,
    dtype,
    maxBatchImages: integerFlag(values, 'max-batch', 1),
    maxBatchTexts: integerFlag(values, 'max-batch-texts', 1),
    maxBatchTokens: integerFlag(values, 'max-batch-tokens', 1),
    queueCapacity: integerFlag(values, 'queue-capacity', 1),
    threads: integerFlag(values, 'threads', 1),
    cache: cacheOption(values),
  };

  let resolveModel!: (model: ClipModel) => void;
  let rejectModel!: (error: unknown) => void;
  const modelPromise = new Promise<ClipModel>((resolve, reject) => {
    resolveModel = resolve;
    rejectModel = reject;
  });
  modelPromise.catch(() => undefined);
  const app = createServer(modelPromise, {
    apiKey,
    bodyLimit: bodyLimitMb * 1024 * 1024,
    retryAfterSeconds: integerFlag(values, 'retry-after', 0),
    score: { allowPrivateUrls: values['allow-private-urls'] ?? false },
    logger: { level: logLevel },
    routePrefix: routePrefix(values['route-prefix']),
    maxConcurrentRequests: integerFlag(values, 'max-concurrent-requests', 1),
    watchdogIntervalMs: integerFlag(values, 'watchdog-ms', 1),
  });
  const log = app.log;

  let model: ClipModel | undefined;
  let loading: Promise<ClipModel | undefined> = Promise.resolve(undefined);
  let shutdown: Promise<number> | undefined;
  let onShutdown!: (status: number) => void;
  const stopped = new Promise<number>((resolve) => {
    onShutdown = resolve;
  });
  const stop = (signal: NodeJS.Signals) => {
    if (shutdown) {
      log.warn({ signal }, 'second signal: exiting now');
      process.exit(1);
    }
    log.info({ signal }, 'shutting down: draining requests in flight');
    shutdown = (async () => {
      await app.close();
      const loaded = await loading.catch(() => undefined);
      await loaded?.dispose();
      log.info('stopped');
      return 0;
    })();
    shutdown.then(onShutdown, (error) => {
      log.error({ err: error }, 'shutdown failed');
      onShutdown(1);
    });
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);
  try {
    try {
      await app.listen({
        host,
        port: listenPort,
        listenTextResolver: (address) => `clip-native serve listening at ${address}`,
      });
    } catch (error) {
      throw new UsageError(`cannot listen on ${host}:${listenPort}: ${(error as Error).message}`);
    }
    const address = app.server.address() as AddressInfo;
    log.info({ host: address.address, port: address.port }, 'loading the model');

    const started = Date.now();
    // A repo id downloads and converts first; GET / answers 503 meanwhile and the log shows how far it is.
    let lastTenth = -1;
    let lastFile = '';
    const onProgress = (event: ModelProgress) => {
      if (event.phase === 'download') {
        const tenth = event.totalBytes > 0 ? Math.floor((10 * event.bytes) / event.totalBytes) : 10;
        if (tenth === lastTenth && event.file === lastFile) return;
        lastTenth = tenth;
        lastFile = event.file;
      }
      log.info({ progress: event.phase, repo: event.reference.repo, commit: event.commit }, describeProgress(event));
    };
    const load = ClipModel.load(directory, { ...loadOptions, onProgress });
    loading = load;
    try {
      model = await load;
    } catch (error) {
      rejectModel(error);
      if (!shutdown) await app.close();
      throw error;
    }
    resolveModel(model);
    log.info({ model: model.info, ms: Date.now() - started }, 'model loaded: ready');
    return await stopped;
  } finally {
    process.off('SIGTERM', stop);
    process.off('SIGINT', stop);
  }
}

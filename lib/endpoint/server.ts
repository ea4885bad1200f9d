import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import fs from 'node:fs';
import { maxHeaderSize, STATUS_CODES } from 'node:http';
import path from 'node:path';
import type { Duplex } from 'node:stream';
import Fastify, {
  LogController,
  type FastifyBaseLogger,
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
  type FastifyServerOptions,
} from 'fastify';
import { isRowError } from '../azure/rows';
import { resolveScoreOptions, score, type ScoreOptions } from '../azure/score';
import type { ErrorBody } from '../azure/types';
import { checkInteger } from '../check';
import { ClipError, invalidArgument, type ClipErrorCode } from '../errors';
import type { ClipModel } from '../model';
import { packageRoot } from '../native/locate';
import { createMetrics } from './metrics';
import { openApiDocument } from './openapi';
import { registerRetrievalRoutes, retrievalOpenApi } from './retrieval';
import { AUTH_ENGINE, registerRoutes } from './routes';
import { createWatchdog } from './watchdog';

/** Options of {@link createServer}. */
export interface ServerOptions {
  /** When set, `POST /score` needs `Authorization: Bearer <apiKey>`. */
  apiKey?: string;
  /** Largest request body in bytes. Default 100 MiB. */
  bodyLimit?: number;
  /** Image URL bounds and image options of every request (`signal` is the server's own). */
  score?: Omit<ScoreOptions, 'signal'>;
  /** Seconds in `Retry-After` of 429 and 503 answers. Default 1. */
  retryAfterSeconds?: number;
  /** fastify's `logger` option (pino options, `true`, or a pino logger). Default false. */
  logger?: FastifyServerOptions['logger'] | FastifyBaseLogger;
  /** Serve `GET /metrics`. Default true. */
  metrics?: boolean;
  /** Also collect process and Node.js metrics. Default true. */
  defaultMetrics?: boolean;
  /** A path every route is served under (`/clip` serves `/clip/score`, `/clip/v1/embeddings`, …), for proxies. Default none. */
  routePrefix?: string;
  /** Requests on the engine routes (`/score`, `/invocations`, `/v1/embeddings`, …) served at once; more get 429 with `Retry-After`. Default unbounded. */
  maxConcurrentRequests?: number;
  /** The health routes answer 503 once the engine has had work waiting without progress for this long. Default 30000 ms. */
  watchdogIntervalMs?: number;
}

/** HTTP status of each error code the endpoint answers with. */
const STATUS: Record<string, number> = {
  CLIP_INVALID_ARGUMENT: 400,
  CLIP_IMAGE_DECODE_FAILED: 400,
  CLIP_UNSUPPORTED_IMAGE_FORMAT: 400,
  CLIP_IMAGE_TOO_LARGE: 400,
  CLIP_IMAGE_FETCH_FAILED: 400,
  CLIP_URL_FORBIDDEN: 400,
  CLIP_UNAUTHORIZED: 401,
  CLIP_NOT_FOUND: 404,
  CLIP_REQUEST_TIMEOUT: 408,
  CLIP_REQUEST_TOO_LARGE: 413,
  CLIP_HEADERS_TOO_LARGE: 431,
  CLIP_UNSUPPORTED_MEDIA_TYPE: 415,
  CLIP_QUEUE_FULL: 429,
  // The client went away; nobody reads this answer (nginx's "client closed request").
  CLIP_ABORTED: 499,
  CLIP_NOT_READY: 503,
  CLIP_DISPOSED: 503,
};

/** The HTTP status the endpoint answers a ClipError code with; 500 for anything unknown. */
export function statusOfCode(code: string): number {
  return STATUS[code] ?? 500;
}

/**
 * What Node's HTTP parser refuses before any route runs (malformed framing,
 * oversized headers, timeouts) gets the same {message, code} body as every
 * other error. Runs on the server's socket; the connection is closed after.
 */
function clientErrorHandler(this: FastifyInstance, error: Error & { code?: string }, socket: Duplex): void {
  if (error.code === 'ECONNRESET' || socket.destroyed) return;
  let status: number;
  let body: ErrorBody;
  if (error.code === 'ERR_HTTP_REQUEST_TIMEOUT') {
    status = 408;
    body = { message: 'The request did not arrive in time', code: 'CLIP_REQUEST_TIMEOUT' };
  } else if (error.code === 'HPE_HEADER_OVERFLOW') {
    status = 431;
    body = {
      message: `Expected request headers of at most ${maxHeaderSize} bytes but received more`,
      code: 'CLIP_HEADERS_TOO_LARGE',
    };
  } else {
    status = 400;
    const reason = typeof error.code === 'string' && /^HPE_[A-Z_]+$/.test(error.code) ? ` (${error.code})` : '';
    body = {
      message: `Expected a well-formed HTTP/1.1 request but received one Node's HTTP parser refuses${reason}`,
      code: 'CLIP_INVALID_ARGUMENT',
    };
  }
  this.log.debug({ err: error }, 'client error');
  if (socket.writable) {
    const text = JSON.stringify(body);
    socket.write(
      `HTTP/1.1 ${status} ${STATUS_CODES[status]}\r\nContent-Type: application/json; charset=utf-8\r\n` +
        `Content-Length: ${Buffer.byteLength(text)}\r\nConnection: close\r\n\r\n${text}`,
    );
  }
  socket.destroy(error);
}

const REQUEST_ID = /^[A-Za-z0-9._:/+=@-]{1,128}$/;

function requestIdOf(headers: Record<string, string | string[] | undefined>): string {
  for (const name of ['x-request-id', 'x-ms-request-id']) {
    const value = headers[name];
    if (typeof value === 'string' && REQUEST_ID.test(value)) return value;
  }
  return randomUUID();
}

function digest(value: string): Buffer {
  return createHash('sha256').update(value, 'utf8').digest();
}

function packageVersion(): string {
  try {
    const manifest = JSON.parse(fs.readFileSync(path.join(packageRoot, 'package.json'), 'utf8')) as {
      version?: string;
    };
    return manifest.version ?? '0.0.0';
  } catch {
    return '0.0.0';
  }
}

function isThenable(value: unknown): value is PromiseLike<ClipModel> {
  return typeof (value as PromiseLike<unknown> | null)?.then === 'function';
}

function unsupported(contentType: string | undefined): string {
  const received = contentType === undefined ? 'none' : JSON.stringify(contentType.slice(0, 100));
  return `Expected Content-Type application/json for the request body but received ${received}`;
}

/** The {message, code, row?} body and the status of an error from anywhere in the request. */
function errorAnswer(
  error: unknown,
  bodyLimit: number,
  contentType: string | undefined,
): { status: number; body: ErrorBody; internal: boolean } {
  if (error instanceof ClipError) {
    const body: ErrorBody = { message: error.message, code: error.code };
    if (isRowError(error)) {
      body.message = `row ${error.row}: ${error.message}`;
      body.row = error.row;
    }
    const status = statusOfCode(error.code);
    return { status, body, internal: status >= 500 && error.code !== 'CLIP_DISPOSED' };
  }
  const e = error as Partial<FastifyError> & { status?: number };
  const status = e.statusCode ?? e.status;
  const answer = (s: number, code: ClipErrorCode, message: string) => ({
    status: s,
    body: { message, code },
    internal: false,
  });
  switch (e.code) {
    case 'FST_ERR_CTP_BODY_TOO_LARGE':
      return answer(
        413,
        'CLIP_REQUEST_TOO_LARGE',
        `Expected a request body of at most ${bodyLimit} bytes but received more`,
      );
    case 'FST_ERR_CTP_INVALID_MEDIA_TYPE':
      return answer(415, 'CLIP_UNSUPPORTED_MEDIA_TYPE', unsupported(contentType));
    case 'FST_ERR_CTP_EMPTY_JSON_BODY':
      return answer(400, 'CLIP_INVALID_ARGUMENT', 'Expected a JSON request body but received an empty body');
    case 'FST_ERR_CTP_INVALID_JSON_BODY':
      return answer(400, 'CLIP_INVALID_ARGUMENT', 'Expected a JSON request body but received invalid JSON');
  }
  if (typeof status === 'number' && status >= 400 && status < 500) {
    const reason = error instanceof SyntaxError ? `invalid JSON (${e.message})` : (e.message ?? 'a bad request');
    if (status === 413)
      return answer(
        413,
        'CLIP_REQUEST_TOO_LARGE',
        `Expected a request body of at most ${bodyLimit} bytes but received more`,
      );
    if (status === 415) return answer(415, 'CLIP_UNSUPPORTED_MEDIA_TYPE', unsupported(contentType));
    return answer(400, 'CLIP_INVALID_ARGUMENT', `Expected a JSON request body but received ${reason}`);
  }
  return { status: 500, body: { message: 'Internal error', code: 'CLIP_INTERNAL' }, internal: true };
}

/**
 * The Azure ML online endpoint (README, "Online endpoint") as a fastify app (not yet
 * listening): `POST /score`, `GET /` (`Healthy` once the model is loaded,
 * 503 before), `GET /swagger.json` (OpenAPI 3) and `GET /metrics`
 * (Prometheus).
 *
 * `model` may be a promise, so the server can listen while the model loads;
 * the caller keeps ownership of the model and disposes it after `close()`.
 * Errors answer `{message, code}` (and `row` for row errors): 400 for bad
 * JSON, shape or images, 401 for a missing or wrong key, 404, 413, 415, 429
 * with `Retry-After` when the engine queue is full (`CLIP_QUEUE_FULL`), 503
 * with `Retry-After` while loading or shutting down (`CLIP_NOT_READY`), and
 * 500 only for internal errors.
 *
 * Throws `CLIP_INVALID_ARGUMENT` for bad options.
 */
export function createServer(model: ClipModel | PromiseLike<ClipModel>, options: ServerOptions = {}): FastifyInstance {
  if (options === null || typeof options !== 'object') throw invalidArgument('an options object', 'options', options);
  const bodyLimit = checkInteger(options.bodyLimit, 'options.bodyLimit', 1, 100 * 1024 * 1024);
  const retryAfter = String(checkInteger(options.retryAfterSeconds, 'options.retryAfterSeconds', 0, 1));
  if (options.apiKey !== undefined && (typeof options.apiKey !== 'string' || options.apiKey.length === 0)) {
    throw invalidArgument('a non-empty string', 'options.apiKey', options.apiKey);
  }
  const keyDigest = options.apiKey === undefined ? undefined : digest(options.apiKey);
  const maxConcurrent = checkInteger(options.maxConcurrentRequests, 'options.maxConcurrentRequests', 1);
  const watchdogMs = checkInteger(options.watchdogIntervalMs, 'options.watchdogIntervalMs', 1, 30_000);
  const prefix = options.routePrefix ?? '';
  if (typeof prefix !== 'string' || (prefix !== '' && !/^(\/[A-Za-z0-9._~-]+)+$/.test(prefix))) {
    throw invalidArgument('a path such as "/clip" (no trailing slash)', 'options.routePrefix', prefix);
  }
  const scoreOptions: ScoreOptions = { ...(options.score ?? {}) };
  // Bad options fail here, once, rather than on every request.
  if (scoreOptions.signal !== undefined)
    throw invalidArgument('no signal', 'options.score.signal', scoreOptions.signal);
  const resolvedScoreOptions = resolveScoreOptions(scoreOptions, 'options.score');

  let current: ClipModel | undefined;
  let unobserve: (() => void) | undefined;
  // Per-item engine stage times into the metrics, until the server closes (the model is the caller's).
  const observeStages = (loaded: ClipModel) => {
    if (options.metrics === false) return;
    unobserve = loaded._observeStages((encoder, prepare, queue, inference) => {
      metrics?.observeStage('prepare', encoder, prepare);
      metrics?.observeStage('queue', encoder, queue);
      metrics?.observeStage('inference', encoder, inference);
    });
  };
  let closing = false;
  if (isThenable(model)) {
    // A failed load is the caller's to report; the server just stays unready.
    model.then(
      (loaded) => {
        current = loaded;
        observeStages(loaded);
      },
      () => undefined,
    );
  } else {
    current = model;
    observeStages(model);
  }

  const loggerOption = options.logger ?? false;
  const isLoggerInstance = typeof loggerOption === 'object' && loggerOption !== null && 'child' in loggerOption;
  const app = Fastify({
    bodyLimit,
    ...(isLoggerInstance ? { loggerInstance: loggerOption } : { logger: loggerOption }),
    // One line per request from onResponse instead of fastify's two.
    logController: new LogController({ disableRequestLogging: true }),
    requestIdHeader: false,
    genReqId: (req) => requestIdOf(req.headers),
    return503OnClosing: false,
    clientErrorHandler,
  });

  // Only JSON bodies: anything else is a 415, as the contract says.
  app.removeContentTypeParser('text/plain');

  const metrics =
    options.metrics === false
      ? undefined
      : createMetrics(() => current?.stats(), { defaultMetrics: options.defaultMetrics });
  let document: Record<string, unknown> | undefined;
  const watchdog = createWatchdog(() => current?.stats(), watchdogMs);
  let inFlight = 0;

  const sendError = (reply: FastifyReply, status: number, body: ErrorBody) => {
    if (status === 429 || status === 503) reply.header('retry-after', retryAfter);
    if (status === 401) reply.header('www-authenticate', 'Bearer');
    return reply.code(status).type('application/json; charset=utf-8').send(body);
  };
  const notReady = (reply: FastifyReply) =>
    sendError(reply, 503, {
      message: closing ? 'The server is shutting down' : 'The model is still loading',
      code: 'CLIP_NOT_READY',
    });

  app.addHook('onRequest', async (request, reply) => {
    reply.header('x-request-id', request.id);
    reply.header('x-ms-request-id', request.id);
    const config = request.routeOptions.config;
    if (!config?.auth) return;
    // Before the body is read: a wrong key costs no parsing.
    if (keyDigest) {
      const header = request.headers.authorization;
      const match = typeof header === 'string' ? /^Bearer\s+(.+)$/i.exec(header.trim()) : null;
      if (!match || !timingSafeEqual(digest(match[1]), keyDigest)) {
        return sendError(reply, 401, {
          message: `Expected an Authorization: Bearer <key> header with the endpoint's key for ${request.method} ${request.routeOptions.url} but received ${match ? 'a wrong key' : header === undefined || header.trim() === '' ? 'none' : 'another scheme'}`,
          code: 'CLIP_UNAUTHORIZED',
        });
      }
    }
    if (!config.engine) return;
    if (closing || current === undefined) return notReady(reply);
    if (maxConcurrent !== undefined) {
      if (inFlight >= maxConcurrent) {
        return sendError(reply, 429, {
          message: `Expected at most ${maxConcurrent} concurrent requests (maxConcurrentRequests) but received more; retry later`,
          code: 'CLIP_QUEUE_FULL',
        });
      }
      inFlight++;
      // 'close' comes once per response, answered or abandoned.
      reply.raw.once('close', () => inFlight--);
    }
  });

  app.addHook('onResponse', async (request, reply) => {
    const route = request.routeOptions.url ?? 'unmatched';
    metrics?.observeRequest(request.method, route, reply.statusCode, reply.elapsedTime / 1000);
    request.log.info(
      {
        method: request.method,
        url: request.url,
        statusCode: reply.statusCode,
        ms: Math.round(reply.elapsedTime * 10) / 10,
      },
      'request completed',
    );
  });

  app.addHook('preClose', async () => {
    closing = true;
  });
  app.addHook('onClose', async () => {
    watchdog.close();
    unobserve?.();
  });

  app.setErrorHandler((error, request, reply) => {
    const { status, body, internal } = errorAnswer(error, bodyLimit, request.headers['content-type']);
    if (internal) request.log.error({ err: error }, 'internal error');
    else request.log.info({ code: body.code, row: body.row, reason: body.message }, 'request refused');
    return sendError(reply, status, body);
  });

  app.setNotFoundHandler((request, reply) =>
    sendError(reply, 404, {
      message: `Expected one of the routes of ${prefix}/swagger.json but received ${request.method} ${request.url.slice(0, 200)}`,
      code: 'CLIP_NOT_FOUND',
    }),
  );

  const signalOf = (reply: FastifyReply) => {
    // A client that hangs up stops its own work, not anyone else's.
    const controller = new AbortController();
    reply.raw.once('close', () => {
      if (!reply.raw.writableFinished)
        controller.abort(new ClipError('CLIP_ABORTED', 'The client closed the connection'));
    });
    return controller.signal;
  };
  const health = async (_request: FastifyRequest, reply: FastifyReply) => {
    if (closing || current === undefined) return notReady(reply);
    const stalled = watchdog.stalledMs();
    if (stalled > watchdogMs) {
      return sendError(reply, 503, {
        message: `The engine has had work waiting without progress for ${Math.round(stalled)} ms`,
        code: 'CLIP_NOT_READY',
      });
    }
    return reply.type('text/plain; charset=utf-8').send('Healthy');
  };

  // Every route under the prefix, in a scope of its own.
  const routes = async (app: FastifyInstance) => {
    app.get('/', health);
    app.get('/ping', health);
    app.get('/health', health);

    app.get('/swagger.json', async (_request, reply) => {
      if (document === undefined) {
        document = openApiDocument({
          version: packageVersion(),
          embedDim: current?.info.embedDim ?? 512,
          apiKey: keyDigest !== undefined,
          prefix,
        });
        const paths = document.paths as Record<string, { post: { responses: Record<string, unknown> } }>;
        // The retrieval routes answer errors as /score does; their 200s are their own.
        const errorResponses = Object.fromEntries(
          Object.entries(paths['/score'].post.responses).filter(([status]) => status !== '200'),
        );
        const retrieval = retrievalOpenApi(keyDigest !== undefined, errorResponses);
        Object.assign(paths, retrieval);
      }
      return reply.type('application/json; charset=utf-8').send(document);
    });

    if (metrics) {
      app.get('/metrics', async (_request, reply) => {
        const text = await metrics.registry.metrics();
        return reply.type(metrics.registry.contentType).send(text);
      });
    }

    const scoreHandler = async (request: FastifyRequest, reply: FastifyReply) => {
      const loaded = current;
      if (loaded === undefined) return notReady(reply);
      const result = await score(loaded, request.body, { ...scoreOptions, signal: signalOf(reply) });
      if (metrics) {
        let images = 0;
        let texts = 0;
        for (const row of result) {
          if (row.image_features) images++;
          if (row.text_features) texts++;
        }
        metrics.observeRows(images, texts);
      }
      return reply.type('application/json; charset=utf-8').send(result);
    };
    app.post('/score', AUTH_ENGINE, scoreHandler);
    // SageMaker's contract: the same body and answer as /score.
    app.post('/invocations', AUTH_ENGINE, scoreHandler);

    await app.register(registerRoutes, {
      model: () => current,
      scoreOptions,
      bodyLimit,
      maxConcurrentRequests: maxConcurrent,
      metrics,
      version: packageVersion(),
      created: Math.floor(Date.now() / 1000),
      sendError,
      signalOf,
    });
    registerRetrievalRoutes(app, {
      model: () => (closing ? undefined : current),
      notReady,
      options: resolvedScoreOptions,
    });
  };
  void app.register(routes, { prefix });

  return app;
}

import multipart from '@fastify/multipart';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { ScoreOptions } from '../azure/score';
import type { ErrorBody } from '../azure/types';
import { ClipError, invalidArgument } from '../errors';
import type { ClipModel } from '../model';
import {
  MAX_EMBEDDING_INPUTS,
  buildEmbeddingsResponse,
  openAIEmbeddings,
  type EncodingFormat,
  type ModelList,
} from '../openai/embeddings';
import type { EndpointMetrics } from './metrics';

declare module 'fastify' {
  interface FastifyContextConfig {
    /** The route needs the API key when one is configured. */
    auth?: boolean;
    /** The route runs the engine: 503 until the model is loaded, and it counts against maxConcurrentRequests. */
    engine?: boolean;
  }
}

/** What the routes beside `/score` share with the server that registers them. */
export interface RouteContext {
  /** The loaded model, or undefined while it loads. */
  model(): ClipModel | undefined;
  /** Image URL bounds and image options, as `/score` uses them. */
  scoreOptions: ScoreOptions;
  bodyLimit: number;
  maxConcurrentRequests: number | undefined;
  metrics: EndpointMetrics | undefined;
  version: string;
  /** Unix seconds the server was created (`created` of `GET /v1/models`). */
  created: number;
  sendError(reply: FastifyReply, status: number, body: ErrorBody): FastifyReply;
  /** Aborts when the client closes the connection before the answer is written. */
  signalOf(reply: FastifyReply): AbortSignal;
}

/** Route config: `auth` routes need the API key; `engine` routes need the model and count as concurrent requests. */
export const AUTH_ENGINE = { config: { auth: true, engine: true } };

const JSON_TYPE = 'application/json; charset=utf-8';

function loaded(context: RouteContext): ClipModel {
  const model = context.model();
  // The onRequest hook answers 503 before any engine route runs without a model.
  if (model === undefined) throw new ClipError('CLIP_NOT_READY', 'The model is still loading');
  return model;
}

/** `encoding_format`, `normalize` and `model` of `POST /v1/embeddings/image`, from the query string. */
function uploadOptions(query: unknown): { encodingFormat: EncodingFormat; normalize: boolean; model?: string } {
  const q = (query ?? {}) as Record<string, unknown>;
  const encodingFormat = q.encoding_format ?? 'float';
  if (encodingFormat !== 'float' && encodingFormat !== 'base64') {
    throw invalidArgument('"float" or "base64"', 'the query parameter encoding_format', encodingFormat);
  }
  const normalize = q.normalize ?? 'false';
  if (normalize !== 'true' && normalize !== 'false') {
    throw invalidArgument('"true" or "false"', 'the query parameter normalize', normalize);
  }
  if (q.model !== undefined && typeof q.model !== 'string')
    throw invalidArgument('a string', 'the query parameter model', q.model);
  return {
    encodingFormat,
    normalize: normalize === 'true',
    ...(q.model !== undefined ? { model: q.model } : {}),
  };
}

async function uploadedImages(request: FastifyRequest): Promise<Buffer[]> {
  if (!request.isMultipart()) {
    if (!Buffer.isBuffer(request.body) || request.body.length === 0) {
      throw new ClipError(
        'CLIP_UNSUPPORTED_MEDIA_TYPE',
        `Expected Content-Type image/*, application/octet-stream or multipart/form-data with a non-empty body but received ${JSON.stringify((request.headers['content-type'] ?? 'none').slice(0, 100))}`,
      );
    }
    return [request.body];
  }
  const images: Buffer[] = [];
  for await (const part of request.parts()) {
    if (part.type !== 'file') {
      throw invalidArgument(
        'only file parts (query parameters carry the options)',
        `the form field ${JSON.stringify(part.fieldname)}`,
        part.value,
      );
    }
    images.push(await part.toBuffer());
  }
  if (images.length === 0) throw invalidArgument('at least one file part', 'the multipart body', 'none');
  return images;
}

/**
 * Registers the routes beside the Azure contract's `/score` on an encapsulated scope (so the upload parsers
 * stay theirs): `POST /v1/embeddings` and `/embeddings` (OpenAI's API with Infinity's, Jina's and vLLM's image
 * forms), `POST /v1/embeddings/image` (raw or multipart image uploads), `GET /v1/models` and `GET /info`.
 */
export async function registerRoutes(scope: FastifyInstance, context: RouteContext): Promise<void> {
  await scope.register(multipart, {
    limits: { fileSize: context.bodyLimit, files: MAX_EMBEDDING_INPUTS, fields: 16, parts: MAX_EMBEDDING_INPUTS },
  });
  // One image as the whole body; the server's body limit holds.
  const raw = (
    _request: FastifyRequest,
    body: Buffer | string,
    done: (error: Error | null, body?: unknown) => void,
  ) => {
    done(null, body);
  };
  scope.addContentTypeParser(/^image\//i, { parseAs: 'buffer' }, raw);
  scope.addContentTypeParser('application/octet-stream', { parseAs: 'buffer' }, raw);

  const metrics = context.metrics;
  const onFetch = metrics && ((seconds: number) => metrics.observeStage('fetch', 'image', seconds));

  const embeddingsHandler = async (request: FastifyRequest, reply: FastifyReply) => {
    const result = await openAIEmbeddings(loaded(context), request.body, {
      ...context.scoreOptions,
      signal: context.signalOf(reply),
      onFetch,
    });
    return reply.type(JSON_TYPE).send(result);
  };
  scope.post('/v1/embeddings', AUTH_ENGINE, embeddingsHandler);
  scope.post('/embeddings', AUTH_ENGINE, embeddingsHandler);

  scope.post('/v1/embeddings/image', AUTH_ENGINE, async (request, reply) => {
    const options = uploadOptions(request.query);
    const model = loaded(context);
    const images = await uploadedImages(request);
    const { applyExifOrientation, maxPixels } = context.scoreOptions;
    const vectors = await model.embedImages(images, {
      applyExifOrientation,
      maxPixels,
      signal: context.signalOf(reply),
    });
    return reply
      .type(JSON_TYPE)
      .send(buildEmbeddingsResponse(vectors, { ...options, model: options.model ?? model.info.name }));
  });

  scope.get('/v1/models', { config: { auth: true, engine: false } }, async (_request, reply) => {
    const model = context.model();
    const list: ModelList = {
      object: 'list',
      data: model ? [{ id: model.info.name, object: 'model', created: context.created, owned_by: 'clip-native' }] : [],
    };
    return reply.type(JSON_TYPE).send(list);
  });

  scope.get('/info', async (_request, reply) => {
    const model = context.model();
    const info = model?.info;
    return reply.type(JSON_TYPE).send({
      version: context.version,
      ready: model !== undefined,
      model: info
        ? { name: info.name, embedDim: info.embedDim, imageSize: info.imageSize, contextLength: info.contextLength }
        : null,
      device: info?.device ?? null,
      dtype: info?.dtype ?? null,
      limits: {
        maxInputsPerRequest: MAX_EMBEDDING_INPUTS,
        maxBodyBytes: context.bodyLimit,
        maxConcurrentRequests: context.maxConcurrentRequests ?? null,
        queueCapacity: info?.queueCapacity ?? null,
        maxBatchImages: info?.maxBatchImages ?? null,
        maxBatchTexts: info?.maxBatchTexts ?? null,
        maxTextTokens: info?.contextLength ?? null,
        maxImagePixels: context.scoreOptions.maxPixels ?? null,
        maxImageBytes: context.scoreOptions.maxImageBytes ?? 20 * 1024 * 1024,
      },
    });
  });
}

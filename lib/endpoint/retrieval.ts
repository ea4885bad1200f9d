import type { FastifyInstance, FastifyReply } from 'fastify';
import { parseImageSource } from '../azure/image_string';
import type { ResolvedScoreOptions } from '../azure/score';
import { ClipError, invalidArgument } from '../errors';
import type { ClipModel, EmbedItem } from '../model';
import { fetchImage } from '../net/fetch';

/** What the retrieval routes need from the server that registers them. */
export interface RetrievalRouteContext {
  /** The loaded model, or undefined while loading or closing. */
  model(): ClipModel | undefined;
  /** Answers 503 `CLIP_NOT_READY`. */
  notReady(reply: FastifyReply): FastifyReply;
  /** The server's resolved image options (URL bounds, EXIF, pixel limit). */
  options: ResolvedScoreOptions;
}

/** Route config that makes the server's onRequest hooks check the API key, readiness and the concurrency limit. */
export const PROTECTED = { auth: true, engine: true };

function isObject(value: unknown): value is Record<string, unknown> {
  return value !== null && typeof value === 'object' && !Array.isArray(value);
}

/** The bytes of an image string (URL, base64 or data: URI), fetched within the server's bounds. */
async function imageBytes(value: unknown, name: string, options: ResolvedScoreOptions, signal: AbortSignal) {
  if (typeof value !== 'string')
    throw invalidArgument('an image string (http(s) URL, base64 or data: URI)', name, value);
  const source = parseImageSource(value, name);
  return source.kind === 'inline' ? source.bytes : fetchImage(source.url, options.fetch, signal);
}

/** A request item `{ text }` or `{ image }` (an image string) as a model item. */
async function item(
  value: unknown,
  name: string,
  options: ResolvedScoreOptions,
  signal: AbortSignal,
): Promise<EmbedItem> {
  if (!isObject(value) || (value.text === undefined) === (value.image === undefined)) {
    throw invalidArgument('an object with exactly one of text or image', name, value);
  }
  if (value.text !== undefined) {
    if (typeof value.text !== 'string') throw invalidArgument('a string', `${name}.text`, value.text);
    return { text: value.text };
  }
  return { image: await imageBytes(value.image, `${name}.image`, options, signal) };
}

/** An AbortSignal that fires when the client hangs up before the answer is sent. */
function clientSignal(reply: FastifyReply): AbortSignal {
  const controller = new AbortController();
  reply.raw.once('close', () => {
    if (!reply.raw.writableFinished)
      controller.abort(new ClipError('CLIP_ABORTED', 'The client closed the connection'));
  });
  return controller.signal;
}

/**
 * `POST /v1/classify` (`{image, labels, template?}` → `{data: [{label, score, cosine}]}`, zero-shot) and
 * `POST /v1/rank` (`{query, candidates, topK?}` → `{data: [{index, score, cosine}]}`), with the errors, body
 * limit, API key and image rules of `POST /score`. Errors reach the server's error handler.
 */
export function registerRetrievalRoutes(app: FastifyInstance, context: RetrievalRouteContext): void {
  const { options } = context;
  const json = 'application/json; charset=utf-8';

  app.post('/v1/classify', { config: PROTECTED }, async (request, reply) => {
    const model = context.model();
    if (model === undefined) return context.notReady(reply);
    const body = request.body;
    if (!isObject(body)) throw invalidArgument('a JSON object { image, labels, template? }', 'body', body);
    const signal = clientSignal(reply);
    const image = await imageBytes(body.image, 'image', options, signal);
    const data = await model.zeroShot(image, body.labels as string[], {
      ...options.submit,
      template: body.template as string | string[] | undefined,
      signal,
    });
    return reply.type(json).send({ data });
  });

  app.post('/v1/rank', { config: PROTECTED }, async (request, reply) => {
    const model = context.model();
    if (model === undefined) return context.notReady(reply);
    const body = request.body;
    if (!isObject(body)) throw invalidArgument('a JSON object { query, candidates, topK? }', 'body', body);
    if (!Array.isArray(body.candidates))
      throw invalidArgument('an array of { text } or { image } items', 'candidates', body.candidates);
    const signal = clientSignal(reply);
    const candidates: unknown[] = body.candidates;
    const [query, ...items] = await Promise.all([
      item(body.query, 'query', options, signal),
      ...candidates.map((candidate, i) => item(candidate, `candidates[${i}]`, options, signal)),
    ]);
    const data = await model.rank(query, items, { ...options.submit, topK: body.topK as number | undefined, signal });
    return reply.type(json).send({ data });
  });
}

const ITEM = {
  type: 'object',
  description: 'A text or an image (http(s) URL, base64 or data: URI): exactly one of the two.',
  properties: { text: { type: 'string' }, image: { type: 'string' } },
};

/** The OpenAPI paths and schemas of the retrieval routes; `responses` are those shared with `POST /score`. */
export function retrievalOpenApi(apiKey: boolean, responses: Record<string, unknown>) {
  const operation = (operationId: string, summary: string, request: unknown, result: unknown) => ({
    post: {
      operationId,
      summary,
      ...(apiKey ? { security: [{ bearerKey: [] }] } : {}),
      requestBody: { required: true, content: { 'application/json': { schema: request } } },
      responses: {
        '200': {
          description: 'Best first.',
          content: {
            'application/json': {
              schema: { type: 'object', required: ['data'], properties: { data: { type: 'array', items: result } } },
            },
          },
        },
        ...responses,
      },
    },
  });
  const score = { type: 'number', description: 'softmax(logitScale x cosine) over all labels or candidates.' };
  const cosine = { type: 'number', description: 'Cosine similarity.' };
  return {
    '/v1/classify': operation(
      'classify',
      'Zero-shot classification of one image against text labels',
      {
        type: 'object',
        required: ['image', 'labels'],
        properties: {
          image: { type: 'string', description: 'An http(s) URL, base64 or a data: URI.' },
          labels: { type: 'array', items: { type: 'string' }, minItems: 1 },
          template: {
            oneOf: [{ type: 'string' }, { type: 'array', items: { type: 'string' }, minItems: 1 }],
            description: 'Prompt template(s) with {} for the label; several are averaged. Default "a photo of a {}.".',
          },
        },
      },
      { type: 'object', properties: { label: { type: 'string' }, score, cosine } },
    ),
    '/v1/rank': operation(
      'rank',
      'Rank texts or images against a text or image query',
      {
        type: 'object',
        required: ['query', 'candidates'],
        properties: {
          query: ITEM,
          candidates: { type: 'array', items: ITEM, minItems: 1 },
          topK: { type: 'integer', minimum: 1 },
        },
      },
      { type: 'object', properties: { index: { type: 'integer' }, score, cosine } },
    ),
  };
}

/** The OpenAPI paths and schemas of the routes beside `POST /score` (see routes.ts and server.ts). */

const errorRef = { $ref: '#/components/schemas/Error' };

const error = (description: string, retryAfter = false) => ({
  description,
  ...(retryAfter
    ? { headers: { 'Retry-After': { description: 'Seconds to wait before retrying.', schema: { type: 'integer' } } } }
    : {}),
  content: { 'application/json': { schema: errorRef } },
});

const engineErrors = (apiKey: boolean, bad: string) => ({
  '400': error(bad),
  ...(apiKey ? { '401': error('Missing or wrong API key.') } : {}),
  '413': error('Request body too large, or more inputs than a request takes.'),
  '415': error('A Content-Type the route does not take.'),
  '429': error('The engine queue is full, or maxConcurrentRequests requests are in flight.', true),
  '500': error('Internal error.'),
  '503': error('The model is loading or the server is shutting down.', true),
});

const healthAnswer = {
  responses: {
    '200': {
      description: 'The model is loaded and the engine moves.',
      content: { 'text/plain': { schema: { type: 'string', example: 'Healthy' } } },
    },
    '503': error(
      'The model is loading, the server is shutting down, or the engine has had work waiting without progress for longer than the watchdog interval.',
      true,
    ),
  },
};

const embeddingsAnswer = {
  description: "OpenAI's embeddings list, one embedding per input in input order.",
  content: { 'application/json': { schema: { $ref: '#/components/schemas/EmbeddingsResponse' } } },
};

/** The paths and component schemas to merge into the document of `GET /swagger.json`. */
export function routesOpenApi(options: {
  embedDim: number;
  apiKey: boolean;
  scoreOperation: Record<string, unknown>;
}): {
  paths: Record<string, unknown>;
  schemas: Record<string, unknown>;
} {
  const security = options.apiKey ? { security: [{ bearerKey: [] }] } : {};
  const embeddingsPost = (operationId: string) => ({
    post: {
      operationId,
      summary: 'Embed texts, images or token ids (OpenAI embeddings API; Infinity, Jina and vLLM image forms)',
      ...security,
      requestBody: {
        required: true,
        content: { 'application/json': { schema: { $ref: '#/components/schemas/EmbeddingsRequest' } } },
      },
      responses: {
        '200': embeddingsAnswer,
        ...engineErrors(
          options.apiKey,
          "Bad JSON or shape, dimensions other than the model's, an image that cannot be read, fetched or decoded.",
        ),
      },
    },
  });
  const query = (name: string, schema: Record<string, unknown>, description: string) => ({
    name,
    in: 'query',
    required: false,
    schema,
    description,
  });
  return {
    paths: {
      '/': { get: { operationId: 'root', summary: "Health (Azure's route)", ...healthAnswer } },
      '/swagger.json': {
        get: {
          operationId: 'openapi',
          summary: 'This document',
          responses: {
            '200': { description: 'OpenAPI 3.0', content: { 'application/json': { schema: { type: 'object' } } } },
          },
        },
      },
      '/metrics': {
        get: {
          operationId: 'metrics',
          summary:
            'Prometheus metrics: requests by route and status, latency, per-stage time (fetch, prepare, queue, inference), engine queue and throughput',
          responses: {
            '200': {
              description: 'Prometheus text format.',
              content: { 'text/plain': { schema: { type: 'string' } } },
            },
          },
        },
      },
      '/ping': { get: { operationId: 'ping', summary: "Health (SageMaker's route)", ...healthAnswer } },
      '/health': { get: { operationId: 'health', summary: 'Health', ...healthAnswer } },
      '/invocations': {
        post: {
          ...options.scoreOperation,
          operationId: 'invocations',
          summary: "The /score contract on SageMaker's route",
        },
      },
      '/v1/embeddings': embeddingsPost('createEmbeddings'),
      '/embeddings': embeddingsPost('createEmbeddingsUnversioned'),
      '/v1/embeddings/image': {
        post: {
          operationId: 'embedUploadedImages',
          summary: 'Embed images sent as the raw body (one) or as multipart/form-data file parts (one or more)',
          ...security,
          parameters: [
            query(
              'encoding_format',
              { type: 'string', enum: ['float', 'base64'], default: 'float' },
              'How embeddings are written.',
            ),
            query('normalize', { type: 'boolean', default: false }, 'Scale each embedding to unit length.'),
            query('model', { type: 'string' }, 'Echoed back in the answer.'),
          ],
          requestBody: {
            required: true,
            content: {
              'image/*': { schema: { type: 'string', format: 'binary' } },
              'application/octet-stream': { schema: { type: 'string', format: 'binary' } },
              'multipart/form-data': {
                schema: {
                  type: 'object',
                  properties: { file: { type: 'array', items: { type: 'string', format: 'binary' } } },
                },
              },
            },
          },
          responses: {
            '200': embeddingsAnswer,
            ...engineErrors(
              options.apiKey,
              'An image that cannot be decoded, an empty body, a form field that is not a file, a bad query parameter.',
            ),
          },
        },
      },
      '/v1/models': {
        get: {
          operationId: 'listModels',
          summary: 'The loaded model, as an OpenAI model list',
          ...security,
          responses: {
            '200': {
              description: 'The list (empty while the model loads).',
              content: { 'application/json': { schema: { type: 'object' } } },
            },
            ...(options.apiKey ? { '401': error('Missing or wrong API key.') } : {}),
          },
        },
      },
      '/info': {
        get: {
          operationId: 'info',
          summary: 'Model, device, dtype, version and per-request limits',
          responses: {
            '200': {
              description: 'Server and model information.',
              content: { 'application/json': { schema: { type: 'object' } } },
            },
          },
        },
      },
    },
    schemas: {
      EmbeddingsRequest: {
        type: 'object',
        description: 'Exactly one of input or messages.',
        properties: {
          input: {
            description:
              'A string, an array of strings, token ids (CLIP BPE ids, bos and eos included) or arrays of them, or an array of {text} / {image} objects (Jina). At most 2048 inputs.',
            oneOf: [
              { type: 'string' },
              { type: 'array', items: { type: 'string' } },
              { type: 'array', items: { type: 'integer' } },
              { type: 'array', items: { type: 'array', items: { type: 'integer' } } },
              {
                type: 'array',
                items: {
                  type: 'object',
                  properties: {
                    text: { type: 'string' },
                    image: { type: 'string', description: 'An http(s) URL, base64 or a data: URI.' },
                  },
                },
              },
            ],
          },
          messages: {
            type: 'array',
            description:
              "vLLM's chat form: each text and image_url part of each message gives one embedding, in order.",
            items: {
              type: 'object',
              properties: {
                role: { type: 'string' },
                content: { oneOf: [{ type: 'string' }, { type: 'array', items: { type: 'object' } }] },
              },
            },
          },
          modality: {
            type: 'string',
            enum: ['text', 'image'],
            default: 'text',
            description: "Infinity's form: with image, the strings of input are images.",
          },
          model: { type: 'string' },
          encoding_format: { type: 'string', enum: ['float', 'base64'], default: 'float' },
          dimensions: {
            type: 'integer',
            enum: [options.embedDim],
            description: "Must be the model's embedding size when given.",
          },
          normalize: { type: 'boolean', default: false },
          user: { type: 'string' },
        },
        example: { input: ['a photo of a cat'], model: 'clip', encoding_format: 'float' },
      },
      EmbeddingsResponse: {
        type: 'object',
        required: ['object', 'data', 'model', 'usage'],
        properties: {
          object: { type: 'string', enum: ['list'] },
          data: {
            type: 'array',
            items: {
              type: 'object',
              properties: {
                object: { type: 'string', enum: ['embedding'] },
                index: { type: 'integer' },
                embedding: {
                  oneOf: [
                    {
                      type: 'array',
                      items: { type: 'number', format: 'float' },
                      minItems: options.embedDim,
                      maxItems: options.embedDim,
                    },
                    { type: 'string', format: 'byte', description: 'Little-endian float32 bytes, base64.' },
                  ],
                },
              },
            },
          },
          model: { type: 'string' },
          usage: {
            type: 'object',
            properties: { prompt_tokens: { type: 'integer' }, total_tokens: { type: 'integer' } },
          },
        },
      },
    },
  };
}

import { routesOpenApi } from './openapi_routes';

/** Options of {@link openApiDocument}. */
export interface OpenApiOptions {
  /** Package version shown in `info.version`. */
  version: string;
  /** Length of each feature vector. */
  embedDim: number;
  /** Whether `POST /score` needs `Authorization: Bearer <key>`. */
  apiKey: boolean;
  /** The route prefix every path is served under ('' for none). */
  prefix?: string;
}

const errorResponse = (description: string, retryAfter = false) => ({
  description,
  ...(retryAfter
    ? { headers: { 'Retry-After': { description: 'Seconds to wait before retrying.', schema: { type: 'integer' } } } }
    : {}),
  content: { 'application/json': { schema: { $ref: '#/components/schemas/Error' } } },
});

/**
 * The OpenAPI 3.0 description that `GET /swagger.json` serves: `POST /score` (the Azure ML CLIP
 * embeddings wire format) and every route beside it, with the error answers.
 */
export function openApiDocument(options: OpenApiOptions): Record<string, unknown> {
  const features = (what: string) => ({
    type: 'array',
    items: { type: 'number', format: 'float' },
    minItems: options.embedDim,
    maxItems: options.embedDim,
    description: `${what} embedding (${options.embedDim} numbers, not normalized).`,
  });
  const document = {
    openapi: '3.0.3',
    info: {
      title: 'clip-native CLIP embeddings endpoint',
      version: options.version,
      description:
        'Image and text embeddings in the wire format of the Azure ML CLIP embeddings endpoint. ' +
        'An image is an http(s) URL, base64 (MIME line breaks allowed) or a data: URI; an empty ' +
        'string means the row has no such input.',
    },
    servers: [{ url: options.prefix || '/' }],
    paths: {
      '/score': {
        post: {
          operationId: 'score',
          summary: 'Embed the images and texts of each row',
          ...(options.apiKey ? { security: [{ bearerKey: [] }] } : {}),
          requestBody: {
            required: true,
            content: { 'application/json': { schema: { $ref: '#/components/schemas/ScoreRequest' } } },
          },
          responses: {
            '200': {
              description: 'One object per row, in row order.',
              content: {
                'application/json': {
                  schema: { type: 'array', items: { $ref: '#/components/schemas/ScoreRow' } },
                },
              },
            },
            '400': errorResponse(
              "Bad JSON or shape, an index whose length differs from data's, an image that cannot be read, fetched or decoded, or a row with neither image nor text.",
            ),
            ...(options.apiKey ? { '401': errorResponse('Missing or wrong API key.') } : {}),
            '413': errorResponse('Request body too large.'),
            '415': errorResponse('Content-Type is not application/json.'),
            '429': errorResponse('The engine queue is full; retry after Retry-After seconds.', true),
            '500': errorResponse('Internal error.'),
            '503': errorResponse('The model is loading or the server is shutting down.', true),
          },
        },
      },
    },
    components: {
      schemas: {
        ScoreRequest: {
          type: 'object',
          required: ['input_data'],
          properties: {
            input_data: {
              type: 'object',
              description: 'A DataFrame in split orientation.',
              required: ['columns', 'data'],
              properties: {
                columns: {
                  type: 'array',
                  items: { type: 'string', enum: ['image', 'text'] },
                  minItems: 1,
                  maxItems: 2,
                  uniqueItems: true,
                },
                index: {
                  type: 'array',
                  items: { oneOf: [{ type: 'integer' }, { type: 'string' }] },
                  description: 'Optional row labels; as long as data when present.',
                },
                data: {
                  type: 'array',
                  items: { type: 'array', items: { type: 'string', nullable: true } },
                  description: 'One array per row, one value per column.',
                },
              },
            },
          },
          example: {
            input_data: {
              columns: ['image', 'text'],
              index: [0, 1],
              data: [
                ['https://example.com/cat.jpg', ''],
                ['', 'a photo of a cat'],
              ],
            },
          },
        },
        ScoreRow: {
          type: 'object',
          properties: { image_features: features('Image'), text_features: features('Text') },
        },
        Error: {
          type: 'object',
          required: ['message', 'code'],
          properties: {
            message: { type: 'string' },
            code: { type: 'string', example: 'CLIP_INVALID_ARGUMENT' },
            row: { type: 'integer', description: 'The failing row (0-based, data order), for row errors.' },
          },
        },
      },
      ...(options.apiKey ? { securitySchemes: { bearerKey: { type: 'http', scheme: 'bearer' } } } : {}),
    },
  };
  const routes = routesOpenApi({ ...options, scoreOperation: document.paths['/score'].post });
  Object.assign(document.paths, routes.paths);
  Object.assign(document.components.schemas, routes.schemas);
  return document;
}

import { parseImageSource, type ImageSource } from '../azure/image_string';
import { resolveScoreOptions, type ScoreOptions } from '../azure/score';
import { checkBoolean } from '../check';
import { mapLimit } from '../concurrency';
import { ClipError, describe, invalidArgument, toClipError } from '../errors';
import type { ClipModel, EmbedItem, ModelInfo } from '../model';
import { fetchImage } from '../net/fetch';
import type { Embedding, EmbeddingsRequest, EmbeddingsResponse } from './types';

export type { Embedding, EmbeddingsMessage, EmbeddingsRequest, EmbeddingsResponse, ModelList } from './types';

/** OpenAI's limit on the inputs of one embeddings request. */
export const MAX_EMBEDDING_INPUTS = 2048;

/** How embeddings are written: numbers, or little-endian float32 bytes in base64. */
export type EncodingFormat = 'float' | 'base64';

/** One input of a parsed request, with the name its errors use (`input[2]`, `messages[0].content[1]`). */
export type EmbeddingsInput = { name: string } & (
  { kind: 'text'; text: string } | { kind: 'image'; source: ImageSource } | { kind: 'tokens'; ids: Int32Array }
);

/** {@link parseEmbeddingsRequest}'s result. */
export interface ParsedEmbeddingsRequest {
  inputs: EmbeddingsInput[];
  encodingFormat: EncodingFormat;
  normalize: boolean;
  /** The `model` the client named, if any. */
  model?: string;
}

/** How a model shapes the requests it takes: its {@link ModelInfo} fields that parsing needs. */
export type EmbeddingsLimits = Pick<ModelInfo, 'embedDim' | 'vocabSize' | 'contextLength'>;

/** Options of {@link openAIEmbeddings}. */
export interface EmbeddingsOptions extends ScoreOptions {
  /** Called with the seconds each image URL fetch took, failed ones included. */
  onFetch?: (seconds: number) => void;
}

const isRecord = (value: unknown): value is Record<string, unknown> =>
  value !== null && typeof value === 'object' && !Array.isArray(value);

function tokenIds(value: unknown[], name: string, limits: EmbeddingsLimits): Int32Array {
  if (value.length === 0 || value.length > limits.contextLength) {
    throw invalidArgument(`1 to ${limits.contextLength} token ids`, name, value);
  }
  value.forEach((id, i) => {
    if (typeof id !== 'number' || !Number.isInteger(id) || id < 0 || id >= limits.vocabSize) {
      throw invalidArgument(`a token id from 0 to ${limits.vocabSize - 1}`, `${name}[${i}]`, id);
    }
  });
  return Int32Array.from(value as number[]);
}

function image(value: unknown, name: string): EmbeddingsInput {
  if (typeof value !== 'string') throw invalidArgument('an http(s) URL, base64 or a data: URI', name, value);
  return { kind: 'image', source: parseImageSource(value, name), name };
}

function text(value: unknown, name: string): EmbeddingsInput {
  if (typeof value !== 'string') throw invalidArgument('a string', name, value);
  return { kind: 'text', text: value, name };
}

function fromInput(input: unknown, imageStrings: boolean, limits: EmbeddingsLimits): EmbeddingsInput[] {
  const fromString = imageStrings ? image : text;
  if (typeof input === 'string') return [fromString(input, 'input')];
  if (!Array.isArray(input) || input.length === 0) {
    throw invalidArgument(
      'a string, a non-empty array of strings, token ids or { text } / { image } objects',
      'input',
      input,
    );
  }
  if (typeof input[0] === 'number') return [{ kind: 'tokens', ids: tokenIds(input, 'input', limits), name: 'input' }];
  return input.map((value: unknown, i) => {
    const name = `input[${i}]`;
    if (typeof value === 'string') return fromString(value, name);
    if (Array.isArray(value)) return { kind: 'tokens', ids: tokenIds(value, name, limits), name };
    if (isRecord(value)) {
      const keys = ['text', 'image'].filter((key) => value[key] !== undefined);
      if (keys.length === 1)
        return keys[0] === 'text' ? text(value.text, `${name}.text`) : image(value.image, `${name}.image`);
    }
    throw invalidArgument('a string, token ids, or an object with exactly one of text or image', name, value);
  });
}

function fromMessages(messages: unknown): EmbeddingsInput[] {
  if (!Array.isArray(messages) || messages.length === 0) {
    throw invalidArgument('a non-empty array of chat messages', 'messages', messages);
  }
  const inputs: EmbeddingsInput[] = [];
  messages.forEach((message: unknown, m) => {
    const name = `messages[${m}].content`;
    const content = isRecord(message) ? message.content : undefined;
    if (typeof content === 'string') {
      inputs.push(text(content, name));
      return;
    }
    if (!Array.isArray(content)) throw invalidArgument('a string or an array of content parts', name, content);
    content.forEach((part: unknown, p) => {
      const at = `${name}[${p}]`;
      if (isRecord(part) && part.type === 'text') inputs.push(text(part.text, `${at}.text`));
      else if (isRecord(part) && part.type === 'image_url') {
        const url = isRecord(part.image_url) ? part.image_url.url : part.image_url;
        inputs.push(image(url, `${at}.image_url.url`));
      } else throw invalidArgument('a content part of type "text" or "image_url"', at, part);
    });
  });
  if (inputs.length === 0) throw invalidArgument('messages with at least one content part', 'messages', messages);
  return inputs;
}

/**
 * Reads the body of `POST /v1/embeddings` (see {@link EmbeddingsRequest}) into inputs, in answer order.
 *
 * Throws `CLIP_INVALID_ARGUMENT` (shape, an unknown `encoding_format` or `modality`, `dimensions` other than
 * the model's, token ids out of range, an image string that is none), `CLIP_URL_FORBIDDEN` (an image URL of
 * another scheme than http(s)) and `CLIP_REQUEST_TOO_LARGE` (more than {@link MAX_EMBEDDING_INPUTS} inputs).
 */
export function parseEmbeddingsRequest(body: unknown, limits: EmbeddingsLimits): ParsedEmbeddingsRequest {
  if (!isRecord(body)) throw invalidArgument('a JSON object with input or messages', 'the request body', body);
  const request = body as EmbeddingsRequest & Record<string, unknown>;
  const encodingFormat = request.encoding_format ?? 'float';
  if (encodingFormat !== 'float' && encodingFormat !== 'base64') {
    throw invalidArgument('"float" or "base64"', 'encoding_format', encodingFormat);
  }
  if (request.dimensions !== undefined && request.dimensions !== limits.embedDim) {
    throw new ClipError(
      'CLIP_INVALID_ARGUMENT',
      `Expected ${limits.embedDim} (the model's embedding size; CLIP embeddings cannot be shortened) for dimensions but received ${describe(request.dimensions)}`,
    );
  }
  if (request.model !== undefined && typeof request.model !== 'string')
    throw invalidArgument('a string', 'model', request.model);
  if (request.user !== undefined && typeof request.user !== 'string')
    throw invalidArgument('a string', 'user', request.user);
  const modality = request.modality ?? 'text';
  if (modality !== 'text' && modality !== 'image') throw invalidArgument('"text" or "image"', 'modality', modality);
  const normalize = checkBoolean(request.normalize, 'normalize', false);
  if ((request.input === undefined) === (request.messages === undefined)) {
    throw new ClipError(
      'CLIP_INVALID_ARGUMENT',
      'Expected exactly one of input or messages for the request body but received ' +
        (request.input === undefined ? 'neither' : 'both'),
    );
  }
  const count = Array.isArray(request.input) && typeof request.input[0] !== 'number' ? request.input.length : 0;
  if (count > MAX_EMBEDDING_INPUTS) {
    throw new ClipError(
      'CLIP_REQUEST_TOO_LARGE',
      `Expected at most ${MAX_EMBEDDING_INPUTS} inputs for input but received ${count}`,
    );
  }
  const inputs =
    request.input !== undefined
      ? fromInput(request.input, modality === 'image', limits)
      : fromMessages(request.messages);
  if (inputs.length > MAX_EMBEDDING_INPUTS) {
    throw new ClipError(
      'CLIP_REQUEST_TOO_LARGE',
      `Expected at most ${MAX_EMBEDDING_INPUTS} inputs for messages but received ${inputs.length}`,
    );
  }
  return { inputs, encodingFormat, normalize, ...(request.model !== undefined ? { model: request.model } : {}) };
}

/** An embedding's little-endian float32 bytes in base64, as OpenAI's `encoding_format: "base64"` writes it. */
export function float32ToBase64(vector: Float32Array): string {
  const bytes = Buffer.alloc(vector.length * 4);
  vector.forEach((value, i) => bytes.writeFloatLE(value, i * 4));
  return bytes.toString('base64');
}

/** The inverse of {@link float32ToBase64}. Throws `CLIP_INVALID_ARGUMENT` when the length is not a multiple of 4 bytes. */
export function base64ToFloat32(encoded: string): Float32Array {
  const bytes = Buffer.from(encoded, 'base64');
  if (bytes.length % 4 !== 0) throw invalidArgument('base64 of a multiple of 4 bytes', 'encoded', encoded);
  return Float32Array.from({ length: bytes.length / 4 }, (_, i) => bytes.readFloatLE(i * 4));
}

function unit(vector: Float32Array): Float32Array {
  let sum = 0;
  for (const value of vector) sum += value * value;
  const norm = Math.sqrt(sum);
  return norm > 0 ? vector.map((value) => value / norm) : vector;
}

/** Options of {@link buildEmbeddingsResponse}. */
export interface EmbeddingsResponseOptions {
  model: string;
  encodingFormat?: EncodingFormat;
  normalize?: boolean;
  promptTokens?: number;
}

/** The OpenAI answer for embeddings in input order. */
export function buildEmbeddingsResponse(
  vectors: readonly Float32Array[],
  options: EmbeddingsResponseOptions,
): EmbeddingsResponse {
  const data = vectors.map((raw, index): Embedding => {
    const vector = options.normalize ? unit(raw) : raw;
    return {
      object: 'embedding',
      index,
      embedding: options.encodingFormat === 'base64' ? float32ToBase64(vector) : Array.from(vector),
    };
  });
  const tokens = options.promptTokens ?? 0;
  return { object: 'list', data, model: options.model, usage: { prompt_tokens: tokens, total_tokens: tokens } };
}

/** Tokens of a tokenized text up to and including its eos (CLIP pads with the eos id, so the last id is it). */
function tokenCount(ids: Int32Array): number {
  const end = ids.indexOf(ids[ids.length - 1], 1);
  return end < 0 ? ids.length : end + 1;
}

/** An item error of `model.embed`/`_submit` renamed to the request's own name for that input. */
function renamed(error: unknown, names: readonly string[]): ClipError {
  const failed = toClipError(error);
  if (failed.index === undefined || names[failed.index] === undefined) return failed;
  const cause = failed.cause as { message?: unknown } | undefined;
  const reason = typeof cause?.message === 'string' ? cause.message : failed.message;
  return new ClipError(failed.code, `${names[failed.index]}: ${reason}`, { index: failed.index, cause: failed });
}

/**
 * OpenAI's embeddings API on a model: the body of `POST /v1/embeddings` in (see {@link EmbeddingsRequest}), its
 * 200 answer out. Texts, images (fetched within the bounds of `options`, like the Azure contract's) and token
 * ids may mix; each input gets one embedding, in input order, equal to what `embedTexts`/`embedImages` gives.
 *
 * Rejects with the codes of {@link parseEmbeddingsRequest}, and `CLIP_URL_FORBIDDEN`, `CLIP_IMAGE_FETCH_FAILED`,
 * `CLIP_IMAGE_DECODE_FAILED`, `CLIP_UNSUPPORTED_IMAGE_FORMAT`, `CLIP_IMAGE_TOO_LARGE` for an input (the message
 * names it), `CLIP_REQUEST_TOO_LARGE` when more texts or images come than the model's `queueCapacity`,
 * `CLIP_QUEUE_FULL`, `CLIP_ABORTED`, `CLIP_DISPOSED`.
 */
export async function openAIEmbeddings(
  model: ClipModel,
  body: unknown,
  options: EmbeddingsOptions = {},
): Promise<EmbeddingsResponse> {
  const { onFetch, ...scoreOptions } = options;
  if (onFetch !== undefined && typeof onFetch !== 'function') {
    throw invalidArgument('a function', 'options.onFetch', onFetch);
  }
  const resolved = resolveScoreOptions(scoreOptions);
  const info = model.info;
  const request = parseEmbeddingsRequest(body, info);
  const counts = { text: 0, image: 0 };
  for (const input of request.inputs) counts[input.kind === 'image' ? 'image' : 'text']++;
  for (const kind of ['text', 'image'] as const) {
    if (counts[kind] > info.queueCapacity) {
      throw new ClipError(
        'CLIP_REQUEST_TOO_LARGE',
        `The request has ${counts[kind]} ${kind} inputs; at most ${info.queueCapacity} are taken in one request (the model's queueCapacity)`,
      );
    }
  }

  // The first failing fetch stops the others; so does the caller's signal.
  const controller = new AbortController();
  const outer = resolved.signal;
  const onAbort = () => controller.abort(outer!.reason);
  if (outer?.aborted) controller.abort(outer.reason);
  outer?.addEventListener('abort', onAbort, { once: true });
  try {
    const names = request.inputs.map((input) => input.name);
    const fetched = await mapLimit(
      request.inputs,
      resolved.fetchConcurrency,
      async (input): Promise<EmbedItem | Int32Array | ClipError> => {
        if (input.kind === 'text') return { text: input.text };
        if (input.kind === 'tokens') return input.ids;
        if (input.source.kind === 'inline') return { image: input.source.bytes };
        const started = performance.now();
        try {
          return { image: await fetchImage(input.source.url, resolved.fetch, controller.signal) };
        } catch (error) {
          const failed = toClipError(error);
          if (!controller.signal.aborted) controller.abort(failed);
          return new ClipError(failed.code, `${input.name}: ${failed.message}`, { cause: failed });
        } finally {
          onFetch?.((performance.now() - started) / 1000);
        }
      },
    );
    const errors = fetched.filter((value) => value instanceof ClipError);
    // The real failure, not the aborts it caused in its siblings.
    const failed = errors.find((error) => error.code !== 'CLIP_ABORTED') ?? errors[0];
    if (failed) throw failed;

    const itemAt: number[] = [];
    const items: EmbedItem[] = [];
    const tokenAt: number[] = [];
    const tokens: Int32Array[] = [];
    fetched.forEach((value, i) => {
      if (value instanceof Int32Array) {
        tokens.push(value);
        tokenAt.push(i);
      } else {
        items.push(value as EmbedItem);
        itemAt.push(i);
      }
    });
    const texts = request.inputs.flatMap((input) => (input.kind === 'text' ? [input.text] : []));
    const signal = controller.signal;
    const [itemVectors, tokenVectors, tokenized] = await Promise.all([
      model.embed(items, { ...resolved.submit, signal }).catch((error: unknown) => {
        throw renamed(
          error,
          itemAt.map((i) => names[i]),
        );
      }),
      tokens.length === 0 ? [] : model._embedEach('tokens', tokens, { signal }),
      model.tokenize(texts, { signal }),
    ]);
    const vectors = new Array<Float32Array>(request.inputs.length);
    itemAt.forEach((at, k) => (vectors[at] = itemVectors[k]));
    tokenVectors.forEach((value, k) => {
      if (value instanceof Error)
        throw new ClipError(value.code, `${names[tokenAt[k]]}: ${value.message}`, { cause: value });
      vectors[tokenAt[k]] = value;
    });
    const promptTokens =
      tokenized.reduce((sum, ids) => sum + tokenCount(ids), 0) + tokens.reduce((sum, ids) => sum + ids.length, 0);
    return buildEmbeddingsResponse(vectors, {
      model: request.model ?? info.name,
      encodingFormat: request.encodingFormat,
      normalize: request.normalize,
      promptTokens,
    });
  } finally {
    outer?.removeEventListener('abort', onAbort);
  }
}

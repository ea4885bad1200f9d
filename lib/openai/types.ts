/**
 * The wire format of OpenAI's embeddings API (`POST /v1/embeddings`) as clip-native serves it, with the image
 * forms of Infinity (`modality: "image"`), Jina (`{ image }` / `{ text }` objects) and vLLM (`messages`).
 */

/** A vLLM-style chat message whose parts are embedded one by one. */
export interface EmbeddingsMessage {
  role?: string;
  /** A string is one text part. */
  content: string | Array<{ type: 'text'; text: string } | { type: 'image_url'; image_url: { url: string } | string }>;
}

/** The body of `POST /v1/embeddings`. */
export interface EmbeddingsRequest {
  /**
   * A string, an array of strings, token ids (an array of integers, or an array of such arrays: CLIP BPE ids,
   * bos and eos included), or an array of `{ text }` / `{ image }` objects (Jina). Absent when `messages` is
   * given.
   */
  input?: string | string[] | number[] | number[][] | Array<string | { text: string } | { image: string }>;
  /** vLLM's chat form: every text and `image_url` part of every message gives one embedding, in order. */
  messages?: EmbeddingsMessage[];
  /** `image` (Infinity): the strings of `input` are images (http(s) URLs, data: URIs or base64). Default `text`. */
  modality?: 'text' | 'image';
  /** Echoed back; the loaded model answers whatever is named. */
  model?: string;
  /** `float` (default): arrays of numbers; `base64`: little-endian float32 bytes, base64. */
  encoding_format?: 'float' | 'base64';
  /** Must equal the model's embedding size when given (CLIP embeddings cannot be shortened). */
  dimensions?: number;
  /** Scale each embedding to unit length. Default false, like the Azure contract. */
  normalize?: boolean;
  /** Accepted and ignored. */
  user?: string;
}

/** One embedding of {@link EmbeddingsResponse}. */
export interface Embedding {
  object: 'embedding';
  /** Position of the input it belongs to. */
  index: number;
  /** embedDim numbers, or their little-endian float32 bytes in base64. */
  embedding: number[] | string;
}

/** The 200 answer of `POST /v1/embeddings` and `POST /v1/embeddings/image`. */
export interface EmbeddingsResponse {
  object: 'list';
  data: Embedding[];
  model: string;
  /** Tokens of the texts (bos and eos included, after truncation); images count none. */
  usage: { prompt_tokens: number; total_tokens: number };
}

/** The answer of `GET /v1/models`. */
export interface ModelList {
  object: 'list';
  data: Array<{ id: string; object: 'model'; created: number; owned_by: string }>;
}

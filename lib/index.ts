export { ClipModel } from './model';
export type {
  CallOptions,
  Device,
  DType,
  EmbedItem,
  EncoderStats,
  ImageInput,
  ImageOptions,
  LoadOptions,
  ModelInfo,
  ModelStats,
} from './model';
export { ClipError, ERROR_CODES, HTTP_ERROR_CODES } from './errors';
export type { ClipErrorCode, ClipErrorOptions } from './errors';
export { scoreRows } from './azure/score';
export type { ScoreOptions } from './azure/score';
export type { ErrorBody, ScoreRequest, ScoreResponse, ScoreRowInput, ScoreRowResult } from './azure/types';
export type { RowError } from './azure/rows';
export { BATCH_FORMATS, ERROR_THRESHOLD_EXCEEDED, mergeBatchOutput, runBatchJob } from './batch/job';
export type { BatchFormat, BatchJobOptions, BatchJobResult, ErrorRecord, MergeOptions } from './batch/job';
export {
  base64ToFloat32,
  buildEmbeddingsResponse,
  float32ToBase64,
  MAX_EMBEDDING_INPUTS,
  openAIEmbeddings,
  parseEmbeddingsRequest,
} from './openai/embeddings';
export type {
  Embedding,
  EmbeddingsInput,
  EmbeddingsMessage,
  EmbeddingsOptions,
  EmbeddingsRequest,
  EmbeddingsResponse,
  EmbeddingsResponseOptions,
  EncodingFormat,
  ModelList,
  ParsedEmbeddingsRequest,
} from './openai/embeddings';

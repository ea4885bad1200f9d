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
export { cosineSimilarity, normalize, similarityMatrix } from './retrieval';
export type { RankItem, RankOptions, RankResult, ZeroShotOptions, ZeroShotResult } from './retrieval';
export type { CacheOptions, CacheStats } from './cache';
export { ClipError, ERROR_CODES, HTTP_ERROR_CODES } from './errors';
export type { ClipErrorCode, ClipErrorOptions } from './errors';
export { DEFAULT_MODEL } from './hub/reference';
export type { HubReference } from './hub/reference';
export type { ModelProgress } from './hub/progress';
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

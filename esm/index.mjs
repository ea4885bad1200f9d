// ESM entry: the implementation is CommonJS (dist/), re-exported by name. test/unit/esm.test.ts checks that
// every runtime export of dist/index.js is here.
import cjs from '../dist/index.js';

export const {
  base64ToFloat32,
  BATCH_FORMATS,
  buildEmbeddingsResponse,
  ClipError,
  ClipModel,
  cosineSimilarity,
  DEFAULT_MODEL,
  ERROR_CODES,
  ERROR_THRESHOLD_EXCEEDED,
  float32ToBase64,
  HTTP_ERROR_CODES,
  MAX_EMBEDDING_INPUTS,
  mergeBatchOutput,
  normalize,
  openAIEmbeddings,
  parseEmbeddingsRequest,
  runBatchJob,
  scoreRows,
  similarityMatrix,
} = cjs;
export default cjs;

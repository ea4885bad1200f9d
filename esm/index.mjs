// ESM entry: the implementation is CommonJS (dist/), re-exported by name. test/unit/esm.test.ts checks that
// every runtime export of dist/index.js is here.
import cjs from '../dist/index.js';

export const {
  BATCH_FORMATS,
  ClipError,
  ClipModel,
  cosineSimilarity,
  ERROR_CODES,
  ERROR_THRESHOLD_EXCEEDED,
  HTTP_ERROR_CODES,
  mergeBatchOutput,
  normalize,
  runBatchJob,
  scoreRows,
  similarityMatrix,
} = cjs;
export default cjs;

// ESM entry: the implementation is CommonJS (dist/), re-exported by name.
import cjs from '../dist/index.js';

export const { ClipModel, ClipError, ERROR_CODES } = cjs;
export default cjs;

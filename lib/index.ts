export { ClipModel } from './model';
export type {
  CallOptions,
  Device,
  DType,
  EncoderStats,
  ImageInput,
  ImageOptions,
  LoadOptions,
  ModelInfo,
  ModelStats,
} from './model';
export { ClipError, ERROR_CODES } from './errors';
export type { ClipErrorCode, ClipErrorOptions } from './errors';

import { checkInteger } from './check';
import { ClipError, invalidArgument } from './errors';
import type { ClipModel, EmbedItem, ImageInput, ImageOptions } from './model';

/** Options of {@link ClipModel.zeroShot}. */
export interface ZeroShotOptions extends ImageOptions {
  /**
   * Prompt template(s) with `{}` where the label goes. Several templates are averaged per label (normalized
   * embeddings, mean, normalized again: the CLIP paper's prompt ensembling). Default `a photo of a {}.`.
   */
  template?: string | readonly string[];
}

/** One label's answer of {@link ClipModel.zeroShot}. */
export interface ZeroShotResult {
  label: string;
  /** softmax(logitScale x cosine) over the labels; the scores sum to 1. */
  score: number;
  /** Cosine similarity of the image and the label's (ensembled) text embedding. */
  cosine: number;
}

/** What {@link ClipModel.rank} compares: a text, an encoded image, or an embedding computed before. */
export type RankItem = EmbedItem | Float32Array;

/** Options of {@link ClipModel.rank}. */
export interface RankOptions extends ImageOptions {
  /** Keep only the best this many candidates. Default: all. */
  topK?: number;
}

/** One candidate's answer of {@link ClipModel.rank}. */
export interface RankResult {
  /** The candidate's index in `candidates`. */
  index: number;
  /** softmax(logitScale x cosine) over all candidates. */
  score: number;
  /** Cosine similarity of the query and the candidate. */
  cosine: number;
}

const DEFAULT_TEMPLATE = 'a photo of a {}.';

function checkVector(v: unknown, name: string): Float32Array {
  if (!(v instanceof Float32Array)) throw invalidArgument('a Float32Array', name, v);
  return v;
}

function norm(v: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < v.length; i++) sum += v[i] * v[i];
  return Math.sqrt(sum);
}

/**
 * `v` scaled to unit length, as a new Float32Array (a zero vector stays zero).
 *
 * Throws `CLIP_INVALID_ARGUMENT` when `v` is not a Float32Array.
 */
export function normalize(v: Float32Array): Float32Array {
  checkVector(v, 'v');
  const length = norm(v);
  const out = new Float32Array(v.length);
  if (length === 0) return out;
  for (let i = 0; i < v.length; i++) out[i] = v[i] / length;
  return out;
}

/**
 * Cosine similarity of two vectors of one length (0 when either is zero).
 *
 * Throws `CLIP_INVALID_ARGUMENT` for arguments that are not Float32Arrays of one length.
 */
export function cosineSimilarity(a: Float32Array, b: Float32Array): number {
  checkVector(a, 'a');
  checkVector(b, 'b');
  if (a.length !== b.length) throw invalidArgument(`a Float32Array of length ${a.length}`, 'b', b);
  let dot = 0;
  let aa = 0;
  let bb = 0;
  for (let i = 0; i < a.length; i++) {
    dot += a[i] * b[i];
    aa += a[i] * a[i];
    bb += b[i] * b[i];
  }
  return aa === 0 || bb === 0 ? 0 : dot / Math.sqrt(aa * bb);
}

/**
 * Cosine similarities of every `as[i]` with every `bs[j]`, as one Float32Array of `as.length` rows and
 * `bs.length` columns: entry `[i * bs.length + j]`.
 *
 * Throws `CLIP_INVALID_ARGUMENT` for arguments that are not arrays of Float32Arrays of one length.
 */
export function similarityMatrix(as: readonly Float32Array[], bs: readonly Float32Array[]): Float32Array {
  if (!Array.isArray(as)) throw invalidArgument('an array of Float32Arrays', 'as', as);
  if (!Array.isArray(bs)) throw invalidArgument('an array of Float32Arrays', 'bs', bs);
  const dim = as.length > 0 ? checkVector(as[0], 'as[0]').length : 0;
  const check = (v: unknown, name: string) => {
    const vector = checkVector(v, name);
    if (vector.length !== dim) throw invalidArgument(`a Float32Array of length ${dim}`, name, v);
    return normalize(vector);
  };
  const left = as.map((v, i) => check(v, `as[${i}]`));
  const right = bs.map((v, j) => check(v, `bs[${j}]`));
  const out = new Float32Array(left.length * right.length);
  left.forEach((a, i) => {
    right.forEach((b, j) => {
      let dot = 0;
      for (let k = 0; k < dim; k++) dot += a[k] * b[k];
      out[i * right.length + j] = dot;
    });
  });
  return out;
}

/** softmax(scale x values), computed stably (max subtracted). */
export function softmax(values: readonly number[], scale: number): number[] {
  const max = Math.max(...values.map((v) => v * scale));
  const exps = values.map((v) => Math.exp(v * scale - max));
  const sum = exps.reduce((s, e) => s + e, 0);
  return exps.map((e) => e / sum);
}

function checkTemplates(template: unknown): string[] {
  if (template === undefined) return [DEFAULT_TEMPLATE];
  const list = typeof template === 'string' ? [template] : template;
  if (!Array.isArray(list) || list.length === 0) {
    throw invalidArgument('a template string or a non-empty array of them', 'options.template', template);
  }
  return list.map((t: unknown, i) => {
    if (typeof t !== 'string' || !t.includes('{}')) {
      throw invalidArgument('a string containing "{}"', `options.template[${i}]`, t);
    }
    return t;
  });
}

/**
 * The text embedding of each label: with one template, its normalized embedding; with several, the mean of
 * the normalized template embeddings, normalized again (prompt ensembling).
 * @internal
 */
export async function labelEmbeddings(
  model: ClipModel,
  labels: readonly string[],
  templates: readonly string[],
  signal: AbortSignal | undefined,
): Promise<Float32Array[]> {
  const texts = labels.flatMap((label) => templates.map((t) => t.split('{}').join(label)));
  const embeddings = await model.embedTexts(texts, { signal });
  return labels.map((_, i) => {
    const mean = new Float32Array(model.info.embedDim);
    for (let t = 0; t < templates.length; t++) {
      const unit = normalize(embeddings[i * templates.length + t]);
      for (let k = 0; k < mean.length; k++) mean[k] += unit[k] / templates.length;
    }
    return normalize(mean);
  });
}

/** {@link ClipModel.zeroShot}. @internal */
export async function zeroShot(
  model: ClipModel,
  image: ImageInput,
  labels: readonly string[],
  options: ZeroShotOptions = {},
): Promise<ZeroShotResult[]> {
  if (options === null || typeof options !== 'object') throw invalidArgument('an options object', 'options', options);
  if (!Array.isArray(labels) || labels.length === 0) {
    throw invalidArgument('a non-empty array of label strings', 'labels', labels);
  }
  // Array.isArray widens to any[]; the checked list is typed again.
  const labelList: readonly string[] = labels;
  labelList.forEach((label: unknown, i) => {
    if (typeof label !== 'string') throw invalidArgument('a string', `labels[${i}]`, label);
  });
  const { template, ...imageOptions } = options;
  const templates = checkTemplates(template);
  const { signal } = options;
  const [[imageEmbedding], textEmbeddings] = await Promise.all([
    model.embedImages([image], imageOptions),
    labelEmbeddings(model, labelList, templates, signal),
  ]);
  const cosines = Array.from(similarityMatrix([imageEmbedding], textEmbeddings));
  const scores = softmax(cosines, model.info.logitScale);
  return labelList
    .map((label, i) => ({ label, score: scores[i], cosine: cosines[i] }))
    .sort((a, b) => b.cosine - a.cosine);
}

/** {@link ClipModel.rank}. @internal */
export async function rank(
  model: ClipModel,
  query: RankItem,
  candidates: readonly RankItem[],
  options: RankOptions = {},
): Promise<RankResult[]> {
  if (options === null || typeof options !== 'object') throw invalidArgument('an options object', 'options', options);
  if (!Array.isArray(candidates) || candidates.length === 0) {
    throw invalidArgument('a non-empty array of { text } or { image } items', 'candidates', candidates);
  }
  const candidateList: readonly RankItem[] = candidates;
  const topK = checkInteger(options.topK, 'options.topK', 1, candidateList.length);
  const { signal, applyExifOrientation, maxPixels } = options;
  const imageOptions = { signal, applyExifOrientation, maxPixels };
  // Embeddings passed in (an index computed before) are used as they are; the rest are embedded in one call.
  const all: RankItem[] = [query, ...candidateList];
  const pending = all.flatMap((item, i) => (item instanceof Float32Array ? [] : [i]));
  let embedded: Float32Array[];
  try {
    embedded = await model.embed(
      pending.map((i) => all[i] as EmbedItem),
      imageOptions,
    );
  } catch (error) {
    // embed() numbers its own list; name the item as the caller passed it (the query, or its candidate).
    if (!(error instanceof ClipError) || error.index === undefined) throw error;
    const position = pending[error.index];
    const name = position === 0 ? 'query' : `candidates[${position - 1}]`;
    const reason = error.message.replace(/^items\[\d+\]: /, '');
    throw new ClipError(error.code, `${name}: ${reason}`, {
      index: position === 0 ? undefined : position - 1,
      cause: error,
    });
  }
  const vectors = all.slice() as Float32Array[];
  pending.forEach((i, k) => (vectors[i] = embedded[k]));
  const [queryEmbedding, ...candidateEmbeddings] = vectors;
  const cosines = Array.from(similarityMatrix([queryEmbedding], candidateEmbeddings));
  const scores = softmax(cosines, model.info.logitScale);
  return cosines
    .map((cosine, index) => ({ index, score: scores[index], cosine }))
    .sort((a, b) => b.cosine - a.cosine || a.index - b.index)
    .slice(0, topK);
}

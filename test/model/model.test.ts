// The model directory, the tensor path and the Hugging Face path, end to end.
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { TaskKind } from '../../lib/native/binding';
import { ClipError, ClipModel } from '../../lib/index';
import {
  hfCheckpoint,
  hfModel,
  maxAbsDiff,
  readF32,
  readI64,
  rows,
  runPython,
  tempDir,
  tinyModel,
} from '../helpers/env';

const PIXELS = 3 * 224 * 224;

/** Deterministic inputs from the reference tool: N images, R id rows padded with eos to L. */
function makeInputs(n: number, r: number, len: number, seed: number) {
  const dir = tempDir('inputs');
  runPython([
    'tools/reference.py',
    'inputs',
    '--out',
    dir,
    '--n',
    String(n),
    '--rows',
    String(r),
    '--len',
    String(len),
    '--seed',
    String(seed),
  ]);
  const pixels = readF32(path.join(dir, 'pixels.f32'));
  const ids = readI64(path.join(dir, 'ids.i64'));
  return { dir, pixels: rows(pixels, PIXELS), ids: rows(ids, len) };
}

function toInt32(row: BigInt64Array, upTo = row.length): Int32Array {
  return Int32Array.from(row.subarray(0, upTo), (v) => Number(v));
}

/** Length of a row up to and including its first eos (the largest id). */
function realLength(row: BigInt64Array): number {
  const eos = 49407n;
  const i = row.indexOf(eos);
  return i < 0 ? row.length : i + 1;
}

async function embedTensors(model: ClipModel, pixels: Float32Array[], ids: Int32Array[]) {
  const images = await model._submit(TaskKind.ImagePixels, pixels);
  const texts = await model._submit(TaskKind.TokenIds, ids);
  for (const r of [...images, ...texts]) if (r instanceof Error) throw r;
  return { images: images as Float32Array[], texts: texts as Float32Array[] };
}

/** The reference tool's arguments for the inputs of makeInputs (in `dir`) and its output file. */
function referenceArgs(dir: string, shape: { n: number; r: number; len: number }, out: string): string[] {
  return [
    ...['--pixels', path.join(dir, 'pixels.f32'), '--n', String(shape.n)],
    ...['--ids', path.join(dir, 'ids.i64'), '--rows', String(shape.r), '--len', String(shape.len)],
    ...['--out', out],
  ];
}

t.test('the tiny model equals the same TorchScript files run in Python', async (t) => {
  const n = 3;
  const r = 5;
  const len = 20;
  const inputs = makeInputs(n, r, len, 11);
  const out = tempDir('ts-ref');
  runPython([
    'tools/reference.py',
    'torchscript',
    '--model',
    tinyModel,
    ...referenceArgs(inputs.dir, { n, r, len }, out),
  ]);
  const refImages = rows(readF32(path.join(out, 'image.f32')), 512);
  const refTexts = rows(readF32(path.join(out, 'text.f32')), 512);

  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  t.equal(model.info.embedDim, 512);
  const { images, texts } = await embedTensors(
    model,
    inputs.pixels,
    inputs.ids.map((row) => toInt32(row)),
  );
  t.equal(images.length, n);
  t.equal(texts.length, r);
  for (let i = 0; i < n; i++) {
    t.equal(images[i].length, 512);
    t.ok(
      maxAbsDiff(images[i], refImages[i]) <= 1e-5,
      `image ${i}: max abs diff ${maxAbsDiff(images[i], refImages[i])}`,
    );
  }
  for (let i = 0; i < r; i++) {
    t.ok(maxAbsDiff(texts[i], refTexts[i]) <= 1e-5, `text ${i}: max abs diff ${maxAbsDiff(texts[i], refTexts[i])}`);
  }
  // Unpadded rows, batched with each other, give the same embeddings.
  const trimmed = await model._submit(
    TaskKind.TokenIds,
    inputs.ids.map((row) => toInt32(row, realLength(row))),
  );
  trimmed.forEach((e, i) => {
    t.ok(maxAbsDiff(e as Float32Array, refTexts[i]) <= 1e-5, `trimmed text ${i}`);
  });
});

t.test('a Hugging Face checkpoint, converted by the exporter, embeds as transformers does', async (t) => {
  const n = 2;
  const r = 4;
  const len = 16;
  const inputs = makeInputs(n, r, len, 5);
  const out = tempDir('hf-ref');
  runPython([
    'tools/reference.py',
    'hf-features',
    '--checkpoint',
    hfCheckpoint,
    ...referenceArgs(inputs.dir, { n, r, len }, out),
  ]);
  const refImages = rows(readF32(path.join(out, 'image.f32')), 512);
  const refTexts = rows(readF32(path.join(out, 'text.f32')), 512);
  const lengths = inputs.ids.map(realLength);
  t.ok(new Set(lengths).size > 1, `rows have different real lengths (${lengths.join(', ')})`);

  const model = await ClipModel.load(hfModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const { images, texts } = await embedTensors(
    model,
    inputs.pixels,
    inputs.ids.map((row) => toInt32(row)),
  );
  images.forEach((e, i) => {
    const d = maxAbsDiff(e, refImages[i]);
    t.ok(d <= 1e-4, `image ${i}: max abs diff ${d}`);
  });
  texts.forEach((e, i) => {
    const d = maxAbsDiff(e, refTexts[i]);
    t.ok(d <= 1e-4, `padded text ${i}: max abs diff ${d}`);
  });
  // The same rows at their own lengths, batched together (padded by the engine).
  const own = await model._submit(
    TaskKind.TokenIds,
    inputs.ids.map((row) => toInt32(row, realLength(row))),
  );
  own.forEach((e, i) => {
    const d = maxAbsDiff(e as Float32Array, refTexts[i]);
    t.ok(d <= 1e-4, `text ${i} at its own length: max abs diff ${d}`);
  });
});

/** Copies the tiny model and lets a test break the copy. */
function brokenCopy(edit: (dir: string) => void): string {
  const dir = tempDir('broken');
  for (const name of fs.readdirSync(tinyModel)) fs.copyFileSync(path.join(tinyModel, name), path.join(dir, name));
  edit(dir);
  return dir;
}

async function rejectsLoad(t: Test, dir: string, code: string, file: string) {
  const error = await ClipModel.load(dir, { device: 'cpu' }).then(
    () => undefined,
    (e: unknown) => e,
  );
  t.ok(error instanceof ClipError, 'rejects with a ClipError');
  t.equal((error as ClipError).code, code);
  t.match((error as ClipError).message, file, `the message names ${file}`);
}

/** Ways to break a copy of the tiny model, each with the file the error must name. */
const BREAKAGES: Array<[string, (dir: string) => void]> = [
  ['text_encoder.pt', (d) => fs.rmSync(path.join(d, 'text_encoder.pt'))],
  ['clip.json', (d) => fs.rmSync(path.join(d, 'clip.json'))],
  ['clip.json', (d) => fs.writeFileSync(path.join(d, 'clip.json'), '{"format": "clip-native/1",')],
  [
    'clip.json',
    (d) => {
      const manifest = JSON.parse(fs.readFileSync(path.join(d, 'clip.json'), 'utf8'));
      manifest.format = 'something-else/3';
      fs.writeFileSync(path.join(d, 'clip.json'), JSON.stringify(manifest));
    },
  ],
  [
    'image_encoder.pt',
    (d) => {
      const bytes = fs.readFileSync(path.join(d, 'image_encoder.pt'));
      fs.writeFileSync(path.join(d, 'image_encoder.pt'), bytes.subarray(0, bytes.length >> 1));
    },
  ],
  ['vocab.json', (d) => fs.writeFileSync(path.join(d, 'vocab.json'), '[1, 2')],
  // The encoders swapped: each archive loads but computes the wrong thing.
  [
    'image_encoder.pt',
    (d) => {
      fs.renameSync(path.join(d, 'image_encoder.pt'), path.join(d, 'tmp.pt'));
      fs.renameSync(path.join(d, 'text_encoder.pt'), path.join(d, 'image_encoder.pt'));
      fs.renameSync(path.join(d, 'tmp.pt'), path.join(d, 'text_encoder.pt'));
    },
  ],
];

t.test('broken model directories reject with CLIP_MODEL_LOAD_FAILED naming the file', async (t) => {
  await rejectsLoad(t, path.join(tempDir('none'), 'missing'), 'CLIP_MODEL_LOAD_FAILED', 'missing');
  for (const [file, breakIt] of BREAKAGES) await rejectsLoad(t, brokenCopy(breakIt), 'CLIP_MODEL_LOAD_FAILED', file);
});

t.test('options are validated before anything loads', async (t) => {
  await t.rejects(ClipModel.load(tinyModel, { device: 'tpu' as never }), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: /options\.device/,
  });
  await t.rejects(ClipModel.load(tinyModel, { dtype: 'int4' as never }), { code: 'CLIP_INVALID_ARGUMENT' });
  await t.rejects(ClipModel.load(tinyModel, { maxBatchImages: 0 }), { code: 'CLIP_INVALID_ARGUMENT' });
  await t.rejects(ClipModel.load(42 as never), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: /Expected a model directory or a Hugging Face repo id for directory but received number 42/,
  });
  await t.rejects(ClipModel.load(tinyModel, { device: 'cuda' }), { code: 'CLIP_DEVICE_UNAVAILABLE' }, 'no CUDA here');
});

t.test('calls after dispose() reject with CLIP_DISPOSED; dispose is idempotent', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  const first = model.dispose();
  t.equal(model.dispose(), first, 'the same promise');
  await first;
  await model[Symbol.asyncDispose]();
  await t.rejects(model.embedTexts(['a']), { code: 'CLIP_DISPOSED' });
  await t.rejects(model.embedImages([new Uint8Array(4)]), { code: 'CLIP_DISPOSED' });
  await t.rejects(model.tokenize(['a']), { code: 'CLIP_DISPOSED' });
  await t.rejects(model.preprocessImage(new Uint8Array(4)), { code: 'CLIP_DISPOSED' });
  t.same(model.stats().image.batches, 0);
});

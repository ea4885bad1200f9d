// The CPU kernel candidates of every dtype: each one forced runs and agrees with float32 as libtorch computes it,
// the calibration picks one of them and says so, and bad choices are refused.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { binding } from '../../lib/native/binding';
import { ClipModel, type DType } from '../../lib/index';
import { cosine, fixtures, maxAbsDiff, tinyModel } from '../helpers/env';

const imageDir = path.join(fixtures, 'images');
const images = fs
  .readdirSync(imageDir)
  .filter((name) => /\.(jpg|png|webp|gif|bmp)$/.test(name))
  .sort()
  .map((name) => fs.readFileSync(path.join(imageDir, name)));
const texts = fs
  .readFileSync(path.join(fixtures, 'tokens', 'hf77.jsonl'), 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((line) => (JSON.parse(line) as { text: string }).text);

async function embedAll(options: { dtype: DType; cpuKernels?: string }) {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', ...options });
  try {
    const [imageVectors, textVectors] = await Promise.all([model.embedImages(images), model.embedTexts(texts)]);
    return { info: model.info, vectors: [...imageVectors, ...textVectors] };
  } finally {
    await model.dispose();
  }
}

const REQUIRED: Record<string, { cosine?: number; maxAbsDiff?: number }> = {
  float32: { maxAbsDiff: 1e-5 },
  bfloat16: { cosine: 0.999 },
  int8: { cosine: 0.99 },
};

t.test('every candidate of every CPU dtype, forced, agrees with float32 through libtorch', async (t) => {
  t.ok(images.length >= 10 && texts.length >= 20, 'reference images and strings are there');
  // libtorch's own linear on the frozen archive: the TorchScript reference.
  const reference = await embedAll({ dtype: 'float32', cpuKernels: 'aten' });
  for (const dtype of ['float32', 'bfloat16', 'int8'] as const) {
    const auto = await embedAll({ dtype });
    const candidates = auto.info.cpuKernels!.candidates;
    t.ok(candidates.length >= 1, `${dtype}: candidates ${candidates.join(', ')}`);
    for (const name of candidates) {
      const run = await embedAll({ dtype, cpuKernels: name });
      const kernels = run.info.cpuKernels!;
      t.same([kernels.image, kernels.text, kernels.selectedBy], [name, name, 'option'], `${dtype}/${name} forced`);
      t.equal(run.info.dtype, dtype);
      // The attention products (2 per layer; the tiny model has 2 layers per encoder) run on clip-native's
      // kernel in the float32 and int8 graphs where the CPU has AVX-512F; the comparison below checks them.
      const ownAttention = binding().cpuIsa.includes('avx512f') && dtype !== 'bfloat16' && name !== 'aten';
      t.same(
        kernels.attentionMatmuls,
        ownAttention ? { image: 4, text: 4 } : { image: 0, text: 0 },
        `${dtype}/${name}: attention products on clip-native's kernel`,
      );
      let worstCosine = 1;
      let worstDiff = 0;
      run.vectors.forEach((v, i) => {
        worstCosine = Math.min(worstCosine, cosine(v, reference.vectors[i]));
        worstDiff = Math.max(worstDiff, maxAbsDiff(v, reference.vectors[i]));
      });
      const required = REQUIRED[dtype];
      if (required.maxAbsDiff !== undefined) {
        t.ok(worstDiff <= required.maxAbsDiff, `${dtype}/${name}: max abs diff ${worstDiff}`);
      } else {
        t.ok(worstCosine >= required.cosine!, `${dtype}/${name}: min cosine ${worstCosine}`);
      }
    }
  }
});

t.test('auto calibrates among the candidates and reports what it measured', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', dtype: 'float32' });
  t.teardown(() => model.dispose());
  const kernels = model.info.cpuKernels!;
  t.ok(kernels.candidates.includes(kernels.image));
  t.ok(kernels.candidates.includes(kernels.text));
  if (kernels.candidates.length > 1) {
    t.equal(kernels.selectedBy, 'calibration');
    // The small-row kernel is for texts: an image is already 50 rows to every linear.
    const imageCandidates = kernels.candidates.filter((name) => !name.endsWith('+avx512'));
    t.same(Object.keys(kernels.imageMsPerItem).sort(), imageCandidates.sort());
    t.same(Object.keys(kernels.textMsPerItem).sort(), [...kernels.candidates].sort());
    const times = kernels.imageMsPerItem;
    t.equal(Math.min(...Object.values(times)), times[kernels.image], 'the fastest image candidate won');
  } else {
    t.equal(kernels.selectedBy, 'only candidate');
  }
  t.ok(Array.isArray(binding().cpuIsa), 'the addon reports the CPU ISA');
});

t.test('fixed takes the first candidate without measuring', async (t) => {
  for (const dtype of ['float32', 'bfloat16', 'int8'] as const) {
    const model = await ClipModel.load(tinyModel, { device: 'cpu', dtype, cpuKernels: 'fixed' });
    const kernels = model.info.cpuKernels!;
    t.same(
      [kernels.image, kernels.text, kernels.selectedBy, kernels.imageMsPerItem],
      [kernels.candidates[0], kernels.candidates[0], 'fixed', {}],
      dtype,
    );
    await model.dispose();
  }
});

t.test('CLIP_NATIVE_CPU_KERNELS forces a candidate; unknown names are refused', async (t) => {
  const saved = process.env.CLIP_NATIVE_CPU_KERNELS;
  t.teardown(() => {
    if (saved === undefined) delete process.env.CLIP_NATIVE_CPU_KERNELS;
    else process.env.CLIP_NATIVE_CPU_KERNELS = saved;
  });
  process.env.CLIP_NATIVE_CPU_KERNELS = 'aten';
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.same([model.info.cpuKernels!.image, model.info.cpuKernels!.selectedBy], ['aten', 'environment']);
  await model.dispose();
  await t.rejects(ClipModel.load(tinyModel, { device: 'cpu', dtype: 'int8' }), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: /for cpuKernels at int8 but received "aten" \(CLIP_NATIVE_CPU_KERNELS\)/,
  });
  delete process.env.CLIP_NATIVE_CPU_KERNELS;
  await t.rejects(ClipModel.load(tinyModel, { device: 'cpu', cpuKernels: 'fastest' }), {
    code: 'CLIP_INVALID_ARGUMENT',
    message:
      /Expected "auto", "fixed" or one of "onednn", ("onednn\+avx512", )?"aten" for cpuKernels at float32 but received "fastest"/,
  });
  await t.rejects(ClipModel.load(tinyModel, { device: 'cpu', cpuKernels: '' }), { code: 'CLIP_INVALID_ARGUMENT' });
  await t.rejects(ClipModel.load(tinyModel, { device: 'cpu', dtype: 'int4' as DType }), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: /"float32", "bfloat16", "float16" or "int8"/,
  });
});

// The CPU kernel candidates of every dtype: each one forced runs and agrees with float32 as libtorch computes it,
// the calibration picks one of them and says so, and bad choices are refused.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { binding, TaskKind } from '../../lib/native/binding';
import { ClipModel, type DType } from '../../lib/index';
import { cosine, fixtureImages, fixtures, maxAbsDiff, setEnv, tinyModel } from '../helpers/env';

const images = fixtureImages().map((file) => fs.readFileSync(file));
const texts = fs
  .readFileSync(path.join(fixtures, 'tokens', 'hf77.jsonl'), 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((line) => (JSON.parse(line) as { text: string }).text);

async function embedAll(options: {
  dtype: DType;
  cpuKernels?: string;
  attentionKernel?: '0' | '1';
  packedTexts?: '0' | '1';
}) {
  const { attentionKernel, packedTexts, ...loadOptions } = options;
  const restoreAttention = setEnv('CLIP_NATIVE_ATTENTION_KERNEL', attentionKernel);
  const restorePacked = setEnv('CLIP_NATIVE_PACKED_TEXTS', packedTexts);
  let model: ClipModel;
  try {
    model = await ClipModel.load(tinyModel, { device: 'cpu', ...loadOptions });
  } finally {
    restoreAttention();
    restorePacked();
  }
  try {
    const [imageVectors, textVectors] = await Promise.all([model.embedImages(images), model.embedTexts(texts)]);
    return { info: model.info, vectors: [...imageVectors, ...textVectors] };
  } finally {
    await model.dispose();
  }
}

/**
 * Whether clip-native's attention kernel can run on this CPU for `dtype`'s graphs (cpu_attention.h): bfloat16
 * products need AVX-512F, float32 ones AVX-512F or AVX2 + FMA. bfloat16 graphs take bfloat16 products only where the
 * CPU has bfloat16 products in hardware; elsewhere their loads run float32 first and decide in float32.
 */
function attentionApplies(dtype: DType): boolean {
  const isa = binding().cpuIsa;
  if (dtype === 'bfloat16' && (isa.includes('avx512_bf16') || isa.includes('amx_bf16'))) {
    return isa.includes('avx512f');
  }
  return isa.includes('avx512f') || (isa.includes('avx2') && isa.includes('fma'));
}

/** An embedding's own bytes (results are views into one buffer per batch). */
function bytesOf(value: unknown): Buffer {
  const v = value as Float32Array;
  return Buffer.from(v.buffer, v.byteOffset, v.byteLength);
}

const REQUIRED: Record<string, { cosine?: number; maxAbsDiff?: number }> = {
  float32: { maxAbsDiff: 1e-5 },
  bfloat16: { cosine: 0.999 },
  int8: { cosine: 0.99 },
};

t.test('every candidate of every CPU dtype, forced, agrees with float32 through libtorch', async (t) => {
  t.ok(images.length >= 10 && texts.length >= 20, 'reference images and strings are there');
  // libtorch's own linear on the frozen archive, texts through its padded forward: the TorchScript reference.
  const reference = await embedAll({ dtype: 'float32', cpuKernels: 'aten', packedTexts: '0' });
  t.equal(reference.info.cpuKernels!.packedTexts, false, 'the reference runs texts padded');
  for (const dtype of ['float32', 'bfloat16', 'int8'] as const) {
    const auto = await embedAll({ dtype });
    const candidates = auto.info.cpuKernels!.candidates;
    t.ok(candidates.length >= 1, `${dtype}: candidates ${candidates.join(', ')}`);
    // Each candidate with the attention kernel forced on and off (cpu_attention.h; it applies where the CPU has
    // AVX-512F, or for float32 products AVX2 + FMA, so elsewhere both runs take libtorch's matmul).
    const applies = attentionApplies(dtype);
    for (const [name, attentionKernel] of candidates.flatMap((n) => [[n, '1'] as const, [n, '0'] as const])) {
      const run = await embedAll({ dtype, cpuKernels: name, attentionKernel });
      const label = `${dtype}/${name}, attention kernel ${attentionKernel}`;
      const kernels = run.info.cpuKernels!;
      t.same([kernels.image, kernels.text, kernels.selectedBy], [name, name, 'option'], `${label}: forced`);
      t.equal(run.info.dtype, dtype);
      t.same(
        [kernels.attentionKernel.kernel, kernels.attentionKernel.selectedBy],
        applies ? [attentionKernel === '1', 'environment'] : [false, 'not applicable'],
        `${label}: the choice`,
      );
      // 2 products per layer; the tiny model has 2 layers per encoder. `aten` is the frozen archive as it is,
      // `autocast` the archive under CPU autocast.
      const ownAttention = applies && attentionKernel === '1' && name !== 'aten' && name !== 'autocast';
      t.same(
        kernels.attentionMatmuls,
        { image: ownAttention ? 4 : 0, text: ownAttention ? 4 : 0 },
        `${label}: attention products on clip-native's kernel`,
      );
      // Each layer's scores, softmax and weighted sum as one operator.
      t.same(
        kernels.fusedAttentions,
        { image: ownAttention ? 2 : 0, text: ownAttention ? 2 : 0 },
        `${label}: attention layers fused`,
      );
      // clip-native's own linear runs each layer's MLP as one operator.
      const ownLinear = ['avx512', 'avx2', 'avx512-bf16', 'amx-bf16', 'avx512-bf16w', 'avx2-bf16w'].includes(name);
      t.same(kernels.fusedMlps, { image: ownLinear ? 2 : 0, text: ownLinear ? 2 : 0 }, `${label}: MLPs fused`);
      // Every LayerNorm on clip-native's kernel (cpu_norm.h) in every graph but the archive's own: 2 per layer, the
      // image's pre- and post-LayerNorm, the text's final one. Those a residual add feeds take the add along: all
      // but the first layer's first (the image's pre-LayerNorm before it; the text's embeddings gathered) and the
      // last layer's second (its rows gathered first); the image's pre-LayerNorm takes the embeddings' add.
      const ownNorms = attentionApplies('float32') && name !== 'aten' && name !== 'autocast';
      t.same(
        [kernels.layerNorms, kernels.fusedLayerNorms],
        ownNorms
          ? [
              { image: 6, text: 5 },
              { image: 4, text: 3 },
            ]
          : [
              { image: 0, text: 0 },
              { image: 0, text: 0 },
            ],
        `${label}: LayerNorms on clip-native's kernel, with their adds`,
      );
      // Texts run packed (the archive has forward_packed); the fused layers then take each text's rows in place.
      t.same(
        [kernels.packedTexts, kernels.packedAttentions],
        [true, ownAttention ? 2 : 0],
        `${label}: packed texts, attention layers on packed rows`,
      );
      let worstCosine = 1;
      let worstDiff = 0;
      run.vectors.forEach((v, i) => {
        worstCosine = Math.min(worstCosine, cosine(v, reference.vectors[i]));
        worstDiff = Math.max(worstDiff, maxAbsDiff(v, reference.vectors[i]));
      });
      const required = REQUIRED[dtype];
      if (required.maxAbsDiff !== undefined) {
        t.ok(worstDiff <= required.maxAbsDiff, `${label}: max abs diff ${worstDiff}`);
      } else {
        t.ok(worstCosine >= required.cosine!, `${label}: min cosine ${worstCosine}`);
      }
    }
  }
});

t.test('a forced pair runs image batches of N or more on the second candidate', async (t) => {
  // clip-native's float32 kernel gives the same bits for the same inputs in any model, so the batches that ran on
  // it are told apart from those that ran on the other candidate exactly.
  const probe = await ClipModel.load(tinyModel, { device: 'cpu', cpuKernels: 'fixed' });
  const candidates = probe.info.cpuKernels!.candidates;
  await probe.dispose();
  const kernel = candidates.find((name) => name === 'avx512' || name === 'avx2');
  const other = candidates.find((name) => name !== kernel);
  if (!kernel || !other) {
    t.skip(
      `needs clip-native's float32 kernel and another candidate (candidates: ${candidates.join(', ')})`,
      () => undefined,
    );
    return;
  }
  const load = (cpuKernels: string) => ClipModel.load(tinyModel, { device: 'cpu', cpuKernels });
  const [pair, single, batched] = await Promise.all([load(`${other},${kernel}@3`), load(other), load(kernel)]);
  t.teardown(() => Promise.all([pair.dispose(), single.dispose(), batched.dispose()]));
  const info = pair.info.cpuKernels!;
  t.same(
    [info.image, info.text, info.selectedBy, info.imageBatch],
    [other, other, 'option', { kernel, fromImages: 3, maxImagesPerForward: null }],
  );
  t.same(single.info.cpuKernels!.imageBatch, null);
  const run = (model: ClipModel, count: number) => model._submit(TaskKind.ImageBytes, images.slice(0, count), {});
  const exact = (a: unknown[], b: unknown[]) => a.every((v, i) => bytesOf(v).equals(bytesOf(b[i])));
  for (const count of [1, 2]) {
    t.ok(exact(await run(pair, count), await run(single, count)), `${count} image(s): the first candidate's bits`);
  }
  for (const count of [3, 4]) {
    t.ok(exact(await run(pair, count), await run(batched, count)), `${count} images: ${kernel}'s bits`);
  }
  const texts3 = texts.slice(0, 3);
  t.ok(exact(await pair.embedTexts(texts3), await single.embedTexts(texts3)), 'texts: the first candidate');
  for (const bad of [
    `${other},${kernel}`,
    `${other},${kernel}@1`,
    `${other},nope@4`,
    `auto,${kernel}@4`,
    `,${kernel}@4`,
    `${kernel},${kernel}@4`,
  ]) {
    await t.rejects(load(bad), { code: 'CLIP_INVALID_ARGUMENT', message: /NAME,BATCH@N/ }, bad);
  }
  const restore = setEnv('CLIP_NATIVE_CPU_KERNELS', `${other},${kernel}@5`);
  try {
    const fromEnvironment = await ClipModel.load(tinyModel, { device: 'cpu' });
    const chosen = fromEnvironment.info.cpuKernels!;
    t.same(
      [chosen.image, chosen.selectedBy, chosen.imageBatch],
      [other, 'environment', { kernel, fromImages: 5, maxImagesPerForward: null }],
    );
    await fromEnvironment.dispose();
  } finally {
    restore();
  }
});

// The most images one bfloat16 forward of each candidate takes: 8 on oneDNN's inner products, 16 on AMX tiles.
const imagesPerForward = (name: string) =>
  name === 'onednn' || name === 'onednn-bf16' ? 8 : name === 'amx-bf16' ? 16 : null;

t.test('bfloat16 on oneDNN and on AMX tiles runs image batches as forwards of at most 8 and 16 images', async (t) => {
  const probe = await ClipModel.load(tinyModel, { device: 'cpu', dtype: 'bfloat16', cpuKernels: 'fixed' });
  const candidates = probe.info.cpuKernels!.candidates;
  await probe.dispose();
  for (const name of candidates) {
    const model = await ClipModel.load(tinyModel, {
      device: 'cpu',
      dtype: 'bfloat16',
      cpuKernels: name,
      maxBatchImages: 32,
    });
    const limit = model.info.cpuKernels!.maxImagesPerForward;
    t.equal(limit, imagesPerForward(name), `${name}: images per forward`);
    if (limit) {
      // limit + 4 images run as limit and 4: the same bits as those two batches alone.
      const count = limit + 4;
      const batch = Array.from({ length: count }, (_, i) => images[i % images.length]);
      const run = (items: Uint8Array[]) => model._submit(TaskKind.ImageBytes, items, {});
      // One call at a time: calls in flight together may share batches.
      const before = model.stats().image.forwards;
      const all = await run(batch);
      t.equal(model.stats().image.forwards - before, 2, `${name}: ${count} images in two forwards`);
      const first = await run(batch.slice(0, limit));
      const rest = await run(batch.slice(limit));
      const same = (a: unknown, b: unknown) => bytesOf(a).equals(bytesOf(b));
      t.ok(
        all.every((v, i) => same(v, i < limit ? first[i] : rest[i - limit])),
        `${name}: ${count} images as forwards of ${limit} and 4`,
      );
    }
    await model.dispose();
  }
  const float32 = await ClipModel.load(tinyModel, { device: 'cpu', cpuKernels: 'fixed' });
  t.equal(float32.info.cpuKernels!.maxImagesPerForward, null, 'float32: any number');
  await float32.dispose();
  // A pair reports each candidate's limit: the first's for the batches below N, the second's for the rest.
  const split = candidates.find((name) => name === 'onednn' || name === 'onednn-bf16');
  const whole = candidates.find((name) => name !== 'onednn' && name !== 'onednn-bf16');
  if (!split || !whole) {
    t.comment(`no pair of a oneDNN and another bfloat16 candidate here (candidates: ${candidates.join(', ')})`);
  } else {
    for (const [first, second] of [
      [split, whole],
      [whole, split],
    ]) {
      const pair = await ClipModel.load(tinyModel, {
        device: 'cpu',
        dtype: 'bfloat16',
        cpuKernels: `${first},${second}@12`,
      });
      const kernels = pair.info.cpuKernels!;
      t.same(
        [kernels.maxImagesPerForward, kernels.imageBatch],
        [imagesPerForward(first), { kernel: second, fromImages: 12, maxImagesPerForward: imagesPerForward(second) }],
        `${first},${second}@12: each candidate's images per forward`,
      );
      if (first === split) {
        // 10 images run on the first candidate, as forwards of 8 and 2.
        const before = pair.stats().image.forwards;
        await pair._submit(
          TaskKind.ImageBytes,
          Array.from({ length: 10 }, (_, i) => images[i % images.length]),
          {},
        );
        t.equal(pair.stats().image.forwards - before, 2, `${first},${second}@12: 10 images in two forwards`);
      }
      await pair.dispose();
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
    // Both encoders time every candidate.
    t.same(Object.keys(kernels.imageMsPerItem).sort(), [...kernels.candidates].sort());
    t.same(Object.keys(kernels.textMsPerItem).sort(), [...kernels.candidates].sort());
    const times = kernels.imageMsPerItem;
    t.equal(Math.min(...Object.values(times)), times[kernels.image], 'the fastest image candidate won');
    // The batches: timed on 8 images; another candidate runs them only when 5% faster there than the winner.
    // Timed on the batch: the candidates not dropped in the first round on one image (two or more), else none.
    const batchTimes = kernels.imageBatchMsPerItem;
    const timedOnBatch = Object.keys(batchTimes);
    t.ok(timedOnBatch.length === 0 || (timedOnBatch.length >= 2 && timedOnBatch.includes(kernels.image)));
    if (kernels.imageBatch) {
      t.equal(kernels.imageBatch.fromImages, 8);
      t.not(kernels.imageBatch.kernel, kernels.image);
      t.ok(batchTimes[kernels.imageBatch.kernel] < 0.95 * batchTimes[kernels.image], 'faster on the batch by 5%');
    } else if (timedOnBatch.length > 0) {
      const fastest = Math.min(...Object.values(batchTimes));
      t.ok(fastest >= 0.95 * batchTimes[kernels.image], 'no other candidate 5% faster on the batch');
    }
  } else {
    t.equal(kernels.selectedBy, 'only candidate');
  }
  t.ok(Array.isArray(binding().cpuIsa), 'the addon reports the CPU ISA');
});

t.test('fixed takes the first candidate without measuring, and the attention kernel by rule', async (t) => {
  t.teardown(setEnv('CLIP_NATIVE_ATTENTION_KERNEL', undefined));
  for (const dtype of ['float32', 'bfloat16', 'int8'] as const) {
    const model = await ClipModel.load(tinyModel, { device: 'cpu', dtype, cpuKernels: 'fixed' });
    const kernels = model.info.cpuKernels!;
    t.same(
      [kernels.image, kernels.text, kernels.selectedBy, kernels.imageMsPerItem],
      [kernels.candidates[0], kernels.candidates[0], 'fixed', {}],
      dtype,
    );
    if (dtype === 'int8' && kernels.candidates.includes('fbgemm') && kernels.candidates.includes('onednn')) {
      // oneDNN before FBGEMM where the CPU has 32-bit integer dot products, after it elsewhere; clip-native's
      // int8 linear first where the CPU has AVX512-VNNI.
      const isa = binding().cpuIsa;
      const dot = ['avx512_vnni', 'avx_vnni', 'amx_int8'].some((flag) => isa.includes(flag));
      const engines = dot ? ['onednn', 'fbgemm'] : ['fbgemm', 'onednn'];
      const expected = isa.includes('avx512_vnni') ? ['avx512-vnni', ...engines] : engines;
      t.same(kernels.candidates, expected, 'int8: the order of the candidates');
    }
    // `fixed` runs every batch on the first candidate.
    t.same(kernels.imageBatch, null, `${dtype}: image batches`);
    t.same(kernels.imageBatchMsPerItem, {}, `${dtype}: nothing measured for the batches`);
    const attention = kernels.attentionKernel;
    if (!attentionApplies(dtype)) {
      t.same([attention.kernel, attention.selectedBy], [false, 'not applicable'], `${dtype}: attention kernel`);
    } else {
      t.equal(attention.selectedBy, 'rule', `${dtype}: attention kernel by rule`);
      t.same([attention.kernelMicroseconds, attention.atenMicroseconds], [null, null], `${dtype}: not measured`);
      // The rule: the kernel wherever it runs.
      t.equal(attention.kernel, true, `${dtype}: the kernel by rule`);
      const counts = attention.kernel ? { image: 4, text: 4 } : { image: 0, text: 0 };
      t.same(kernels.attentionMatmuls, counts, `${dtype}: attention products on clip-native's kernel`);
      t.same(
        kernels.fusedAttentions,
        { image: counts.image / 2, text: counts.text / 2 },
        `${dtype}: attention layers fused`,
      );
    }
    await model.dispose();
  }
});

t.test('auto measures the attention kernel against libtorch once per process and keeps the faster', async (t) => {
  t.teardown(setEnv('CLIP_NATIVE_ATTENTION_KERNEL', undefined));
  const first = await ClipModel.load(tinyModel, { device: 'cpu', dtype: 'float32' });
  const second = await ClipModel.load(tinyModel, { device: 'cpu', dtype: 'int8' });
  t.teardown(async () => {
    await first.dispose();
    await second.dispose();
  });
  const attention = first.info.cpuKernels!.attentionKernel;
  if (!attentionApplies('float32')) {
    t.equal(attention.selectedBy, 'not applicable');
    return;
  }
  t.equal(attention.selectedBy, 'measurement');
  t.ok(attention.kernelMicroseconds! > 0 && attention.atenMicroseconds! > 0, 'both ways timed');
  t.equal(attention.kernel, attention.kernelMicroseconds! < attention.atenMicroseconds!, 'the faster one kept');
  t.same(second.info.cpuKernels!.attentionKernel, attention, 'the same measurement for the next load');
});

t.test(
  'CLIP_NATIVE_PACKED_TEXTS=0 runs text batches padded, as the archive forward does; it takes 0 or 1',
  async (t) => {
    t.teardown(setEnv('CLIP_NATIVE_PACKED_TEXTS', '0'));
    const padded = await ClipModel.load(tinyModel, { device: 'cpu' });
    t.same([padded.info.cpuKernels!.packedTexts, padded.info.cpuKernels!.packedAttentions], [false, 0], 'padded');
    const paddedVectors = await padded.embedTexts(texts);
    await padded.dispose();
    process.env.CLIP_NATIVE_PACKED_TEXTS = '1';
    const packed = await ClipModel.load(tinyModel, { device: 'cpu' });
    t.equal(packed.info.cpuKernels!.packedTexts, true, 'packed');
    const packedVectors = await packed.embedTexts(texts);
    await packed.dispose();
    let worst = 0;
    packedVectors.forEach((v, i) => (worst = Math.max(worst, maxAbsDiff(v, paddedVectors[i]))));
    t.ok(worst <= 1e-5, `${texts.length} texts of mixed lengths in one call, packed vs padded: max abs diff ${worst}`);
    // Token ids as callers may give them: no end-of-text (pooled at the first token), ids after it, one id alone.
    const [bos, eos] = [49406, 49407];
    const ids = [
      [bos, 320, 1125, 539, 320, 2368, eos],
      [bos, 320, 1125, 539],
      [bos, 320, eos, 1929, 530, 4163, eos, 320],
      [bos],
      [bos, ...Array.from({ length: 75 }, (_, i) => 400 + i), eos],
    ].map((a) => Int32Array.from(a));
    process.env.CLIP_NATIVE_PACKED_TEXTS = '0';
    const paddedIds = await ClipModel.load(tinyModel, { device: 'cpu' });
    const fromPadded = (await paddedIds._submit(TaskKind.TokenIds, ids)) as Float32Array[];
    await paddedIds.dispose();
    delete process.env.CLIP_NATIVE_PACKED_TEXTS;
    const packedIds = await ClipModel.load(tinyModel, { device: 'cpu' });
    const fromPacked = (await packedIds._submit(TaskKind.TokenIds, ids)) as Float32Array[];
    await packedIds.dispose();
    fromPacked.forEach((v, i) =>
      t.ok(maxAbsDiff(v, fromPadded[i]) <= 1e-5, `token ids ${i} (${ids[i].length} ids), packed vs padded`),
    );
    // CLIP_NATIVE_CPU_GRAPH=0: the archives as loaded, texts through their padded forward.
    const restoreGraph = setEnv('CLIP_NATIVE_CPU_GRAPH', '0');
    const asLoaded = await ClipModel.load(tinyModel, { device: 'cpu' }).finally(restoreGraph);
    t.same([asLoaded.info.cpuKernels!.text, asLoaded.info.cpuKernels!.packedTexts], ['archive', false], 'as loaded');
    await asLoaded.dispose();
    process.env.CLIP_NATIVE_PACKED_TEXTS = 'yes';
    await t.rejects(ClipModel.load(tinyModel, { device: 'cpu' }), {
      code: 'CLIP_INVALID_ARGUMENT',
      message: 'Expected 0 or 1 for CLIP_NATIVE_PACKED_TEXTS but received "yes"',
    });
  },
);

t.test('CLIP_NATIVE_ATTENTION_KERNEL takes 0 or 1', async (t) => {
  t.teardown(setEnv('CLIP_NATIVE_ATTENTION_KERNEL', 'yes'));
  await t.rejects(ClipModel.load(tinyModel, { device: 'cpu' }), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: 'Expected 0 or 1 for CLIP_NATIVE_ATTENTION_KERNEL but received "yes"',
  });
});

t.test('CLIP_NATIVE_CPU_KERNELS forces a candidate; unknown names are refused', async (t) => {
  t.teardown(setEnv('CLIP_NATIVE_CPU_KERNELS', 'aten'));
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.same([model.info.cpuKernels!.image, model.info.cpuKernels!.selectedBy], ['aten', 'environment']);
  const float32Candidates = model.info.cpuKernels!.candidates.map((name) => `"${name}"`).join(', ');
  await model.dispose();
  await t.rejects(ClipModel.load(tinyModel, { device: 'cpu', dtype: 'int8' }), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: /for cpuKernels at int8 but received "aten" \(CLIP_NATIVE_CPU_KERNELS\)/,
  });
  delete process.env.CLIP_NATIVE_CPU_KERNELS;
  await t.rejects(ClipModel.load(tinyModel, { device: 'cpu', cpuKernels: 'fastest' }), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: `Expected "auto", "fixed" or one of ${float32Candidates} for cpuKernels at float32 but received "fastest"`,
  });
  await t.rejects(ClipModel.load(tinyModel, { device: 'cpu', cpuKernels: '' }), { code: 'CLIP_INVALID_ARGUMENT' });
  await t.rejects(ClipModel.load(tinyModel, { device: 'cpu', dtype: 'int4' as DType }), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: /"float32", "bfloat16", "float16" or "int8"/,
  });
});

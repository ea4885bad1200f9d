#!/usr/bin/env node
// Engine throughput, fp32 against bf16 autocast, on the full-size random
// ViT-B/32 model: images/s from preprocessed pixels (model only) and from
// PNG bytes (decode + preprocess + model), texts/s, and the cosine between
// the two precisions. Prints a markdown table; --json FILE writes the numbers.
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { ClipModel } = require('../dist');
const { TaskKind } = require('../dist/native/binding');
const { sampleImages } = require('../test/helpers/images.js');
const { cosine } = require('../test/helpers/vectors.js');

const root = path.resolve(__dirname, '..');
const modelDir = process.env.CLIP_BENCH_MODEL || path.join(root, 'bench', 'models', 'vit-b-32');
const seconds = Number(process.env.CLIP_BENCH_SECONDS || 8);
const jsonOut = process.argv.includes('--json') ? process.argv[process.argv.indexOf('--json') + 1] : undefined;

function randomPixels(n, seed) {
  let s = seed >>> 0;
  const rand = () => ((s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32) * 4 - 2;
  return Array.from({ length: n }, () => Float32Array.from({ length: 3 * 224 * 224 }, rand));
}

async function throughput(run, itemsPerRun) {
  await run(); // warm-up
  let items = 0;
  const start = process.hrtime.bigint();
  let elapsed = 0;
  while (elapsed < seconds) {
    await run();
    items += itemsPerRun;
    elapsed = Number(process.hrtime.bigint() - start) / 1e9;
  }
  return items / elapsed;
}

async function measure(dtype, pixels, pngs, captions) {
  const model = await ClipModel.load(modelDir, { device: 'cpu', dtype });
  const batch = model.info.maxBatchImages;
  const row = {
    dtype,
    imagesPerSecondModel: await throughput(() => model._submit(TaskKind.ImagePixels, pixels.slice(0, batch)), batch),
    imagesPerSecondPng: await throughput(() => model.embedImages(pngs.slice(0, batch)), batch),
    textsPerSecond: await throughput(() => model.embedTexts(captions), captions.length),
    embeddings: await model._submit(TaskKind.ImagePixels, pixels),
  };
  await model.dispose();
  return row;
}

(async () => {
  const pixels = randomPixels(16, 7);
  const pngs = sampleImages(16);
  const captions = Array.from(
    { length: 32 },
    (_, i) => `a photo of ${i} red cats sitting on a green mat near the river`,
  );
  const fp32 = await measure('float32', pixels, pngs, captions);
  const bf16 = await measure('bfloat16', pixels, pngs, captions);
  const cosines = fp32.embeddings.map((e, i) => cosine(e, bf16.embeddings[i]));
  const minCosine = Math.min(...cosines);
  const rows = [fp32, bf16].map((r) => ({
    dtype: r.dtype,
    imagesPerSecondModel: +r.imagesPerSecondModel.toFixed(2),
    imagesPerSecondPng: +r.imagesPerSecondPng.toFixed(2),
    textsPerSecond: +r.textsPerSecond.toFixed(1),
  }));
  console.log(`model: ${modelDir}, ${seconds} s per figure, batch ${pixels.length}`);
  console.log('| dtype | images/s (pixels, model only) | images/s (PNG bytes) | texts/s |');
  console.log('| --- | --- | --- | --- |');
  for (const r of rows)
    console.log(`| ${r.dtype} | ${r.imagesPerSecondModel} | ${r.imagesPerSecondPng} | ${r.textsPerSecond} |`);
  const speedup = bf16.imagesPerSecondModel / fp32.imagesPerSecondModel;
  console.log(
    `\nbf16 / fp32 image throughput: ${speedup.toFixed(2)}x; min cosine bf16 vs fp32: ${minCosine.toFixed(5)}`,
  );
  if (jsonOut) fs.writeFileSync(jsonOut, JSON.stringify({ rows, speedup, minCosine }, null, 2));
})();

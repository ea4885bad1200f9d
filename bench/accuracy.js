#!/usr/bin/env node
// How far bfloat16 and int8 move the embeddings from float32: the smallest and the median cosine similarity
// with clip-native float32 over the reference images and strings, on the full-size ViT-B/32 (random weights,
// `node scripts/fixtures.js --bench`) or the model given with --model. The images and strings are the shared
// reference data when ../shared/clip-reference exists, else the test fixtures that `node scripts/fixtures.js`
// draws.
//
//   node bench/accuracy.js [--model DIR] [--json FILE]
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const { ClipModel } = require('../dist');
const { cosine } = require('../test/helpers/vectors.js');

const root = path.resolve(__dirname, '..');
const { values } = parseArgs({ options: { model: { type: 'string' }, json: { type: 'string' } } });
const modelDir = values.model ?? path.join(root, 'bench', 'models', 'vit-b-32');
const shared = process.env.CLIP_REFERENCE_DIR || path.resolve(root, '..', 'shared', 'clip-reference');
const useShared = fs.existsSync(path.join(shared, 'README.md'));
const imageDir = useShared ? path.join(shared, 'images') : path.join(root, 'test', 'fixtures', 'images');
const textFile = useShared
  ? path.join(shared, 'tokens.hf77.jsonl')
  : path.join(root, 'test', 'fixtures', 'tokens', 'hf77.jsonl');

const images = fs
  .readdirSync(imageDir)
  .filter((name) => /\.(jpe?g|png|webp|gif|bmp)$/i.test(name))
  .sort()
  .map((name) => fs.readFileSync(path.join(imageDir, name)));
const texts = fs
  .readFileSync(textFile, 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((line) => JSON.parse(line).text);

async function embed(dtype) {
  const model = await ClipModel.load(modelDir, { device: 'cpu', dtype });
  try {
    // Texts one call each would batch differently per dtype; equal calls keep the comparison about the dtype.
    const image = await model.embedImages(images);
    const text = await model.embedTexts(texts);
    return { image, text, kernels: model.info.cpuKernels };
  } finally {
    await model.dispose();
  }
}

(async () => {
  const reference = await embed('float32');
  const rows = [];
  for (const dtype of ['bfloat16', 'int8']) {
    let run;
    try {
      run = await embed(dtype);
    } catch (error) {
      rows.push({ dtype, error: error.message });
      continue;
    }
    for (const kind of ['image', 'text']) {
      const cosines = run[kind].map((v, i) => cosine(v, reference[kind][i])).sort((a, b) => a - b);
      rows.push({
        dtype,
        kind,
        kernel: run.kernels[kind],
        items: cosines.length,
        min: cosines[0],
        median: cosines[cosines.length >> 1],
      });
    }
  }
  console.log(
    `Cosine similarity with clip-native float32 (${path.basename(modelDir)}; ${images.length} images from ` +
      `${useShared ? 'the shared reference data' : 'the test fixtures'}, ${texts.length} strings)\n`,
  );
  console.log('| dtype | inputs | kernel | items | min cosine | median cosine |');
  console.log('| --- | --- | --- | --- | --- | --- |');
  for (const r of rows) {
    if (r.error) console.log(`| ${r.dtype} | — | n/a: ${r.error} | | | |`);
    else
      console.log(
        `| ${r.dtype} | ${r.kind}s | ${r.kernel} | ${r.items} | ${r.min.toFixed(6)} | ${r.median.toFixed(6)} |`,
      );
  }
  if (values.json) fs.writeFileSync(values.json, JSON.stringify(rows, null, 2) + '\n');
})().catch((error) => {
  console.error(error);
  process.exit(1);
});

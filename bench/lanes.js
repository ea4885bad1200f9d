#!/usr/bin/env node
// Image batches in two lanes against one forward on both threads (README, "Image batches in two lanes";
// `info.cpuKernels.imageLanes`), on the machine it runs on: for each dtype, two models of the same files in one
// process of 2 threads, one loaded with CLIP_NATIVE_IMAGE_LANES=1 and one with 0, their calls alternated round by
// round, each round a few calls of one batch. Prints one table: median milliseconds per call of each way and their
// ratio (below 1: the lanes are faster), with the rounds in which the lanes won.
//
//   node bench/lanes.js [--dtypes float32,bfloat16,int8] [--batches 8,16] [--rounds 9] [--inputs pixels,photos]
//                       [--from N]
//
// --from N: the lanes' model runs batches of N images or more in lanes (CLIP_NATIVE_IMAGE_LANES=N; default: the
// rule's 8), so that smaller batches can be tried.
// pixels: preprocessed images in (model only); photos: the bench's JPEG and PNG files in (end to end). Needs the
// bench model and images (`node scripts/fixtures.js --bench`).
'use strict';
const fs = require('node:fs');
const path = require('node:path');
const { ClipModel } = require('../dist');
const { TaskKind } = require('../dist/native/binding');
const { cpuName } = require('./machine');

const root = path.resolve(__dirname, '..');
const modelDir = process.env.CLIP_BENCH_MODEL || path.join(root, 'bench', 'models', 'vit-b-32');
const imageDir = path.join(root, 'bench', 'models', 'images');

function option(name, fallback) {
  const at = process.argv.indexOf(`--${name}`);
  return at > 0 && process.argv[at + 1] ? process.argv[at + 1] : fallback;
}
const dtypes = option('dtypes', 'float32,bfloat16,int8').split(',');
const batches = option('batches', '8,16').split(',').map(Number);
const rounds = Number(option('rounds', '9'));
const inputs = option('inputs', 'pixels,photos').split(',');
const from = option('from', '1');
if (
  batches.some((n) => !(n >= 1)) ||
  !(rounds >= 1) ||
  inputs.some((i) => i !== 'pixels' && i !== 'photos') ||
  !/^[1-9][0-9]{0,3}$/.test(from)
) {
  console.error(
    'usage: node bench/lanes.js [--dtypes LIST] [--batches LIST] [--rounds N] [--inputs pixels,photos] [--from N]',
  );
  process.exit(2);
}

const now = () => Number(process.hrtime.bigint()) / 1e6;
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

async function load(dtype, lanes) {
  const saved = process.env.CLIP_NATIVE_IMAGE_LANES;
  process.env.CLIP_NATIVE_IMAGE_LANES = lanes;
  try {
    return await ClipModel.load(modelDir, { device: 'cpu', dtype, threads: 2, maxBatchImages: Math.max(...batches) });
  } finally {
    if (saved === undefined) delete process.env.CLIP_NATIVE_IMAGE_LANES;
    else process.env.CLIP_NATIVE_IMAGE_LANES = saved;
  }
}

async function main() {
  const files = fs
    .readdirSync(imageDir)
    .filter((f) => /\.(jpe?g|png)$/.test(f))
    .sort()
    .map((f) => fs.readFileSync(path.join(imageDir, f)));
  if (files.length === 0) throw new Error(`no images in ${imageDir}: run node scripts/fixtures.js --bench`);
  const rows = [];
  for (const dtype of dtypes) {
    const one = await load(dtype, '0');
    const lanes = await load(dtype, from);
    if (!lanes.info.cpuKernels?.imageLanes.lanes) {
      console.error(`${dtype}: no lanes here (${lanes.info.cpuKernels?.imageLanes.selectedBy ?? 'not on the CPU'})`);
      await one.dispose();
      await lanes.dispose();
      continue;
    }
    const pixels = await Promise.all(files.map((f) => one.preprocessImage(f)));
    for (const input of inputs) {
      for (const batch of batches) {
        if (batch < lanes.info.cpuKernels.imageLanes.fromImages) {
          console.error(`${dtype}: ${batch} images run as one forward either way (--from)`);
          continue;
        }
        const items = Array.from({ length: batch }, (_, i) => (input === 'pixels' ? pixels : files)[i % files.length]);
        const call = (m) => (input === 'pixels' ? m._submit(TaskKind.ImagePixels, items) : m.embedImages(items));
        const calls = Math.max(2, Math.ceil(32 / batch));
        for (const m of [one, lanes]) await call(m); // warm-up: new shapes
        const times = { one: [], lanes: [] };
        let won = 0;
        for (let r = 0; r < rounds; r++) {
          const order = r % 2 ? ['one', 'lanes'] : ['lanes', 'one'];
          const round = {};
          for (const way of order) {
            const m = way === 'one' ? one : lanes;
            const start = now();
            for (let i = 0; i < calls; i++) await call(m);
            round[way] = (now() - start) / calls;
            times[way].push(round[way]);
          }
          if (round.lanes < round.one) won++;
        }
        const a = median(times.one);
        const b = median(times.lanes);
        rows.push([dtype, input, batch, a.toFixed(2), b.toFixed(2), (b / a).toFixed(3), `${won} of ${rounds}`]);
        console.error(`[lanes] ${dtype} ${input} ${batch}: ${(b / a).toFixed(3)}`);
      }
    }
    await one.dispose();
    await lanes.dispose();
  }
  console.log(`# Image batches in two lanes: ${cpuName()}, 2 threads\n`);
  console.log('| dtype | input | images | one forward, ms | two lanes, ms | lanes / one | lanes faster |');
  console.log('| --- | --- | ---: | ---: | ---: | ---: | --- |');
  for (const row of rows) console.log(`| ${row.join(' | ')} |`);
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

#!/usr/bin/env node
'use strict';
// Requests after idle time: the latency of single requests that arrive after
// the process sat idle for a while, as an online endpoint with sporadic
// traffic sees them, for clip-native (each dtype) and onnxruntime-node fp32 on
// the same weights, 2 threads each. One image (pixels in) and one caption
// (token ids in) per call, model only; for every pause, each implementation
// makes --calls calls with that pause before each; the table gives the median
// and the 90th percentile in ms. Prints a table; --json FILE writes the figures.
//
//   node bench/idle.js [--dtypes float32,int8] [--pauses 0,20,100,500] [--calls 25] [--json FILE]
//
// Needs the build (npm run build) and the bench models (node scripts/fixtures.js
// --bench). CLIP_NATIVE_TEAM_PLACEMENT=0 in the environment shows clip-native
// without its thread placement (README, "Requests after idle time").
const fs = require('node:fs');
const path = require('node:path');
const { parseArgs } = require('node:util');
const { ClipModel } = require('../dist');
const { TaskKind } = require('../dist/native/binding');
const { cpuFlags, cpuName } = require('./machine');

const root = path.resolve(__dirname, '..');
const models = path.join(root, 'bench', 'models');
const { values: args } = parseArgs({
  options: {
    dtypes: { type: 'string', default: 'float32,int8' },
    pauses: { type: 'string', default: '0,20,100,500' },
    calls: { type: 'string', default: '25' },
    json: { type: 'string' },
  },
});
const dtypes = args.dtypes.split(',').filter(Boolean);
const pauses = args.pauses.split(',').map(Number);
const calls = Number(args.calls);
if (dtypes.length === 0 || !pauses.every((p) => Number.isFinite(p) && p >= 0) || !(calls >= 5)) {
  console.error(
    'usage: node bench/idle.js [--dtypes float32,int8] [--pauses 0,20,100,500] [--calls N>=5] [--json FILE]',
  );
  process.exit(2);
}
const THREADS = 2;
const PIXELS = 3 * 224 * 224;
const EOS = 49407;
const SETTLE_MS = 1500;
const CAPTION = 'a photo of a cat sitting on the windowsill';

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));

function quantile(sorted, q) {
  return sorted[Math.min(sorted.length - 1, Math.floor(sorted.length * q))];
}

async function clipNative(dtype, pixels) {
  const model = await ClipModel.load(path.join(models, 'vit-b-32'), { dtype, threads: THREADS });
  const [padded] = await model.tokenize([CAPTION]);
  const ids = padded.slice(0, padded.indexOf(EOS) + 1);
  return {
    id: `clip-native ${dtype}`,
    ids,
    image: () => model._submit(TaskKind.ImagePixels, [pixels]),
    text: () => model._submit(TaskKind.TokenIds, [ids]),
    dispose: () => model.dispose(),
  };
}

async function onnxRuntime(pixels, ids) {
  const transformers = require.resolve('@huggingface/transformers', { paths: [root] });
  const ort = require(require.resolve('onnxruntime-node', { paths: [transformers] }));
  const options = { intraOpNumThreads: THREADS, interOpNumThreads: 1, graphOptimizationLevel: 'all' };
  const dir = path.join(models, 'vit-b-32-onnx', 'onnx');
  const vision = await ort.InferenceSession.create(path.join(dir, 'vision_model.onnx'), options);
  const text = await ort.InferenceSession.create(path.join(dir, 'text_model.onnx'), options);
  const pixelValues = new ort.Tensor('float32', pixels, [1, 3, 224, 224]);
  const inputIds = new ort.Tensor('int64', BigInt64Array.from(ids, BigInt), [1, ids.length]);
  return {
    id: 'onnxruntime-node fp32',
    image: () => vision.run({ pixel_values: pixelValues }),
    text: () => text.run({ input_ids: inputIds }),
    dispose: async () => {
      await vision.release();
      await text.release();
    },
  };
}

async function main() {
  const pixels = Float32Array.from({ length: PIXELS }, (_, i) => Math.sin(i * 0.37) * 1.5);
  const impls = [];
  for (const dtype of dtypes) impls.push(await clipNative(dtype, pixels));
  impls.push(await onnxRuntime(pixels, impls[0].ids));
  for (const impl of impls) {
    for (let i = 0; i < 5; i++) {
      await impl.image();
      await impl.text();
    }
  }
  const rows = [];
  for (const pause of pauses) {
    for (const impl of impls) {
      // onnxruntime-node's workers spin on after its calls: let them stop before the next implementation's calls.
      await sleep(SETTLE_MS);
      const row = { implementation: impl.id, pause };
      for (const kind of ['image', 'text']) {
        const times = [];
        for (let i = 0; i < calls; i++) {
          if (pause > 0) await sleep(pause);
          const start = process.hrtime.bigint();
          await impl[kind]();
          times.push(Number(process.hrtime.bigint() - start) / 1e6);
        }
        times.sort((a, b) => a - b);
        row[kind] = { median: quantile(times, 0.5), p90: quantile(times, 0.9) };
      }
      rows.push(row);
    }
  }
  for (const impl of impls) await impl.dispose();

  const flags = cpuFlags();
  console.log(`# Requests after idle time, ${cpuName()} (${THREADS} threads; ${flags.join(' ')})`);
  console.log(`one item per call, ${calls} calls per pause; ms, median / p90`);
  console.log('');
  const fmt = (t) => `${t.median.toFixed(1)} / ${t.p90.toFixed(1)}`;
  console.log(`| pause before each call | implementation | image | caption |`);
  console.log('| --- | --- | --- | --- |');
  for (const row of rows)
    console.log(`| ${row.pause} ms | ${row.implementation} | ${fmt(row.image)} | ${fmt(row.text)} |`);
  if (args.json) {
    fs.writeFileSync(
      args.json,
      JSON.stringify({ cpu: cpuName(), flags, threads: THREADS, calls, rows }, null, 2) + '\n',
    );
  }
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

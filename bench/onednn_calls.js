#!/usr/bin/env node
// What oneDNN runs in one steady-state forward: for each dtype the CPU runs
// (float32, bfloat16, int8) and each input (one image, 8 images, one caption,
// 8 captions), the primitives oneDNN executes, by kind and implementation,
// with their count and milliseconds as ONEDNN_VERBOSE reports them, and the
// reorders by shape. A reorder of a weight's shape (out x in features, e.g.
// 2304x768) in every call would mean weights converted per call rather than
// once at load; reorders of activation shapes (rows x features) quantize or
// convert inputs. Prints markdown tables; run it where the kernels differ
// from the benchmark's machine (e.g. AMX).
//
//   node bench/onednn_calls.js [dtype ...]      (default: float32 bfloat16 int8)
//
// The model is bench/models/vit-b-32 (node scripts/fixtures.js --bench), or
// CLIP_BENCH_MODEL. Each dtype runs in a child process with ONEDNN_VERBOSE=1
// (oneDNN reads it once, at its first primitive); the kernels are the ones
// `auto` calibrates to, as a user would get.
'use strict';
const { spawnSync } = require('node:child_process');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const modelDir = process.env.CLIP_BENCH_MODEL || path.join(root, 'bench', 'models', 'vit-b-32');
const MARK = '@@clip-native-call';

async function child(dtype) {
  const { ClipModel } = require('../dist');
  const { TaskKind } = require('../dist/native/binding');
  const { sampleImages } = require('../test/helpers/images.js');
  const model = await ClipModel.load(modelDir, { device: 'cpu', dtype });
  const kernels = model.info.cpuKernels;
  const images = sampleImages(8);
  const pixels = [];
  for (const image of images) pixels.push(await model.preprocessImage(image));
  const captions = Array.from({ length: 8 }, (_, i) => `a photo of ${i + 1} red cats on a green mat by the river`);
  const inputs = [
    ['1 image', () => model._submit(TaskKind.ImagePixels, pixels.slice(0, 1))],
    ['8 images', () => model._submit(TaskKind.ImagePixels, pixels)],
    ['1 caption', () => model.embedTexts(captions.slice(0, 1))],
    ['8 captions', () => model.embedTexts(captions)],
  ];
  process.stdout.write(`${MARK} kernels image ${kernels.image}, text ${kernels.text}\n`);
  for (const [label, run] of inputs) {
    await run(); // first-call work: primitive creation, caches
    await run();
    process.stdout.write(`${MARK} begin ${label}\n`);
    await run();
    process.stdout.write(`${MARK} end\n`);
  }
  await model.dispose();
}

// onednn_verbose,[v1,]primitive,exec,cpu,KIND,IMPL,PROP,MEMORY DESCS,ATTRS,AUX,SHAPE,MS
function parse(line) {
  const fields = line.split(',');
  const exec = fields.indexOf('exec');
  if (!line.startsWith('onednn_verbose') || exec < 0) return undefined;
  return {
    kind: fields[exec + 2],
    impl: fields[exec + 3],
    shape: fields[fields.length - 2],
    ms: Number(fields[fields.length - 1]),
  };
}

function report(dtype, stdout) {
  const lines = stdout.split('\n');
  const kernels = lines.find((l) => l.startsWith(`${MARK} kernels`));
  console.log(`\n### ${dtype} (${kernels ? kernels.slice(MARK.length + 1) : 'kernels unknown'})\n`);
  console.log('| input | primitive | implementation | calls | ms |');
  console.log('| --- | --- | --- | --- | --- |');
  const reorders = [];
  let label;
  let tally;
  for (const line of lines) {
    if (line.startsWith(`${MARK} begin `)) {
      label = line.slice(`${MARK} begin `.length);
      tally = new Map();
    } else if (line === `${MARK} end` && label) {
      if (tally.size === 0) console.log(`| ${label} | (no oneDNN primitive) | | 0 | 0 |`);
      for (const [key, t] of [...tally].sort((a, b) => b[1].ms - a[1].ms)) {
        console.log(`| ${label} | ${key.replace('\t', ' | ')} | ${t.calls} | ${t.ms.toFixed(2)} |`);
      }
      label = undefined;
    } else if (label) {
      const p = parse(line);
      if (!p) continue;
      const key = `${p.kind}\t${p.impl}`;
      const t = tally.get(key) ?? { calls: 0, ms: 0 };
      t.calls += 1;
      t.ms += p.ms;
      tally.set(key, t);
      if (p.kind === 'reorder') reorders.push(`${label}: ${p.shape}`);
    }
  }
  if (reorders.length > 0) {
    const counts = new Map();
    for (const r of reorders) counts.set(r, (counts.get(r) ?? 0) + 1);
    console.log('\nReorders by shape (input: shape x calls):');
    for (const [r, n] of counts) console.log(`- ${r} x ${n}`);
  }
}

if (process.argv[2] === '--child') {
  child(process.argv[3]).catch((error) => {
    console.error(error);
    process.exit(1);
  });
} else {
  const dtypes = process.argv.length > 2 ? process.argv.slice(2) : ['float32', 'bfloat16', 'int8'];
  console.log(`## oneDNN primitives per steady-state call (${modelDir})`);
  for (const dtype of dtypes) {
    const result = spawnSync(process.execPath, [__filename, '--child', dtype], {
      env: { ...process.env, ONEDNN_VERBOSE: '1', DNNL_VERBOSE: '1' },
      encoding: 'utf8',
      maxBuffer: 256 * 1024 * 1024,
    });
    if (result.status !== 0) {
      console.log(`\n### ${dtype}: failed (${(result.stderr || '').trim().split('\n').pop()})`);
      continue;
    }
    report(dtype, result.stdout);
  }
}

#!/usr/bin/env node
// The last step of scripts/device-check.sh: gathers the stages, the test
// outcome and the benchmark into one JSON file and prints a one-screen summary
// with the GPU targets. Exits non-zero when a stage failed or a test failed.
'use strict';
const fs = require('node:fs');
const { spawnSync } = require('node:child_process');

const args = {};
for (let i = 2; i < process.argv.length; i += 2) args[process.argv[i].replace(/^--/, '')] = process.argv[i + 1];

const read = (file) => (file && fs.existsSync(file) ? fs.readFileSync(file, 'utf8') : undefined);

const stages = (read(args.stages) ?? '')
  .split('\n')
  .filter(Boolean)
  .map((line) => {
    const [name, status, seconds] = line.split('\t');
    return {
      name,
      status: status === 'skipped' ? 'skipped' : Number(status) === 0 ? 'ok' : `exit ${status}`,
      seconds: Number(seconds),
    };
  });

// The runner's TAP stream nests each file's tests one level (four spaces) under the file.
const tapText = read(args.tap) ?? '';
const tests = { pass: 0, fail: 0, failed: [] };
for (const line of tapText.split('\n')) {
  const m = /^ {4}(not ok|ok) \d+ - (.*?)(?: # .*)?$/.exec(line);
  if (!m) continue;
  if (m[1] === 'ok') tests.pass++;
  else {
    tests.fail++;
    tests.failed.push(m[2]);
  }
}

const bench = read(args.bench) ? JSON.parse(read(args.bench)) : undefined;
const rateOf = (caseId, impl) => bench?.results.find((r) => r.case === caseId)?.impls[impl]?.itemsPerSecond;

const gpu = spawnSync('nvidia-smi', ['--query-gpu=name', '--format=csv,noheader'], { encoding: 'utf8' });
const onGpu = args.mode === 'cuda';

function target(name, value, goal) {
  return { name, value: value ?? null, goal, met: value === undefined ? null : value >= goal };
}
const targets = [];
if (onGpu && bench) {
  targets.push(target('bf16 images/s, model only, batch 512', rateOf('image/model/b512', 'clip-native bf16'), 30000));
  const e2e = Math.max(...['fp32', 'fp16', 'bf16'].map((d) => rateOf('image/e2e/b512', `clip-native ${d}`) ?? 0));
  targets.push(target('images/s end to end from JPEG, batch 512 (best dtype)', e2e || undefined, 8000));
  const texts = Math.max(
    ...['fp32', 'fp16', 'bf16'].map((d) => rateOf('text-caption/e2e/b512', `clip-native ${d}`) ?? 0),
  );
  targets.push(target('caption texts/s from strings, batch 512 (best dtype)', texts || undefined, 50000));
  const ratios = bench.results
    .filter((r) => r.mode === 'model' && r.impls['clip-native fp16'] && r.impls['PyTorch eager fp16'])
    .map((r) => r.impls['clip-native fp16'].itemsPerSecond / r.impls['PyTorch eager fp16'].itemsPerSecond);
  const geo = ratios.length ? Math.exp(ratios.reduce((a, b) => a + Math.log(b), 0) / ratios.length) : undefined;
  targets.push(target('clip-native fp16 / PyTorch eager fp16, model only (geometric mean)', geo, 1.0));
}

const failedStages = stages.filter((s) => s.status !== 'ok');
const results = {
  mode: args.mode,
  date: new Date().toISOString(),
  seconds: Number(args.seconds),
  gpu: gpu.status === 0 ? gpu.stdout.trim() : null,
  stages,
  tests,
  targets,
  bench: bench ?? null,
};
fs.writeFileSync(args.out, JSON.stringify(results, null, 2) + '\n');

const fmt = (x) => (x === undefined || x === null ? '—' : x >= 100 ? x.toFixed(0) : x.toFixed(2));
const lines = [];
lines.push(`== device check (${args.mode}${results.gpu ? `, ${results.gpu}` : ''}) in ${args.seconds} s ==`);
lines.push('stages: ' + stages.map((s) => `${s.name} ${s.status} ${s.seconds}s`).join(', '));
lines.push(
  `tests: ${tests.pass} passed, ${tests.fail} failed${tests.failed.length ? ': ' + tests.failed.join('; ') : ''}`,
);
if (bench) {
  const impls = [...new Set(bench.results.flatMap((r) => Object.keys(r.impls)))];
  lines.push(`items/s | ${impls.join(' | ')}`);
  for (const r of bench.results)
    lines.push(`${r.case} | ${impls.map((i) => fmt(r.impls[i]?.itemsPerSecond)).join(' | ')}`);
  for (const p of bench.parity ?? []) lines.push(`parity ${p.case} ${p.impl}: min cosine ${p.minCosine.toFixed(5)}`);
} else {
  lines.push('bench: no results');
}
for (const t of targets)
  lines.push(`target ${t.met === null ? '?' : t.met ? 'MET ' : 'MISS'} ${t.name}: ${fmt(t.value)} (goal ${t.goal})`);
lines.push(`full results: ${args.out}`);
console.log(lines.join('\n'));
process.exit(failedStages.length || tests.fail || (!tests.pass && !failedStages.length) ? 1 : 0);

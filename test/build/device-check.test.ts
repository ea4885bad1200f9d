// scripts/device-check.sh, the one command a GPU machine runs, in its CPU mode:
// the same stages (build reuse, models, the device tests, the benchmark harness
// with the GPU flags' code paths, the summary) on the tiny model, so that the
// script cannot break between the runs on a lent GPU.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { root, tempDir } from '../helpers/env';

interface Results {
  mode: string;
  stages: { name: string; status: string }[];
  tests: { pass: number; fail: number };
  bench: { results: { case: string; impls: Record<string, { itemsPerSecond: number }> }[] } | null;
}

t.test('scripts/device-check.sh --cpu --short builds nothing twice, tests and benchmarks', async (t) => {
  const out = tempDir('device-check');
  const run = spawnSync('bash', [path.join(root, 'scripts', 'device-check.sh'), '--cpu', '--short'], {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, OUT: out },
    timeout: 280_000,
  });
  const log = fs.existsSync(path.join(out, 'device-log.txt')) ? fs.readFileSync(path.join(out, 'device-log.txt'), 'utf8') : '';
  t.equal(run.status, 0, `exit status; the log's end:\n${log.slice(-3000)}`);
  const results = JSON.parse(fs.readFileSync(path.join(out, 'device-results.json'), 'utf8')) as Results;
  t.equal(results.mode, 'cpu');
  t.same(
    results.stages.filter((s) => s.status !== 'ok'),
    [],
    'every stage that ran passed',
  );
  t.ok(results.tests.pass >= 5 && results.tests.fail === 0, `device tests: ${JSON.stringify(results.tests)}`);
  const cases = results.bench?.results.map((r) => r.case) ?? [];
  t.ok(cases.includes('image/e2e/b4') && cases.includes('text-caption/model/b1'), `bench cases: ${cases.join(', ')}`);
  for (const r of results.bench?.results ?? []) {
    t.ok(r.impls['clip-native fp32']?.itemsPerSecond > 0, `${r.case}: clip-native measured`);
  }
  t.match(run.stdout, /== device check \(cpu\) in \d+ s ==/, 'the summary is printed');
});

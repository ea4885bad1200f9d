// `clip-native batch` as a process: bad arguments, SIGKILL and resume, Kubernetes-style shards.
// Runs bin/clip-native.js, so dist/ must be built (npm test does).
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { PROGRESS_DIR } from '../../lib/batch/store';
import { main } from '../../lib/cli/index';
import { azureFolder, batchArgs, runCli, startCli } from '../helpers/batch';
import { setEnv, tempDir, tinyModel } from '../helpers/env';
import { sampleImages } from '../helpers/images';

t.test('bad arguments: one line on stderr, exit status 2', async (t) => {
  const dir = tempDir('batch-usage');
  const cases: Array<[string[], RegExp]> = [
    [['--model', tinyModel, '--input', dir], /--output is required/],
    [['--model', tinyModel, '--input', dir, '--output', dir, '--shard', '2/2'], /--shard must be I\/N/],
    [['--model', tinyModel, '--input', dir, '--output', dir, '--shards', '2'], /JOB_COMPLETION_INDEX/],
    [
      ['--model', tinyModel, '--input', dir, '--output', dir, '--error-threshold', '-2'],
      /--error-threshold must be an integer >= -1/,
    ],
    [
      ['--model', tinyModel, '--input', path.join(dir, 'missing'), '--output', dir, '--error-threshold', '-1'],
      /--input .* does not exist/,
    ],
    [['--merge', '--output', dir, '--model', tinyModel], /--merge takes only/],
    [['--model', tinyModel, '--input', dir, '--output', dir, '--bogus'], /bogus/],
  ];
  t.teardown(setEnv('JOB_COMPLETION_INDEX', undefined));
  for (const [args, message] of cases) {
    const written: string[] = [];
    const write = process.stderr.write.bind(process.stderr);
    process.stderr.write = (chunk: string) => written.push(chunk) > 0;
    let status: number;
    try {
      status = await main(['batch', ...args]);
    } finally {
      process.stderr.write = write;
    }
    t.equal(status, 2, args.join(' '));
    t.match(written.join(''), message);
    t.equal(written.join('').trim().split('\n').length, 1, 'one line');
  }
  // The same through the executable.
  const result = runCli(['batch', '--model', tinyModel, '--input', dir, '--output', dir, '--format', 'parquet']);
  t.equal(result.status, 2);
  t.match(result.stderr, /^clip-native batch: --format must be azure-csv, jsonl, npy, not "parquet"\n$/);
  const help = runCli(['batch', '--help']);
  t.equal(help.status, 0);
  t.match(help.stdout, /--error-threshold N/);
});

t.test('SIGKILL after the first part, then a rerun: byte-identical to an uninterrupted run; shards too', async (t) => {
  const dir = tempDir('batch-kill');
  const input = path.join(dir, 'in');
  const pictures = sampleImages(40);
  azureFolder(input, {
    images: pictures.slice(0, 20),
    texts: Array.from({ length: 20 }, (_, i) => `a photo of thing ${i}${' and more'.repeat(i % 5)}`),
    both: pictures.slice(20).map((bytes, i) => [i === 7 ? bytes.subarray(0, 100) : bytes, `caption ${i}`]),
  });
  const args = (output: string) => batchArgs(input, output, '--part-rows', '6', '--error-threshold', '1');

  const clean = runCli(args(path.join(dir, 'clean')));
  t.equal(clean.status, 0, clean.stderr);
  const reference = fs.readFileSync(path.join(dir, 'clean', 'predictions.csv'));
  const referenceErrors = fs.readFileSync(path.join(dir, 'clean', 'errors.jsonl'));
  t.equal(reference.toString().trim().split('\n').length, 59, '60 rows, one failed');

  const output = path.join(dir, 'killed');
  const progress = path.join(output, PROGRESS_DIR);
  const { child, ended } = startCli(args(output));
  const firstPart = path.join(progress, 'part-000000.csv');
  const watcher = setInterval(() => {
    if (fs.existsSync(firstPart)) {
      clearInterval(watcher);
      child.kill('SIGKILL');
    }
  }, 5);
  const killed = await ended;
  clearInterval(watcher);
  t.equal(killed.signal, 'SIGKILL', 'killed');
  t.notOk(fs.existsSync(path.join(output, 'predictions.csv')), 'killed before the end');
  const partsBefore = fs.readdirSync(progress).filter((n) => /^part-\d+\.csv$/.test(n)).length;
  t.ok(partsBefore >= 1 && partsBefore < 12, `${partsBefore} of 12 parts finished before the kill`);

  const rerun = runCli(args(output));
  t.equal(rerun.status, 0, rerun.stderr);
  t.match(rerun.stderr, new RegExp(`${partsBefore} finished before`), 'the rerun skips the finished parts');
  t.ok(fs.readFileSync(path.join(output, 'predictions.csv')).equals(reference), 'predictions.csv: byte-identical');
  t.ok(fs.readFileSync(path.join(output, 'errors.jsonl')).equals(referenceErrors), 'errors.jsonl: byte-identical');
  t.same(fs.readdirSync(progress).sort(), ['complete', 'job.json'], 'no parts or temporary files left');

  // Kubernetes Indexed Job style: --shards N with JOB_COMPLETION_INDEX, each a process of its own.
  const sharded = path.join(dir, 'sharded');
  const shard = (index: number) => runCli([...args(sharded), '--shards', '2'], { JOB_COMPLETION_INDEX: String(index) });
  const first = shard(1);
  t.equal(first.status, 0, first.stderr);
  t.match(first.stderr, /shard 1\/2: .*parts of other shards remain/s);
  t.notOk(fs.existsSync(path.join(sharded, 'predictions.csv')));
  const last = shard(0);
  t.equal(last.status, 0, last.stderr);
  t.ok(fs.readFileSync(path.join(sharded, 'predictions.csv')).equals(reference), "the shards' merge: byte-identical");
});

t.test('over the error threshold: exit status 1 naming the first failing row', async (t) => {
  const dir = tempDir('batch-threshold');
  const [good, bad] = sampleImages(2);
  azureFolder(path.join(dir, 'in'), { images: [good, bad.subarray(0, 60), good], texts: [], both: [] });
  const result = runCli(batchArgs(path.join(dir, 'in'), path.join(dir, 'out')));
  t.equal(result.status, 1);
  t.match(result.stderr, /CLIP_ERROR_THRESHOLD_EXCEEDED: row 1 of 0batch_input\.csv failed \(CLIP_IMAGE_DECODE_FAILED/);
  t.ok(fs.existsSync(path.join(dir, 'out', 'errors.jsonl')));
  t.notOk(fs.existsSync(path.join(dir, 'out', 'predictions.csv')));
});

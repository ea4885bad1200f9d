// The batch job in-process: Azure's CSV layout, image folders, formats, errors, shards and throughput.
import fs from 'node:fs';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import path from 'node:path';
import t from 'tap';
import { formatFloat32 } from '../../lib/batch/floats';
import { mergeBatchOutput, runBatchJob } from '../../lib/batch/job';
import { PROGRESS_DIR } from '../../lib/batch/store';
import { scoreRows } from '../../lib/azure/score';
import { ClipModel } from '../../lib/index';
import {
  azureFolder,
  featureDiff,
  readJsonLines,
  mimeBase64,
  pandasCsv,
  readNpy,
  readPredictions,
} from '../helpers/batch';
import { tempDir, tinyModel } from '../helpers/env';
import { sampleImages } from '../helpers/images';

// Features of the same row differ in their last bits with the size of the batch it ran in
// (the job's batches are not scoreRows' batches), so comparisons with the API allow 1e-4.
const TOLERANCE = 1e-4;

const loading = ClipModel.load(tinyModel, { device: 'cpu' });
t.teardown(async () => (await loading).dispose());

const images = sampleImages(12);
const texts = ['a photo of a can', 'a photo of a carton', 'milk, "bottle"', 'water bottle\nsecond line'];

async function expected(model: ClipModel, rows: Array<{ image?: string; text?: string }>) {
  const results = await scoreRows(model, rows);
  for (const r of results) if (r instanceof Error) throw r;
  return results as Array<{ image_features?: number[]; text_features?: number[] }>;
}

t.test('a folder of CSVs in the Azure layout: one line per row, features as the API computes them', async (t) => {
  const model = await loading;
  const dir = tempDir('batch-azure');
  const files = azureFolder(path.join(dir, 'in'), {
    images: images.slice(0, 4),
    texts,
    both: images.slice(4, 8).map((bytes, i) => [bytes, `a photo of thing ${i}`]),
  });
  const result = await runBatchJob(model, { input: path.join(dir, 'in'), output: path.join(dir, 'out'), log: null });
  t.ok(result.complete);
  t.equal(result.rows, 12);
  t.same(
    fs.readdirSync(path.join(dir, 'out')).sort(),
    [PROGRESS_DIR, 'predictions.csv'],
    'no errors.jsonl when no row failed',
  );

  const predictions = readPredictions(path.join(dir, 'out', 'predictions.csv'), { image: true, text: true });
  const names = Object.keys(files);
  t.same(names, ['0batch_input.csv', '4batch_input.csv', '8batch_input.csv']);
  t.same(
    predictions.map((p) => [p.fileName, p.row]),
    names.flatMap((name) => files[name].map((_, row) => [name, row])),
    'input order, rows from 0 per file',
  );
  let offset = 0;
  for (const name of names) {
    const want = await expected(model, files[name]);
    want.forEach((w, row) => {
      const got = predictions[offset + row];
      t.equal(
        Boolean(got.image),
        Boolean(w.image_features),
        `${name} row ${row}: image_features where the row has an image`,
      );
      t.equal(Boolean(got.text), Boolean(w.text_features), `${name} row ${row}: text_features where it has text`);
      if (w.image_features)
        t.ok(featureDiff(got.image, w.image_features) < TOLERANCE, `${name} row ${row}: image features`);
      if (w.text_features)
        t.ok(featureDiff(got.text, w.text_features) < TOLERANCE, `${name} row ${row}: text features`);
      if (!w.image_features) t.equal(got.fields[0], '', 'an absent feature leaves its field empty');
      if (!w.text_features) t.equal(got.fields[1], '', 'an absent feature leaves its field empty');
    });
    offset += want.length;
  }
  // Every number is the shortest text of a float32.
  const numbers = predictions.flatMap((p) => [...(p.image ?? []), ...(p.text ?? [])]);
  t.equal(numbers.length, 16 * 512);
  t.ok(
    numbers.every((x) => formatFloat32(Math.fround(x)) === String(x)),
    'each number is the shortest text of its float32',
  );

  const again = await runBatchJob(model, { input: path.join(dir, 'in'), output: path.join(dir, 'out'), log: null });
  t.equal(again.rows, 0, 'a rerun of a complete job does nothing');
  t.ok(again.complete);
});

t.test('the feature columns are those of the whole job', async (t) => {
  const model = await loading;
  const dir = tempDir('batch-columns');
  fs.mkdirSync(path.join(dir, 'images'));
  fs.writeFileSync(
    path.join(dir, 'images', 'a.csv'),
    pandasCsv(images.slice(0, 2).map((b) => ({ image: mimeBase64(b), text: '' }))),
  );
  await runBatchJob(model, { input: path.join(dir, 'images'), output: path.join(dir, 'out-images'), log: null });
  const imageOnly = fs
    .readFileSync(path.join(dir, 'out-images', 'predictions.csv'), 'utf8')
    .trim()
    .split('\n');
  t.ok(
    imageOnly.every((line) => /^\d,"\[[^\]]+\]",a\.csv$/.test(line)),
    'image-only job: row, image_features, file_name',
  );

  fs.mkdirSync(path.join(dir, 'texts'));
  fs.writeFileSync(path.join(dir, 'texts', 'b.csv'), pandasCsv(texts.map((text) => ({ text }))));
  await runBatchJob(model, { input: path.join(dir, 'texts'), output: path.join(dir, 'out-texts'), log: null });
  const textOnly = readPredictions(path.join(dir, 'out-texts', 'predictions.csv'), { image: false, text: true });
  t.equal(textOnly.length, 4);
  t.ok(
    textOnly.every((p) => p.text?.length === 512 && p.fileName === 'b.csv'),
    'text-only job: row, text_features, file_name',
  );
});

t.test('a folder of image files; jsonl and npy carry the same float32 values', async (t) => {
  const model = await loading;
  const dir = tempDir('batch-images');
  const input = path.join(dir, 'images');
  fs.mkdirSync(path.join(input, 'sub'), { recursive: true });
  const names = images.map((_, i) => (i < 9 ? `img${i}.png` : `sub/img${i}.png`));
  names.forEach((name, i) => fs.writeFileSync(path.join(input, name), images[i]));
  fs.writeFileSync(path.join(input, 'README.txt'), 'not an image');
  fs.writeFileSync(path.join(input, '.DS_Store'), 'hidden');

  const csv = await runBatchJob(model, { input, output: path.join(dir, 'csv'), log: null });
  t.equal(csv.rows, 12);
  const predictions = readPredictions(path.join(dir, 'csv', 'predictions.csv'), { image: true, text: false });
  const order = [...names].sort();
  t.same(
    predictions.map((p) => [p.fileName, p.row]),
    order.map((name) => [name, 0]),
    'one row per image, sorted by path',
  );
  const want = await model.embedImages(order.map((name) => images[names.indexOf(name)]));
  predictions.forEach((p, i) =>
    t.ok(featureDiff(p.image, want[i]) < TOLERANCE, `${p.fileName}: features of embedImages`),
  );

  await runBatchJob(model, { input, output: path.join(dir, 'jsonl'), format: 'jsonl', log: null });
  const lines = readJsonLines(path.join(dir, 'jsonl', 'predictions.jsonl'));
  t.same(
    lines.map((l) => Object.keys(l)),
    lines.map(() => ['file_name', 'row_number_per_file', 'image_features']),
  );
  t.ok(
    lines.every((l, i) => featureDiff(l.image_features, predictions[i].image) === 0),
    'jsonl: the same values',
  );

  await runBatchJob(model, { input, output: path.join(dir, 'npy'), format: 'npy', log: null });
  t.notOk(fs.existsSync(path.join(dir, 'npy', 'text_features.npy')), 'no text_features.npy: no row has text');
  const npy = readNpy(path.join(dir, 'npy', 'image_features.npy'));
  t.same(npy.shape, [12, 512]);
  t.ok(
    predictions.every(
      (p, i) => featureDiff(npy.data.subarray(i * 512, (i + 1) * 512), p.image!.map(Math.fround)) === 0,
    ),
    'npy: the same float32 values',
  );
  const index = fs
    .readFileSync(path.join(dir, 'npy', 'index.csv'), 'utf8')
    .trim()
    .split('\n');
  t.equal(index[0], 'file_name,row_number_per_file,image_row');
  t.same(
    index.slice(1),
    order.map((name, i) => `${name},0,${i}`),
  );
});

t.test('JSON Lines input, npy with rows that lack a feature', async (t) => {
  const model = await loading;
  const dir = tempDir('batch-jsonl');
  const rows = [
    { text: texts[0] },
    { image: `data:image/png;base64,${images[0].toString('base64')}` },
    { image: mimeBase64(images[1]), text: texts[1] },
  ];
  fs.writeFileSync(path.join(dir, 'rows.jsonl'), `${rows.map((r) => JSON.stringify(r)).join('\n')}\n`);
  await runBatchJob(model, {
    input: path.join(dir, 'rows.jsonl'),
    output: path.join(dir, 'out'),
    format: 'npy',
    log: null,
  });
  const index = fs
    .readFileSync(path.join(dir, 'out', 'index.csv'), 'utf8')
    .trim()
    .split('\n');
  t.same(index, [
    'file_name,row_number_per_file,image_row,text_row',
    'rows.jsonl,0,,0',
    'rows.jsonl,1,0,',
    'rows.jsonl,2,1,1',
  ]);
  const imageNpy = readNpy(path.join(dir, 'out', 'image_features.npy'));
  const textNpy = readNpy(path.join(dir, 'out', 'text_features.npy'));
  t.same(
    [imageNpy.shape, textNpy.shape],
    [
      [2, 512],
      [2, 512],
    ],
  );
  const want = await expected(model, rows);
  t.ok(featureDiff(imageNpy.data.subarray(512), want[2].image_features) < TOLERANCE);
  t.ok(featureDiff(textNpy.data.subarray(0, 512), want[0].text_features) < TOLERANCE);
});

t.test('image URLs: fetched when allowed, a row error when refused or missing', async (t) => {
  const model = await loading;
  const server = http.createServer((request, response) => {
    if (request.url === '/a.png') response.writeHead(200, { 'content-type': 'image/png' }).end(images[0]);
    else response.writeHead(404).end();
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => server.close());
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  const dir = tempDir('batch-urls');
  fs.writeFileSync(
    path.join(dir, 'urls.csv'),
    pandasCsv([{ image: `${base}/a.png` }, { image: `${base}/missing.png`, text: 'x' }]),
  );
  const input = path.join(dir, 'urls.csv');

  await runBatchJob(model, { input, output: path.join(dir, 'refused'), errorThreshold: -1, log: null });
  const refused = readJsonLines(path.join(dir, 'refused', 'errors.jsonl'));
  t.same(
    refused.map((r) => [r.row_number_per_file, r.code]),
    [
      [0, 'CLIP_URL_FORBIDDEN'],
      [1, 'CLIP_URL_FORBIDDEN'],
    ],
    'loopback refused by default',
  );

  await runBatchJob(model, {
    input,
    output: path.join(dir, 'allowed'),
    errorThreshold: -1,
    allowPrivateUrls: true,
    log: null,
  });
  const [prediction] = readPredictions(path.join(dir, 'allowed', 'predictions.csv'), { image: true, text: true });
  const [want] = await model.embedImages([images[0]]);
  t.ok(featureDiff(prediction.image, want) < TOLERANCE, "the fetched image's features");
  const [missing] = readJsonLines(path.join(dir, 'allowed', 'errors.jsonl'));
  t.match(missing, { row_number_per_file: 1, code: 'CLIP_IMAGE_FETCH_FAILED' });
});

t.test('a corrupt image row: threshold 0 fails naming it, threshold 1 records it in errors.jsonl', async (t) => {
  const model = await loading;
  const dir = tempDir('batch-errors');
  const input = path.join(dir, 'in');
  fs.mkdirSync(input);
  fs.writeFileSync(
    path.join(input, 'a.csv'),
    pandasCsv(images.slice(0, 3).map((b) => ({ image: mimeBase64(b), text: '' }))),
  );
  const corrupt = images[3].subarray(0, images[3].length >> 1); // a PNG cut in half
  fs.writeFileSync(
    path.join(input, 'b.csv'),
    pandasCsv([
      { image: mimeBase64(images[4]) },
      { image: mimeBase64(corrupt), text: 'still has text' },
      { text: 'fine' },
    ]),
  );
  const output = path.join(dir, 'out');
  await t.rejects(runBatchJob(model, { input, output, log: null }), {
    code: 'CLIP_ERROR_THRESHOLD_EXCEEDED',
    message: /^row 1 of b\.csv failed \(CLIP_IMAGE_DECODE_FAILED: .*\); 1 failed row exceeds the error threshold of 0/,
    row: 1,
    fileName: 'b.csv',
  });
  t.notOk(fs.existsSync(path.join(output, 'predictions.csv')), 'no predictions.csv from a failed job');
  const failedErrors = fs.readFileSync(path.join(output, 'errors.jsonl'), 'utf8');

  await t.rejects(
    runBatchJob(model, { input, output, log: null }),
    { code: 'CLIP_ERROR_THRESHOLD_EXCEEDED', row: 1 },
    'a rerun with the same threshold fails alike',
  );
  const result = await runBatchJob(model, { input, output, errorThreshold: 1, log: null });
  t.ok(result.complete);
  t.equal(result.skippedParts, 2, 'a rerun with a higher threshold keeps the parts finished before');
  const errors = fs.readFileSync(path.join(output, 'errors.jsonl'), 'utf8');
  t.equal(errors, failedErrors, 'the same errors.jsonl');
  const [record] = errors
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line));
  t.match(record, { file_name: 'b.csv', row_number_per_file: 1, code: 'CLIP_IMAGE_DECODE_FAILED' });
  t.notMatch(record.message, /^row /, 'the reason without a row prefix of its own');
  const predictions = readPredictions(path.join(output, 'predictions.csv'), { image: true, text: true });
  t.same(
    predictions.map((p) => [p.fileName, p.row]),
    [
      ['a.csv', 0],
      ['a.csv', 1],
      ['a.csv', 2],
      ['b.csv', 0],
      ['b.csv', 2],
    ],
    'the failed row has no line',
  );

  const unlimited = await runBatchJob(model, { input, output: path.join(dir, 'out2'), errorThreshold: -1, log: null });
  t.equal(unlimited.failed, 1, '-1 tolerates any number');
});

t.test('shards 0/2 and 1/2 embed every row once; their merge is the single-process output', async (t) => {
  const model = await loading;
  const dir = tempDir('batch-shards');
  const input = path.join(dir, 'in');
  azureFolder(input, {
    images: images.slice(0, 5),
    texts: [...texts, ...texts.map((x) => `${x} again`)],
    both: images.slice(5, 12).map((bytes, i) => [bytes, `caption ${i}`]),
  });
  // Small parts: files are split into row ranges, so shards split files too.
  const options = { input, partRows: 3, chunkRows: 4, log: null };
  const single = await runBatchJob(model, { ...options, output: path.join(dir, 'single') });
  t.equal(single.totalRows, 20);

  const output = path.join(dir, 'sharded');
  const first = await runBatchJob(model, { ...options, output, shard: { index: 0, count: 2 }, keepParts: true });
  t.notOk(first.complete, 'shard 0 alone does not finish the job');
  t.notOk(fs.existsSync(path.join(output, 'predictions.csv')));
  const partsOf = () =>
    new Set(fs.readdirSync(path.join(output, PROGRESS_DIR)).filter((n) => /^part-\d+\.csv$/.test(n)));
  const firstParts = partsOf();
  const second = await runBatchJob(model, { ...options, output, shard: { index: 1, count: 2 }, keepParts: true });
  t.ok(second.complete, 'the shard that finishes last writes the final files');
  const secondParts = [...partsOf()].filter((n) => !firstParts.has(n));
  t.equal(first.rows + second.rows, 20, 'together every row once');
  t.ok(first.rows > 0 && second.rows > 0, `both shards worked (${first.rows} and ${second.rows} rows)`);
  t.equal(firstParts.size + secondParts.length, single.totalParts, 'every part written by exactly one shard');
  const merged = fs.readFileSync(path.join(output, 'predictions.csv'));
  t.ok(merged.equals(fs.readFileSync(path.join(dir, 'single', 'predictions.csv'))), 'byte-identical to one process');

  // The explicit merge (clip-native batch --merge) writes the same.
  fs.rmSync(path.join(output, 'predictions.csv'));
  fs.rmSync(path.join(output, PROGRESS_DIR, 'complete'));
  await mergeBatchOutput(output, { log: null });
  t.ok(fs.readFileSync(path.join(output, 'predictions.csv')).equals(merged), '--merge: the same bytes');
  t.same(fs.readdirSync(path.join(output, PROGRESS_DIR)).sort(), ['complete', 'job.json'], 'parts removed once merged');

  const other = path.join(dir, 'other');
  await runBatchJob(model, { ...options, output: other, shard: { index: 0, count: 2 } });
  await t.rejects(
    mergeBatchOutput(other, { log: null }),
    { code: 'CLIP_INVALID_ARGUMENT', message: /of \d+ are not/ },
    'merge refuses unfinished parts',
  );
  await t.rejects(runBatchJob(model, { ...options, output: other, format: 'jsonl' }), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: /holds another job \(the format/,
  });
});

t.test('other calls on the same model at the same time leave the output byte-identical', async (t) => {
  const model = await loading;
  const dir = tempDir('batch-busy');
  const input = path.join(dir, 'in');
  azureFolder(input, {
    images: images.slice(0, 6),
    texts: [...texts, 'a longer caption of a dog that runs across a field of grass', 'x'],
    both: images.slice(6, 12).map((bytes, i) => [bytes, `caption number ${i}`]),
  });
  const options = { input, chunkRows: 5, log: null };
  await runBatchJob(model, { ...options, output: path.join(dir, 'quiet') });
  // Calls of every kind, all the time the job runs: with engine-timed batching they would join
  // the job's batches and change their sizes, mates and order.
  let busy = true;
  const noise = (async () => {
    let calls = 0;
    while (busy) {
      await Promise.all([
        model.embedTexts(texts.slice(0, 1 + (calls % 4))),
        model.embedImages(images.slice(calls % 5, (calls % 5) + 2)),
        model.embedTexts(['one more text', `${calls}`]),
      ]);
      calls++;
    }
    return calls;
  })();
  const noisy = await runBatchJob(model, { ...options, output: path.join(dir, 'busy') });
  busy = false;
  t.ok((await noise) > 0, 'other calls ran during the job');
  t.equal(noisy.rows, 18);
  const read = (name: string) => fs.readFileSync(path.join(dir, name, 'predictions.csv'));
  t.ok(read('busy').equals(read('quiet')), 'predictions.csv byte-identical to the run on a quiet model');
});

t.test('throughput: the job against embedImages on the same 200 images', async (t) => {
  const model = await loading;
  const dir = tempDir('batch-speed');
  const pictures = sampleImages(200);
  fs.mkdirSync(path.join(dir, 'in'));
  pictures.forEach((bytes, i) => fs.writeFileSync(path.join(dir, 'in', `${String(i).padStart(3, '0')}.png`), bytes));
  await model.embedImages(pictures.slice(0, 32)); // warm up

  const best = async (run: () => Promise<unknown>) => {
    let fastest = Infinity;
    for (let k = 0; k < 2; k++) {
      const started = performance.now();
      await run();
      fastest = Math.min(fastest, (performance.now() - started) / 1000);
    }
    return 200 / fastest;
  };
  const api = await best(() => model.embedImages(pictures));
  let round = 0;
  const job = await best(() =>
    runBatchJob(model, { input: path.join(dir, 'in'), output: path.join(dir, `out${round++}`), log: null }),
  );
  t.comment(
    `embedImages: ${api.toFixed(1)} images/s; batch job (files read, CSV written): ${job.toFixed(1)} images/s (${((100 * job) / api).toFixed(0)}%)`,
  );
  t.ok(job > api * 0.1, 'the job keeps the model busy');
});

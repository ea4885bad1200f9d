// The batch job's parts that need no model: float text, inputs, plans, .npy headers.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { formatFloat32, formatFloat32Reference, formatVector } from '../../lib/batch/floats';
import { listInputs, readCsvRows, readJsonlRows, scanCsv, scanJsonl } from '../../lib/batch/inputs';
import { npyHeader } from '../../lib/batch/outputs';
import { makePlan, shardOfUnits } from '../../lib/batch/plan';
import { ClipError } from '../../lib/errors';
import { tempDir } from '../helpers/env';

t.test('float32 text: the fast path agrees with the reference and round-trips', async (t) => {
  const value = new Float32Array(1);
  const bits = new Uint32Array(value.buffer);
  let mismatches = 0;
  let notExact = 0;
  let checked = 0;
  const check = () => {
    const v = value[0];
    if (!Number.isFinite(v)) return;
    const text = formatFloat32(v);
    if (text !== formatFloat32Reference(v)) mismatches += 1;
    if (Math.fround(Number(text)) !== v) notExact += 1;
    checked += 1;
  };
  // Random bit patterns, then every float32 in bands where embeddings live and where the fast path's edges are.
  for (let i = 0; i < 200_000; i++) {
    bits[0] = (Math.random() * 0x100000000) >>> 0;
    check();
  }
  for (const center of [1e-4, 1e-3, 0.01, 0.1, 1, 10, 100, 1000]) {
    value[0] = center;
    const middle = bits[0];
    for (let b = middle - 20_000; b < middle + 20_000; b++) {
      bits[0] = b;
      check();
    }
  }
  t.equal(mismatches, 0, `fast and reference text agree on ${checked} values`);
  t.equal(notExact, 0, 'every text reads back to the same float32');
  t.equal(formatFloat32(Math.fround(0.1)), '0.1');
  t.equal(formatFloat32(Math.fround(-1.5)), '-1.5');
  t.equal(formatFloat32(Math.fround(1e-7)), '1e-7');
  t.equal(formatFloat32(-0), '0');
  t.equal(formatFloat32(NaN), 'null', 'JSON cannot hold NaN');
  t.equal(formatFloat32(Math.fround(0.2)), '0.2', 'not the widened double 0.20000000298023224');
  t.equal(formatVector(new Float32Array([0.5, -2, 3.25])), '[0.5,-2,3.25]');
});

t.test('npy header: version 1.0, float32 [rows, dim], 64-byte aligned', async (t) => {
  const header = npyHeader(12, 512);
  t.equal(header.length % 64, 0);
  t.equal(header.toString('latin1', 0, 6), '\x93NUMPY');
  t.equal(header[6], 1);
  t.equal(header.readUInt16LE(8), header.length - 10);
  t.match(header.toString('latin1', 10), /^\{'descr': '<f4', 'fortran_order': False, 'shape': \(12, 512\), \} *\n$/);
});

t.test('CSV: row ranges split on record boundaries (BOM, CRLF, quoted line breaks, blank lines)', async (t) => {
  const dir = tempDir('batch-csv');
  const file = path.join(dir, 'x.csv');
  const rows = Array.from({ length: 7 }, (_, i) => [`${i}`, i % 2 ? '' : `iVBOR\r\nw${i}==`, `text, "${i}"\r\nline`]);
  const body = rows.map((r) => `${r[0]},"${r[1]}","${r[2].replace(/"/g, '""')}"`).join('\r\n');
  fs.writeFileSync(file, `\ufeff,image,text\r\n${body}\r\n\r\n`);
  const scan = await scanCsv(file, 'x.csv', 3);
  t.equal(scan.rows, 7);
  t.ok(scan.hasImage && scan.hasText);
  t.same(scan.layout, { image: 1, text: 2 });
  t.equal(scan.splits.length, 2, 'splits after rows 3 and 6');
  const bounds = [scan.start, ...scan.splits, scan.end];
  const read: Array<{ image?: string; text?: string }> = [];
  for (let k = 0; k + 1 < bounds.length; k++) {
    const part = [];
    for await (const row of readCsvRows(file, 'x.csv', scan.layout!, bounds[k], bounds[k + 1])) part.push(row);
    t.equal(part.length, k < 2 ? 3 : 1, `range ${k} holds its rows`);
    read.push(...part);
  }
  t.same(
    read,
    rows.map((r) => ({ ...(r[1] ? { image: r[1] } : {}), text: r[2] })),
    'every field comes back whole, line breaks included; "" is absent',
  );

  fs.writeFileSync(path.join(dir, 'header.csv'), 'image,text\n');
  t.equal((await scanCsv(path.join(dir, 'header.csv'), 'header.csv', 3)).rows, 0, 'a header alone is zero rows');
  fs.writeFileSync(path.join(dir, 'other.csv'), 'a,b\n1,2\n');
  await t.rejects(scanCsv(path.join(dir, 'other.csv'), 'other.csv', 3), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: /"image" and\/or "text"/,
  });
  fs.writeFileSync(path.join(dir, 'broken.csv'), 'image,text\n"unclosed,x\n');
  await t.rejects(scanCsv(path.join(dir, 'broken.csv'), 'broken.csv', 3), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: /broken\.csv/,
  });
});

t.test("JSON Lines: blank lines skipped, a bad line is that row's error", async (t) => {
  const dir = tempDir('batch-jsonl');
  const file = path.join(dir, 'x.jsonl');
  fs.writeFileSync(file, '{"text":"a"}\r\n\n{"image":"aGk="}\nnot json\n{"text":5}\n  \n{"image":"","text":"b"}');
  const scan = await scanJsonl(file, 'x.jsonl', 2);
  t.equal(scan.rows, 5);
  t.ok(scan.hasImage && scan.hasText);
  const bounds = [scan.start, ...scan.splits, scan.end];
  const rows = [];
  for (let k = 0; k + 1 < bounds.length; k++) {
    for await (const row of readJsonlRows(file, 'x.jsonl', bounds[k], bounds[k + 1], k * 2)) rows.push(row);
  }
  t.equal(rows.length, 5);
  t.same(rows[0], { text: 'a' });
  t.same(rows[1], { image: 'aGk=' });
  t.ok(rows[2] instanceof ClipError && /row 2 of x\.jsonl/.test(rows[2].message), 'not JSON: row 2');
  t.ok(rows[3] instanceof ClipError && /text in row 3/.test(rows[3].message), 'a number for text: row 3');
  t.same(rows[4], { text: 'b' });
});

t.test('inputs: sorted by path, recursive, hidden files and the output folder skipped', async (t) => {
  const dir = tempDir('batch-list');
  for (const name of ['b.csv', 'a/2.png', 'a/10.jpg', 'c.jsonl', 'notes.txt', '.hidden.csv', 'out/predictions.csv']) {
    fs.mkdirSync(path.dirname(path.join(dir, name)), { recursive: true });
    fs.writeFileSync(path.join(dir, name), 'image,text\n');
  }
  const listing = await listInputs(dir, path.join(dir, 'out'));
  t.same(
    listing.files.map((f) => [f.name, f.kind]),
    [
      ['a/10.jpg', 'image'],
      ['a/2.png', 'image'],
      ['b.csv', 'csv'],
      ['c.jsonl', 'jsonl'],
    ],
  );
  t.equal(listing.ignored, 1, 'notes.txt');
  const single = await listInputs(path.join(dir, 'b.csv'));
  t.same(
    single.files.map((f) => f.name),
    ['b.csv'],
  );
  await t.rejects(listInputs(path.join(dir, 'notes.txt')), { code: 'CLIP_INVALID_ARGUMENT' });
  await t.rejects(listInputs(path.join(dir, 'missing')), { code: 'CLIP_INVALID_ARGUMENT' });
  await t.rejects(listInputs(dir, `${dir}/`), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: /other than the input folder/,
  });
});

t.test('plan: parts of at most partRows rows; shards take contiguous runs that cover every part once', async (t) => {
  const dir = tempDir('batch-plan');
  const rows = (n: number) => `image,text\n${Array.from({ length: n }, (_, i) => `,t${i}`).join('\n')}\n`;
  fs.writeFileSync(path.join(dir, 'a.csv'), rows(10));
  fs.writeFileSync(path.join(dir, 'b.csv'), rows(3));
  for (const name of ['c1.png', 'c2.png', 'c3.png', 'c4.png', 'c5.png']) fs.writeFileSync(path.join(dir, name), 'x');
  const plan = await makePlan(await listInputs(dir), 4);
  t.equal(plan.totalRows, 18);
  t.same(
    plan.units.map((u) => u.rows),
    [4, 4, 2, 3, 4, 1],
    'a.csv in three ranges, b.csv whole, images in runs of 4',
  );
  t.same(plan.columns, { image: true, text: true });
  for (const count of [1, 2, 3, 7]) {
    const shards = shardOfUnits(plan, count);
    t.equal(shards.length, plan.units.length);
    t.same(
      [...shards].sort((a, b) => a - b),
      shards,
      `${count} shards: contiguous`,
    );
    t.ok(shards.every((s) => s >= 0 && s < count));
  }
  t.same(shardOfUnits(plan, 2), [0, 0, 1, 1, 1, 1], 'split by the middle row of each part: 8 and 10 rows');
});

// Decoding and CLIP preprocessing behind model.preprocessImage and model.embedImages.
import fs from 'node:fs';
import path from 'node:path';
import zlib from 'node:zlib';
import t, { type Test } from 'tap';
import { ClipModel } from '../../lib/index';
import {
  fixtureImages,
  fixtures,
  maxAbsDiff,
  readF32,
  reference,
  root,
  skipWithoutReference,
  tinyModel,
} from '../helpers/env';
import { makePng, makePngHeaderOnly, pngFile } from '../helpers/images';
import { scriptJson } from '../helpers/process';

const MEAN = [0.48145466, 0.4578275, 0.40821073];
const STD = [0.26862954, 0.26130258, 0.27577711];

let model: ClipModel;
t.before(async () => {
  model = await ClipModel.load(tinyModel, { device: 'cpu' });
});
t.teardown(() => model.dispose());

/**
 * Pixels whose uint8 value, recovered from the normalized floats, differs: resamplers may differ by one level in
 * a few pixels, so preprocessing is compared in counted pixels rather than in float tolerance.
 */
function differingPixels(a: Float32Array, b: Float32Array): number {
  let count = 0;
  const plane = 224 * 224;
  for (let i = 0; i < a.length; i++) {
    const c = Math.floor(i / plane);
    const ua = Math.round((a[i] * STD[c] + MEAN[c]) * 255);
    const ub = Math.round((b[i] * STD[c] + MEAN[c]) * 255);
    if (ua !== ub) count++;
  }
  return count;
}

async function checkAgainst(t: Test, dir: string, entries: Array<{ file: string; reference: string }>, options = {}) {
  for (const entry of entries) {
    const bytes = fs.readFileSync(path.join(dir, entry.file));
    const expected = readF32(path.join(dir, entry.reference));
    const actual = await model.preprocessImage(bytes, options);
    const d = maxAbsDiff(actual, expected);
    t.ok(d <= 1e-6, `${entry.file}: max abs diff ${d}, ${differingPixels(actual, expected)} pixels differ`);
  }
}

t.test('every image of clip-reference equals its pixel_values', { skip: skipWithoutReference }, async (t) => {
  const dir = path.join(reference!, 'images');
  const manifest = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8'));
  const list: Array<Record<string, unknown>> = Array.isArray(manifest) ? manifest : manifest.images;
  const entries = list.map((m) => {
    const file = String(m.file ?? m.name);
    return { file, reference: `${file.replace(/\.[^.]+$/, '')}.pixel_values.f32` };
  });
  t.equal(entries.length, 26);
  await checkAgainst(t, dir, entries);
  const exif = entries.filter((e) =>
    fs.existsSync(path.join(dir, e.reference.replace('.pixel_values', '.exif_transposed.pixel_values'))),
  );
  t.equal(exif.length, 1, 'one image has an EXIF-transposed reference');
  await checkAgainst(
    t,
    dir,
    exif.map((e) => ({
      file: e.file,
      reference: e.reference.replace('.pixel_values', '.exif_transposed.pixel_values'),
    })),
    { applyExifOrientation: true },
  );
});

t.test('images drawn with Pillow equal the Hugging Face processor', async (t) => {
  const dir = path.join(fixtures, 'images');
  const entries = JSON.parse(fs.readFileSync(path.join(dir, 'manifest.json'), 'utf8')) as Array<{
    file: string;
    reference: string;
  }>;
  t.ok(entries.length >= 20, `${entries.length} images in every format and mode`);
  await checkAgainst(t, dir, entries);
});

// The resize (AVX-512 VBMI and VNNI) and the rescale-and-normalize (AVX-512 VBMI) run on AVX-512 where the CPU has it,
// on AVX2 or a lookup table elsewhere: the same bits either way. The cap is read when the addon loads, so each run is
// a child; the uncapped one with the cap cleared, whatever this process was given.
t.test('preprocessing gives the same bits capped at AVX2', async (t) => {
  const files = fixtureImages();
  const script = `
    const { ClipModel } = require(${JSON.stringify(path.join(root, 'dist', 'index.js'))});
    const crypto = require('node:crypto');
    const fs = require('node:fs');
    (async () => {
      const m = await ClipModel.load(${JSON.stringify(tinyModel)}, { device: 'cpu' });
      const hash = crypto.createHash('sha256');
      for (const file of ${JSON.stringify(files)}) {
        const pixels = await m.preprocessImage(fs.readFileSync(file));
        hash.update(Buffer.from(pixels.buffer, pixels.byteOffset, pixels.byteLength));
      }
      console.log(JSON.stringify({ digest: hash.digest('hex') }));
      await m.dispose();
    })();`;
  const digest = (env: Record<string, string>) => scriptJson<{ digest: string }>(script, env).digest;
  t.ok(files.length >= 20, `${files.length} images`);
  t.equal(
    digest({ CLIP_NATIVE_MAX_CPU_ISA: 'avx2' }),
    digest({ CLIP_NATIVE_MAX_CPU_ISA: '' }),
    'the same pixels, bit for bit',
  );
});

t.test('embedImages equals embedding the preprocessed pixels', async (t) => {
  const png = makePng(300, 200, (x, y) => [x % 256, y % 256, (x * y) % 256]);
  const [viaBytes] = await model.embedImages([png]);
  const pixels = await model.preprocessImage(png);
  const [viaPixels] = await model._submit(1, [pixels]);
  t.equal(maxAbsDiff(viaBytes, viaPixels as Float32Array), 0);
});

/** 8-bit RGB PNG rows (filter 0), in Adam7 pass order when interlaced. */
function pngRows(
  width: number,
  height: number,
  pixel: (x: number, y: number) => number[],
  interlaced: boolean,
): Buffer {
  const passes = interlaced
    ? [
        [0, 0, 8, 8],
        [4, 0, 8, 8],
        [0, 4, 4, 8],
        [2, 0, 4, 4],
        [0, 2, 2, 4],
        [1, 0, 2, 2],
        [0, 1, 1, 2],
      ]
    : [[0, 0, 1, 1]];
  const out: number[] = [];
  for (const [x0, y0, dx, dy] of passes) {
    if (x0 >= width) continue;
    for (let y = y0; y < height; y += dy) {
      out.push(0);
      for (let x = x0; x < width; x += dx) out.push(...pixel(x, y));
    }
  }
  return Buffer.from(out);
}

t.test('a PNG is read up to its last row, as Pillow reads it: what follows in IDAT is never inflated', async (t) => {
  const width = 37;
  const height = 29;
  const pixel = (x: number, y: number) => [(x * 7) & 255, (y * 9) & 255, ((x ^ y) * 5) & 255];
  const want = await model.preprocessImage(makePng(width, height, pixel));
  for (const interlaced of [false, true]) {
    const png = (data: Buffer, end: boolean) => pngFile(width, height, data, { interlace: interlaced ? 1 : 0, end });
    const rows = pngRows(width, height, pixel, interlaced);
    const label = interlaced ? 'interlaced' : 'not interlaced';
    const whole = await model.preprocessImage(png(zlib.deflateSync(rows), true));
    t.equal(maxAbsDiff(whole, want), 0, `${label}: decodes`);
    // Every row, then the stream just stops: no final block, no checksum,
    // no IEND. Reading past the last row would fail on the missing bytes.
    const cut = zlib.deflateSync(rows, { finishFlush: zlib.constants.Z_SYNC_FLUSH });
    t.equal(
      maxAbsDiff(await model.preprocessImage(png(cut, false)), want),
      0,
      `${label}: rows, then the end of the file`,
    );
    // Every row, then 64 MiB of zeros in the same stream (64 KB compressed).
    const padded = zlib.deflateSync(Buffer.concat([rows, Buffer.alloc(64 << 20)]));
    t.ok(padded.length < 100_000);
    t.equal(
      maxAbsDiff(await model.preprocessImage(png(padded, true)), want),
      0,
      `${label}: rows, then 64 MiB of zeros`,
    );
  }
  const short = pngFile(width, height, zlib.deflateSync(pngRows(width, height - 1, pixel, false)));
  await t.rejects(model.preprocessImage(short), { code: 'CLIP_IMAGE_DECODE_FAILED' }, 'a missing row still fails');
});

t.test('bad input rejects with the right code and harms nothing', async (t) => {
  const png = makePng(64, 48, (x, y) => [x * 4, y * 5, 128]);
  const cases: Array<[string, Uint8Array, string]> = [
    ['zero-length', new Uint8Array(0), 'CLIP_IMAGE_DECODE_FAILED'],
    ['truncated PNG', png.subarray(0, png.length - 40), 'CLIP_IMAGE_DECODE_FAILED'],
    ['PNG signature only', png.subarray(0, 8), 'CLIP_IMAGE_DECODE_FAILED'],
    [
      'corrupt PNG data',
      Buffer.concat([png.subarray(0, 40), Buffer.alloc(60, 0xab), png.subarray(100)]),
      'CLIP_IMAGE_DECODE_FAILED',
    ],
    [
      'JPEG header only',
      Buffer.from([0xff, 0xd8, 0xff, 0xe0, 0, 16, 0x4a, 0x46, 0x49, 0x46, 0]),
      'CLIP_IMAGE_DECODE_FAILED',
    ],
    ['text', Buffer.from('definitely not an image'), 'CLIP_UNSUPPORTED_IMAGE_FORMAT'],
    ['TIFF', Buffer.from([0x49, 0x49, 0x2a, 0x00, 8, 0, 0, 0, 0, 0]), 'CLIP_UNSUPPORTED_IMAGE_FORMAT'],
    ['PNG claiming 30000x30000', makePngHeaderOnly(30000, 30000), 'CLIP_IMAGE_TOO_LARGE'],
  ];
  for (const [name, bytes, code] of cases) {
    await t.rejects(model.preprocessImage(bytes), { code }, name);
  }
  const start = process.hrtime.bigint();
  await t.rejects(model.embedImages([makePngHeaderOnly(100000, 100000)]), { code: 'CLIP_IMAGE_TOO_LARGE', index: 0 });
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  t.ok(ms < 1000, `refused from the header in ${ms.toFixed(1)} ms, without allocating 30 GB`);
  await t.rejects(
    model.preprocessImage(png, { maxPixels: 64 * 48 - 1 }),
    { code: 'CLIP_IMAGE_TOO_LARGE' },
    'the limit is an option',
  );
  t.equal((await model.preprocessImage(png, { maxPixels: 64 * 48 })).length, 3 * 224 * 224);
  t.equal(
    (await model.preprocessImage(makePng(1, 100000, () => [9, 9, 9]))).length,
    3 * 224 * 224,
    'a 1x100000 image works',
  );
  t.equal((await model.embedImages([png]))[0].length, 512, 'the model still works');
});

// The Azure contract as one table: every case runs against each implementation that can express it, and
// each must give the case's answer. `score` is model.score(body); `server` is POST /score of createServer;
// `batch` is runBatchJob over the case's rows as JSON Lines (errors as values in errors.jsonl, as the batch
// endpoint keeps going past a bad row). Request-level cases (a body's shape, its size) exist only where
// there is a body.
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { ClipError, ClipModel, runBatchJob } from '../../lib/index';
import { createServer } from '../../lib/endpoint/server';
import { mimeBase64, splitRequest } from '../helpers/azure';
import { featureDiff, readJsonLines } from '../helpers/batch';
import { tempDir, tinyModel } from '../helpers/env';
import { postScore } from '../helpers/http';
import { makePngHeaderOnly, sampleImages } from '../helpers/images';

type Implementation = 'score' | 'server' | 'batch';

/** What one row must give: its features, or its error's code. */
type Want = 'image' | 'text' | 'both' | { code: string };

interface Case {
  name: string;
  columns?: string[];
  data: unknown[][];
  /** One row's answer each, in row order; a request that fails names the lowest failing row. */
  rows?: Want[];
  /** The whole request fails: code, HTTP status, and the row when one row is to blame. */
  request?: { code: string; status: number; row?: number };
  /** A body other than `splitRequest(columns, data)`. */
  body?: unknown;
  /** The implementations that can express the case (default: all). */
  only?: Implementation[];
}

const QUEUE_CAPACITY = 32;
/** The status of each row error code (all client mistakes: 400). */
const ROW_STATUS = 400;
const TOLERANCE = 1e-5;

const images = sampleImages(3);
const b64 = (i: number) => images[i].toString('base64');
const broken = makePngHeaderOnly(64, 64).toString('base64');
const notAnImage = Buffer.from('hello world').toString('base64');
const longText = 'a photo of a cat sitting on a red sofa next to a window '.repeat(8);

const CASES: Case[] = [
  // Success shapes
  { name: 'an image row', data: [[b64(0), '']], rows: ['image'] },
  { name: 'a text row', data: [['', 'a photo of a cat']], rows: ['text'] },
  { name: 'a row with both', data: [[b64(1), 'a diagram']], rows: ['both'] },
  {
    name: 'mixed rows (MIME base64, data: URI, null cells)',
    data: [
      [b64(0), ''],
      ['', 'two dogs playing in the snow'],
      [`data:image/png;base64,${b64(2)}`, 'x'],
      [mimeBase64(images[1]), null],
    ],
    rows: ['image', 'text', 'both', 'image'],
  },
  { name: 'text past the context is truncated', data: [['', longText]], rows: ['text'] },
  { name: 'columns in the other order', columns: ['text', 'image'], data: [['a cat', b64(0)]], rows: ['both'] },
  { name: 'a text column only', columns: ['text'], data: [['a'], ['b']], rows: ['text', 'text'] },
  { name: 'no rows', data: [], rows: [], only: ['score', 'server'] },
  // Row errors: the request names the row; the batch job fails that row only
  {
    name: 'a row with neither image nor text',
    data: [
      ['', 'a'],
      ['', ''],
    ],
    rows: ['text', { code: 'CLIP_INVALID_ARGUMENT' }],
  },
  {
    name: 'text not a string',
    data: [
      ['', 'a'],
      ['', 5],
    ],
    rows: ['text', { code: 'CLIP_INVALID_ARGUMENT' }],
  },
  { name: 'an image string that is none', data: [['not an image!', '']], rows: [{ code: 'CLIP_INVALID_ARGUMENT' }] },
  { name: 'an undecodable image', data: [[broken, '']], rows: [{ code: 'CLIP_IMAGE_DECODE_FAILED' }] },
  {
    name: 'bytes of no image format',
    data: [
      ['', 'ok'],
      [notAnImage, ''],
    ],
    rows: ['text', { code: 'CLIP_UNSUPPORTED_IMAGE_FORMAT' }],
  },
  { name: 'a file: URL', data: [['file:///etc/passwd', '']], rows: [{ code: 'CLIP_URL_FORBIDDEN' }] },
  { name: 'a loopback URL', data: [['http://127.0.0.1:9/cat.png', '']], rows: [{ code: 'CLIP_URL_FORBIDDEN' }] },
  {
    name: 'two failing rows: the lowest is named',
    data: [
      ['', 'ok'],
      ['', ''],
      [broken, 'x'],
    ],
    rows: ['text', { code: 'CLIP_INVALID_ARGUMENT' }, { code: 'CLIP_IMAGE_DECODE_FAILED' }],
  },
  // Request errors
  {
    name: 'index as long as data is required',
    data: [
      ['', 'a'],
      ['', 'b'],
    ],
    body: {
      input_data: {
        columns: ['image', 'text'],
        index: [0],
        data: [
          ['', 'a'],
          ['', 'b'],
        ],
      },
    },
    request: { code: 'CLIP_INVALID_ARGUMENT', status: 400 },
    only: ['score', 'server'],
  },
  {
    name: 'no input_data',
    data: [],
    body: { data: [['', 'a']] },
    request: { code: 'CLIP_INVALID_ARGUMENT', status: 400 },
    only: ['score', 'server'],
  },
  {
    name: 'a data row of the wrong length',
    data: [],
    body: splitRequest(['image', 'text'], [['', 'a'], ['b']]),
    request: { code: 'CLIP_INVALID_ARGUMENT', status: 400, row: 1 },
    only: ['score', 'server'],
  },
  {
    name: 'more text rows than the queue holds',
    data: Array.from({ length: QUEUE_CAPACITY + 1 }, (_, i) => ['', `text ${i}`]),
    request: { code: 'CLIP_REQUEST_TOO_LARGE', status: 413 },
    only: ['score', 'server'],
  },
];

/** What an implementation answered: the rows (features or an error code each), or the request's error. */
interface Observed {
  rows?: Array<{ image_features?: number[]; text_features?: number[] } | { code: string }>;
  error?: { code: string; status?: number; row?: number; message: string };
}

function bodyOf(c: Case): unknown {
  return c.body ?? splitRequest(c.columns ?? ['image', 'text'], c.data);
}

/** The expected answer of a request (score, server): every row, or the lowest failing row's error. */
function expectedRequest(c: Case): { rows?: Want[]; error?: { code: string; status: number; row?: number } } {
  if (c.request) return { error: c.request };
  const failing = c.rows!.findIndex((want) => typeof want === 'object');
  if (failing < 0) return { rows: c.rows };
  return { error: { code: (c.rows![failing] as { code: string }).code, status: ROW_STATUS, row: failing } };
}

function decodeImage(value: string): Buffer {
  const text = value.startsWith('data:') ? value.slice(value.indexOf(',') + 1) : value;
  return Buffer.from(text.replace(/\s+/g, ''), 'base64');
}

/** Checks answered rows against the case's rows and the model's own embeddings of each input. */
async function checkRows(t: Test, model: ClipModel, c: Case, wants: Want[], got: Observed['rows']) {
  if (!t.equal(got?.length, wants.length, 'one answer per row')) return;
  const columns = c.columns ?? ['image', 'text'];
  for (const [row, want] of wants.entries()) {
    const answer = got[row];
    if (typeof want === 'object') {
      t.match(answer, { code: want.code }, `row ${row}: ${want.code}`);
      continue;
    }
    const features = answer as { image_features?: number[]; text_features?: number[] };
    const cells = c.data[row];
    const image = cells[columns.indexOf('image')] as string | undefined;
    const text = cells[columns.indexOf('text')] as string | undefined;
    const hasImage = want === 'image' || want === 'both';
    const hasText = want === 'text' || want === 'both';
    t.equal(
      features.image_features !== undefined,
      hasImage,
      `row ${row}: image_features ${hasImage ? 'present' : 'absent'}`,
    );
    t.equal(
      features.text_features !== undefined,
      hasText,
      `row ${row}: text_features ${hasText ? 'present' : 'absent'}`,
    );
    if (hasImage) {
      const [reference] = await model.embedImages([decodeImage(image!)]);
      t.ok(featureDiff(features.image_features, reference) < TOLERANCE, `row ${row}: the image's embedding`);
    }
    if (hasText) {
      const [reference] = await model.embedTexts([text!]);
      t.ok(featureDiff(features.text_features, reference) < TOLERANCE, `row ${row}: the text's embedding`);
    }
  }
}

const IMPLEMENTATIONS: Record<Implementation, (model: ClipModel, c: Case, t: Test) => Promise<Observed>> = {
  async score(model, c) {
    try {
      return { rows: await model.score(bodyOf(c)) };
    } catch (error) {
      if (!(error instanceof ClipError)) throw error;
      return { error: { code: error.code, row: error.row, message: error.message } };
    }
  },

  async server(model, c, t) {
    const app = createServer(model, { metrics: false });
    const base = await app.listen({ host: '127.0.0.1', port: 0 });
    t.teardown(() => app.close());
    const answer = await postScore(base, bodyOf(c));
    if (answer.status === 200) return { rows: answer.json };
    const body = answer.json as { code: string; message: string; row?: number };
    if (body.row !== undefined) t.match(body.message, new RegExp(`^row ${body.row}: `), 'the message names the row');
    return { error: { code: body.code, status: answer.status, row: body.row, message: body.message } };
  },

  async batch(model, c, t) {
    const dir = tempDir('contract');
    t.teardown(() => fs.rmSync(dir, { recursive: true, force: true }));
    const columns = c.columns ?? ['image', 'text'];
    const lines = c.data.map((cells) =>
      JSON.stringify({ image: cells[columns.indexOf('image')], text: cells[columns.indexOf('text')] }),
    );
    const input = path.join(dir, 'rows.jsonl');
    fs.writeFileSync(input, lines.map((line) => `${line}\n`).join(''));
    const output = path.join(dir, 'out');
    await runBatchJob(model, {
      input,
      output,
      format: 'jsonl',
      errorThreshold: -1,
      concurrency: 1,
      chunkRows: 8,
      log: null,
    });
    const rows: NonNullable<Observed['rows']> = new Array(c.data.length);
    for (const line of readJsonLines(path.join(output, 'predictions.jsonl'))) rows[line.row_number_per_file] = line;
    for (const line of readJsonLines(path.join(output, 'errors.jsonl')))
      rows[line.row_number_per_file] = { code: line.code };
    return { rows };
  },
};

t.test('the Azure contract', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', queueCapacity: QUEUE_CAPACITY });
  t.teardown(() => model.dispose());
  for (const c of CASES) {
    for (const implementation of c.only ?? (Object.keys(IMPLEMENTATIONS) as Implementation[])) {
      await t.test(`${implementation}: ${c.name}`, async (t) => {
        const observed = await IMPLEMENTATIONS[implementation](model, c, t);
        if (implementation === 'batch') {
          await checkRows(t, model, c, c.rows!, observed.rows);
          return;
        }
        const want = expectedRequest(c);
        if (want.error) {
          t.same(observed.rows, undefined, 'the request fails');
          t.equal(observed.error?.code, want.error.code, want.error.code);
          t.equal(
            observed.error?.row,
            want.error.row,
            want.error.row === undefined ? 'no row' : `row ${want.error.row}`,
          );
          if (implementation === 'server')
            t.equal(observed.error?.status, want.error.status, `HTTP ${want.error.status}`);
        } else {
          t.same(observed.error, undefined, 'the request succeeds');
          await checkRows(t, model, c, want.rows!, observed.rows);
        }
      });
    }
  }
});

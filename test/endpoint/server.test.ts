// The online endpoint on loopback with the tiny model:
// the Azure request kinds, image sources, every status of the error contract,
// concurrency, and the URL policy.
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import t, { type Test } from 'tap';
import { ClipModel } from '../../lib/index';
import { parseImageSource } from '../../lib/azure/image_string';
import { isBlockedAddress } from '../../lib/net/address';
import { scoreRows } from '../../lib/azure/score';
import { createServer, type ServerOptions } from '../../lib/endpoint/server';
import { maxAbsDiff, tinyModel } from '../helpers/env';
import { mimeBase64, splitRequest } from '../helpers/azure';
import { postScore as score, request } from '../helpers/http';
import { makePng, makePngHeaderOnly, sampleImages } from '../helpers/images';

const TOLERANCE = 1e-5;
const JSON_TYPE = { 'content-type': 'application/json' };

async function listen(t: Test, model: ClipModel | Promise<ClipModel>, options: ServerOptions = {}) {
  const app = createServer(model, options);
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(() => app.close());
  return base;
}

function checkFeatures(t: Test, got: unknown, want: Float32Array, what: string) {
  t.ok(Array.isArray(got) && (got as number[]).length === 512, `${what}: 512 numbers`);
  const diff = maxAbsDiff(got as number[], want);
  t.ok(diff <= TOLERANCE, `${what}: max abs diff ${diff}`);
}

const images = sampleImages(6);
const texts = ['a photo of a cat', 'a diagram', 'two dogs playing in the snow', 'x'];

t.test('the endpoint', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const base = await listen(t, model);
  const imageFeatures = await model.embedImages(images);
  const textFeatures = await model.embedTexts(texts);

  await t.test('image-only rows with MIME base64 (line breaks every 76 characters)', async (t) => {
    const data = [[mimeBase64(images[0])], [mimeBase64(images[1], '\r\n')], [images[2].toString('base64')]];
    t.ok(data[0][0].includes('\n') && data[0][0].split('\n')[0].length === 76, 'the input has MIME line breaks');
    const answer = await score(base, splitRequest(['image'], data, [0, 1, 2]));
    t.equal(answer.status, 200, answer.text.slice(0, 200));
    t.equal(answer.json.length, 3);
    answer.json.forEach((row: any, i: number) => {
      t.same(Object.keys(row), ['image_features']);
      checkFeatures(t, row.image_features, imageFeatures[i], `row ${i}`);
    });
  });

  await t.test('text-only rows', async (t) => {
    const answer = await score(
      base,
      splitRequest(
        ['text'],
        texts.map((text) => [text]),
      ),
    );
    t.equal(answer.status, 200, answer.text.slice(0, 200));
    t.equal(answer.json.length, texts.length);
    answer.json.forEach((row: any, i: number) => {
      t.same(Object.keys(row), ['text_features']);
      checkFeatures(t, row.text_features, textFeatures[i], `row ${i}`);
    });
  });

  await t.test('rows with both, and rows of mixed kinds in either column order', async (t) => {
    const both = await score(
      base,
      splitRequest(
        ['image', 'text'],
        [
          [mimeBase64(images[3]), texts[0]],
          [images[4].toString('base64'), texts[1]],
        ],
        [0, 1],
      ),
    );
    t.equal(both.status, 200, both.text.slice(0, 200));
    checkFeatures(t, both.json[0].image_features, imageFeatures[3], 'row 0 image');
    checkFeatures(t, both.json[0].text_features, textFeatures[0], 'row 0 text');
    checkFeatures(t, both.json[1].image_features, imageFeatures[4], 'row 1 image');
    checkFeatures(t, both.json[1].text_features, textFeatures[1], 'row 1 text');

    const dataUri = `data:image/png;base64,${images[5].toString('base64')}`;
    const mixed = await score(
      base,
      splitRequest(
        ['text', 'image'],
        [
          [texts[2], ''],
          ['', dataUri],
          [texts[3], images[0].toString('base64')],
          [null, images[1].toString('base64')],
        ],
      ),
    );
    t.equal(mixed.status, 200, mixed.text.slice(0, 200));
    t.same(
      mixed.json.map((row: object) => Object.keys(row).sort()),
      [['text_features'], ['image_features'], ['image_features', 'text_features'], ['image_features']],
    );
    checkFeatures(t, mixed.json[0].text_features, textFeatures[2], 'text row');
    checkFeatures(t, mixed.json[1].image_features, imageFeatures[5], 'data: URI row');
    checkFeatures(t, mixed.json[2].text_features, textFeatures[3], 'both row, text');
    checkFeatures(t, mixed.json[2].image_features, imageFeatures[0], 'both row, image');
    checkFeatures(t, mixed.json[3].image_features, imageFeatures[1], 'null text row');

    const long = Array.from({ length: 120 }, (_, i) => `word${i}`).join(' ');
    const [longFeatures] = await model.embedTexts([long]);
    const truncated = await score(base, splitRequest(['text'], [[long]]));
    t.equal(truncated.status, 200, 'text over 77 tokens is truncated, not refused');
    checkFeatures(t, truncated.json[0].text_features, longFeatures, 'long text');

    const empty = await score(base, splitRequest(['image', 'text'], []));
    t.equal(empty.status, 200);
    t.same(empty.json, []);
  });

  await t.test('400 answers name the reason, and the row for row errors', async (t) => {
    const good = images[0].toString('base64');
    const cases: Array<[string, string | Buffer, string, number | undefined, RegExp]> = [
      ['bad JSON', '{"input_data": [', 'CLIP_INVALID_ARGUMENT', undefined, /JSON/],
      ['empty body', '', 'CLIP_INVALID_ARGUMENT', undefined, /empty/],
      ['no input_data', '{"inputs": []}', 'CLIP_INVALID_ARGUMENT', undefined, /input_data/],
      [
        'columns not image/text',
        JSON.stringify(splitRequest(['img'], [['x']])),
        'CLIP_INVALID_ARGUMENT',
        undefined,
        /columns/,
      ],
      [
        'data not an array',
        JSON.stringify({ input_data: { columns: ['text'], data: 'x' } }),
        'CLIP_INVALID_ARGUMENT',
        undefined,
        /input_data\.data/,
      ],
      [
        'index length differs',
        JSON.stringify(splitRequest(['text'], [['a'], ['b']], [0])),
        'CLIP_INVALID_ARGUMENT',
        undefined,
        /index/,
      ],
      [
        'row of the wrong length',
        JSON.stringify(splitRequest(['image', 'text'], [['', 'a'], ['b']])),
        'CLIP_INVALID_ARGUMENT',
        1,
        /^row 1: .*input_data\.data\[1\]/,
      ],
      [
        'row with neither image nor text',
        JSON.stringify(
          splitRequest(
            ['image', 'text'],
            [
              [good, ''],
              ['', ''],
              ['', 'a'],
            ],
          ),
        ),
        'CLIP_INVALID_ARGUMENT',
        1,
        /^row 1: .*neither/,
      ],
      [
        'text not a string',
        JSON.stringify(splitRequest(['text'], [['a'], [5]])),
        'CLIP_INVALID_ARGUMENT',
        1,
        /^row 1: Expected a string for text but received number 5/,
      ],
      [
        'not base64, not a URL',
        JSON.stringify(splitRequest(['image'], [[good], ['not an image!']])),
        'CLIP_INVALID_ARGUMENT',
        1,
        /^row 1: Expected an http\(s\) URL, base64 or a data: URI/,
      ],
      [
        'base64 of something else',
        JSON.stringify(splitRequest(['image'], [[good], [Buffer.from('hello world').toString('base64')]])),
        'CLIP_UNSUPPORTED_IMAGE_FORMAT',
        1,
        /^row 1: /,
      ],
      [
        'a broken PNG',
        JSON.stringify(splitRequest(['image'], [[makePngHeaderOnly(64, 64).toString('base64')]])),
        'CLIP_IMAGE_DECODE_FAILED',
        0,
        /^row 0: /,
      ],
      [
        'a file: URL',
        JSON.stringify(splitRequest(['image'], [['file:///etc/passwd']])),
        'CLIP_URL_FORBIDDEN',
        0,
        /^row 0: .*"file:"/,
      ],
      [
        'an ftp: URL',
        JSON.stringify(splitRequest(['image'], [['ftp://example.com/a.png']])),
        'CLIP_URL_FORBIDDEN',
        0,
        /^row 0: /,
      ],
    ];
    for (const [name, body, code, row, message] of cases) {
      const answer = await request(base, '/score', { body, headers: JSON_TYPE });
      t.equal(answer.status, 400, `${name}: 400`);
      t.equal(answer.json?.code, code, `${name}: ${code}`);
      t.equal(answer.json?.row, row, `${name}: row ${row}`);
      t.match(answer.json?.message, message, `${name}: ${answer.json?.message}`);
    }
  });

  await t.test('415 for a body that is not JSON, 404 for other routes, 413 for a body over the limit', async (t) => {
    const plain = await request(base, '/score', { body: 'hello', headers: { 'content-type': 'text/plain' } });
    t.equal(plain.status, 415);
    t.same(plain.json, {
      code: 'CLIP_UNSUPPORTED_MEDIA_TYPE',
      message: 'Expected Content-Type application/json for the request body but received "text/plain"',
    });
    const none = await request(base, '/score', { body: Buffer.from([1, 2, 3]) });
    t.equal(none.status, 415);
    t.equal(none.json.code, 'CLIP_UNSUPPORTED_MEDIA_TYPE');
    const missing = await request(base, '/nothing-here');
    t.equal(missing.status, 404);
    t.equal(missing.json.code, 'CLIP_NOT_FOUND');

    const small = await listen(t, model, { bodyLimit: 10_000 });
    const big = await score(small, splitRequest(['image'], [[images[0].toString('base64').repeat(10)]]));
    t.equal(big.status, 413);
    t.equal(big.json.code, 'CLIP_REQUEST_TOO_LARGE');
    t.match(big.json.message, /at most 10000 bytes/);
    const fits = await score(small, splitRequest(['text'], [['a']]));
    t.equal(fits.status, 200, 'a body under the limit still works');
  });

  await t.test('401 without the right key; the key is compared as a whole', async (t) => {
    const keyed = await listen(t, model, { apiKey: 's3cret-key' });
    const body = splitRequest(['text'], [['a photo of a cat']]);
    const none = await score(keyed, body);
    t.equal(none.status, 401);
    t.equal(none.json.code, 'CLIP_UNAUTHORIZED');
    t.equal(none.headers['www-authenticate'], 'Bearer');
    for (const header of ['Bearer wrong', 'Bearer s3cret-ke', 'Bearer s3cret-key2', 'Basic s3cret-key', 's3cret-key']) {
      const answer = await score(keyed, body, { authorization: header });
      t.equal(answer.status, 401, `${header}: 401`);
      t.equal(answer.json.code, 'CLIP_UNAUTHORIZED');
    }
    const ok = await score(keyed, body, { authorization: 'Bearer s3cret-key' });
    t.equal(ok.status, 200);
    checkFeatures(t, ok.json[0].text_features, textFeatures[0], 'with the key');
    const health = await request(keyed, '/');
    t.equal(health.status, 200, 'the health probe needs no key');
  });

  await t.test('100 concurrent requests all succeed, with their own results; bad ones harm none', async (t) => {
    const many = sampleImages(20);
    const manyTexts = Array.from({ length: 20 }, (_, i) => `request number ${i}`);
    const wantImages = await model.embedImages(many);
    const wantTexts = await model.embedTexts(manyTexts);
    const answers = await Promise.all(
      Array.from({ length: 100 }, (_, i) =>
        score(base, splitRequest(['image', 'text'], [[many[i % 20].toString('base64'), manyTexts[(i * 7) % 20]]], [i])),
      ),
    );
    const bad = Promise.all(
      Array.from({ length: 10 }, (_, i) =>
        score(base, splitRequest(['image'], [[Buffer.from(`not an image ${i}`).toString('base64')]])),
      ),
    );
    let worst = 0;
    answers.forEach((answer, i) => {
      t.equal(answer.status, 200, `request ${i}`);
      worst = Math.max(
        worst,
        maxAbsDiff(answer.json[0].image_features, wantImages[i % 20]),
        maxAbsDiff(answer.json[0].text_features, wantTexts[(i * 7) % 20]),
      );
    });
    t.ok(worst <= TOLERANCE, `every answer is its own request's (max abs diff ${worst})`);
    t.same(new Set((await bad).map((a) => a.status)), new Set([400]), 'the bad requests get 400');
  });

  await t.test('request ids are echoed; swagger.json and metrics are served', async (t) => {
    const answer = await request(base, '/', { headers: { 'x-request-id': 'trace-42' } });
    t.equal(answer.status, 200);
    t.equal(answer.text, 'Healthy');
    t.match(answer.headers['content-type'], /^text\/plain/);
    t.equal(answer.headers['x-request-id'], 'trace-42');
    t.equal(answer.headers['x-ms-request-id'], 'trace-42');
    const azure = await request(base, '/', { headers: { 'x-ms-request-id': 'ms-7' } });
    t.equal(azure.headers['x-request-id'], 'ms-7');
    const fresh = await request(base, '/', { headers: { 'x-request-id': 'bad id\twith tab' } });
    t.match(fresh.headers['x-request-id'], /^[0-9a-f-]{36}$/, 'an unsafe id is replaced');

    const swagger = await request(base, '/swagger.json');
    t.equal(swagger.status, 200);
    t.match(swagger.json.openapi, /^3\./);
    t.ok(swagger.json.paths['/score'].post.responses['200'], 'POST /score is described');

    const metrics = await request(base, '/metrics');
    t.equal(metrics.status, 200);
    t.match(metrics.text, /clip_http_requests_total\{method="POST",route="\/score",status="200"\} \d+/);
    t.match(metrics.text, /clip_http_requests_total\{method="POST",route="\/score",status="400"\} \d+/);
    t.match(metrics.text, /clip_http_request_duration_seconds_bucket\{le="0.1",method="POST",route="\/score"\}/);
    t.match(metrics.text, /clip_engine_queue_depth\{encoder="image"\} 0/);
    const items = /clip_engine_items_total\{encoder="image"\} (\d+)/.exec(metrics.text);
    t.ok(items && Number(items[1]) >= 100, `engine items counted (${items?.[1]})`);
    t.match(metrics.text, /clip_engine_mean_batch_size\{encoder="text"\} [\d.]+/);
    t.match(metrics.text, /clip_engine_forwards_total\{encoder="image"\} \d+/);
    t.match(metrics.text, /clip_engine_items_per_second\{encoder="image"\} [\d.]+/);
    t.match(metrics.text, /clip_model_ready 1/);
  });
});

t.test('image URLs: fetched when private destinations are allowed, refused by default', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const [png] = sampleImages(1);
  const [want] = await model.embedImages([png]);
  const held: http.ServerResponse[] = [];
  let hangArrived!: () => void;
  let hangClosed!: () => void;
  const hang = {
    arrived: new Promise<void>((r) => (hangArrived = r)),
    closed: new Promise<void>((r) => (hangClosed = r)),
  };
  const files = http.createServer((req, res) => {
    switch (req.url) {
      case '/hang':
        held.push(res);
        req.socket.once('close', hangClosed);
        hangArrived();
        return;
      case '/cat.png':
        res.writeHead(200, { 'content-type': 'image/png' }).end(png);
        return;
      case '/octet':
        res.writeHead(200, { 'content-type': 'application/octet-stream' }).end(png);
        return;
      case '/redirect':
        res.writeHead(302, { location: '/cat.png' }).end();
        return;
      case '/loop':
        res.writeHead(301, { location: '/loop' }).end();
        return;
      case '/to-file':
        res.writeHead(302, { location: 'file:///etc/passwd' }).end();
        return;
      case '/page':
        res.writeHead(200, { 'content-type': 'text/html' }).end('<html></html>');
        return;
      case '/big':
        res.writeHead(200, { 'content-type': 'image/png' }).end(Buffer.alloc(50_000));
        return;
      case '/slow':
        held.push(res);
        return;
      default:
        res.writeHead(404).end();
    }
  });
  await new Promise<void>((resolve) => files.listen(0, '127.0.0.1', resolve));
  t.teardown(() => {
    held.forEach((res) => res.destroy());
    files.close();
  });
  const origin = `http://127.0.0.1:${(files.address() as AddressInfo).port}`;
  const open = await listen(t, model, {
    score: { allowPrivateUrls: true, maxImageBytes: 20_000, fetchTimeoutMs: 500 },
  });
  const strict = await listen(t, model);

  const ok = await score(
    open,
    splitRequest(
      ['image', 'text'],
      [
        [`${origin}/cat.png`, ''],
        ['', 'a cat'],
        [`${origin}/redirect`, ''],
        [`  ${origin}/octet`, ''],
      ],
    ),
  );
  t.equal(ok.status, 200, ok.text.slice(0, 200));
  checkFeatures(t, ok.json[0].image_features, want, 'fetched image');
  checkFeatures(t, ok.json[2].image_features, want, 'after a redirect');
  checkFeatures(t, ok.json[3].image_features, want, 'application/octet-stream');

  const refused = await score(strict, splitRequest(['image'], [[`${origin}/cat.png`]]));
  t.equal(refused.status, 400);
  t.equal(refused.json.code, 'CLIP_URL_FORBIDDEN');
  t.equal(refused.json.row, 0);
  const local = await score(
    strict,
    splitRequest(['image'], [[`http://localhost:${(files.address() as AddressInfo).port}/cat.png`]]),
  );
  t.equal(local.json?.code, 'CLIP_URL_FORBIDDEN', 'a name that resolves to loopback is refused after resolution');
  const v6 = await score(strict, splitRequest(['image'], [['http://[::ffff:127.0.0.1]/x.png']]));
  t.equal(v6.json?.code, 'CLIP_URL_FORBIDDEN', 'an IPv4-mapped loopback address is refused');

  const failures: Array<[string, string, RegExp]> = [
    ['/missing', 'CLIP_IMAGE_FETCH_FAILED', /HTTP 404/],
    ['/page', 'CLIP_IMAGE_FETCH_FAILED', /text\/html/],
    ['/loop', 'CLIP_IMAGE_FETCH_FAILED', /redirects/],
    ['/to-file', 'CLIP_URL_FORBIDDEN', /file:/],
    ['/big', 'CLIP_IMAGE_TOO_LARGE', /20000 bytes/],
    ['/slow', 'CLIP_IMAGE_FETCH_FAILED', /within 500 ms/],
  ];
  for (const [path, code, message] of failures) {
    const answer = await score(open, splitRequest(['image'], [[images[0].toString('base64')], [`${origin}${path}`]]));
    t.equal(answer.status, 400, `${path}: 400`);
    t.equal(answer.json?.code, code, `${path}: ${code}`);
    t.equal(answer.json?.row, 1, `${path}: row 1`);
    t.match(answer.json?.message, message, `${path}: ${answer.json?.message}`);
  }

  // A client that hangs up stops its own work: the server drops the image fetch.
  const patient = await listen(t, model, { score: { allowPrivateUrls: true } });
  const gone = http.request(`${patient}/score`, { method: 'POST', agent: false, headers: JSON_TYPE });
  gone.on('error', () => undefined);
  gone.end(JSON.stringify(splitRequest(['image'], [[`${origin}/hang`]])));
  await hang.arrived;
  const hungUp = Date.now();
  gone.destroy();
  await hang.closed;
  t.ok(
    Date.now() - hungUp < 5_000,
    `the fetch was dropped ${Date.now() - hungUp} ms after the client left (fetch timeout 20 s)`,
  );
  t.equal((await score(patient, splitRequest(['text'], [['still fine']]))).status, 200, 'the server carries on');

  // The batch job's entry point: errors are values, good rows still embed.
  const rows = await scoreRows(
    model,
    [{ image: `${origin}/cat.png` }, { image: `${origin}/missing`, text: 'x' }, { text: 'a dog' }, {}],
    { allowPrivateUrls: true },
  );
  checkFeatures(t, (rows[0] as any).image_features, want, 'scoreRows row 0');
  t.match(rows[1], { code: 'CLIP_IMAGE_FETCH_FAILED', row: 1 });
  t.ok(Array.isArray((rows[2] as any).text_features), 'scoreRows row 2 has text features');
  t.match(rows[3], { code: 'CLIP_INVALID_ARGUMENT', row: 3 });
});

t.test('the address policy', async (t) => {
  const blocked = [
    '127.0.0.1',
    '10.1.2.3',
    '172.16.0.1',
    '172.31.255.255',
    '192.168.1.1',
    '169.254.169.254',
    '100.64.0.1',
    '0.0.0.0',
    '224.0.0.1',
    '255.255.255.255',
    '::',
    '::1',
    'fe80::1',
    'fe80::1%eth0',
    'fc00::1',
    'fd12:3456::1',
    'ff02::1',
    '::ffff:127.0.0.1',
    '::ffff:7f00:1',
    '::ffff:10.0.0.1',
    '64:ff9b::a00:1',
    '2002:c0a8:101::1',
    'not an address',
  ];
  const allowed = [
    '8.8.8.8',
    '1.1.1.1',
    '172.32.0.1',
    '100.128.0.1',
    '2606:4700:4700::1111',
    '::ffff:8.8.8.8',
    '64:ff9b::808:808',
  ];
  for (const address of blocked) t.ok(isBlockedAddress(address), `${address} is blocked`);
  for (const address of allowed) t.notOk(isBlockedAddress(address), `${address} is allowed`);

  const png = sampleImages(1)[0];
  const wrapped = mimeBase64(png, '\r\n');
  const inline = parseImageSource(wrapped);
  t.ok(inline.kind === 'inline' && inline.bytes.equals(png), 'MIME base64 decodes to the bytes');
  const url = parseImageSource('data:image/png;base64,' + png.toString('base64url'));
  t.ok(url.kind === 'inline' && url.bytes.equals(png), 'a data: URI with URL-safe base64 decodes');
  t.throws(() => parseImageSource('gopher://x/'), { code: 'CLIP_URL_FORBIDDEN' });
  t.throws(() => parseImageSource('data:image/png,abc'), { code: 'CLIP_INVALID_ARGUMENT' });
  t.throws(() => parseImageSource('abcde'), { code: 'CLIP_INVALID_ARGUMENT' }, 'base64 of an impossible length');
});

t.test('429 with Retry-After when the engine queue is full; 503 while the model loads', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', queueCapacity: 1 });
  t.teardown(() => model.dispose());
  const base = await listen(t, model, { retryAfterSeconds: 2 });
  // Large, flat images: tiny to send, slow to decode, so the one queue slot stays taken.
  const slow = makePng(1200, 1200, () => [20, 120, 220]).toString('base64');
  const [want] = await model.embedImages([Buffer.from(slow, 'base64')]);
  const answers = await Promise.all(Array.from({ length: 24 }, () => score(base, splitRequest(['image'], [[slow]]))));
  const full = answers.filter((a) => a.status === 429);
  const ok = answers.filter((a) => a.status === 200);
  t.equal(
    full.length + ok.length,
    answers.length,
    `every answer is 200 or 429 (${answers.map((a) => a.status).join(',')})`,
  );
  t.ok(full.length >= 1, `some requests found the queue full (${full.length})`);
  t.ok(ok.length >= 1, `some requests got through (${ok.length})`);
  t.equal(full[0]?.headers['retry-after'], '2');
  t.equal(full[0]?.json.code, 'CLIP_QUEUE_FULL');
  t.equal(full[0]?.json.row, undefined, "a full queue is no row's fault");
  for (const answer of ok) checkFeatures(t, answer.json[0].image_features, want, 'a request that got through');
  const after = await score(base, splitRequest(['image'], [[slow]]));
  t.equal(after.status, 200, 'the server serves again once the queue drains');
  const tooMany = await score(base, splitRequest(['text'], [['a'], ['b']]));
  t.equal(tooMany.status, 413, 'more rows of a kind than the queue holds: 413, not a retry');
  t.equal(tooMany.json.code, 'CLIP_REQUEST_TOO_LARGE');
  t.match(tooMany.json.message, /2 text rows; at most 1/);
  t.equal(tooMany.headers['retry-after'], undefined);

  let resolveModel!: (m: ClipModel) => void;
  const loading = await listen(t, new Promise<ClipModel>((resolve) => (resolveModel = resolve)));
  const health = await request(loading, '/');
  t.equal(health.status, 503);
  t.equal(health.headers['retry-after'], '1');
  t.equal(health.json.code, 'CLIP_NOT_READY');
  const early = await score(loading, splitRequest(['text'], [['a']]));
  t.equal(early.status, 503);
  t.equal(early.json.code, 'CLIP_NOT_READY');
  resolveModel(model);
  await new Promise((resolve) => setImmediate(resolve));
  t.equal((await request(loading, '/')).text, 'Healthy', 'healthy once loaded');
  t.equal((await score(loading, splitRequest(['text'], [['a']]))).status, 200);
});

t.test("what Node's HTTP parser refuses still gets {message, code}", async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const address = await listen(t, model);
  const base = new URL(address);
  const raw = (text: string) =>
    new Promise<string>((resolve, reject) => {
      const socket = net.connect(Number(base.port), base.hostname, () => socket.end(text));
      const chunks: Buffer[] = [];
      socket.on('data', (c: Buffer) => chunks.push(c));
      socket.on('close', () => resolve(Buffer.concat(chunks).toString('utf8')));
      socket.on('error', reject);
    });
  const cases: Array<[string, string, number, string]> = [
    [
      'bad Content-Length',
      'POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n{}',
      400,
      'CLIP_INVALID_ARGUMENT',
    ],
    [
      'smuggling',
      'POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n',
      400,
      'CLIP_INVALID_ARGUMENT',
    ],
    [
      '64 KiB header',
      `GET / HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(65_536)}\r\n\r\n`,
      431,
      'CLIP_HEADERS_TOO_LARGE',
    ],
  ];
  for (const [name, request, status, code] of cases) {
    const answer = await raw(request);
    const [head, body] = answer.split('\r\n\r\n');
    t.match(head, new RegExp(`^HTTP/1.1 ${status} `), `${name}: ${status}`);
    t.match(head, /content-type: application\/json/i, `${name}: JSON`);
    const parsed = JSON.parse(body) as { code: string; message: string };
    t.equal(parsed.code, code, `${name}: ${code}`);
    t.ok(parsed.message.length > 0, `${name}: ${parsed.message}`);
  }
  const health = await request(address, '/');
  t.equal(health.status, 200, 'the server still serves');
});

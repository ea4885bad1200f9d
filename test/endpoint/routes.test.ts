// The routes beside /score on loopback with the tiny model: OpenAI's embeddings API through the real `openai`
// client, the Infinity, Jina and vLLM image forms, raw and multipart uploads, SageMaker's routes, the route
// prefix, the concurrency limit, metrics, the OpenAPI document and the health watchdog.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import OpenAI from 'openai';
import t, { type Test } from 'tap';
import { ClipModel } from '../../lib/index';
import { createServer, type ServerOptions } from '../../lib/endpoint/server';
import { base64ToFloat32, float32ToBase64, parseEmbeddingsRequest } from '../../lib/openai/embeddings';
import { maxAbsDiff, tinyModel } from '../helpers/env';
import { splitRequest } from '../helpers/azure';
import { request, type Answer } from '../helpers/http';
import { sampleImages } from '../helpers/images';

// float32's bound everywhere in the tests: a route batches its inputs otherwise than the direct call that made the
// expected vectors, and an embedding can differ in its last bits with the batch it runs in (~1e-6 on the tiny model).
const TOLERANCE = 1e-5;
const JSON_TYPE = { 'content-type': 'application/json' };
const texts = ['a photo of a cat', 'a diagram', 'two dogs playing in the snow'];
const images: Buffer[] = sampleImages(3);

async function listen(t: Test, model: ClipModel, options: ServerOptions = {}) {
  const app = createServer(model, { defaultMetrics: false, ...options });
  const routes: string[] = [];
  app.addHook('onRoute', (route) => {
    for (const method of [route.method].flat()) if (method !== 'HEAD') routes.push(`${method} ${route.url}`);
  });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(() => app.close());
  return { base, routes };
}

const post = (base: string, path: string, body: unknown, headers: Record<string, string> = {}) =>
  request(base, path, { body: JSON.stringify(body), headers: { ...JSON_TYPE, ...headers } });

function embeddingsOf(t: Test, answer: Answer): Float32Array[] {
  t.equal(answer.status, 200, answer.text.slice(0, 300));
  t.equal(answer.json.object, 'list');
  return answer.json.data.map((item: { object: string; index: number; embedding: number[] | string }, i: number) => {
    t.equal(item.object, 'embedding');
    t.equal(item.index, i);
    return typeof item.embedding === 'string' ? base64ToFloat32(item.embedding) : Float32Array.from(item.embedding);
  });
}

function same(t: Test, got: ArrayLike<number>[], want: Float32Array[], what: string) {
  t.equal(got.length, want.length, `${what}: one embedding per input`);
  want.forEach((vector, i) => {
    const diff = maxAbsDiff(got[i], vector);
    t.ok(diff <= TOLERANCE, `${what} [${i}]: max abs diff ${diff}`);
  });
}

function isError(t: Test, answer: Answer, status: number, code: string, what: string) {
  t.equal(answer.status, status, `${what}: ${answer.text.slice(0, 200)}`);
  t.equal(typeof answer.json?.message, 'string', `${what}: message`);
  t.equal(answer.json?.code, code, `${what}: code`);
}

t.test('the routes beside /score', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const { base, routes } = await listen(t, model, { score: { allowPrivateUrls: true } });
  // Images by URL come from a loopback server of the test's own.
  const imageServer = http.createServer((req, res) => {
    const image = images[Number(req.url?.slice(1))];
    res.writeHead(image ? 200 : 404, { 'content-type': 'image/png' }).end(image);
  });
  await new Promise<void>((resolve) => imageServer.listen(0, '127.0.0.1', resolve));
  t.teardown(() => imageServer.close());
  const imageBase = `http://127.0.0.1:${(imageServer.address() as AddressInfo).port}`;
  const textFeatures = await model.embedTexts(texts);
  const imageFeatures = await model.embedImages(images);
  const base64s = images.map((image) => image.toString('base64'));

  await t.test('the openai client: float and its default base64 equal embedTexts', async (t) => {
    const client = new OpenAI({ apiKey: 'unused', baseURL: `${base}/v1`, maxRetries: 0 });
    const float = await client.embeddings.create({ model: 'clip', input: texts, encoding_format: 'float' });
    same(
      t,
      float.data.map((d) => d.embedding),
      textFeatures,
      'float',
    );
    t.equal(float.model, 'clip');
    t.ok(float.usage.prompt_tokens > texts.length, 'usage counts tokens');
    const byDefault = await client.embeddings.create({ model: 'clip', input: texts });
    same(
      t,
      byDefault.data.map((d) => d.embedding),
      textFeatures,
      'base64',
    );
    const one = await client.embeddings.create({ model: 'clip', input: texts[1], dimensions: 512 });
    same(
      t,
      one.data.map((d) => d.embedding),
      await model.embedTexts([texts[1]]), // a text batch pads to its longest text: alone against alone
      'one string',
    );
  });

  await t.test('base64 is little-endian float32 and normalize scales to unit length', async (t) => {
    const answer = await post(base, '/embeddings', { input: texts, encoding_format: 'base64', normalize: true });
    const got = embeddingsOf(t, answer);
    t.equal(Buffer.from(answer.json.data[0].embedding, 'base64').length, 512 * 4);
    got.forEach((vector, i) => {
      const norm = Math.hypot(...textFeatures[i]);
      same(t, [vector], [textFeatures[i].map((v) => v / norm)], `normalized ${i}`);
    });
    t.same(base64ToFloat32(float32ToBase64(textFeatures[0])), textFeatures[0]);
  });

  await t.test("Infinity's modality: image with base64, data: URIs", async (t) => {
    const input = [base64s[0], `data:image/png;base64,${base64s[1]}`, `${imageBase}/2`];
    const got = embeddingsOf(t, await post(base, '/v1/embeddings', { model: 'clip', modality: 'image', input }));
    same(t, got, imageFeatures, 'infinity');
  });

  await t.test("Jina's {text} / {image} objects, mixed in one array", async (t) => {
    const input = [
      { image: base64s[0] },
      { text: texts[0] },
      { image: `data:image/png;base64,${base64s[2]}` },
      { text: texts[2] },
    ];
    const got = embeddingsOf(t, await post(base, '/v1/embeddings', { input }));
    same(t, got, [imageFeatures[0], textFeatures[0], imageFeatures[2], textFeatures[2]], 'jina');
  });

  await t.test("vLLM's messages with image_url and text parts", async (t) => {
    const messages = [
      {
        role: 'user',
        content: [
          { type: 'image_url', image_url: { url: `data:image/png;base64,${base64s[1]}` } },
          { type: 'text', text: texts[1] },
        ],
      },
      { role: 'user', content: texts[2] },
    ];
    const got = embeddingsOf(t, await post(base, '/v1/embeddings', { messages }));
    same(t, got, [imageFeatures[1], textFeatures[1], textFeatures[2]], 'vllm');
  });

  await t.test('token ids embed like the text they tokenize to', async (t) => {
    const [ids] = await model.tokenize([texts[0]]);
    const end = ids.indexOf(ids[ids.length - 1], 1) + 1;
    const got = embeddingsOf(t, await post(base, '/v1/embeddings', { input: [Array.from(ids.subarray(0, end))] }));
    same(t, got, await model.embedTexts([texts[0]]), 'tokens');
  });

  await t.test('raw and multipart uploads at /v1/embeddings/image', async (t) => {
    const raw = await request(base, '/v1/embeddings/image', {
      body: images[0],
      headers: { 'content-type': 'image/png' },
    });
    same(t, embeddingsOf(t, raw), [imageFeatures[0]], 'raw image/png');
    const octets = await request(base, '/v1/embeddings/image?encoding_format=base64', {
      body: images[1],
      headers: { 'content-type': 'application/octet-stream' },
    });
    same(t, embeddingsOf(t, octets), [imageFeatures[1]], 'raw octet-stream, base64');
    const form = new FormData();
    images.forEach((image, i) => form.append('file', new Blob([image], { type: 'image/png' }), `${i}.png`));
    const response = await fetch(`${base}/v1/embeddings/image`, { method: 'POST', body: form });
    const answer: Answer = { status: response.status, headers: {}, text: '', json: await response.json() };
    same(t, embeddingsOf(t, answer), imageFeatures, 'multipart');
  });

  await t.test('/invocations equals /score; /ping and /health answer like /', async (t) => {
    const body = splitRequest(
      ['image', 'text'],
      [
        [base64s[0], texts[0]],
        ['', texts[1]],
        [base64s[1], ''],
      ],
    );
    const [invocations, azure] = await Promise.all([post(base, '/invocations', body), post(base, '/score', body)]);
    t.equal(invocations.status, 200, invocations.text.slice(0, 200));
    t.same(invocations.json, azure.json);
    for (const path of ['/', '/ping', '/health']) {
      const answer = await request(base, path);
      t.equal(answer.status, 200, path);
      t.equal(answer.text, 'Healthy', path);
    }
  });

  await t.test('/v1/models and /info', async (t) => {
    const client = new OpenAI({ apiKey: 'unused', baseURL: `${base}/v1`, maxRetries: 0 });
    const list = await client.models.list();
    t.same(
      list.data.map((m) => m.id),
      [model.info.name],
    );
    const info = await request(base, '/info');
    t.equal(info.status, 200);
    t.equal(info.json.model.embedDim, 512);
    t.equal(info.json.device, model.info.device);
    t.equal(info.json.dtype, model.info.dtype);
    t.equal(info.json.limits.maxInputsPerRequest, 2048);
    t.equal(info.json.limits.queueCapacity, model.info.queueCapacity);
  });

  await t.test("every new route's 4xx carries {message, code}", async (t) => {
    isError(
      t,
      await post(base, '/v1/embeddings', { input: texts, dimensions: 256 }),
      400,
      'CLIP_INVALID_ARGUMENT',
      'dimensions',
    );
    t.match((await post(base, '/v1/embeddings', { input: 'x', dimensions: 256 })).json.message, /512/);
    isError(
      t,
      await post(base, '/v1/embeddings', { input: 'x', encoding_format: 'int8' }),
      400,
      'CLIP_INVALID_ARGUMENT',
      'encoding_format',
    );
    isError(t, await post(base, '/v1/embeddings', { model: 'clip' }), 400, 'CLIP_INVALID_ARGUMENT', 'no input');
    isError(
      t,
      await post(base, '/v1/embeddings', { input: [{ text: 'a', image: base64s[0] }] }),
      400,
      'CLIP_INVALID_ARGUMENT',
      'both',
    );
    isError(
      t,
      await post(base, '/v1/embeddings', { input: ['not an image!'], modality: 'image' }),
      400,
      'CLIP_INVALID_ARGUMENT',
      'image string',
    );
    const undecodable = await post(base, '/v1/embeddings', {
      input: [{ text: 'a' }, { image: Buffer.from('not an image').toString('base64') }],
    });
    isError(t, undecodable, 400, 'CLIP_UNSUPPORTED_IMAGE_FORMAT', 'undecodable');
    t.match(undecodable.json.message, /^input\[1\]\.image: /);
    isError(
      t,
      await post(base, '/v1/embeddings', { input: ['file:///etc/passwd'], modality: 'image' }),
      400,
      'CLIP_URL_FORBIDDEN',
      'scheme',
    );
    isError(t, await post(base, '/v1/embeddings', { input: [[1, 1e9]] }), 400, 'CLIP_INVALID_ARGUMENT', 'token id');
    const missing = await post(base, '/v1/embeddings', { input: [{ text: 'a' }, { image: `${imageBase}/9` }] });
    isError(t, missing, 400, 'CLIP_IMAGE_FETCH_FAILED', 'a URL that answers 404');
    t.match(missing.json.message, /^input\[1\]\.image: /);
    isError(
      t,
      await post(base, '/v1/embeddings', { input: new Array(2049).fill('x') }),
      413,
      'CLIP_REQUEST_TOO_LARGE',
      '2049 inputs',
    );
    isError(
      t,
      await post(base, '/v1/embeddings', { messages: [{ content: [{ type: 'audio' }] }] }),
      400,
      'CLIP_INVALID_ARGUMENT',
      'part',
    );
    isError(
      t,
      await request(base, '/v1/embeddings', { body: 'x', headers: { 'content-type': 'text/plain' } }),
      415,
      'CLIP_UNSUPPORTED_MEDIA_TYPE',
      'text/plain',
    );
    isError(
      t,
      await post(base, '/v1/embeddings/image', { input: 'x' }),
      415,
      'CLIP_UNSUPPORTED_MEDIA_TYPE',
      'json upload',
    );
    isError(
      t,
      await request(base, '/v1/embeddings/image', {
        body: Buffer.from('nope'),
        headers: { 'content-type': 'image/png' },
      }),
      400,
      'CLIP_UNSUPPORTED_IMAGE_FORMAT',
      'bad upload',
    );
    isError(
      t,
      await request(base, '/v1/embeddings/image?normalize=maybe', {
        body: images[0],
        headers: { 'content-type': 'image/png' },
      }),
      400,
      'CLIP_INVALID_ARGUMENT',
      'query',
    );
    const form = new FormData();
    form.append('note', 'hello');
    const response = await fetch(`${base}/v1/embeddings/image`, { method: 'POST', body: form });
    isError(
      t,
      { status: response.status, headers: {}, text: '', json: await response.json() },
      400,
      'CLIP_INVALID_ARGUMENT',
      'form field',
    );
    isError(t, await post(base, '/invocations', { input_data: {} }), 400, 'CLIP_INVALID_ARGUMENT', 'invocations');
    isError(t, await request(base, '/v2/nothing'), 404, 'CLIP_NOT_FOUND', 'unknown route');
  });

  await t.test('metrics: per-stage histograms and per-route counters', async (t) => {
    const text = (await request(base, '/metrics')).text;
    t.match(text, /clip_stage_duration_seconds_count\{stage="fetch",encoder="image"\} [1-9]/);
    for (const stage of ['prepare', 'queue', 'inference']) {
      for (const encoder of ['image', 'text']) {
        t.match(text, new RegExp(`clip_stage_duration_seconds_count\\{stage="${stage}",encoder="${encoder}"\\} [1-9]`));
      }
    }
    t.match(text, /clip_http_requests_total\{method="POST",route="\/v1\/embeddings",status="200"\} [1-9]/);
    t.match(text, /clip_http_requests_total\{method="POST",route="\/v1\/embeddings\/image",status="200"\} [1-9]/);
    t.match(text, /clip_http_requests_total\{method="POST",route="\/invocations",status="200"\} [1-9]/);
  });

  await t.test('the OpenAPI document covers every route', async (t) => {
    const document = (await request(base, '/swagger.json')).json;
    const documented = Object.entries(document.paths as Record<string, object>).flatMap(([path, operations]) =>
      Object.keys(operations).map((method) => `${method.toUpperCase()} ${path}`),
    );
    t.ok(routes.length >= 12, `${routes.length} routes`);
    t.same(documented.sort(), [...routes].sort());
  });
});

t.test('API key, route prefix, concurrency limit and the health watchdog', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const { base } = await listen(t, model, {
    apiKey: 'secret',
    routePrefix: '/clip',
    maxConcurrentRequests: 1,
    watchdogIntervalMs: 50,
  });
  const auth = { authorization: 'Bearer secret' };

  isError(t, await post(base, '/clip/v1/embeddings', { input: 'x' }), 401, 'CLIP_UNAUTHORIZED', 'no key');
  isError(t, await request(base, '/clip/v1/models'), 401, 'CLIP_UNAUTHORIZED', 'models without key');
  isError(
    t,
    await post(base, '/clip/invocations', { input_data: {} }),
    401,
    'CLIP_UNAUTHORIZED',
    'invocations without key',
  );
  isError(t, await post(base, '/v1/embeddings', { input: 'x' }, auth), 404, 'CLIP_NOT_FOUND', 'outside the prefix');
  const client = new OpenAI({ apiKey: 'secret', baseURL: `${base}/clip/v1`, maxRetries: 0 });
  const [want] = await model.embedTexts(['a prefixed text']);
  const got = await client.embeddings.create({ model: 'clip', input: 'a prefixed text' });
  t.ok(maxAbsDiff(got.data[0].embedding, want) <= TOLERANCE, 'through the prefix');

  // Wedge the engine: work waits and nothing moves.
  const health = async () => (await request(base, '/clip/health')).status;
  t.equal(await health(), 200, 'healthy before');
  model._holdForTesting(true);
  const stuck = post(base, '/clip/v1/embeddings', { input: ['waits'] }, auth);
  let status = 200;
  // The watchdog samples on its own timer; ask until it has seen the stall (bounded, never timed).
  for (let i = 0; i < 1000 && status === 200; i++) {
    await new Promise((resolve) => setTimeout(resolve, 10));
    status = await health();
  }
  t.equal(status, 503, 'unhealthy while wedged');
  const ping = await request(base, '/clip/ping');
  isError(t, ping, 503, 'CLIP_NOT_READY', 'ping while wedged');
  t.match(ping.json.message, /without progress/);

  const second = await post(base, '/clip/v1/embeddings', { input: ['one too many'] }, auth);
  isError(t, second, 429, 'CLIP_QUEUE_FULL', 'over maxConcurrentRequests');
  t.equal(second.headers['retry-after'], '1');

  model._holdForTesting(false);
  t.equal((await stuck).status, 200, 'the held request completes');
  t.equal(await health(), 200, 'healthy again once the engine moves');
  t.equal((await post(base, '/clip/v1/embeddings', { input: ['next'] }, auth)).status, 200, 'a slot is free again');
});

t.test('parseEmbeddingsRequest', async (t) => {
  const limits = { embedDim: 512, vocabSize: 49408, contextLength: 77 };
  t.same(parseEmbeddingsRequest({ input: 'a' }, limits).inputs, [{ kind: 'text', text: 'a', name: 'input' }]);
  t.equal(parseEmbeddingsRequest({ input: ['a'], encoding_format: 'base64' }, limits).encodingFormat, 'base64');
  t.throws(() => parseEmbeddingsRequest({ input: [], user: 1 }, limits), { code: 'CLIP_INVALID_ARGUMENT' });
  t.throws(() => parseEmbeddingsRequest({ input: 'a', messages: [] }, limits), { code: 'CLIP_INVALID_ARGUMENT' });
  t.throws(() => parseEmbeddingsRequest({ input: new Array(78).fill(1) }, limits), { code: 'CLIP_INVALID_ARGUMENT' });
  t.throws(() => parseEmbeddingsRequest({ input: 'a', normalize: 'yes' }, limits), { code: 'CLIP_INVALID_ARGUMENT' });
});

// POST /v1/classify and POST /v1/rank on loopback with the tiny model: equal to the TS API, with the key,
// errors and OpenAPI of /score, and the embedding cache's metrics.
import t, { type Test } from 'tap';
import { ClipModel } from '../../lib/index';
import { createServer, type ServerOptions } from '../../lib/endpoint/server';
import { tinyModel } from '../helpers/env';
import { request } from '../helpers/http';
import { sampleImages } from '../helpers/images';

const images: Buffer[] = sampleImages(3);
const JSON_TYPE = { 'content-type': 'application/json' };

async function listen(t: Test, model: ClipModel, options: ServerOptions = {}) {
  const app = createServer(model, { defaultMetrics: false, ...options });
  const base = await app.listen({ host: '127.0.0.1', port: 0 });
  t.teardown(() => app.close());
  return base;
}

const post = (base: string, path: string, body: unknown, headers: Record<string, string> = {}) =>
  request(base, path, { body: JSON.stringify(body), headers: { ...JSON_TYPE, ...headers } });

t.test('the retrieval routes', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', cache: true });
  t.teardown(() => model.dispose());
  const base = await listen(t, model);
  const labels = ['a cat', 'a dog', 'a diagram'];

  await t.test('/v1/classify equals zeroShot', async (t) => {
    const want = await model.zeroShot(images[0], labels, { template: ['a photo of a {}.', '{}'] });
    const answer = await post(base, '/v1/classify', {
      image: `data:image/png;base64,${images[0].toString('base64')}`,
      labels,
      template: ['a photo of a {}.', '{}'],
    });
    t.equal(answer.status, 200, answer.text.slice(0, 200));
    t.same(answer.json, { data: JSON.parse(JSON.stringify(want)) });
  });

  await t.test('/v1/rank equals rank', async (t) => {
    const candidates = [{ text: 'a cat' }, { image: images[1] }, { image: images[2] }, { text: 'a red car' }];
    const want = await model.rank({ image: images[0] }, candidates, { topK: 3 });
    const answer = await post(base, '/v1/rank', {
      query: { image: images[0].toString('base64') },
      candidates: candidates.map((c) => ('text' in c ? c : { image: c.image.toString('base64') })),
      topK: 3,
    });
    t.equal(answer.status, 200, answer.text.slice(0, 200));
    t.same(answer.json, { data: JSON.parse(JSON.stringify(want)) });
  });

  await t.test('errors as /score answers them', async (t) => {
    const cases: Array<[string, unknown, number, string]> = [
      ['/v1/classify', { image: images[0].toString('base64'), labels: [] }, 400, 'CLIP_INVALID_ARGUMENT'],
      ['/v1/classify', { image: 'file:///etc/passwd', labels }, 400, 'CLIP_URL_FORBIDDEN'],
      ['/v1/classify', { image: Buffer.from('nope').toString('base64'), labels }, 400, 'CLIP_UNSUPPORTED_IMAGE_FORMAT'],
      ['/v1/classify', [1], 400, 'CLIP_INVALID_ARGUMENT'],
      ['/v1/rank', { query: { text: 'x' }, candidates: [] }, 400, 'CLIP_INVALID_ARGUMENT'],
      ['/v1/rank', { query: { text: 'x', image: 'y' }, candidates: [{ text: 'y' }] }, 400, 'CLIP_INVALID_ARGUMENT'],
      ['/v1/rank', { query: { text: 'x' }, candidates: [{ text: 'y' }], topK: 0 }, 400, 'CLIP_INVALID_ARGUMENT'],
      [
        '/v1/rank',
        { query: { text: 'x' }, candidates: [{ image: 'http://127.0.0.1:1/a.png' }] },
        400,
        'CLIP_URL_FORBIDDEN',
      ],
    ];
    for (const [path, body, status, code] of cases) {
      const answer = await post(base, path, body);
      t.equal(answer.status, status, `${path} ${JSON.stringify(body).slice(0, 80)}: ${answer.text.slice(0, 200)}`);
      t.equal(answer.json?.code, code);
    }
    const text = await request(base, '/v1/rank', { body: 'x', headers: { 'content-type': 'text/plain' } });
    t.equal(text.status, 415);
  });

  await t.test('OpenAPI and metrics', async (t) => {
    const document = (await request(base, '/swagger.json')).json;
    t.ok(document.paths['/v1/classify'].post.responses['429'], 'classify shares the error answers');
    t.ok(document.paths['/v1/rank'].post.requestBody);
    const metrics = (await request(base, '/metrics')).text;
    const hits = /^clip_cache_hits_total (\d+)/m.exec(metrics);
    t.ok(hits && Number(hits[1]) === model.stats().cache!.hits && Number(hits[1]) > 0, 'cache hits are counted');
  });
});

t.test('the API key guards the retrieval routes', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const base = await listen(t, model, { apiKey: 'secret' });
  const body = { query: { text: 'x' }, candidates: [{ text: 'y' }] };
  const refused = await post(base, '/v1/rank', body);
  t.equal(refused.status, 401);
  t.equal(refused.json.code, 'CLIP_UNAUTHORIZED');
  t.equal((await post(base, '/v1/classify', {}, { authorization: 'Bearer wrong' })).status, 401);
  const allowed = await post(base, '/v1/rank', body, { authorization: 'Bearer secret' });
  t.equal(allowed.status, 200, allowed.text.slice(0, 200));
  t.same(
    allowed.json.data.map((r: { index: number }) => r.index),
    [0],
  );
});

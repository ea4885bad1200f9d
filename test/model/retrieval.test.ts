// Similarity, zero-shot classification, ranking, logitScale and the embedding cache, on the tiny model.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ClipError, ClipModel, cosineSimilarity, normalize, similarityMatrix } from '../../lib/index';
import { EmbeddingCache } from '../../lib/cache';
import { hfCheckpoint, hfModel, runPython, tempDir, tinyModel } from '../helpers/env';
import { sampleImages } from '../helpers/images';

const images: Buffer[] = sampleImages(4);
const labels = ['a cat', 'a dog', 'a diagram'];

/** softmax(scale x cosine) computed independently of lib/retrieval. */
function expectedScores(cosines: number[], scale: number): number[] {
  const exps = cosines.map((c) => Math.exp(scale * c));
  const sum = exps.reduce((a, b) => a + b, 0);
  return exps.map((e) => e / sum);
}

function dot(a: Float32Array, b: Float32Array): number {
  let sum = 0;
  for (let i = 0; i < a.length; i++) sum += a[i] * b[i];
  return sum;
}

t.test('normalize, cosineSimilarity, similarityMatrix', async (t) => {
  const a = new Float32Array([3, 4]);
  const b = new Float32Array([4, -3]);
  t.same(Array.from(normalize(a)), [Math.fround(0.6), Math.fround(0.8)]);
  t.same(Array.from(normalize(new Float32Array(2))), [0, 0], 'a zero vector stays zero');
  t.equal(cosineSimilarity(a, a), 1);
  t.equal(cosineSimilarity(a, b), 0);
  const m = similarityMatrix([a, b], [a, b, new Float32Array([-3, -4])]);
  t.equal(m.length, 6);
  t.same(
    Array.from(m, (v) => Math.round(v * 1e6) / 1e6),
    [1, 0, -1, 0, 1, 0],
  );
  t.throws(() => cosineSimilarity(a, new Float32Array(3)), { code: 'CLIP_INVALID_ARGUMENT' });
  t.throws(() => similarityMatrix([a], [new Float32Array(3)]), { code: 'CLIP_INVALID_ARGUMENT' });
  t.throws(() => normalize([1, 2] as unknown as Float32Array), { code: 'CLIP_INVALID_ARGUMENT' });
});

t.test('zeroShot, rank and logitScale', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  t.equal(model.info.logitScale, 100, 'the tiny model records 100 (or has none: 100)');

  await t.test('zeroShot equals a direct computation from embedTexts and embedImages', async (t) => {
    const results = await model.zeroShot(images[0], labels);
    const [image] = await model.embedImages([images[0]]);
    const texts = await model.embedTexts(labels.map((l) => `a photo of a ${l}.`));
    const cosines = texts.map((text) => cosineSimilarity(image, text));
    const scores = expectedScores(cosines, 100);
    t.equal(results.length, labels.length);
    for (const result of results) {
      const i = labels.indexOf(result.label);
      t.ok(Math.abs(result.cosine - cosines[i]) <= 1e-6, `${result.label}: cosine`);
      t.ok(Math.abs(result.score - scores[i]) <= 1e-6, `${result.label}: score`);
    }
    t.ok(Math.abs(results.reduce((s, r) => s + r.score, 0) - 1) <= 1e-6, 'scores sum to 1');
    t.ok(
      results.every((r, i) => i === 0 || results[i - 1].cosine >= r.cosine),
      'sorted best first',
    );
  });

  await t.test('a template ensemble is the mean of normalized template embeddings, renormalized', async (t) => {
    const templates = ['a photo of a {}.', 'a drawing of a {}', '{}'];
    const results = await model.zeroShot(images[1], labels, { template: templates });
    const [image] = await model.embedImages([images[1]]);
    const unitImage = normalize(image);
    for (const label of labels) {
      const embeddings = await model.embedTexts(templates.map((tpl) => tpl.replace('{}', label)));
      const mean = new Float32Array(image.length);
      for (const e of embeddings) {
        const unit = normalize(e);
        for (let k = 0; k < mean.length; k++) mean[k] += unit[k] / templates.length;
      }
      const want = dot(unitImage, normalize(mean));
      const got = results.find((r) => r.label === label)!.cosine;
      t.ok(Math.abs(got - want) <= 1e-6, `${label}: ${got} vs ${want}`);
    }
    await t.rejects(model.zeroShot(images[0], labels, { template: 'no placeholder' }), {
      code: 'CLIP_INVALID_ARGUMENT',
    });
    await t.rejects(model.zeroShot(images[0], []), { code: 'CLIP_INVALID_ARGUMENT' });
  });

  await t.test('rank on texts and on images', async (t) => {
    const candidates = ['a cat', 'a dog on grass', 'a diagram', 'a red car'];
    const ranked = await model.rank(
      { text: 'a kitten' },
      candidates.map((text) => ({ text })),
    );
    const [query, ...embeddings] = await model.embedTexts(['a kitten', ...candidates]);
    const cosines = embeddings.map((e) => cosineSimilarity(query, e));
    const scores = expectedScores(cosines, 100);
    t.same(
      ranked.map((r) => r.index),
      [...cosines.keys()].sort((a, b) => cosines[b] - cosines[a]),
    );
    for (const r of ranked) {
      t.ok(Math.abs(r.cosine - cosines[r.index]) <= 1e-6 && Math.abs(r.score - scores[r.index]) <= 1e-6);
    }

    const byImage = await model.rank(
      { text: 'a gradient' },
      images.map((image) => ({ image })),
      { topK: 2 },
    );
    const [text] = await model.embedTexts(['a gradient']);
    const imageEmbeddings = await model.embedImages(images);
    const imageCosines = imageEmbeddings.map((e) => cosineSimilarity(text, e));
    t.equal(byImage.length, 2, 'topK');
    t.equal(byImage[0].index, imageCosines.indexOf(Math.max(...imageCosines)));
    const sum = expectedScores(imageCosines, 100).reduce((a, b) => a + b, 0);
    t.ok(Math.abs(sum - 1) < 1e-6, 'scores are a softmax over all candidates');

    const mixed = await model.rank({ image: images[0] }, [{ image: images[0] }, { text: 'a cat' }]);
    t.equal(mixed[0].index, 0, 'an image is nearest to itself');
    t.ok(Math.abs(mixed[0].cosine - 1) < 1e-5);
    const fromIndex = await model.rank({ text: 'a gradient' }, imageEmbeddings, { topK: 2 });
    // Batched differently, the embeddings may differ in their last bits.
    t.same(
      fromIndex.map((r) => r.index),
      byImage.map((r) => r.index),
      'embeddings computed before rank as the images do',
    );
    fromIndex.forEach((r, i) => t.ok(Math.abs(r.cosine - byImage[i].cosine) <= 1e-6));
    await t.rejects(model.rank({ text: 'x' }, [new Float32Array(3)]), { code: 'CLIP_INVALID_ARGUMENT' });
    await t.rejects(model.rank({ text: 'x' }, []), { code: 'CLIP_INVALID_ARGUMENT' });
    await t.rejects(model.rank({ text: 'x' }, [{ text: 'y' }], { topK: 0 }), { code: 'CLIP_INVALID_ARGUMENT' });
    // A failing item is named as the caller passed it: its position among the candidates, or the query.
    const corrupt = images[0].subarray(0, 60);
    await t.rejects(model.rank({ text: 'x' }, [{ image: images[1] }, new Float32Array(512), { image: corrupt }]), {
      code: 'CLIP_IMAGE_DECODE_FAILED',
      index: 2,
      message: /^candidates\[2\]: /,
    });
    const queryError = await model.rank({ image: corrupt }, [{ text: 'y' }]).catch((error: unknown) => error);
    t.match(queryError, { code: 'CLIP_IMAGE_DECODE_FAILED', message: /^query: / });
    t.equal((queryError as ClipError).index, undefined, 'the query has no candidate index');
  });

  await t.test('info.logitScale comes from clip.json', async (t) => {
    const dir = tempDir('logit-scale');
    for (const file of fs.readdirSync(tinyModel)) {
      if (file !== 'clip.json') fs.symlinkSync(path.join(tinyModel, file), path.join(dir, file));
    }
    const manifest = JSON.parse(fs.readFileSync(path.join(tinyModel, 'clip.json'), 'utf8'));
    fs.writeFileSync(path.join(dir, 'clip.json'), JSON.stringify({ ...manifest, logitScale: 42.5 }));
    const scaled = await ClipModel.load(dir, { device: 'cpu' });
    t.teardown(() => scaled.dispose());
    t.equal(scaled.info.logitScale, 42.5);
    const results = await scaled.zeroShot(images[0], labels);
    const want = expectedScores(
      results.map((r) => r.cosine),
      42.5,
    );
    results.forEach((r, i) => t.ok(Math.abs(r.score - want[i]) <= 1e-6));
  });
});

t.test('the exporter records exp(logit_scale) of a checkpoint', async (t) => {
  const stored = runPython([
    '-c',
    'import sys; from safetensors.torch import load_file; print(load_file(sys.argv[1])["logit_scale"].item())',
    path.join(hfCheckpoint, 'model.safetensors'),
  ]);
  const manifest = JSON.parse(fs.readFileSync(path.join(hfModel, 'clip.json'), 'utf8'));
  t.ok(
    Math.abs(manifest.logitScale - Math.exp(Number(stored))) < 1e-9,
    `${manifest.logitScale} = exp(${stored.trim()})`,
  );
  const model = await ClipModel.load(hfModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  t.equal(model.info.logitScale, manifest.logitScale);
});

t.test('the embedding cache', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', cache: { maxBytes: 4 * (512 * 4 + 64) } });
  t.teardown(() => model.dispose());
  t.same(model.stats().cache, { hits: 0, misses: 0, entries: 0, bytes: 0 });

  await t.test('a second call is a hit with the same bits and no engine batch', async (t) => {
    const [first] = await model.embedImages([images[0]]);
    const batches = model.stats().image.batches;
    const [second] = await model.embedImages([Buffer.from(images[0])]);
    t.equal(model.stats().image.batches, batches, 'no engine batch');
    t.same(
      Buffer.from(second.buffer, second.byteOffset, second.byteLength),
      Buffer.from(first.buffer, first.byteOffset, first.byteLength),
    );
    t.not(second, first, 'a copy: writing into it leaves the cache alone');
    second.fill(0);
    const [third] = await model.embed([{ image: images[0] }]);
    t.same(Array.from(third), Array.from(first), 'embed() shares the cache');
    const stats = model.stats().cache!;
    t.equal(stats.hits, 2);
    t.equal(stats.misses, 1);
  });

  await t.test('concurrent identical calls embed once', async (t) => {
    const before = model.stats();
    const [a, b] = await Promise.all([model.embedTexts(['once', 'once']), model.embedTexts(['once'])]);
    const after = model.stats();
    t.equal(after.text.items - before.text.items, 1, 'one text embedded');
    t.equal(after.cache!.misses - before.cache!.misses, 1);
    t.equal(after.cache!.hits - before.cache!.hits, 2);
    t.same(Array.from(a[1]), Array.from(a[0]));
    t.same(Array.from(b[0]), Array.from(a[0]));
  });

  await t.test('eviction by size', async (t) => {
    await model.embedTexts(['e1', 'e2', 'e3', 'e4', 'e5', 'e6']);
    const stats = model.stats().cache!;
    t.equal(stats.entries, 4, 'at most maxBytes / entry size entries');
    t.ok(stats.bytes <= 4 * (512 * 4 + 64));
    const items = model.stats().text.items;
    await model.embedTexts(['e1']);
    t.equal(model.stats().text.items, items + 1, 'the oldest was evicted and is computed again');
  });

  await t.test('errors are not cached and options change the key', async (t) => {
    const bad = Buffer.from('not an image');
    await t.rejects(model.embedImages([bad]), { code: 'CLIP_UNSUPPORTED_IMAGE_FORMAT' });
    await t.rejects(model.embedImages([bad]), { code: 'CLIP_UNSUPPORTED_IMAGE_FORMAT' });
    await t.rejects(model.embedImages([images[0]], { maxPixels: 10 }), { code: 'CLIP_IMAGE_TOO_LARGE' });
    const aborted = AbortSignal.abort();
    await t.rejects(model.embedTexts(['e1'], { signal: aborted }), ClipError);
  });

  t.test('a different dtype, device or padding is a different key', async (t) => {
    const identity = { model: 'm', dtype: 'float32', device: 'cpu', padImageBatches: false };
    const key = (changes: object) => new EmbeddingCache({}, { ...identity, ...changes }).key('text', {}, 'a cat');
    t.equal(key({}), key({}));
    t.not(key({ dtype: 'bfloat16' }), key({}));
    t.not(key({ device: 'cuda:0' }), key({}));
    t.not(key({ padImageBatches: true }), key({}));
    t.not(key({ model: 'other' }), key({}));
    t.end();
  });
});

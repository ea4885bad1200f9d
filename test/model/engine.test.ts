// The batching engine: concurrency, backpressure, cancellation and lifecycle.
import { spawnSync } from 'node:child_process';
import path from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import t from 'tap';
import { TaskKind } from '../../lib/native/binding';
import { ClipModel } from '../../lib/index';
import { maxAbsDiff, root, setEnv, tinyModel } from '../helpers/env';
import { makePng, sampleImages } from '../helpers/images';

const dist = path.join(root, 'dist', 'index.js');

function captions(n: number): string[] {
  const words = [
    'a',
    'photo',
    'of',
    'the',
    'red',
    'cat',
    'dog',
    'sitting',
    'on',
    'green',
    'grass',
    'near',
    'river',
    'at',
    'night',
  ];
  return Array.from({ length: n }, (_, i) => {
    const len = 3 + (i % 15);
    return Array.from({ length: len }, (_, j) => words[(i * 7 + j * 3) % words.length]).join(' ');
  });
}

t.test('200 concurrent calls batch and equal one-by-one calls', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const images = sampleImages(100);
  const texts = captions(100);

  const single: Float32Array[] = [];
  for (const image of images) single.push((await model.embedImages([image]))[0]);
  const singleTexts: Float32Array[] = [];
  for (const text of texts) singleTexts.push((await model.embedTexts([text]))[0]);
  const before = model.stats();

  const [batchedImages, batchedTexts] = await Promise.all([
    Promise.all(images.map((image) => model.embedImages([image]).then((r) => r[0]))),
    Promise.all(texts.map((text) => model.embedTexts([text]).then((r) => r[0]))),
  ]);
  const after = model.stats();
  let worst = 0;
  batchedImages.forEach((e, i) => (worst = Math.max(worst, maxAbsDiff(e, single[i]))));
  batchedTexts.forEach((e, i) => (worst = Math.max(worst, maxAbsDiff(e, singleTexts[i]))));
  t.ok(worst <= 1e-5, `max abs diff batched vs one-by-one: ${worst}`);

  const imageBatches = after.image.batches - before.image.batches;
  const textBatches = after.text.batches - before.text.batches;
  const meanImages = 100 / imageBatches;
  const meanTexts = 100 / textBatches;
  t.ok(meanImages > 4, `mean image batch size ${meanImages.toFixed(1)} > 4`);
  t.ok(meanTexts > 4, `mean text batch size ${meanTexts.toFixed(1)} > 4`);
  t.ok(after.image.meanBatchSize > 1, 'stats() reports a mean batch size');
  t.equal(after.image.queueDepth, 0);
  t.ok(after.image.itemsPerSecond > 0, 'stats() reports a rate');
});

t.test('maxBatchTokens caps a text batch by its token rows', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', maxBatchTokens: 100, maxWaitMs: 50 });
  t.teardown(() => model.dispose());
  const context = model.info.contextLength;
  t.equal(model.info.maxBatchTokens, 100);
  const fullLength = Array.from({ length: 12 }, (_, i) => Array.from({ length: 100 }, (_, j) => `w${i + j}`).join(' '));
  let before = model.stats().text.batches;
  const long = await model.embedTexts(fullLength);
  t.equal(model.stats().text.batches - before, 12, `${context}-token texts run one per batch (2 x ${context} > 100)`);

  // Five words: bos + 5 + eos = 7 ids; 100 / 7 -> at most 14 texts a batch.
  const short = Array.from({ length: 42 }, (_, i) => `a photo of cat ${i % 10}`);
  before = model.stats().text.batches;
  const shortEmbeddings = await model.embedTexts(short);
  const batches = model.stats().text.batches - before;
  t.ok(batches >= 3 && batches < 42, `42 short texts in ${batches} batches (at least 3)`);

  const alone = await model.embedTexts([fullLength[3], short[5]]);
  t.ok(
    maxAbsDiff(alone[0], long[3]) <= 1e-5 && maxAbsDiff(alone[1], shortEmbeddings[5]) <= 1e-5,
    'embeddings do not depend on the split',
  );
  // Packed, a batch costs the sum of its texts' tokens: one 77-token text and three of 7 ids (98 rows) fit 100
  // together. Padded they would be 4 x 77 rows: the long text runs without the short ones.
  t.equal(model.info.cpuKernels!.packedTexts, true);
  const mixed = [fullLength[0], short[0], short[1], short[2]];
  before = model.stats().text.batches;
  await model.embedTexts(mixed);
  t.equal(model.stats().text.batches - before, 1, 'packed: 77 + 3 x 7 token rows in one batch');
  const restore = setEnv('CLIP_NATIVE_PACKED_TEXTS', '0');
  const padded = await ClipModel.load(tinyModel, { device: 'cpu', maxBatchTokens: 100, maxWaitMs: 50 });
  restore();
  t.teardown(() => padded.dispose());
  t.equal(padded.info.cpuKernels!.packedTexts, false);
  before = padded.stats().text.batches;
  await padded.embedTexts(mixed);
  const paddedBatches = padded.stats().text.batches - before;
  t.ok(paddedBatches >= 2, `padded: the long text in a batch of its own (${paddedBatches} batches)`);

  const defaults = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.equal(defaults.info.maxBatchTokens, 16 * context, 'default on the CPU: 16 full-length texts');
  await defaults.dispose();
  await t.rejects(ClipModel.load(tinyModel, { maxBatchTokens: 0 }), { code: 'CLIP_INVALID_ARGUMENT' });
});

t.test('a padded text batch of mixed lengths runs as groups of similar length, in the batch order', async (t) => {
  // Padded: an archive without forward_packed, or CLIP_NATIVE_PACKED_TEXTS=0.
  const restore = setEnv('CLIP_NATIVE_PACKED_TEXTS', '0');
  const model = await ClipModel.load(tinyModel, { device: 'cpu' }).finally(restore);
  t.teardown(() => model.dispose());
  t.equal(model.info.cpuKernels!.packedTexts, false);
  const context = model.info.contextLength;
  // One word (3 ids with bos and eos) and full-length texts, interleaved: padded together they would be
  // 16 x context token rows, as two groups 8 x 3 + 8 x context.
  const words = ['cat', 'dog', 'tree', 'car', 'boat', 'bird', 'house', 'road'];
  const long = words.map((word, i) => Array.from({ length: 100 }, (_, j) => `${word} ${i + j}`).join(' '));
  const mixed = words.flatMap((word, i) => [word, long[i]]);
  const alone: Float32Array[] = [];
  for (const text of mixed) alone.push((await model.embedTexts([text]))[0]);
  const before = model.stats().text;
  const together = await model.embedTexts(mixed);
  const after = model.stats().text;
  t.same(
    [after.batches - before.batches, after.forwards - before.forwards],
    [1, 2],
    `one batch of 16 texts (3 and ${context} ids), two forward passes`,
  );
  let worst = 0;
  together.forEach((e, i) => (worst = Math.max(worst, maxAbsDiff(e, alone[i]))));
  t.ok(worst <= 1e-5, `each text in its place, as embedded alone: max abs diff ${worst}`);

  const similar = await model.embedTexts(words);
  const last = model.stats().text;
  t.same([last.batches - after.batches, last.forwards - after.forwards], [1, 1], 'similar lengths: one forward pass');
  similar.forEach((e, i) => t.ok(maxAbsDiff(e, alone[2 * i]) <= 1e-5, `${words[i]}: as alone`));
  t.equal(model.stats().image.forwards, model.stats().image.batches, 'an image batch is one forward pass');
});

t.test('a packed text batch of mixed lengths is one forward pass, each text as embedded alone', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  t.equal(model.info.cpuKernels!.packedTexts, true, 'the exporter writes forward_packed');
  const words = ['cat', 'dog', 'tree', 'car', 'boat', 'bird', 'house', 'road'];
  const long = words.map((word, i) => Array.from({ length: 100 }, (_, j) => `${word} ${i + j}`).join(' '));
  // 16 texts: at most 16 x 77 padded token rows, the CPU's default token budget of one batch.
  const mixed = words.flatMap((word, i) => [word, i % 2 ? long[i] : `${word} and a ${words[(i + 1) % 8]}`]);
  const alone: Float32Array[] = [];
  for (const text of mixed) alone.push((await model.embedTexts([text]))[0]);
  const before = model.stats().text;
  const together = await model.embedTexts(mixed);
  const after = model.stats().text;
  t.same([after.batches - before.batches, after.forwards - before.forwards], [1, 1], 'one batch, one forward pass');
  let worst = 0;
  together.forEach((e, i) => (worst = Math.max(worst, maxAbsDiff(e, alone[i]))));
  t.ok(worst <= 1e-5, `each of ${mixed.length} texts in its place, as embedded alone: max abs diff ${worst}`);
});

t.test('padImageBatches: an image embeds to the same bits however it is batched', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', maxBatchImages: 4, padImageBatches: true });
  t.teardown(() => model.dispose());
  t.equal(model.info.padImageBatches, true);
  const images = sampleImages(7);
  const alone: Float32Array[] = [];
  for (const image of images) alone.push((await model.embedImages([image]))[0]);
  const together = await model.embedImages(images); // batches of 4 and 3 (+1 zero image)
  const shuffled = await model.embedImages([...images].reverse());
  for (let i = 0; i < images.length; i++) {
    t.same(Array.from(together[i]), Array.from(alone[i]), `image ${i}: alone and in a batch of 4`);
    t.same(Array.from(shuffled[images.length - 1 - i]), Array.from(alone[i]), `image ${i}: in another batch`);
  }
  const plain = await ClipModel.load(tinyModel, { device: 'cpu', maxBatchImages: 4 });
  t.equal(plain.info.padImageBatches, false, 'off by default');
  const [unpadded] = await plain.embedImages([images[0]]);
  t.ok(maxAbsDiff(unpadded, alone[0]) <= 1e-5, 'the padding does not change the embedding beyond the last bits');
  await plain.dispose();
  await t.rejects(ClipModel.load(tinyModel, { padImageBatches: 'yes' as never }), { code: 'CLIP_INVALID_ARGUMENT' });
});

t.test('the items of one call wait for each other: one batch however their preparation finishes', async (t) => {
  // One preparation thread prepares the items one after another, and no wait for batch-mates: without the wait
  // for the rest of the call, the first prepared image would start a batch of its own.
  const model = await ClipModel.load(tinyModel, { device: 'cpu', prepThreads: 1, maxWaitMs: 0 });
  t.teardown(() => model.dispose());
  const large = makePng(1600, 1200, (x, y) => [x % 256, y % 256, (x + y) % 256]);
  const images = [...sampleImages(3), large, ...sampleImages(2)];
  for (let round = 0; round < 3; round++) {
    const before = model.stats().image;
    const embeddings = await model.embedImages(images);
    const after = model.stats().image;
    t.equal(embeddings.length, images.length, 'every image embedded');
    t.equal(after.batches - before.batches, 1, `round ${round}: one batch of ${after.items - before.items} images`);
  }
  // A call larger than a batch still starts as soon as a full batch is prepared.
  const capped = await ClipModel.load(tinyModel, { device: 'cpu', prepThreads: 1, maxWaitMs: 0, maxBatchImages: 2 });
  t.teardown(() => capped.dispose());
  const before = capped.stats().image.batches;
  await capped.embedImages(images);
  t.equal(capped.stats().image.batches - before, 3, 'six images, batches of two');
});

t.test('the images of one call, prepared into one tensor, embed to the bits of a batch copied together', async (t) => {
  // A call of 2 to maxBatchImages images runs its batch on the tensor they were prepared into; a batch that is
  // not those rows in order (a failed image between them) copies them from there into the staging tensor: the same
  // batch size, so the same bits. A call larger than a batch prepares each image on its own (its batches depend on
  // which images are prepared first, so only its results are checked).
  const model = await ClipModel.load(tinyModel, { device: 'cpu', maxBatchImages: 4 });
  t.teardown(() => model.dispose());
  const images = sampleImages(6);
  const corrupt = Buffer.from(images[0].subarray(0, 60));
  const batches = () => model.stats().image.batches;
  let before = batches();
  const inPlace = (await model._submit(TaskKind.ImageBytes, images.slice(0, 3))) as Float32Array[];
  t.equal(batches() - before, 1, 'three images, one batch');
  before = batches();
  const gapped = await model._submit(TaskKind.ImageBytes, [images[0], corrupt, images[1], images[2]]);
  t.equal(batches() - before, 1, 'the three good images, one batch');
  t.equal((gapped[1] as { code?: string }).code, 'CLIP_IMAGE_DECODE_FAILED');
  t.same(Array.from(gapped[0] as Float32Array), Array.from(inPlace[0]));
  for (let i = 1; i < 3; i++) t.same(Array.from(gapped[i + 1] as Float32Array), Array.from(inPlace[i]), `image ${i}`);
  before = batches();
  const larger = await model._submit(TaskKind.ImageBytes, images); // each image prepared on its own
  t.equal(batches() - before, 2, 'six images, two batches');
  t.ok(
    larger.every((e) => e instanceof Float32Array),
    'every image of a call larger than a batch embedded',
  );
});

t.test('a submission "together" runs as batches of its own, in order; failures and aborts settle it', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', maxBatchImages: 4 });
  t.teardown(() => model.dispose());
  const images = sampleImages(6);
  const bad = images[5].subarray(0, 60); // truncated PNG
  const before = model.stats().image.batches;
  const [grouped] = await Promise.all([
    model._submit(TaskKind.ImageBytes, [images[0], bad, ...images.slice(1)], { together: true }),
    model.embedImages(images.slice(0, 3)),
    model.embedImages(images.slice(3)),
  ]);
  t.equal((grouped[1] as { code?: string }).code, 'CLIP_IMAGE_DECODE_FAILED', 'a bad member fails only itself');
  const batches = model.stats().image.batches - before;
  // The group's 6 good images: batches of 4 and 2; the other calls' 6 images: at least 2 batches.
  t.ok(batches >= 4, `${batches} batches: the group was not mixed with the other calls`);
  const alone = await model.embedImages(images.slice(0, 4));
  for (let i = 0; i < 4; i++) {
    t.same(
      Array.from(grouped[i === 0 ? 0 : i + 1] as Float32Array),
      Array.from(alone[i]),
      `image ${i}: the same bits as in a batch of the same four`,
    );
  }
  const controller = new AbortController();
  const aborted = model._submit(TaskKind.ImageBytes, sampleImages(12), { together: true, signal: controller.signal });
  controller.abort();
  await t.rejects(aborted, { code: 'CLIP_ABORTED' });
  t.equal((await model.embedImages([images[0]])).length, 1, 'the engine goes on after an aborted group');
  // That call may pass the group's members still in preparation (a group in
  // preparation holds nobody up); they leave the queue once prepared.
  for (let waited = 0; model.stats().image.queueDepth > 0 && waited < 5000; waited += 20) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  t.equal(model.stats().image.queueDepth, 0, 'the aborted group leaves the queue');
});

t.test('the event loop stays free while the model is saturated', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const images = sampleImages(16);
  const histogram = monitorEventLoopDelay({ resolution: 1 });
  histogram.enable();
  const until = Date.now() + 3000;
  let done = 0;
  const worker = async () => {
    while (Date.now() < until) {
      await model.embedImages(images);
      done += images.length;
    }
  };
  await Promise.all([worker(), worker(), worker(), worker()]);
  histogram.disable();
  const p99 = histogram.percentile(99) / 1e6;
  t.ok(done > 0, `${done} images embedded`);
  t.ok(p99 < 20, `event-loop delay p99 ${p99.toFixed(2)} ms < 20 ms`);
});

t.test('a full queue rejects at once with CLIP_QUEUE_FULL', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', queueCapacity: 8 });
  t.teardown(() => model.dispose());
  const images = sampleImages(8);
  t.equal(model.info.queueCapacity, 8);
  // A call that could never fit is the caller's mistake, not a full queue: retrying cannot help.
  await t.rejects(
    model.embedImages([...images, images[0]]),
    { code: 'CLIP_INVALID_ARGUMENT', message: /at most 8 items .* for images but received an array of length 9/ },
    'more than the capacity in one call',
  );
  await t.rejects(model.embedTexts(Array(9).fill('a')), { code: 'CLIP_INVALID_ARGUMENT' }, 'texts too');
  await t.rejects(
    model._submit(TaskKind.Text, Array(9).fill('a')),
    { code: 'CLIP_INVALID_ARGUMENT', message: /at most 8 inputs/ },
    'and the binding checks it before copying the inputs',
  );
  t.same((await model.embedTexts(Array(8).fill('a'))).length, 8, 'exactly the capacity fits');
  const calls = Array.from({ length: 6 }, () =>
    model.embedImages(images).then(
      () => 'ok',
      (e) => e.code,
    ),
  );
  const outcomes = await Promise.all(calls);
  t.ok(outcomes.includes('CLIP_QUEUE_FULL'), `some calls were refused: ${outcomes.join(', ')}`);
  t.ok(outcomes.includes('ok'), 'the others completed');
  t.same((await model.embedImages(images.slice(0, 1))).length, 1, 'the model works once the queue drains');
});

t.test('a bad image fails only itself', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const images = sampleImages(6);
  const corrupt = Buffer.from(images[0].subarray(0, 60));
  const [good1, bad, good2] = await Promise.allSettled([
    model.embedImages(images.slice(0, 3)),
    model.embedImages([images[3], corrupt, images[4]]),
    model.embedImages(images.slice(4)),
  ]);
  t.equal(good1.status, 'fulfilled');
  t.equal(good2.status, 'fulfilled');
  t.equal(bad.status, 'rejected');
  const reason = (bad as PromiseRejectedResult).reason;
  t.equal(reason.code, 'CLIP_IMAGE_DECODE_FAILED');
  t.equal(reason.index, 1, 'the error names the failing item');
  t.match(reason.message, /images\[1\]/);
});

t.test('embed: mixed text and image items equal embedTexts/embedImages, in item order', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const images = sampleImages(3);
  const texts = captions(3);
  const mixed = await model.embed([
    { text: texts[0] },
    { image: images[0] },
    { image: images[1].buffer.slice(images[1].byteOffset, images[1].byteOffset + images[1].byteLength) as ArrayBuffer },
    { text: texts[1] },
    { text: texts[2] },
    { image: images[2] },
  ]);
  const [byText, byImage] = await Promise.all([model.embedTexts(texts), model.embedImages(images)]);
  const expected = [byText[0], byImage[0], byImage[1], byText[1], byText[2], byImage[2]];
  t.equal(mixed.length, 6);
  mixed.forEach((v, i) => t.ok(maxAbsDiff(v, expected[i]) <= 1e-5, `item ${i}`));
  t.same(await model.embed([]), []);

  const corrupt = Buffer.from(images[0].subarray(0, 60));
  const failed = await model.embed([{ text: 'a cat' }, { image: corrupt }]).catch((e: unknown) => e);
  t.match(failed, { code: 'CLIP_IMAGE_DECODE_FAILED', index: 1, message: /items\[1\]/ });
  for (const [bad, pattern] of [
    [[{ text: 'a', image: images[0] }], /exactly one of text or image for items\[0\]/],
    [[{}], /exactly one of text or image for items\[0\]/],
    [[{ text: 3 }], /a string for items\[0\]\.text/],
    [[null], /for items\[0\] but received null/],
    ['a cat', /array .* for items but received "a cat"/],
  ] as const) {
    await t.rejects(model.embed(bad as never), { code: 'CLIP_INVALID_ARGUMENT', message: pattern });
  }
});

t.test('AbortSignal: an aborted call rejects with CLIP_ABORTED and its queued items are dropped', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', maxBatchImages: 2 });
  t.teardown(() => model.dispose());
  await t.rejects(
    model.embedTexts(['a'], { signal: AbortSignal.abort() }),
    { code: 'CLIP_ABORTED' },
    'already aborted',
  );
  const controller = new AbortController();
  const images = sampleImages(64);
  const call = model.embedImages(images, { signal: controller.signal });
  setImmediate(() => controller.abort());
  await t.rejects(call, { code: 'CLIP_ABORTED' });
  // Wait for the engine to settle, then check that not every item ran.
  await model.embedTexts(['after']);
  await new Promise((resolve) => setTimeout(resolve, 200));
  const stats = model.stats();
  t.ok(stats.image.items < 64, `${stats.image.items} of 64 aborted items were embedded`);
  t.equal(stats.image.queueDepth, 0);
  await t.rejects(model.embedTexts(['x'], { signal: 'nope' as never }), { code: 'CLIP_INVALID_ARGUMENT' });
});

t.test('dispose during 100 pending calls settles every one', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  const images = sampleImages(4);
  const calls = Array.from({ length: 100 }, (_, i) =>
    (i % 2 ? model.embedImages(images) : model.embedTexts(captions(4))).then(
      () => 'ok',
      (e) => e.code,
    ),
  );
  await new Promise((resolve) => setTimeout(resolve, 20));
  await model.dispose();
  const outcomes = await Promise.all(calls);
  const counts = outcomes.reduce<Record<string, number>>((acc, o) => ({ ...acc, [o]: (acc[o] ?? 0) + 1 }), {});
  t.equal(outcomes.length, 100);
  t.ok(
    outcomes.every((o) => o === 'ok' || o === 'CLIP_DISPOSED'),
    JSON.stringify(counts),
  );
  t.ok(counts.CLIP_DISPOSED > 0, 'queued calls were rejected with CLIP_DISPOSED');
});

function runNode(script: string, args: string[] = []) {
  return spawnSync(process.execPath, [...args, '-e', script], { cwd: root, encoding: 'utf8', timeout: 240_000 });
}

t.test('RSS stays flat over 30 load/embed/dispose cycles', async (t) => {
  const result = runNode(
    `
    const { ClipModel } = require(${JSON.stringify(dist)});
    const { sampleImages } = require('./test/helpers/images.js');
    (async () => {
      const images = sampleImages(8);
      const rss = [];
      for (let i = 0; i < 30; i++) {
        const model = await ClipModel.load(${JSON.stringify(tinyModel)}, { device: 'cpu' });
        await Promise.all([model.embedImages(images), model.embedTexts(['a cat', 'a dog on a red mat'])]);
        await model.dispose();
        global.gc(); global.gc();
        await new Promise((r) => setTimeout(r, 10));
        rss.push(process.memoryUsage().rss);
      }
      console.log(JSON.stringify(rss));
    })();
    `,
    ['--expose-gc'],
  );
  t.equal(result.status, 0, result.stderr);
  const rss = JSON.parse(result.stdout.trim().split('\n').pop()!) as number[];
  // The allocator's arenas and libtorch's caches fill over the first cycles (30-40 MB with the tiny model, more
  // when other processes share the CPUs); a leak of the model would add its size on every cycle after.
  const growth = (rss[29] - rss[9]) / 2 ** 20;
  t.ok(growth < 50, `RSS grew ${growth.toFixed(1)} MB from cycle 10 to cycle 30`);
});

t.test('worker_threads load, embed and dispose; a worker torn down mid-work is safe', async (t) => {
  const result = runNode(`
    const { Worker } = require('node:worker_threads');
    const code = \`
      const { parentPort, workerData } = require('node:worker_threads');
      const { ClipModel } = require(${JSON.stringify(dist)});
      (async () => {
        const model = await ClipModel.load(${JSON.stringify(tinyModel)}, { device: 'cpu' });
        const [e] = await model.embedTexts(['a cat']);
        if (workerData.dispose) await model.dispose();
        else for (let i = 0; i < 50; i++) model.embedTexts(['pending ' + i]).catch(() => {});
        parentPort.postMessage(e.length);
      })();
    \`;
    const run = (dispose) => new Promise((resolve, reject) => {
      const w = new Worker(code, { eval: true, workerData: { dispose } });
      w.on('message', async (n) => { if (!dispose) await w.terminate(); resolve(n); });
      w.on('error', reject);
    });
    (async () => {
      const out = [];
      for (let i = 0; i < 3; i++) out.push(await run(true));
      out.push(await run(false));
      out.push(await run(false));
      console.log(JSON.stringify(out));
    })().catch((e) => { console.error(e); process.exit(1); });
  `);
  t.equal(result.status, 0, result.stderr);
  t.same(JSON.parse(result.stdout.trim()), [512, 512, 512, 512, 512]);
});

t.test('process exit with work in flight does not crash', async (t) => {
  const result = runNode(`
    const { ClipModel } = require(${JSON.stringify(dist)});
    const { sampleImages } = require('./test/helpers/images.js');
    (async () => {
      const model = await ClipModel.load(${JSON.stringify(tinyModel)}, { device: 'cpu' });
      const images = sampleImages(8);
      for (let i = 0; i < 50; i++) model.embedImages(images).catch(() => {});
      setTimeout(() => process.exit(0), 30);
    })();
  `);
  t.equal(result.signal, null, `no signal (${result.stderr})`);
  t.equal(result.status, 0);
});

t.test('a process with a loaded, idle model exits on its own', async (t) => {
  const result = runNode(`
    const { ClipModel } = require(${JSON.stringify(dist)});
    ClipModel.load(${JSON.stringify(tinyModel)}, { device: 'cpu' }).then((m) => m.embedTexts(['x'])).then(() => console.log('done'));
  `);
  t.equal(result.status, 0, result.stderr);
  t.match(result.stdout, /done/);
});

t.test('inputs are validated with the boundary message', async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  await t.rejects(model.embedTexts('a cat' as never), {
    code: 'CLIP_INVALID_ARGUMENT',
    message: 'Expected an array of strings for texts but received "a cat"',
  });
  await t.rejects(model.embedTexts(['ok', 3 as never]), {
    message: 'Expected a string for texts[1] but received number 3',
  });
  await t.rejects(model.embedImages([{} as never]), { code: 'CLIP_INVALID_ARGUMENT', message: /images\[0\]/ });
  t.same(await model.embedTexts([]), [], 'an empty list gives an empty list');
  const png = makePng(4, 4, () => [1, 2, 3]);
  t.equal(
    (await model.embedImages([png.buffer.slice(png.byteOffset, png.byteOffset + png.length) as ArrayBuffer]))[0].length,
    512,
    'an ArrayBuffer works',
  );
});

// The model and the engine on one device, against the CPU in float32: run by
// scripts/device-check.sh with CLIP_TEST_DEVICE=cuda on a GPU machine, and with
// the CPU (CLIP_TEST_DEVICE unset) in CI so that the flow cannot rot. Left out
// of the plain test run (package.json's tap.exclude): the other model tests
// already cover the CPU.
import t from 'tap';
import { ClipModel, type Device, type DType } from '../../lib/index';
import { cosine, maxAbsDiff, tinyModel } from '../helpers/env';
import { sampleImages } from '../helpers/images';

// Checked by ClipModel.load like any device option.
const device = (process.env.CLIP_TEST_DEVICE || 'cpu') as Device;
const onCuda = device.startsWith('cuda');
// float16 exists on CUDA only; bfloat16 runs on both.
const reduced: DType[] = onCuda ? ['float16', 'bfloat16'] : ['bfloat16'];

const captions = ['a photo of a cat', 'two dogs running on the beach at night', 'a red bicycle', 'x'];

async function embedAll(model: ClipModel, images: Uint8Array[]) {
  const [imageVectors, textVectors] = await Promise.all([model.embedImages(images), model.embedTexts(captions)]);
  return [...imageVectors, ...textVectors];
}

t.test(`float32 on ${device} equals the CPU within 1e-4; reduced precisions keep cosine >= 0.999`, async (t) => {
  const images = sampleImages(6);
  const cpu = await ClipModel.load(tinyModel, { device: 'cpu' });
  const reference = await embedAll(cpu, images);
  await cpu.dispose();

  const model = await ClipModel.load(tinyModel, { device });
  t.teardown(() => model.dispose());
  t.equal(model.info.device, onCuda ? (device === 'cuda' ? 'cuda:0' : device) : 'cpu');
  const vectors = await embedAll(model, images);
  const worst = Math.max(...vectors.map((v, i) => maxAbsDiff(v, reference[i])));
  t.ok(worst <= 1e-4, `max abs diff to the CPU: ${worst}`);

  for (const dtype of reduced) {
    const low = await ClipModel.load(tinyModel, { device, dtype });
    t.equal(low.info.dtype, dtype);
    const lowVectors = await embedAll(low, images);
    await low.dispose();
    const minCosine = Math.min(...lowVectors.map((v, i) => cosine(v, reference[i])));
    t.ok(minCosine >= 0.999, `${dtype}: min cosine to CPU float32 ${minCosine.toFixed(6)}`);
  }
});

t.test(`the encoders run on a stream of their own on CUDA (${device})`, async (t) => {
  const model = await ClipModel.load(tinyModel, { device });
  t.teardown(() => model.dispose());
  if (onCuda) {
    t.type(model.info.cudaStream, 'number');
    t.not(model.info.cudaStream, 0, `stream ${model.info.cudaStream} is not the default stream`);
  } else {
    t.equal(model.info.cudaStream, null, 'no stream on the CPU');
  }
});

t.test(`a full queue rejects with CLIP_QUEUE_FULL and the model goes on (${device})`, async (t) => {
  const model = await ClipModel.load(tinyModel, { device, queueCapacity: 8 });
  t.teardown(() => model.dispose());
  const images = sampleImages(8);
  const outcomes = await Promise.all(
    Array.from({ length: 6 }, () =>
      model.embedImages(images).then(
        () => 'ok',
        (e: { code: string }) => e.code,
      ),
    ),
  );
  t.ok(outcomes.includes('CLIP_QUEUE_FULL'), `some calls were refused: ${outcomes.join(', ')}`);
  t.ok(outcomes.includes('ok'), 'the others completed');
  t.equal((await model.embedImages(images.slice(0, 1))).length, 1, 'the model works once the queue drains');
});

t.test(`an aborted call rejects with CLIP_ABORTED and drops its queued items (${device})`, async (t) => {
  const model = await ClipModel.load(tinyModel, { device, maxBatchImages: 2 });
  t.teardown(() => model.dispose());
  const controller = new AbortController();
  const call = model.embedImages(sampleImages(64), { signal: controller.signal });
  setImmediate(() => controller.abort());
  await t.rejects(call, { code: 'CLIP_ABORTED' });
  t.equal((await model.embedTexts(['after'])).length, 1, 'the engine goes on');
  for (let waited = 0; model.stats().image.queueDepth > 0 && waited < 5000; waited += 20) {
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
  const stats = model.stats();
  t.ok(stats.image.items < 64, `${stats.image.items} of 64 aborted items were embedded`);
  t.equal(stats.image.queueDepth, 0);
});

t.test(`dispose during pending calls settles every one, and frees the device (${device})`, async (t) => {
  const images = sampleImages(4);
  for (let cycle = 0; cycle < 3; cycle++) {
    const model = await ClipModel.load(tinyModel, { device });
    const calls = Array.from({ length: 60 }, (_, i) =>
      (i % 2 ? model.embedImages(images) : model.embedTexts(captions)).then(
        () => 'ok',
        (e: { code: string }) => e.code,
      ),
    );
    await new Promise((resolve) => setTimeout(resolve, 10));
    await model.dispose();
    const outcomes = await Promise.all(calls);
    t.ok(
      outcomes.every((o) => o === 'ok' || o === 'CLIP_DISPOSED'),
      `cycle ${cycle}: ${[...new Set(outcomes)].join(', ')}`,
    );
    await t.rejects(model.embedTexts(['a']), { code: 'CLIP_DISPOSED' });
  }
});

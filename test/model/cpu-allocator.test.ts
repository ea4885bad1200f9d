// The CPU tensor allocator the first model load installs: large blocks a forward frees are kept and handed to the
// next forward of the same shapes (native/core/cpu_allocator.h), within a bound, and go back to the system when the
// last model is disposed; CLIP_NATIVE_CPU_CACHE_MB sets the bound, 0 leaves libtorch's own allocator in place. The
// embeddings do not depend on it beyond fp32 rounding.
import path from 'node:path';
import t from 'tap';
import { ClipModel } from '../../lib/index';
import { binding } from '../../lib/native/binding';
import { root, tinyModel } from '../helpers/env';
import { sampleImages } from '../helpers/images';
import { scriptJson } from '../helpers/process';

const images = sampleImages(16);
const texts = Array.from({ length: 16 }, (_, i) => `a photo of ${i} cats sitting on a red sofa`);

// Embeddings of `images` and `texts` and the allocator's state, from a fresh process with `env` added.
function inChild(env: Record<string, string>) {
  const script = `
    const { ClipModel } = require(${JSON.stringify(path.join(root, 'dist'))});
    const { binding } = require(${JSON.stringify(path.join(root, 'dist', 'native', 'binding'))});
    const { sampleImages } = require(${JSON.stringify(path.join(root, 'test', 'helpers', 'images.js'))});
    (async () => {
      const model = await ClipModel.load(${JSON.stringify(tinyModel)}, { device: 'cpu' });
      const texts = ${JSON.stringify(texts)};
      const out = [...(await model.embedImages(sampleImages(16))), ...(await model.embedTexts(texts))];
      const stats = binding().cpuAllocator();
      await model.dispose();
      console.log(JSON.stringify({ stats, out: out.map((v) => Array.from(v)) }));
    })();`;
  return scriptJson<{ stats: ReturnType<ReturnType<typeof binding>['cpuAllocator']>; out: number[][] }>(script, env);
}

t.test('large blocks are reused between forwards, kept within the bound, freed with the last model', async (t) => {
  t.equal(binding().cpuAllocator().installed, false, 'nothing is installed before a model is loaded');
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  const first = binding().cpuAllocator();
  t.equal(first.installed, true);
  t.equal(first.maxCachedBytes, 256 * 2 ** 20, 'the default bound is 256 MiB');

  await model.embedImages(images);
  await model.embedTexts(texts);
  const warm = binding().cpuAllocator();
  await model.embedImages(images);
  await model.embedTexts(texts);
  const again = binding().cpuAllocator();
  t.equal(again.misses, warm.misses, 'a repeated batch takes every large block from the cache');
  t.ok(again.hits > warm.hits, `a repeated batch reused ${again.hits - warm.hits} blocks`);
  t.ok(again.cachedBytes > 0 && again.cachedBytes <= again.maxCachedBytes, 'the blocks kept stay within the bound');
  // 16 images of pixels (9.6 MB) are one block of 2 MiB and up: mapped by the allocator on huge page boundaries.
  t.ok(again.mappedBytes >= 16 * 3 * 224 * 224 * 4, `${again.mappedBytes} bytes mapped on huge page boundaries`);

  await model.dispose();
  const disposed = binding().cpuAllocator();
  t.same([disposed.cachedBytes, disposed.mappedBytes], [0, 0], 'disposing the last model frees the blocks kept');
});

t.test('CLIP_NATIVE_CPU_CACHE_MB bounds it or turns it off; the embeddings are the same', async (t) => {
  const small = inChild({ CLIP_NATIVE_CPU_CACHE_MB: '1' });
  t.equal(small.stats.installed, true);
  t.equal(small.stats.maxCachedBytes, 2 ** 20, 'a bound of 1 MiB');
  t.ok(small.stats.cachedBytes <= 2 ** 20, 'kept within it');

  const off = inChild({ CLIP_NATIVE_CPU_CACHE_MB: '0' });
  t.equal(off.stats.installed, false, 'libtorch keeps its own allocator');
  t.equal(off.stats.hits + off.stats.misses, 0);

  const on = inChild({});
  t.equal(on.stats.installed, true);
  t.ok(on.stats.hits > 0, 'blocks were reused');
  // Where a block lies decides how a kernel splits its sums into vector lanes and its head and tail, so the last
  // bits may differ between processes; the embeddings agree as fp32 does with the TorchScript reference.
  t.equal(on.out.length, off.out.length);
  t.ok(
    maxAbsDiff(on.out, off.out) <= 1e-5,
    `the same embeddings with and without it (max abs diff ${maxAbsDiff(on.out, off.out)})`,
  );
  t.ok(
    maxAbsDiff(small.out, off.out) <= 1e-5,
    `and with a small bound (max abs diff ${maxAbsDiff(small.out, off.out)})`,
  );
});

function maxAbsDiff(a: number[][], b: number[][]): number {
  let max = 0;
  a.forEach((row, i) => {
    if (row.length !== b[i].length) max = Infinity;
    row.forEach((v, j) => {
      max = Math.max(max, Math.abs(v - b[i][j]));
    });
  });
  return max;
}

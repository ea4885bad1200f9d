// Image batches of 8 or more in a process of 2 threads run as two forwards at once, one per thread
// (`info.cpuKernels.imageLanes`; native/core/model.cc, ForwardInLanes): by rule, or as CLIP_NATIVE_IMAGE_LANES
// says, and not at all on another thread count. clip-native's own kernels give the same bits either way, and the
// stats count each lane's forwards. Every case runs in a fresh process: the thread count is the process's.
import path from 'node:path';
import t from 'tap';
import { root, tinyModel } from '../helpers/env';
import type { NativeForwardTeamStats } from '../../lib/native/binding';
import { nodeJson } from '../helpers/process';

interface Lanes {
  lanes: boolean;
  fromImages: number | null;
  selectedBy: string;
}

interface Run {
  dtype: string;
  kernel: string;
  candidates: string[];
  lanes: Lanes;
  maxImagesPerForward: number | null;
  forwards: number;
  batches: number;
  vectors: number[][];
}

/** Batch sizes each run embeds, one call each: below, at and past the lanes' 8, and past 16 (amx-bf16's most). */
const BATCHES = [7, 8, 9, 17];

/**
 * In a fresh process on `threads` threads with `env`: for each of `runs`, the tiny model loaded at that dtype and
 * kernel candidate, one call per batch size of BATCHES, and what the model reports. Answers the load's error code
 * where a load fails.
 */
function inChild(threads: number, env: Record<string, string>, runs: { dtype: string; cpuKernels: string }[]) {
  const script = `
    const { ClipModel } = require(${JSON.stringify(path.join(root, 'dist'))});
    const { binding } = require(${JSON.stringify(path.join(root, 'dist', 'native', 'binding'))});
    const { sampleImages } = require(${JSON.stringify(path.join(root, 'test', 'helpers', 'images.js'))});
    (async () => {
      const out = [];
      for (const { dtype, cpuKernels } of ${JSON.stringify(runs)}) {
        let model;
        try {
          model = await ClipModel.load(${JSON.stringify(tinyModel)}, { device: 'cpu', threads: ${threads}, dtype, cpuKernels, maxBatchImages: 32 });
        } catch (error) {
          console.log(JSON.stringify({ error: error.code }));
          return;
        }
        const vectors = [];
        for (const n of ${JSON.stringify(BATCHES)}) vectors.push(...(await model.embedImages(sampleImages(n))));
        const kernels = model.info.cpuKernels;
        const stats = model.stats().image;
        out.push({ dtype, kernel: kernels.image, candidates: kernels.candidates, lanes: kernels.imageLanes, maxImagesPerForward: kernels.maxImagesPerForward,
                   forwards: stats.forwards, batches: stats.batches, vectors: vectors.map((v) => Array.from(v)) });
        await model.dispose();
      }
      console.log(JSON.stringify({ runs: out, team: binding().forwardTeam() }));
    })();`;
  return nodeJson<{ runs?: Run[]; team?: NativeForwardTeamStats; error?: string }>(['-e', script], env).value;
}

/** Forwards of one batch of `n` images on an encoder that takes at most `most` per forward (null: any). */
const forwardsOf = (n: number, most: number | null) => (most ? Math.max(1, Math.ceil(n / most)) : 1);

t.test('by rule on 2 threads: batches of 8 or more in two lanes, fewer as one forward', async (t) => {
  const { runs, team } = inChild(2, { CLIP_NATIVE_IMAGE_LANES: '' }, [
    { dtype: 'float32', cpuKernels: 'auto' },
    { dtype: 'bfloat16', cpuKernels: 'fixed' },
  ]);
  for (const run of runs!) {
    t.same(run.lanes, { lanes: true, fromImages: 8, selectedBy: 'rule' }, `${run.dtype}/${run.kernel}`);
    t.equal(run.batches, BATCHES.length, `${run.dtype}: one batch per call`);
    const most = run.maxImagesPerForward;
    const expected = BATCHES.reduce(
      (sum, n) =>
        sum + (n >= 8 ? forwardsOf(Math.ceil(n / 2), most) + forwardsOf(Math.floor(n / 2), most) : forwardsOf(n, most)),
      0,
    );
    t.equal(run.forwards, expected, `${run.dtype}: a forward per lane (${run.forwards})`);
  }
  const inLanes = runs!.length * BATCHES.filter((n) => n >= 8).length;
  t.same([team!.laneBatches, team!.laneBatchesOnTwoThreads], [inLanes, inLanes], 'each in lanes on two threads');
});

t.test('CLIP_NATIVE_IMAGE_LANES turns the lanes on or off; other thread counts have none', async (t) => {
  const fp32 = [{ dtype: 'float32', cpuKernels: 'fixed' }];
  const off = inChild(2, { CLIP_NATIVE_IMAGE_LANES: '0' }, fp32);
  t.same(off.runs![0].lanes, { lanes: false, fromImages: null, selectedBy: 'environment' });
  t.equal(off.runs![0].forwards, BATCHES.length, 'off: one forward per batch');
  t.equal(off.team!.laneBatches, 0, 'off: no batch in lanes');
  t.same(inChild(2, { CLIP_NATIVE_IMAGE_LANES: '1' }, fp32).runs![0].lanes, {
    lanes: true,
    fromImages: 8,
    selectedBy: 'environment',
  });
  t.same(inChild(1, { CLIP_NATIVE_IMAGE_LANES: '1' }, fp32).runs![0].lanes, {
    lanes: false,
    fromImages: null,
    selectedBy: 'not applicable',
  });
  t.same(inChild(2, { CLIP_NATIVE_IMAGE_LANES: 'yes' }, fp32), { error: 'CLIP_INVALID_ARGUMENT' }, 'a bad value');
  t.same(inChild(1, { CLIP_NATIVE_IMAGE_LANES: 'yes' }, fp32), { error: 'CLIP_INVALID_ARGUMENT' }, 'on any threads');
});

t.test("clip-native's own kernels: the same bits in lanes as in one forward", async (t) => {
  // The own candidates of each dtype that this CPU has (every load lists its dtype's candidates).
  const own = new Set(['avx512', 'avx2', 'amx-bf16', 'avx512-bf16', 'avx512-bf16w', 'avx2-bf16w', 'avx512-vnni']);
  const listed = inChild(2, { CLIP_NATIVE_IMAGE_LANES: '0' }, [
    { dtype: 'float32', cpuKernels: 'fixed' },
    { dtype: 'bfloat16', cpuKernels: 'fixed' },
    { dtype: 'int8', cpuKernels: 'fixed' },
  ]);
  const runs = listed.runs!.flatMap((run) =>
    run.candidates.filter((name) => own.has(name)).map((name) => ({ dtype: run.dtype, cpuKernels: name })),
  );
  if (runs.length === 0) {
    t.pass("this CPU has none of clip-native's kernels");
    return;
  }
  const withLanes = inChild(2, { CLIP_NATIVE_IMAGE_LANES: '1' }, runs).runs!;
  const without = inChild(2, { CLIP_NATIVE_IMAGE_LANES: '0' }, runs).runs!;
  for (let i = 0; i < runs.length; i++) {
    const label = `${runs[i].dtype}/${runs[i].cpuKernels}`;
    t.same([withLanes[i].kernel, withLanes[i].lanes.lanes, without[i].lanes.lanes], [runs[i].cpuKernels, true, false]);
    t.same(withLanes[i].vectors, without[i].vectors, `${label}: ${BATCHES.join(', ')} images, the same bits`);
  }
});

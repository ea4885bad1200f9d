// Image batches in a process of 2 threads run as two forwards at once, one per thread (`info.cpuKernels.imageLanes`;
// native/core/model.cc, ForwardInLanes): by rule on a CPU with AMX, from 4 images in float32 and 8 in bfloat16 and
// int8 (odd ones from twice that), or as CLIP_NATIVE_IMAGE_LANES says (0, 1, or the batch size they start from), and
// not at all on another thread count. clip-native's own kernels give the same bits either way, and the stats count
// each lane's forwards. Every case runs in a fresh process: the thread count is the process's.
import path from 'node:path';
import t from 'tap';
import { root, tinyModel } from '../helpers/env';
import { binding, type NativeForwardTeamStats } from '../../lib/native/binding';
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

/** Whether a batch of `n` runs in lanes: from `fromImages` when even, odd ones from twice that. */
const inLanes = (lanes: Lanes, n: number) =>
  lanes.lanes && n >= lanes.fromImages! && (n % 2 === 0 || n >= 2 * lanes.fromImages!);

/** The forwards a run's batches take: a batch in lanes, each lane's. */
const forwardsOfRun = (run: Run) =>
  BATCHES.reduce((sum, n) => {
    const most = run.maxImagesPerForward;
    return (
      sum +
      (inLanes(run.lanes, n)
        ? forwardsOf(Math.ceil(n / 2), most) + forwardsOf(Math.floor(n / 2), most)
        : forwardsOf(n, most))
    );
  }, 0);

// The rule has lanes only where they were measured faster: on CPUs with AMX.
const amx = binding().cpuIsa.includes('amx_bf16');

t.test('by rule on 2 threads: with AMX, batches from 4 (float32) or 8 images in two lanes; else none', async (t) => {
  const { runs, team } = inChild(2, { CLIP_NATIVE_IMAGE_LANES: '' }, [
    { dtype: 'float32', cpuKernels: 'auto' },
    { dtype: 'bfloat16', cpuKernels: 'fixed' },
  ]);
  for (const run of runs!) {
    const from = run.dtype === 'float32' ? 4 : 8;
    t.same(
      run.lanes,
      amx
        ? { lanes: true, fromImages: from, selectedBy: 'rule' }
        : { lanes: false, fromImages: null, selectedBy: 'rule' },
      `${run.dtype}/${run.kernel}`,
    );
    t.equal(run.batches, BATCHES.length, `${run.dtype}: one batch per call`);
    t.equal(run.forwards, forwardsOfRun(run), `${run.dtype}: a forward per lane (${run.forwards})`);
  }
  // float32 (from 4): 8, 9 and 17 images in lanes, 7 (odd, below 8) not; bfloat16 (from 8): 8 and 17, not 9 (odd,
  // below 16).
  const laneBatches = runs!.reduce((sum, run) => sum + BATCHES.filter((n) => inLanes(run.lanes, n)).length, 0);
  t.equal(laneBatches, amx ? 3 + 2 : 0);
  t.same(
    [team!.laneBatches, team!.laneBatchesOnTwoThreads],
    [laneBatches, laneBatches],
    'each in lanes on two threads',
  );
});

t.test('CLIP_NATIVE_IMAGE_LANES turns the lanes on or off; other thread counts have none', async (t) => {
  const fp32 = [{ dtype: 'float32', cpuKernels: 'fixed' }];
  const off = inChild(2, { CLIP_NATIVE_IMAGE_LANES: '0' }, fp32);
  t.same(off.runs![0].lanes, { lanes: false, fromImages: null, selectedBy: 'environment' });
  t.equal(off.runs![0].forwards, BATCHES.length, 'off: one forward per batch');
  t.equal(off.team!.laneBatches, 0, 'off: no batch in lanes');
  t.same(inChild(2, { CLIP_NATIVE_IMAGE_LANES: '1' }, fp32).runs![0].lanes, {
    lanes: true,
    fromImages: amx ? 4 : 8, // the rule's size, else 8
    selectedBy: 'environment',
  });
  const fromNine = inChild(2, { CLIP_NATIVE_IMAGE_LANES: '9' }, fp32);
  t.same(fromNine.runs![0].lanes, { lanes: true, fromImages: 9, selectedBy: 'environment' }, 'lanes from 9 images');
  t.equal(fromNine.runs![0].forwards, forwardsOfRun(fromNine.runs![0]), 'from 9: forwards per lane');
  t.equal(fromNine.team!.laneBatches, 0, 'from 9: 17 images (odd, below 18) as one forward, the rest below 9');
  t.same(inChild(1, { CLIP_NATIVE_IMAGE_LANES: '1' }, fp32).runs![0].lanes, {
    lanes: false,
    fromImages: null,
    selectedBy: 'not applicable',
  });
  for (const bad of ['yes', '-1', '10000', '2.5']) {
    t.same(inChild(2, { CLIP_NATIVE_IMAGE_LANES: bad }, fp32), { error: 'CLIP_INVALID_ARGUMENT' }, `${bad}: refused`);
  }
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

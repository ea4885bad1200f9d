// The threads behind models: clip-native's own CPU kernels run in parallel on libtorch's threads (a build that
// compiled them without libtorch's threading runs them on one thread, silently about 2x slower); every CPU forward
// of the process runs on one forward thread, so however many models a process loads there is one pool of OpenMP
// workers (more pools than CPUs make the OpenMP runtime sleep between parallel regions); the threads an engine
// starts end with dispose(); during a CPU forward the forward thread is held on its CPU and its OpenMP workers are
// kept off it (native/core/cpu_team.h), unless CLIP_NATIVE_TEAM_PLACEMENT=0, without changing any result.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ClipModel } from '../../lib/index';
import { OPENMP_SPIN_COUNT, binding, withOpenMpSpinLimit } from '../../lib/native/binding';
import { root, setEnv, tinyModel } from '../helpers/env';
import { scriptJson } from '../helpers/process';

const threadNames = (): string[] =>
  fs.readdirSync('/proc/self/task').flatMap((task) => {
    try {
      return [fs.readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim()];
    } catch {
      return []; // the thread ended while being listed
    }
  });
const count = (name: string) => threadNames().filter((n) => n === name).length;

t.test('own kernels run parallel loops on more than one thread', async (t) => {
  const threads = binding().parallelThreads();
  if (os.availableParallelism() < 2) {
    t.equal(threads, 1, 'one CPU: one thread');
    return;
  }
  t.ok(threads >= 2, `a parallel loop ran on ${threads} threads`);
});

t.test('the addon loads with a bounded OpenMP spin count unless the user chose the wait policy', async (t) => {
  const seen = () => process.env.GOMP_SPINCOUNT;
  t.teardown(setEnv('GOMP_SPINCOUNT', undefined));
  t.teardown(setEnv('OMP_WAIT_POLICY', undefined));
  t.equal(withOpenMpSpinLimit(seen), OPENMP_SPIN_COUNT, 'set while the libraries load');
  t.equal(process.env.GOMP_SPINCOUNT, undefined, 'removed afterwards');
  t.throws(() =>
    withOpenMpSpinLimit(() => {
      throw new Error('load failed');
    }),
  );
  t.equal(process.env.GOMP_SPINCOUNT, undefined, 'removed after a failed load too');
  process.env.GOMP_SPINCOUNT = '5';
  t.equal(withOpenMpSpinLimit(seen), '5', "the user's count is kept");
  t.equal(process.env.GOMP_SPINCOUNT, '5');
  delete process.env.GOMP_SPINCOUNT;
  process.env.OMP_WAIT_POLICY = 'PASSIVE';
  t.equal(withOpenMpSpinLimit(seen), undefined, "the user's wait policy decides");
});

const onLinux = process.platform === 'linux' ? false : 'thread names are read from /proc';

t.test(
  'threads: named, one forward pool for all models, engine threads end with dispose()',
  { skip: onLinux },
  async (t) => {
    const first = await ClipModel.load(tinyModel, { device: 'cpu', threads: 2, prepThreads: 3 });
    await first.embedTexts(['a photo of a cat']);
    t.equal(count('clip-prep'), 3, 'three preparation threads');
    t.equal(count('clip-infer'), 1, 'one inference thread');
    const forward = count('clip-forward');
    t.ok(forward >= 1 && forward <= 2, `the forward thread and its OpenMP workers (${forward}) are at most 2 threads`);

    const second = await ClipModel.load(tinyModel, { device: 'cpu', prepThreads: 1 });
    await Promise.all([second.embedImages([]), second.embedTexts(['a dog', 'a bird']), first.embedTexts(['a cat'])]);
    t.equal(count('clip-infer'), 2, 'an inference thread per model');
    t.equal(count('clip-forward'), forward, 'no second forward pool');

    await first.dispose();
    await second.dispose();
    t.equal(count('clip-prep') + count('clip-infer'), 0, 'no engine thread left after dispose');
    t.equal(count('clip-forward'), forward, 'the forward thread stays for the next model');
  },
);

// Embeddings of a few texts and images and the forward team's counts, from a fresh process on 2 threads with `env`
// (the first candidate of each dtype, not the calibration's pick, so that every process runs the same kernels).
function teamInChild(env: Record<string, string>) {
  const script = `
    const { ClipModel } = require(${JSON.stringify(path.join(root, 'dist'))});
    const { binding } = require(${JSON.stringify(path.join(root, 'dist', 'native', 'binding'))});
    const { sampleImages } = require(${JSON.stringify(path.join(root, 'test', 'helpers', 'images.js'))});
    (async () => {
      const model = await ClipModel.load(${JSON.stringify(tinyModel)}, { device: 'cpu', threads: 2, cpuKernels: 'fixed' });
      const out = [...(await model.embedTexts(['a photo of a cat', 'two dogs'])), ...(await model.embedImages(sampleImages(3)))];
      await new Promise((resolve) => setTimeout(resolve, 50));
      out.push(...(await model.embedTexts(['a bird after a pause'])));
      const team = binding().forwardTeam();
      await model.dispose();
      console.log(JSON.stringify({ team, out: out.map((v) => Array.from(v)) }));
    })();`;
  return scriptJson<{ team: ReturnType<ReturnType<typeof binding>['forwardTeam']>; out: number[][] }>(script, env);
}

const twoCpusOnLinux =
  process.platform !== 'linux'
    ? 'placement is Linux only'
    : os.availableParallelism() < 2
      ? 'placement needs two CPUs'
      : false;

t.test('CPU forwards run with their team placed, the same embeddings without', { skip: twoCpusOnLinux }, async (t) => {
  const placed = teamInChild({});
  t.equal(placed.team.enabled, true, 'placement is on by default');
  t.ok(placed.team.forwards >= 3, `forwards counted (${placed.team.forwards}, the calibration's included)`);
  t.ok(placed.team.placed >= 1, `forwards placed: ${placed.team.placed} of ${placed.team.forwards}`);
  t.ok(placed.team.placed <= placed.team.forwards && placed.team.starved <= placed.team.placed, 'counts consistent');
  const left = teamInChild({ CLIP_NATIVE_TEAM_PLACEMENT: '0' });
  t.equal(left.team.enabled, false, 'CLIP_NATIVE_TEAM_PLACEMENT=0 turns it off');
  t.equal(left.team.placed, 0, 'no forward placed');
  t.ok(left.team.forwards >= 3, 'forwards still counted');
  const bound = teamInChild({ OMP_PROC_BIND: 'true' });
  t.equal(bound.team.enabled, false, 'OMP_PROC_BIND leaves placement to the OpenMP runtime');
  t.equal(bound.team.placed, 0);
  t.same(placed.out, left.out, 'the embeddings do not depend on where the threads ran');
});

// The threads behind a model: clip-native's own CPU kernels run in parallel on libtorch's threads (a build that
// compiled them without libtorch's threading runs them on one thread, silently about 2x slower), and the threads
// an engine starts end with dispose().
import fs from 'node:fs';
import os from 'node:os';
import t from 'tap';
import { ClipModel } from '../../lib/index';
import { binding } from '../../lib/native/binding';
import { tinyModel } from '../helpers/env';

const threadNames = (): string[] =>
  fs.readdirSync('/proc/self/task').flatMap((task) => {
    try {
      return [fs.readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim()];
    } catch {
      return []; // the thread ended while being listed
    }
  });

t.test('own kernels run parallel loops on more than one thread', async (t) => {
  const threads = binding().parallelThreads();
  if (os.availableParallelism() < 2) {
    t.equal(threads, 1, 'one CPU: one thread');
    return;
  }
  t.ok(threads >= 2, `a parallel loop ran on ${threads} threads`);
});

t.test('engine threads are named and end with dispose()', { skip: process.platform !== 'linux' }, async (t) => {
  const model = await ClipModel.load(tinyModel, { device: 'cpu', threads: 2, prepThreads: 3 });
  await model.embedTexts(['a photo of a cat']);
  const running = threadNames();
  t.equal(running.filter((name) => name === 'clip-prep').length, 3, 'three preparation threads');
  t.ok(running.includes('clip-infer'), 'an inference thread');
  await model.dispose();
  const left = threadNames().filter((name) => name === 'clip-prep' || name === 'clip-infer');
  t.same(left, [], 'none left after dispose');
});

// LoadOptions.calibrationCache (or CLIP_NATIVE_CALIBRATION_CACHE): a calibrating load keeps what it measured in a
// file; a later process on this machine takes the choice from there instead of timing the candidates again, an
// earlier load of the same files in one process is reused, and a file that cannot be used is measured around.
// Processes of their own (test/helpers/embed-child.js): a process remembers its own measurements.
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import t from 'tap';
import { ClipModel } from '../../lib/index';
import { binding } from '../../lib/native/binding';
import { fixtures, root, tinyModel } from '../helpers/env';
import { embedInChild, scriptJson } from '../helpers/process';

const image = path.join(
  fixtures,
  'images',
  fs.readdirSync(path.join(fixtures, 'images')).find((n) => /\.jpg$/.test(n))!,
);
const texts = ['a photo of a cat', 'two dogs on a beach at sunset'];
const HEADER = 'clip-native calibration 1';

interface ChildResult {
  info?: ClipModel['info'];
  vectors?: number[][];
  error?: { code: string; message: string };
  stderr: string;
}

function loadInChild(options: Record<string, unknown>, env: Record<string, string> = {}): ChildResult {
  const { value, stderr } = embedInChild<ChildResult>(
    tinyModel,
    { device: 'cpu', ...options },
    { images: [image], texts },
    { CLIP_NATIVE_CALIBRATION_CACHE: '', ...env },
  );
  return { ...value, stderr };
}

const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'clip-native-calibration-'));
t.teardown(() => fs.rmSync(directory, { recursive: true, force: true }));

/** The stored lines of a calibration file, key -> value. */
function storedLines(file: string): Map<string, string> {
  const [header, ...lines] = fs.readFileSync(file, 'utf8').split('\n').filter(Boolean);
  if (header !== HEADER) throw new Error(`${file}: header ${header}`);
  return new Map(lines.map((line) => line.split('\t') as [string, string]));
}

const first = loadInChild({ calibrationCache: path.join(directory, 'probe') });
const calibrated = first.info!.cpuKernels!.candidates.length > 1;
const needsCalibration = { skip: !calibrated && 'one candidate on this CPU and libtorch: nothing to calibrate' };

t.test(
  'a calibrating load keeps its measurements; a later process takes them from the file',
  needsCalibration,
  async (t) => {
    const file = path.join(directory, 'float32.tsv');
    const measured = loadInChild({ calibrationCache: file });
    const kernels = measured.info!.cpuKernels!;
    t.same(kernels.calibration, { image: 'measured', text: 'measured', cacheFile: file }, 'measured, and kept');
    const lines = storedLines(file);
    const imageLine = [...lines].find(([key]) => key.includes('image_encoder.pt'));
    const textLine = [...lines].find(([key]) => key.includes('text_encoder.pt'));
    t.ok(imageLine && textLine, 'a line per encoder');
    t.match(imageLine![0], /\|float32\|/, 'keyed by the dtype');
    t.match(imageLine![0], /\|libtorch [^|]+\|clip-native [^|]+\|kernels \d+\|/, 'and the versions');
    t.equal(imageLine![1].split(';')[0], kernels.image, "the image encoder's winner");
    t.equal(textLine![1].split(';')[0], kernels.text, "the text encoder's winner");
    const imageFields = imageLine![1].split(';');
    const batchFields = imageFields.filter((field) => field.startsWith('batch'));
    t.equal(imageFields.length - batchFields.length, Object.keys(kernels.imageMsPerItem).length + 1, 'every figure');
    const storedBatchTimes = batchFields.filter((f) => f.startsWith('batch.')).map((f) => f.slice(6).split('=')[0]);
    t.same(storedBatchTimes.sort(), Object.keys(kernels.imageBatchMsPerItem).sort(), 'the figures on the batch');
    t.same(
      batchFields.filter((f) => f.startsWith('batch=')),
      kernels.imageBatch ? [`batch=${kernels.imageBatch.kernel}@${kernels.imageBatch.fromImages}`] : [],
      'and the batch choice',
    );

    const reused = loadInChild({ calibrationCache: file });
    const again = reused.info!.cpuKernels!;
    t.same(again.calibration, { image: 'file', text: 'file', cacheFile: file }, 'the next process reads the file');
    t.same([again.image, again.text], [kernels.image, kernels.text], 'the same kernels');
    t.same(again.imageMsPerItem, kernels.imageMsPerItem, 'the stored figures, not new ones');
    t.same(
      [again.imageBatch, again.imageBatchMsPerItem],
      [kernels.imageBatch, kernels.imageBatchMsPerItem],
      'the stored batch choice',
    );
    t.same(again.attentionKernel, kernels.attentionKernel, 'the same attention choice');
    t.same(reused.vectors, measured.vectors, 'the same embeddings, bit for bit');
    t.same(storedLines(file), lines, 'the file unchanged');
  },
);

t.test('the stored winner is what runs; one that is not a candidate is measured again', needsCalibration, async (t) => {
  const file = path.join(directory, 'edited.tsv');
  const measured = loadInChild({ calibrationCache: file });
  const kernels = measured.info!.cpuKernels!;
  const other = kernels.candidates.find((name) => name !== kernels.image)!;
  const rewrite = (winner: (key: string) => string) => {
    const lines = [...storedLines(file)].map(([key, value]) => {
      const isEncoder = /_encoder\.pt\|/.test(key);
      return `${key}\t${isEncoder ? [winner(key), ...value.split(';').slice(1)].join(';') : value}`;
    });
    fs.writeFileSync(file, [HEADER, ...lines, ''].join('\n'));
  };
  rewrite((key) => (key.includes('image_encoder.pt') ? other : kernels.text));
  const taken = loadInChild({ calibrationCache: file }).info!.cpuKernels!;
  t.same([taken.image, taken.calibration.image], [other, 'file'], `the image encoder runs the stored ${other}`);

  rewrite(() => 'no-such-kernel');
  const remeasured = loadInChild({ calibrationCache: file }).info!.cpuKernels!;
  t.same(remeasured.calibration, { image: 'measured', text: 'measured', cacheFile: file }, 'measured again');
  for (const value of storedLines(file).values()) {
    t.notMatch(value, /no-such-kernel/, 'and the file holds the new measurement');
  }
});

t.test('CLIP_NATIVE_CALIBRATION_CACHE names the file when the option is absent', needsCalibration, async (t) => {
  const file = path.join(directory, 'environment.tsv');
  const measured = loadInChild({}, { CLIP_NATIVE_CALIBRATION_CACHE: file });
  t.same(measured.info!.cpuKernels!.calibration, { image: 'measured', text: 'measured', cacheFile: file });
  const reused = loadInChild({}, { CLIP_NATIVE_CALIBRATION_CACHE: file });
  t.same(reused.info!.cpuKernels!.calibration, { image: 'file', text: 'file', cacheFile: file });
});

t.test(
  'a file that is not a calibration file, or a place that cannot be written, warns and loads',
  needsCalibration,
  async (t) => {
    const foreign = path.join(directory, 'notes.txt');
    fs.writeFileSync(foreign, 'somebody else\tkeeps this file\n');
    const run = loadInChild({ calibrationCache: foreign });
    t.same(run.info!.cpuKernels!.calibration.image, 'measured', 'measured');
    t.match(run.stderr, /was not kept in .*notes\.txt \(the file exists and is not a clip-native calibration file\)/);
    t.equal(fs.readFileSync(foreign, 'utf8'), 'somebody else\tkeeps this file\n', 'the file left as it was');

    const nowhere = path.join(directory, 'no-such-directory', 'calibration.tsv');
    const unwritable = loadInChild({ calibrationCache: nowhere });
    t.ok(unwritable.vectors && unwritable.vectors.length === 3, 'the model loads and embeds');
    t.match(unwritable.stderr, /was not kept in .*no-such-directory/, 'with a warning');
    t.notOk(fs.existsSync(path.dirname(nowhere)), 'and creates no directory');
  },
);

t.test('within a process, a second load reuses the first one; fixed and forced loads keep nothing', async (t) => {
  const file = path.join(directory, 'in-process.tsv');
  const loads: ClipModel['info'][] = [];
  for (const cpuKernels of ['auto', 'auto', 'fixed']) {
    const model = await ClipModel.load(tinyModel, { device: 'cpu', cpuKernels, calibrationCache: file });
    loads.push(model.info);
    await model.dispose();
  }
  if (calibrated) {
    t.same(loads[0].cpuKernels!.calibration.image, 'measured', 'the first load measures');
    t.same(loads[1].cpuKernels!.calibration, { image: 'process', text: 'process', cacheFile: file }, 'the second not');
  } else {
    t.same(loads[0].cpuKernels!.calibration, { image: null, text: null, cacheFile: file }, 'nothing to measure');
  }
  t.same(loads[2].cpuKernels!.calibration, { image: null, text: null, cacheFile: null }, 'fixed: no calibration');
  const fixedFile = path.join(directory, 'fixed.tsv');
  const fixed = loadInChild({ cpuKernels: 'fixed', calibrationCache: fixedFile });
  t.equal(fixed.info!.cpuKernels!.selectedBy, 'fixed');
  t.notOk(fs.existsSync(fixedFile), 'a fixed load writes no file');
});

t.test('calibrationCache must be a path', async (t) => {
  for (const value of ['', 5, true]) {
    await t.rejects(
      ClipModel.load(tinyModel, { device: 'cpu', calibrationCache: value as unknown as string }),
      { code: 'CLIP_INVALID_ARGUMENT', message: /Expected a file path for options\.calibrationCache/ },
      `${JSON.stringify(value)} refused`,
    );
  }
});

// Large blocks (128 KB and up: the tiny model's patch embedding, packed by each candidate) still held after a load,
// in a fresh process.
function heldAfterLoad(options: Record<string, unknown>): { bytes: number; kernels: ClipModel['info']['cpuKernels'] } {
  const script = `
    const { ClipModel } = require(${JSON.stringify(path.join(root, 'dist'))});
    const { binding } = require(${JSON.stringify(path.join(root, 'dist', 'native', 'binding'))});
    (async () => {
      const model = await ClipModel.load(${JSON.stringify(tinyModel)}, ${JSON.stringify({ device: 'cpu', ...options })});
      console.log(JSON.stringify({ bytes: binding().cpuAllocator().inUseBytes, kernels: model.info.cpuKernels }));
      await model.dispose();
    })();`;
  return scriptJson(script, { CLIP_NATIVE_CALIBRATION_CACHE: '' });
}

t.test('the candidates a calibration did not keep are freed with their weights', needsCalibration, async (t) => {
  if (!binding().cpuAllocator().installed) await (await ClipModel.load(tinyModel, { device: 'cpu' })).dispose();
  t.ok(binding().cpuAllocator().installed, 'the counting allocator is in place');
  for (const dtype of ['float32', 'bfloat16', 'int8']) {
    const calibrated = heldAfterLoad({ dtype });
    if (calibrated.kernels!.candidates.length < 2) continue;
    const { image, text, imageBatch } = calibrated.kernels!;
    // A second candidate kept for image batches is forced with it (unless it is the forced one itself: the
    // calibration may keep the batch candidate for the texts too).
    const pairWith = (kernel: string) =>
      imageBatch && imageBatch.kernel !== kernel ? `,${imageBatch.kernel}@${imageBatch.fromImages}` : '';
    const pair = imageBatch ? `,${imageBatch.kernel}@${imageBatch.fromImages}` : '';
    // Forcing a kernel sets it for both encoders. A mixed choice holds one
    // encoder's weights in each format, so it holds no more than the larger of
    // the two forced loads unless a format were the smaller for one encoder and
    // the larger for the other, which none is (the tiny text encoder holds
    // 3 MB more on onednn than on onednn-bf16, the image encoder the same on
    // both); 256 KB for allocation noise there and with a batch candidate
    // (24 KB seen), where a candidate kept by mistake holds megabytes.
    const forced = [...new Set([image, text])].map((kernel) => ({
      kernel,
      forcedAs: kernel + pairWith(kernel),
      bytes: heldAfterLoad({ dtype, cpuKernels: kernel + pairWith(kernel) }).bytes,
    }));
    const bound = Math.max(...forced.map((f) => f.bytes)) + (image === text && !imageBatch ? 0 : 256 << 10);
    t.ok(
      calibrated.bytes <= bound,
      `${dtype}: ${calibrated.bytes} bytes held after calibrating (image ${image}${pair}, text ${text}), ` +
        forced.map((f) => `${f.bytes} with ${f.forcedAs} forced`).join(', '),
    );
  }
});

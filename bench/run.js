#!/usr/bin/env node
// `npm run bench`: clip-native against onnxruntime-node (through transformers.js)
// and PyTorch in Python, on the full-size random-weight ViT-B/32 model and the
// same weights exported to ONNX, side by side in one run.
// `npm run bench -- --quick`: a few minutes on 2 cores; clip-native fp32, bf16
// and int8 against onnxruntime-node fp32 model-only at batch 1 and 8, images
// and captions, printed as one table (no PyTorch, stock graph or serve).
//
//   (a) clip-native, tensors in (model only)     (b) clip-native end to end
//   (c) transformers.js + onnxruntime-node        (d) PyTorch (Python) on the same TorchScript files
//
// Every case (encoder x input x batch) is measured for every implementation
// in each round, implementations rotated from round to round, and each figure
// is the median of the rounds. Then `clip-native serve` under autocannon.
// Writes one report per CPU model, bench/results/<cpu-slug>.md and .json (a
// run on another CPU never replaces it), and the index bench/RESULTS.md that
// links them all; --quick writes bench/results/<cpu-slug>-quick.json only.
//
// Environment: CLIP_BENCH_ROUNDS (default 3; 9 with --quick, which stops after 3
// when another round would end past 4 minutes from its start), CLIP_BENCH_MIN_SECONDS
// per measurement (default 0.75; 0.25 with --quick; a measurement also covers at
// least 16 items), CLIP_BENCH_THREADS (default: the CPU count),
// CLIP_BENCH_SERVE_SECONDS per autocannon run (default 8; 0 skips serve),
// CLIP_BENCH_STOCK=0 leaves out clip-native fp32 without its load-time graph
// (CLIP_NATIVE_CPU_GRAPH=0), CLIP_BENCH_ONLY (comma-separated implementation
// ids), CLIP_BENCH_CASES
// (a regular expression over case ids), CLIP_BENCH_OUT (directory of the
// outputs, default bench/).
//
// For GPUs (scripts/device-check.sh sets these): CLIP_BENCH_DEVICE (cpu, cuda,
// cuda:N; default cpu) for clip-native and the PyTorch worker, CLIP_BENCH_DTYPES
// (clip-native's, default float32,bfloat16), CLIP_BENCH_PYTORCH_DTYPES (default
// float32,bfloat16; on CUDA the worker runs the exporter's eager modules),
// CLIP_BENCH_PYTORCH_MODES (model,e2e), CLIP_BENCH_BATCHES (default 1,8,32),
// CLIP_BENCH_PREP_THREADS (clip-native's decode/tokenize threads),
// CLIP_BENCH_IMAGES=jpg (JPEG files only), CLIP_BENCH_WARMUP=all (one untimed
// call of every case rather than of batch 8 only).
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const os = require('node:os');
const path = require('node:path');
const { spawn, spawnSync } = require('node:child_process');
const readline = require('node:readline');
const { ClipModel } = require('../dist');
const { TaskKind, binding } = require('../dist/native/binding');
const { cpuFlags, cpuName, cpuSlug, loadMeter, machine, maxCpuIsa } = require('./machine');
const report = require('./report');
const { cosine } = require('../test/helpers/vectors.js');

const root = path.resolve(__dirname, '..');
const python = process.env.CLIP_PYTHON || path.join(root, '.venv', 'bin', 'python');
const models = path.join(root, 'bench', 'models');
const modelDir = process.env.CLIP_BENCH_MODEL || path.join(models, 'vit-b-32');
const onnxDir = path.join(models, 'vit-b-32-onnx');
const imageDir = path.join(models, 'images');
const cacheDir = path.join(models, '.cache');
const outDir = process.env.CLIP_BENCH_OUT || path.join(root, 'bench');

const USAGE = 'usage: node bench/run.js [--quick]   (npm run bench [-- --quick])';
const args = process.argv.slice(2);
for (const arg of args) {
  if (arg === '--help' || arg === '-h') {
    console.log(USAGE);
    process.exit(0);
  }
  if (arg !== '--quick') {
    console.error(`Expected --quick or --help for the arguments but received ${JSON.stringify(arg)}\n${USAGE}`);
    process.exit(2);
  }
}
const quick = args.includes('--quick');

const rounds = Number(process.env.CLIP_BENCH_ROUNDS || (quick ? 9 : 3));
const minSeconds = Number(process.env.CLIP_BENCH_MIN_SECONDS || (quick ? 0.25 : 0.75));
// One call of one item measures mostly noise: every timed measurement covers at least this many items.
const MIN_ITEMS = 16;
const QUICK_BUDGET_SECONDS = 240;
const threads = Number(process.env.CLIP_BENCH_THREADS || os.availableParallelism());
const serveSeconds = quick ? 0 : Number(process.env.CLIP_BENCH_SERVE_SECONDS ?? 8);
const only = process.env.CLIP_BENCH_ONLY ? new Set(process.env.CLIP_BENCH_ONLY.split(',')) : undefined;
const stock = !quick && (process.env.CLIP_BENCH_STOCK ?? '1') !== '0';
const caseFilter = process.env.CLIP_BENCH_CASES ? new RegExp(process.env.CLIP_BENCH_CASES) : undefined;
const list = (value, fallback) =>
  value
    ? value
        .split(',')
        .map((x) => x.trim())
        .filter(Boolean)
    : fallback;
const device = process.env.CLIP_BENCH_DEVICE || 'cpu';
const nativeDtypes = list(process.env.CLIP_BENCH_DTYPES, ['float32', 'bfloat16', 'int8']);
const torchDtypes = quick ? [] : list(process.env.CLIP_BENCH_PYTORCH_DTYPES, ['float32', 'bfloat16']);
const torchModes = new Set(list(process.env.CLIP_BENCH_PYTORCH_MODES, ['model', 'e2e']));
const BATCHES = list(process.env.CLIP_BENCH_BATCHES, quick ? ['1', '8'] : ['1', '8', '32']).map(Number);
const TEXT_KINDS = quick ? ['caption'] : ['caption', 'long77'];
const maxBatch = Math.max(...BATCHES);
const prepThreads = process.env.CLIP_BENCH_PREP_THREADS ? Number(process.env.CLIP_BENCH_PREP_THREADS) : undefined;
const imageKinds = process.env.CLIP_BENCH_IMAGES === 'jpg' ? /\.jpg$/ : /\.(jpg|png)$/;
const warmAll = process.env.CLIP_BENCH_WARMUP === 'all';
const SHORT = { float32: 'fp32', bfloat16: 'bf16', float16: 'fp16', int8: 'int8' };
/** `count` items cycling through `items`: batches larger than the inputs reuse them. */
const cycle = (items, count) => Array.from({ length: count }, (_, i) => items[i % items.length]);
const PIXELS = 3 * 224 * 224;

const log = (...args) => console.error(`[bench ${new Date().toISOString().slice(11, 19)}]`, ...args);
const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
const now = () => Number(process.hrtime.bigint()) / 1e9;
const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
};
const quantile = (xs, q) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(q * s.length))];
};

// --- inputs ---------------------------------------------------------------------------------------

function prng(seed) {
  let s = seed >>> 0;
  return () => (s = (s * 1664525 + 1013904223) >>> 0) / 2 ** 32;
}

const WORDS = (
  'a photo of the dog cat man woman child red blue green small large old young sitting standing ' +
  'running on in near under with next to beach street park table kitchen bicycle car train bus field snow ' +
  'tree house window plate pizza two three people playing holding looking at white black wooden bright ' +
  'evening morning city river mountain boat road grass flowers umbrella'
).split(' ');

/** Captions of 5 to 20 words, and texts long enough to fill all 77 tokens (truncated). */
function makeTexts() {
  const rand = prng(11);
  const pick = () => WORDS[Math.floor(rand() * WORDS.length)];
  const captions = Array.from({ length: 32 }, () =>
    Array.from({ length: 5 + Math.floor(rand() * 16) }, pick).join(' '),
  );
  const long = Array.from({ length: 32 }, () => Array.from({ length: 90 }, pick).join(' '));
  return { caption: captions, long77: long };
}

function randomPixels(count) {
  const rand = prng(7);
  const all = new Float32Array(count * PIXELS);
  for (let i = 0; i < all.length; i++) all[i] = rand() * 4 - 2;
  return all;
}

/** The version of an installed package, whatever its "exports" allow; undefined where it is not installed. */
function packageVersion(name) {
  let dir;
  try {
    dir = path.dirname(require.resolve(name));
  } catch {
    return undefined;
  }
  while (!fs.existsSync(path.join(dir, 'package.json'))) dir = path.dirname(dir);
  return JSON.parse(fs.readFileSync(path.join(dir, 'package.json'), 'utf8')).version;
}

function runPython(args) {
  const result = spawnSync(python, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  if (result.status !== 0) throw new Error(`${python} ${args.join(' ')} failed (${result.status ?? result.signal})`);
}

/**
 * Identifies the inputs of a made artefact: the content of small files (scripts, whose checkout times vary
 * between clones), size and time of the large model archives, all by path relative to the repository.
 */
function digest(files) {
  const hash = crypto.createHash('sha256');
  for (const file of files) {
    const stat = fs.statSync(file);
    const name = path.relative(root, file);
    if (stat.size < 1 << 20) hash.update(`${name}:`).update(fs.readFileSync(file)).update('\n');
    else hash.update(`${name}:${stat.size}:${stat.mtimeMs}\n`);
  }
  return hash.digest('hex');
}

/** Makes (once per model and exporter version) the ONNX export and the test images. */
function prepare() {
  const stampOf = (dir) => path.join(dir, '.bench-stamp');
  const ensure = (name, dir, stamp, make) => {
    if (fs.existsSync(stampOf(dir)) && fs.readFileSync(stampOf(dir), 'utf8') === stamp) return;
    const started = Date.now();
    make();
    fs.writeFileSync(stampOf(dir), stamp);
    log(`made ${name} in ${((Date.now() - started) / 1000).toFixed(0)} s`);
  };
  const manifest = path.join(modelDir, 'clip.json');
  // The ONNX export feeds onnxruntime-node and the tokenizer/processor files of PyTorch's end-to-end cases.
  const needsOnnx =
    (device === 'cpu' && (!only || only.has('onnxruntime-node fp32'))) ||
    (torchDtypes.length > 0 && torchModes.has('e2e'));
  if (needsOnnx) {
    ensure(
      'the ONNX export',
      onnxDir,
      digest([
        manifest,
        path.join(modelDir, 'image_encoder.pt'),
        path.join(modelDir, 'text_encoder.pt'),
        path.join(root, 'tools', 'onnx_export.py'),
      ]),
      () => runPython(['tools/onnx_export.py', '--model', modelDir, '--out', onnxDir]),
    );
  }
  ensure('the test images', imageDir, digest([path.join(__dirname, 'make_images.py')]), () =>
    runPython(['bench/make_images.py', '--out', imageDir, '--count', '32']),
  );
  const files = fs
    .readdirSync(imageDir)
    .filter((f) => imageKinds.test(f))
    .sort()
    .map((f) => path.join(imageDir, f));
  fs.mkdirSync(cacheDir, { recursive: true });
  const pixelFile = path.join(cacheDir, 'pixels-32.f32');
  const pixels = randomPixels(32);
  fs.writeFileSync(pixelFile, Buffer.from(pixels.buffer));
  return { files, pixels, pixelFile };
}

// --- implementations ------------------------------------------------------------------------------
// Each has an id, a dtype and `prepare(case)` -> an async function running one call of the case
// (or `measure(case, options)` when it times itself, as the Python worker does).

class ClipNative {
  /** `stock`: the archive as loaded, without the oneDNN graph of Model::Load (model-only cases). */
  constructor(dtype, inputs, { stock = false } = {}) {
    this.dtype = dtype;
    this.id = `clip-native ${SHORT[dtype]}${stock ? ' stock graph' : ''}`;
    this.inputs = inputs;
    this.stock = stock;
  }
  async load() {
    const saved = process.env.CLIP_NATIVE_CPU_GRAPH;
    if (this.stock) process.env.CLIP_NATIVE_CPU_GRAPH = '0';
    try {
      // Batches as large as the largest case, so that a case's batch runs as one forward.
      const batchLimits =
        device === 'cpu' && maxBatch <= 32
          ? {}
          : { maxBatchImages: maxBatch, maxBatchTexts: maxBatch, maxBatchTokens: maxBatch * 77 };
      this.model = await ClipModel.load(modelDir, { device, dtype: this.dtype, threads, prepThreads, ...batchLimits });
      this.kernels = this.model.info.cpuKernels ?? undefined;
    } finally {
      if (saved === undefined) delete process.env.CLIP_NATIVE_CPU_GRAPH;
      else process.env.CLIP_NATIVE_CPU_GRAPH = saved;
    }
  }
  supports(c) {
    return !this.stock || c.mode === 'model';
  }
  prepare(c) {
    const { pixels, bytes, ids, texts } = this.inputs;
    const m = this.model;
    if (c.encoder === 'image' && c.mode === 'model') {
      const items = Array.from({ length: c.batch }, (_, i) =>
        pixels.subarray((i % 32) * PIXELS, ((i % 32) + 1) * PIXELS),
      );
      return () => m._submit(TaskKind.ImagePixels, items);
    }
    if (c.encoder === 'image') {
      const items = cycle(bytes, c.batch);
      return () => m.embedImages(items);
    }
    if (c.mode === 'model') {
      const items = cycle(ids[c.text], c.batch);
      return () => m._submit(TaskKind.TokenIds, items);
    }
    const items = cycle(texts[c.text], c.batch);
    return () => m.embedTexts(items);
  }
  async dispose() {
    await this.model?.dispose();
  }
}

class TransformersJs {
  /** `modelOnly`: only the model-only cases, the baseline that every ratio of --quick divides by. */
  constructor(inputs, { modelOnly = false } = {}) {
    this.dtype = 'float32';
    this.id = 'onnxruntime-node fp32';
    this.inputs = inputs;
    this.modelOnly = modelOnly;
  }
  supports(c) {
    return !this.modelOnly || c.mode === 'model';
  }
  async load() {
    const t = await import('@huggingface/transformers');
    this.t = t;
    t.env.allowRemoteModels = false;
    t.env.localModelPath = path.dirname(onnxDir) + path.sep;
    const id = path.basename(onnxDir);
    const options = {
      device: 'cpu',
      dtype: 'fp32',
      session_options: { intraOpNumThreads: threads, interOpNumThreads: 1 },
    };
    this.tokenizer = await t.AutoTokenizer.from_pretrained(id);
    this.processor = await t.AutoProcessor.from_pretrained(id);
    this.vision = await t.CLIPVisionModelWithProjection.from_pretrained(id, options);
    this.text = await t.CLIPTextModelWithProjection.from_pretrained(id, options);
  }
  prepare(c) {
    const { Tensor, RawImage } = this.t;
    const { pixels, bytes, ids, texts } = this.inputs;
    if (c.encoder === 'image' && c.mode === 'model') {
      const data = new Float32Array(c.batch * PIXELS);
      for (let i = 0; i < c.batch; i++)
        data.set(pixels.subarray((i % 32) * PIXELS, ((i % 32) + 1) * PIXELS), i * PIXELS);
      const pixel_values = new Tensor('float32', data, [c.batch, 3, 224, 224]);
      return async () => (await this.vision({ pixel_values })).image_embeds;
    }
    if (c.encoder === 'image') {
      const items = bytes.slice(0, c.batch);
      return async () => {
        const images = await Promise.all(items.map((b) => RawImage.fromBlob(new Blob([b]))));
        const { pixel_values } = await this.processor(images);
        return (await this.vision({ pixel_values })).image_embeds;
      };
    }
    if (c.mode === 'model') {
      const rows = ids[c.text].slice(0, c.batch);
      const length = Math.max(...rows.map((r) => r.length));
      const data = new BigInt64Array(c.batch * length).fill(49407n);
      rows.forEach((r, i) => r.forEach((id, j) => (data[i * length + j] = BigInt(id))));
      const input_ids = new Tensor('int64', data, [c.batch, length]);
      return async () => (await this.text({ input_ids })).text_embeds;
    }
    const items = texts[c.text].slice(0, c.batch);
    return async () => {
      const inputs = this.tokenizer(items, { padding: true, truncation: true });
      return (await this.text(inputs)).text_embeds;
    };
  }
  async dispose() {
    await this.vision?.dispose();
    await this.text?.dispose();
  }
}

/** The PyTorch worker process (bench/torch_worker.py): one JSON request per line, one answer per line. */
class PyTorchWorker {
  constructor() {
    this.child = spawn(python, [path.join(__dirname, 'torch_worker.py')], {
      cwd: root,
      stdio: ['pipe', 'pipe', 'inherit'],
      // libgomp's default spin-waiting made this process about 10x slower than with passive waiting
      // on the shared 2-CPU machine of RESULTS.md (clip-native in Node.js was not affected);
      // CLIP_BENCH_PY_OMP_WAIT_POLICY=ACTIVE (or an OMP_WAIT_POLICY in the environment) overrides.
      env: {
        ...process.env,
        TOKENIZERS_PARALLELISM: 'false',
        OMP_WAIT_POLICY: process.env.OMP_WAIT_POLICY ?? process.env.CLIP_BENCH_PY_OMP_WAIT_POLICY ?? 'PASSIVE',
      },
    });
    this.pending = [];
    readline.createInterface({ input: this.child.stdout }).on('line', (line) => {
      const next = this.pending.shift();
      if (!next) return;
      const reply = JSON.parse(line);
      if (reply.error) next.reject(new Error(`torch_worker: ${reply.error}`));
      else next.resolve(reply);
    });
    this.child.on('exit', (code) => {
      for (const p of this.pending.splice(0)) p.reject(new Error(`torch_worker exited (${code})`));
    });
  }
  request(message) {
    return new Promise((resolve, reject) => {
      this.pending.push({ resolve, reject });
      this.child.stdin.write(JSON.stringify(message) + '\n');
    });
  }
  get pid() {
    return this.child.pid;
  }
  async close() {
    if (this.child.exitCode !== null) return;
    const exited = new Promise((resolve) => this.child.once('exit', resolve));
    this.child.stdin.end(JSON.stringify({ op: 'quit' }) + '\n');
    await exited;
  }
}

class PyTorch {
  constructor(dtype, worker, inputs) {
    this.dtype = dtype;
    this.id = `PyTorch ${device === 'cpu' ? '' : 'eager '}${SHORT[dtype]}`;
    this.worker = worker;
    this.inputs = inputs;
  }
  async load() {
    if (!this.worker.loaded) {
      this.worker.loaded = this.worker.request({ op: 'load', model: modelDir, hf: onnxDir, threads, device });
    }
    this.info = await this.worker.loaded;
  }
  request(c, op, extra = {}) {
    const { pixelFile, files, ids, texts } = this.inputs;
    let input;
    if (c.encoder === 'image') input = c.mode === 'model' ? { pixels: pixelFile, count: 32 } : { files };
    else input = c.mode === 'model' ? { ids: ids[c.text].map((r) => Array.from(r)) } : { texts: texts[c.text] };
    return this.worker.request({
      op,
      encoder: c.encoder,
      mode: c.mode,
      dtype: this.dtype,
      batch: c.batch,
      input,
      ...extra,
    });
  }
  async measure(c, { once = false } = {}) {
    const minCalls = once ? 1 : Math.ceil(MIN_ITEMS / c.batch);
    return (await this.request(c, 'bench', { minSeconds: once ? 0 : minSeconds, minCalls, warmup: false })).times;
  }
  async embed(c) {
    return (await this.request(c, 'embed')).embeddings.map((e) => Float32Array.from(e));
  }
  supports(c) {
    return torchModes.has(c.mode);
  }
  async dispose() {}
}

// --- measuring ------------------------------------------------------------------------------------

async function timeCalls(run, batch) {
  const times = [];
  const start = now();
  while (times.length * batch < MIN_ITEMS || now() - start < minSeconds) {
    const t0 = now();
    await run();
    times.push(now() - t0);
  }
  return times;
}

function cases() {
  const out = [];
  for (const mode of ['model', 'e2e']) {
    for (const batch of BATCHES) out.push({ id: `image/${mode}/b${batch}`, encoder: 'image', mode, batch });
  }
  for (const text of TEXT_KINDS) {
    for (const mode of ['model', 'e2e']) {
      for (const batch of BATCHES)
        out.push({ id: `text-${text}/${mode}/b${batch}`, encoder: 'text', text, mode, batch });
    }
  }
  return out.filter((c) => !caseFilter || caseFilter.test(c.id));
}

const minCosine = (xs, ys) => Math.min(...xs.map((x, i) => cosine(x, ys[i])));

async function embeddingsOf(impl, c) {
  if (impl.embed) return impl.embed(c);
  const out = await impl.prepare(c)();
  if (Array.isArray(out)) return out;
  const [n, d] = out.dims;
  return Array.from({ length: n }, (_, i) => out.data.subarray(i * d, (i + 1) * d));
}

/** Agreement of every implementation with clip-native fp32, on the same inputs. */
async function parity(impls) {
  const reference = impls.find((i) => i.id === 'clip-native fp32');
  if (!reference) return [];
  const checks = [
    { id: 'image/model/b4', encoder: 'image', mode: 'model', batch: 4 },
    { id: 'image/e2e/b4', encoder: 'image', mode: 'e2e', batch: 4 },
    { id: 'text-caption/model/b8', encoder: 'text', text: 'caption', mode: 'model', batch: 8 },
    { id: 'text-caption/e2e/b8', encoder: 'text', text: 'caption', mode: 'e2e', batch: 8 },
    { id: 'text-long77/model/b8', encoder: 'text', text: 'long77', mode: 'model', batch: 8 },
  ].filter((c) => !quick || (c.mode === 'model' && c.text !== 'long77'));
  const out = [];
  for (const c of checks) {
    const ref = await embeddingsOf(reference, c);
    for (const impl of impls) {
      if (impl === reference || (impl.supports && !impl.supports(c))) continue;
      out.push({ case: c.id, impl: impl.id, minCosine: minCosine(ref, await embeddingsOf(impl, c)) });
    }
  }
  return out;
}

async function main() {
  const started = Date.now();
  const { files, pixels, pixelFile } = prepare();
  const bytes = files.map((f) => fs.readFileSync(f));
  const texts = makeTexts();
  const inputs = { pixels, pixelFile, files, bytes, texts, ids: {} };

  const torch = torchDtypes.length > 0 && (!only || [...only].some((id) => id.startsWith('PyTorch')));
  const worker = torch ? new PyTorchWorker() : undefined;
  const all = [
    ...nativeDtypes.map((dtype) => new ClipNative(dtype, inputs)),
    ...(stock && device === 'cpu' ? [new ClipNative('float32', inputs, { stock: true })] : []),
    ...(device === 'cpu' ? [new TransformersJs(inputs, { modelOnly: quick })] : []),
    ...(worker ? torchDtypes.map((dtype) => new PyTorch(dtype, worker, inputs)) : []),
  ];
  const chosen = all.filter((i) => !only || only.has(i.id));
  // A reduced precision this build or CPU cannot run (the addon refuses it at load) is reported, not fatal.
  const unavailable = {};
  const impls = [];
  const loadSeconds = {};
  for (const impl of chosen) {
    const t0 = Date.now();
    try {
      await impl.load();
    } catch (error) {
      // A peer that cannot load leaves the others' figures standing; clip-native float32 failing fails the run.
      if (impl instanceof ClipNative && impl.dtype === 'float32') throw error;
      if (impl instanceof ClipNative) unavailable[impl.id] = `${error.code ?? error.name}: ${error.message}`;
      log(`left out ${impl.id}: ${error.message}`);
      continue;
    }
    impls.push(impl);
    loadSeconds[impl.id] = (Date.now() - t0) / 1000;
    log(
      `loaded ${impl.id} in ${loadSeconds[impl.id].toFixed(1)} s` +
        (impl.kernels
          ? `; kernels image ${impl.kernels.image}, text ${impl.kernels.text} (${impl.kernels.selectedBy})`
          : ''),
    );
  }
  // Token ids for the tensors-in cases come from clip-native's tokenizer, bos..eos without padding.
  const tokenizer = await ClipModel.load(path.join(root, 'test', 'fixtures', 'tiny'), { device: 'cpu' }).catch(
    () => undefined,
  );
  const tokenizerModel = tokenizer ?? impls.find((i) => i instanceof ClipNative)?.model;
  for (const [kind, list] of Object.entries(texts)) {
    const padded = await tokenizerModel.tokenize(list);
    inputs.ids[kind] = padded.map((row) => row.subarray(0, row.indexOf(49407) + 1));
  }
  await tokenizer?.dispose();

  log('parity check');
  const agreement = await parity(impls);
  const fp32 = impls.find((i) => i.id === 'clip-native fp32');
  const reduced = impls.filter((i) => ['clip-native bf16', 'clip-native int8', 'clip-native fp16'].includes(i.id));
  if (fp32 && !quick) {
    for (const c of [
      { id: 'image/model/b16', encoder: 'image', mode: 'model', batch: 16 },
      { id: 'text-long77/model/b16', encoder: 'text', text: 'long77', mode: 'model', batch: 16 },
    ]) {
      const ref = await embeddingsOf(fp32, c);
      for (const impl of reduced)
        agreement.push({ case: c.id, impl: impl.id, minCosine: minCosine(ref, await embeddingsOf(impl, c)) });
    }
  }
  for (const a of agreement) log(`  ${a.case} ${a.impl}: min cosine vs clip-native fp32 ${a.minCosine.toFixed(6)}`);

  const meter = loadMeter(() => (worker ? [process.pid, worker.pid] : [process.pid]));
  const list = cases();
  // One untimed call per implementation and kind of input (batch 8) before the rounds: the first calls
  // pay for TorchScript's profiling runs, oneDNN primitive creation and ORT's allocation planning.
  log('warm-up');
  for (const c of list.filter((x) => warmAll || x.batch === 8)) {
    for (const impl of impls) {
      if (impl.supports && !impl.supports(c)) continue;
      if (impl.measure) await impl.measure(c, { once: true });
      else await impl.prepare(c)();
    }
  }
  const samples = {}; // caseId -> implId -> [{ itemsPerSecond, times }]
  const loads = [];
  for (let round = 0; round < rounds; round++) {
    // --quick keeps to its time budget on a slow or busy machine: no round starts that would end past it,
    // once the 3 rounds a median needs are done.
    const elapsed = (Date.now() - started) / 1000;
    if (quick && round >= 3 && elapsed + loads.at(-1).seconds > QUICK_BUDGET_SECONDS) {
      log(`stopping after ${round} rounds: the next would end past ${QUICK_BUDGET_SECONDS} s`);
      break;
    }
    meter.start();
    for (const c of list) {
      for (let k = 0; k < impls.length; k++) {
        const impl = impls[(k + round) % impls.length];
        if (impl.supports && !impl.supports(c)) continue;
        await sleep(100); // lets the previous implementation's spinning worker threads go idle
        const times = impl.measure ? await impl.measure(c) : await timeCalls(impl.prepare(c), c.batch);
        const total = times.reduce((a, b) => a + b, 0);
        ((samples[c.id] ??= {})[impl.id] ??= []).push({ itemsPerSecond: (c.batch * times.length) / total, times });
      }
    }
    loads.push(meter.stop());
    log(
      `round ${round + 1}/${rounds} done; other processes used ${loads.at(-1).foreignCpus.toFixed(2)} CPUs, ` +
        `load average ${loads
          .at(-1)
          .loadAverage.map((l) => l.toFixed(2))
          .join(' ')}`,
    );
  }

  const results = list
    .filter((c) => samples[c.id])
    .map((c) => ({
      case: c.id,
      encoder: c.encoder,
      input: c.encoder === 'image' ? 'pixels' : c.text,
      mode: c.mode,
      batch: c.batch,
      impls: Object.fromEntries(
        impls
          .filter((impl) => samples[c.id][impl.id])
          .map((impl) => {
            const s = samples[c.id][impl.id];
            const times = s.flatMap((x) => x.times);
            return [
              impl.id,
              {
                itemsPerSecond: median(s.map((x) => x.itemsPerSecond)),
                rounds: s.map((x) => x.itemsPerSecond),
                latencyMs: { p50: median(times) * 1e3, p90: quantile(times, 0.9) * 1e3 },
                calls: times.length,
              },
            ];
          }),
      ),
    }));

  for (const impl of impls) await impl.dispose();
  await worker?.close();

  let serve;
  if (serveSeconds > 0) {
    log('serve under autocannon');
    // Loaded here: autocannon is not installed where only the model benchmark runs (a GPU machine).
    const { runServe } = require('./serve');
    serve = await runServe({
      modelDir,
      imageBytes: bytes[0],
      caption: texts.caption[0],
      seconds: serveSeconds,
      threads,
    });
  }

  const result = {
    date: new Date().toISOString(),
    quick,
    machine: await machine({
      onnxruntimeNode: packageVersion('onnxruntime-node'),
      transformersJs: packageVersion('@huggingface/transformers'),
      libtorch: binding().torchVersion,
      parallelThreads: binding().parallelThreads(),
      pytorch: impls.find((i) => i instanceof PyTorch)?.info?.torch,
      cpuIsa: binding().cpuIsa,
    }),
    settings: {
      device,
      prepThreads,
      batches: BATCHES,
      rounds: loads.length,
      minSecondsPerMeasurement: minSeconds,
      threads,
      pythonOmpWaitPolicy: process.env.OMP_WAIT_POLICY ?? process.env.CLIP_BENCH_PY_OMP_WAIT_POLICY ?? 'PASSIVE',
      model: path.relative(root, modelDir),
      onnx: path.relative(root, onnxDir),
      images: files.map((f) => path.basename(f)),
    },
    load: loads,
    loadSeconds,
    kernels: Object.fromEntries(impls.filter((i) => i.kernels).map((i) => [i.id, i.kernels])),
    unavailable,
    parity: agreement,
    results,
    serve,
    durationSeconds: (Date.now() - started) / 1000,
  };
  const resultsDir = path.join(outDir, 'results');
  fs.mkdirSync(resultsDir, { recursive: true });
  const slug = cpuSlug(cpuName(), cpuFlags(), maxCpuIsa());
  if (quick) {
    fs.writeFileSync(path.join(resultsDir, `${slug}-quick.json`), JSON.stringify(result, null, 2) + '\n');
    console.log(report.quickMarkdown(result));
    log(
      `wrote ${path.relative(root, path.join(resultsDir, `${slug}-quick.json`))}; done in ${result.durationSeconds.toFixed(0)} s`,
    );
    return;
  }
  fs.writeFileSync(path.join(resultsDir, `${slug}.json`), JSON.stringify(result, null, 2) + '\n');
  const markdown = report.markdown(result);
  fs.writeFileSync(path.join(resultsDir, `${slug}.md`), markdown);
  fs.writeFileSync(path.join(outDir, 'RESULTS.md'), report.indexMarkdown(resultsDir));
  console.log(markdown);
  log(
    `wrote ${path.relative(root, path.join(resultsDir, slug))}.md/.json and the index RESULTS.md; ` +
      `done in ${result.durationSeconds.toFixed(0)} s`,
  );
}

main().catch((error) => {
  console.error(error);
  process.exit(1);
});

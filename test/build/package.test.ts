// The package as users get it: `npm pack` with a prebuild, installed into an
// empty folder where no compiler is on PATH, loads its prebuild and embeds;
// without a fitting libtorch the loader fails with one error that says what
// it looked for and how to fix it. Also the container and Kubernetes files.
//
// The prebuild is made from the local build (build/Release) into a staging
// copy of the packed package, so the repository's prebuilds/ never changes.
import { spawnSync, type SpawnSyncReturns } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { parseAllDocuments } from 'yaml';
import { describeLibtorch, listPrebuilds, prebuildName } from '../../lib/native/locate';
import { ClipModel } from '../../lib/index';
import { maxAbsDiff, root, tempDir, tinyModel } from '../helpers/env';
import { makePng } from '../helpers/images';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const { readDynamic } = require('../../scripts/prebuild.js') as {
  readDynamic: (bytes: Buffer) => { needed: string[]; runpath: string[] };
};

const localBuild = path.join(root, 'build', 'Release', 'clip_native.node');
const platformTuple = `${process.platform}-${process.arch}`;

function run(command: string, args: string[], options: { cwd: string; env?: NodeJS.ProcessEnv }): SpawnSyncReturns<string> {
  return spawnSync(command, args, {
    cwd: options.cwd,
    env: options.env ?? process.env,
    encoding: 'utf8',
    maxBuffer: 64 << 20,
    timeout: 300_000,
  });
}

function check(t: Test, result: SpawnSyncReturns<string>, what: string): boolean {
  const ok = result.status === 0;
  t.ok(ok, what, ok ? {} : { status: result.status, error: result.error?.message, stderr: result.stderr.slice(-4000), stdout: result.stdout.slice(-4000) });
  return ok;
}

/** npm's own script, found the way npm itself was started. */
function npmCli(): string {
  const candidates = [process.env.npm_execpath ?? ''];
  for (const dir of (process.env.PATH ?? '').split(path.delimiter)) candidates.push(path.join(dir, 'npm'));
  candidates.push(path.join(path.dirname(process.execPath), '..', 'lib', 'node_modules', 'npm', 'bin', 'npm-cli.js'));
  for (const candidate of candidates) {
    if (!candidate || !fs.existsSync(candidate)) continue;
    const real = fs.realpathSync(candidate);
    if (/npm-cli\.js$/.test(real)) return real;
  }
  throw new Error('npm-cli.js not found');
}

/** A bin folder with node, npm and sh only: what a host without a compiler toolchain has. */
function bareBin(dir: string): string {
  const bin = path.join(dir, 'bin');
  fs.mkdirSync(bin);
  fs.symlinkSync(process.execPath, path.join(bin, 'node'));
  fs.symlinkSync(npmCli(), path.join(bin, 'npm'));
  fs.symlinkSync('/bin/sh', path.join(bin, 'sh'));
  return bin;
}

/** The environment of the installed package's processes: nothing of this shell's but HOME (the npm cache). */
function bareEnv(bin: string, extra: NodeJS.ProcessEnv = {}): NodeJS.ProcessEnv {
  return { PATH: bin, HOME: process.env.HOME, LANG: 'C.UTF-8', ...extra };
}

// node -e SCRIPT MODEL IMAGE (argv[1], argv[2]). Prints one JSON line: the embeddings, which addon the loader chose, and the libtorch files mapped.
const embedScript = `
const fs = require('node:fs');
const path = require('node:path');
const { ClipModel } = require('clip-native');
const loader = require(path.join(path.dirname(require.resolve('clip-native/package.json')), 'dist', 'native', 'binding.js'));
(async () => {
  const model = await ClipModel.load(process.argv[1], { device: 'cpu' });
  const [text] = await model.embedTexts(['a photo of a cat']);
  const [image] = await model.embedImages([fs.readFileSync(process.argv[2])]);
  await model.dispose();
  const mapped = [...new Set(fs.readFileSync('/proc/self/maps', 'utf8').split('\\n')
    .map((line) => line.split(/\\s+/).slice(5).join(' ')).filter((f) => /libtorch|libc10|\\.node$/.test(f)))];
  console.log(JSON.stringify({ text: Array.from(text), image: Array.from(image), addon: loader.loadedAddon(), mapped }));
})().catch((error) => { console.error(error.stack); process.exit(1); });
`;

// node -e SCRIPT MODEL. Prints the rejection of ClipModel.load as JSON.
const failScript = `
const { ClipModel } = require('clip-native');
ClipModel.load(process.argv[1]).then(
  () => { console.log(JSON.stringify({ loaded: true })); process.exit(1); },
  (error) => console.log(JSON.stringify({ name: error.name, code: error.code, message: error.message })),
);
`;

t.test('the packed package installs without a compiler and loads its prebuild', { skip: process.platform !== 'linux' && 'prebuilds are made on Linux' }, async (t) => {
  const ready = [
    t.ok(fs.existsSync(localBuild), `the local build exists (${localBuild}); npm run build makes it`),
    t.ok(fs.existsSync(path.join(root, 'dist', 'native', 'binding.js')), 'dist/ is built (npm run build:ts)'),
    t.ok(fs.existsSync(path.join(tinyModel, 'clip.json')), 'the tiny model exists (node scripts/fixtures.js)'),
  ];
  if (ready.includes(false)) return;

  const stage = tempDir('package');
  t.teardown(() => fs.rmSync(stage, { recursive: true, force: true }));
  const bin = bareBin(stage);
  const npm = path.join(bin, 'npm');

  const noCompiler = run('/bin/sh', ['-c', 'for c in cc gcc g++ c++ clang cmake make ninja; do command -v $c && exit 1; done; exit 0'], {
    cwd: stage,
    env: { PATH: bin },
  });
  t.equal(noCompiler.status, 0, `no compiler or build tool on the bare PATH (${noCompiler.stdout.trim() || 'none'})`);

  // 1. The package as the repository packs it ("files" in package.json), then the prebuild added.
  const packed = run(process.execPath, [npmCli(), 'pack', '--ignore-scripts', '--json', '--pack-destination', stage], { cwd: root });
  if (!check(t, packed, 'npm pack of the repository')) return;
  const unpacked = path.join(stage, 'unpacked');
  fs.mkdirSync(unpacked);
  const firstTarball = path.join(stage, (JSON.parse(packed.stdout) as { filename: string }[])[0].filename);
  if (!check(t, run('tar', ['-xzf', firstTarball, '-C', unpacked], { cwd: stage }), 'the tarball unpacks')) return;
  const packageDir = path.join(unpacked, 'package');
  fs.rmSync(firstTarball);

  const prebuilt = run(process.execPath, [path.join(root, 'scripts', 'prebuild.js'), '--from', localBuild,
    '--out', path.join(packageDir, 'prebuilds')], { cwd: root });
  if (!check(t, prebuilt, 'scripts/prebuild.js tags the local build')) return;
  const prebuilds = listPrebuilds(path.join(packageDir, 'prebuilds', platformTuple));
  t.equal(prebuilds.length, 1, 'one prebuild');
  const [prebuild] = prebuilds;
  t.equal(path.basename(prebuild.file), prebuildName(prebuild.torchVersion, prebuild.variant), 'named by its libtorch');
  const sidecar = JSON.parse(fs.readFileSync(prebuild.file.replace(/\.node$/, '.json'), 'utf8'));
  const builtAgainst = describeLibtorch(sidecar.builtAgainst);
  t.match(builtAgainst, { version: prebuild.torchVersion, variant: prebuild.variant }, 'the tag is the libtorch the addon links');
  t.ok(sidecar.preload.length >= 2 && sidecar.preload.every((name: string) => sidecar.needed.includes(name)),
    'the sidecar lists the libtorch libraries the addon links');
  const prebuildBytes = fs.readFileSync(prebuild.file);
  t.same(readDynamic(prebuildBytes).runpath, [], 'the prebuild has an empty RUNPATH');
  t.same(readDynamic(fs.readFileSync(localBuild)).needed, sidecar.needed, 'and links what the local build links');
  t.notOk(prebuildBytes.includes(Buffer.from(sidecar.builtAgainst.slice(1))), 'and no trace of the RUNPATH string');

  const repacked = run(process.execPath, [npmCli(), 'pack', '--ignore-scripts', '--json', '--pack-destination', stage], { cwd: packageDir });
  if (!check(t, repacked, 'npm pack with the prebuild')) return;
  const [manifest] = JSON.parse(repacked.stdout) as { filename: string; files: { path: string }[] }[];
  const files = manifest.files.map((f) => f.path);
  const tarball = path.join(stage, manifest.filename);
  for (const wanted of ['dist/index.js', 'dist/index.d.ts', 'esm/index.mjs', 'bin/clip-native.js', 'scripts/install.js',
    'CMakeLists.txt', 'cmake/clip_codecs.cmake', 'native/core/model.cc', `prebuilds/${platformTuple}/${path.basename(prebuild.file)}`,
    `prebuilds/${platformTuple}/${path.basename(prebuild.file).replace(/\.node$/, '.json')}`]) {
    t.ok(files.includes(wanted), `the tarball has ${wanted}`);
  }
  t.notOk(files.some((f) => /^(build|test|bench|\.venv|node_modules|native\/test|native\/fuzz)\//.test(f) || f.endsWith('.map')),
    'the tarball has no build folder, tests, benchmarks, fuzzers, source maps or virtualenv');

  // 2. npm install of the tarball into an empty folder, with only node, npm and sh on PATH.
  const app = path.join(stage, 'app');
  fs.mkdirSync(app);
  fs.writeFileSync(path.join(app, 'package.json'), JSON.stringify({ name: 'app', version: '1.0.0', private: true }));
  const libtorchEnv: NodeJS.ProcessEnv = process.env.CLIP_PYTHON
    ? { CLIP_PYTHON: process.env.CLIP_PYTHON }
    : { VIRTUAL_ENV: path.join(root, '.venv') };
  const installed = run(npm, ['install', '--prefer-offline', '--no-audit', '--no-fund', '--foreground-scripts', tarball], {
    cwd: app,
    env: bareEnv(bin, libtorchEnv),
  });
  if (!check(t, installed, 'npm install of the tarball without a compiler')) return;
  t.match(installed.stdout, /clip-native: no build needed: prebuilds\/linux-x64\/clip-native\.torch-/, 'the install script found the prebuild fitting');
  const installedDir = path.join(app, 'node_modules', 'clip-native');
  t.notOk(fs.existsSync(path.join(installedDir, 'build')), 'nothing was built');

  // 3. It loads the prebuild with the libtorch it was built against and embeds like the local build.
  const imageFile = path.join(stage, 'image.png');
  fs.writeFileSync(imageFile, makePng(61, 47, (x: number, y: number) => [x * 4, y * 5, (x * y) & 255]));
  const embedded = run(process.execPath, ['-e', embedScript, tinyModel, imageFile], { cwd: app, env: bareEnv(bin, libtorchEnv) });
  if (!check(t, embedded, 'the installed package embeds with the tiny model')) return;
  const result = JSON.parse(embedded.stdout.trim().split('\n').pop()!) as {
    text: number[]; image: number[]; mapped: string[];
    addon: { kind: string; file: string; libtorch: { libDir: string; version: string; variant: string } };
  };
  t.equal(result.addon.kind, 'prebuild', 'the loader chose the prebuild');
  t.equal(result.addon.file, path.join(installedDir, 'prebuilds', platformTuple, path.basename(prebuild.file)));
  t.equal(fs.realpathSync(result.addon.libtorch.libDir), fs.realpathSync(sidecar.builtAgainst), 'with the libtorch it was built against');
  const libtorchFiles = result.mapped.filter((f) => /libtorch|libc10/.test(f));
  t.ok(libtorchFiles.length >= 2, 'libtorch is loaded');
  t.ok(libtorchFiles.every((f) => f.startsWith(fs.realpathSync(sidecar.builtAgainst))), 'and no other libtorch', { libtorchFiles });

  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());
  const [text] = await model.embedTexts(['a photo of a cat']);
  const [image] = await model.embedImages([fs.readFileSync(imageFile)]);
  t.equal(result.text.length, text.length, 'text embedding size');
  t.ok(maxAbsDiff(result.text, text) < 1e-5, 'the text embedding equals the local build\'s');
  t.ok(maxAbsDiff(result.image, image) < 1e-5, 'the image embedding equals the local build\'s');

  const esm = run(process.execPath, ['--input-type=module', '-e',
    "import { ClipModel, ClipError, ERROR_CODES } from 'clip-native'; console.log(typeof ClipModel.load, typeof ClipError, ERROR_CODES.length > 0)"],
  { cwd: app, env: bareEnv(bin) });
  check(t, esm, 'import from ESM works');
  t.equal(esm.stdout.trim(), 'function function true');
  t.ok(fs.existsSync(path.join(installedDir, 'dist', 'index.d.ts')), 'types ship with it');

  // 4. Without a fitting libtorch: one error that lists what was looked for and how to fix it.
  const hidden = run(process.execPath, ['-e', failScript, tinyModel], {
    cwd: app,
    env: bareEnv(bin, { CLIP_LIBTORCH: '/nonexistent/libtorch' }),
  });
  check(t, hidden, 'the failing load runs');
  const failure = JSON.parse(hidden.stdout.trim().split('\n').pop() || '{}') as { name?: string; code?: string; message?: string };
  const message = failure.message ?? '';
  t.equal(failure.name, 'ClipError', 'ClipModel.load rejects with a ClipError');
  t.match(message, /^clip-native: no native addon could be loaded for linux-x64\./, 'one error');
  const lines = [
    `prebuilds in ${path.join(installedDir, 'prebuilds', platformTuple)}: ${path.basename(prebuild.file)} (libtorch ${prebuild.torchVersion} ${prebuild.variant})`,
    'libtorch from CLIP_LIBTORCH=/nonexistent/libtorch: /nonexistent/libtorch: not found',
    `local build ${path.join(installedDir, 'build', 'Release', 'clip_native.node')}: not built`,
    `make libtorch ${prebuild.torchVersion} (${prebuild.variant}) available`,
    'CLIP_PYTHON=', 'LIBTORCH=/path/to/libtorch', 'CLIP_LIBTORCH=system', '`npm rebuild clip-native`', '`npm run setup`',
    'CLIP_LIBTORCH=venv|system|<dir>',
  ];
  for (const line of lines) t.ok(message.includes(line), `the message has: ${line}`, { message });

  const venvOnly = run(process.execPath, ['-e', failScript, tinyModel], {
    cwd: app,
    env: bareEnv(bin, { CLIP_LIBTORCH: 'venv' }),
  });
  const venvMessage = (JSON.parse(venvOnly.stdout.trim().split('\n').pop() || '{}') as { message?: string }).message ?? '';
  for (const line of [`libtorch from a project .venv: ${installedDir} and the folders above it: no .venv folder`,
    'libtorch from python3 on PATH: python3: not found']) {
    t.ok(venvMessage.includes(line), `with CLIP_LIBTORCH=venv and no python3 it says: ${line}`, { venvMessage });
  }
  t.notOk(venvMessage.includes('from the system'), 'and does not look at the system libtorch');
});

const venvTorch = fs.existsSync(path.join(root, '.venv', 'lib'))
  ? fs.readdirSync(path.join(root, '.venv', 'lib')).map((p) => path.join(root, '.venv', 'lib', p, 'site-packages', 'torch'))
    .find((dir) => fs.existsSync(path.join(dir, 'version.py')))
  : undefined;

t.test('describeLibtorch reads the version and variant', { skip: !venvTorch && 'no torch in .venv' }, async (t) => {
  if (!venvTorch) return;
  const versionPy = fs.readFileSync(path.join(venvTorch, 'version.py'), 'utf8');
  const version = /__version__\s*=\s*'(\d+\.\d+\.\d+)/.exec(versionPy)![1];
  const cuda = /^cuda\s*(?::[^=]*)?=\s*'([\d.]+)'/m.exec(versionPy)?.[1];
  t.same(describeLibtorch(path.join(venvTorch, 'lib')), {
    libDir: path.join(venvTorch, 'lib'),
    version,
    variant: cuda ? `cu${cuda.split('.').slice(0, 2).join('')}` : 'cpu',
  });
  t.same(describeLibtorch('/nonexistent'), { problem: 'not found' });
  t.match(describeLibtorch(root), { problem: /no libtorch_cpu/ });
});

// ---------------------------------------------------------------------------
// Container and Kubernetes files: static checks (no Docker engine or cluster in CI).
// ---------------------------------------------------------------------------

type Manifest = Record<string, any>;

function readManifests(file: string): Manifest[] {
  return parseAllDocuments(fs.readFileSync(path.join(root, 'deploy', file), 'utf8')).map((doc) => {
    if (doc.errors.length > 0) throw new Error(`${file}: ${doc.errors[0].message}`);
    return doc.toJS() as Manifest;
  });
}

t.test('Dockerfiles: non-root, health check on GET /, serve on 0.0.0.0', async (t) => {
  for (const name of ['Dockerfile', 'Dockerfile.cuda']) {
    const text = fs.readFileSync(path.join(root, name), 'utf8');
    const last = text.slice(text.lastIndexOf('\nFROM '));
    t.match(last, /\nUSER (?!0\b|root\b)\d+/, `${name}: the final stage runs as a non-root user`);
    t.match(last, /\nHEALTHCHECK [^\n]*\\\n\s+CMD \[.*http:\/\/127\.0\.0\.1:5001\/.*'Healthy'/, `${name}: HEALTHCHECK asks GET / for "Healthy"`);
    t.match(last, /\nCMD \["serve", "--host", "0\.0\.0\.0", "--model", "\/models\/clip"/, `${name}: serves /models/clip on 0.0.0.0`);
    t.match(text, /pip install [^\n]*"torch==\$\{TORCH_VERSION\}"/, `${name}: installs the pinned torch wheel`);
  }
  t.match(fs.readFileSync(path.join(root, 'Dockerfile.cuda'), 'utf8'), /FROM nvidia\/cuda:\$\{CUDA_VERSION\}-base-/, 'the CUDA image runs on nvidia/cuda');
});

t.test('Kubernetes manifests hang together', async (t) => {
  const [deployment] = readManifests('deployment.yaml');
  const [service] = readManifests('service.yaml');
  const [hpa] = readManifests('hpa.yaml');
  const [job] = readManifests('batch-job.yaml');
  const claims = readManifests('pvc.yaml');

  t.match(deployment, { apiVersion: 'apps/v1', kind: 'Deployment', metadata: { name: String } });
  const pod = deployment.spec.template;
  t.same(deployment.spec.selector.matchLabels, Object.fromEntries(
    Object.entries(pod.metadata.labels).filter(([k]) => k in deployment.spec.selector.matchLabels)), 'the selector matches the pod labels');
  const [container] = pod.spec.containers;
  t.same(container.args.slice(0, 1), ['serve']);
  t.ok(container.args.includes('0.0.0.0'), 'listens on all addresses');
  const port = container.ports.find((p: Manifest) => p.name === 'http');
  t.equal(Number(container.args[container.args.indexOf('--port') + 1]), port.containerPort, '--port is the container port');
  for (const probe of ['startupProbe', 'readinessProbe', 'livenessProbe']) {
    t.match(container[probe], { httpGet: { path: '/', port: 'http' } }, `${probe} on GET /`);
  }
  t.match(container.resources, { requests: { cpu: String, memory: String }, limits: { cpu: String, memory: String } });
  t.equal(container.args[container.args.indexOf('--threads') + 1], container.resources.limits.cpu, '--threads equals the CPU limit');
  t.equal(pod.spec.securityContext.runAsNonRoot, true);
  t.equal(pod.metadata.annotations['prometheus.io/path'], '/metrics');

  t.match(service, { apiVersion: 'v1', kind: 'Service' });
  for (const [key, value] of Object.entries(service.spec.selector)) t.equal(pod.metadata.labels[key], value, `service selects ${key}`);
  t.equal(service.spec.ports[0].targetPort, 'http');

  t.match(hpa, { apiVersion: 'autoscaling/v2', kind: 'HorizontalPodAutoscaler' });
  t.match(hpa.spec.scaleTargetRef, { apiVersion: 'apps/v1', kind: 'Deployment', name: deployment.metadata.name });
  const queue = hpa.spec.metrics.find((m: Manifest) => m.type === 'Pods');
  t.equal(queue.pods.metric.name, 'clip_engine_queue_depth');
  const metricsSource = fs.readFileSync(path.join(root, 'lib', 'endpoint', 'metrics.ts'), 'utf8');
  t.ok(metricsSource.includes("'clip_engine_queue_depth'"), 'the server exports the metric the HPA scales on');
  const [adapter] = readManifests('prometheus-adapter-values.yaml');
  t.match(adapter.rules.custom[0].name.as, queue.pods.metric.name, 'prometheus-adapter publishes it under that name');

  t.match(job, { apiVersion: 'batch/v1', kind: 'Job', spec: { completionMode: 'Indexed' } });
  const [worker] = job.spec.template.spec.containers;
  const shard = worker.args[worker.args.indexOf('--shard') + 1];
  t.equal(shard, `$(JOB_COMPLETION_INDEX)/${job.spec.completions}`, '--shard INDEX/N with N = completions');
  t.ok(worker.env.some((e: Manifest) => e.name === 'JOB_COMPLETION_INDEX'), 'JOB_COMPLETION_INDEX is declared for $(…) expansion');
  t.equal(job.spec.template.spec.restartPolicy, 'Never');
  t.equal(worker.name, job.spec.podFailurePolicy.rules[0].onExitCodes.containerName);

  const claimNames = claims.map((c) => c.metadata.name);
  for (const volume of [...pod.spec.volumes, ...job.spec.template.spec.volumes]) {
    if (volume.persistentVolumeClaim) t.ok(claimNames.includes(volume.persistentVolumeClaim.claimName), `claim ${volume.persistentVolumeClaim.claimName} is defined`);
  }
  const kustomization = readManifests('kustomization.yaml')[0];
  for (const resource of kustomization.resources) t.ok(fs.existsSync(path.join(root, 'deploy', resource)), `kustomization lists ${resource}`);
});

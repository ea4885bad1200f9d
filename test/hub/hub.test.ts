// Models by repo id against a fake hub on 127.0.0.1: download, cache layout, conversion, offline loads,
// pinned revisions, resume, hub errors, concurrent loads. The real hub is never contacted.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ClipModel, type ModelProgress } from '../../lib/index';
import { downloadCheckpoint, resolveModel } from '../../lib/hub/index';
import { streamProgress } from '../../lib/hub/progress';
import { parseHubReference } from '../../lib/hub/reference';
import { fakeCommit, startFakeHub, type FakeHub, type FakeRepo } from '../helpers/fake-hub';
import { fixtures, hfCheckpoint, hfModel, maxAbsDiff, root, tempDir } from '../helpers/env';

const REPO = 'fake-org/clip-tiny';
const GATED = 'fake-org/gated';
const SMALL = 'fake-org/small';
const COMMIT_A = fakeCommit('a');
const COMMIT_B = fakeCommit('b');
const quiet = () => undefined;
// One kernel for every load: `auto` times candidates at load, and two loads may pick different ones.
const SAME_KERNELS = { device: 'cpu', cpuKernels: 'aten' } as const;

/** The fixture checkpoint with the visual projection doubled: image embeddings exactly twice commit A's. */
function doubledProjection(weights: Buffer): Buffer {
  const out = Buffer.from(weights);
  const headerLength = Number(out.readBigUInt64LE(0));
  const header = JSON.parse(out.subarray(8, 8 + headerLength).toString()) as Record<string, { data_offsets: number[] }>;
  const [start, end] = header['visual_projection.weight'].data_offsets;
  const base = 8 + headerLength;
  for (let i = base + start; i < base + end; i += 4) out.writeFloatLE(out.readFloatLE(i) * 2, i);
  return out;
}

const checkpoint: Record<string, Buffer> = {};
for (const name of fs.readdirSync(hfCheckpoint).filter((n) => !n.startsWith('.'))) {
  checkpoint[name] = fs.readFileSync(path.join(hfCheckpoint, name));
}
// Files of other frameworks, as real repos have them: never downloaded.
const extras = { 'tf_model.h5': Buffer.from('not needed'), 'pytorch_model.bin': Buffer.from('not needed either') };

let hub: FakeHub;
const originalEnv = { ...process.env };

function useCaches(label: string): { hubCache: string; modelCache: string } {
  const dir = tempDir(`hub-${label}`);
  const caches = { hubCache: path.join(dir, 'hf', 'hub'), modelCache: path.join(dir, 'clip-native') };
  process.env.HF_HOME = path.join(dir, 'hf');
  delete process.env.HF_HUB_CACHE;
  process.env.CLIP_NATIVE_CACHE = caches.modelCache;
  return caches;
}

const doubled = doubledProjection(checkpoint['model.safetensors']);
// Only the download is exercised on these: small files stand in for the weights.
const small = { ...checkpoint, 'model.safetensors': Buffer.alloc(1000, 7) };

function repos(): Record<string, FakeRepo> {
  return {
    [REPO]: {
      commits: {
        [COMMIT_A]: { ...checkpoint, ...extras },
        [COMMIT_B]: { ...checkpoint, 'model.safetensors': doubled },
      },
      refs: { main: COMMIT_A, v1: COMMIT_A, doubled: COMMIT_B },
    },
    [SMALL]: { commits: { [COMMIT_A]: small }, refs: { main: COMMIT_A } },
    [GATED]: { commits: { [COMMIT_A]: small }, refs: { main: COMMIT_A }, token: 'hf_secret' },
  };
}

t.before(async () => {
  hub = await startFakeHub(repos());
  process.env.HF_ENDPOINT = hub.url;
  delete process.env.HF_TOKEN;
  delete process.env.HF_HUB_OFFLINE;
});
t.teardown(async () => {
  await hub.close();
  process.env = originalEnv;
});

const texts = ['a photo of a cat', 'a diagram'];
const image = fs.readFileSync(path.join(fixtures, 'images', 'baseline_320x240.jpg'));

async function embeddings(model: ClipModel): Promise<{ texts: Float32Array[]; image: Float32Array }> {
  const [imageEmbedding] = await model.embedImages([image]);
  // One text per call: an embedding's last bits depend on the size of the batch it ran in.
  const textEmbeddings: Float32Array[] = [];
  for (const text of texts) textEmbeddings.push(...(await model.embedTexts([text])));
  return { texts: textEmbeddings, image: imageEmbedding };
}

t.test('repo ids and directories', (t) => {
  t.same(parseHubReference('openai/clip-vit-base-patch32'), { repo: 'openai/clip-vit-base-patch32', revision: 'main' });
  t.same(parseHubReference(`org/name@${COMMIT_A}`), { repo: 'org/name', revision: COMMIT_A });
  t.same(parseHubReference('org/name@refs/pr/1'), { repo: 'org/name', revision: 'refs/pr/1' });
  for (const notId of ['./models/clip', '/abs/path', 'a/b/c', 'name', 'org/../x', '-org/name']) {
    t.equal(parseHubReference(notId), undefined, notId);
  }
  // An existing folder named like an id loads as a folder.
  const cwd = process.cwd();
  const dir = tempDir('hub-dir');
  fs.mkdirSync(path.join(dir, 'org', 'name'), { recursive: true });
  process.chdir(dir);
  try {
    t.equal(parseHubReference('org/name'), undefined);
  } finally {
    process.chdir(cwd);
  }
  t.end();
});

t.test(
  'load by id equals the same checkpoint exported from a folder; later loads need no network or Python',
  async (t) => {
    const caches = useCaches('load');
    const events: ModelProgress[] = [];
    const byId = await ClipModel.load(REPO, { ...SAME_KERNELS, onProgress: (e) => events.push(e) });
    const local = await ClipModel.load(hfModel, SAME_KERNELS);
    const a = await embeddings(byId);
    const b = await embeddings(local);
    t.equal(maxAbsDiff(a.image, b.image), 0);
    for (let i = 0; i < texts.length; i++) t.equal(maxAbsDiff(a.texts[i], b.texts[i]), 0);
    await byId.dispose();
    await local.dispose();

    // The Hugging Face cache layout, with only the files the exporter reads.
    const repoDir = path.join(caches.hubCache, 'models--fake-org--clip-tiny');
    t.equal(fs.readFileSync(path.join(repoDir, 'refs', 'main'), 'utf8'), COMMIT_A);
    const snapshot = path.join(repoDir, 'snapshots', COMMIT_A);
    t.same(fs.readdirSync(snapshot).sort(), Object.keys(checkpoint).sort());
    const weights = path.join(snapshot, 'model.safetensors');
    const sha = createHash('sha256').update(checkpoint['model.safetensors']).digest('hex');
    t.equal(fs.readlinkSync(weights), path.join('..', '..', 'blobs', sha));
    t.notOk(
      hub.requests.some((r) => /tf_model|pytorch_model/.test(r)),
      'other weights are not fetched',
    );

    // clip.json records where the model came from.
    const directory = path.join(caches.modelCache, 'models--fake-org--clip-tiny', 'snapshots', COMMIT_A);
    const manifest = JSON.parse(fs.readFileSync(path.join(directory, 'clip.json'), 'utf8')) as {
      name: string;
      source: Record<string, string>;
    };
    t.equal(manifest.name, REPO);
    t.match(manifest.source, { kind: 'huggingface', repo: REPO, revision: 'main', commit: COMMIT_A });
    t.same(
      events.filter((e) => e.phase !== 'download').map((e) => e.phase),
      ['convert', 'ready'],
    );
    t.ok(events.some((e) => e.phase === 'download' && e.bytes === e.totalBytes));
    t.same(fs.readdirSync(caches.modelCache).sort(), ['.locks', 'models--fake-org--clip-tiny']);
    t.same(fs.readdirSync(path.join(caches.modelCache, '.locks')), [], 'the lock is released');

    // Offline, and with the hub gone and no Python, the cache serves the same model.
    process.env.CLIP_PYTHON = path.join(root, 'no-such-python');
    const before = hub.requests.length;
    process.env.HF_HUB_OFFLINE = '1';
    t.equal(await resolveModel(REPO, { onProgress: quiet }), directory);
    t.equal(hub.requests.length, before, 'HF_HUB_OFFLINE=1 makes no request');
    delete process.env.HF_HUB_OFFLINE;
    // A tag that points at the same commit is the same converted model.
    t.equal(await resolveModel(`${REPO}@v1`, { onProgress: quiet }), directory);
    await hub.close();
    try {
      process.env.HF_HUB_OFFLINE = '1';
      const offline = await ClipModel.load(REPO, { ...SAME_KERNELS, onProgress: quiet });
      t.equal(maxAbsDiff((await embeddings(offline)).image, a.image), 0);
      await offline.dispose();
      delete process.env.HF_HUB_OFFLINE;
      t.equal(
        await resolveModel(REPO, { onProgress: quiet }),
        directory,
        'a hub that cannot be reached falls back to the cache',
      );
    } finally {
      delete process.env.HF_HUB_OFFLINE;
      delete process.env.CLIP_PYTHON;
      hub = await restart(hub);
    }

    // @revision pins: a branch and a commit sha give commit B's files (its doubled visual projection), while
    // main stays at A. (Converting a snapshot is the same whatever its commit, as above.)
    for (const revision of ['doubled', COMMIT_B]) {
      const pinned = await downloadCheckpoint({ repo: REPO, revision }, { onProgress: quiet });
      t.equal(pinned.commit, COMMIT_B, revision);
      t.ok(fs.readFileSync(path.join(pinned.checkpoint, 'model.safetensors')).equals(doubled), revision);
    }
    t.equal(fs.readFileSync(path.join(repoDir, 'refs', 'doubled'), 'utf8'), COMMIT_B);
    t.equal(fs.readFileSync(path.join(repoDir, 'refs', 'main'), 'utf8'), COMMIT_A);

    // Without Python, a commit that is downloaded but not converted fails with the fix, leaving nothing behind.
    process.env.CLIP_NATIVE_CACHE = path.join(caches.modelCache, '..', 'other-cache');
    process.env.CLIP_PYTHON = path.join(root, 'no-such-python');
    // What a conversion killed midway leaves is swept up by the next one.
    const killed = path.join(
      process.env.CLIP_NATIVE_CACHE,
      'models--fake-org--clip-tiny',
      'snapshots',
      `.${COMMIT_A}.convert-dead`,
    );
    fs.mkdirSync(path.join(killed, 'model'), { recursive: true });
    try {
      await t.rejects(resolveModel(REPO, { onProgress: quiet }), {
        code: 'CLIP_MODEL_LOAD_FAILED',
        message: new RegExp(`${REPO}.*revision main.*no Python found.*CLIP_PYTHON`),
      });
      t.same(fs.readdirSync(process.env.CLIP_NATIVE_CACHE), ['.locks'], 'no partial model');
      t.same(fs.readdirSync(path.join(process.env.CLIP_NATIVE_CACHE, '.locks')), [], 'the lock is released');
    } finally {
      delete process.env.CLIP_PYTHON;
    }
  },
);

t.test('a conversion by an older exporter is converted anew, or used as it is where it cannot be', async (t) => {
  const caches = useCaches('older');
  const directory = await resolveModel(REPO, { onProgress: quiet });
  const manifestPath = path.join(directory, 'clip.json');
  const marker = path.join(directory, 'older');
  const readManifest = () => JSON.parse(fs.readFileSync(manifestPath, 'utf8')) as Record<string, unknown>;
  t.equal(readManifest().exportedBy, 'clip-native-export/2');
  // What an older exporter's conversion says of itself, and a file to tell it from a new conversion.
  const age = () => {
    fs.writeFileSync(manifestPath, JSON.stringify({ ...readManifest(), exportedBy: 'clip-native-export/1' }));
    fs.writeFileSync(marker, '');
  };
  const warnings: Array<Error & { code?: string }> = [];
  const onWarning = (warning: Error) => warnings.push(warning);
  process.on('warning', onWarning);
  t.teardown(() => {
    process.off('warning', onWarning);
  });
  const nextTick = () => new Promise((resolve) => setImmediate(resolve));

  // No Python to convert with: the older conversion serves, with a warning.
  age();
  process.env.CLIP_PYTHON = path.join(root, 'no-such-python');
  try {
    t.equal(await resolveModel(REPO, { onProgress: quiet }), directory);
  } finally {
    delete process.env.CLIP_PYTHON;
  }
  await nextTick();
  t.ok(fs.existsSync(marker), 'the older conversion stays in place');
  t.same(
    warnings.map((w) => w.code),
    ['CLIP_NATIVE_OLDER_CONVERSION'],
  );
  t.match(warnings[0].message, /older exporter and is used as it is.*: no Python found/);
  t.same(fs.readdirSync(path.dirname(directory)), [COMMIT_A], 'no temporary folder left');

  // Offline, with the checkpoint in the Hugging Face cache: converted anew in its place, without a request.
  const events: ModelProgress[] = [];
  const before = hub.requests.length;
  process.env.HF_HUB_OFFLINE = '1';
  try {
    t.equal(await resolveModel(REPO, { onProgress: (e) => events.push(e) }), directory);
  } finally {
    delete process.env.HF_HUB_OFFLINE;
  }
  t.equal(hub.requests.length, before, 'no request');
  t.same(
    events.map((e) => e.phase),
    ['convert', 'ready'],
  );
  t.notOk(fs.existsSync(marker), 'the new conversion took its place');
  t.match(readManifest(), { exportedBy: 'clip-native-export/2', source: { kind: 'huggingface', commit: COMMIT_A } });
  t.same(fs.readdirSync(path.dirname(directory)), [COMMIT_A], 'no temporary folder left');
  const model = await ClipModel.load(directory, SAME_KERNELS);
  t.equal(model.info.cpuKernels!.packedTexts, true, 'texts run packed');
  await model.dispose();

  // Online, with the checkpoint gone from the Hugging Face cache: downloaded again and converted.
  age();
  fs.rmSync(caches.hubCache, { recursive: true, force: true });
  t.equal(await resolveModel(REPO, { onProgress: quiet }), directory);
  t.notOk(fs.existsSync(marker), 'converted anew');
  t.ok(fs.existsSync(path.join(caches.hubCache, 'models--fake-org--clip-tiny', 'snapshots', COMMIT_A)));

  // Offline with no checkpoint: as it is.
  age();
  fs.rmSync(caches.hubCache, { recursive: true, force: true });
  process.env.HF_HUB_OFFLINE = '1';
  try {
    t.equal(await resolveModel(REPO, { onProgress: quiet }), directory);
  } finally {
    delete process.env.HF_HUB_OFFLINE;
  }
  await nextTick();
  t.ok(fs.existsSync(marker));
  t.equal(warnings.length, 2);
  t.match(warnings[1].message, /HF_HUB_OFFLINE is set/);
  // A pinned commit goes the same way: converted anew once the hub is there.
  t.equal(await resolveModel(`${REPO}@${COMMIT_A}`, { onProgress: quiet }), directory);
  t.notOk(fs.existsSync(marker), 'a pinned commit is converted anew too');
});

async function restart(old: FakeHub): Promise<FakeHub> {
  const requests = old.requests;
  const fresh = await startFakeHub(repos());
  fresh.requests = requests;
  process.env.HF_ENDPOINT = fresh.url;
  return fresh;
}

t.test('a download cut midway resumes with a Range request and is checked', async (t) => {
  const caches = useCaches('resume');
  const size = checkpoint['model.safetensors'].length;
  hub.cut = { file: 'model.safetensors', bytes: 50_000_000 };
  await t.rejects(downloadCheckpoint({ repo: REPO, revision: 'main' }, { onProgress: quiet }), {
    code: 'CLIP_MODEL_LOAD_FAILED',
    message: /fake-org\/clip-tiny.*revision main.*network error/,
  });
  const sha = createHash('sha256').update(checkpoint['model.safetensors']).digest('hex');
  const blobs = path.join(caches.hubCache, 'models--fake-org--clip-tiny', 'blobs');
  const partial = fs.statSync(path.join(blobs, `${sha}.incomplete`)).size;
  t.ok(partial > 0 && partial <= 50_000_000, `kept ${partial} bytes`);
  t.notOk(fs.existsSync(path.join(blobs, sha)));
  t.notOk(
    fs.existsSync(
      path.join(caches.hubCache, 'models--fake-org--clip-tiny', 'snapshots', COMMIT_A, 'model.safetensors'),
    ),
  );
  t.notOk(
    fs.existsSync(path.join(caches.hubCache, 'models--fake-org--clip-tiny', 'refs', 'main')),
    'no ref to a partial snapshot',
  );

  const from = hub.requests.length;
  const { checkpoint: dir, commit } = await downloadCheckpoint({ repo: REPO, revision: 'main' }, { onProgress: quiet });
  t.equal(commit, COMMIT_A);
  t.ok(hub.requests.slice(from).includes(`GET /${REPO}/resolve/${COMMIT_A}/model.safetensors bytes=${partial}-`));
  t.equal(fs.readdirSync(blobs).filter((n) => n.endsWith('.incomplete')).length, 0);
  t.equal(fs.statSync(path.join(dir, 'model.safetensors')).size, size);
  t.ok(fs.readFileSync(path.join(dir, 'model.safetensors')).equals(checkpoint['model.safetensors']));
});

t.test('unknown repos, revisions and gated repos fail with CLIP_MODEL_LOAD_FAILED and write nothing', async (t) => {
  const caches = useCaches('errors');
  await t.rejects(ClipModel.load('fake-org/missing', { onProgress: quiet }), {
    code: 'CLIP_MODEL_LOAD_FAILED',
    message: /fake-org\/missing.*revision main.*HTTP 404/,
  });
  await t.rejects(resolveModel(`${REPO}@no-such-branch`), {
    code: 'CLIP_MODEL_LOAD_FAILED',
    message: /revision no-such-branch.*404.*RevisionNotFound/,
  });
  await t.rejects(resolveModel(GATED), {
    code: 'CLIP_MODEL_LOAD_FAILED',
    message: /fake-org\/gated.*revision main.*HTTP 401.*HF_TOKEN/,
  });
  process.env.HF_TOKEN = 'hf_wrong';
  await t.rejects(resolveModel(GATED), {
    code: 'CLIP_MODEL_LOAD_FAILED',
    message: /401.*token in HF_TOKEN has no access/,
  });
  t.notOk(fs.existsSync(caches.hubCache), 'nothing in the Hugging Face cache');
  t.notOk(fs.existsSync(caches.modelCache), 'nothing in the clip-native cache');
  process.env.HF_TOKEN = 'hf_secret';
  try {
    const { commit } = await downloadCheckpoint({ repo: GATED, revision: 'main' }, { onProgress: quiet });
    t.equal(commit, COMMIT_A, 'HF_TOKEN opens a gated repo');
  } finally {
    delete process.env.HF_TOKEN;
  }
  const down = 'http://127.0.0.1:9';
  process.env.HF_ENDPOINT = down;
  try {
    await t.rejects(resolveModel('fake-org/never-fetched'), {
      code: 'CLIP_MODEL_LOAD_FAILED',
      message: /fake-org\/never-fetched.*revision main.*network error reaching http:\/\/127\.0\.0\.1:9/,
    });
  } finally {
    process.env.HF_ENDPOINT = hub.url;
  }
});

t.test('two processes pulling one id at once both succeed and one downloads and converts', async (t) => {
  const caches = useCaches('concurrent');
  const from = hub.requests.length;
  const pull = () =>
    new Promise<{ status: number | null; stdout: string; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [path.join(root, 'bin', 'clip-native.js'), 'pull', REPO], {
        env: { ...process.env },
      });
      let stdout = '';
      let stderr = '';
      child.stdout.on('data', (d: Buffer) => (stdout += d.toString()));
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('close', (status) => resolve({ status, stdout, stderr }));
    });
  const [one, two] = await Promise.all([pull(), pull()]);
  const directory = path.join(caches.modelCache, 'models--fake-org--clip-tiny', 'snapshots', COMMIT_A);
  t.equal(one.status, 0, one.stderr);
  t.equal(two.status, 0, two.stderr);
  t.equal(one.stdout, `${directory}\n`, 'stdout holds only the directory');
  t.equal(two.stdout, `${directory}\n`);
  t.equal(hub.requests.slice(from).filter((r) => r.includes('/resolve/') && r.includes('model.safetensors')).length, 1);
  t.equal([one.stderr, two.stderr].filter((s) => s.includes('converting')).length, 1, 'one conversion');
  t.same(fs.readdirSync(path.join(caches.modelCache, 'models--fake-org--clip-tiny', 'snapshots')), [COMMIT_A]);
});

t.test('clip-native export ID --out DIR converts into DIR', async (t) => {
  useCaches('export');
  const bin = path.join(root, 'bin', 'clip-native.js');
  const out = path.join(tempDir('hub-export-out'), 'model');
  const run = (args: string[]) =>
    new Promise<{ status: number | null; stderr: string }>((resolve) => {
      const child = spawn(process.execPath, [bin, ...args], {
        env: { ...process.env },
        stdio: ['ignore', 'ignore', 'pipe'],
      });
      let stderr = '';
      child.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
      child.on('close', (status) => resolve({ status, stderr }));
    });
  const done = await run(['export', `${REPO}@v1`, '--out', out]);
  t.equal(done.status, 0, done.stderr);
  const manifest = JSON.parse(fs.readFileSync(path.join(out, 'clip.json'), 'utf8')) as {
    source: Record<string, string>;
  };
  t.match(manifest.source, { kind: 'huggingface', repo: REPO, revision: 'v1', commit: COMMIT_A });
  t.same(fs.readdirSync(path.dirname(out)), ['model'], 'no temporary folder left');
  const refused = await run(['export', REPO, '--out', out]);
  t.equal(refused.status, 2);
  t.match(refused.stderr, /exists and is not an empty directory/);
});

t.test('serve answers 503 on GET / while it downloads and converts, and logs progress', async (t) => {
  useCaches('serve');
  let release!: () => void;
  hub.hold = { file: 'model.safetensors', until: new Promise<void>((resolve) => (release = resolve)) };
  const child = spawn(
    process.execPath,
    [path.join(root, 'bin', 'clip-native.js'), 'serve', '--model', REPO, '--port', '0', '--device', 'cpu'],
    { env: { ...process.env }, stdio: ['ignore', 'pipe', 'pipe'] },
  );
  const exited = new Promise<number | null>((resolve) => child.on('close', resolve));
  const logs: { msg: string; port?: number; progress?: string }[] = [];
  const waiters: { test: (l: (typeof logs)[number]) => boolean; resolve: (l: (typeof logs)[number]) => void }[] = [];
  let buffered = '';
  child.stdout.on('data', (d: Buffer) => {
    buffered += d.toString();
    let newline: number;
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const line = JSON.parse(buffered.slice(0, newline)) as (typeof logs)[number];
      buffered = buffered.slice(newline + 1);
      logs.push(line);
      for (const w of waiters.filter((w) => w.test(line))) w.resolve(line);
    }
  });
  const logged = (test: (l: (typeof logs)[number]) => boolean) =>
    new Promise<(typeof logs)[number]>((resolve) => {
      const seen = logs.find(test);
      if (seen) resolve(seen);
      else waiters.push({ test, resolve });
    });
  try {
    const { port } = await logged((l) => l.msg === 'loading the model');
    await logged((l) => l.progress === 'download' && l.msg.includes('model.safetensors'));
    const loading = await fetch(`http://127.0.0.1:${port}/`);
    t.equal(loading.status, 503);
    t.ok(loading.headers.get('retry-after'));
    release();
    await logged((l) => l.progress === 'convert');
    await logged((l) => l.msg === 'model loaded: ready');
    const ready = await fetch(`http://127.0.0.1:${port}/`);
    t.equal(ready.status, 200);
    t.equal(await ready.text(), 'Healthy');
  } finally {
    hub.hold = undefined;
    release();
    child.kill('SIGTERM');
    t.equal(await exited, 0);
  }
});

t.test('HTTPS_PROXY / HTTP_PROXY: the hub is reached through the proxy', async (t) => {
  useCaches('proxy');
  const saved = {
    HF_ENDPOINT: process.env.HF_ENDPOINT,
    NO_PROXY: process.env.NO_PROXY,
    no_proxy: process.env.no_proxy,
  };
  // The fake hub answers absolute-form requests as a forward proxy would pass them on.
  process.env.HF_ENDPOINT = 'http://hub.invalid';
  process.env.HTTP_PROXY = hub.url;
  delete process.env.NO_PROXY;
  delete process.env.no_proxy;
  const from = hub.requests.length;
  try {
    const { commit } = await downloadCheckpoint({ repo: SMALL, revision: 'main' }, { onProgress: quiet });
    t.equal(commit, COMMIT_A);
    const seen = hub.requests.slice(from);
    t.ok(seen.includes('CONNECT hub.invalid:80'), 'a tunnel through the proxy');
    t.ok(seen.includes(`GET /${SMALL}/resolve/${COMMIT_A}/model.safetensors`));
  } finally {
    delete process.env.HTTP_PROXY;
    Object.assign(process.env, saved);
    for (const [key, value] of Object.entries(saved)) if (value === undefined) delete process.env[key];
  }
});

t.test('progress: a bar redrawn on a terminal, plain lines otherwise', (t) => {
  const reference = { repo: REPO, revision: 'main' };
  const events: ModelProgress[] = [
    ...[0, 5, 50, 95, 100].map((mb) => ({
      phase: 'download' as const,
      reference,
      commit: COMMIT_A,
      file: 'model.safetensors',
      fileBytes: mb * 1e6,
      fileSize: 100e6,
      bytes: mb * 1e6,
      totalBytes: 100e6,
    })),
    { phase: 'convert', reference, commit: COMMIT_A },
  ];
  const sink = (isTTY: boolean) => {
    const out: string[] = [];
    return { out, stream: { isTTY, write: (s: string) => out.push(s) } as unknown as NodeJS.WriteStream };
  };
  const plain = sink(false);
  const tty = sink(true);
  const toPlain = streamProgress(plain.stream);
  const toTty = streamProgress(tty.stream);
  for (const e of events) {
    toPlain(e);
    toTty(e);
  }
  t.same(
    plain.out.map((l) => /(\d+)%|converting/.exec(l)?.[0]),
    ['0%', '50%', '95%', '100%', 'converting'],
    'a line per new tenth',
  );
  t.ok(plain.out.every((l) => l.endsWith('\n') && !l.includes('\r')));
  t.ok(tty.out[0].startsWith('\r\u001b[Kclip-native: fake-org/clip-tiny [..............................] 0%'));
  t.match(
    tty.out.join(''),
    new RegExp(
      `\\[#{30}\\] 100% [^\\n]*\\nclip-native: converting ${REPO} \\(${COMMIT_A.slice(0, 8)}\\) with the exporter\\n$`,
    ),
    'the bar ends its line before the next message',
  );
  t.end();
});

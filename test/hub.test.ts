// Models by repo id against a fake hub on 127.0.0.1: download, cache layout, conversion, offline loads,
// pinned revisions, resume, hub errors, concurrent loads. The real hub is never contacted.
import { spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ClipModel, type ModelProgress } from '../lib/index';
import { downloadCheckpoint, resolveModel } from '../lib/hub/index';
import { parseHubReference } from '../lib/hub/reference';
import { fakeCommit, startFakeHub, type FakeHub } from './helpers/fake-hub';
import { fixtures, hfCheckpoint, hfModel, maxAbsDiff, root, tempDir } from './helpers/env';

const REPO = 'fake-org/clip-tiny';
const GATED = 'fake-org/gated';
const COMMIT_A = fakeCommit('a');
const COMMIT_B = fakeCommit('b');
const quiet = () => undefined;

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

t.before(async () => {
  hub = await startFakeHub({
    [REPO]: {
      commits: {
        [COMMIT_A]: { ...checkpoint, ...extras },
        [COMMIT_B]: { ...checkpoint, 'model.safetensors': doubledProjection(checkpoint['model.safetensors']) },
      },
      refs: { main: COMMIT_A, v1: COMMIT_A, doubled: COMMIT_B },
    },
    [GATED]: { commits: { [COMMIT_A]: checkpoint }, refs: { main: COMMIT_A }, token: 'hf_secret' },
  });
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
  return { texts: await model.embedTexts(texts), image: imageEmbedding };
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
    const byId = await ClipModel.load(REPO, { device: 'cpu', onProgress: (e) => events.push(e) });
    const local = await ClipModel.load(hfModel, { device: 'cpu' });
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
      const offline = await ClipModel.load(REPO, { device: 'cpu', onProgress: quiet });
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

    // @revision pins: commit B (doubled visual projection) converts separately and gives twice the image embedding.
    const pinned = await ClipModel.load(`${REPO}@${COMMIT_B}`, { device: 'cpu', onProgress: quiet });
    const c = await embeddings(pinned);
    await pinned.dispose();
    t.equal(
      maxAbsDiff(
        c.image,
        a.image.map((v) => v * 2),
      ),
      0,
    );
    t.equal(maxAbsDiff(c.texts[0], a.texts[0]), 0);
    t.ok(
      fs.existsSync(path.join(caches.modelCache, 'models--fake-org--clip-tiny', 'snapshots', COMMIT_B, 'clip.json')),
    );

    // Without Python, a commit that is downloaded but not converted fails with the fix, leaving nothing behind.
    process.env.CLIP_NATIVE_CACHE = path.join(caches.modelCache, '..', 'other-cache');
    process.env.CLIP_PYTHON = path.join(root, 'no-such-python');
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

async function restart(old: FakeHub): Promise<FakeHub> {
  const requests = old.requests;
  const fresh = await startFakeHub({
    [REPO]: {
      commits: {
        [COMMIT_A]: { ...checkpoint, ...extras },
        [COMMIT_B]: { ...checkpoint, 'model.safetensors': doubledProjection(checkpoint['model.safetensors']) },
      },
      refs: { main: COMMIT_A, v1: COMMIT_A, doubled: COMMIT_B },
    },
    [GATED]: { commits: { [COMMIT_A]: checkpoint }, refs: { main: COMMIT_A }, token: 'hf_secret' },
  });
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

// `clip-native serve` as a process: listening before the model loads, the
// API key from the environment, and a graceful SIGTERM with requests in flight.
// Runs bin/clip-native.js, so dist/ must be built (npm test does).
import { spawnSync } from 'node:child_process';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import t from 'tap';
import { ClipModel } from '../../lib/index';
import { maxAbsDiff, root, tinyModel } from '../helpers/env';
import { postScore, type Answer } from '../helpers/http';
import { sampleImages } from '../helpers/images';
import { bin, listeningPort, readLog, spawnServe } from '../helpers/process';

/** `POST /score` on the served port. */
function post(port: number, body: unknown, headers: Record<string, string> = {}): Promise<Answer> {
  return postScore(`http://127.0.0.1:${port}`, body, headers);
}

function connects(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}

t.test('bad command lines exit 2 with one line; a model that fails to load exits 1', async (t) => {
  const noModel = spawnSync(process.execPath, [bin, 'serve', '--model', '', '--port', '0'], { encoding: 'utf8' });
  t.equal(noModel.status, 2);
  t.equal(noModel.stderr.trim().split('\n').length, 1, noModel.stderr);
  t.match(noModel.stderr, /--model must not be empty/);
  const badPort = spawnSync(process.execPath, [bin, 'serve', '--model', tinyModel, '--port', 'x'], {
    encoding: 'utf8',
  });
  t.equal(badPort.status, 2);
  t.match(badPort.stderr, /--port/);
  const help = spawnSync(process.execPath, [bin, 'serve', '--help'], { encoding: 'utf8' });
  t.equal(help.status, 0);
  t.match(help.stdout, /--allow-private-urls/);
  const broken = spawnSync(
    process.execPath,
    [bin, 'serve', '--model', path.join(root, 'no-such-model'), '--port', '0'],
    {
      encoding: 'utf8',
    },
  );
  t.equal(broken.status, 1);
  t.match(broken.stderr, /CLIP_MODEL_LOAD_FAILED/);
});

t.test('SIGTERM with 50 requests in flight: all complete, new connections are refused, exit 0', async (t) => {
  const images = sampleImages(5);
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  const want = await model.embedImages(images);
  await model.dispose();

  // Image URLs the endpoint fetches: answered only when the test says, so the
  // 50 requests are provably inside the server when SIGTERM arrives.
  const held: Array<{ res: http.ServerResponse; index: number }> = [];
  let arrived!: () => void;
  const allArrived = new Promise<void>((resolve) => (arrived = resolve));
  const files = http.createServer((req, res) => {
    held.push({ res, index: Number(req.url!.slice(1)) % images.length });
    if (held.length === 50) arrived();
  });
  await new Promise<void>((resolve) => files.listen(0, '127.0.0.1', resolve));
  t.teardown(() => files.close());
  const origin = `http://127.0.0.1:${(files.address() as AddressInfo).port}`;

  const child = spawnServe(['--allow-private-urls'], {
    model: tinyModel,
    env: { ...process.env, CLIP_NATIVE_API_KEY: 'env-key' },
  });
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve) =>
    child.once('exit', (code, signal) => resolve({ code, signal })),
  );
  t.teardown(() => {
    if (child.exitCode === null) child.kill('SIGKILL');
  });
  const log = readLog(child);
  let stderr = '';
  child.stderr!.on('data', (c: Buffer) => (stderr += c.toString()));

  const listening = await log.waitFor(/listening at/);
  const port = listeningPort(String(listening.msg)) ?? 0;
  t.ok(port > 0, `listening on port ${port}, as its first log line says`);
  await log.waitFor(/ready/);

  const key = { authorization: 'Bearer env-key' };
  t.equal(
    (await post(port, { input_data: { columns: ['text'], data: [['a']] } })).status,
    401,
    'the key comes from CLIP_NATIVE_API_KEY',
  );

  const inFlight = Array.from({ length: 50 }, (_, i) =>
    post(port, { input_data: { columns: ['image', 'text'], data: [[`${origin}/${i}`, `text ${i}`]] } }, key),
  );
  await allArrived;
  child.kill('SIGTERM');
  let refused = false;
  for (let attempt = 0; attempt < 100 && !refused; attempt++) {
    refused = !(await connects(port));
    if (!refused) await new Promise((resolve) => setTimeout(resolve, 20));
  }
  t.ok(refused, 'new connections are refused once SIGTERM arrives');
  t.equal(held.length, 50, 'the 50 requests are still in flight');

  for (const { res, index } of held) res.writeHead(200, { 'content-type': 'image/png' }).end(images[index]);
  const answers = await Promise.all(inFlight);
  let worst = 0;
  answers.forEach((answer, i) => {
    t.equal(answer.status, 200, `request ${i} completed`);
    worst = Math.max(worst, maxAbsDiff(answer.json[0].image_features, want[i % images.length]));
    t.equal(answer.json[0].text_features?.length, 512);
  });
  t.ok(worst <= 1e-5, `results are correct (max abs diff ${worst})`);
  const { code, signal } = await exited;
  t.equal(signal, null);
  t.equal(code, 0, `exit status 0 ${stderr}`);
  t.ok(
    log.lines.some((line) => /"msg":"stopped"/.test(line)),
    'logged the end of the shutdown',
  );
});

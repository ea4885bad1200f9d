// The hostile corpus of ./corpus.ts against two real `clip-native serve`
// processes on loopback with the tiny model:
//   strict: `serve --body-limit-mb 16` (private URLs refused, no key);
//   open:   `serve --allow-private-urls --api-key K`, so image URLs can point
//           at a local server that misbehaves on purpose.
// Every case must get the answer its case names (a 4xx with {message, code},
// `row` for a row error, Retry-After on 429/503; or a 200 for input that is in
// fact valid), never a 500. After every category both servers still answer a
// valid request with the same embeddings as before the corpus. The corpus
// then runs a second time; memory outside V8's heap may grow by
// RSS_GROWTH_BOUND_MB over the first pass and by SECOND_PASS_BOUND_MB over the
// second, and the V8 heap by SECOND_PASS_HEAP_BOUND_MB (see below).
import type { ChildProcess } from 'node:child_process';
import fs from 'node:fs';
import http from 'node:http';
import net, { type AddressInfo } from 'node:net';
import path from 'node:path';
import zlib from 'node:zlib';
import t, { type Test } from 'tap';
import { fixtures, maxAbsDiff, tinyModel } from '../helpers/env';
import { request as httpRequest, type Answer } from '../helpers/http';
import { makePng } from '../helpers/images';
import { listeningPort, onLines, spawnServe } from '../helpers/process';
import { buildCorpus, corpusDigest, loadSeeds, makeZeroPng, scoreBody, type Case } from './corpus';

const API_KEY = 'adversarial-test-key';
/**
 * How much a server's memory outside the V8 heap (settled RSS minus V8's heap
 * size, see settledRss) may grow from after its warm-up to after the whole
 * corpus. V8's heap is left out because it shrinks only when V8 decides to:
 * right after a burst it may still hold 100 MB of dead answers. The corpus's largest allocations are
 * transient: a 147 MB RGB buffer for the 7000x7000 image, 16 MiB bodies, a
 * 40 MB answer. What remains is malloc arenas and libtorch's caches, which the
 * process keeps for reuse (measured: about 100-250 MB); a leak of the refused
 * bombs alone would be gigabytes.
 */
const RSS_GROWTH_BOUND_MB = 400;
/**
 * How much running the whole corpus a second time may add, outside the V8
 * heap and to it: a leak would add its first-pass share again.
 */
const SECOND_PASS_BOUND_MB = 100;
/**
 * The same for the V8 heap's size. Wider, because a heap that V8 has not yet
 * shrunk (settledRss gives up after 30 s) reads up to about 100 MB: what a JS
 * leak of the corpus's answers would add is several times that.
 */
const SECOND_PASS_HEAP_BOUND_MB = 150;
const CONCURRENCY = 4;

// ---------------------------------------------------------------------------
// The servers under test

interface Server {
  name: string;
  child: ChildProcess;
  port: number;
  exited: boolean;
  log: string[];
}

async function startServe(name: string, args: string[]): Promise<Server> {
  const child = spawnServe(args, { model: tinyModel });
  const server: Server = { name, child, port: 0, exited: false, log: [] };
  child.on('exit', () => (server.exited = true));
  child.stderr!.on('data', (chunk: Buffer) => server.log.push(chunk.toString()));
  server.port = await new Promise<number>((resolve, reject) => {
    onLines(child.stdout!, (line) => {
      if (server.log.length < 2000) server.log.push(line);
      const port = listeningPort(line);
      if (port) resolve(port);
    });
    child.once('exit', (code) => reject(new Error(`serve (${name}) exited ${code}:\n${server.log.join('\n')}`)));
  });
  for (let i = 0; i < 600; i++) {
    const health = await request(server.port, { method: 'GET', path: '/', headers: {} }).catch(() => undefined);
    if (health?.status === 200) return server;
    await new Promise((r) => setTimeout(r, 100));
  }
  throw new Error(`serve (${name}) never became ready`);
}

function rssMb(pid: number): { rss: number; peak: number } {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name: string) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) / 1024;
  return { rss: field('VmRSS'), peak: field('VmHWM') };
}

/**
 * RSS once the server is idle and V8 has collected the garbage of the big
 * requests: its memory reducer runs a few seconds after allocation stops.
 * Right after a burst, RSS holds hundreds of MB of dead JS objects (a 4096-row
 * answer is 40 MB of JSON), which says nothing about leaks.
 */
async function settledRss(server: Server): Promise<{ rss: number; peak: number; heap: number }> {
  const deadline = Date.now() + 30_000;
  for (;;) {
    const metrics = await request(server.port, { method: 'GET', path: '/metrics', headers: {} }).catch(() => undefined);
    const heap = Number(/^nodejs_heap_size_total_bytes (\S+)/m.exec(metrics?.text ?? '')?.[1] ?? NaN) / 2 ** 20;
    if (heap < 64 || Date.now() > deadline) return { ...rssMb(server.child.pid!), heap };
    await new Promise((resolve) => setTimeout(resolve, 2000));
  }
}

// ---------------------------------------------------------------------------
// Clients: HTTP for ordinary cases, a raw socket for broken HTTP

function request(
  port: number,
  options: { method: string; path: string; headers: Record<string, string>; body?: Buffer },
  timeoutMs = 60_000,
): Promise<Answer> {
  const { path, ...init } = options;
  return httpRequest(`http://127.0.0.1:${port}`, path, { ...init, timeoutMs });
}

/** One raw write; the answer is parsed as far as it goes, status 0 when none came. */
function rawRequest(port: number, bytes: Buffer, timeoutMs = 10_000): Promise<Answer> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    let received = Buffer.alloc(0);
    let done = false;
    const finish = () => {
      if (done) return;
      done = true;
      clearTimeout(timer);
      socket.destroy();
      const text = received.toString('latin1');
      const status = Number(/^HTTP\/1\.[01] (\d{3})/.exec(text)?.[1] ?? 0);
      const split = text.indexOf('\r\n\r\n');
      const headers: Record<string, string> = {};
      for (const line of text
        .slice(0, split < 0 ? text.length : split)
        .split('\r\n')
        .slice(1)) {
        const colon = line.indexOf(':');
        if (colon > 0) headers[line.slice(0, colon).toLowerCase()] = line.slice(colon + 1).trim();
      }
      const body = split < 0 ? '' : received.subarray(split + 4).toString();
      let json: unknown;
      try {
        json = /json/.test(headers['content-type'] ?? '') ? JSON.parse(body) : undefined;
      } catch {
        json = undefined;
      }
      resolve({ status, headers, text: body, json });
    };
    const timer = setTimeout(finish, timeoutMs);
    socket.on('data', (chunk: Buffer) => {
      received = Buffer.concat([received, chunk]);
      // Done once one whole answer is in (the server may keep the socket open).
      const text = received.toString('latin1');
      const split = text.indexOf('\r\n\r\n');
      if (split < 0) return;
      const length = /\r\ncontent-length:\s*(\d+)/i.exec(text.slice(0, split))?.[1];
      if (length !== undefined && received.length >= split + 4 + Number(length)) finish();
    });
    socket.on('error', finish);
    socket.on('close', finish);
    // Written in pieces, after a pause for an early answer, and no more once
    // an answer has begun, as curl does (Expect: 100-continue): a server that
    // answers early (413) and closes would otherwise make the client's next
    // write fail with EPIPE, and the answer would never be read.
    let offset = 0;
    const pump = () => {
      while (offset < bytes.length && received.length === 0 && !socket.destroyed) {
        const piece = bytes.subarray(offset, offset + (64 << 10));
        offset += piece.length;
        const more = socket.write(piece);
        if (offset === piece.length && offset < bytes.length) return void setTimeout(pump, 200);
        if (!more) return void socket.once('drain', pump);
      }
      // Half-close: a request that promised more body than it sent ends here.
      if (!socket.destroyed) socket.end();
    };
    socket.on('connect', pump);
  });
}

// ---------------------------------------------------------------------------
// The image server that the open server fetches from

function imageServer(seedJpeg: Buffer | undefined) {
  const png = makePng(40, 30, (x, y) => [x * 6, y * 8, 128]);
  const bomb = makeZeroPng(20_000, 20_000);
  const garbage = Buffer.from(Array.from({ length: 5000 }, (_, i) => (i * 7919 + 13) & 255));
  const held = new Set<http.ServerResponse>();
  const timers = new Set<NodeJS.Timeout>();
  const server = http.createServer((req, res) => {
    res.on('error', () => undefined);
    req.socket.on('error', () => undefined);
    const url = new URL(req.url!, 'http://x');
    const route = url.pathname;
    const send = (
      status: number,
      body: Buffer | string,
      headers: Record<string, string | number> = { 'content-type': 'image/png' },
    ) => {
      res.writeHead(status, headers);
      res.end(body);
    };
    const status = /^\/status\/(\d+)$/.exec(route);
    const chain = /^\/chain\/(\d+)$/.exec(route);
    if (route === '/ok.png') return send(200, png);
    if (route === '/no-type') {
      res.removeHeader('content-type');
      return send(200, png, {});
    }
    if (route === '/octet') return send(200, png, { 'content-type': 'application/octet-stream' });
    if (route === '/type-params') return send(200, png, { 'content-type': 'image/png; charset=binary' });
    if (route === '/type-upper') return send(200, png, { 'content-type': 'IMAGE/PNG' });
    if (route === '/type-image') return send(200, png, { 'content-type': 'image' });
    if (route === '/html') return send(200, png, { 'content-type': 'text/html' });
    if (route === '/json') return send(200, '{"image": "no"}', { 'content-type': 'application/json' });
    if (status) return send(Number(status[1]), Number(status[1]) === 204 ? '' : 'x', { 'content-type': 'image/png' });
    if (route === '/loop') return send(302, '', { location: '/loop' });
    if (chain)
      return Number(chain[1]) === 0 ? send(200, png) : send(302, '', { location: `/chain/${Number(chain[1]) - 1}` });
    if (route === '/redirect-relative') return send(302, '', { location: 'ok.png' });
    if (route === '/redirect-303') return send(303, '', { location: '/ok.png' });
    if (route === '/redirect') return send(302, '', { location: url.searchParams.get('to') ?? '/' });
    if (route === '/huge-declared') {
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': 30 << 20 });
      res.write(png);
      held.add(res);
      res.on('close', () => held.delete(res));
      return;
    }
    if (route === '/huge-stream') {
      res.writeHead(200, { 'content-type': 'image/png' });
      const chunk = Buffer.alloc(64 << 10, 7);
      let sent = 0;
      const pump = () => {
        while (sent < 21 << 20 && !res.destroyed) {
          sent += chunk.length;
          if (!res.write(chunk)) return void res.once('drain', pump);
        }
        res.end();
      };
      return pump();
    }
    if (route === '/reset') {
      res.writeHead(200, { 'content-type': 'image/png', 'content-length': 100_000 });
      res.write(png.subarray(0, 100));
      const timer = setTimeout(() => res.socket?.destroy(), 50);
      timers.add(timer);
      return;
    }
    if (route === '/empty') return send(200, Buffer.alloc(0));
    if (route === '/garbage') return send(200, garbage);
    if (route === '/gzip')
      return send(200, zlib.gzipSync(png), { 'content-type': 'image/png', 'content-encoding': 'gzip' });
    if (route === '/bomb.png') return send(200, bomb);
    if (route === '/truncated.jpg')
      return send(200, (seedJpeg ?? png).subarray(0, (seedJpeg ?? png).length >> 1), { 'content-type': 'image/jpeg' });
    if (route === '/slow-headers') {
      held.add(res);
      res.on('close', () => held.delete(res));
      return;
    }
    if (route === '/trickle') {
      res.writeHead(200, { 'content-type': 'image/png' });
      let i = 0;
      const timer = setInterval(() => {
        if (res.destroyed) return void clearInterval(timer);
        res.write(png.subarray(i % png.length, (i % png.length) + 1));
        i++;
      }, 500);
      timers.add(timer);
      res.on('close', () => clearInterval(timer));
      return;
    }
    send(404, 'no such route', { 'content-type': 'text/plain' });
  });
  return {
    server,
    close() {
      for (const timer of timers) clearInterval(timer);
      for (const res of held) res.destroy();
      server.closeAllConnections();
      server.close();
    },
  };
}

// ---------------------------------------------------------------------------
// Checking one answer against its case

function check(c: Case, answer: Answer): string[] {
  const problems: string[] = [];
  const { expect } = c;
  if (!expect.status.includes(answer.status)) {
    problems.push(`status ${answer.status}, expected ${expect.status.join(' or ')}`);
  }
  if (answer.status >= 400) {
    const body = answer.json;
    if (!/^application\/json/.test(String(answer.headers['content-type'])))
      problems.push(`content-type ${answer.headers['content-type']}`);
    if (body === null || typeof body !== 'object' || Array.isArray(body)) {
      problems.push(`body is not an object: ${answer.text.slice(0, 200)}`);
    } else {
      if (typeof body.message !== 'string' || body.message.length === 0) problems.push('no message');
      if (typeof body.code !== 'string') problems.push('no code');
      else if (expect.codes && !expect.codes.includes(body.code))
        problems.push(`code ${body.code}, expected ${expect.codes.join(' or ')}`);
      if (expect.row !== undefined && body.row !== expect.row) problems.push(`row ${body.row}, expected ${expect.row}`);
      if (body.row !== undefined && !String(body.message).startsWith(`row ${body.row}: `))
        problems.push('row error message does not start with "row N: "');
      if (typeof body.message === 'string' && body.message.length > 2000)
        problems.push(`message of ${body.message.length} characters`);
    }
    if ((answer.status === 429 || answer.status === 503) && answer.headers['retry-after'] === undefined)
      problems.push('no Retry-After');
  }
  if (answer.status === 200 && c.method === 'POST') {
    if (!Array.isArray(answer.json)) problems.push(`200 body is not an array: ${answer.text.slice(0, 200)}`);
    else if (!answer.json.every((row: any) => Array.isArray(row.image_features ?? row.text_features)))
      problems.push('a 200 row without features');
  }
  return problems;
}

// ---------------------------------------------------------------------------

t.test('hostile requests against clip-native serve', async (t) => {
  const seeds = loadSeeds(path.join(fixtures, 'images'));
  const images = imageServer(seeds.find((s) => s.name.endsWith('.jpg'))?.bytes);
  await new Promise<void>((resolve) => images.server.listen(0, '127.0.0.1', resolve));
  t.teardown(() => images.close());
  const imageOrigin = `http://127.0.0.1:${(images.server.address() as AddressInfo).port}`;

  const [strict, open] = await Promise.all([
    startServe('strict', ['--body-limit-mb', '16']),
    startServe('open', ['--allow-private-urls', '--api-key', API_KEY]),
  ]);
  const servers = { strict, open };
  t.teardown(() => {
    for (const s of [strict, open]) if (!s.exited) s.child.kill('SIGKILL');
  });

  const corpus = buildCorpus({ seeds, imageOrigin, apiKey: API_KEY });
  t.ok(corpus.length >= 300, `${corpus.length} cases in ${new Set(corpus.map((c) => c.category)).size} categories`);
  t.comment(`corpus sha256 ${corpusDigest(corpus).slice(0, 16)} (seed images: ${seeds.length})`);

  // The valid request whose answer must not change whatever came before it.
  const probe = scoreBody([[makePng(24, 24, (x, y) => [x * 10, y * 10, 0]).toString('base64'), 'a photo of a cat']]);
  const probeHeaders = (s: Server): Record<string, string> => ({
    'content-type': 'application/json',
    ...(s === open ? { authorization: `Bearer ${API_KEY}` } : {}),
  });
  const probeOnce = (s: Server) =>
    request(s.port, { method: 'POST', path: '/score', headers: probeHeaders(s), body: probe });
  const want = new Map<Server, any>();
  for (const s of [strict, open]) {
    for (let i = 0; i < 5; i++) {
      const answer = await probeOnce(s);
      t.equal(answer.status, 200, `${s.name}: warm-up request`);
      want.set(s, answer.json);
    }
  }
  const [strictBefore, openBefore] = await Promise.all([settledRss(strict), settledRss(open)]);
  const rssBefore = { strict: strictBefore, open: openBefore };

  const stillServing = async (t: Test, label: string) => {
    for (const s of [strict, open]) {
      if (s.exited) {
        t.fail(`${s.name} server exited (${label}):\n${s.log.slice(-30).join('\n')}`);
        continue;
      }
      const answer = await probeOnce(s);
      const expected = want.get(s);
      const same =
        answer.status === 200 &&
        maxAbsDiff(answer.json[0].image_features, expected[0].image_features) < 1e-5 &&
        maxAbsDiff(answer.json[0].text_features, expected[0].text_features) < 1e-5;
      t.ok(same, `${s.name}: the valid request still gets the same answer (${label})`);
    }
  };

  const send = (c: Case): Promise<Answer> => {
    const server = servers[c.target];
    if (c.raw) return rawRequest(server.port, c.raw);
    return request(
      server.port,
      { method: c.method, path: c.path, headers: c.headers, body: c.body },
      c.slow ? 60_000 : 120_000,
    );
  };
  const outcomes = new Map<string, { status: number; code?: string }>();
  /** Runs one case; its failure, if any, goes to `failures`. */
  const run = async (c: Case, failures: string[]) => {
    let answer: Answer;
    try {
      answer = await send(c);
    } catch (error) {
      outcomes.set(c.name, { status: -1 });
      failures.push(`${c.name}: ${(error as Error).message}`);
      return;
    }
    outcomes.set(c.name, { status: answer.status, code: answer.json?.code });
    const problems = check(c, answer);
    if (problems.length > 0) failures.push(`${c.name}: ${problems.join('; ')} | ${answer.text.slice(0, 300)}`);
  };

  // Slow fetches go first and run beside everything else, as they would in production.
  const slow = corpus.filter((c) => c.slow);
  const slowFailures: string[] = [];
  const slowDone = Promise.all(slow.map((c) => run(c, slowFailures)));
  const started = Date.now();

  const categories = [...new Set(corpus.map((c) => c.category))];
  for (const category of categories) {
    await t.test(category, async (t) => {
      const failures: string[] = [];
      const cases = corpus.filter((c) => c.category === category && !c.slow);
      const shared = cases.filter((c) => !c.exclusive);
      let next = 0;
      await Promise.all(
        Array.from({ length: CONCURRENCY }, async () => {
          while (next < shared.length) await run(shared[next++], failures);
        }),
      );
      for (const c of cases.filter((c) => c.exclusive)) await run(c, failures);
      t.same(failures, [], `${cases.length} cases answered as their case says`);
      await stillServing(t, `after ${category}`);
      t.comment(
        `RSS after ${category}: strict ${rssMb(strict.child.pid!).rss.toFixed(0)} MB, open ${rssMb(open.child.pid!).rss.toFixed(0)} MB`,
      );
    });
  }
  await slowDone;
  t.same(slowFailures, [], `${slow.length} slow URL cases answered as their case says`);
  await stillServing(t, 'after the first pass');
  t.comment(`first pass in ${((Date.now() - started) / 1000).toFixed(1)} s`);
  const [strictFirst, openFirst] = await Promise.all([settledRss(strict), settledRss(open)]);
  const rssFirstPass = { strict: strictFirst, open: openFirst };

  // The same corpus again: what a leak would add a second time, retention
  // (V8's heap, malloc arenas) would not.
  await t.test('second pass', async (t) => {
    const failures: string[] = [];
    const shared = corpus.filter((c) => !c.slow && !c.exclusive);
    let next = 0;
    await Promise.all(
      Array.from({ length: CONCURRENCY }, async () => {
        while (next < shared.length) await run(shared[next++], failures);
      }),
    );
    for (const c of corpus.filter((c) => !c.slow && c.exclusive)) await run(c, failures);
    t.same(failures, [], `${corpus.length - slow.length} cases answered as their case says again`);
    await stillServing(t, 'after the second pass');
  });

  // What the many-rows cases got: the report quotes these.
  for (const name of [
    'rows/20000 text rows',
    'rows/5000 image rows of a 1x1 PNG',
    'rows/4096 text rows (exactly the queue capacity)',
  ]) {
    t.comment(`${name}: ${JSON.stringify(outcomes.get(name))}`);
  }
  // CLIP_ADVERSARIAL_REPORT=FILE writes every case's answer there (status and code).
  if (process.env.CLIP_ADVERSARIAL_REPORT) {
    const rows = corpus.map((c) => ({ name: c.name, category: c.category, ...outcomes.get(c.name) }));
    fs.writeFileSync(process.env.CLIP_ADVERSARIAL_REPORT, JSON.stringify(rows, null, 1));
  }
  const byStatus = new Map<number, number>();
  for (const { status } of outcomes.values()) byStatus.set(status, (byStatus.get(status) ?? 0) + 1);
  t.comment(`answers by status: ${JSON.stringify(Object.fromEntries([...byStatus].sort((a, b) => a[0] - b[0])))}`);
  t.equal(byStatus.get(500) ?? 0, 0, 'no 500');

  const [strictAfter, openAfter] = await Promise.all([settledRss(strict), settledRss(open)]);
  const rssAfter = { strict: strictAfter, open: openAfter };
  for (const name of ['strict', 'open'] as const) {
    const native = (m: { rss: number; heap: number }) => m.rss - m.heap;
    const before = native(rssBefore[name]);
    const first = native(rssFirstPass[name]);
    const after = rssAfter[name];
    t.comment(
      `${name}: settled RSS ${rssBefore[name].rss.toFixed(0)} MB after warm-up, ${rssFirstPass[name].rss.toFixed(0)} MB ` +
        `after the first pass, ${after.rss.toFixed(0)} MB after the second (V8 heap ${rssBefore[name].heap.toFixed(0)}, ` +
        `${rssFirstPass[name].heap.toFixed(0)}, ${after.heap.toFixed(0)} MB), peak ${after.peak.toFixed(0)} MB`,
    );
    t.ok(
      first - before < RSS_GROWTH_BOUND_MB,
      `${name}: the first pass grew memory outside the V8 heap by ${(first - before).toFixed(0)} MB (bound ${RSS_GROWTH_BOUND_MB} MB)`,
    );
    t.ok(
      native(after) - first < SECOND_PASS_BOUND_MB,
      `${name}: the second pass grew it by ${(native(after) - first).toFixed(0)} MB (bound ${SECOND_PASS_BOUND_MB} MB)`,
    );
    t.ok(
      after.heap - rssFirstPass[name].heap < SECOND_PASS_HEAP_BOUND_MB,
      `${name}: and the V8 heap by ${(after.heap - rssFirstPass[name].heap).toFixed(0)} MB (bound ${SECOND_PASS_HEAP_BOUND_MB} MB)`,
    );
  }

  // A graceful stop still works after all of it.
  for (const s of [strict, open]) {
    const exited = new Promise<number | null>((resolve) => s.child.once('exit', (code) => resolve(code)));
    s.child.kill('SIGTERM');
    t.equal(await exited, 0, `${s.name}: SIGTERM exits 0`);
  }
});

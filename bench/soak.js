'use strict';
// Soak: `clip-native serve` on the tiny model under autocannon for a long run
// (default 10 minutes at 64 connections) with valid and invalid requests mixed.
// Prints the answers by status, latency percentiles, errors and timeouts, and
// the server's RSS over time; exits 1 if the server died, answered a 500,
// stopped answering a valid request correctly, or its RSS grew past --max-growth-mb
// between the first and the last minute. Not part of npm test.
//
//   node bench/soak.js [--duration S] [--connections N] [--model DIR] [--json FILE]
//                      [--max-growth-mb MB] [--device D]
//
// Needs the build (npm run build) and the fixtures (node scripts/fixtures.js).
const fs = require('node:fs');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const zlib = require('node:zlib');
const { spawn } = require('node:child_process');
const { parseArgs } = require('node:util');
const autocannon = require('autocannon');
const { makePng, makePngHeaderOnly } = require('../test/helpers/images');

const root = path.resolve(__dirname, '..');
const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '600' },
    connections: { type: 'string', default: '64' },
    model: { type: 'string', default: path.join(root, 'test', 'fixtures', 'tiny') },
    device: { type: 'string', default: 'cpu' },
    json: { type: 'string' },
    'max-growth-mb': { type: 'string', default: '150' },
  },
});
const duration = Number(args.duration);
const connections = Number(args.connections);

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

function rssMb(pid) {
  const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  const field = (name) => Number(new RegExp(`${name}:\\s+(\\d+) kB`).exec(status)?.[1] ?? NaN) / 1024;
  return { rss: field('VmRSS'), peak: field('VmHWM') };
}

/** An all-zero 1-bit PNG: 20000x20000 (400 MP) in about 50 KB, refused by the pixel limit. */
function zeroPng(width, height) {
  const crcTable = Array.from({ length: 256 }, (_, n) => {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? 0xedb88320 ^ (c >>> 1) : c >>> 1;
    return c >>> 0;
  });
  const crc32 = (bytes) => {
    let c = 0xffffffff;
    for (const b of bytes) c = crcTable[(c ^ b) & 0xff] ^ (c >>> 8);
    return (c ^ 0xffffffff) >>> 0;
  };
  const chunk = (type, data) => {
    const out = Buffer.alloc(12 + data.length);
    out.writeUInt32BE(data.length, 0);
    out.write(type, 4, 'latin1');
    data.copy(out, 8);
    out.writeUInt32BE(crc32(out.subarray(4, 8 + data.length)), 8 + data.length);
    return out;
  };
  const header = Buffer.alloc(13);
  header.writeUInt32BE(width, 0);
  header.writeUInt32BE(height, 4);
  header[8] = 1;
  return Buffer.concat([
    Buffer.from([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk('IHDR', header),
    chunk('IDAT', zlib.deflateSync(Buffer.alloc((Math.ceil(width / 8) + 1) * height), { level: 9 })),
    chunk('IEND', Buffer.alloc(0)),
  ]);
}

const score = (data, columns = ['image', 'text']) =>
  JSON.stringify({ input_data: { columns, index: data.map((_, i) => i), data } });

/** The request mix: [label, weight, autocannon request, the status it must get]. */
function requestMix() {
  const png = makePng(64, 48, (x, y) => [x * 4, y * 5, (x ^ y) & 255]).toString('base64');
  const jpeg = fs.readFileSync(path.join(root, 'test', 'fixtures', 'images', 'baseline_320x240.jpg'));
  const json = { 'content-type': 'application/json' };
  const post = (body, headers = json) => ({ method: 'POST', path: '/score', headers, body });
  return [
    ['valid: one text', 6, post(score([['', 'a photo of a cat on a sofa']])), 200],
    ['valid: one image', 4, post(score([[png, '']])), 200],
    ['valid: JPEG fixture', 2, post(score([[jpeg.toString('base64'), '']])), 200],
    ['valid: 8 mixed rows', 2, post(score(Array.from({ length: 8 }, (_, i) => (i % 2 ? ['', `caption ${i}`] : [png, `both ${i}`])))), 200],
    ['invalid: malformed JSON', 1, post('{"input_data": {"columns": ["text"], "data": [["x"]]'), 400],
    ['invalid: wrong types', 1, post(JSON.stringify({ input_data: { columns: ['text'], data: [[42]] } })), 400],
    ['invalid: index length', 1, post(JSON.stringify({ input_data: { columns: ['text'], index: [0, 1], data: [['x']] } })), 400],
    ['invalid: bad base64', 1, post(score([['!!!!not base64', '']])), 400],
    ['invalid: truncated JPEG', 1, post(score([[jpeg.subarray(0, jpeg.length >> 2).toString('base64'), '']])), 400],
    ['invalid: 20000x20000 PNG bomb', 1, post(score([[zeroPng(20_000, 20_000).toString('base64'), '']])), 400],
    ['invalid: header claims 100000x100000', 1, post(score([[makePngHeaderOnly(100_000, 100_000).toString('base64'), '']])), 400],
    ['invalid: private URL', 1, post(score([['http://169.254.169.254/latest/meta-data/', '']])), 400],
    ['invalid: file: URL', 1, post(score([['file:///etc/passwd', '']])), 400],
    ['invalid: text/plain', 1, post(score([['', 'x']]), { 'content-type': 'text/plain' }), 415],
    ['invalid: no route', 1, { method: 'GET', path: '/nothing-here' }, 404],
  ];
}

async function waitHealthy(base, child) {
  for (let i = 0; i < 600; i++) {
    if (child.exitCode !== null) throw new Error(`clip-native serve exited (${child.exitCode})`);
    const res = await fetch(`${base}/`).catch(() => undefined);
    if (res?.status === 200) return;
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error('clip-native serve did not become healthy');
}

async function main() {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const child = spawn(
    process.execPath,
    [path.join(root, 'bin', 'clip-native.js'), 'serve', '--model', args.model, '--port', String(port), '--device', args.device, '--log-level', 'error'],
    { stdio: ['ignore', 'inherit', 'inherit'] },
  );
  let exited = null;
  child.on('exit', (code, signal) => (exited = signal ?? code));
  await waitHealthy(base, child);

  const mix = requestMix();
  // A fixed interleaving, so every connection cycles through the same mix.
  const requests = [];
  for (let round = 0; requests.length < mix.reduce((n, m) => n + m[1], 0); round++) {
    for (const [, weight, request] of mix) if (round < weight) requests.push(request);
  }
  const probe = mix[0][2];
  const probeOnce = async () => {
    const res = await fetch(base + probe.path, { method: 'POST', headers: probe.headers, body: probe.body });
    return { status: res.status, body: await res.json() };
  };
  for (let i = 0; i < 20; i++) await probeOnce();
  const want = (await probeOnce()).body;

  const load = { start: os.loadavg() };
  const samples = [{ t: 0, ...rssMb(child.pid) }];
  const started = Date.now();
  const sampler = setInterval(() => {
    if (exited === null) samples.push({ t: Math.round((Date.now() - started) / 1000), ...rssMb(child.pid) });
  }, 10_000);
  console.log(`soak: ${connections} connections for ${duration} s against ${base} (${requests.length} requests per cycle), load ${load.start.map((l) => l.toFixed(2)).join(' ')}`);

  const result = await autocannon({ url: base, connections, duration, requests, timeout: 60 });
  clearInterval(sampler);
  load.end = os.loadavg();
  samples.push({ t: Math.round((Date.now() - started) / 1000), ...rssMb(child.pid) });

  const after = exited === null ? await probeOnce().catch((e) => ({ status: -1, body: String(e) })) : { status: -1 };
  const same =
    after.status === 200 &&
    after.body[0].text_features.every((v, i) => Math.abs(v - want[0].text_features[i]) < 1e-5);
  const byStatus = Object.fromEntries(Object.entries(result.statusCodeStats ?? {}).map(([s, v]) => [s, v.count]));
  const firstMinute = samples.filter((s) => s.t <= 60 && s.t > 0);
  const lastMinute = samples.filter((s) => s.t >= samples[samples.length - 1].t - 60);
  const avg = (xs) => xs.reduce((n, s) => n + s.rss, 0) / Math.max(1, xs.length);
  const growth = avg(lastMinute) - avg(firstMinute.length ? firstMinute : samples.slice(0, 1));
  const report = {
    duration,
    connections,
    requests: result.requests.total,
    requestsPerSecond: result.requests.average,
    byStatus,
    non2xx: result.non2xx,
    errors: result.errors,
    timeouts: result.timeouts,
    latencyMs: { p50: result.latency.p50, p90: result.latency.p90, p99: result.latency.p99, max: result.latency.max },
    rssMb: {
      afterWarmup: samples[0].rss,
      end: samples[samples.length - 1].rss,
      max: Math.max(...samples.map((s) => s.rss)),
      peak: samples[samples.length - 1].peak,
      firstMinuteAverage: avg(firstMinute),
      lastMinuteAverage: avg(lastMinute),
    },
    load,
    mix: mix.map(([label, weight, , status]) => ({ label, weight, status })),
    serverAlive: exited === null,
    validRequestAfter: same,
    samples,
  };

  console.table(Object.entries(byStatus).map(([status, count]) => ({ status, count })));
  console.table([{ ...report.latencyMs, rps: report.requestsPerSecond, errors: report.errors, timeouts: report.timeouts }]);
  console.log(
    `RSS: ${report.rssMb.afterWarmup.toFixed(0)} MB after warm-up, ${report.rssMb.end.toFixed(0)} MB at the end, ` +
      `max sampled ${report.rssMb.max.toFixed(0)} MB, peak ${report.rssMb.peak.toFixed(0)} MB; ` +
      `first-minute average ${report.rssMb.firstMinuteAverage.toFixed(0)} MB, last-minute ${report.rssMb.lastMinuteAverage.toFixed(0)} MB`,
  );
  console.log(`load average: ${load.start.map((l) => l.toFixed(2)).join(' ')} at the start, ${load.end.map((l) => l.toFixed(2)).join(' ')} at the end`);
  if (args.json) fs.writeFileSync(args.json, JSON.stringify(report, null, 2));

  child.kill('SIGTERM');
  await new Promise((resolve) => (exited === null ? child.once('exit', resolve) : resolve()));
  const problems = [];
  if (!report.serverAlive) problems.push('the server exited during the soak');
  if (byStatus['500']) problems.push(`${byStatus['500']} answers were 500`);
  if (!same) problems.push('the valid request no longer gets its answer');
  if (growth > Number(args['max-growth-mb'])) problems.push(`RSS grew by ${growth.toFixed(0)} MB from the first to the last minute`);
  if (problems.length) {
    console.error(`soak FAILED: ${problems.join('; ')}`);
    process.exitCode = 1;
  } else {
    console.log(`soak passed: RSS growth first to last minute ${growth.toFixed(0)} MB (bound ${args['max-growth-mb']} MB)`);
  }
}

main().catch((error) => {
  console.error(error);
  process.exitCode = 1;
});

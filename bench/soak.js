'use strict';
// Soak: `clip-native serve` on the tiny model under autocannon for a long run
// (default 10 minutes at 64 connections) with valid and invalid requests mixed.
// Prints the answers by status, latency percentiles, errors and timeouts, and
// the server's RSS over time; exits 1 if the server died, answered a 500,
// stopped answering a valid request correctly, or its RSS grew past --max-growth-mb
// between the first and the last minute. Not part of npm test.
//
//   node bench/soak.js [--duration S] [--connections N] [--model DIR] [--json FILE]
//                      [--max-growth-mb MB] [--device D] [--dtype T] [--closing-rate R]
//
// --closing-rate: requests per second of malformed JSON, which the server
// answers and then closes the connection (they run on connections of their
// own, connections/16 of them; see main()). Default 20.
//
// Needs the build (npm run build) and the fixtures (node scripts/fixtures.js).
const fs = require('node:fs');
const http = require('node:http');
const net = require('node:net');
const os = require('node:os');
const path = require('node:path');
const zlib = require('node:zlib');
const { spawn } = require('node:child_process');
const { parseArgs } = require('node:util');
const autocannon = require('autocannon');
const { makePng, makePngHeaderOnly, pngFile } = require('../test/helpers/images');

const root = path.resolve(__dirname, '..');
const { values: args } = parseArgs({
  options: {
    duration: { type: 'string', default: '600' },
    connections: { type: 'string', default: '64' },
    model: { type: 'string', default: path.join(root, 'test', 'fixtures', 'tiny') },
    device: { type: 'string', default: 'cpu' },
    dtype: { type: 'string', default: 'float32' },
    json: { type: 'string' },
    'max-growth-mb': { type: 'string', default: '150' },
    'closing-rate': { type: 'string', default: '20' },
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
  const raw = Buffer.alloc((Math.ceil(width / 8) + 1) * height);
  return pngFile(width, height, zlib.deflateSync(raw, { level: 9 }), { bitDepth: 1, colorType: 0 });
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
    [
      'valid: 8 mixed rows',
      2,
      post(score(Array.from({ length: 8 }, (_, i) => (i % 2 ? ['', `caption ${i}`] : [png, `both ${i}`])))),
      200,
    ],
    ['invalid: malformed JSON', 1, post('{"input_data": {"columns": ["text"], "data": [["x"]]'), 400],
    ['invalid: wrong types', 1, post(JSON.stringify({ input_data: { columns: ['text'], data: [[42]] } })), 400],
    [
      'invalid: index length',
      1,
      post(JSON.stringify({ input_data: { columns: ['text'], index: [0, 1], data: [['x']] } })),
      400,
    ],
    ['invalid: bad base64', 1, post(score([['!!!!not base64', '']])), 400],
    ['invalid: truncated JPEG', 1, post(score([[jpeg.subarray(0, jpeg.length >> 2).toString('base64'), '']])), 400],
    ['invalid: 20000x20000 PNG bomb', 1, post(score([[zeroPng(20_000, 20_000).toString('base64'), '']])), 400],
    [
      'invalid: header claims 100000x100000',
      1,
      post(score([[makePngHeaderOnly(100_000, 100_000).toString('base64'), '']])),
      400,
    ],
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

/** Percentiles of a list of milliseconds. */
function percentiles(values) {
  const sorted = [...values].sort((a, b) => a - b);
  const at = (q) => (sorted.length ? sorted[Math.min(sorted.length - 1, Math.floor(q * sorted.length))] : NaN);
  return { count: sorted.length, p50: at(0.5), p90: at(0.9), p99: at(0.99), max: sorted[sorted.length - 1] ?? NaN };
}

async function main() {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const child = spawn(
    process.execPath,
    [
      path.join(root, 'bin', 'clip-native.js'),
      'serve',
      '--model',
      args.model,
      '--port',
      String(port),
      '--device',
      args.device,
      '--dtype',
      args.dtype,
      '--log-level',
      'error',
    ],
    { stdio: ['ignore', 'inherit', 'inherit'] },
  );
  let exited = null;
  child.on('exit', (code, signal) => (exited = signal ?? code));
  await waitHealthy(base, child);

  // The server closes the connection after a body it cannot parse (fastify
  // does), and autocannon's latency histogram is wrong on connections that
  // get closed (it reports seconds where the answers take milliseconds). So
  // the requests that close run on connections of their own, whose latencies
  // are not reported; the latency figures come from the keep-alive
  // connections and from a probe that times valid requests on its own.
  const mix = requestMix();
  const closes = (label) => label === 'invalid: malformed JSON';
  const cycle = (entries) => {
    const out = [];
    for (let round = 0; out.length < entries.reduce((n, m) => n + m[1], 0); round++) {
      for (const [, weight, request] of entries) if (round < weight) out.push(request);
    }
    return out;
  };
  const keepAlive = cycle(mix.filter(([label]) => !closes(label)));
  const closing = cycle(mix.filter(([label]) => closes(label)));
  const closingConnections = Math.max(1, Math.round(connections / 16));
  const closingRate = Number(args['closing-rate']);

  const probeRequests = [mix[0][2], mix[1][2]];
  const agent = new http.Agent({ keepAlive: true, maxSockets: 1 });
  const send = (request) =>
    new Promise((resolve, reject) => {
      const started = process.hrtime.bigint();
      const body = request.body === undefined ? undefined : Buffer.from(request.body);
      const req = http.request(
        {
          host: '127.0.0.1',
          port,
          agent,
          method: request.method,
          path: request.path,
          headers: { ...request.headers, ...(body ? { 'content-length': body.length } : {}) },
        },
        (res) => {
          const chunks = [];
          res.on('data', (c) => chunks.push(c));
          res.on('end', () =>
            resolve({
              status: res.statusCode,
              ms: Number(process.hrtime.bigint() - started) / 1e6,
              body: Buffer.concat(chunks).toString(),
            }),
          );
        },
      );
      req.setTimeout(60_000, () => req.destroy(new Error('probe timeout')));
      req.on('error', reject);
      req.end(body);
    });
  for (let i = 0; i < 20; i++) await send(probeRequests[i % 2]);
  const want = JSON.parse((await send(probeRequests[0])).body);

  const load = { start: os.loadavg() };
  // RSS from /proc, and the V8 heap and external memory from GET /metrics, so
  // that growth can be told apart: JS heap, or native (malloc, libtorch).
  const heapMb = async () => {
    try {
      const text = await (await fetch(`${base}/metrics`)).text();
      const metric = (name) => Number(new RegExp(`^${name} (\\S+)`, 'm').exec(text)?.[1] ?? NaN) / 2 ** 20;
      return {
        heapUsed: metric('nodejs_heap_size_used_bytes'),
        heapTotal: metric('nodejs_heap_size_total_bytes'),
        external: metric('nodejs_external_memory_bytes'),
      };
    } catch {
      return {};
    }
  };
  const samples = [{ t: 0, ...rssMb(child.pid), ...(await heapMb()) }];
  const started = Date.now();
  const sampler = setInterval(async () => {
    if (exited !== null) return;
    const t = Math.round((Date.now() - started) / 1000);
    samples.push({ t, ...rssMb(child.pid), ...(await heapMb()) });
  }, 10_000);
  console.log(
    `soak: ${connections} connections (${closingConnections} of them for malformed JSON at ${closingRate}/s) for ${duration} s ` +
      `against ${base}, load ${load.start.map((l) => l.toFixed(2)).join(' ')}`,
  );

  // Valid requests timed one at a time beside the load, every 200 ms.
  const probeTimes = [];
  const probeFailures = [];
  let probing = true;
  const probeLoop = (async () => {
    for (let i = 0; probing; i++) {
      try {
        const answer = await send(probeRequests[i % 2]);
        if (answer.status === 200) probeTimes.push(answer.ms);
        else probeFailures.push(answer.status);
      } catch (error) {
        probeFailures.push(String(error));
      }
      await new Promise((resolve) => setTimeout(resolve, 200));
    }
  })();

  const [result, closingResult] = await Promise.all([
    autocannon({
      url: base,
      connections: connections - closingConnections,
      duration,
      requests: keepAlive,
      timeout: 60,
    }),
    // At a fixed rate: unthrottled, these cheap answers would crowd out the rest of the mix.
    autocannon({
      url: base,
      connections: closingConnections,
      duration,
      requests: closing,
      timeout: 60,
      overallRate: closingRate,
    }),
  ]);
  probing = false;
  await probeLoop;
  clearInterval(sampler);
  load.end = os.loadavg();
  samples.push({ t: Math.round((Date.now() - started) / 1000), ...rssMb(child.pid), ...(await heapMb()) });

  const after =
    exited === null ? await send(probeRequests[0]).catch((e) => ({ status: -1, body: String(e) })) : { status: -1 };
  let same;
  try {
    const got = JSON.parse(after.body);
    same = after.status === 200 && got[0].text_features.every((v, i) => Math.abs(v - want[0].text_features[i]) < 1e-5);
  } catch {
    same = false;
  }
  const byStatus = {};
  for (const r of [result, closingResult]) {
    for (const [status, { count }] of Object.entries(r.statusCodeStats ?? {}))
      byStatus[status] = (byStatus[status] ?? 0) + count;
  }
  const total = result.requests.total + closingResult.requests.total;
  const firstMinute = samples.filter((s) => s.t <= 60 && s.t > 0);
  const lastMinute = samples.filter((s) => s.t >= samples[samples.length - 1].t - 60);
  const avg = (xs) => xs.reduce((n, s) => n + s.rss, 0) / Math.max(1, xs.length);
  const growth = avg(lastMinute) - avg(firstMinute.length ? firstMinute : samples.slice(0, 1));
  const report = {
    duration,
    connections,
    closingConnections,
    closingRate,
    requests: total,
    requestsPerSecond: total / duration,
    byStatus,
    errors: result.errors + closingResult.errors,
    timeouts: result.timeouts + closingResult.timeouts,
    // autocannon's histogram of the keep-alive connections; Little's law gives their mean as a check.
    latencyMs: {
      p50: result.latency.p50,
      p90: result.latency.p90,
      p99: result.latency.p99,
      max: result.latency.max,
      mean: result.latency.mean,
      littleMean: ((connections - closingConnections) / result.requests.average) * 1000,
    },
    probeLatencyMs: percentiles(probeTimes),
    probeFailures: probeFailures.slice(0, 20),
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
  console.table({
    'all keep-alive requests (autocannon)': report.latencyMs,
    'valid requests (probe)': report.probeLatencyMs,
  });
  console.log(
    `${report.requestsPerSecond.toFixed(0)} requests/s, ${report.errors} errors, ${report.timeouts} timeouts, probe failures: ${probeFailures.length}`,
  );
  console.log(
    `RSS: ${report.rssMb.afterWarmup.toFixed(0)} MB after warm-up, ${report.rssMb.end.toFixed(0)} MB at the end, ` +
      `max sampled ${report.rssMb.max.toFixed(0)} MB, peak ${report.rssMb.peak.toFixed(0)} MB; ` +
      `first-minute average ${report.rssMb.firstMinuteAverage.toFixed(0)} MB, last-minute ${report.rssMb.lastMinuteAverage.toFixed(0)} MB`,
  );
  const last = samples[samples.length - 1];
  console.log(
    `V8 heap: ${samples[0].heapTotal?.toFixed(0)} MB total after warm-up, ${last.heapTotal?.toFixed(0)} MB at the end ` +
      `(${last.heapUsed?.toFixed(0)} MB used); external ${samples[0].external?.toFixed(0)} -> ${last.external?.toFixed(0)} MB`,
  );
  console.log(
    `load average: ${load.start.map((l) => l.toFixed(2)).join(' ')} at the start, ${load.end.map((l) => l.toFixed(2)).join(' ')} at the end`,
  );
  if (args.json) fs.writeFileSync(args.json, JSON.stringify(report, null, 2));

  agent.destroy();
  child.kill('SIGTERM');
  await new Promise((resolve) => (exited === null ? child.once('exit', resolve) : resolve()));
  const problems = [];
  if (!report.serverAlive) problems.push('the server exited during the soak');
  if (byStatus['500']) problems.push(`${byStatus['500']} answers were 500`);
  if (!same) problems.push('the valid request no longer gets its answer');
  if (probeFailures.length) problems.push(`${probeFailures.length} probe requests failed`);
  if (growth > Number(args['max-growth-mb']))
    problems.push(`RSS grew by ${growth.toFixed(0)} MB from the first to the last minute`);
  if (problems.length) {
    console.error(`soak FAILED: ${problems.join('; ')}`);
    process.exitCode = 1;
  } else {
    console.log(
      `soak passed: RSS growth first to last minute ${growth.toFixed(0)} MB (bound ${args['max-growth-mb']} MB)`,
    );
  }
}

if (require.main === module) {
  main().catch((error) => {
    console.error(error);
    process.exitCode = 1;
  });
}

module.exports = { requestMix };

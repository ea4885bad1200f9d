'use strict';
// `clip-native serve` under autocannon: latency p50/p99 of POST /score with one
// image row and with one text row, at 1 and 16 connections, and the server's
// event-loop delay during each run (prom-client's monitorEventLoopDelay
// histogram on GET /metrics, which resets at every scrape).
const net = require('node:net');
const path = require('node:path');
const { spawn } = require('node:child_process');
const autocannon = require('autocannon');

const root = path.resolve(__dirname, '..');

function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

async function waitHealthy(base, child, timeoutMs) {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    if (child.exitCode !== null) throw new Error(`clip-native serve exited (${child.exitCode})`);
    try {
      const res = await fetch(base + '/');
      if (res.status === 200) return;
    } catch {
      // not listening yet
    }
    await new Promise((resolve) => setTimeout(resolve, 250));
  }
  throw new Error('clip-native serve did not become healthy');
}

async function eventLoopDelay(base) {
  const text = await (await fetch(base + '/metrics')).text();
  const read = (name) => {
    const m = text.match(new RegExp(`^${name} ([0-9.eE+-]+)$`, 'm'));
    return m ? Number(m[1]) * 1e3 : undefined;
  };
  return {
    p50: read('nodejs_eventloop_lag_p50_seconds'),
    p99: read('nodejs_eventloop_lag_p99_seconds'),
    max: read('nodejs_eventloop_lag_max_seconds'),
  };
}

function cannon(options) {
  return new Promise((resolve, reject) => {
    autocannon(options, (error, result) => (error ? reject(error) : resolve(result)));
  });
}

/** Starts the server, runs every scenario, stops it; returns one row per scenario. */
async function runServe({ modelDir, imageBytes, caption, seconds, threads, dtype = 'float32' }) {
  const port = await freePort();
  const base = `http://127.0.0.1:${port}`;
  const child = spawn(
    process.execPath,
    [
      path.join(root, 'bin', 'clip-native.js'),
      'serve',
      '--model',
      modelDir,
      '--port',
      String(port),
      '--device',
      'cpu',
      '--dtype',
      dtype,
      '--threads',
      String(threads),
      '--log-level',
      'warn',
    ],
    { cwd: root, stdio: ['ignore', 'ignore', 'inherit'] },
  );
  const rows = [];
  try {
    await waitHealthy(base, child, 120_000);
    const bodies = {
      image: JSON.stringify({
        input_data: { columns: ['image', 'text'], index: [0], data: [[imageBytes.toString('base64'), '']] },
      }),
      text: JSON.stringify({ input_data: { columns: ['image', 'text'], index: [0], data: [['', caption]] } }),
    };
    for (const [kind, body] of Object.entries(bodies)) {
      const check = await fetch(base + '/score', {
        method: 'POST',
        headers: { 'content-type': 'application/json' },
        body,
      });
      if (check.status !== 200)
        throw new Error(`POST /score (${kind}) answered ${check.status}: ${await check.text()}`);
      for (const connections of [1, 16]) {
        await eventLoopDelay(base); // resets the histogram
        const result = await cannon({
          url: base + '/score',
          method: 'POST',
          headers: { 'content-type': 'application/json' },
          body,
          connections,
          duration: seconds,
        });
        const delay = await eventLoopDelay(base);
        rows.push({
          request: `1 ${kind} row`,
          dtype,
          connections,
          requestsPerSecond: result.requests.total / result.duration,
          latencyMs: { p50: result.latency.p50, p99: result.latency.p99, mean: result.latency.mean },
          eventLoopDelayMs: delay,
          non2xx: result.non2xx,
          errors: result.errors,
          requests: result.requests.total,
        });
      }
    }
  } finally {
    const exited = new Promise((resolve) => child.once('exit', resolve));
    if (child.exitCode === null) child.kill('SIGTERM');
    await exited;
  }
  return rows;
}

module.exports = { runServe };

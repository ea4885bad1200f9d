#!/usr/bin/env node
// npm run lint: eslint, prettier --check and tsc on the tests at the same time (each is single-threaded, so on
// two cores this takes about as long as eslint alone; package.json then runs lint:cpp when it exists).
// Prints each check's output as one block and exits non-zero when any check failed.
'use strict';
const { spawn } = require('node:child_process');
const path = require('node:path');

const root = path.resolve(__dirname, '..');
const bin = (name) => path.join(root, 'node_modules', '.bin', name);

const CHECKS = [
  ['eslint', bin('eslint'), ['.']],
  ['prettier', bin('prettier'), ['--check', '**/*.{ts,js,mjs}']],
  ['tsc (lib and tests)', bin('tsc'), ['-p', 'tsconfig.test.json']],
];

function run([name, command, args]) {
  return new Promise((resolve) => {
    const started = Date.now();
    const child = spawn(command, args, { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] });
    let output = '';
    child.stdout.on('data', (chunk) => (output += chunk));
    child.stderr.on('data', (chunk) => (output += chunk));
    child.on('error', (error) => resolve({ name, ok: false, output: `${error.message}\n`, ms: 0 }));
    child.on('close', (code) => resolve({ name, ok: code === 0, output, ms: Date.now() - started }));
  });
}

async function main() {
  const results = await Promise.all(CHECKS.map(run));
  for (const { name, ok, output, ms } of results) {
    console.log(`lint: ${name}: ${ok ? 'ok' : 'FAILED'} (${(ms / 1000).toFixed(1)} s)`);
    if (!ok) process.stdout.write(output.endsWith('\n') ? output : `${output}\n`);
  }
  const ok = results.every((r) => r.ok);
  return ok ? 0 : 1;
}

main().then((status) => process.exit(status));

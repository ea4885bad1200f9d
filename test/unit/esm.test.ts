// `import … from 'clip-native'` gives every runtime export of `require('clip-native')`, as the same objects.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import t from 'tap';
import { root } from '../helpers/env';

t.test('esm/index.mjs exports every name of dist/index.js', async (t) => {
  const cjsEntry = path.join(root, 'dist', 'index.js');
  if (!t.ok(fs.existsSync(cjsEntry), 'dist/ is built (npm run build:ts)')) return;
  const script = `
    import { createRequire } from 'node:module';
    import * as esm from ${JSON.stringify(pathToFileURL(path.join(root, 'esm', 'index.mjs')).href)};
    const cjs = createRequire(import.meta.url)(${JSON.stringify(cjsEntry)});
    const same = Object.keys(cjs).filter((name) => esm[name] === cjs[name]);
    console.log(JSON.stringify({ esm: Object.keys(esm), cjs: Object.keys(cjs), same }));`;
  const result = spawnSync(process.execPath, ['--input-type=module', '-e', script], { encoding: 'utf8' });
  t.equal(result.status, 0, result.stderr);
  const { esm, cjs, same } = JSON.parse(result.stdout) as { esm: string[]; cjs: string[]; same: string[] };
  t.ok(cjs.includes('ClipModel'), `dist/index.js exports ${cjs.join(', ')}`);
  t.same(
    esm.filter((name) => name !== 'default').sort(),
    [...cjs].sort(),
    'the ESM entry names exactly the CommonJS exports',
  );
  t.same(same.sort(), [...cjs].sort(), 'each ESM export is the CommonJS object itself');
});

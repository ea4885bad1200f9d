// The layers of lib/ stay apart: the library does not load the HTTP server or an HTTP client, and only the
// native layer and the model reach the raw binding.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { root } from '../helpers/env';

const lib = path.join(root, 'lib');

function sources(dir: string): string[] {
  return fs.readdirSync(dir, { withFileTypes: true }).flatMap((entry) => {
    const file = path.join(dir, entry.name);
    if (entry.isDirectory()) return sources(file);
    return entry.name.endsWith('.ts') ? [file] : [];
  });
}

/** The lib/ files a source file imports (relative imports, resolved, without extension). */
function imports(file: string): string[] {
  const text = fs.readFileSync(file, 'utf8');
  const specifiers = [...text.matchAll(/(?:from|import\()\s*'(\.[^']+)'/g)].map((m) => m[1]);
  return specifiers.map((s) => path.relative(lib, path.resolve(path.dirname(file), s)));
}

t.test("require('clip-native') loads neither node:http, node:https, node:dns nor the server", async (t) => {
  const dist = path.join(root, 'dist', 'index.js');
  if (!t.ok(fs.existsSync(dist), 'dist/ is built (npm run build:ts)')) return;
  const script = `
    require(${JSON.stringify(dist)});
    const builtins = process.moduleLoadList.filter((m) => m.startsWith('NativeModule ')).map((m) => m.slice(13));
    console.log(JSON.stringify({ builtins, files: Object.keys(require.cache) }));`;
  const result = spawnSync(process.execPath, ['-e', script], { encoding: 'utf8' });
  t.equal(result.status, 0, result.stderr);
  const { builtins, files } = JSON.parse(result.stdout) as { builtins: string[]; files: string[] };
  for (const name of ['http', 'https', 'dns']) t.notOk(builtins.includes(name), `node:${name} is not loaded`);
  t.ok(builtins.includes('fs'), 'the list of loaded builtins is read');
  const loaded = files.map((f) => path.relative(root, f));
  t.same(
    loaded.filter((f) => f.startsWith(path.join('dist', 'endpoint'))),
    [],
    'nothing of dist/endpoint/ is loaded',
  );
  t.same(
    loaded.filter((f) => /node_modules[\\/](fastify|pino|prom-client)[\\/]/.test(f)),
    [],
    'no server package is loaded',
  );
  t.ok(loaded.includes(path.join('dist', 'model.js')), 'the model is loaded');
});

t.test('only the native layer and the model import the raw binding; the library not the server', async (t) => {
  const files = sources(lib);
  t.ok(files.length > 20, `${files.length} sources`);
  for (const file of files) {
    const name = path.relative(lib, file);
    const used = imports(file);
    if (!name.startsWith(`native${path.sep}`) && name !== 'model.ts') {
      t.notOk(used.includes(path.join('native', 'binding')), `${name} does not import native/binding`);
    }
    if (!name.startsWith(`endpoint${path.sep}`) && !name.startsWith(`cli${path.sep}`)) {
      t.notOk(
        used.some((u) => u.startsWith(`endpoint${path.sep}`)),
        `${name} imports nothing from endpoint/`,
      );
    }
  }
});

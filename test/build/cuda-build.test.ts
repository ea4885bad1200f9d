// The CUDA code path compiles: model.cc against the headers of the CUDA build
// of the torch wheel (2.14.1 + CUDA 13) and the CUDA toolkit's headers. It
// needs no GPU; running it on one is a separate, manual check (README).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { python, root } from '../helpers/env';

const TORCH_CUDA = process.env.CLIP_CUDA_TORCH_SPEC || 'torch==2.14.1';
const cudaInclude = process.env.CUDA_HOME ? path.join(process.env.CUDA_HOME, 'include') : '/usr/local/cuda/include';
const cache = path.join(root, '.cache', 'cuda-torch');

function headersDir(): string | undefined {
  const marker = path.join(cache, 'torch', 'include', 'ATen', 'ATen.h');
  if (fs.existsSync(marker)) return path.join(cache, 'torch', 'include');
  const wheels = path.join(cache, 'wheels');
  fs.mkdirSync(wheels, { recursive: true });
  const download = spawnSync(
    python,
    ['-m', 'pip', 'download', '--no-deps', '--retries', '0', '--only-binary', ':all:', '-d', wheels, TORCH_CUDA],
    { encoding: 'utf8', env: { ...process.env, PIP_RETRIES: '0' } },
  );
  const wheel = fs.readdirSync(wheels).find((f) => f.startsWith('torch-') && f.endsWith('.whl'));
  if (download.status !== 0 || !wheel) return undefined;
  const extract = spawnSync(
    python,
    ['-c', `import sys, zipfile
z = zipfile.ZipFile(sys.argv[1])
for n in z.namelist():
    if n.startswith('torch/include/') or n == 'torch/version.py':
        z.extract(n, sys.argv[2])`, path.join(wheels, wheel), cache],
    { encoding: 'utf8' },
  );
  return extract.status === 0 && fs.existsSync(marker) ? path.join(cache, 'torch', 'include') : undefined;
}

const hasToolkit = fs.existsSync(path.join(cudaInclude, 'cuda_runtime_api.h'));

t.test('model.cc compiles with CUDA support', { skip: hasToolkit ? false : `no CUDA toolkit headers in ${cudaInclude}` }, async (t) => {
  const include = headersDir();
  if (!include) {
    t.skip(`${TORCH_CUDA} (CUDA build) could not be downloaded from the package index`, () => undefined);
    return;
  }
  const version = fs.readFileSync(path.join(include, '..', 'version.py'), 'utf8').match(/__version__ = '([^']+)'/)?.[1];
  t.match(version ?? '', /\+cu\d+/, `a CUDA build of torch (${version})`);
  const result = spawnSync(
    'g++',
    ['-std=c++20', '-fsyntax-only', '-Wall', '-DCLIP_WITH_CUDA=1', '-D_GLIBCXX_USE_CXX11_ABI=1', '-DCLIP_NATIVE_VERSION="syntax-check"',
      `-I${path.join(root, 'native', 'core')}`, `-I${path.join(root, 'native', 'core', 'prep')}`, `-I${include}`, `-I${path.join(include, 'torch', 'csrc', 'api', 'include')}`,
      `-I${cudaInclude}`, path.join(root, 'native', 'core', 'model.cc')],
    { encoding: 'utf8' },
  );
  t.equal(result.status, 0, result.stderr.split('\n').filter((l) => /error/.test(l)).slice(0, 10).join('\n'));
});

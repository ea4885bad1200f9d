// CLIP_NATIVE_MAX_CPU_ISA: a process capped at "avx2" runs the kernels of a CPU without AVX-512 (clip-native's
// float32 linear on AVX2 + FMA, the "avx2" candidate) and they agree with float32 through libtorch; lower caps take
// away what they name (without bfloat16 products, bfloat16 loads take the float32 linear on bfloat16 weights
// first, then on float32 ones); a bad value is refused at load. Each capped run is a process of its own: the cap is read
// once, when the addon loads.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { binding } from '../../lib/native/binding';
import { ClipModel } from '../../lib/index';
import { cosine, fixtureImages, fixtures, maxAbsDiff, tinyModel } from '../helpers/env';
import { embedInChild } from '../helpers/process';

const images = fixtureImages();
const texts = fs
  .readFileSync(path.join(fixtures, 'tokens', 'hf77.jsonl'), 'utf8')
  .split('\n')
  .filter(Boolean)
  .map((line) => (JSON.parse(line) as { text: string }).text);

interface ChildResult {
  cpuIsa: string[];
  info?: ClipModel['info'];
  vectors?: number[][];
  error?: { code: string; message: string };
}

function runCapped(cap: string, options: Record<string, unknown>): ChildResult {
  return embedInChild<ChildResult>(
    tinyModel,
    { device: 'cpu', ...options },
    { images, texts },
    { CLIP_NATIVE_MAX_CPU_ISA: cap },
  ).value;
}

const native = binding().cpuIsa;
const avx2 = native.includes('avx2') && native.includes('fma');

// The TorchScript reference: libtorch's own float32 linears on the frozen archive, in this (uncapped) process.
let referenceVectors: Float32Array[] | undefined;
async function reference(): Promise<Float32Array[]> {
  if (referenceVectors) return referenceVectors;
  const model = await ClipModel.load(tinyModel, { device: 'cpu', cpuKernels: 'aten' });
  try {
    referenceVectors = [
      ...(await model.embedImages(images.map((file) => fs.readFileSync(file)))),
      ...(await model.embedTexts(texts)),
    ];
  } finally {
    await model.dispose();
  }
  return referenceVectors;
}

const worstDiff = async (vectors: number[][]) => {
  const expected = await reference();
  return vectors.length === expected.length ? Math.max(...vectors.map((v, i) => maxAbsDiff(v, expected[i]))) : Infinity;
};
const worstCosine = async (vectors: number[][]) => {
  const expected = await reference();
  return vectors.length === expected.length ? Math.min(...vectors.map((v, i) => cosine(v, expected[i]))) : -1;
};

t.test(
  'capped at avx2: no AVX-512 anywhere, the AVX2 linear forced agrees with libtorch',
  { skip: !avx2 && 'needs AVX2 + FMA' },
  async (t) => {
    const run = runCapped('AVX2', { dtype: 'float32', cpuKernels: 'avx2' });
    t.notOk(run.error, 'loads');
    t.same(
      run.cpuIsa.filter((flag) => /avx512|amx|vnni/.test(flag)),
      [],
      'the addon reports no AVX-512, AMX or VNNI',
    );
    const kernels = run.info!.cpuKernels!;
    t.same([kernels.image, kernels.text, kernels.selectedBy], ['avx2', 'avx2', 'option'], 'the avx2 candidate, forced');
    t.ok(
      kernels.candidates.includes('avx2') && !kernels.candidates.includes('avx512'),
      `candidates ${kernels.candidates.join(', ')}`,
    );
    t.same(kernels.fusedMlps, { image: 2, text: 2 }, "each MLP as one operator of clip-native's linear");
    t.same(
      [kernels.layerNorms, kernels.fusedLayerNorms],
      [
        { image: 6, text: 5 },
        { image: 4, text: 3 },
      ],
      'LayerNorms, with their adds, on the AVX2 kernel',
    );
    // The attention's float32 tiles run on AVX2 as well (the rule takes them on a CPU that is not Intel's).
    t.equal(kernels.attentionKernel.selectedBy, 'rule', 'the attention kernel chosen by rule');
    const ownAttention = kernels.attentionKernel.kernel;
    t.same(
      [kernels.fusedAttentions, kernels.packedAttentions],
      [{ image: ownAttention ? 2 : 0, text: ownAttention ? 2 : 0 }, ownAttention ? 2 : 0],
      'attention layers fused where the kernel runs',
    );
    const worst = await worstDiff(run.vectors!);
    t.ok(worst <= 1e-5, `max abs diff to the TorchScript reference ${worst}`);

    const auto = runCapped('avx2', { dtype: 'float32' });
    const chosen = auto.info!.cpuKernels!;
    t.equal(chosen.selectedBy, 'calibration');
    t.ok(chosen.candidates.includes(chosen.image) && chosen.candidates.includes(chosen.text), 'auto picks a candidate');
  },
);

t.test(
  'capped at avx512_core: no bfloat16 or VNNI kernels',
  { skip: !native.includes('avx512f') && 'needs AVX-512F' },
  async (t) => {
    const run = runCapped('avx512_core', { dtype: 'bfloat16', cpuKernels: 'fixed' });
    t.notOk(run.error, 'loads');
    t.ok(run.cpuIsa.includes('avx512f'), 'AVX-512F stays');
    t.same(
      run.cpuIsa.filter((flag) => /bf16|vnni|vbmi|amx/.test(flag)),
      [],
      'no AVX512-BF16, VNNI, VBMI or AMX',
    );
    t.notOk(run.info!.cpuKernels!.candidates.includes('avx512-bf16'), 'no bfloat16 panel kernel among the candidates');
    // Without bfloat16 products in hardware, bfloat16 loads take clip-native's float32 linear first: on bfloat16
    // weights, then on float32 ones.
    const kernels = run.info!.cpuKernels!;
    t.same(
      [run.info!.dtype, kernels.candidates.slice(0, 2), kernels.image, kernels.text],
      ['bfloat16', ['avx512-bf16w', 'avx512'], 'avx512-bf16w', 'avx512-bf16w'],
      'the float32 linear on bfloat16 weights first',
    );
    t.same(kernels.fusedMlps, { image: 2, text: 2 }, 'MLPs fused');
    const cos = await worstCosine(run.vectors!);
    t.ok(cos >= 0.999, `min cosine to the TorchScript reference ${cos}`);
    t.ok((await worstDiff(run.vectors!)) > 0, 'the weights were rounded to bfloat16');
    const float32 = runCapped('avx512_core', { dtype: 'bfloat16', cpuKernels: 'avx512' });
    const worst = await worstDiff(float32.vectors!);
    t.ok(worst <= 1e-5, `avx512 forced: float32's embeddings, max abs diff to the TorchScript reference ${worst}`);
    const int8 = runCapped('avx512_core', { dtype: 'int8', cpuKernels: 'fixed' });
    t.notOk(int8.error, 'int8 loads');
    t.notOk(int8.info!.cpuKernels!.candidates.includes('avx512-vnni'), 'no int8 panel kernel among the candidates');
  },
);

t.test(
  'capped at avx2: bfloat16 loads take the AVX2 float32 linear on bfloat16 weights first',
  { skip: !avx2 && 'needs AVX2 + FMA' },
  async (t) => {
    const run = runCapped('avx2', { dtype: 'bfloat16', cpuKernels: 'fixed' });
    t.notOk(run.error, 'loads');
    const kernels = run.info!.cpuKernels!;
    t.same(
      [kernels.candidates, kernels.image, kernels.text],
      [['avx2-bf16w', 'avx2', 'autocast'], 'avx2-bf16w', 'avx2-bf16w'],
      'the AVX2 float32 linear on bfloat16 weights first',
    );
    t.same(kernels.fusedMlps, { image: 2, text: 2 }, 'MLPs fused');
    t.equal(kernels.attentionKernel.selectedBy, 'rule', 'the attention kernel by rule, for float32 products');
    const cos = await worstCosine(run.vectors!);
    t.ok(cos >= 0.999, `min cosine to the TorchScript reference ${cos}`);
    const float32 = runCapped('avx2', { dtype: 'bfloat16', cpuKernels: 'avx2' });
    const worst = await worstDiff(float32.vectors!);
    t.ok(worst <= 1e-5, `avx2 forced: float32's embeddings, max abs diff to the TorchScript reference ${worst}`);
  },
);

t.test('a value that is no level is refused at load', async (t) => {
  const run = runCapped('avx9000', { dtype: 'float32' });
  t.equal(run.error?.code, 'CLIP_INVALID_ARGUMENT');
  t.match(run.error?.message, /CLIP_NATIVE_MAX_CPU_ISA/);
  t.match(run.error?.message, /"avx2"/);
});

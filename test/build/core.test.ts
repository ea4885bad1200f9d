// The core's own C++ test programs (native/test, native/test/torch), built with the addon.
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { fixtures, reference, root } from '../helpers/env';

const buildDir = path.join(root, 'build');

function run(t: Test, name: string, args: string[], env: Record<string, string> = {}) {
  const binary = path.join(buildDir, name);
  if (!fs.existsSync(binary)) {
    t.fail(`${binary} is missing: run npm run build`);
    return;
  }
  const result = spawnSync(binary, args, { encoding: 'utf8', timeout: 300_000, env: { ...process.env, ...env } });
  const summary = result.stdout.trim().split('\n').pop() ?? '';
  t.equal(result.status, 0, `${name}: ${summary}\n${result.stdout.split('\n').filter((l) => /FAIL/i.test(l)).slice(0, 10).join('\n')}${result.stderr}`);
  t.match(summary, /^\d+ passed, 0 failed/);
}

t.test('tokenizer_test', async (t) => {
  const vocab = path.join(fixtures, 'vocab');
  run(t, 'tokenizer_test', [path.join(vocab, 'vocab.json'), path.join(vocab, 'merges.txt'), ...(reference ? [reference] : [])]);
});

t.test('image_test', async (t) => {
  run(t, 'image_test', reference ? [reference] : []);
});

// The resampler's AVX2 pass (the one CPUs without AVX-512 VBMI or VNNI run) against the generic one and Pillow's bytes.
t.test('image_test on AVX2 (CLIP_NATIVE_MAX_CPU_ISA=avx2)', async (t) => {
  run(t, 'image_test', reference ? [reference] : [], { CLIP_NATIVE_MAX_CPU_ISA: 'avx2' });
});

t.test('inflate_test', async (t) => {
  run(t, 'inflate_test', []);
});

// The tables' literal pairs built without AVX-512 (the scalar loop).
t.test('inflate_test on AVX2 (CLIP_NATIVE_MAX_CPU_ISA=avx2)', async (t) => {
  run(t, 'inflate_test', [], { CLIP_NATIVE_MAX_CPU_ISA: 'avx2' });
});

t.test('attention_test', async (t) => {
  run(t, 'attention_test', []);
});

t.test('attention_test under AddressSanitizer', async (t) => {
  // Leak checking is off: libtorch keeps its registries until exit.
  run(t, 'attention_test_asan', [], { ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1' });
});

// The same cases on the AVX2 tiles, which a CPU without AVX-512 runs (bfloat16 operands then take aten's path).
t.test('attention_test on AVX2 + FMA (CLIP_NATIVE_MAX_CPU_ISA=avx2)', async (t) => {
  run(t, 'attention_test', [], { CLIP_NATIVE_MAX_CPU_ISA: 'avx2' });
});

t.test('attention_test on AVX2 + FMA under AddressSanitizer', async (t) => {
  run(t, 'attention_test_asan', [], { CLIP_NATIVE_MAX_CPU_ISA: 'avx2', ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1' });
});

// Where the CPU has AMX-BF16, the bfloat16 cases above run on its tiles; capped below AMX, on AVX512-BF16.
t.test('attention_test without AMX (CLIP_NATIVE_MAX_CPU_ISA=avx512_core_bf16)', async (t) => {
  run(t, 'attention_test', [], { CLIP_NATIVE_MAX_CPU_ISA: 'avx512_core_bf16' });
});

t.test('norm_test', async (t) => {
  run(t, 'norm_test', []);
});

t.test('norm_test under AddressSanitizer', async (t) => {
  run(t, 'norm_test_asan', [], { ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1' });
});

// The float32 cases on the AVX2 kernel (bfloat16 then takes aten's path), under AddressSanitizer as well.
t.test('norm_test on AVX2 + FMA (CLIP_NATIVE_MAX_CPU_ISA=avx2)', async (t) => {
  run(t, 'norm_test', [], { CLIP_NATIVE_MAX_CPU_ISA: 'avx2' });
  run(t, 'norm_test_asan', [], { CLIP_NATIVE_MAX_CPU_ISA: 'avx2', ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1' });
});

t.test('allocator_test', async (t) => {
  run(t, 'allocator_test', []);
});

t.test('linear_test', async (t) => {
  run(t, 'linear_test', []);
});

// The forward thread held on its CPU and its OpenMP worker kept off it during a forward (cpu_team.h).
t.test('team_test', async (t) => {
  run(t, 'team_test', []);
});

t.test('team_test with CLIP_NATIVE_TEAM_PLACEMENT=0', async (t) => {
  run(t, 'team_test', ['off'], { CLIP_NATIVE_TEAM_PLACEMENT: '0' });
});

t.test('linear_test under AddressSanitizer', async (t) => {
  run(t, 'linear_test_asan', [], { ASAN_OPTIONS: 'detect_leaks=0:abort_on_error=1' });
});

// The benchmark's names for CPUs: one results table per CPU model, so two CPUs that virtual machines both show as
// a bare "AMD EPYC" must still get different names and file names.
import path from 'node:path';
import t from 'tap';
import { root } from '../helpers/env';

// eslint-disable-next-line @typescript-eslint/no-require-imports
const machine = require(path.join(root, 'bench', 'machine.js')) as {
  cpuName(info: string): string;
  cpuFlags(info: string): string[];
  cpuSlug(name: string, flags: string[], maxIsa?: string): string;
  maxCpuIsa(env: Record<string, string | undefined>): string | undefined;
};

const cpuinfo = (name: string, family: number, model: number, flags: string) =>
  `processor\t: 0\nvendor_id\t: x\ncpu family\t: ${family}\nmodel\t\t: ${model}\nmodel name\t: ${name}\n` +
  `stepping\t: 1\nflags\t\t: fpu ${flags}\n\nprocessor\t: 1\n`;

t.test('a bare model name gets the family and model numbers; a full one stays as it is', async (t) => {
  const zen4 = cpuinfo('AMD EPYC', 25, 17, 'avx2 avx512f avx512_bf16 avx512_vnni');
  const zen5 = cpuinfo('AMD EPYC', 26, 2, 'avx2 avx512f avx512_bf16 avx512_vnni');
  const xeon = cpuinfo('Intel(R) Xeon(R) Platinum 8488C', 6, 143, 'avx2 avx512f avx512_bf16 amx_bf16 amx_tile');
  t.equal(machine.cpuName(zen4), 'AMD EPYC (family 25, model 17)');
  t.equal(machine.cpuName(zen5), 'AMD EPYC (family 26, model 2)');
  t.equal(machine.cpuName(xeon), 'Intel(R) Xeon(R) Platinum 8488C');
  const slug = (info: string) => machine.cpuSlug(machine.cpuName(info), machine.cpuFlags(info));
  t.equal(slug(zen4), 'amd-epyc-family-25-model-17-avx512-bf16');
  t.equal(slug(zen5), 'amd-epyc-family-26-model-2-avx512-bf16');
  t.equal(slug(xeon), 'intel-xeon-platinum-8488c-amx');
});

t.test('a run with clip-native capped by CLIP_NATIVE_MAX_CPU_ISA gets a file of its own', async (t) => {
  const zen4 = cpuinfo('AMD EPYC', 25, 17, 'avx2 avx512f avx512_bf16 avx512_vnni');
  const name = machine.cpuName(zen4);
  const flags = machine.cpuFlags(zen4);
  t.equal(machine.maxCpuIsa({}), undefined, 'unset: no cap');
  t.equal(machine.maxCpuIsa({ CLIP_NATIVE_MAX_CPU_ISA: 'AVX2' }), 'avx2', 'read in any case, as clip-native reads it');
  t.equal(machine.cpuSlug(name, flags, 'avx2'), 'amd-epyc-family-25-model-17-avx512-bf16-max-avx2');
  t.equal(machine.cpuSlug(name, flags, 'avx512_core'), 'amd-epyc-family-25-model-17-avx512-bf16-max-avx512-core');
  t.not(machine.cpuSlug(name, flags, 'avx2'), machine.cpuSlug(name, flags), "never the CPU's own table");
});

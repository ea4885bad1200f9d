'use strict';
// What the benchmark ran on, and how busy the rest of the machine was while it
// ran: the load average counts the benchmark itself, so the meter also reports
// the CPU time that processes other than the benchmark's took (from /proc).
const fs = require('node:fs');
const os = require('node:os');
const { spawnSync } = require('node:child_process');

const TICKS = Number(spawnSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).stdout?.trim()) || 100;

function readCpuTicks() {
  try {
    const [line] = fs.readFileSync('/proc/stat', 'utf8').split('\n');
    const [user, nice, system, idle, iowait, irq, softirq, steal] = line.trim().split(/\s+/).slice(1).map(Number);
    return { busy: user + nice + system + irq + softirq, idle: idle + iowait, steal: steal || 0 };
  } catch {
    return undefined;
  }
}

function processTicks(pid) {
  try {
    const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return Number(fields[11]) + Number(fields[12]); // utime + stime, all threads
  } catch {
    return 0;
  }
}

/** Measures, between start() and stop(), the CPUs used by processes other than `pids()`. */
function loadMeter(pids) {
  let begin;
  const sample = () => ({
    at: process.hrtime.bigint(),
    cpu: readCpuTicks(),
    ours: pids().reduce((sum, pid) => sum + processTicks(pid), 0),
  });
  return {
    start() {
      begin = sample();
    },
    stop() {
      const end = sample();
      const seconds = Number(end.at - begin.at) / 1e9;
      const result = { seconds, loadAverage: os.loadavg() };
      if (begin.cpu && end.cpu) {
        const busy = (end.cpu.busy - begin.cpu.busy) / TICKS;
        const ours = (end.ours - begin.ours) / TICKS;
        result.benchCpus = ours / seconds;
        result.foreignCpus = Math.max(0, busy - ours) / seconds;
        result.stealCpus = (end.cpu.steal - begin.cpu.steal) / TICKS / seconds;
      }
      return result;
    },
  };
}

/** The ISA extensions the CPU kernels depend on, in the order the tables print them. */
const ISA_FLAGS = ['avx512f', 'avx512_bf16', 'amx_bf16', 'amx_int8', 'avx512_vnni', 'avx_vnni'];

function readCpuinfo() {
  try {
    return fs.readFileSync('/proc/cpuinfo', 'utf8');
  } catch {
    return '';
  }
}

/** The flags of /proc/cpuinfo that matter here (avx2, amx_tile and ISA_FLAGS), present ones only. */
function cpuFlags(info = readCpuinfo()) {
  const flags = new Set((info.match(/^flags\s*:\s*(.*)$/m)?.[1] ?? '').split(/\s+/));
  return ['avx2', ...ISA_FLAGS, 'amx_tile'].filter((f) => flags.has(f));
}

/**
 * The CPU model name: /proc/cpuinfo's "model name" (os.cpus() reads the same on Linux). Virtual machines often
 * show a bare "AMD EPYC" for every generation; a name without a model number gets the CPU family and model
 * numbers, so that different CPUs get different names (Zen 4 is family 25, Zen 5 family 26).
 */
function cpuName(info = readCpuinfo()) {
  const name = (info.match(/^model name\s*:\s*(.*)$/m)?.[1] ?? os.cpus()[0]?.model ?? 'unknown CPU').trim();
  const family = info.match(/^cpu family\s*:\s*(\d+)/m)?.[1];
  const model = info.match(/^model\s*:\s*(\d+)/m)?.[1];
  return /\d/.test(name) || family === undefined || model === undefined
    ? name
    : `${name} (family ${family}, model ${model})`;
}

/**
 * The class of the widest matrix instructions a CPU has, which decides which kernels can be fast on it:
 * `amx`, `avx512-bf16`, `avx512-vnni`, `avx512`, `avx2-vnni`, `avx2`, else `generic`.
 */
function isaClass(flags) {
  const has = (f) => flags.includes(f);
  if (has('amx_bf16') || has('amx_int8')) return 'amx';
  if (has('avx512_bf16')) return 'avx512-bf16';
  if (has('avx512_vnni')) return 'avx512-vnni';
  if (has('avx512f')) return 'avx512';
  if (has('avx_vnni')) return 'avx2-vnni';
  if (has('avx2')) return 'avx2';
  return 'generic';
}

/**
 * A file name for one CPU model: its name without trademarks, clock and core count, and its ISA class, e.g.
 * `amd-epyc-family-26-model-2-avx512-bf16` or `intel-xeon-platinum-8488c-amx`. Two machines with the same CPU model and
 * flags share a slug (a later run replaces the earlier one's table); any other CPU gets its own. A run with
 * clip-native capped by CLIP_NATIVE_MAX_CPU_ISA (`maxIsa`) gets `-max-<level>` after it, beside the CPU's own.
 */
function cpuSlug(name, flags, maxIsa) {
  const base = name
    .replace(/\((r|tm)\)/gi, ' ')
    .replace(/@.*$/, ' ')
    .replace(/\b(cpu|processor|\d+-core)\b/gi, ' ')
    .toLowerCase()
    .replace(/[^a-z0-9]+/g, '-')
    .replace(/^-+|-+$/g, '');
  const cap = maxIsa ? `-max-${maxIsa.toLowerCase().replace(/[^a-z0-9]+/g, '-')}` : '';
  return `${base || 'cpu'}-${isaClass(flags)}${cap}`;
}

/** CLIP_NATIVE_MAX_CPU_ISA as clip-native reads it (any case), or undefined when unset. */
function maxCpuIsa(env = process.env) {
  return env.CLIP_NATIVE_MAX_CPU_ISA ? env.CLIP_NATIVE_MAX_CPU_ISA.toLowerCase() : undefined;
}

async function machine(versions) {
  const cpus = os.cpus();
  const pythonTorch = versions.pytorch;
  return {
    cpu: cpuName(),
    logicalCpus: cpus.length,
    availableParallelism: os.availableParallelism(),
    cpuFlags: cpuFlags(),
    // The instruction-set cap clip-native ran under (its kernels, oneDNN and ATen), when one was set.
    maxCpuIsa: maxCpuIsa(),
    memoryGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    libtorch: versions.libtorch,
    // Threads one parallel loop of clip-native's own kernels ran on: 1 on a multi-core machine means an addon
    // built without libtorch's threading, and every figure of that run is off.
    parallelThreads: versions.parallelThreads,
    onnxruntimeNode: versions.onnxruntimeNode,
    transformersJs: versions.transformersJs,
    pytorch: pythonTorch,
  };
}

module.exports = { ISA_FLAGS, cpuFlags, cpuName, cpuSlug, isaClass, loadMeter, machine, maxCpuIsa };

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

function cpuFlags() {
  try {
    const info = fs.readFileSync('/proc/cpuinfo', 'utf8');
    const flags = new Set((info.match(/^flags\s*:\s*(.*)$/m)?.[1] ?? '').split(/\s+/));
    return ['avx2', 'avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_bf16', 'amx_tile'].filter((f) => flags.has(f));
  } catch {
    return [];
  }
}

async function machine(versions) {
  const cpus = os.cpus();
  const pythonTorch = versions.pytorch;
  return {
    cpu: cpus[0]?.model?.trim(),
    logicalCpus: cpus.length,
    availableParallelism: os.availableParallelism(),
    cpuFlags: cpuFlags(),
    memoryGiB: +(os.totalmem() / 2 ** 30).toFixed(1),
    os: `${os.type()} ${os.release()} ${os.arch()}`,
    node: process.version,
    libtorch: versions.libtorch,
    onnxruntimeNode: versions.onnxruntimeNode,
    transformersJs: versions.transformersJs,
    pytorch: pythonTorch,
  };
}

module.exports = { loadMeter, machine };

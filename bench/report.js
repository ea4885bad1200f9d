'use strict';
// Markdown of bench/run.js reports: one document per CPU model
// (bench/results/<cpu-slug>.md), the index bench/RESULTS.md that links them
// with one summary line each (followed by the hand-written log of what was
// tried, bench/optimizations.md), and the table that --quick prints.
const fs = require('node:fs');
const path = require('node:path');
const { ISA_FLAGS, cpuSlug } = require('./machine');

const ORT = 'onnxruntime-node fp32';
const NATIVE_DTYPES = ['fp32', 'bf16', 'int8'];

const fmt = (x, digits = 1) => (x === undefined || Number.isNaN(x) ? '—' : x.toFixed(digits));
const rate = (x) => (x >= 100 ? fmt(x, 0) : fmt(x, 1));

const CASE_TITLES = {
  image: 'Images',
  caption: 'Texts, captions of 5-20 words',
  long77: 'Texts of 77 tokens',
};

function table(report, kind) {
  const rows = report.results.filter((r) => (kind === 'image' ? r.encoder === 'image' : r.input === kind));
  if (!rows.length) return '';
  const impls = [...new Set(rows.flatMap((r) => Object.keys(r.impls)))];
  const ort = ORT;
  const ratios = NATIVE_DTYPES.map((d) => `clip-native ${d}`).filter((i) => impls.includes(i) && impls.includes(ort));
  const head = ['input', 'batch', ...impls, ...ratios.map((i) => `${i.replace('clip-native ', '')} / ORT`)];
  const lines = [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`];
  for (const r of rows) {
    const input =
      r.mode === 'model'
        ? r.encoder === 'image'
          ? 'pixels (model only)'
          : 'token ids (model only)'
        : r.encoder === 'image'
          ? 'JPEG/PNG bytes'
          : 'strings';
    const cells = impls.map((i) =>
      r.impls[i] ? `${rate(r.impls[i].itemsPerSecond)} · ${fmt(r.impls[i].latencyMs.p50, 0)} ms` : '—',
    );
    const ratioCells = ratios.map((i) =>
      r.impls[i] && r.impls[ort] ? `${fmt(r.impls[i].itemsPerSecond / r.impls[ort].itemsPerSecond, 2)}x` : '—',
    );
    lines.push(`| ${input} | ${r.batch} | ${cells.join(' | ')} | ${ratioCells.join(' | ')} |`);
  }
  return `### ${CASE_TITLES[kind]}\n\n${lines.join('\n')}\n`;
}

function ratioSummary(report) {
  const pairs = [
    ['clip-native fp32', 'onnxruntime-node fp32', 'clip-native fp32 / onnxruntime-node fp32'],
    ['clip-native bf16', 'onnxruntime-node fp32', 'clip-native bf16 / onnxruntime-node fp32'],
    ['clip-native int8', 'onnxruntime-node fp32', 'clip-native int8 / onnxruntime-node fp32'],
    ['clip-native bf16', 'clip-native fp32', 'clip-native bf16 / clip-native fp32'],
    ['clip-native int8', 'clip-native fp32', 'clip-native int8 / clip-native fp32'],
    ['clip-native fp32', 'clip-native fp32 stock graph', 'clip-native fp32 / its stock graph (before issue 8)'],
    ['clip-native fp32', 'PyTorch fp32', 'clip-native fp32 / PyTorch fp32'],
    ['clip-native fp16', 'PyTorch eager fp16', 'clip-native fp16 / PyTorch eager fp16'],
    ['clip-native bf16', 'PyTorch eager fp16', 'clip-native bf16 / PyTorch eager fp16'],
  ];
  const groups = [
    ['images, end to end', (r) => r.encoder === 'image' && r.mode === 'e2e'],
    ['images, model only', (r) => r.encoder === 'image' && r.mode === 'model'],
    ['texts, end to end', (r) => r.encoder === 'text' && r.mode === 'e2e'],
    ['texts, model only', (r) => r.encoder === 'text' && r.mode === 'model'],
  ];
  const lines = [
    '| ratio of items/s | ' + groups.map((g) => g[0]).join(' | ') + ' |',
    '| --- |' + groups.map(() => ' --- |').join(''),
  ];
  for (const [a, b, title] of pairs) {
    const cells = groups.map(([, pick]) => {
      const rows = report.results.filter((r) => pick(r) && r.impls[a] && r.impls[b]);
      if (!rows.length) return '—';
      const ratios = rows.map((r) => r.impls[a].itemsPerSecond / r.impls[b].itemsPerSecond);
      const geo = Math.exp(ratios.reduce((x, y) => x + Math.log(y), 0) / ratios.length);
      return `${fmt(geo, 2)}x (${fmt(Math.min(...ratios), 2)}-${fmt(Math.max(...ratios), 2)})`;
    });
    if (cells.some((c) => c !== '—')) lines.push(`| ${title} | ${cells.join(' | ')} |`);
  }
  return `## Summary\n\nGeometric mean over the batch sizes (and text lengths) of each group, (min-max) in brackets.\n\n${lines.join('\n')}\n`;
}

const rowOf = (report, encoder, mode, batch) =>
  report.results.find(
    (r) =>
      r.encoder === encoder && r.mode === mode && r.batch === batch && (encoder === 'image' || r.input === 'caption'),
  );

/** The ISA flags the kernels depend on, each present or absent. */
function isaLine(m) {
  const line = ISA_FLAGS.map((f) => `${f} ${m.cpuFlags.includes(f) ? 'yes' : 'no'}`).join(', ');
  if (!m.maxCpuIsa) return line;
  return (
    `${line}; **clip-native capped at \`${m.maxCpuIsa}\`** by CLIP_NATIVE_MAX_CPU_ISA (its own kernels, ` +
    "libtorch's oneDNN and ATen, whose caps PyTorch's worker inherits; onnxruntime-node, FBGEMM and MKL still " +
    'use everything the CPU has)'
  );
}

const reason = (report, id) => `n/a (${report.unavailable[id]})`;

/**
 * Items/s of clip-native, model only and end to end, each with its ratio to onnxruntime-node fp32 model-only
 * (same encoder and batch): the measure the performance targets are stated in. Images and captions.
 */
function againstOrt(report) {
  const batches = [
    ...new Set(report.results.filter((r) => r.encoder === 'image' || r.input === 'caption').map((r) => r.batch)),
  ].sort((x, y) => x - y);
  const columns = ['image', 'text'].flatMap((encoder) => batches.map((batch) => ({ encoder, batch })));
  const head = [
    'implementation',
    'input',
    ...columns.map((c) => `${c.encoder === 'image' ? 'images' : 'texts'}/s, batch ${c.batch}`),
  ];
  const lines = [`| ${head.join(' | ')} |`, `| ${head.map(() => '---').join(' | ')} |`];
  const ort = (c) => rowOf(report, c.encoder, 'model', c.batch)?.impls[ORT];
  lines.push(
    `| ${ORT} | model only | ${columns.map((c) => (ort(c) ? rate(ort(c).itemsPerSecond) : '—')).join(' | ')} |`,
  );
  for (const dtype of NATIVE_DTYPES) {
    const id = `clip-native ${dtype}`;
    if (report.unavailable?.[id]) {
      lines.push(`| ${id} | ${reason(report, id)} | ${columns.map(() => '—').join(' | ')} |`);
      continue;
    }
    for (const mode of ['model', 'e2e']) {
      const cells = columns.map((c) => {
        const mine = rowOf(report, c.encoder, mode, c.batch)?.impls[id];
        if (!mine) return '—';
        const base = ort(c);
        return base
          ? `${rate(mine.itemsPerSecond)} · **${fmt(mine.itemsPerSecond / base.itemsPerSecond, 2)}x**`
          : rate(mine.itemsPerSecond);
      });
      if (cells.some((c) => c !== '—')) {
        lines.push(`| ${id} | ${mode === 'model' ? 'model only' : 'end to end'} | ${cells.join(' | ')} |`);
      }
    }
  }
  return lines.join('\n') + '\n';
}

/** End to end over model only, per dtype, at batch 8: how much decoding and tokenizing cost the throughput. */
function endToEndShare(report, batch = 8) {
  const lines = ['| implementation | images | texts |', '| --- | --- | --- |'];
  for (const dtype of NATIVE_DTYPES) {
    const id = `clip-native ${dtype}`;
    if (report.unavailable?.[id]) {
      lines.push(`| ${id} | ${reason(report, id)} | — |`);
      continue;
    }
    const cells = ['image', 'text'].map((encoder) => {
      const e2e = rowOf(report, encoder, 'e2e', batch)?.impls[id];
      const model = rowOf(report, encoder, 'model', batch)?.impls[id];
      return e2e && model ? fmt(e2e.itemsPerSecond / model.itemsPerSecond, 2) : '—';
    });
    if (cells.some((c) => c !== '—')) lines.push(`| ${id} | ${cells.join(' | ')} |`);
  }
  return lines.length > 2 ? `End to end / model only, batch ${batch}:\n\n${lines.join('\n')}\n` : '';
}

function kernelLines(report) {
  return Object.entries(report.kernels ?? {}).map(([id, k]) => {
    const measured = (ms) =>
      Object.entries(ms ?? {})
        .map(([name, v]) => `${name} ${fmt(v, 2)}`)
        .join(', ');
    const image = measured(k.imageMsPerItem);
    const text = measured(k.textMsPerItem);
    // A calibration that built one candidate only (the others failed to build here or disagreed) times nothing.
    const timing =
      k.selectedBy !== 'calibration'
        ? ''
        : image || text
          ? ` (ms per item at load: image ${image || '—'}; text ${text || '—'})`
          : ' (the only candidate that built here: not timed)';
    const batchTimes = measured(k.imageBatchMsPerItem);
    const batch = k.imageBatch
      ? `; image batches of ${k.imageBatch.fromImages} or more \`${k.imageBatch.kernel}\``
      : '';
    const batchTiming = batchTimes ? ` (ms per image on 8 at load: ${batchTimes})` : '';
    return (
      `- ${id}: image \`${k.image}\`, text \`${k.text}\`, chosen by ${k.selectedBy} among ` +
      `${k.candidates.join(', ')}${timing}${batch}${batchTiming}`
    );
  });
}

/** One line for the index: clip-native end to end over onnxruntime-node fp32 model-only, images and captions. */
function summaryLine(report) {
  const batches = [1, 8].filter((b) => rowOf(report, 'image', 'model', b) || rowOf(report, 'text', 'model', b));
  const parts = NATIVE_DTYPES.map((dtype) => {
    const id = `clip-native ${dtype}`;
    if (report.unavailable?.[id]) return `${dtype} n/a`;
    const kinds = ['image', 'text'].map((encoder) => {
      const ratios = batches.map((b) => {
        const mine = rowOf(report, encoder, 'e2e', b)?.impls[id];
        const base = rowOf(report, encoder, 'model', b)?.impls[ORT];
        return mine && base ? `${fmt(mine.itemsPerSecond / base.itemsPerSecond, 2)}x` : '—';
      });
      return `${encoder === 'image' ? 'images' : 'texts'} ${ratios.join(' / ')}`;
    });
    return kinds.every((k) => /^\S+ (—( \/ )?)+$/.test(k)) ? `${dtype} not measured` : `${dtype} ${kinds.join(', ')}`;
  });
  return `batch ${batches.join(' / ')}: ${parts.join('; ')}`;
}

function machineLines(report) {
  const m = report.machine;
  const s = report.settings;
  return [
    `- CPU: ${m.cpu}, ${m.logicalCpus} logical CPUs, ${m.memoryGiB} GiB memory, ${m.os}`,
    `- ISA: ${isaLine(m)}`,
    `- Node.js ${m.node}; clip-native on libtorch ${m.libtorch}` +
      (m.parallelThreads ? ` (its own kernels on ${m.parallelThreads} threads)` : '') +
      `; onnxruntime-node ${m.onnxruntimeNode} ` +
      `through @huggingface/transformers ${m.transformersJs}` +
      (m.pytorch ? `; PyTorch ${m.pytorch} (Python)` : ''),
    `- ${s.threads} intra-op threads for every implementation; ${s.rounds} interleaved rounds, each case at ` +
      `least ${s.minSecondsPerMeasurement} s and 16 items per implementation per round; medians of the rounds`,
  ];
}

/** What `npm run bench -- --quick` prints. */
function quickMarkdown(report) {
  const out = [];
  out.push(`# clip-native quick benchmark: ${report.machine.cpu}\n`);
  out.push(...machineLines(report));
  const foreign = report.load.map((l) => fmt(l.foreignCpus, 2)).join(', ');
  const loads = Object.entries(report.loadSeconds ?? {}).map(([id, seconds]) => `${id} ${fmt(seconds, 1)} s`);
  out.push(`- Model loads (clip-native's include its kernel calibration): ${loads.join(', ') || '—'}`);
  out.push(`- Other processes during the rounds: ${foreign} CPUs busy; ${fmt(report.durationSeconds, 0)} s in all\n`);
  out.push(
    'Items/s (median of the rounds) · ratio to onnxruntime-node fp32 model-only at the same batch. Model ' +
      'only: pixels / token ids in; end to end: JPEG/PNG bytes / strings in. Texts: captions of 5-20 words.\n',
  );
  out.push(againstOrt(report));
  out.push(endToEndShare(report));
  const kernels = kernelLines(report);
  if (kernels.length) out.push('CPU kernels (`model.info.cpuKernels`):\n', ...kernels, '');
  if (report.parity?.length) {
    out.push(
      'Min cosine vs clip-native fp32: ' +
        report.parity.map((p) => `${p.impl} ${p.case} ${fmt(p.minCosine, 6)}`).join('; ') +
        '\n',
    );
  }
  return out.join('\n');
}

function markdown(report) {
  const m = report.machine;
  const s = report.settings;
  const out = [];
  const slug = cpuSlug(m.cpu, m.cpuFlags, m.maxCpuIsa);
  out.push(`# clip-native benchmark results: ${m.cpu}\n`);
  out.push(
    `Made by \`npm run bench\` (bench/run.js) on this CPU; the numbers are in ${slug}.json. ` +
      'Full-size ViT-B/32 with random weights (`bench/models/vit-b-32`, exporter seed 0) and the same weights ' +
      'exported to ONNX by tools/onnx_export.py.\n',
  );
  out.push(`Run ${report.date}, ${fmt(report.durationSeconds / 60, 1)} min.\n`);
  out.push('## Machine\n');
  out.push(...machineLines(report));
  const foreign = report.load.map((l) => fmt(l.foreignCpus, 2)).join(', ');
  const la = report.load.map((l) => l.loadAverage.map((x) => x.toFixed(1)).join('/')).join('; ');
  out.push(
    `- Other processes on the machine during the rounds: ${foreign} CPUs busy (per round; from /proc, the ` +
      `benchmark's own processes excluded). Load average at the end of each round (includes the benchmark): ${la}\n`,
  );

  out.push(ratioSummary(report));
  out.push('## Against onnxruntime-node fp32 model-only\n');
  out.push('Items/s · ratio to onnxruntime-node fp32 model-only at the same batch, images and captions.\n');
  out.push(againstOrt(report));
  out.push(endToEndShare(report));
  const kernels = kernelLines(report);
  if (kernels.length) out.push('CPU kernels (`model.info.cpuKernels`):\n', ...kernels, '');
  out.push('## Throughput\n');
  out.push(
    'Items per second (median of the rounds) · median latency of one call of `batch` items. ' +
      'Implementations, all on the CPU:\n',
  );
  out.push(
    '- **clip-native fp32 stock graph**: clip-native fp32 with `CLIP_NATIVE_CPU_GRAPH=0`, i.e. the ' +
      'TorchScript archive as loaded, without the load-time oneDNN graph (the state before issue 8), model-only cases.',
  );
  out.push(
    '- **clip-native** (a) *model only*: preprocessed pixels / token ids in through the engine ' +
      '(`_submit`), (b) *end to end*: `embedImages(JPEG/PNG bytes)`, `embedTexts(strings)`. Its engine splits ' +
      'a call into batches of at most `maxBatchImages` (16 on the CPU) images and `maxBatchTokens` (16 x 77 on ' +
      "the CPU) text tokens. bf16 = `dtype: 'bfloat16'`: the linears on bfloat16 weights packed at load; " +
      "int8 = `dtype: 'int8'`: int8 weights, activations quantized per call." +
      Object.keys(report.unavailable ?? {})
        .map((id) => ` ${id}: ${reason(report, id)}.`)
        .join(''),
  );
  out.push(
    '- **onnxruntime-node fp32** (c): transformers.js `CLIPVisionModelWithProjection` / ' +
      '`CLIPTextModelWithProjection` on the ONNX files, local only; end to end with its `AutoProcessor` ' +
      '(sharp decoding) and `AutoTokenizer`.',
  );
  out.push(
    '- **PyTorch** (d): the same TorchScript files in Python (`torch.jit.load`, `inference_mode`); ' +
      "end to end with Pillow + transformers' `CLIPImageProcessor` / `CLIPTokenizer`. The worker runs with " +
      `\`OMP_WAIT_POLICY=${s.pythonOmpWaitPolicy ?? 'unset'}\` (with libgomp's default spin-waiting it ran about 10x ` +
      'slower on this shared machine).',
  );
  out.push(
    '- Texts are padded to the longest of the batch by every implementation. Images: batch 1 is a ' +
      '640x480 JPEG; batches mix JPEG and PNG photos of 320-800 px.\n',
  );
  for (const kind of ['image', 'caption', 'long77']) out.push(table(report, kind));

  if (report.parity?.length) {
    out.push('## Agreement\n');
    out.push(
      'Smallest cosine similarity with clip-native fp32 over the items of the case ' +
        "(end-to-end image rows differ by the resizer: sharp vs clip-native's / Pillow's bicubic).\n",
    );
    out.push('| case | implementation | min cosine |');
    out.push('| --- | --- | --- |');
    for (const p of report.parity) out.push(`| ${p.case} | ${p.impl} | ${fmt(p.minCosine, 6)} |`);
    out.push('');
  }

  if (report.serve?.length) {
    out.push('## `clip-native serve` under autocannon\n');
    out.push(
      'POST /score with one row, autocannon in the benchmark process on the same machine (it shares the ' +
        "CPUs with the server). Event-loop delay of the server process during each run, from prom-client's " +
        '`monitorEventLoopDelay` histogram (10 ms sampling: an idle loop reads about 10 ms).\n',
    );
    out.push(
      '| request | dtype | connections | requests/s | p50 ms | p99 ms | event-loop delay p50 / p99 / max ms | non-2xx |',
    );
    out.push('| --- | --- | --- | --- | --- | --- | --- | --- |');
    for (const r of report.serve) {
      const d = r.eventLoopDelayMs;
      out.push(
        `| ${r.request} | ${r.dtype} | ${r.connections} | ${fmt(r.requestsPerSecond, 1)} | ${r.latencyMs.p50} | ` +
          `${r.latencyMs.p99} | ${fmt(d.p50, 1)} / ${fmt(d.p99, 1)} / ${fmt(d.max, 1)} | ${r.non2xx} |`,
      );
    }
    out.push('');
  }

  out.push('What was tried, on every CPU: [optimizations.md](../optimizations.md).\n');
  return out.join('\n');
}

/** The full runs' reports in `resultsDir` (not --quick's), by file name. */
function fullReports(resultsDir) {
  if (!fs.existsSync(resultsDir)) return [];
  return fs
    .readdirSync(resultsDir)
    .filter((f) => f.endsWith('.json') && !f.endsWith('-quick.json'))
    .sort()
    .map((f) => ({
      name: f.slice(0, -'.json'.length),
      report: JSON.parse(fs.readFileSync(path.join(resultsDir, f), 'utf8')),
    }));
}

/** bench/RESULTS.md: one line per CPU model with a full run, linking its document, then optimizations.md. */
function indexMarkdown(resultsDir) {
  const out = ['# clip-native benchmark results\n'];
  out.push(
    '`npm run bench` (bench/run.js) writes one document per CPU model it runs on, ' +
      '`results/<cpu>.md` with its numbers in `results/<cpu>.json`, and this index; a run on one CPU never ' +
      "replaces another CPU's. Full-size ViT-B/32 with random weights (exporter seed 0) and the same weights " +
      'exported to ONNX. `npm run bench -- --quick` prints the clip-native rows of these documents in a few ' +
      'minutes.\n',
  );
  out.push('| CPU | ISA | run | clip-native end to end / onnxruntime-node fp32 model-only, images and captions |');
  out.push('| --- | --- | --- | --- |');
  for (const { name, report } of fullReports(resultsDir)) {
    const m = report.machine;
    const flags = ISA_FLAGS.filter((f) => m.cpuFlags.includes(f)).join(' ') || 'none of ' + ISA_FLAGS.join(', ');
    out.push(
      `| [${m.cpu}${m.maxCpuIsa ? `, clip-native capped at ${m.maxCpuIsa}` : ''}](results/${name}.md) | ${flags} | ${report.date.slice(0, 10)}, ${m.logicalCpus} CPUs | ` +
        `${summaryLine(report)} |`,
    );
  }
  out.push('');
  // Hand-written notes: what was tried on the CPU, and how the GPU figures are made.
  for (const name of ['optimizations.md', 'gpu.md']) {
    const notes = path.join(__dirname, name);
    if (fs.existsSync(notes)) out.push(fs.readFileSync(notes, 'utf8'));
  }
  return out.join('\n');
}

module.exports = { indexMarkdown, markdown, quickMarkdown, summaryLine };

if (require.main === module) {
  // Re-renders every CPU's document and the index from the JSON (after editing this file or optimizations.md).
  const dir = process.argv[2] || __dirname;
  const resultsDir = path.join(dir, 'results');
  for (const { name, report } of fullReports(resultsDir))
    fs.writeFileSync(path.join(resultsDir, `${name}.md`), markdown(report));
  fs.writeFileSync(path.join(dir, 'RESULTS.md'), indexMarkdown(resultsDir));
}

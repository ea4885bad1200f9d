'use strict';
// Markdown of a bench/run.js report. The hand-written log of what was tried
// (bench/optimizations.md) is appended, so RESULTS.md stays one document.
const fs = require('node:fs');
const path = require('node:path');

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
  const ort = 'onnxruntime-node fp32';
  const ratios = ['clip-native fp32', 'clip-native bf16'].filter((i) => impls.includes(i) && impls.includes(ort));
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
    const ratioCells = ratios.map((i) => `${fmt(r.impls[i].itemsPerSecond / r.impls[ort].itemsPerSecond, 2)}x`);
    lines.push(`| ${input} | ${r.batch} | ${cells.join(' | ')} | ${ratioCells.join(' | ')} |`);
  }
  return `### ${CASE_TITLES[kind]}\n\n${lines.join('\n')}\n`;
}

function ratioSummary(report) {
  const pairs = [
    ['clip-native fp32', 'onnxruntime-node fp32', 'clip-native fp32 / onnxruntime-node fp32'],
    ['clip-native bf16', 'onnxruntime-node fp32', 'clip-native bf16 / onnxruntime-node fp32'],
    ['clip-native bf16', 'clip-native fp32', 'clip-native bf16 / clip-native fp32'],
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

function markdown(report) {
  const m = report.machine;
  const s = report.settings;
  const out = [];
  out.push('# clip-native benchmark results\n');
  out.push(
    'Made by `npm run bench` (bench/run.js); the numbers are in bench/RESULTS.json. ' +
      'Full-size ViT-B/32 with random weights (`bench/models/vit-b-32`, exporter seed 0) and the same weights ' +
      'exported to ONNX by tools/onnx_export.py.\n',
  );
  out.push(`Run ${report.date}, ${fmt(report.durationSeconds / 60, 1)} min.\n`);
  out.push('## Machine\n');
  out.push(
    `- CPU: ${m.cpu}, ${m.logicalCpus} logical CPUs (${m.cpuFlags.join(', ')}), ${m.memoryGiB} GiB memory, ${m.os}`,
  );
  out.push(
    `- Node.js ${m.node}; clip-native on libtorch ${m.libtorch}; onnxruntime-node ${m.onnxruntimeNode} ` +
      `through @huggingface/transformers ${m.transformersJs}; PyTorch ${m.pytorch ?? '—'} (Python)`,
  );
  out.push(
    `- ${s.threads} intra-op threads for every implementation; ${s.rounds} rounds, ` +
      `each case at least ${s.minSecondsPerMeasurement} s per implementation per round`,
  );
  const foreign = report.load.map((l) => fmt(l.foreignCpus, 2)).join(', ');
  const la = report.load.map((l) => l.loadAverage.map((x) => x.toFixed(1)).join('/')).join('; ');
  out.push(
    `- Other processes on the machine during the rounds: ${foreign} CPUs busy (per round; from /proc, the ` +
      `benchmark's own processes excluded). Load average at the end of each round (includes the benchmark): ${la}\n`,
  );

  out.push(ratioSummary(report));
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
      "the CPU) text tokens. bf16 = `dtype: 'bfloat16'`: the linears on bfloat16 weights packed at load.",
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

  // Hand-written notes: what was tried on the CPU, and how the GPU figures are made.
  for (const name of ['optimizations.md', 'gpu.md']) {
    const notes = path.join(__dirname, name);
    if (fs.existsSync(notes)) out.push(fs.readFileSync(notes, 'utf8'));
  }
  return out.join('\n');
}

module.exports = { markdown };

if (require.main === module) {
  // Re-renders RESULTS.md from RESULTS.json (after editing optimizations.md).
  const dir = process.argv[2] || __dirname;
  const report = JSON.parse(fs.readFileSync(path.join(dir, 'RESULTS.json'), 'utf8'));
  fs.writeFileSync(path.join(dir, 'RESULTS.md'), markdown(report));
}

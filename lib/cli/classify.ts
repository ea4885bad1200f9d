import fs from 'node:fs/promises';
import { ClipModel, type Device, type DType } from '../model';
import { parseCommandLine, required, UsageError } from './common';

const USAGE = `Usage: clip-native classify --model DIR --labels a,b,c [options] IMAGE...

Zero-shot classification of image files against text labels: one table per
image, best label first, with score (softmax over the labels) and cosine.

Options:
  --model DIR          model directory (required)
  --labels LIST        comma-separated labels (required)
  --template T         prompt template with {} for the label; repeat to average several
                       (default "a photo of a {}.")
  --device D           auto | cpu | cuda | cuda:N (default auto)
  --dtype T            float32 | bfloat16 | float16 | int8 (default float32)
  --json               one JSON line per image instead of tables
  -h, --help           this help
`;

/** `clip-native classify`: resolves to the exit status. */
export async function runClassify(args: string[]): Promise<number> {
  const { values, positionals } = parseCommandLine(
    args,
    {
      model: { type: 'string' },
      labels: { type: 'string' },
      template: { type: 'string', multiple: true },
      device: { type: 'string' },
      dtype: { type: 'string' },
      json: { type: 'boolean' },
    },
    true,
  );
  if (values.help) {
    process.stdout.write(USAGE);
    return 0;
  }
  const directory = required(values, 'model');
  const labels = required(values, 'labels')
    .split(',')
    .map((label) => label.trim())
    .filter((label) => label.length > 0);
  if (labels.length === 0) throw new UsageError('--labels must name at least one label');
  if (positionals.length === 0) throw new UsageError('expected at least one IMAGE file');
  const templates = values.template as string[] | undefined;
  for (const template of templates ?? []) {
    if (!template.includes('{}')) throw new UsageError(`--template must contain {}, not "${template}"`);
  }
  const model = await ClipModel.load(directory, {
    device: (values.device as Device | undefined) ?? 'auto',
    dtype: (values.dtype as DType | undefined) ?? 'float32',
  });
  try {
    for (const file of positionals) {
      const results = await model.zeroShot(await fs.readFile(file), labels, { template: templates });
      if (values.json) {
        process.stdout.write(`${JSON.stringify({ image: file, data: results })}\n`);
        continue;
      }
      const width = Math.max(5, ...labels.map((label) => label.length));
      const lines = [file, `  ${'label'.padEnd(width)}   score   cosine`];
      for (const { label, score, cosine } of results) {
        lines.push(`  ${label.padEnd(width)}  ${score.toFixed(4)}  ${cosine.toFixed(4).padStart(7)}`);
      }
      process.stdout.write(`${lines.join('\n')}\n`);
    }
  } finally {
    await model.dispose();
  }
  return 0;
}

import { runExport } from './export';
import { UsageError } from './common';

const USAGE = `Usage: clip-native <command> [options]

Commands:
  serve    the online endpoint (POST /score, Azure ML CLIP embeddings wire format)
  batch    the batch job (Azure batch endpoint inputs and outputs)
  classify zero-shot classification of image files against text labels
  pull     download and convert a Hugging Face model (default openai/clip-vit-base-patch32), print its directory
  export   write a model directory from a Hugging Face repo id or checkpoint folder, or a random-weight one

Run "clip-native <command> --help" for a command's options.
`;

type Command = (args: string[]) => Promise<number> | number;

const COMMANDS: Record<string, () => Promise<Command>> = {
  serve: async () => (await import('./serve')).runServe,
  batch: async () => (await import('./batch')).runBatch,
  pull: async () => (await import('./pull')).runPull,
  export: async () => runExport,
  classify: async () => (await import('./classify')).runClassify,
};

/** Runs one command line; resolves to the exit status. */
export async function main(args: string[]): Promise<number> {
  const [name, ...rest] = args;
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(USAGE);
    return name === undefined ? 2 : 0;
  }
  const load = COMMANDS[name];
  if (!load) {
    process.stderr.write(`clip-native: unknown command "${name}" (expected serve, batch, pull, classify or export)\n`);
    return 2;
  }
  try {
    return await (
      await load()
    )(rest);
  } catch (error) {
    if (error instanceof UsageError) {
      process.stderr.write(`clip-native ${name}: ${error.message}\n`);
      return 2;
    }
    const e = error as { code?: string; message?: string };
    process.stderr.write(`clip-native ${name}: ${e.code ? `${e.code}: ` : ''}${e.message ?? String(error)}\n`);
    return 1;
  }
}

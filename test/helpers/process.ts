// Child processes of the tests: `clip-native serve` and its log, and scripts whose answer is one line of JSON.
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import path from 'node:path';
import type { Readable } from 'node:stream';
import { root } from './env';

/** The command line entry point (runs dist/, so `npm run build:ts` must have run). */
export const bin = path.join(root, 'bin', 'clip-native.js');

/**
 * Runs Node with `args` in a fresh process (working directory the package root, `env` added to this process's) and
 * returns the JSON of the last line it printed, and its stderr; throws with its stderr if it exits non-zero.
 */
export function nodeJson<T>(args: string[], env: Record<string, string> = {}): { value: T; stderr: string } {
  const result = spawnSync(process.execPath, args, {
    cwd: root,
    encoding: 'utf8',
    env: { ...process.env, ...env },
    maxBuffer: 64 << 20,
  });
  if (result.status !== 0) throw new Error(`child failed (${result.status}):\n${result.stderr}`);
  return { value: JSON.parse(result.stdout.trim().split('\n').pop()!) as T, stderr: result.stderr };
}

/** Runs `script` as nodeJson does (`node -e`) and returns the JSON of its last line. */
export function scriptJson<T>(script: string, env: Record<string, string> = {}): T {
  return nodeJson<T>(['-e', script], env).value;
}

/**
 * test/helpers/embed-child.js in a fresh process (nodeJson): loads `model` with `options`, embeds `inputs` (image
 * paths and texts) and answers as that script says.
 */
export function embedInChild<T>(
  model: string,
  options: Record<string, unknown>,
  inputs: { images: string[]; texts: string[] },
  env: Record<string, string> = {},
): { value: T; stderr: string } {
  const script = path.join(root, 'test', 'helpers', 'embed-child.js');
  return nodeJson<T>([script, model, JSON.stringify(options), JSON.stringify(inputs)], env);
}

/** Calls `onLine` with each complete line of a stream, without its newline. */
export function onLines(stream: Readable, onLine: (line: string) => void): void {
  let buffered = '';
  stream.on('data', (chunk: Buffer) => {
    buffered += chunk.toString();
    let newline: number;
    while ((newline = buffered.indexOf('\n')) >= 0) {
      const line = buffered.slice(0, newline);
      buffered = buffered.slice(newline + 1);
      onLine(line);
    }
  });
}

/** The port in serve's first log line ("listening at http://127.0.0.1:PORT"), or undefined. */
export function listeningPort(line: string): number | undefined {
  const match = /listening at http:\/\/127\.0\.0\.1:(\d+)/.exec(line);
  return match ? Number(match[1]) : undefined;
}

/** A child's stdout log lines (pino JSON), and a wait for the first whose msg matches. */
export function readLog(child: ChildProcess) {
  const lines: string[] = [];
  const entries: Array<Record<string, any>> = [];
  const waiters: Array<{ pattern: RegExp; resolve: (entry: Record<string, any>) => void }> = [];
  const check = () => {
    for (let i = waiters.length - 1; i >= 0; i--) {
      const found = entries.find((entry) => waiters[i].pattern.test(String(entry.msg)));
      if (found) waiters.splice(i, 1)[0].resolve(found);
    }
  };
  onLines(child.stdout!, (line) => {
    lines.push(line);
    try {
      entries.push(JSON.parse(line));
    } catch {
      // not a log line
    }
    check();
  });
  return {
    lines,
    waitFor(pattern: RegExp): Promise<Record<string, any>> {
      return new Promise((resolve, reject) => {
        waiters.push({ pattern, resolve });
        check();
        child.once('exit', (code) =>
          reject(new Error(`the process exited (${code}) before logging ${pattern}:\n${lines.join('\n')}`)),
        );
      });
    },
  };
}

/** Starts `clip-native serve` with the tiny model on a free port of 127.0.0.1 (more arguments after). */
export function spawnServe(args: string[], options: { env?: NodeJS.ProcessEnv; model: string }): ChildProcess {
  return spawn(process.execPath, [bin, 'serve', '--model', options.model, '--port', '0', '--device', 'cpu', ...args], {
    env: options.env ?? process.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
}

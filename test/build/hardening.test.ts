// The torch-free core under the sanitizers (native/fuzz, scripts/sanitize.sh):
// native/test's programs built with clang -fsanitize=address,undefined, and a
// short libFuzzer run of each fuzz target (image decode + preprocess, the
// tokenizer with the real vocabulary, the PNG path's inflate against zlib's). Any sanitizer report, leak, contract
// violation or crash fails the test, with the input that caused it.
//
// scripts/setup.sh installs clang; without it this test fails unless
// CLIP_SKIP_SANITIZERS=1 says to skip it. CLIP_FUZZ_SECONDS sets the
// length of each fuzz run (default 60).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import t, { type Test } from 'tap';
import { fixtures, reference, root, tempDir } from '../helpers/env';

const script = path.join(root, 'scripts', 'sanitize.sh');
const buildDir = path.join(root, 'build-fuzz');
const fuzzSeconds = Number(process.env.CLIP_FUZZ_SECONDS || 60);
const skip = process.env.CLIP_SKIP_SANITIZERS === '1' ? 'CLIP_SKIP_SANITIZERS=1' : false;

// A cold build, three sanitized test programs and three fuzz runs: more than the
// 600 s that package.json gives a test file on a slow, shared machine.
t.setTimeout(20 * 60_000);

const sanitizerEnv = {
  ...process.env,
  CLIP_FUZZ_BUILD_DIR: buildDir,
  ASAN_OPTIONS: 'abort_on_error=1:detect_leaks=1:strict_string_checks=1:detect_stack_use_after_return=1',
  UBSAN_OPTIONS: 'print_stacktrace=1:halt_on_error=1',
};

function tail(text: string, lines: number): string {
  return text.split('\n').slice(-lines).join('\n');
}

function hasClang(): boolean {
  return spawnSync('clang++', ['--version'], { encoding: 'utf8' }).status === 0;
}

t.test('sanitizer builds of the core', { skip }, async (t) => {
  if (!hasClang()) {
    t.fail('clang++ is missing: run npm run setup (it installs clang), or set CLIP_SKIP_SANITIZERS=1');
    return;
  }
  const build = spawnSync('bash', [script, 'build'], { cwd: root, env: sanitizerEnv, encoding: 'utf8', timeout: 900_000 });
  if (build.status !== 0) {
    t.fail(`scripts/sanitize.sh build exited ${build.status ?? build.signal}\n${tail(build.stdout + build.stderr, 40)}`);
    return;
  }

  const runProgram = (t: Test, name: string, args: string[]) => {
    const result = spawnSync(path.join(buildDir, name), args, {
      cwd: root,
      env: sanitizerEnv,
      encoding: 'utf8',
      timeout: 600_000,
      maxBuffer: 64 << 20,
    });
    const summary = result.stdout.trim().split('\n').pop() ?? '';
    const failures = result.stdout.split('\n').filter((l) => /FAIL/i.test(l)).slice(0, 10).join('\n');
    if (result.status === 0) t.pass(`${name} under ASan/UBSan exited 0`);
    else t.fail(`${name} under ASan/UBSan exited ${result.status ?? result.signal}: ${summary}\n${failures}\n${tail(result.stderr, 60)}`);
    t.match(summary, /^\d+ passed, 0 failed/);
    t.notMatch(result.stderr, /runtime error:|AddressSanitizer|LeakSanitizer/, `${name}: no sanitizer report`);
  };

  t.test('tokenizer_test', async (t) => {
    const vocab = path.join(fixtures, 'vocab');
    runProgram(t, 'tokenizer_test', [path.join(vocab, 'vocab.json'), path.join(vocab, 'merges.txt'), ...(reference ? [reference] : [])]);
  });

  t.test('image_test', async (t) => {
    runProgram(t, 'image_test', reference ? [reference] : []);
  });

  t.test('inflate_test', async (t) => {
    runProgram(t, 'inflate_test', []);
  });

  for (const target of ['image_fuzzer', 'tokenizer_fuzzer', 'inflate_fuzzer']) {
    t.test(`${target}: ${fuzzSeconds} s without a finding`, async (t) => {
      const work = tempDir(`fuzz-${target}`);
      t.teardown(() => fs.rmSync(work, { recursive: true, force: true }));
      const result = spawnSync('bash', [script, 'fuzz', String(fuzzSeconds), '1', target], {
        cwd: root,
        env: { ...sanitizerEnv, CLIP_FUZZ_WORK: work },
        encoding: 'utf8',
        timeout: (fuzzSeconds + 300) * 1000,
        maxBuffer: 256 << 20,
      });
      const output = result.stdout + result.stderr;
      const findingsDir = path.join(work, `${target}-findings`);
      const findings = fs.existsSync(findingsDir) ? fs.readdirSync(findingsDir) : [];
      // A finding's bytes go into the log, so a CI failure can be reproduced
      // with `build-fuzz/<target> <file>` from them.
      const evidence = findings
        .slice(0, 3)
        .map((name) => `${name} (base64): ${fs.readFileSync(path.join(findingsDir, name)).subarray(0, 8192).toString('base64')}`)
        .join('\n');
      if (result.status === 0) {
        t.pass(`${target} exited 0`);
      } else {
        const report = output.split('\n').filter((l) => !/^#\d+\s+(NEW|REDUCE|pulse|RELOAD)/.test(l));
        t.fail(`${target} exited ${result.status ?? result.signal}\n${tail(report.join('\n'), 80)}\n${evidence}`);
      }
      t.same(findings, [], `${target}: no crash, leak or timeout inputs`);
      const runs = /stat::number_of_executed_units:\s+(\d+)/.exec(output);
      t.ok(runs && Number(runs[1]) > 0, `${target}: ran ${runs?.[1] ?? 'no'} inputs`);
      t.comment(`${target}: ${runs?.[1]} executions in ${fuzzSeconds} s`);
    });
  }
});

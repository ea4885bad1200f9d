// The error code list exists once in C++ and once in TypeScript; they must agree.
import fs from 'node:fs';
import path from 'node:path';
import t from 'tap';
import { binding } from '../../lib/native/binding';
import { ClipError, ERROR_CODES } from '../../lib/index';
import { root } from '../helpers/env';

t.test('the C++ and TypeScript code lists are equal', async (t) => {
  const header = fs.readFileSync(path.join(root, 'native', 'core', 'prep', 'errors.h'), 'utf8');
  const fromHeader = [...header.matchAll(/X\(k\w+, "(CLIP_[A-Z_]+)"\)/g)].map((m) => m[1]);
  t.ok(fromHeader.length >= 10, 'the header lists the codes');
  t.same([...ERROR_CODES], fromHeader, 'errors.h and lib/errors.ts list the same codes in the same order');
  t.same(binding().errorCodes, fromHeader, 'the compiled addon reports the same list');
});

t.test('ClipError carries a code and an optional index', async (t) => {
  const e = new ClipError('CLIP_QUEUE_FULL', 'full', { index: 3 });
  t.ok(e instanceof Error);
  t.equal(e.name, 'ClipError');
  t.equal(e.code, 'CLIP_QUEUE_FULL');
  t.equal(e.index, 3);
});

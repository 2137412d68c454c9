/** One catalog: src/errors.ts, the native list (native/src/common.h) and docs/errors.md agree. */
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { expect, test } from 'vitest';
import { ERRORS, WeftError, toWeftError } from '../src/errors.js';

const root = join(import.meta.dirname, '..');
const catalog = Object.keys(ERRORS).sort();

test('every catalog code is documented in docs/errors.md, and nothing else is', () => {
  const doc = readFileSync(join(root, 'docs', 'errors.md'), 'utf8');
  const documented = [...doc.matchAll(/^\| `(WEFT_[A-Z_]+)` \| (\d+) \|/gm)];
  expect(documented.map((m) => m[1]).sort()).toEqual(catalog);
  for (const m of documented) expect(Number(m[2]), m[1]).toBe(ERRORS[m[1] as keyof typeof ERRORS].status);
});

/** Codes raised only by the TypeScript layers (scheduler, gateway), never by native code. */
const TS_ONLY = [
  'WEFT_OVERLOADED',
  'WEFT_BAD_FRAME',
  'WEFT_UNKNOWN_TYPE',
  'WEFT_FRAME_TOO_LARGE',
  'WEFT_RESPONSE_IN_PROGRESS',
  'WEFT_NO_RESPONSE',
  'WEFT_TOO_MANY_SESSIONS',
  'WEFT_NOT_READY',
  'WEFT_RESUME_UNKNOWN',
  'WEFT_RATE_LIMITED',
  'WEFT_ORIGIN_REFUSED',
  'WEFT_DRAINING',
  'WEFT_LISTEN_FAILED',
  'WEFT_REPLAY_GAP',
  'WEFT_SESSION_CONNECTED',
  'WEFT_TIMEOUT',
  'WEFT_CONNECTION_LOST',
  'WEFT_UNAUTHORIZED',
  'WEFT_KEY_CONCURRENCY',
  'WEFT_KEY_BUDGET',
  'WEFT_BAD_REQUEST',
  'WEFT_BODY_TOO_LARGE',
  'WEFT_NOT_FOUND',
  'WEFT_METHOD_NOT_ALLOWED',
  'WEFT_UNSUPPORTED',
  'WEFT_SESSION_ELSEWHERE',
  'WEFT_PLAN_MISMATCH',
];

test('every native code is in the catalog, and the catalog is the native list plus the TS-only codes', () => {
  const header = readFileSync(join(root, 'native', 'src', 'common.h'), 'utf8');
  const native = [...new Set([...header.matchAll(/return "(WEFT_[A-Z_]+)"/g)].map((m) => m[1]))].sort();
  for (const code of native) expect(catalog, code).toContain(code);
  expect([...native, ...TS_ONLY].sort()).toEqual(catalog);
});

test('toWeftError keeps catalog codes and maps anything else to WEFT_INTERNAL', () => {
  const coded = Object.assign(new Error('no pages'), { code: 'WEFT_KV_EXHAUSTED' });
  expect(toWeftError(coded).code).toBe('WEFT_KV_EXHAUSTED');
  expect(toWeftError(coded).status).toBe(503);
  expect(toWeftError(new Error('boom')).code).toBe('WEFT_INTERNAL');
  expect(toWeftError(Object.assign(new Error('x'), { code: 'ENOENT' })).code).toBe('WEFT_INTERNAL');
  const e = new WeftError('WEFT_BAD_ARGUMENT', 'bad');
  expect(toWeftError(e)).toBe(e);
});

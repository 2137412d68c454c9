/**
 * The k6 load scripts (k6/) are plain JavaScript run by k6, not Node: k6 itself is not installed
 * here, so they are type-checked against k6's API declarations (@types/k6) with
 * k6/tsconfig.json (checkJs, strict). Misused k6 APIs must fail that check: a few misuses are
 * type-checked with the same settings and must be rejected, next to a correct script that must pass.
 */
import { execFile } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { runInNewContext } from 'node:vm';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';

const run = promisify(execFile);
const ROOT = fileURLToPath(new URL('..', import.meta.url));
const TSC = join(ROOT, 'node_modules', 'typescript', 'bin', 'tsc');

async function tsc(project: string): Promise<{ code: number; out: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [TSC, '-p', project], { cwd: ROOT });
    return { code: 0, out: stdout + stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, out: err.stdout + err.stderr };
  }
}

test('k6/ type-checks against @types/k6 (npx tsc -p k6/tsconfig.json)', async () => {
  const r = await tsc('k6/tsconfig.json');
  expect(r.out).toBe('');
  expect(r.code).toBe(0);
});

describe('the type-check rejects misused k6 APIs', () => {
  const misuses: [string, string][] = [
    ['the k6/ws API on a k6/websockets socket', `import { WebSocket } from 'k6/websockets';\nconst ws = new WebSocket('ws://x');\nws.on('message', () => undefined);\n`],
    ['a string added to a Trend', `import { Trend } from 'k6/metrics';\nnew Trend('t').add('5');\n`],
    ['setTimeout arguments swapped', `import { setTimeout } from 'k6/timers';\nsetTimeout(10, () => undefined);\n`],
    ['abortOnFail not a boolean', `/** @type {import('k6/options').Options} */\nexport const options = { thresholds: { x: [{ threshold: 'p(99)<5', abortOnFail: 'yes' }] } };\n`],
    ['an executor that does not exist', `/** @type {import('k6/options').Options} */\nexport const options = { scenarios: { a: { executor: 'ramping-vu', stages: [] } } };\n`],
    ['a module k6 does not have', `import { WebSocket } from 'k6/websocket';\nnew WebSocket('ws://x');\n`],
    ['an __ENV value used as if it were set', `/** @type {string} */\nexport const url = __ENV.URL;\n`],
    ['WebSocket used without its import (k6 has no global one)', `export const ws = new WebSocket('ws://x');\n`],
  ];
  const correct = `import { WebSocket } from 'k6/websockets';
import { setTimeout } from 'k6/timers';
import { Trend } from 'k6/metrics';
import { chat, settings } from '../lib/weft.js';
const t = new Trend('x', true);
/** @type {import('k6/options').Options} */
export const options = { scenarios: { a: { executor: 'ramping-vus', stages: [{ duration: '1s', target: 2 }] } }, thresholds: { x: [{ threshold: 'p(99)<5', abortOnFail: true }] } };
export default async function () {
  const ws = new WebSocket('ws://127.0.0.1:1/v1/ws');
  ws.addEventListener('message', (e) => { if ('data' in e) t.add(e.timestamp); });
  setTimeout(() => ws.close(), 10);
  console.log(__ENV.URL || 'none');
  await chat(settings(), __VU, __ITER);
}
`;
  // in a dot directory inside k6/ (k6/tsconfig.json's globs skip it) so that imports of k6 and
  // of ../lib resolve as the real scripts' do; the files type-checked with k6/tsconfig.json's
  // settings: the correct one alone, then all the misuses in one run (tsc reports every file)
  let dir: string;
  let ok: { code: number; out: string };
  let bad: { code: number; out: string };
  const project = (name: string, files: string[]) => {
    const config = join(dir, `${name}.tsconfig.json`);
    const base = relative(dir, join(ROOT, 'k6'));
    writeFileSync(config, JSON.stringify({ extends: `${base}/tsconfig.json`, include: [], files: [...files, `${base}/lib/k6-globals.d.ts`] }));
    return config;
  };
  beforeAll(async () => {
    dir = mkdtempSync(join(ROOT, 'k6', '.typecheck-'));
    writeFileSync(join(dir, 'correct.js'), correct);
    misuses.forEach(([, source], i) => writeFileSync(join(dir, `misuse${i}.js`), source));
    [ok, bad] = await Promise.all([tsc(project('correct', ['correct.js'])), tsc(project('misuses', misuses.map((_, i) => `misuse${i}.js`)))]);
  });
  afterAll(() => rmSync(dir, { recursive: true, force: true }));

  test('a correct script passes', () => {
    expect(ok.out).toBe('');
    expect(ok.code).toBe(0);
  });

  test.each(misuses.map(([what], i) => [what, i] as const))('%s', (_what, i) => {
    expect(bad.code).not.toBe(0);
    // an error in that file, not one caused by the setup
    expect(bad.out).toMatch(new RegExp(`misuse${i}\\.js\\(\\d+,\\d+\\): error TS`));
  });

  test('nothing but the misuses is reported', () => {
    const files = new Set([...bad.out.matchAll(/^(\S+?)\(\d+,\d+\): error/gm)].map((m) => m[1]!.replace(/^.*\//, '')));
    expect([...files].sort()).toEqual(misuses.map((_, i) => `misuse${i}.js`).sort());
  });
});

test('bench/k6-chat.ts sends the prompts of k6/lib/weft.js', () => {
  const prompts = (file: string) => {
    const m = /const PROMPTS = (\[[\s\S]*?\]);/.exec(readFileSync(join(ROOT, file), 'utf8'));
    expect(m, `PROMPTS in ${file}`).not.toBeNull();
    return runInNewContext(m![1]!) as string[];
  };
  const k6 = prompts('k6/lib/weft.js');
  expect(k6.length).toBeGreaterThan(1);
  expect(prompts('bench/k6-chat.ts')).toEqual(k6);
});

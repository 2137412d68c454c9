/** The CLI's JSON shapes (other clients parse them) and its coded errors, run as a real process. */
import { execFile } from 'node:child_process';
import { promisify } from 'node:util';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { generate } from '../src/engine/generate.js';
import { TinyModels } from './helpers/models.js';

const run = promisify(execFile);
const CLI = 'dist/src/cli/main.js';
const models = new TinyModels();
let dir: string;

beforeAll(async () => {
  dir = await models.make('cli', { arch: 'llama', dtype: 'f32', seed: 41 });
});
afterAll(() => models.cleanup());

async function cli(args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const { stdout, stderr } = await run(process.execPath, [CLI, ...args]);
    return { code: 0, stdout, stderr };
  } catch (e) {
    const err = e as { code: number; stdout: string; stderr: string };
    return { code: err.code, stdout: err.stdout, stderr: err.stderr };
  }
}

test('generate --json prints exactly one object with tokens, text, logprobs and timing', async () => {
  const r = await cli(['generate', '--model', dir, '--prompt-ids', '5,6,7,8', '--max-tokens', '6', '--logprobs', '3', '--json']);
  expect(r.code).toBe(0);
  const lines = r.stdout.trim().split('\n');
  expect(lines).toHaveLength(1);
  const out = JSON.parse(lines[0]!);
  expect(out.tokens).toHaveLength(6);
  expect(typeof out.text).toBe('string');
  expect(out.logprobs).toHaveLength(6);
  expect(out.logprobs[0].token).toBe(out.tokens[0]);
  expect(out.logprobs[0].top).toHaveLength(3);
  expect(out.timing.prefill_tokens_per_s).toBeGreaterThan(0);
  expect(out.timing.decode_tokens_per_s).toBeGreaterThan(0);
  // the same request in-process: greedy, so the same tokens
  const engine = await Engine.load(dir, { threads: 1 });
  const direct = await generate(engine, [5, 6, 7, 8], { maxTokens: 6, ignoreEos: false });
  engine.dispose();
  expect(out.tokens).toEqual(direct.tokens.slice(0, 6));
});

test('generate with --prompt text and a seed is reproducible', async () => {
  const args = ['generate', '--model', dir, '--prompt', 'The keeper climbed', '--max-tokens', '8', '--temperature', '0.9', '--seed', '5', '--json'];
  const a = JSON.parse((await cli(args)).stdout);
  const b = JSON.parse((await cli(args)).stdout);
  expect(a.tokens).toEqual(b.tokens);
  expect(a.text).toBe(b.text);
});

test('bench --json prints {results: [...]} for each concurrency', async () => {
  const r = await cli(['bench', '--model', dir, '--sequences', '1,3', '--prompt-tokens', '16', '--gen-tokens', '4', '--json']);
  expect(r.code).toBe(0);
  const out = JSON.parse(r.stdout);
  expect(out.results.map((x: { sequences: number }) => x.sequences)).toEqual([1, 3]);
  for (const x of out.results) {
    expect(x.prefill_tokens_per_s).toBeGreaterThan(0);
    expect(x.decode_tokens_per_s).toBeGreaterThan(0);
  }
});

test('errors exit 1 with a code', async () => {
  const missing = await cli(['generate', '--model', `${dir}-missing`, '--prompt-ids', '1', '--json']);
  expect(missing.code).toBe(1);
  expect(JSON.parse(missing.stdout).error.code).toBe('WEFT_MODEL_NOT_FOUND');
  expect(missing.stderr).toMatch(/^error WEFT_MODEL_NOT_FOUND/);
  const bad = await cli(['generate', '--model', dir, '--prompt-ids', '1,99999', '--json']);
  expect(JSON.parse(bad.stdout).error.code).toBe('WEFT_TOKEN_OUT_OF_RANGE');
  const both = await cli(['generate', '--model', dir, '--prompt', 'x', '--prompt-ids', '1']);
  expect(both.stderr).toMatch(/WEFT_BAD_ARGUMENT/);
  const nan = await cli(['generate', '--model', dir, '--prompt-ids', '1', '--temperature', 'abc']);
  expect(nan.stderr).toMatch(/WEFT_BAD_ARGUMENT.*temperature/);
  const backend = await cli(['generate', '--model', dir, '--prompt-ids', '1', '--backend', 'tpu', '--json']);
  expect(JSON.parse(backend.stdout).error.code).toBe('WEFT_BAD_ARGUMENT');
  expect(backend.stderr).toMatch(/--backend must be cpu or cuda/);
});

test('serve prints its URL, becomes ready on the default model, and on SIGTERM drains (1001 to clients) and exits 0; bad sizes are coded errors', async () => {
  const { spawn } = await import('node:child_process');
  const { default: WebSocket } = await import('ws');
  const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--threads', '1', '--drain-timeout', '1'], { env: { ...process.env, WEFT_KV_MEMORY: '32MiB' } });
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => (out += d));
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  let closeCode = 0;
  try {
    const deadline = Date.now() + 20_000;
    while (!out.includes('ready') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
    const url = /http:\/\/[^ ]+/.exec(out)![0];
    expect(out).toContain('/v1/ws');
    expect(err).not.toContain('warning'); // loopback: no exposure warning
    expect((await fetch(url + '/readyz')).status).toBe(200);
    expect((await fetch(url + '/healthz')).status).toBe(200);
    const ws = new WebSocket(url.replace('http', 'ws') + '/v1/ws');
    const closed = new Promise<number>((r) => ws.on('close', (code) => r(code)));
    await new Promise((r) => ws.once('message', r));
    child.kill('SIGTERM');
    closeCode = await closed;
  } finally {
    child.kill('SIGTERM');
  }
  expect(await exited).toBe(0);
  expect(closeCode).toBe(1001);
  expect(out).toContain('draining');
  const bad = await cli(['serve', '--kv-memory', 'lots']);
  expect(bad.code).toBe(1);
  expect(bad.stderr).toContain('WEFT_BAD_ARGUMENT');
  const { parseSize } = await import('../src/cli/args.js');
  expect(parseSize('256MiB', 'x')).toBe(256 << 20);
  expect(parseSize('1.5k', 'x')).toBe(1536);
  expect(parseSize('4096', 'x')).toBe(4096);
});

test('serve: a missing model fails before anything listens; a port in use is WEFT_LISTEN_FAILED; a non-loopback host is warned about', async () => {
  const missing = await cli(['serve', '--model', '/nonexistent/model', '--port', '0']);
  expect(missing.code).toBe(1);
  expect(missing.stderr).toContain('WEFT_MODEL_NOT_FOUND');
  expect(missing.stdout).not.toContain('listening');
  const { createServer } = await import('node:net');
  const taken = createServer();
  const port = await new Promise<number>((r) => taken.listen(0, '127.0.0.1', () => r((taken.address() as { port: number }).port)));
  const inUse = await cli(['serve', '--port', String(port)]);
  taken.close();
  expect(inUse.code).toBe(1);
  expect(inUse.stderr).toMatch(/error WEFT_LISTEN_FAILED: cannot listen on 127\.0\.0\.1:\d+: the port is in use/);
  const help = await cli(['serve', '--help']);
  expect(help.stdout).toMatch(/Exposure:/);
  expect(help.stdout).toContain('--allowed-origins');
  const { spawn } = await import('node:child_process');
  const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--host', '0.0.0.0', '--threads', '1'], { env: { ...process.env, WEFT_KV_MEMORY: '32MiB' } });
  let err = '';
  child.stderr.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const deadline = Date.now() + 10_000;
  while (!err.includes('warning') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  child.kill('SIGTERM');
  expect(await exited).toBe(0);
  expect(err).toMatch(/warning: listening on 0\.0\.0\.0, not a loopback address/);
});

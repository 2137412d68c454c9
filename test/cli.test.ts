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

test('build writes a plan (JSON summary), generate runs it and a GGUF file; --quantize uses the plan cache; bad input is coded', async () => {
  const { mkdtemp, rm, writeFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const { exportGguf } = await import('../src/engine/gguf-export.js');
  const tmp = await mkdtemp(join(tmpdir(), 'weft-cli-plan-'));
  try {
    const plan = join(tmp, 'cli.q8_0.plan.gguf');
    const built = await cli(['build', '--model', dir, '--quantize', 'q8_0', '--out', plan, '--no-tune', '--json']);
    expect(built.code, built.stderr).toBe(0);
    const summary = JSON.parse(built.stdout);
    expect(summary).toMatchObject({ plan, quantize: 'q8_0', tuning: null });
    expect(summary.bytes).toBeGreaterThan(0);
    const args = ['--prompt-ids', '5,6,7,8', '--max-tokens', '6', '--json'];
    const fromPlan = JSON.parse((await cli(['generate', '--model', plan, ...args])).stdout);
    // --quantize builds the same plan into the cache (WEFT_CACHE_DIR) and runs it: the same tokens
    const viaCache = await run(process.execPath, [CLI, 'generate', '--model', dir, '--quantize', 'q8_0', ...args], { env: { ...process.env, WEFT_CACHE_DIR: join(tmp, 'cache') } });
    expect(viaCache.stderr).toMatch(/building the q8_0 plan/);
    expect(JSON.parse(viaCache.stdout).tokens).toEqual(fromPlan.tokens);
    const gguf = join(tmp, 'cli.f32.gguf');
    await exportGguf(dir, gguf, { type: 'f32' });
    const fromGguf = JSON.parse((await cli(['generate', '--model', gguf, ...args])).stdout);
    const fromDir = JSON.parse((await cli(['generate', '--model', dir, ...args])).stdout);
    expect(fromGguf.tokens).toEqual(fromDir.tokens);
    const badQuant = await cli(['build', '--model', dir, '--quantize', 'q3_k', '--json']);
    expect(badQuant.code).toBe(1);
    expect(JSON.parse(badQuant.stdout).error.code).toBe('WEFT_BAD_ARGUMENT');
    const junk = join(tmp, 'junk.gguf');
    await writeFile(junk, 'GGUF not really');
    const badFile = await cli(['generate', '--model', junk, '--prompt-ids', '1', '--json']);
    expect(badFile.code).toBe(1);
    expect(JSON.parse(badFile.stdout).error.code).toBe('WEFT_MODEL_FORMAT');
    const planOfPlan = await cli(['build', '--model', plan, '--json']);
    expect(JSON.parse(planOfPlan.stdout).error.code).toBe('WEFT_BAD_ARGUMENT');
  } finally {
    await rm(tmp, { recursive: true, force: true });
  }
}, 120_000);

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

/** A `weft serve` child process on a free port, ready (its model loaded), and its output so far. */
async function startServe(args: string[], env: Record<string, string> = {}) {
  const { spawn } = await import('node:child_process');
  const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--threads', '1', ...args], { env: { ...process.env, WEFT_KV_MEMORY: '32MiB', ...env } });
  const s = { out: '', err: '', url: '', stop: async () => {} };
  child.stdout.on('data', (d) => (s.out += d));
  child.stderr.on('data', (d) => (s.err += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  s.stop = async () => {
    child.kill('SIGTERM');
    expect(await exited).toBe(0);
  };
  const deadline = Date.now() + 20_000;
  while (!s.out.includes('weft ready') && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
  if (!s.out.includes('weft ready')) {
    child.kill('SIGKILL');
    throw new Error(`weft serve did not get ready: ${s.out}${s.err}`);
  }
  s.url = /https?:\/\/[^ ]+/.exec(s.out)![0];
  return s;
}

/** A throwaway self-signed certificate and its key (openssl). */
async function makeCert(): Promise<{ cert: string; key: string; dir: string }> {
  const { mkdtemp } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = await mkdtemp(join(tmpdir(), 'weft-tls-'));
  const cert = join(dir, 'cert.pem');
  const key = join(dir, 'key.pem');
  await run('openssl', ['req', '-x509', '-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes', '-keyout', key, '-out', cert, '-days', '1', '-subj', '/CN=localhost', '-addext', 'subjectAltName=DNS:localhost,IP:127.0.0.1']);
  return { cert, key, dir };
}

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
  for (const flag of ['--allowed-origins', '--max-queue', '--max-active', '--max-context', '--kv-dtype', '--cuda-device', '--backpressure-bytes', '--tls-cert', '--api-keys', '--sampling', '--prefix-cache-entries']) {
    expect(help.stdout).toContain(flag);
  }
  const server = await startServe(['--host', '0.0.0.0']);
  await server.stop();
  expect(server.err).toMatch(/warning: listening on 0\.0\.0\.0, not a loopback address, without --api-keys/);
  expect(server.err).toMatch(/warning: listening on 0\.0\.0\.0, not a loopback address, without TLS/);
  expect(server.out).toContain('open: no API keys (anyone who can reach this port can use it');
});

test('serve: engine, scheduler and sampling flags and their WEFT_* twins reach their settings (the flag wins)', async () => {
  const { default: WebSocket } = await import('ws');
  const server = await startServe(
    ['--max-context', '128', '--kv-dtype', 'f16', '--kv-page-tokens', '8', '--max-batch-tokens', '16', '--max-active', '1', '--cuda-device', '0',
      '--max-batch-sequences', '8', '--max-logit-rows', '8', '--max-buffered-events', '8', '--backpressure-bytes', '64KiB', '--max-body-bytes', '1MiB'],
    { WEFT_MAX_CONTEXT: '64', WEFT_MAX_QUEUE: '0', WEFT_PREFIX_CACHE_ENTRIES: '0', WEFT_SAMPLING: '{"temperature": 0.5, "top_p": 0.9}' },
  );
  type Frame = Record<string, any>;
  const open = async () => {
    const ws = new WebSocket(server.url.replace('http', 'ws') + '/v1/ws');
    const frames: Frame[] = [];
    const waiters: [(f: Frame) => boolean, (f: Frame) => void][] = [];
    ws.on('message', (d) => {
      const f = JSON.parse(String(d)) as Frame;
      frames.push(f);
      for (const w of waiters.splice(0)) (w[0](f) ? w[1](f) : waiters.push(w));
    });
    const next = (pred: (f: Frame) => boolean) => new Promise<Frame>((r) => {
      const seen = frames.find(pred);
      if (seen) r(seen);
      else waiters.push([pred, r]);
    });
    return { ws, frames, next };
  };
  try {
    const a = await open();
    const created = await a.next((f) => f.type === 'session.created');
    expect(created.session.limits.max_context).toBe(128); // --max-context, over WEFT_MAX_CONTEXT=64
    a.ws.send(JSON.stringify({ type: 'session.update', session: {} }));
    const updated = await a.next((f) => f.type === 'session.updated');
    expect(updated.session.effective_sampling).toMatchObject({ temperature: 0.5, top_p: 0.9 }); // WEFT_SAMPLING
    // --kv-dtype f16 and --kv-page-tokens 8: pages of 8 tokens x layers x (K, V) x kv heads x head_dim x 2 bytes in 32 MiB
    const config = JSON.parse(await (await import('node:fs/promises')).readFile('models/default/config.json', 'utf8'));
    const pageBytes = 8 * config.num_hidden_layers * 2 * config.num_key_value_heads * config.head_dim * 2;
    const metric = async (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(await (await fetch(server.url + '/metrics')).text())![1]);
    expect(await metric('weft_kv_pages_total')).toBe(Math.floor((32 << 20) / pageBytes));
    // --max-active 1 and WEFT_MAX_QUEUE=0: while one answer runs, a second one is refused
    const b = await open();
    await b.next((f) => f.type === 'session.created');
    const prompt = 'Once upon a time there was a little girl named Lily who loved to play in the park with her dog';
    a.ws.send(JSON.stringify({ type: 'message.create', content: prompt, sampling: { temperature: 0, max_tokens: 200 } }));
    await a.next((f) => f.type === 'response.delta');
    b.ws.send(JSON.stringify({ type: 'message.create', content: 'Hello', sampling: { max_tokens: 4 } }));
    const refused = await b.next((f) => f.type === 'error' || f.type === 'response.done');
    expect(refused).toMatchObject({ type: 'error', code: 'WEFT_OVERLOADED' });
    expect(refused.message).toContain('(0 waiting)');
    const done = await a.next((f) => f.type === 'response.done');
    expect(done.usage.prompt_tokens).toBeGreaterThan(16);
    // --max-batch-tokens 16: the prompt was prefilled in chunks of at most 16 tokens
    expect(await metric('weft_batch_tokens_bucket\\{le="16"\\}')).toBe(await metric('weft_batch_tokens_count'));
    a.ws.close();
    b.ws.close();
  } finally {
    await server.stop();
  }
  expect(server.out).toContain('weft open: no API keys');
  expect(server.err).not.toContain('warning');
});

test('serve options: each flag and its WEFT_* twin reach the engine, scheduler and gateway options; the flag wins; 0 where it means something', async () => {
  const { readServeOptions } = await import('../src/cli/args.js');
  const { writeFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { cert, key, dir: tmp } = await makeCert();
  const keys = join(tmp, 'keys.json');
  await writeFile(keys, '{"keys": []}');
  const values: Record<string, string> = {
    'backpressure-bytes': '64KiB', 'max-queue': '0', 'max-active': '3', 'max-batch-tokens': '128', 'max-batch-sequences': '8', 'max-buffered-events': '16',
    'max-logit-rows': '4', 'max-context': '256', 'kv-page-tokens': '32', 'kv-dtype': 'f16', 'cuda-device': '1', 'tls-cert': cert, 'tls-key': key,
    'api-keys': keys, 'max-body-bytes': '2MiB', 'prefix-cache-entries': '0', quantize: 'q4_k', sampling: '{"temperature": 0.7, "top_p": 0.9, "top_k": 40, "seed": 3}',
  };
  const expected = {
    engine: { maxBatchTokens: 128, maxBatchSequences: 8, maxLogitRows: 4, maxContext: 256, kvPageTokens: 32, kvDtype: 'f16', cudaDevice: 1, quantize: 'q4_k' },
    gateway: {
      backpressureBytes: 64 << 10, scheduler: { maxQueue: 0, maxActive: 3, maxBufferedEvents: 16 }, tls: { certFile: cert, keyFile: key }, apiKeys: keys,
      maxBodyBytes: 2 << 20, prefixCacheEntries: 0, sessionSampling: { temperature: 0.7, topP: 0.9, topK: 40, seed: 3 },
    },
  };
  const flags = await readServeOptions(Object.entries(values).flatMap(([k, v]) => [`--${k}`, v]), {});
  expect(flags).toMatchObject(expected);
  const env = Object.fromEntries(Object.entries(values).map(([k, v]) => ['WEFT_' + k.toUpperCase().replace(/-/g, '_'), v]));
  expect(await readServeOptions([], env)).toMatchObject(expected);
  // the flag wins over the environment
  const both = await readServeOptions(['--max-queue', '5', '--kv-dtype', 'f32', '--sampling', '{"temperature": 1}'], env);
  expect(both.gateway.scheduler!.maxQueue).toBe(5);
  expect(both.engine.kvDtype).toBe('f32');
  expect(both.gateway.sessionSampling).toEqual({ temperature: 1 });
  // nothing set: nothing decided here (the engine's, the scheduler's and the gateway's defaults apply)
  const none = await readServeOptions([], {});
  expect(none.gateway.tls).toBeUndefined();
  expect(none.gateway.apiKeys).toBeUndefined();
  expect(none.gateway.sessionSampling).toBeUndefined();
  expect(Object.values(none.engine).every((v) => v === undefined)).toBe(true);
  expect(Object.values(none.gateway.scheduler!).every((v) => v === undefined)).toBe(true);
});

test('serve options: a bad value is WEFT_BAD_ARGUMENT naming the option (flag or WEFT_* twin); from the command line it exits 1 before anything listens', async () => {
  const { readServeOptions } = await import('../src/cli/args.js');
  const { WeftError } = await import('../src/errors.js');
  const { writeFile, mkdir } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { cert, key, dir: tmp } = await makeCert();
  const junk = join(tmp, 'junk.pem');
  await writeFile(junk, 'not a certificate\n');
  await mkdir(join(tmp, 'dir'));
  const missing = join(tmp, 'missing.pem');
  const cases: [string[], Record<string, string>, string | RegExp][] = [
    [['--max-queue', '-1'], {}, '--max-queue must be a non-negative integer (got -1)'],
    [[], { WEFT_MAX_QUEUE: 'lots' }, 'WEFT_MAX_QUEUE (--max-queue) must be a non-negative integer (got lots)'],
    [['--max-active', '0'], {}, '--max-active must be a positive integer (got 0)'],
    [[], { WEFT_MAX_ACTIVE: '1.5' }, 'WEFT_MAX_ACTIVE (--max-active) must be a positive integer (got 1.5)'],
    [['--max-batch-tokens', '0'], {}, '--max-batch-tokens must be a positive integer'],
    [['--max-batch-sequences', 'x'], {}, '--max-batch-sequences must be a positive integer'],
    [['--max-buffered-events', '0'], {}, '--max-buffered-events must be a positive integer'],
    [['--max-logit-rows', '-2'], {}, '--max-logit-rows must be a positive integer'],
    [['--kv-page-tokens', '0'], {}, '--kv-page-tokens must be a positive integer'],
    [['--kv-dtype', 'f8'], {}, '--kv-dtype must be f32 or f16 (got f8)'],
    [[], { WEFT_KV_DTYPE: 'bf16' }, 'WEFT_KV_DTYPE (--kv-dtype) must be f32 or f16 (got bf16)'],
    [['--cuda-device', '-1'], {}, '--cuda-device must be a non-negative integer'],
    [['--max-context', '0'], {}, '--max-context must be a positive integer'],
    [['--max-context', '100000'], {}, "--max-context 100000 is more than the model's context (max_position_embeddings 512)"],
    [['--backpressure-bytes', 'much'], {}, '--backpressure-bytes must be a size'],
    [['--max-body-bytes', '0'], {}, '--max-body-bytes must be positive'],
    [['--prefix-cache-entries', '-1'], {}, '--prefix-cache-entries must be a non-negative integer'],
    [['--sampling', 'hot'], {}, '--sampling must be a JSON object'],
    [[], { WEFT_SAMPLING: '{"temprature": 1}' }, 'WEFT_SAMPLING (--sampling) has an unknown field "temprature"'],
    [['--sampling', '{"max_tokens": 9}'], {}, '--max-tokens sets the default max_tokens'],
    [['--sampling', '{"top_k": 2.5}'], {}, '--sampling field top_k must be a non-negative integer'],
    [['--sampling', '{"temperature": "hot"}'], {}, '--sampling field temperature must be a finite number'],
    [['--transport', 'tcp'], {}, '--transport must be ws or uws'],
    [['--max-frame-bytes', '0'], {}, '--max-frame-bytes must be positive'],
    [['--contexts', '0'], {}, '--contexts must be a positive integer'],
    [['--tls-cert', cert], {}, '--tls-cert FILE and --tls-key FILE go together'],
    [[], { WEFT_TLS_KEY: key }, '--tls-cert FILE and --tls-key FILE go together'],
    [['--tls-cert', missing, '--tls-key', key], {}, `--tls-cert ${missing} cannot be read: no such file`],
    [['--tls-cert', cert, '--tls-key', join(tmp, 'dir')], {}, `--tls-key ${join(tmp, 'dir')} cannot be read: a directory`],
    [['--tls-cert', junk, '--tls-key', key], {}, /--tls-cert .*junk\.pem and --tls-key .* are not a PEM certificate and its private key/],
    [['--tls-cert', key, '--tls-key', cert], {}, 'are not a PEM certificate and its private key'],
    [[], { WEFT_API_KEYS: join(tmp, 'keys.json') }, `--api-keys ${join(tmp, 'keys.json')} cannot be read: no such file`],
  ];
  for (const [args, env, message] of cases) {
    const err = await readServeOptions(args, env).then(() => null, (e: unknown) => e);
    expect(err, `${args.join(' ')} ${JSON.stringify(env)}`).toBeInstanceOf(WeftError);
    expect((err as InstanceType<typeof WeftError>).code).toBe('WEFT_BAD_ARGUMENT');
    expect((err as Error).message).toMatch(message); // a string: contained in the message
  }
  // the command line: exit 1, `error CODE: message`, nothing listening
  const [flag, envTwin, tls] = await Promise.all([
    cli(['serve', '--port', '0', '--max-queue', '-1']),
    run(process.execPath, [CLI, 'serve', '--port', '0'], { env: { ...process.env, WEFT_MAX_ACTIVE: '0' } }).then(() => ({ code: 0, stdout: '', stderr: '' }), (e) => e as { code: number; stdout: string; stderr: string }),
    cli(['serve', '--port', '0', '--tls-cert', missing, '--tls-key', key]),
  ]);
  for (const [r, message] of [[flag, '--max-queue must be'], [envTwin, 'WEFT_MAX_ACTIVE (--max-active) must be'], [tls, `--tls-cert ${missing} cannot be read`]] as const) {
    expect(r.code).toBe(1);
    expect(r.stderr).toContain(`error WEFT_BAD_ARGUMENT: ${message}`);
    expect(r.stdout).not.toContain('listening');
  }
  // sampling ranges are the engine's, checked once it is loaded: the server stops and exits 1
  const range = await cli(['serve', '--port', '0', '--threads', '1', '--sampling', '{"top_p": 1.5}']);
  expect(range.code).toBe(1);
  expect(range.stderr).toMatch(/error WEFT_BAD_ARGUMENT: --sampling: .*top_p must be in \(0, 1\]/);
  expect(range.stdout).not.toContain('ready');
});

test('serve --tls-cert --tls-key: https:// and wss:// URLs that answer over TLS; on a non-loopback host only the missing API keys are warned about', async () => {
  const { cert, key } = await makeCert();
  const server = await startServe(['--tls-cert', cert, '--host', '0.0.0.0'], { WEFT_TLS_KEY: key });
  try {
    const port = Number(/:(\d+)$/.exec(server.url)![1]);
    const { get } = await import('node:https');
    const { readFile } = await import('node:fs/promises');
    const ca = await readFile(cert);
    const status = await new Promise<number | undefined>((resolve, reject) => get({ host: '127.0.0.1', port, path: '/healthz', ca }, (res) => resolve(res.resume().statusCode)).on('error', reject));
    expect(status).toBe(200);
  } finally {
    await server.stop();
  }
  expect(server.out).toMatch(/weft listening on https:\/\/0\.0\.0\.0:\d+ \(WebSocket wss:\/\/0\.0\.0\.0:\d+\/v1\/ws\)/);
  expect(server.err).toMatch(/without --api-keys/);
  expect(server.err).not.toMatch(/without TLS/);
});

test('serve --api-keys (WEFT_API_KEYS): routes need a key, and weft no longer says it is open', async () => {
  const { writeFile, mkdtemp } = await import('node:fs/promises');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const keys = join(await mkdtemp(join(tmpdir(), 'weft-keys-')), 'keys.json');
  await writeFile(keys, JSON.stringify({ keys: [{ name: 'test', key: 'sk-cli-test' }] }));
  const server = await startServe([], { WEFT_API_KEYS: keys });
  try {
    expect((await fetch(server.url + '/healthz')).status).toBe(200);
    expect((await fetch(server.url + '/metrics')).status).toBe(401);
    expect((await fetch(server.url + '/metrics', { headers: { authorization: 'Bearer sk-cli-test' } })).status).toBe(200);
  } finally {
    await server.stop();
  }
  expect(server.out).not.toContain('open: no API keys');
});

/**
 * npm run bench:gateway — WebSocket sessions through the gateway vs the same workload on the
 * scheduler directly (no sockets), on the embedded default model; both transports. `--http` adds
 * the OpenAI-compatible HTTP/SSE front (streamed POST /v1/chat/completions, bench/http-sse.ts) on
 * each transport, and its ratio to the WebSocket front of the same transport.
 *
 *   npm run bench:gateway -- [--sessions 1,16,64,256] [--gen-tokens 128] [--threads 2]
 *                            [--transports ws,uws] [--http] [--repeats 3] [--idle 10000] [--client-procs 1]
 *                            [--typing | --typing-only] [--k6-chat 1,8,32 [--k6-duration 20]]
 *                            [--backend cpu|cuda] [--model DIR|llama1b|llama8b[,...]] [--contexts 1]
 *                            [--max-batch-sequences N] [--max-batch-tokens N] [--max-active N]
 *                            [--skip-profile] [--out FILE.json] [--dir /tmp/weft-bench]
 * `--backend cuda` defaults to `--model llama1b,llama8b --sessions 1,64,256,1024 --client-procs 4`:
 * the random bf16 models of bench/bench-model.ts (made by scripts/gpu/make_bench_model.py, given a
 * tokenizer), one engine per model, each model in a child process of its own. The engine takes up
 * to 256 sequences a step (`--max-batch-sequences`), every session is admitted at once
 * (`--max-active`, default the most sessions; the KV pool is sized for them) and the direct run
 * uses the same scheduler options as the gateway.
 * Each session sends one prompt and streams gen-tokens tokens (EOS and the template's stop string
 * are ignored so that every answer has exactly gen-tokens tokens). Every configuration runs
 * `--repeats` times (more with fewer than 16 sessions: at least 16 TTFT samples per mode), the
 * modes interleaved (direct, ws, [http/sse ws,] uws, [http/sse uws,] direct, ...). Reports per mode the
 * best aggregate tokens/s and the range over the repeats, the ratio of best to best direct and
 * the range of the per-round ratios, time to first token p50/p99 and inter-token latency p50/p99
 * over the samples of all repeats, as a markdown table and a JSON line. `--idle N` also connects
 * N idle sessions per transport and reports the server process's RSS growth per session.
 *
 * The direct run is in this process. In a gateway run the server is in this process and the
 * clients in `--client-procs` child processes (bench/gateway-client.ts for protocol v1,
 * bench/http-sse.ts for HTTP/SSE: node:http on keep-alive connections opened before) that report their
 * measurements back over IPC, so client sockets and parsing do not share the server's event
 * loop (they do share the machine's cores). Both modes time a response from the moment its
 * session's prompt is sent: in the direct run all prompts are sent in one synchronous loop, so
 * every session's clock starts before that loop, as the clients' prompts all leave at once.
 * Over HTTP a response is timed from sending its POST to its first content chunk.
 *
 * After the measured rounds, one more round per mode and session count runs with the main
 * thread's per-token functions timed (bench/loop-profile.ts): event-loop busy time and its
 * breakdown in µs per token (a second table; `--skip-profile` leaves it out).
 */
import { fork, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { performance as perfHooks } from 'node:perf_hooks';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parseFlags } from '../src/cli/args.js';
import { kvBytesFor } from '../src/engine/benchmark.js';
import { loadModelConfig } from '../src/engine/config.js';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';
import { Scheduler, type SchedulerOptions } from '../src/scheduler/scheduler.js';
import { ChatFormat } from '../src/session/chat-format.js';
import { Session } from '../src/session/session.js';
import { tmpdir } from 'node:os';
import { benchTypingAhead, typingTable, type TypingResult } from './typing-ahead.js';
import { benchModelDir, ensureBenchTokenizer } from './bench-model.js';
import { LoopProfiler, profileTable, type LoopProfile, type ProfileRow } from './loop-profile.js';

if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16'; // as the CLI: steps wait on libuv worker threads

const f = parseFlags(process.argv.slice(2), {
  sessions: 'list', 'gen-tokens': 'number', threads: 'number', transports: 'string', repeats: 'number', idle: 'number', model: 'string', 'client-procs': 'number', 'idle-server': 'string',
  http: 'boolean', typing: 'boolean', 'typing-only': 'boolean', 'typing-model': 'string', dir: 'string', 'k6-chat': 'list', 'k6-duration': 'number',
  backend: 'string', contexts: 'number', 'max-batch-sequences': 'number', 'max-batch-tokens': 'number', 'max-active': 'number', 'skip-profile': 'boolean', out: 'string',
});
const backend = (f.backend as 'cpu' | 'cuda' | undefined) ?? 'cpu';
const cuda = backend === 'cuda';
const benchDir = (f.dir as string | undefined) ?? join(tmpdir(), 'weft-bench');
const models = ((f.model as string | undefined) ?? (cuda ? 'llama1b,llama8b' : join(import.meta.dirname, '..', '..', 'models', 'default'))).split(',');
// several models: one child process of this script per model (an engine each, its memory freed after)
if (models.length > 1) {
  const argv = process.argv.slice(2);
  const reports: unknown[] = [];
  for (const [i, m] of models.entries()) {
    const out = join(tmpdir(), `weft-gateway-bench-${process.pid}-${i}.json`);
    const rest = argv.filter((a, k) => !['--model', '--out'].includes(a) && !['--model', '--out'].includes(argv[k - 1]!) && !/^--(model|out)=/.test(a));
    const child = fork(process.argv[1]!, [...rest, '--model', m, '--out', out], { stdio: 'inherit' });
    const code = await new Promise<number | null>((r) => child.on('exit', r));
    if (code !== 0) throw new Error(`the bench of ${m} exited with ${code}`);
    reports.push(JSON.parse(readFileSync(out, 'utf8')));
  }
  if (f.out) writeFileSync(f.out as string, JSON.stringify({ models: reports }) + '\n');
  process.exit(0);
}
const modelDir = benchModelDir(models[0]!, benchDir, (s) => process.stderr.write(s + '\n'));
if (ensureBenchTokenizer(modelDir)) process.stderr.write(`${modelDir}: wrote a tokenizer covering its vocabulary (bench/bench-model.ts)\n`);
// --k6-chat 1,8,32: the scenario of k6/chat.js (bench/k6-chat.ts, the same turns, metrics and
// checks) against a `weft serve` child process, so that its numbers compare with k6's
if (f['k6-chat']) {
  const server = spawn(process.execPath, [join(import.meta.dirname, '..', 'src', 'cli', 'main.js'), 'serve', '--port', '0', ...(f.threads ? ['--threads', String(f.threads)] : [])], { stdio: ['ignore', 'pipe', 'inherit'] });
  let out = '';
  server.stdout!.on('data', (d) => (out += d));
  while (!out.includes('weft ready')) await new Promise((r) => setTimeout(r, 50));
  const url = /http:\/\/[^ ]+/.exec(out)![0].replace('http', 'ws') + '/v1/ws';
  const k6 = spawn(process.execPath, [join(import.meta.dirname, 'k6-chat.js'), '--url', url, '--vus', (f['k6-chat'] as number[]).join(','), '--duration', String(f['k6-duration'] ?? 20)], { stdio: 'inherit' });
  const code = await new Promise<number | null>((r) => k6.on('exit', r));
  server.kill('SIGTERM');
  process.exit(code ?? 1);
}
// --typing: also typing-ahead (bench/typing-ahead.ts); --typing-only: just that
const typing = f.typing === true || f['typing-only'] === true;
if (f['typing-only']) {
  const results = await typingRuns((f.repeats as number | undefined) ?? 3);
  process.stdout.write(JSON.stringify({ typing: results }) + '\n');
  process.exit(0);
}

/** Typing-ahead on each model (--typing-model DIR, or the generated small and bench100m ones). */
async function typingRuns(runs: number): Promise<TypingResult[]> {
  const dir = (f.dir as string | undefined) ?? join(tmpdir(), 'weft-bench');
  const model = f['typing-model'] as string | undefined;
  const out: TypingResult[] = [];
  for (const preset of model ? [undefined] : ['small', 'bench100m']) {
    const r = await benchTypingAhead({ dir, model, preset, threads: f.threads as number | undefined, repeats: runs });
    process.stdout.write(typingTable(r) + '\n');
    out.push(r);
  }
  return out;
}
const sessionCounts = (f.sessions as number[] | undefined) ?? (cuda ? [1, 64, 256, 1024] : [1, 16, 64, 256]);
const genTokens = (f['gen-tokens'] as number | undefined) ?? 128;
const transports = ((f.transports as string | undefined) ?? 'ws,uws').split(',') as ('ws' | 'uws')[];
const repeats = (f.repeats as number | undefined) ?? 3;
const idle = (f.idle as number | undefined) ?? 0;
const clientProcs = (f['client-procs'] as number | undefined) ?? (cuda ? 4 : 1);
const http = f.http === true;
const maxN = Math.max(...sessionCounts);
const maxBatchSequences = (f['max-batch-sequences'] as number | undefined) ?? Math.min(256, maxN);
const maxActive = (f['max-active'] as number | undefined) ?? maxN;
// the direct run's scheduler and the gateway's: every session admitted (or queued) at once
const schedulerOptions: SchedulerOptions = { maxActive, maxQueue: maxN + 16 };
/** Most prompt tokens the KV pool is sized for (checked once the tokenizer is loaded). */
const promptBound = 128;
setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;
const elu_ = perfHooks.eventLoopUtilization.bind(perfHooks);

/** One run's raw measurements. */
interface Sample {
  wallMs: number;
  tokens: number;
  ttft: number[];
  itl: number[];
  /** Steps run and the sum of their durations (launch to results): how busy the engine was. */
  steps: number;
  stepMs: number;
  /** CPU time of this process (engine threads included) and of the client processes. */
  serverCpuMs: number;
  clientCpuMs: number;
  /** Event loop utilization of this process's main thread. */
  elu: number;
  /** A profiled round's breakdown of the main thread's time (bench/loop-profile.ts). */
  profile?: LoopProfile;
}

const pct = (xs: number[], p: number) => {
  const s = Float64Array.from(xs).sort();
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};
const prompt = (i: number) => `Who was the son of David, and what did he say unto the people? ${i}`;
const cpuMs = (u: NodeJS.CpuUsage) => (u.user + u.system) / 1000;

function noStopFormat(format: ChatFormat): ChatFormat {
  return Object.assign(Object.create(Object.getPrototypeOf(format)), format, { stopStrings: [] });
}

/** Counts the steps of a scheduler and their durations (keeping an observer already set). */
function countSteps(sched: Scheduler): { steps: number; stepMs: number } {
  const c = { steps: 0, stepMs: 0 };
  const prev = sched.onStep;
  sched.onStep = (st) => {
    c.steps++;
    c.stepMs += st.durationMs;
    prev?.(st);
  };
  return c;
}

async function direct(engine: Engine, format: ChatFormat, n: number, prof?: LoopProfiler): Promise<Sample> {
  const sched = new Scheduler(engine, schedulerOptions);
  const steps = countSteps(sched);
  // the sessions exist before the clock starts, as the gateway's are created when a client connects
  const sessions = Array.from({ length: n }, (_, i) => new Session(sched, { format, sampling: { temperature: 0.8, seed: i, ignoreEos: true }, maxTokens: genTokens }));
  const ttft: number[] = [];
  const itl: number[] = [];
  let tokens = 0;
  const cpu0 = process.cpuUsage();
  prof?.start(engine);
  const elu0 = elu_();
  const t0 = performance.now();
  await Promise.all(
    sessions.map(async (s, i) => {
      let last = 0;
      for await (const ev of s.send(prompt(i))) {
        if (ev.type !== 'delta') continue;
        const now = performance.now();
        if (last === 0) ttft.push(now - t0);
        else itl.push(now - last);
        last = now;
        tokens++;
      }
    }),
  );
  const wallMs = performance.now() - t0;
  const serverCpuMs = cpuMs(process.cpuUsage(cpu0));
  const elu = elu_(elu0).utilization;
  const profile = prof?.stop();
  await Promise.all(sessions.map((s) => s.close()));
  await sched.close();
  return { wallMs, tokens, ttft, itl, ...steps, serverCpuMs, clientCpuMs: 0, elu, profile };
}

interface ClientResult {
  tokens: number;
  wallMs: number;
  ttft: number[];
  itl: number[];
  bad: number;
  cpuMs: number;
}

/** The client processes of a gateway run (bench/gateway-client.ts), each holding a share of the sessions. */
class Clients {
  private constructor(private readonly procs: ChildProcess[]) {}

  /** `script`: gateway-client.js (protocol v1 over WebSocket) or http-sse.js (HTTP/SSE). */
  static async connect(url: string, n: number, numProcs: number, script = 'gateway-client.js'): Promise<Clients> {
    const k = Math.max(1, Math.min(numProcs, n));
    const procs = Array.from({ length: k }, () => fork(join(import.meta.dirname, script), [], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] }));
    const c = new Clients(procs);
    let offset = 0;
    await Promise.all(
      procs.map((p, i) => {
        const share = Math.floor(n / k) + (i < n % k ? 1 : 0);
        const reply = c.reply(p, 'ready');
        p.send({ cmd: 'connect', url, n: share, offset });
        offset += share;
        return reply;
      }),
    );
    return c;
  }

  private reply<T>(p: ChildProcess, key: string): Promise<T> {
    return new Promise((resolve, reject) => {
      const on = (m: Record<string, unknown>) => {
        if (m.error) reject(new Error(String(m.error)));
        else if (key in m) resolve(m[key] as T);
        else return;
        p.off('message', on);
      };
      p.on('message', on);
    });
  }

  /** Every session sends its prompt; resolves with the clients' measurements merged. */
  async run(genTokens: number): Promise<ClientResult> {
    const parts = await Promise.all(
      this.procs.map((p) => {
        const r = this.reply<ClientResult>(p, 'result');
        p.send({ cmd: 'run', genTokens });
        return r;
      }),
    );
    return {
      tokens: parts.reduce((a, p) => a + p.tokens, 0),
      wallMs: Math.max(...parts.map((p) => p.wallMs)),
      ttft: parts.flatMap((p) => p.ttft),
      itl: parts.flatMap((p) => p.itl),
      bad: parts.reduce((a, p) => a + p.bad, 0),
      cpuMs: parts.reduce((a, p) => a + p.cpuMs, 0),
    };
  }

  async close(): Promise<void> {
    await Promise.all(
      this.procs.map((p) => {
        const r = this.reply(p, 'closed');
        p.send({ cmd: 'close' });
        return r.then(() => p.kill());
      }),
    );
  }
}

function newGateway(engine: Engine, transport: 'ws' | 'uws', maxSessions: number): Gateway {
  const gw = new Gateway({ transport, port: 0, maxSessions, sessionSampling: { ignoreEos: true }, resumeTtlMs: 0, scheduler: schedulerOptions });
  gw.attach(engine);
  gw.format = noStopFormat(gw.format!);
  return gw;
}

/** `front`: protocol v1 over WebSocket, or streamed chat completions over HTTP/SSE. */
async function viaGateway(engine: Engine, transport: 'ws' | 'uws', n: number, front: 'ws' | 'http', prof?: LoopProfiler): Promise<Sample> {
  const gw = newGateway(engine, transport, maxN + 16);
  const steps = countSteps(gw.scheduler!);
  const base = (await gw.listen()).url;
  const clients = front === 'ws' ? await Clients.connect(base.replace('http', 'ws') + '/v1/ws', n, clientProcs) : await Clients.connect(base, n, clientProcs, 'http-sse.js');
  const cpu0 = process.cpuUsage();
  prof?.start(engine);
  const elu0 = elu_();
  const r = await clients.run(genTokens);
  const serverCpuMs = cpuMs(process.cpuUsage(cpu0));
  const elu = elu_(elu0).utilization;
  const profile = prof?.stop();
  await clients.close();
  await gw.close();
  if (r.bad > 0) throw new Error(`${front} ${transport}: ${r.bad} of ${n} responses were not whole (deltas or completion tokens other than asked, an error, no end)`);
  return { wallMs: r.wallMs, tokens: r.tokens, ttft: r.ttft, itl: r.itl, ...steps, serverCpuMs, clientCpuMs: r.cpuMs, elu, profile };
}

interface IdleResult {
  transport: string;
  sessions: number;
  rss_bytes_per_session: number;
  heap_bytes_per_session: number;
}

/**
 * RSS (and JS heap) growth of this process, the server's, per idle connected session; the
 * clients are other processes. Run in a fresh process per transport (`--idle-server`), so that
 * memory kept by earlier runs does not hide the growth.
 */
async function idleMemory(engine: Engine, transport: 'ws' | 'uws'): Promise<IdleResult> {
  const gw = newGateway(engine, transport, idle + 16);
  const url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  gc();
  const before = process.memoryUsage();
  const clients = await Clients.connect(url, idle, clientProcs);
  gc();
  const after = process.memoryUsage();
  if (gw.sessions.size !== idle) throw new Error(`idle: ${gw.sessions.size} sessions of ${idle}`);
  await clients.close();
  await gw.close();
  return {
    transport,
    sessions: idle,
    rss_bytes_per_session: Math.round((after.rss - before.rss) / idle),
    heap_bytes_per_session: Math.round((after.heapUsed - before.heapUsed) / idle),
  };
}

/** Runs idleMemory in a fresh process of this script. */
function idleInChild(transport: string): Promise<IdleResult> {
  const args = ['--idle-server', transport, '--idle', String(idle), '--client-procs', String(clientProcs), '--sessions', String(maxN), '--model', modelDir, '--backend', backend];
  for (const k of ['threads', 'contexts', 'max-batch-sequences', 'max-batch-tokens', 'max-active']) if (f[k] !== undefined) args.push(`--${k}`, String(f[k]));
  const p = fork(process.argv[1]!, args, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  return new Promise((resolve, reject) => {
    p.once('message', (m) => resolve(m as IdleResult));
    p.once('exit', (code) => reject(new Error(`the idle server for ${transport} exited with ${code}`)));
  });
}

const modelConfig = await loadModelConfig(modelDir);
// KV for every admitted session's prompt and answer (f32 elements bound the CPU's, f16 on CUDA)
const kvNeeded = kvBytesFor(modelConfig, cuda ? 2 : 4, Math.min(maxActive, maxN) + 8, promptBound + genTokens);
const engineOptions = {
  backend,
  threads: f.threads as number | undefined,
  contexts: f.contexts as number | undefined,
  maxBatchTokens: (f['max-batch-tokens'] as number | undefined) ?? (cuda ? 4096 : undefined),
  maxBatchSequences,
  maxLogitRows: maxBatchSequences,
  kvMemoryBytes: cuda ? kvNeeded : Math.max(512 * 2 ** 20, kvNeeded),
};
const loadStart = performance.now();
const engine = await Engine.load(modelDir, engineOptions);
const loadS = (performance.now() - loadStart) / 1000;
if (f['idle-server']) {
  process.send!(await idleMemory(engine, f['idle-server'] as 'ws' | 'uws'));
  engine.dispose();
  process.exit(0);
}
const format = noStopFormat(new ChatFormat(engine.tokenizer!));
const promptTokens = format.encode([{ role: 'user', content: prompt(maxN) }]).length;
if (promptTokens > promptBound) throw new Error(`the prompt is ${promptTokens} tokens, the KV pool was sized for ${promptBound}`);
const stats = engine.stats();
const modelLine =
  `${modelDir}: hidden ${modelConfig.hiddenSize}, ${modelConfig.numLayers} layers, vocab ${modelConfig.vocabSize}; ${backend} on ${stats.device || 'the CPU'}; load ${loadS.toFixed(1)} s; ` +
  `${stats.contexts} context(s), ≤ ${maxBatchSequences} sequences and ${stats.maxBatchTokens} tokens a step, ${maxActive} active; KV ${(engineOptions.kvMemoryBytes / 2 ** 30).toFixed(2)} GiB; ` +
  `prompt ${promptTokens} tokens, ${genTokens} generated per session; ${clientProcs} client process(es)`;
process.stdout.write(modelLine + '\n');
const modes = ['direct', ...transports.flatMap((t) => (http ? [`gateway ${t}`, `http/sse ${t}`] : [`gateway ${t}`]))];
async function runOnce(mode: string, n: number, prof?: LoopProfiler): Promise<Sample> {
  const s = mode === 'direct' ? await direct(engine, format, n, prof) : await viaGateway(engine, mode.split(' ')[1] as 'ws' | 'uws', n, mode.startsWith('http') ? 'http' : 'ws', prof);
  // every answer has exactly gen-tokens tokens, in every mode
  if (s.tokens !== n * genTokens) throw new Error(`${mode}, ${n} sessions: ${s.tokens} tokens, ${n * genTokens} asked`);
  return s;
}

// warm-up: every code path compiled before the first measurement
for (const mode of modes) await runOnce(mode, 4);

interface Row {
  mode: string;
  sessions: number;
  tokens_per_s: number;
  tokens_per_s_min: number;
  vs_direct: number;
  vs_direct_min: number;
  vs_direct_max: number;
  /** HTTP/SSE rows: best over the best of the WebSocket front on the same transport, and the per-round range. */
  vs_ws?: number;
  vs_ws_min?: number;
  vs_ws_max?: number;
  ttft_p50_ms: number;
  ttft_p99_ms: number;
  itl_p50_ms: number;
  itl_p99_ms: number;
  engine_busy: number;
  event_loop: number;
  server_cpu_us_per_token: number;
  client_cpu_us_per_token: number;
}
const rows: Row[] = [];
for (const n of sessionCounts) {
  const samples = new Map<string, Sample[]>(modes.map((m) => [m, []]));
  // few sessions give few TTFT samples per run: repeat until there are at least 16
  const numRuns = Math.max(repeats, Math.ceil(16 / n));
  for (let r = 0; r < numRuns; r++) for (const mode of modes) samples.get(mode)!.push(await runOnce(mode, n));
  const tps = (s: Sample) => (s.tokens / s.wallMs) * 1000;
  const directs = samples.get('direct')!;
  const bestDirect = Math.max(...directs.map(tps));
  for (const mode of modes) {
    const ss = samples.get(mode)!;
    const ratios = ss.map((s, i) => tps(s) / tps(directs[i]!));
    const best = ss.reduce((a, b) => (tps(b) > tps(a) ? b : a));
    const tokens = best.tokens;
    const wss = mode.startsWith('http') ? samples.get(mode.replace('http/sse', 'gateway'))! : null;
    const wsRatios = wss ? ss.map((s, i) => tps(s) / tps(wss[i]!)) : [];
    rows.push({
      mode,
      sessions: n,
      tokens_per_s: tps(best),
      tokens_per_s_min: Math.min(...ss.map(tps)),
      vs_direct: tps(best) / bestDirect,
      vs_direct_min: Math.min(...ratios),
      vs_direct_max: Math.max(...ratios),
      ...(wss ? { vs_ws: tps(best) / Math.max(...wss.map(tps)), vs_ws_min: Math.min(...wsRatios), vs_ws_max: Math.max(...wsRatios) } : {}),
      ttft_p50_ms: pct(ss.flatMap((s) => s.ttft), 50),
      ttft_p99_ms: pct(ss.flatMap((s) => s.ttft), 99),
      itl_p50_ms: pct(ss.flatMap((s) => s.itl), 50),
      itl_p99_ms: pct(ss.flatMap((s) => s.itl), 99),
      engine_busy: best.stepMs / best.wallMs,
      event_loop: best.elu,
      server_cpu_us_per_token: (best.serverCpuMs * 1000) / tokens,
      client_cpu_us_per_token: (best.clientCpuMs * 1000) / tokens,
    });
  }
}
const pc = (x: number) => `${(x * 100).toFixed(1)}%`;
const wsCol = http ? ' vs WebSocket best (per-round range) |' : '';
const lines = [
  `| sessions | mode | tokens/s best (min) | vs direct best (per-round range) |${wsCol} TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms | engine busy | event loop busy | CPU µs/token server + clients |`,
  '|---|---|---|---|---|---|---|---|---|---|---|' + (http ? '---|' : ''),
];
for (const r of rows) {
  const ratio = r.mode === 'direct' ? '100%' : `${pc(r.vs_direct)} (${pc(r.vs_direct_min)}–${pc(r.vs_direct_max)})`;
  const vsWs = !http ? '' : r.vs_ws === undefined ? ' |' : ` ${pc(r.vs_ws)} (${pc(r.vs_ws_min!)}–${pc(r.vs_ws_max!)}) |`;
  lines.push(
    `| ${r.sessions} | ${r.mode} | ${r.tokens_per_s.toFixed(0)} (${r.tokens_per_s_min.toFixed(0)}) | ${ratio} |${vsWs} ${r.ttft_p50_ms.toFixed(2)} | ${r.ttft_p99_ms.toFixed(2)} | ` +
      `${r.itl_p50_ms.toFixed(2)} | ${r.itl_p99_ms.toFixed(2)} | ${pc(r.engine_busy)} | ${pc(r.event_loop)} | ${r.server_cpu_us_per_token.toFixed(0)} + ${r.client_cpu_us_per_token.toFixed(0)} |`,
  );
}
process.stdout.write(lines.join('\n') + '\n');
// one profiled round per configuration, after the measured ones (the wrappers cost time of their own)
const profiles: ProfileRow[] = [];
if (!f['skip-profile']) {
  for (const n of sessionCounts) for (const mode of modes) {
    const s = await runOnce(mode, n, new LoopProfiler());
    profiles.push({ mode, sessions: n, tokens: s.tokens, ...s.profile! });
  }
  process.stdout.write('\nMain thread while streaming (a profiled round each): busy share of the wall time, then µs per token by where it went\n\n' + profileTable(profiles) + '\n');
}
const mem: IdleResult[] = [];
if (idle > 0) for (const t of transports) mem.push(await idleInChild(t));
for (const m of mem) {
  process.stdout.write(`idle sessions (${m.transport}): ${m.sessions}, ${(m.rss_bytes_per_session / 1024).toFixed(1)} KiB RSS (${(m.heap_bytes_per_session / 1024).toFixed(1)} KiB JS heap) per session, server process only\n`);
}
const typingResult = typing ? await typingRuns(repeats) : undefined;
const report = {
  model: modelDir, backend, device: stats.device, config: modelConfig, engine: engineOptions, scheduler: schedulerOptions, promptTokens, genTokens, repeats, clientProcs,
  rows, profiles, idle: mem, typing: typingResult,
};
process.stdout.write(JSON.stringify(report) + '\n');
if (f.out) writeFileSync(f.out as string, JSON.stringify(report) + '\n');
engine.dispose();
process.exit(0);

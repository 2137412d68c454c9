/**
 * npm run bench:gateway — WebSocket sessions through the gateway vs the same workload on the
 * scheduler directly (no sockets), on the embedded default model; both transports.
 *
 *   npm run bench:gateway -- [--sessions 1,16,64,256] [--gen-tokens 128] [--threads 2]
 *                            [--transports ws,uws] [--idle 10000]
 * Each session sends one prompt and streams gen-tokens tokens (EOS and the template's stop string
 * are ignored so that every answer has exactly gen-tokens tokens). Reports aggregate tokens/s,
 * time to first token p50/p99 (from message.create to the first delta) and inter-token latency
 * p50/p99, as a markdown table and a JSON line. `--idle N` also connects N idle sessions and
 * reports the server process's memory growth per session (client sockets live in the same
 * process, so this is an upper bound).
 */
import { join } from 'node:path';
import WebSocket from 'ws';
import { parseFlags } from '../src/cli/args.js';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';
import { Scheduler } from '../src/scheduler/scheduler.js';
import { ChatFormat } from '../src/session/chat-format.js';
import { Session } from '../src/session/session.js';

const f = parseFlags(process.argv.slice(2), { sessions: 'list', 'gen-tokens': 'number', threads: 'number', transports: 'string', idle: 'number', model: 'string' });
const sessionCounts = (f.sessions as number[] | undefined) ?? [1, 16, 64, 256];
const genTokens = (f['gen-tokens'] as number | undefined) ?? 128;
const transports = ((f.transports as string | undefined) ?? 'ws,uws').split(',') as ('ws' | 'uws')[];
const idle = (f.idle as number | undefined) ?? 0;
const maxN = Math.max(...sessionCounts);

interface Run {
  mode: string;
  sessions: number;
  tokens_per_s: number;
  ttft_p50_ms: number;
  ttft_p99_ms: number;
  itl_p50_ms: number;
  itl_p99_ms: number;
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};
const prompt = (i: number) => `Who was the son of David, and what did he say unto the people? ${i}`;

function summarize(mode: string, n: number, wallMs: number, tokens: number, ttft: number[], itl: number[]): Run {
  return { mode, sessions: n, tokens_per_s: (tokens / wallMs) * 1000, ttft_p50_ms: pct(ttft, 50), ttft_p99_ms: pct(ttft, 99), itl_p50_ms: pct(itl, 50), itl_p99_ms: pct(itl, 99) };
}

function noStopFormat(format: ChatFormat): ChatFormat {
  return Object.assign(Object.create(Object.getPrototypeOf(format)), format, { stopStrings: [] });
}

async function direct(engine: Engine, format: ChatFormat, n: number): Promise<Run> {
  const sched = new Scheduler(engine);
  const ttft: number[] = [];
  const itl: number[] = [];
  let tokens = 0;
  const t0 = performance.now();
  await Promise.all(
    Array.from({ length: n }, async (_, i) => {
      const s = new Session(sched, { format, sampling: { temperature: 0.8, seed: i, ignoreEos: true }, maxTokens: genTokens });
      const start = performance.now();
      let last = 0;
      for await (const ev of s.send(prompt(i))) {
        if (ev.type !== 'delta') continue;
        const now = performance.now();
        if (last === 0) ttft.push(now - start);
        else itl.push(now - last);
        last = now;
        tokens++;
      }
      await s.close();
    }),
  );
  const wall = performance.now() - t0;
  await sched.close();
  return summarize('direct', n, wall, tokens, ttft, itl);
}

async function open(url: string): Promise<{ ws: WebSocket; first: Promise<unknown> }> {
  const ws = new WebSocket(url);
  const first = new Promise((r) => ws.once('message', r));
  await new Promise<void>((res, rej) => {
    ws.once('open', () => res());
    ws.once('error', rej);
  });
  ws.on('error', () => undefined);
  await first;
  return { ws, first };
}

async function viaGateway(engine: Engine, transport: 'ws' | 'uws', n: number): Promise<Run> {
  const gw = new Gateway({ transport, port: 0, maxSessions: Math.max(idle, maxN) + 16, sessionSampling: { ignoreEos: true }, resumeTtlMs: 0 });
  gw.attach(engine);
  gw.format = noStopFormat(gw.format!);
  const url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  const clients = await Promise.all(Array.from({ length: n }, () => open(url)));
  const ttft: number[] = [];
  const itl: number[] = [];
  let tokens = 0;
  const t0 = performance.now();
  await Promise.all(
    clients.map(
      ({ ws }, i) =>
        new Promise<void>((resolve) => {
          const start = performance.now();
          let last = 0;
          ws.on('message', (d) => {
            const ev = JSON.parse(d.toString());
            if (ev.type === 'response.delta') {
              const now = performance.now();
              if (last === 0) ttft.push(now - start);
              else itl.push(now - last);
              last = now;
              tokens++;
            } else if (ev.type === 'response.done' || ev.type === 'error') resolve();
          });
          ws.send(JSON.stringify({ type: 'message.create', content: prompt(i), sampling: { temperature: 0.8, seed: i, max_tokens: genTokens } }));
        }),
    ),
  );
  const wall = performance.now() - t0;
  for (const { ws } of clients) ws.close();
  await gw.close();
  return summarize(`gateway ${transport}`, n, wall, tokens, ttft, itl);
}

async function idleMemory(engine: Engine, transport: 'ws' | 'uws'): Promise<{ transport: string; sessions: number; bytes_per_session: number }> {
  const gw = new Gateway({ transport, port: 0, maxSessions: idle + 16, resumeTtlMs: 0 });
  gw.attach(engine);
  const url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  global.gc?.();
  const before = process.memoryUsage().rss;
  const clients: WebSocket[] = [];
  for (let i = 0; i < idle; i += 50) {
    const batch = await Promise.all(Array.from({ length: Math.min(50, idle - i) }, () => open(url)));
    clients.push(...batch.map((b) => b.ws));
  }
  global.gc?.();
  const after = process.memoryUsage().rss;
  for (const ws of clients) ws.terminate();
  await gw.close();
  return { transport, sessions: idle, bytes_per_session: Math.round((after - before) / idle) };
}

const engine = await Engine.load((f.model as string | undefined) ?? join(import.meta.dirname, '..', '..', 'models', 'default'), {
  threads: f.threads as number | undefined,
  maxBatchSequences: Math.min(256, maxN),
  maxLogitRows: Math.min(256, maxN),
  kvMemoryBytes: 512 * 2 ** 20,
});
const format = noStopFormat(new ChatFormat(engine.tokenizer!));
const runs: Run[] = [];
for (const n of sessionCounts) {
  await direct(engine, format, Math.min(n, 4)); // warm-up
  const d = await direct(engine, format, n);
  runs.push(d);
  for (const t of transports) runs.push(await viaGateway(engine, t, n));
}
const rows = ['| sessions | mode | tokens/s | vs direct | TTFT p50 ms | TTFT p99 ms | ITL p50 ms | ITL p99 ms |', '|---|---|---|---|---|---|---|---|'];
for (const r of runs) {
  const d = runs.find((x) => x.mode === 'direct' && x.sessions === r.sessions)!;
  rows.push(`| ${r.sessions} | ${r.mode} | ${r.tokens_per_s.toFixed(0)} | ${((r.tokens_per_s / d.tokens_per_s) * 100).toFixed(1)}% | ${r.ttft_p50_ms.toFixed(2)} | ${r.ttft_p99_ms.toFixed(2)} | ${r.itl_p50_ms.toFixed(2)} | ${r.itl_p99_ms.toFixed(2)} |`);
}
process.stdout.write(rows.join('\n') + '\n');
const mem = [];
if (idle > 0) for (const t of transports) mem.push(await idleMemory(engine, t));
for (const m of mem) process.stdout.write(`idle sessions (${m.transport}): ${m.sessions}, ${(m.bytes_per_session / 1024).toFixed(1)} KiB RSS per session (server and client sockets in one process)\n`);
process.stdout.write(JSON.stringify({ genTokens, runs, idle: mem }) + '\n');
engine.dispose();
process.exit(0);

/**
 * npm run bench:cluster — weft instances behind NGINX sharing state in Redis (issue 15, section 4).
 *
 *   npm run bench:cluster -- [--open 500] [--parallel 20] [--sessions 16,64] [--gen-tokens 128]
 *                            [--rounds 5] [--failover 20] [--failover-tokens 400] [--window 10]
 *
 * One run starts a real redis-server and three `weft serve --instance-id cN --redis URL` children
 * (the embedded model, one thread each), an NGINX in front of the first instance only and another
 * in front of all three (test/helpers: the configuration src/cluster/nginx-conf.ts generates), and
 * measures, from this process:
 * 1. sessions/s: `--open` sessions opened and closed (session.close), `--parallel` at a time, direct
 *    to c1, through NGINX to c1 alone (the proxy's cost), through NGINX to c1–c3;
 * 2. tokens/s: `--sessions` concurrent sessions each streaming `--gen-tokens` deltas (messages one
 *    after another: the default model ends most answers at EOS after 20-50 tokens; fixed seeds,
 *    temperature 0.8, so every mode streams the same tokens), the same three modes; TTFT from
 *    sending message.create to the first delta, for the first messages (sent at once) and the rest.
 *    Both interleave the modes, `--rounds` rounds: best, worst, and per-round ratios to direct,
 *    and the CPU time the weft instances, NGINX and this process (the clients) spent (/proc, per
 *    session or per token: the proxy's cost in a form the other load on a shared machine moves less);
 * 3. Redis operations per turn: heartbeats measured idle first, then 24 multi-turn conversations
 *    (test/helpers/conversation.ts) through NGINX to c1–c3 for `--window` seconds: the sum of the
 *    instances' weft_redis_ops_total (and redis-server's own command count) over the turns completed;
 * 4. failover (last: it kills an instance): `--failover` long answers through NGINX to c1–c3; once
 *    the instance holding most of them is a third through their answers it gets SIGKILL; each of
 *    its sessions reconnects through NGINX with its resume token, response id and last seq. Per
 *    session: kill → socket closed, kill → session.resumed (the survivor waits for the dead
 *    instance's heartbeat key to expire: TTL 1 s), resumed → first new delta (the new owner's
 *    re-prefill and the re-decoding of the deltas already sent), and whether every seq came once
 *    with the text of an uninterrupted run of the same seed (run first, direct to c1).
 * Prints markdown tables and a JSON line. The `weft serve` launcher is a copy of
 * test/helpers/weft-process.ts's: compiled into dist/test/helpers, that file would look for the CLI
 * under dist/dist/.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { cpus, loadavg } from 'node:os';
import { join } from 'node:path';
import { Redis } from 'ioredis';
import WebSocket from 'ws';
import { parseFlags } from '../src/cli/args.js';
import { Conversation } from '../test/helpers/conversation.js';
import { Nginx } from '../test/helpers/nginx.js';
import { RedisServer } from '../test/helpers/redis.js';
import { freePort } from '../test/helpers/system.js';

const f = parseFlags(process.argv.slice(2), {
  open: 'number', parallel: 'number', sessions: 'list', 'gen-tokens': 'number', rounds: 'number', failover: 'number', 'failover-tokens': 'number', window: 'number',
});
const numOpen = (f.open as number | undefined) ?? 500;
const parallel = (f.parallel as number | undefined) ?? 20;
const concurrencies = (f.sessions as number[] | undefined) ?? [16, 64];
const genTokens = (f['gen-tokens'] as number | undefined) ?? 128;
const rounds = (f.rounds as number | undefined) ?? 5;
const numFailover = (f.failover as number | undefined) ?? 20;
const failoverTokens = (f['failover-tokens'] as number | undefined) ?? 400;
const windowS = (f.window as number | undefined) ?? 10;

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Ev = Record<string, any>;
const CLI = join(import.meta.dirname, '..', 'src', 'cli', 'main.js');
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (xs: number[], p: number) => {
  const s = Float64Array.from(xs).sort();
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};
const prompt = (i: number) => `Tell me a story about a lighthouse keeper. (#${i})`;
const sampling = (seed: number, maxTokens: number) => ({ temperature: 0.8, top_k: 40, seed, max_tokens: maxTokens });

/** A `weft serve` child with an instance id and Redis (test/helpers/weft-process.ts's way of starting one). */
class Instance {
  private out = '';
  err = '';
  private readonly exited: Promise<void>;
  private constructor(readonly id: string, readonly port: number, private readonly child: ChildProcess) {
    child.stdout!.on('data', (d) => (this.out = (this.out + d).slice(-50_000)));
    child.stderr!.on('data', (d) => (this.err = (this.err + d).slice(-200_000)));
    this.exited = new Promise((r) => child.on('exit', () => r()));
  }

  static async start(id: string, redis: string): Promise<Instance> {
    const port = await freePort();
    const args = [CLI, 'serve', '--port', String(port), '--threads', '1', '--kv-memory', '128MiB', '--instance-id', id, '--redis', redis];
    const p = new Instance(id, port, spawn(process.execPath, args, { stdio: ['ignore', 'pipe', 'pipe'] }));
    const deadline = Date.now() + 30_000;
    while (!p.out.includes('weft ready') && p.child.exitCode === null && Date.now() < deadline) await sleep(25);
    if (!p.out.includes('weft ready')) throw new Error(`weft serve ${id} did not get ready:\n${p.out}\n${p.err}`);
    return p;
  }

  get pid(): number {
    return this.child.pid!;
  }

  get address(): string {
    return `127.0.0.1:${this.port}`;
  }

  /** SIGKILL; resolves with the moment the signal was sent, once the process is gone. */
  async kill(): Promise<number> {
    const t = performance.now();
    if (this.child.exitCode === null && this.child.signalCode === null) this.child.kill('SIGKILL');
    await this.exited;
    return t;
  }

  /** Its Prometheus text, as series → value. */
  async metrics(): Promise<Map<string, number>> {
    const text = await (await fetch(`http://${this.address}/metrics`)).text();
    const m = new Map<string, number>();
    for (const line of text.split('\n')) {
      const hit = /^(\w+(?:\{[^}]*\})?) (\S+)$/.exec(line);
      if (hit) m.set(hit[1]!, Number(hit[2]));
    }
    return m;
  }
}

/** The sum of every series of `name` (all labels) over these instances' metrics. */
async function metricSum(insts: Instance[], name: string): Promise<number> {
  let sum = 0;
  for (const m of await Promise.all(insts.map((p) => p.metrics()))) for (const [k, v] of m) if (k === name || k.startsWith(`${name}{`)) sum += v;
  return sum;
}

/** One protocol v1 socket; every frame kept with the moment it arrived. */
class Sock {
  readonly ws: WebSocket;
  private readonly frames: { t: number; ev: Ev }[] = [];
  private pos = 0;
  private wake: (() => void) | null = null;
  closedAt = 0;
  constructor(url: string) {
    const ws = (this.ws = new WebSocket(url));
    ws.on('message', (d) => {
      this.frames.push({ t: performance.now(), ev: JSON.parse(String(d)) as Ev });
      this.wake?.();
    });
    ws.on('close', () => {
      this.closedAt = performance.now();
      this.wake?.();
    });
    ws.on('error', () => undefined);
  }

  /** The next frame, or null once the socket closed and every frame was read. */
  async next(): Promise<{ t: number; ev: Ev } | null> {
    while (this.pos >= this.frames.length) {
      if (this.closedAt) return null;
      await new Promise<void>((r) => (this.wake = r));
      this.wake = null;
    }
    return this.frames[this.pos++]!;
  }

  send(ev: Ev): void {
    this.ws.send(JSON.stringify(ev));
  }

  /** Ends the session (session.close) and waits for the server to close the socket. */
  async end(): Promise<void> {
    this.send({ type: 'session.close' });
    while (await this.next());
  }
}

/** A socket whose session was created. */
async function session(url: string): Promise<Sock> {
  const s = new Sock(url);
  const first = await s.next();
  if (first?.ev.type !== 'session.created') throw new Error(`no session.created from ${url}: ${JSON.stringify(first?.ev)}`);
  return s;
}

/** Opens and closes `n` sessions, `parallel` at a time: sessions per second. */
async function openClose(url: string, n: number): Promise<number> {
  let left = n;
  const t0 = performance.now();
  const worker = async () => {
    while (left-- > 0) await (await session(url)).end();
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return (n / (performance.now() - t0)) * 1000;
}

interface Stream {
  tokens: number;
  turns: number;
  wallMs: number;
  /** The first message of every session (all sent at once). */
  ttftFirst: number[];
  /** Every later message (each sent when the session's previous answer ended). */
  ttftLater: number[];
}

/**
 * `c` sessions each stream `genTokens` tokens: they send their first messages at once and, as each
 * answer ends (most end at EOS after 20-50 tokens), the next, until they have `genTokens` deltas.
 */
async function stream(url: string, c: number): Promise<Stream> {
  const socks = await Promise.all(Array.from({ length: c }, () => session(url)));
  const r: Stream = { tokens: 0, turns: 0, wallMs: 0, ttftFirst: [], ttftLater: [] };
  const t0 = performance.now();
  await Promise.all(
    socks.map(async (s, i) => {
      let got = 0;
      for (let turn = 0; got < genTokens; turn++) {
        const sentAt = turn === 0 ? t0 : performance.now();
        s.send({ type: 'message.create', content: `${prompt(i)} Turn ${turn}.`, sampling: sampling(1000 + i * 100 + turn, genTokens - got) });
        for (let fr = await s.next(); ; fr = await s.next()) {
          if (!fr || fr.ev.type === 'error') throw new Error(`session ${i}: ${fr ? JSON.stringify(fr.ev) : 'closed mid-answer'}`);
          if (fr.ev.type === 'response.done') {
            r.wallMs = Math.max(r.wallMs, fr.t - t0);
            break;
          }
          if (fr.ev.type !== 'response.delta') continue;
          got++;
          if (fr.ev.seq === 0) (turn === 0 ? r.ttftFirst : r.ttftLater).push(fr.t - sentAt);
        }
        r.turns++;
      }
      r.tokens += got;
    }),
  );
  await Promise.all(socks.map((s) => s.end()));
  return r;
}

/**
 * One answer through the proxy that outlives its instance: on a close it reconnects with its
 * resume token, response id and last seq (as test/helpers/conversation.ts does), every delta timed.
 */
class Resumable {
  token = '';
  responseId = '';
  text = '';
  readonly seqs: number[] = [];
  readonly deltaAt: number[] = [];
  readonly instances: string[] = [];
  readonly errors: string[] = [];
  done: Ev | null = null;
  closedAt = 0;
  resumedAt = 0;
  /** Deltas received before the resume (the first one after it is deltaAt[seqsAtResume]). */
  seqsAtResume = -1;
  private sock: Sock | null = null;
  constructor(private readonly url: string) {}

  get instance(): string {
    return this.instances[this.instances.length - 1] ?? '';
  }

  private adopt(s: Sock, ev: Ev): void {
    this.sock = s;
    this.token = ev.resume_token as string;
    const id = this.token.slice(0, this.token.indexOf('.'));
    if (this.instance !== id) this.instances.push(id);
  }

  async start(): Promise<void> {
    const s = new Sock(this.url);
    this.adopt(s, (await s.next())!.ev);
  }

  async answer(content: string, samp: Ev): Promise<void> {
    this.sock!.send({ type: 'message.create', content, sampling: samp });
    for (;;) {
      const fr = await this.sock!.next();
      if (!fr) {
        this.closedAt ||= this.sock!.closedAt;
        await this.reopen();
        continue;
      }
      const ev = fr.ev;
      if (ev.type === 'error') this.errors.push(ev.code as string);
      else if (ev.type === 'response.created') this.responseId = ev.response_id as string;
      else if (ev.type === 'response.delta' && ev.response_id === this.responseId) {
        this.seqs.push(ev.seq as number);
        this.deltaAt.push(fr.t);
        this.text += ev.text as string;
      } else if (ev.type === 'response.done' && ev.response_id === this.responseId) return void (this.done = ev);
    }
  }

  private async reopen(): Promise<void> {
    const deadline = performance.now() + 30_000;
    for (let attempt = 0; performance.now() < deadline; attempt++) {
      const last = this.seqs.length ? this.seqs[this.seqs.length - 1] : -1;
      const s = new Sock(`${this.url}?resume=${encodeURIComponent(this.token)}${this.responseId ? `&response_id=${this.responseId}&last_seq=${last}` : ''}`);
      const fr = await s.next();
      if (fr?.ev.type === 'session.resumed') {
        this.resumedAt = fr.t;
        this.seqsAtResume = this.seqs.length;
        return this.adopt(s, fr.ev);
      }
      this.errors.push(fr ? (fr.ev.code as string | undefined) ?? fr.ev.type : 'closed');
      if (fr?.ev.type === 'session.created') throw new Error('the session was lost: a fresh one was created');
      s.ws.terminate();
      await sleep(Math.min(1000, 100 * (attempt + 1)));
    }
    throw new Error(`could not resume: ${this.errors.join(', ')}`);
  }
}

/** NGINX's error-log lines at error or worse, by message (connection numbers, addresses and requests left out). */
function nginxErrors(n: Nginx): Record<string, number> {
  const out: Record<string, number> = {};
  for (const l of readFileSync(join(n.dir, 'error.log'), 'utf8').split('\n')) {
    const m = /\[(error|crit|alert|emerg)\] [\d#]+: (?:\*\d+ )?([^,]*)/.exec(l);
    if (m) out[m[2]!] = (out[m[2]!] ?? 0) + 1;
  }
  return out;
}

/** Each process's CPU time when last read (a process that is gone keeps its last figure). */
const lastCpuMs = new Map<number, number>();

/** CPU time (user + system, every thread) of these processes since they started, ms: /proc/PID/stat, 10 ms ticks. */
function procCpuMs(pids: number[]): number {
  let sum = 0;
  for (const pid of pids) {
    try {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      lastCpuMs.set(pid, (Number(f[11]) + Number(f[12])) * 10);
    } catch {
      // gone: its last figure
    }
    sum += lastCpuMs.get(pid) ?? 0;
  }
  return sum;
}

/** NGINX's processes: those whose command line names its prefix (its master, and the watchdog shell), and their children (the worker). */
function nginxPids(n: Nginx): number[] {
  const procs = readdirSync('/proc').filter((d) => /^\d+$/.test(d)).map((d) => {
    try {
      const stat = readFileSync(`/proc/${d}/stat`, 'utf8');
      return { pid: Number(d), ppid: Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]), cmd: readFileSync(`/proc/${d}/cmdline`, 'utf8') };
    } catch {
      return null;
    }
  }).filter((p) => p !== null);
  const own = new Set(procs.filter((p) => p.cmd.includes(n.dir)).map((p) => p.pid));
  return procs.filter((p) => own.has(p.pid) || own.has(p.ppid)).map((p) => p.pid);
}

/** CPU ms of the weft instances, the NGINX processes and this process (the clients). */
interface Cpu {
  weft: number;
  nginx: number;
  client: number;
}

// ---- the run ------------------------------------------------------------------------------------

const cpu = /model name\s*:\s*(.*)/.exec(readFileSync('/proc/cpuinfo', 'utf8'))?.[1] ?? 'unknown';
const machine = `${cpu}, ${cpus().length} cores, Node ${process.version}`;
process.stdout.write(`${machine}; load average ${loadavg().map((x) => x.toFixed(2)).join(' ')}\n`);
const redis = await RedisServer.start();
const insts = await Promise.all(['c1', 'c2', 'c3'].map((id) => Instance.start(id, redis.url)));
const proxy1 = await Nginx.start({ instances: [insts[0]!].map((p) => ({ id: p.id, address: p.address })) });
const proxy3 = await Nginx.start({ instances: insts.map((p) => ({ id: p.id, address: p.address })) });
const proxyPids = [...nginxPids(proxy1), ...nginxPids(proxy3)];
const cpuNow = (): Cpu => {
  const c = process.cpuUsage();
  return { weft: procCpuMs(insts.map((p) => p.pid)), nginx: procCpuMs(proxyPids), client: (c.user + c.system) / 1000 };
};
/** Runs `fn`, and the CPU every party spent meanwhile. */
async function measured<T>(fn: () => Promise<T>): Promise<{ value: T; cpu: Cpu }> {
  const a = cpuNow();
  const value = await fn();
  const b = cpuNow();
  return { value, cpu: { weft: b.weft - a.weft, nginx: b.nginx - a.nginx, client: b.client - a.client } };
}
/** The median of each party's CPU over runs, per unit of work, formatted `weft + NGINX + client`. */
const cpuPer = (runs: { cpu: Cpu }[], units: (i: number) => number, scale: number) =>
  (['weft', 'nginx', 'client'] as const).map((k) => (pct(runs.map((r, i) => (r.cpu[k] / units(i)) * scale), 50)).toFixed(0)).join(' + ');
const ws = (httpUrl: string) => httpUrl.replace('http', 'ws') + '/v1/ws';
const modes: [string, string][] = [['direct c1', ws(`http://${insts[0]!.address}`)], ['NGINX → c1', ws(proxy1.url)], ['NGINX → c1–c3', ws(proxy3.url)]];
const pc = (x: number) => `${(x * 100).toFixed(1)}%`;
const ms = (x: number) => x.toFixed(0);
const out: Record<string, unknown> = { machine, rounds };
const lines: string[] = [];
// how much of the machine processes other than this bench's used (other engineers' tests): the
// machine's busy time (/proc/stat) less that of the instances, NGINX, redis-server and this process
const redisPids = readdirSync('/proc').filter((d) => /^\d+$/.test(d) && readFileSync(`/proc/${d}/cmdline`, 'utf8').includes(`redis-server 127.0.0.1:${redis.port}`)).map(Number);
const machineBusyMs = () => {
  const f = readFileSync('/proc/stat', 'utf8').split('\n')[0]!.trim().split(/\s+/).slice(1).map(Number);
  return (f[0]! + f[1]! + f[2]! + f[5]! + f[6]! + f[7]!) * 10; // user nice system irq softirq steal
};
const oursMs = () => {
  const c = cpuNow();
  return c.weft + c.nginx + c.client + procCpuMs(redisPids);
};
const loads: string[] = [];
let last = { t: performance.now(), busy: machineBusyMs(), ours: oursMs() };
const noteLoad = (what: string) => {
  const now = { t: performance.now(), busy: machineBusyMs(), ours: oursMs() };
  const others = (now.busy - last.busy - (now.ours - last.ours)) / ((now.t - last.t) * cpus().length);
  loads.push(`${what}: ${pc(Math.max(0, others))} (load average ${loadavg()[0]!.toFixed(2)})`);
  last = now;
};
try {
  // heartbeats (and whatever else an idle instance does), measured with nothing else running
  const redisCli = new Redis(redis.url);
  // what redis-server ran, by command (commands inside scripts included), from INFO commandstats
  const commands = async () => new Map([...(await redisCli.info('commandstats')).matchAll(/cmdstat_(\w+):calls=(\d+)/g)].map((m) => [m[1]!, Number(m[2])]));
  const idle0 = { ops: await metricSum(insts, 'weft_redis_ops_total'), t: performance.now() };
  await sleep(3000);
  noteLoad('idle 3 s');
  const idleOpsPerS = ((await metricSum(insts, 'weft_redis_ops_total')) - idle0.ops) / ((performance.now() - idle0.t) / 1000);
  out.idle_ops_per_s = idleOpsPerS;

  // 1. sessions per second
  const opened = new Map<string, { value: number; cpu: Cpu }[]>(modes.map(([m]) => [m, []]));
  for (const [, url] of modes) await openClose(url, 100); // warm-up
  const ops0 = { ops: await metricSum(insts, 'weft_redis_ops_total'), t: performance.now() };
  for (let r = 0; r < rounds; r++) for (const [m, url] of modes) opened.get(m)!.push(await measured(() => openClose(url, numOpen)));
  const opsPerSession = ((await metricSum(insts, 'weft_redis_ops_total')) - ops0.ops - (idleOpsPerS * (performance.now() - ops0.t)) / 1000) / (rounds * modes.length * numOpen);
  noteLoad('sessions/s');
  const directOpen = opened.get('direct c1')!.map((r) => r.value);
  lines.push(`sessions/s (${numOpen} sessions opened and closed, ${parallel} at a time; Redis ops per session open + close, heartbeats taken out: ${opsPerSession.toFixed(2)})`, '', '| mode | sessions/s best (min) | vs direct best (per-round range) | CPU ms per 100 sessions: weft + NGINX + client (median) |', '|---|---|---|---|');
  for (const [m] of modes) {
    const xs = opened.get(m)!.map((r) => r.value);
    const ratios = xs.map((x, i) => x / directOpen[i]!);
    lines.push(`| ${m} | ${ms(Math.max(...xs))} (${ms(Math.min(...xs))}) | ${pc(Math.max(...xs) / Math.max(...directOpen))} (${pc(Math.min(...ratios))}–${pc(Math.max(...ratios))}) | ${cpuPer(opened.get(m)!, () => numOpen, 100)} |`);
  }
  out.sessions_per_s = Object.fromEntries(opened);
  out.redis_ops_per_session = opsPerSession;

  // 2. tokens per second
  lines.push('', `tokens/s (each session streams ${genTokens} tokens: messages one after another, seeds fixed; TTFT of the first messages, sent at once, and of the later ones)`, '', '| sessions | mode | tokens (turns) | tokens/s best (min) | vs direct best (per-round range) | TTFT first p50 / p99 ms | TTFT later p50 / p99 ms | CPU µs per token: weft + NGINX + client (median) |', '|---|---|---|---|---|---|---|---|');
  const streams: Record<string, Record<string, { value: Stream; cpu: Cpu }[]>> = {};
  for (const c of concurrencies) {
    const runs = new Map<string, { value: Stream; cpu: Cpu }[]>(modes.map(([m]) => [m, []]));
    for (const [, url] of modes) await stream(url, c); // warm-up
    for (let r = 0; r < rounds; r++) for (const [m, url] of modes) runs.get(m)!.push(await measured(() => stream(url, c)));
    noteLoad(`${c} sessions`);
    const tps = (s: Stream) => (s.tokens / s.wallMs) * 1000;
    const directs = runs.get('direct c1')!.map((r) => r.value);
    for (const [m] of modes) {
      const ss = runs.get(m)!.map((r) => r.value);
      const ratios = ss.map((s, i) => tps(s) / tps(directs[i]!));
      const best = Math.max(...ss.map(tps));
      const first = ss.flatMap((s) => s.ttftFirst);
      const later = ss.flatMap((s) => s.ttftLater);
      lines.push(`| ${c} | ${m} | ${ss[0]!.tokens} (${ss[0]!.turns}) | ${ms(best)} (${ms(Math.min(...ss.map(tps)))}) | ${pc(best / Math.max(...directs.map(tps)))} (${pc(Math.min(...ratios))}–${pc(Math.max(...ratios))}) | ${ms(pct(first, 50))} / ${ms(pct(first, 99))} | ${ms(pct(later, 50))} / ${ms(pct(later, 99))} | ${cpuPer(runs.get(m)!, (i) => ss[i]!.tokens, 1000)} |`);
    }
    streams[c] = Object.fromEntries(runs);
  }
  out.tokens = Object.fromEntries(Object.entries(streams).map(([c, r]) => [c, Object.fromEntries(Object.entries(r).map(([m, ss]) => [m, ss.map(({ value: s, cpu: u }) => ({ tokens: s.tokens, turns: s.turns, wall_ms: s.wallMs, ttft_first_p50_ms: pct(s.ttftFirst, 50), ttft_later_p50_ms: pct(s.ttftLater, 50), cpu_ms: u }))]))]));

  // 3. Redis operations per turn: conversations going on turn after turn through NGINX to c1–c3
  const convs = Array.from({ length: 24 }, () => new Conversation(ws(proxy3.url)));
  await Promise.all(convs.map((c) => c.start()));
  let counting = false;
  let stop = false;
  let turns = 0;
  let tokens = 0;
  let turnMs = 0;
  const talking = Promise.all(
    convs.map(async (c, i) => {
      for (let t = 0; !stop; t++) {
        const r = await c.turn(`${prompt(i)} Turn ${t}.`, sampling(5000 + i * 100 + t, 40));
        if (!counting) continue;
        turns++;
        tokens += r.seqs.length;
        turnMs += (r.done.timing as { duration_ms: number }).duration_ms;
      }
    }),
  );
  await sleep(2000);
  const w0 = { ops: await metricSum(insts, 'weft_redis_ops_total'), cmds: await commands(), t: performance.now() };
  counting = true;
  await sleep(windowS * 1000);
  counting = false;
  const w1 = { ops: await metricSum(insts, 'weft_redis_ops_total'), cmds: await commands(), t: performance.now() };
  stop = true;
  await talking;
  for (const c of convs) c.close();
  noteLoad('Redis ops/turn');
  const secs = (w1.t - w0.t) / 1000;
  const byCommand: Record<string, number> = {};
  for (const [c, n] of w1.cmds) if (c !== 'info' && n > (w0.cmds.get(c) ?? 0)) byCommand[c] = (n - (w0.cmds.get(c) ?? 0)) / turns;
  const redisCommands = Object.values(byCommand).reduce((x, y) => x + y, 0);
  const redisOps = { window_s: secs, turns, tokens_per_turn: tokens / turns, turn_ms: turnMs / turns, ops_per_turn: (w1.ops - w0.ops) / turns, heartbeat_ops_per_turn: (idleOpsPerS * secs) / turns, redis_commands_per_turn: redisCommands, by_command: byCommand, idle_ops_per_s: idleOpsPerS };
  out.redis_ops = redisOps;
  lines.push('', `Redis operations per turn (24 conversations through NGINX → c1–c3, ${secs.toFixed(1)} s window, ${turns} turns of ${redisOps.tokens_per_turn.toFixed(1)} tokens, ${ms(redisOps.turn_ms)} ms each on average)`, '', '| weft_redis_ops_total per turn | of which heartbeats (idle rate ' + idleOpsPerS.toFixed(1) + '/s for 3 instances) | without heartbeats | redis-server commands per turn (inside scripts included) |', '|---|---|---|---|');
  lines.push(`| ${redisOps.ops_per_turn.toFixed(2)} | ${redisOps.heartbeat_ops_per_turn.toFixed(2)} | ${(redisOps.ops_per_turn - redisOps.heartbeat_ops_per_turn).toFixed(2)} | ${redisCommands.toFixed(2)} |`, '', `by command, per turn: ${Object.entries(byCommand).map(([c, n]) => `${c} ${n.toFixed(2)}`).join(', ')}`);

  // 4. failover. The uninterrupted answers first, direct to c1: of 5 candidate seeds per session the
  // one with the longest answer (the default model ends most answers at EOS after 20-50 tokens)
  const candidates: { i: number; text: string; n: number }[] = [];
  for (let i = 0; i < numFailover * 5; i += 20) {
    await Promise.all(
      Array.from({ length: Math.min(20, numFailover * 5 - i) }, async (_, k) => {
        const r = new Resumable(modes[0]![1]);
        await r.start();
        await r.answer(prompt(100 + i + k), sampling(9000 + i + k, failoverTokens));
        candidates.push({ i: i + k, text: r.text, n: r.seqs.length });
      }),
    );
  }
  const want = candidates.sort((a, b) => b.n - a.n).slice(0, numFailover);
  const runs = Array.from({ length: numFailover }, () => new Resumable(ws(proxy3.url)));
  await Promise.all(runs.map((r) => r.start()));
  const count = (id: string) => runs.filter((r) => r.instance === id).length;
  const victim = [...insts].sort((a, b) => count(b.id) - count(a.id))[0]!;
  const before = new Map(await Promise.all(insts.map(async (p) => [p.id, await p.metrics()] as const)));
  const answers = Promise.all(runs.map((r, k) => r.answer(prompt(100 + want[k]!.i), sampling(9000 + want[k]!.i, failoverTokens))));
  const mine = runs.filter((r) => r.instance === victim.id);
  // killed once its sessions have received (median) a third of the deltas of their uninterrupted runs
  const killAfter = Math.max(1, Math.floor(pct(mine.map((r) => want[runs.indexOf(r)]!.n), 50) / 3));
  while (pct(mine.map((r) => r.seqs.length), 50) < killAfter && mine.some((r) => !r.done)) await sleep(2);
  const running = mine.filter((r) => !r.done);
  cpuNow(); // its CPU time until now counts as this bench's (a process that is gone cannot be read)
  const killAt = await victim.kill();
  // when the dead instance's heartbeat key expires (an EXISTS expires it lazily: what a claim sees)
  while (await redisCli.exists(`weft:inst:${victim.id}`)) await sleep(5);
  const expiredAt = performance.now();
  await answers;
  noteLoad('failover');
  const survivors = insts.filter((p) => p !== victim);
  const after = new Map(await Promise.all(survivors.map(async (p) => [p.id, await p.metrics()] as const)));
  const takeovers: Record<string, number> = {};
  for (const p of survivors) for (const [k, v] of after.get(p.id)!) if (k.startsWith('weft_session_takeovers_total{')) takeovers[k] = (takeovers[k] ?? 0) + v - (before.get(p.id)!.get(k) ?? 0);
  const wrong = runs.filter((r, i) => r.text !== want[i]!.text || r.seqs.length !== want[i]!.n || r.seqs.some((s, k) => s !== k)).length;
  // those whose answer ended in flight as the instance died resumed nothing
  const hit = running.filter((r) => r.resumedAt > 0 && r.seqsAtResume < r.seqs.length);
  const hitSeqs = hit.map((r) => r.seqsAtResume);
  const closeMs = hit.map((r) => r.closedAt - killAt);
  const resumedMs = hit.map((r) => r.resumedAt - killAt);
  const firstMs = hit.map((r) => r.deltaAt[r.seqsAtResume]! - killAt);
  const afterExpiryMs = hit.map((r) => r.resumedAt - expiredAt);
  const regenMs = hit.map((r) => r.deltaAt[r.seqsAtResume]! - r.resumedAt);
  const ttftNew = hit.map((r) => (r.done!.timing as { ttft_ms: number }).ttft_ms);
  const promptTokens = hit.map((r) => (r.done!.usage as { prompt_tokens: number }).prompt_tokens);
  const row = (name: string, xs: number[]) => `| ${name} | ${ms(pct(xs, 50))} | ${ms(pct(xs, 99))} | ${ms(Math.max(...xs))} |`;
  const fo = {
    victim: victim.id, sessions_on_victim: mine.length, running_at_kill: running.length, resumed_mid_answer: hit.length, deltas_before_kill: hitSeqs, wrong, takeovers,
    moved_to: Object.fromEntries(survivors.map((p) => [p.id, hit.filter((r) => r.instance === p.id).length])),
    errors: runs.flatMap((r) => r.errors), key_expired_ms: expiredAt - killAt, close_ms: closeMs, resumed_ms: resumedMs, first_delta_ms: firstMs, regen_ms: regenMs, new_owner_ttft_ms: ttftNew, prompt_tokens: promptTokens,
    nginx_errors: nginxErrors(proxy3),
    taken_over_logged: survivors.map((p) => (p.err.match(/taken over from /g) ?? []).length).reduce((a, b) => a + b, 0),
    survivor_log: survivors.flatMap((p) => p.err.split('\n').filter((l) => /takeover|another instance|failed|refused/.test(l) && !/taken over from/.test(l))),
  };
  out.failover = fo;
  lines.push(
    '',
    `failover: ${victim.id} (${mine.length} of ${numFailover} sessions, ${running.length} running at the kill, ${hit.length} resumed mid-answer with ${pct(hitSeqs, 50)} deltas (median) received, prompts of ${pct(promptTokens, 50)} tokens) SIGKILLed; its heartbeat key expired ${ms(expiredAt - killAt)} ms after the kill; moved to ${JSON.stringify(fo.moved_to)}; takeovers ${JSON.stringify(takeovers)}; answers not equal to the uninterrupted run (or a seq not exactly once): ${wrong}; errors seen by clients: ${JSON.stringify(fo.errors)}; survivors logged ${fo.taken_over_logged} "taken over from" and ${JSON.stringify(fo.survivor_log)}; NGINX error log (error or worse): ${JSON.stringify(fo.nginx_errors)}`,
    '',
    '| ms after the SIGKILL (per session mid-answer) | p50 | p99 | max |',
    '|---|---|---|---|',
    row('socket closed (client sees the death)', closeMs),
    row('session.resumed on a survivor (the goal: < 1000)', resumedMs),
    row('session.resumed after the heartbeat key expired (claim retried every 100 ms, then the takeover)', afterExpiryMs),
    row('first new delta', firstMs),
    row('resumed → first new delta (re-prefill + re-decode of the deltas sent)', regenMs),
    row("the regenerated answer's ttft_ms on the new owner (queue + prefill)", ttftNew),
  );
  await redisCli.quit();
} finally {
  await Promise.all([proxy1.stop(), proxy3.stop()]);
  await Promise.all(insts.map((p) => p.kill()));
  await redis.stop();
}
lines.push('', `the cores' time used by other processes, by phase: ${loads.join('; ')}`);
process.stdout.write(lines.join('\n') + '\n' + JSON.stringify(out) + '\n');
process.exit(0);

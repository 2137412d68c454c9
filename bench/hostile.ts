/**
 * node dist/bench/hostile.js — do one client's large frames stall every other stream? (issue 9)
 *
 *   node dist/bench/hostile.js [--weft DIR] [--transport ws|uws|both] [--seconds 8] [--attackers 1,4]
 *                              [--frame-bytes N] [--grace 20] [--json]
 * prints a markdown table (and with --json one JSON line after it).
 * Per transport, each phase on a fresh server: baseline (the victim alone), then the victim under
 * attack by 1 and by 4 attacker connections. The server is a child process, `node
 * DIR/dist/src/cli/main.js serve --port 0 --transport T` of the weft checkout DIR (default: this
 * repository), on the embedded default model; other server options go through the environment
 * only (WEFT_*: older builds ignore the ones they do not know).
 *
 * The victim (a child process) streams turns back to back, {temperature: 0.9, seed: k,
 * max_tokens: 64}, opening a new session on WEFT_CONTEXT_OVERFLOW; it records the gaps between
 * consecutive response.delta arrivals of a response and TTFT (message.create sent to the first
 * delta). Tokens/s counts the deltas that arrived within the phase; gaps and TTFT those that began
 * within it (a stall across the phase's end counts whole). The attackers (another child process,
 * one connection each) send message.create frames of `limits.max_frame_bytes` - 16 bytes (or
 * `--frame-bytes`) of plain words without waiting for answers: a frame is queued whenever ws's
 * bufferedAmount is under 4 MiB. Each carries an event_id: an answer that echoes it gives the
 * latency from ws.send. A connection the server closes is reopened (counted as `close:CODE`).
 *
 * Bounded time: after `--seconds` the attackers stop and drop their connections and the victim
 * starts no more turns; a turn still running has `--grace` seconds to end, then it is cut and its
 * open gap counts as it stands ("stalled at the cut").
 * Goal (attacked phases): the victim's largest gap < 50 ms + one engine step: the server's mean
 * step (/metrics) in the same transport's baseline, as under attack the event loop's stalls
 * inflate the measured step (launch to results).
 */
import { execFileSync, fork, spawn, type ChildProcess } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { join, resolve } from 'node:path';
import WebSocket from 'ws';
import { parseFlags } from '../src/cli/args.js';

const f = parseFlags(process.argv.slice(2), {
  weft: 'string', transport: 'string', seconds: 'number', attackers: 'list', 'frame-bytes': 'number', grace: 'number', json: 'boolean',
  role: 'string', url: 'string', connections: 'number',
});
const seconds = (f.seconds as number | undefined) ?? 8;
const graceS = (f.grace as number | undefined) ?? 20;
const frameBytes = f['frame-bytes'] as number | undefined;
const IN_FLIGHT_BYTES = 4 << 20;
const WORDS = 'and the LORD said unto Moses ';

const now = () => performance.now();
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const pct = (xs: number[], p: number) => {
  const s = Float64Array.from(xs).sort();
  return s.length ? s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]! : NaN;
};
const max = (xs: number[]) => xs.reduce((a, b) => Math.max(a, b), -Infinity);
const count = (m: Record<string, number>, k: string) => (m[k] = (m[k] ?? 0) + 1);

// ---------------------------------------------------------------- client processes

/** Connects and waits for session.created. */
function openSession(url: string): Promise<{ ws: WebSocket; limits: { max_frame_bytes: number } }> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true });
    ws.once('error', reject);
    ws.once('close', (code) => reject(new Error(`closed (${code}) before session.created`)));
    ws.once('message', (d: Buffer) => {
      const ev = JSON.parse(d.toString());
      ws.removeAllListeners('error').removeAllListeners('close').on('error', () => undefined);
      if (ev.type === 'session.created') resolve({ ws, limits: ev.session.limits });
      else reject(new Error(`expected session.created, got ${d.toString().slice(0, 200)}`));
    });
  });
}

const go = () => new Promise<void>((r) => process.once('message', () => r()));

/** tokens: deltas that arrived within the window; gaps: those that began within it; codes: what ended turns early. */
type VictimResult = { tokens: number; turns: number; sessions: number; gaps: number[]; ttft: number[]; codes: Record<string, number>; stalled: boolean };

async function victim(url: string): Promise<void> {
  const r: VictimResult = { tokens: 0, turns: 0, sessions: 1, gaps: [], ttft: [], codes: {}, stalled: false };
  let measuring = false;
  let windowEnd = Infinity;
  let current: { sentAt: number; last: number } | null = null;
  let reported = false;
  const report = () => {
    if (reported) return;
    reported = true;
    const began = current ? current.last || current.sentAt : Infinity;
    if (measuring && began <= windowEnd) {
      // cut by the grace deadline: the open gap (or wait for a first token) as it stands
      (current!.last ? r.gaps : r.ttft).push(now() - began);
      r.stalled = true;
    }
    process.send!({ result: r }, () => process.exit(0));
  };
  /** One turn; resolves with the error code that ended it, '' when it completed. */
  const turn = (ws: WebSocket, k: number) =>
    new Promise<string>((resolve) => {
      if (ws.readyState !== WebSocket.OPEN) return resolve('close:gone');
      const t = (current = { sentAt: now(), last: 0 });
      const end = (code: string) => {
        ws.off('message', onMessage).off('close', onClose);
        current = null;
        resolve(code);
      };
      const onMessage = (d: Buffer) => {
        const at = now();
        const ev = JSON.parse(d.toString());
        if (ev.type === 'response.delta') {
          if (measuring && (t.last || t.sentAt) <= windowEnd) (t.last ? r.gaps : r.ttft).push(at - (t.last || t.sentAt));
          if (measuring && at <= windowEnd) r.tokens++;
          t.last = at;
        } else if (ev.type === 'error') end(ev.code);
        else if (ev.type === 'response.done') end(ev.error?.code ?? '');
      };
      const onClose = (code: number) => end(`close:${code}`);
      ws.on('message', onMessage).once('close', onClose);
      ws.send(JSON.stringify({ type: 'message.create', content: `Who was the son of David, and what did he say unto the people? ${k}`, sampling: { temperature: 0.9, seed: k, max_tokens: 64 } }));
    });
  try {
    let { ws } = await openSession(url);
    let k = 0;
    const loop = async (until: number) => {
      while (now() < until) {
        const code = await turn(ws, ++k);
        if (measuring) {
          if (code) count(r.codes, code);
          else r.turns++;
        }
        if (code === 'WEFT_CONTEXT_OVERFLOW' || code.startsWith('close:')) {
          if (ws.readyState === WebSocket.OPEN) ws.send(JSON.stringify({ type: 'session.close' }));
          ws = (await openSession(url)).ws;
          if (measuring) r.sessions++;
        } else if (code) await sleep(10);
      }
    };
    await loop(now() + 1500); // warm-up: the server's paths compiled, a session renewal included
    process.send!({ ready: true });
    await go();
    measuring = true;
    windowEnd = now() + seconds * 1000;
    setTimeout(report, seconds * 1000 + graceS * 1000).unref();
    await loop(windowEnd);
  } catch (err) {
    count(r.codes, `victim: ${(err as Error).message}`);
  }
  report();
}

/** sent: frames written to the socket; answered: server frames, counted by type or code; cpu: of this process, in cores. */
type AttackerResult = { sent: number; sentBytes: number; answered: number; codes: Record<string, number>; latencyMs: number[]; cpu: number };

async function attacker(url: string, connections: number): Promise<void> {
  const r: AttackerResult = { sent: 0, sentBytes: 0, answered: 0, codes: {}, latencyMs: [], cpu: 0 };
  const sentAt = new Map<string, number>();
  const contents = new Map<number, string>();
  const pumps = new Map<WebSocket, () => void>();
  let running = false;
  let nextId = 0;
  /** A message.create of exactly `bytes` bytes (ASCII). */
  const frame = (id: string, bytes: number) => {
    const head = `{"type":"message.create","event_id":"${id}","content":"`;
    const size = bytes - head.length - 2;
    let content = contents.get(size);
    if (content === undefined) contents.set(size, (content = WORDS.repeat(Math.ceil(size / WORDS.length)).slice(0, size)));
    return head + content + '"}';
  };
  const attach = async (): Promise<void> => {
    const { ws, limits } = await openSession(url);
    const bytes = frameBytes ?? limits.max_frame_bytes - 16;
    const room = () => running && ws.readyState === WebSocket.OPEN && ws.bufferedAmount < IN_FLIGHT_BYTES;
    let scheduled = false;
    const schedule = () => {
      if (scheduled || !room()) return;
      scheduled = true;
      setImmediate(pump);
    };
    // a few frames per turn of the loop: when the kernel takes every write at once, bufferedAmount stays at 0
    const pump = () => {
      scheduled = false;
      for (let n = 0; n < 4 && room(); n++) {
        const id = `a${nextId++}`;
        sentAt.set(id, now());
        ws.send(frame(id, bytes), (err) => {
          if (err) return;
          r.sent++;
          r.sentBytes += bytes;
          schedule();
        });
      }
      schedule();
    };
    ws.on('message', (d: Buffer) => {
      const at = now();
      const ev = JSON.parse(d.toString());
      if (!running) return;
      r.answered++;
      count(r.codes, ev.type === 'error' ? ev.code : ev.type === 'response.done' ? `done:${ev.finish_reason}${ev.error ? ':' + ev.error.code : ''}` : ev.type);
      const t = sentAt.get(ev.event_id);
      if (t !== undefined) r.latencyMs.push(at - t);
      sentAt.delete(ev.event_id);
    });
    ws.once('close', (code) => {
      pumps.delete(ws);
      if (!running) return;
      count(r.codes, `close:${code}`);
      void sleep(50).then(() => (running ? attach() : undefined)).catch((err) => count(r.codes, `reconnect: ${(err as Error).message}`));
    });
    pumps.set(ws, pump);
    pump();
  };
  await Promise.all(Array.from({ length: connections }, attach));
  process.send!({ ready: true });
  await go();
  running = true;
  const cpu0 = process.cpuUsage();
  for (const pump of pumps.values()) pump();
  await sleep(seconds * 1000);
  running = false;
  const cpu = process.cpuUsage(cpu0);
  r.cpu = (cpu.user + cpu.system) / 1e6 / seconds;
  for (const ws of pumps.keys()) ws.terminate();
  process.send!({ result: r }, () => process.exit(0));
}

// ---------------------------------------------------------------- orchestration (this process)

type Server = { proc: ChildProcess; url: string; stderr: () => string };

function startServer(dir: string, transport: string): Promise<Server> {
  const cli = join(dir, 'dist', 'src', 'cli', 'main.js');
  const proc = spawn(process.execPath, [cli, 'serve', '--port', '0', '--transport', transport], { stdio: ['ignore', 'pipe', 'pipe'], env: process.env });
  let [err, out] = ['', ''];
  proc.stderr!.on('data', (d: Buffer) => (err = (err + d.toString()).slice(-2000)));
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`the ${transport} server was not ready after 120 s`)), 120_000);
    proc.once('exit', (code, sig) => reject(new Error(`the ${transport} server exited (${code ?? sig}) before it was ready: ${err}`)));
    proc.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const url = /weft listening on (http:\/\/[^\s]+)/.exec(out)?.[1];
      if (url && /weft ready:/.test(out)) {
        clearTimeout(timer);
        resolve({ proc, url, stderr: () => err });
      }
    });
  });
}

async function stopServer(s: Server): Promise<void> {
  if (s.proc.exitCode !== null || s.proc.signalCode !== null) return;
  const exited = new Promise((r) => s.proc.once('exit', r));
  s.proc.kill('SIGTERM');
  const timer = setTimeout(() => s.proc.kill('SIGKILL'), 3000);
  await exited;
  clearTimeout(timer);
}

/** A client process (this script with --role); resolves with its result, killing it past the deadline. */
function client<T>(role: string, url: string, extra: string[]): { proc: ChildProcess; ready: Promise<void>; result: (deadlineMs: number) => Promise<T> } {
  const proc = fork(process.argv[1]!, ['--role', role, '--url', url, '--seconds', String(seconds), '--grace', String(graceS), ...extra], { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const msg = (key: string) =>
    new Promise<unknown>((resolve, reject) => {
      proc.on('message', (m: Record<string, unknown>) => key in m && resolve(m[key]));
      proc.once('exit', (code) => reject(new Error(`the ${role} exited (${code}) without ${key}`)));
    });
  const result = msg('result') as Promise<T>;
  result.catch(() => undefined); // awaited later
  return {
    proc,
    ready: msg('ready').then(() => undefined),
    result: (deadlineMs) => {
      const timer = setTimeout(() => proc.kill('SIGKILL'), deadlineMs);
      return result.finally(() => clearTimeout(timer));
    },
  };
}

const attempt = <T>(fn: () => T, fallback: T): T => {
  try {
    return fn();
  } catch {
    return fallback;
  }
};
const tryRead = (path: string) => attempt(() => readFileSync(path, 'utf8'), '');
const peakRssMb = (pid: number) => Number(/VmHWM:\s+(\d+)/.exec(tryRead(`/proc/${pid}/status`))?.[1]) / 1024;

/** The server's mean step duration (ms) from /metrics; NaN when it does not answer within 5 s. */
async function meanStepMs(httpUrl: string): Promise<number> {
  const text = await fetch(`${httpUrl}/metrics`, { signal: AbortSignal.timeout(5000) }).then((r) => r.text()).catch(() => '');
  const get = (name: string) => Number(new RegExp(`^${name} (\\S+)$`, 'm').exec(text)?.[1]);
  return (get('weft_step_duration_seconds_sum') / get('weft_step_duration_seconds_count')) * 1000;
}

/** Attacked phases get their ratios to this transport's baseline and the goal (50 ms + the baseline's mean step). */
type Row = Awaited<ReturnType<typeof phase>> & { tokens_vs_baseline?: number; max_gap_vs_baseline?: number; goal_ms?: number; goal_met?: boolean };

async function phase(dir: string, transport: string, attackers: number) {
  const server = await startServer(dir, transport);
  const url = server.url.replace(/^http/, 'ws') + '/v1/ws';
  try {
    const victimProc = client<VictimResult>('victim', url, []);
    const attackerProc = attackers > 0 ? client<AttackerResult>('attacker', url, ['--connections', String(attackers), ...(frameBytes ? ['--frame-bytes', String(frameBytes)] : [])]) : null;
    await Promise.all([victimProc.ready, attackerProc?.ready]);
    victimProc.proc.send('go');
    attackerProc?.proc.send('go');
    const deadline = (seconds + graceS + 15) * 1000;
    const [v, a] = await Promise.all([victimProc.result(deadline), attackerProc?.result(deadline)]);
    const stepMs = await meanStepMs(server.url);
    const alive = server.proc.exitCode === null && server.proc.signalCode === null;
    return {
      transport,
      phase: attackers === 0 ? 'baseline' : `attack ×${attackers}`,
      attackers,
      victim: { tokens: v.tokens, turns: v.turns, sessions: v.sessions, codes: v.codes, stalled: v.stalled, tokens_per_s: v.tokens / seconds, gap_p50_ms: pct(v.gaps, 50), gap_p99_ms: pct(v.gaps, 99), gap_max_ms: max(v.gaps), ttft_p50_ms: pct(v.ttft, 50), ttft_max_ms: max(v.ttft) },
      attacker: a ? { sent: a.sent, mb_per_s: a.sentBytes / 2 ** 20 / seconds, cpu: a.cpu, answered: a.answered, codes: a.codes, latency_p50_ms: pct(a.latencyMs, 50), latency_max_ms: max(a.latencyMs) } : null,
      step_ms: stepMs, // launch to results: event loop stalls included
      server: alive ? 'up' : `exited (${server.proc.exitCode ?? server.proc.signalCode}): ${server.stderr().trim().split('\n').slice(-3).join(' / ')}`,
      server_peak_rss_mb: peakRssMb(server.proc.pid!),
    };
  } finally {
    await stopServer(server);
  }
}

async function main(): Promise<void> {
  const dir = resolve((f.weft as string | undefined) ?? join(import.meta.dirname, '..', '..'));
  const t = (f.transport as string | undefined) ?? 'both';
  const transports = t === 'both' ? ['ws', 'uws'] : [t];
  const attackerCounts = (f.attackers as number[] | undefined) ?? [1, 4];
  const rows: Row[] = [];
  for (const transport of transports) {
    for (const n of [0, ...attackerCounts]) {
      process.stderr.write(`${transport}: ${n === 0 ? 'baseline' : `attack ×${n}`} …\n`);
      rows.push(await phase(dir, transport, n));
    }
    const base = rows.find((r) => r.transport === transport && r.attackers === 0)!;
    for (const r of rows.filter((r) => r.transport === transport && r.attackers > 0)) {
      r.tokens_vs_baseline = r.victim.tokens_per_s / base.victim.tokens_per_s;
      r.max_gap_vs_baseline = r.victim.gap_max_ms / base.victim.gap_max_ms;
      r.goal_ms = 50 + base.step_ms;
      r.goal_met = r.victim.turns > 0 && Number.isFinite(r.victim.gap_max_ms) && r.victim.gap_max_ms < r.goal_ms; // no progress fails
    }
  }
  const git = (...args: string[]) => attempt(() => execFileSync('git', ['-C', dir, ...args], { encoding: 'utf8', stdio: ['ignore', 'pipe', 'ignore'] }).trim(), '');
  const commit = (git('rev-parse', '--short', 'HEAD') || '?') + (git('status', '--porcelain', '--untracked-files=no', 'src') ? ' + uncommitted changes in src/' : '');
  const cpuinfo = (key: string) => new RegExp(`^${key}\\s*:\\s*(.*)$`, 'm').exec(tryRead('/proc/cpuinfo'))?.[1];
  const cpu = `${cpuinfo('model name') ?? 'unknown CPU'} (family ${cpuinfo('cpu family')} model ${cpuinfo('model')})`;
  const info = { date: new Date().toISOString(), machine: `${cpu}, ${availableParallelism()} cores`, node: process.version, weft: `${dir} (${commit})`, command: `node dist/bench/hostile.js ${process.argv.slice(2).join(' ')}`.trim(), seconds, grace_s: graceS };
  const ms = (x: number) => (Number.isFinite(x) ? (x < 10 ? x.toFixed(2) : x.toFixed(0)) : '–');
  const ratio = (x: number | undefined) => (x === undefined ? '' : Number.isFinite(x) ? ` (${x < 0.1 ? x.toFixed(3) : x.toFixed(2)}×)` : ' (–)');
  const lines = [
    `${info.date}, ${info.machine}, Node ${info.node}; weft ${info.weft}`,
    `Command: \`${info.command}\` (${seconds} s per phase, grace ${graceS} s)`,
    '',
    '| transport | phase | victim tok/s (vs baseline) | gap p50 / p99 / max ms (max vs baseline) | TTFT p50 / max ms | victim turns / sessions | attacker frames sent / answered (MiB/s, CPU) | answers (latency p50 / max ms) | mean step ms | server (peak RSS MB) | goal: max gap < 50 ms + baseline step |',
    '|---|---|---|---|---|---|---|---|---|---|---|',
  ];
  for (const r of rows) {
    const [v, a] = [r.victim, r.attacker];
    const codes = a ? Object.entries(a.codes).map(([k, c]) => `${k} ×${c}`).join(', ') || 'none' : '';
    const victimErrors = Object.entries(v.codes).filter(([k]) => k !== 'WEFT_CONTEXT_OVERFLOW').map(([k, c]) => `${k} ×${c}`);
    lines.push(
      `| ${r.transport} | ${r.phase} | ${v.tokens_per_s.toFixed(1)}${ratio(r.tokens_vs_baseline)} | ${ms(v.gap_p50_ms)} / ${ms(v.gap_p99_ms)} / ${ms(v.gap_max_ms)}${v.stalled ? ' (stalled at the cut)' : ''}${ratio(r.max_gap_vs_baseline)} | ` +
        `${ms(v.ttft_p50_ms)} / ${ms(v.ttft_max_ms)} | ${v.turns} / ${v.sessions}${victimErrors.length ? ` (${victimErrors.join(', ')})` : ''} | ${a ? `${a.sent} / ${a.answered} (${a.mb_per_s.toFixed(1)}, ${(a.cpu * 100).toFixed(0)}%)` : ''} | ${a ? `${codes} (${ms(a.latency_p50_ms)} / ${ms(a.latency_max_ms)})` : ''} | ` +
        `${ms(r.step_ms)} | ${r.server} (${r.server_peak_rss_mb.toFixed(0)}) | ${r.goal_met === undefined ? '' : `${r.goal_met ? '✔' : '✘'} (< ${ms(r.goal_ms!)})`} |`,
    );
  }
  process.stdout.write(lines.join('\n') + '\n');
  if (f.json) process.stdout.write(JSON.stringify({ ...info, rows }) + '\n');
}

if (f.role === 'victim') await victim(f.url as string);
else if (f.role === 'attacker') await attacker(f.url as string, (f.connections as number | undefined) ?? 1);
else await main().then(() => process.exit(0));

/**
 * The scenario of k6/chat.js in Node (the `ws` package), to compare with k6's numbers or to
 * measure without k6:
 *
 *   node dist/bench/k6-chat.js --vus 16 --duration 20 --url ws://127.0.0.1:8080/v1/ws
 *        [--turns 3] [--max-tokens 64] [--temperature 0.8] [--seed N] [--think-ms 0]
 *        [--timeout-ms 60000] [--json]
 *
 * against a running server (npm start, or `node dist/src/cli/main.js serve --port 0`).
 * `--vus` takes a list (1,8,32): one run per count, one after the other, one table row each.
 *
 * Like k6/lib/weft.js, each of `vus` virtual users loops for `duration` seconds: connect, wait
 * for session.created, `turns` message.create turns (the same prompts, the same order, the same
 * sampling), session.close, wait for session.closed and the server's close; at the end of the
 * duration no new session starts and the running ones finish (k6's graceful stop). Measured as
 * k6/chat.js does: TTFT from the send of message.create to the first response.delta, ITL
 * between deltas, tokens = deltas; errors by code (the server's, or CLIENT_* for what the
 * client saw); the same checks (seq from 0 without gaps, one delta per completion token, no
 * frame of a response after its response.done, session.created first). Percentiles as k6
 * computes them (linear interpolation between the closest ranks); tokens/s over the whole run,
 * the graceful end included (k6's `weft_tokens` rate).
 *
 * Prints a markdown table and a JSON line (`--json`: only the JSON line). Exit status 1 when a
 * check failed or no token came back.
 */
import WebSocket from 'ws';
import { parseFlags } from '../src/cli/args.js';

/** The messages a session sends, turn after turn: the same list as k6/lib/weft.js (test/k6.test.ts compares them). */
const PROMPTS = [
  'Who was the son of David, and what did he say unto the people?',
  'Tell me of the garden eastward in Eden.',
  'What did Moses say unto Pharaoh?',
  'Sing a psalm of the shepherd and his sheep.',
  'And what came to pass after these things?',
  'Who built the ark, and how long did the waters prevail upon the earth?',
];

interface Settings {
  url: string;
  turns: number;
  maxTokens: number;
  temperature: number;
  seed: number | undefined;
  thinkMs: number;
  timeoutMs: number;
}

interface ServerEvent {
  type: string;
  event_id?: string;
  response_id?: string;
  seq?: number;
  code?: string;
  finish_reason?: string;
  error?: { code: string; message: string };
  usage?: { prompt_tokens: number; cached_tokens: number; completion_tokens: number };
}

/** What one run measured. */
class Run {
  ttft: number[] = [];
  itl: number[] = [];
  tokens = 0;
  turns = 0;
  sessions = 0;
  errors = new Map<string, number>();
  checks = new Map<string, { pass: number; fail: number }>();

  error(code: string): void {
    this.errors.set(code, (this.errors.get(code) ?? 0) + 1);
  }

  check(name: string, ok: boolean): void {
    const c = this.checks.get(name) ?? { pass: 0, fail: 0 };
    if (ok) c.pass++;
    else c.fail++;
    this.checks.set(name, c);
  }
}

interface Conn {
  ws: WebSocket;
  run: Run;
  onEvent: ((ev: ServerEvent, at: number) => void) | null;
  onClose: (() => void) | null;
  opened: boolean;
  closed: boolean;
  frames: number;
  done: Set<string>;
  afterDone: number;
  events: number;
}

const now = () => performance.now();
const sleep = (ms: number) => new Promise<void>((resolve) => setTimeout(resolve, ms));

/** k6's percentile: linear interpolation between the closest ranks of the sorted values. */
function percentile(sorted: number[], p: number): number {
  if (sorted.length === 0) return NaN;
  const i = p * (sorted.length - 1);
  const lo = sorted[Math.floor(i)]!;
  const hi = sorted[Math.ceil(i)]!;
  return lo + (hi - lo) * (i - Math.floor(i));
}

/** Wait on a connection as k6/lib/weft.js's waitFor: a close or the timeout fails the wait (counted). */
function waitFor<T>(conn: Conn, timeoutMs: number, failed: (code: string) => T, step: (ev: ServerEvent, at: number, end: (r: T) => void) => void): Promise<T> {
  return new Promise<T>((resolve) => {
    const end = (result: T) => {
      clearTimeout(timer);
      conn.onEvent = null;
      conn.onClose = null;
      resolve(result);
    };
    const fail = (code: string) => {
      conn.run.error(code);
      end(failed(code));
    };
    const closed = () => fail(conn.opened ? 'CLIENT_CLOSED' : 'CLIENT_CONNECT_FAILED');
    const timer = setTimeout(() => fail('CLIENT_TIMEOUT'), timeoutMs);
    if (conn.closed) return closed();
    conn.onClose = closed;
    conn.onEvent = (ev, at) => step(ev, at, end);
  });
}

function connect(url: string, run: Run, timeoutMs: number): Promise<Conn | null> {
  const ws = new WebSocket(url, { perMessageDeflate: false });
  const conn: Conn = { ws, run, onEvent: null, onClose: null, opened: false, closed: false, frames: 0, done: new Set(), afterDone: 0, events: 0 };
  ws.on('open', () => (conn.opened = true));
  ws.on('message', (data, isBinary) => {
    const at = now();
    conn.frames++;
    let ev: ServerEvent;
    try {
      if (isBinary) throw new Error('binary');
      ev = JSON.parse(data.toString()) as ServerEvent;
    } catch {
      run.error('CLIENT_BAD_FRAME');
      return;
    }
    if (ev.type === 'error') run.error(String(ev.code));
    if (ev.response_id !== undefined && conn.done.has(ev.response_id)) conn.afterDone++;
    conn.onEvent?.(ev, at);
  });
  ws.on('error', () => undefined); // a close follows, and ends what waited
  ws.on('close', () => {
    conn.closed = true;
    conn.onClose?.();
  });
  const failed = (): Conn | null => {
    if (ws.readyState === WebSocket.OPEN) ws.close();
    else if (ws.readyState === WebSocket.CONNECTING) ws.terminate();
    return null;
  };
  return waitFor(conn, timeoutMs, failed, (ev, _at, end) => {
    if (ev.type === 'session.created') {
      run.check('session.created is the first event', conn.frames === 1);
      return end(conn);
    }
    if (ev.type === 'error') end(failed());
  });
}

interface TurnResult {
  code: string;
  deltas: number;
}

function turn(conn: Conn, content: string, sampling: Record<string, number>, timeoutMs: number): Promise<TurnResult> {
  const run = conn.run;
  const eventId = `t${++conn.events}`;
  let responseId: string | undefined;
  let next = 0;
  let inOrder = true;
  let count = 0;
  let last = 0;
  const sent = now();
  const failed = (code: string): TurnResult => {
    run.tokens += count;
    return { code, deltas: count };
  };
  const result = waitFor(conn, timeoutMs, failed, (ev, at, end) => {
    if (ev.type === 'response.created' && ev.event_id === eventId) {
      responseId = ev.response_id;
      return;
    }
    if (ev.type === 'error' && ev.event_id === eventId) return end(failed(String(ev.code)));
    if (responseId === undefined || ev.response_id !== responseId) return;
    if (ev.type === 'response.delta') {
      if (ev.seq !== next) inOrder = false;
      next = (ev.seq ?? next) + 1;
      if (count === 0) run.ttft.push(at - sent);
      else run.itl.push(at - last);
      last = at;
      count++;
    } else if (ev.type === 'response.done') {
      conn.done.add(responseId);
      run.tokens += count;
      run.turns++;
      const code = ev.finish_reason === 'error' ? (ev.error?.code ?? 'WEFT_INTERNAL') : '';
      if (code) run.error(code);
      run.check('seq counts from 0 without gaps', inOrder);
      run.check('one response.delta per completion token', ev.usage?.completion_tokens === count);
      end({ code, deltas: count });
    }
  });
  if (conn.ws.readyState === WebSocket.OPEN) conn.ws.send(JSON.stringify({ type: 'message.create', content, sampling, event_id: eventId }));
  return result;
}

async function close(conn: Conn, timeoutMs: number): Promise<void> {
  if (!conn.closed && conn.ws.readyState === WebSocket.OPEN) {
    const eventId = `c${++conn.events}`;
    const closed = waitFor(conn, timeoutMs, () => false, (ev, _at, end) => {
      if (ev.type === 'session.closed' && ev.event_id === eventId) end(true);
    });
    conn.ws.send(JSON.stringify({ type: 'session.close', event_id: eventId }));
    await closed;
  }
  if (!conn.closed) {
    await new Promise<void>((resolve) => {
      const timer = setTimeout(() => {
        conn.onClose = null;
        resolve();
      }, 2000);
      conn.onClose = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }
  if (!conn.closed) conn.ws.terminate();
  conn.run.check('each response ends with exactly one response.done', conn.afterDone === 0);
}

/** One VU iteration: k6/lib/weft.js's chat(). */
async function chat(s: Settings, run: Run, vu: number, iter: number): Promise<void> {
  const conn = await connect(s.url, run, s.timeoutMs);
  if (!conn) {
    await sleep(1000);
    return;
  }
  run.sessions++;
  const sampling: Record<string, number> = { max_tokens: s.maxTokens, temperature: s.temperature };
  if (s.seed !== undefined) sampling.seed = s.seed;
  for (let t = 0; t < s.turns; t++) {
    const r = await turn(conn, PROMPTS[(vu + iter + t) % PROMPTS.length]!, sampling, s.timeoutMs);
    if (r.code === 'CLIENT_CLOSED' || r.code === 'CLIENT_TIMEOUT') break;
    if (s.thinkMs > 0 && t + 1 < s.turns) await sleep(s.thinkMs);
  }
  await close(conn, s.timeoutMs);
}

interface Row {
  vus: number;
  seconds: number;
  sessions: number;
  turns: number;
  tokens: number;
  tokensPerSecond: number;
  ttft: { p50: number; p90: number; p99: number; n: number };
  itl: { p50: number; p90: number; p99: number; n: number };
  errors: Record<string, number>;
  checksFailed: Record<string, number>;
}

/** `vus` VUs for `seconds` (k6's constant-vus; __VU counts from 1, __ITER from 0 per VU). */
async function runScenario(s: Settings, vus: number, seconds: number): Promise<Row> {
  const run = new Run();
  const t0 = now();
  const until = t0 + seconds * 1000;
  await Promise.all(
    Array.from({ length: vus }, async (_, v) => {
      for (let iter = 0; now() < until; iter++) await chat(s, run, v + 1, iter);
    }),
  );
  const wall = (now() - t0) / 1000;
  const stats = (values: number[]) => {
    const sorted = values.slice().sort((a, b) => a - b);
    return { p50: percentile(sorted, 0.5), p90: percentile(sorted, 0.9), p99: percentile(sorted, 0.99), n: sorted.length };
  };
  const checksFailed: Record<string, number> = {};
  for (const [name, c] of run.checks) if (c.fail > 0) checksFailed[name] = c.fail;
  return {
    vus,
    seconds: wall,
    sessions: run.sessions,
    turns: run.turns,
    tokens: run.tokens,
    tokensPerSecond: run.tokens / wall,
    ttft: stats(run.ttft),
    itl: stats(run.itl),
    errors: Object.fromEntries(run.errors),
    checksFailed,
  };
}

function table(rows: Row[]): string {
  const ms = (v: number) => (Number.isNaN(v) ? '-' : v.toFixed(1));
  const codes = (m: Record<string, number>) =>
    Object.entries(m)
      .map(([k, v]) => `${k} ${v}`)
      .join(', ') || '0';
  const out = [
    '| VUs | s | sessions | turns | tokens | tokens/s | TTFT p50 ms | TTFT p90 ms | TTFT p99 ms | ITL p50 ms | ITL p90 ms | ITL p99 ms | errors | checks failed |',
    '|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|',
  ];
  for (const r of rows) {
    out.push(
      `| ${r.vus} | ${r.seconds.toFixed(1)} | ${r.sessions} | ${r.turns} | ${r.tokens} | ${r.tokensPerSecond.toFixed(0)} | ${ms(r.ttft.p50)} | ${ms(r.ttft.p90)} | ${ms(r.ttft.p99)} | ${ms(r.itl.p50)} | ${ms(r.itl.p90)} | ${ms(r.itl.p99)} | ${codes(r.errors)} | ${codes(r.checksFailed)} |`,
    );
  }
  return out.join('\n');
}

async function main(): Promise<number> {
  const f = parseFlags(process.argv.slice(2), {
    vus: 'list', duration: 'number', url: 'string', turns: 'number', 'max-tokens': 'number', temperature: 'number', seed: 'number', 'think-ms': 'number', 'timeout-ms': 'number', json: 'boolean',
  });
  const int = (name: string, fallback: number, min: number): number => {
    const v = (f[name] as number | undefined) ?? fallback;
    if (!Number.isInteger(v) || v < min) throw new Error(`--${name} must be an integer >= ${min} (got ${v})`);
    return v;
  };
  const s: Settings = {
    url: (f.url as string | undefined) ?? 'ws://127.0.0.1:8080/v1/ws',
    turns: int('turns', 3, 1),
    maxTokens: int('max-tokens', 64, 1),
    temperature: (f.temperature as number | undefined) ?? 0.8,
    seed: f.seed === undefined ? undefined : int('seed', 0, 0),
    thinkMs: (f['think-ms'] as number | undefined) ?? 0,
    timeoutMs: int('timeout-ms', 60000, 1),
  };
  const vusList = (f.vus as number[] | undefined) ?? [4];
  if (vusList.some((n) => n < 1)) throw new Error('--vus must be positive');
  const seconds = (f.duration as number | undefined) ?? 30;
  const rows: Row[] = [];
  for (const vus of vusList) {
    rows.push(await runScenario(s, vus, seconds));
    if (!f.json) process.stderr.write(`vus ${vus}: ${rows[rows.length - 1]!.tokens} tokens\n`);
  }
  if (!f.json) {
    process.stdout.write(`k6/chat.js scenario in Node: ${s.url}, ${seconds} s per row, ${s.turns} turns per session, max_tokens ${s.maxTokens}, temperature ${s.temperature}${s.seed === undefined ? '' : `, seed ${s.seed}`}${s.thinkMs ? `, think ${s.thinkMs} ms` : ''}\n\n`);
    process.stdout.write(table(rows) + '\n');
  }
  process.stdout.write(JSON.stringify({ bench: 'k6-chat', settings: s, rows }) + '\n');
  return rows.every((r) => r.tokens > 0 && Object.keys(r.checksFailed).length === 0) ? 0 : 1;
}

main().then(
  (code) => process.exit(code),
  (err: unknown) => {
    process.stderr.write(`k6-chat: ${err instanceof Error ? err.message : String(err)}\n`);
    process.exit(2);
  },
);

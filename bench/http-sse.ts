/**
 * The HTTP/SSE load-generating clients of bench/gateway.ts (`--http`), the twin of
 * bench/gateway-client.ts for the OpenAI-compatible front: run in a child process with the same
 * IPC messages, so that its sockets and parsing do not share the gateway's event loop.
 *
 * Parent → child: {cmd: 'connect', url, n, offset}, {cmd: 'run', genTokens}, {cmd: 'close'}.
 * Child → parent: {ready: n}, {result: {tokens, wallMs, ttft, itl, bad, cpuMs}}, {closed: true}.
 *
 * The client is node:http with a keep-alive Agent (maxSockets = n, so every stream has its own
 * connection). `connect` opens the n connections before the clock starts, as the WebSocket
 * clients connect before theirs; `run` sends n streamed
 * `POST /v1/chat/completions` on them at once. SSE is read cheaply: an event whose bytes hold
 * `"delta":{"content":` is a token's chunk and is not parsed (the role chunk sent first holds
 * `"delta":{"role":`); only the usage chunk of a stream is parsed, and its completion_tokens is
 * the stream's token count. A stream is bad when it is not a 200, carries an error event, ends
 * without `data: [DONE]` or has not exactly genTokens completion tokens.
 */
import { Agent, request, type IncomingMessage } from 'node:http';

const CONTENT = Buffer.from('"delta":{"content":');
const USAGE = Buffer.from('"usage":{');
const ERROR = Buffer.from('data: {"error"');
const DONE = Buffer.from('data: [DONE]');
const send = (m: unknown) => process.send!(m);
const prompt = (i: number) => `Who was the son of David, and what did he say unto the people? ${i}`;

let base: URL;
let agent: Agent | null = null;
let model = '';
let indices: number[] = [];

/** A request on the agent; resolves with the status and body. */
function call(method: string, path: string, body?: string): Promise<{ status: number; body: string }> {
  return new Promise((resolve, reject) => {
    const headers = body === undefined ? {} : { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) };
    const req = request(new URL(path, base), { method, agent: agent!, headers }, (res) => {
      let text = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (text += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
    });
    req.on('error', reject);
    req.end(body);
  });
}

async function connect(url: string, n: number, offset: number): Promise<void> {
  base = new URL(url);
  agent = new Agent({ keepAlive: true, maxSockets: n, maxFreeSockets: n });
  indices = Array.from({ length: n }, (_, k) => offset + k);
  const models = await call('GET', '/v1/models');
  if (models.status !== 200) throw new Error(`GET /v1/models: ${models.status} ${models.body}`);
  model = (JSON.parse(models.body) as { data: { id: string }[] }).data[0]!.id;
  // n connections opened by a request the server answers without the engine (404: no such
  // model) and keeps open: the ws transport answers a GET with `connection: close`
  const probe = JSON.stringify({ model: `${model}-absent`, messages: [{ role: 'user', content: 'hi' }] });
  const answers = await Promise.all(indices.map(() => call('POST', '/v1/chat/completions', probe)));
  if (answers.some((a) => a.status !== 404)) throw new Error(`http-sse: the probe was answered ${answers.find((a) => a.status !== 404)!.status}, not 404`);
  // a socket goes back to the agent's pool a turn after its response ended
  const numFree = () => Object.values(agent!.freeSockets).reduce((a, s) => a + (s?.length ?? 0), 0);
  for (let tries = 0; numFree() < n && tries < 100; tries++) await new Promise((r) => setTimeout(r, 1));
  if (numFree() !== n) throw new Error(`http-sse: ${numFree()} keep-alive connections open, ${n} wanted`);
  send({ ready: n });
}

function run(genTokens: number): void {
  const ttft: number[] = [];
  const itl: number[] = [];
  let tokens = 0;
  let bad = 0;
  let left = indices.length;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  const finished = (ok: boolean, count: number) => {
    if (!ok) bad++;
    tokens += count;
    if (--left > 0) return;
    const wallMs = performance.now() - t0;
    const cpu = process.cpuUsage(cpu0);
    send({ result: { tokens, wallMs, ttft, itl, bad, cpuMs: (cpu.user + cpu.system) / 1000 } });
  };
  for (const i of indices) {
    const body = JSON.stringify({
      model,
      messages: [{ role: 'user', content: prompt(i) }],
      stream: true,
      stream_options: { include_usage: true },
      max_tokens: genTokens,
      temperature: 0.8,
      seed: i,
      ignore_eos: true,
    });
    let start = 0;
    let settled = false;
    const fin = (ok: boolean, count: number) => {
      if (!settled) finished(ok, count);
      settled = true;
    };
    const req = request(
      new URL('/v1/chat/completions', base),
      { method: 'POST', agent: agent!, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } },
      (res) => readStream(res, start, ttft, itl, genTokens, fin),
    );
    req.on('error', () => fin(false, 0));
    start = performance.now();
    req.end(body);
  }
}

/** Reads one SSE response: token chunks timed, the usage chunk parsed, the end checked. */
function readStream(res: IncomingMessage, start: number, ttft: number[], itl: number[], genTokens: number, finished: (ok: boolean, count: number) => void): void {
  let last = 0;
  let completionTokens = -1;
  let ok = res.statusCode === 200;
  let done = false;
  const settle = () => finished(ok && done && completionTokens === genTokens, Math.max(0, completionTokens));
  // the bytes of an event cut by a read, joined to the next read (rare: the server writes whole events)
  let partial: Buffer | null = null;
  res.on('data', (chunk: Buffer) => {
    let d = partial ? Buffer.concat([partial, chunk]) : chunk;
    partial = null;
    const end = d.lastIndexOf(10);
    if (end !== d.length - 1) {
      partial = d.subarray(end + 1);
      d = d.subarray(0, end + 1);
    }
    const now = performance.now();
    for (let at = d.indexOf(CONTENT); at >= 0; at = d.indexOf(CONTENT, at + CONTENT.length)) {
      if (last === 0) ttft.push(now - start);
      else itl.push(now - last);
      last = now;
    }
    const u = d.indexOf(USAGE);
    if (u >= 0) {
      const from = d.lastIndexOf('data: ', u) + 6;
      const usage = (JSON.parse(d.toString('utf8', from, d.indexOf('\n', u))) as { usage: { completion_tokens: number } }).usage;
      completionTokens = usage.completion_tokens;
    }
    if (d.indexOf(ERROR) >= 0) ok = false;
    if (d.indexOf(DONE) >= 0) done = true;
  });
  res.on('end', settle);
  res.on('close', () => {
    ok &&= res.complete;
    settle();
  });
}

function close(): void {
  agent?.destroy();
  agent = null;
  send({ closed: true });
}

process.on('message', (m: { cmd: string; url: string; n: number; offset: number; genTokens: number }) => {
  if (m.cmd === 'connect') void connect(m.url, m.n, m.offset).catch((err) => send({ error: String(err) }));
  else if (m.cmd === 'run') run(m.genTokens);
  else if (m.cmd === 'close') close();
});

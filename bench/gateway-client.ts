/**
 * The load-generating clients of bench/gateway.ts, run in a child process (forked with IPC) so
 * that their sockets, frame parsing and timing do not share the gateway's event loop.
 *
 * Parent → child: {cmd: 'connect', url, n, offset}, {cmd: 'run', genTokens}, {cmd: 'close'}.
 * Child → parent: {ready: n}, {result: {tokens, wallMs, ttft, itl, bad, cpuMs}}, {closed: true}.
 *
 * A load generator should be cheap: a delta frame is recognised by its first bytes (the
 * gateway writes `{"type":"response.delta",` first) and not parsed; the one `response.done`
 * of a session is parsed and its completion_tokens checked against the deltas counted.
 */
import WebSocket from 'ws';

interface Sock {
  ws: WebSocket;
  index: number;
}

const DELTA = Buffer.from('{"type":"response.delta"');
const socks: Sock[] = [];
const send = (m: unknown) => process.send!(m);
const prompt = (i: number) => `Who was the son of David, and what did he say unto the people? ${i}`;

function open(url: string, index: number): Promise<Sock> {
  return new Promise((resolve, reject) => {
    const ws = new WebSocket(url, { perMessageDeflate: false, skipUTF8Validation: true });
    ws.once('error', reject);
    ws.once('message', () => {
      ws.off('error', reject);
      ws.on('error', () => undefined);
      resolve({ ws, index });
    });
  });
}

async function connect(url: string, n: number, offset: number): Promise<void> {
  for (let i = 0; i < n; i += 100) {
    const batch = await Promise.all(Array.from({ length: Math.min(100, n - i) }, (_, k) => open(url, offset + i + k)));
    socks.push(...batch);
  }
  send({ ready: socks.length });
}

function run(genTokens: number): void {
  const ttft: number[] = [];
  const itl: number[] = [];
  let tokens = 0;
  let bad = 0;
  let left = socks.length;
  const cpu0 = process.cpuUsage();
  const t0 = performance.now();
  for (const s of socks) {
    let start = 0;
    let last = 0;
    let count = 0;
    s.ws.on('message', (d: Buffer) => {
      if (d.length > DELTA.length && d.compare(DELTA, 0, DELTA.length, 0, DELTA.length) === 0) {
        const now = performance.now();
        if (last === 0) ttft.push(now - start);
        else itl.push(now - last);
        last = now;
        count++;
        return;
      }
      const ev = JSON.parse(d.toString());
      if (ev.type !== 'response.done' && ev.type !== 'error') return;
      if (ev.type === 'error' || ev.usage.completion_tokens !== count) bad++;
      tokens += count;
      if (--left === 0) {
        const wallMs = performance.now() - t0;
        const cpu = process.cpuUsage(cpu0);
        send({ result: { tokens, wallMs, ttft, itl, bad, cpuMs: (cpu.user + cpu.system) / 1000 } });
      }
    });
    start = performance.now();
    s.ws.send(JSON.stringify({ type: 'message.create', content: prompt(s.index), sampling: { temperature: 0.8, seed: s.index, max_tokens: genTokens } }));
  }
}

async function close(): Promise<void> {
  await Promise.all(
    socks.splice(0).map(
      (s) =>
        new Promise<void>((r) => {
          if (s.ws.readyState === WebSocket.CLOSED) return r();
          s.ws.once('close', () => r());
          s.ws.terminate();
        }),
    ),
  );
  send({ closed: true });
}

process.on('message', (m: { cmd: string; url: string; n: number; offset: number; genTokens: number }) => {
  if (m.cmd === 'connect') void connect(m.url, m.n, m.offset).catch((err) => send({ error: String(err) }));
  else if (m.cmd === 'run') run(m.genTokens);
  else if (m.cmd === 'close') void close();
});

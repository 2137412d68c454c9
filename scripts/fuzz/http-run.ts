/** The HTTP part: raw TCP sockets write the generated requests; each must get an answer or a close. */
import { connect as netConnect, type Socket } from 'node:net';
import { withHost, type HttpItem } from './http-gen.js';
import { showBytes } from './report.js';
import type { Run, Suspect } from './run.js';
import { sleep } from './util.js';

type HttpOutcome =
  | { kind: 'status'; line: string; status: number }
  | { kind: 'closed'; bytes: Buffer }
  /** `closedAfter` resolves with the ms from the timeout to the server's close (null: still open after `watchMs`). */
  | { kind: 'timeout'; bytes: Buffer; closedAfter: Promise<number | null> }
  | { kind: 'truncated' }
  | { kind: 'error'; message: string };

/** Sends one raw request; resolves with the status line, a close, or a timeout. */
function sendHttp(port: number, it: HttpItem, timeoutMs: number, watchMs = 0): Promise<HttpOutcome> {
  return new Promise((resolve) => {
    const data = withHost(it.data, port);
    const sock: Socket = netConnect({ host: '127.0.0.1', port });
    let got = Buffer.alloc(0);
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (o: HttpOutcome, after = 0) => {
      if (settled) return;
      settled = true;
      if (timer) clearTimeout(timer);
      setTimeout(() => sock.destroy(), after);
      resolve(o);
    };
    sock.on('error', (e) => finish({ kind: 'error', message: e.message }));
    sock.on('close', () => finish({ kind: 'closed', bytes: got }));
    sock.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]).subarray(0, 4096);
      const nl = got.indexOf('\n');
      if (nl < 0 && got.length < 200) return;
      const line = got.subarray(0, nl < 0 ? got.length : nl).toString('latin1').replace(/\r$/, '');
      const m = /^HTTP\/1\.[01] (\d{3})( |$)/.exec(line);
      const status = m ? Number(m[1]) : 0;
      if (status === 101 && it.wsFrames) {
        for (const f of it.wsFrames) sock.write(f);
        return finish({ kind: 'status', line, status }, 300);
      }
      // a 100 Continue is an interim answer: it counts
      finish({ kind: 'status', line, status });
    });
    sock.on('connect', async () => {
      if (it.truncateAt !== undefined) {
        sock.write(data.subarray(0, it.truncateAt));
        await sleep(20);
        if (it.closeWith === 'end') sock.end();
        else sock.destroy();
        return finish({ kind: 'truncated' }, 50);
      }
      let from = 0;
      for (const at of it.splits) {
        if (settled) return;
        sock.write(data.subarray(from, at));
        from = at;
        await sleep(5);
      }
      if (!settled) sock.write(data.subarray(from));
      timer = setTimeout(() => {
        if (watchMs <= 0 || it.expect !== 'answer') return finish({ kind: 'timeout', bytes: got, closedAfter: Promise.resolve(null) });
        // keep the socket a while: when does the server close it, if ever?
        const t = performance.now();
        const closedAfter = new Promise<number | null>((res) => {
          const w = setTimeout(() => res(null), watchMs);
          sock.once('close', () => {
            clearTimeout(w);
            res(performance.now() - t);
          });
        });
        settled = true;
        resolve({ kind: 'timeout', bytes: got, closedAfter });
        void closedAfter.then(() => sock.destroy());
      }, it.expect === 'answer' ? timeoutMs : 500);
    });
  });
}

/** How long the first unanswered request is kept open after its timeout, to see whether (when) the server closes it. */
const WATCH_MS = 15_000;

/**
 * Sends the requests, `httpConcurrency` at a time, and checks that each gets a status line or a
 * close in time. The watch on the first unanswered one (when does the server close it?) goes on
 * after it returns: `run.watching`.
 */
export async function httpPhase(run: Run, items: HttpItem[]): Promise<void> {
  let next = 0;
  let watching = 0;
  let noAnswers = 0;
  let silent = 0;
  const watchers: Promise<void>[] = [];
  const worker = async () => {
    while (!run.gaveUp) {
      if (next >= items.length || run.overDeadline()) return;
      await run.ready;
      if (run.gaveUp || next >= items.length) return;
      const it = items[next++]!;
      run.httpSent++;
      const epoch = run.epoch;
      const suspect: Suspect = {
        what: `HTTP request #${it.index} (${it.label})`,
        sentAt: performance.now(),
        input: showBytes(withHost(it.data, run.port), 300),
        index: it.index,
        log: it.log,
        replay: async (port) => {
          await sendHttp(port, { ...it, truncateAt: undefined }, 2000);
          await sendHttp(port, it, 2000);
        },
      };
      run.remember(suspect);
      // after a few requests that got no answer, the next ones wait less (a real answer takes milliseconds; a stall is /healthz's to find)
      const timeoutMs = noAnswers < 5 ? run.o.httpTimeoutMs : Math.min(run.o.httpTimeoutMs, 1500);
      const o = await sendHttp(run.port, it, timeoutMs, watching < 1 ? WATCH_MS : 0);
      suspect.doneAt = performance.now();
      if ((o.kind === 'error' || (o.kind === 'timeout' && it.expect === 'answer')) && (await run.lost(epoch))) continue;
      const fail = (kind: string, rule: string, detail: string) =>
        run.fail({ phase: 'http', kind, signature: `http:${kind}: ${rule}`, detail, index: it.index, input: showBytes(withHost(it.data, run.port)), log: it.log });
      run.count(o.kind === 'status' ? `HTTP ${o.status || '?'}` : `HTTP ${o.kind}`);
      if (o.kind === 'status') {
        if (!o.status) fail('garbage', 'an answer that is not an HTTP/1.x status line', `got ${JSON.stringify(o.line.slice(0, 120))}`);
        else if (o.status >= 500 && o.status !== 503 && o.status !== 505) run.note(`${run.transport}: HTTP ${o.status} for ${it.label}`);
        if (o.status === 200 && /^"(?!GET|HEAD)/.test(it.label)) run.note(`${run.transport}: 200 for a non-GET/HEAD request: ${it.label}`);
      } else if (o.kind === 'closed' && o.bytes.length > 0) {
        fail('garbage', 'bytes that are not an HTTP/1.x status line, then a close', `got ${showBytes(o.bytes, 120)}`);
      } else if (o.kind === 'timeout' && it.expect === 'answer') {
        noAnswers++;
        // uWebSockets.js leaves a request its parser rejects unanswered, and closes it at its idle timeout (docs/protocol.md)
        const documented = run.transport === 'uws' && !it.plain;
        if (run.o.silentHttpOk || documented) silent++;
        else fail('no-answer', 'a complete request got neither a status line nor a close', `${it.label}: nothing within ${timeoutMs} ms${o.bytes.length ? `; got ${showBytes(o.bytes, 120)}` : ''}`);
        if (watching < 1) {
          watching++;
          watchers.push(
            o.closedAfter.then((ms) => {
              if (ms === null && documented && !run.o.silentHttpOk) fail('no-close', 'an unanswered request stays open past the idle timeout', `${it.label}: still open ${((timeoutMs + WATCH_MS) / 1000).toFixed(0)} s after it was sent (uWebSockets.js closes it at its idle timeout: docs/protocol.md)`);
              else run.note(`${run.transport}: an unanswered request (${it.label}) was ${ms === null ? `still open ${WATCH_MS / 1000} s after the timeout` : `closed by the server ${((ms + timeoutMs) / 1000).toFixed(1)} s after it was sent, without a status line`}`);
            }),
          );
        }
      } else if (o.kind === 'error' && !/ECONNRESET|EPIPE/.test(o.message)) {
        fail('socket', `socket error ${o.message.replace(/\d+/g, 'N').slice(0, 60)}`, o.message);
      }
    }
  };
  await Promise.all(Array.from({ length: run.o.httpConcurrency }, worker));
  if (silent) run.note(`${run.transport}: ${silent} request(s) got neither a status line nor a close in time (${run.o.silentHttpOk ? 'silentHttpOk' : 'requests uWebSockets.js rejects: documented'})`);
  run.watching.push(...watchers);
}

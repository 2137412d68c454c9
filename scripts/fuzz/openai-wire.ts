/**
 * How the OpenAI phase's requests go out and their answers come back: node:http over a keep-alive
 * agent (the answer whole, or read after a stall, or dropped on purpose), or raw bytes on a fresh
 * socket read back with a small HTTP/1.1 response parser (Content-Length, chunked, to the close;
 * 1xx skipped; no body after HEAD), which also sees what a server sends after its answer.
 */
import { request as httpRequest, type Agent, type ClientRequest } from 'node:http';
import { connect as netConnect, type Socket } from 'node:net';
import { withHost } from './http-gen.js';
import type { OpenAIAnswer } from './openai-answer.js';
import type { OpenAIItem } from './openai-gen.js';
import { sleep } from './util.js';

export type Outcome =
  | {
      kind: 'answer';
      answer: OpenAIAnswer;
      /** Sent on a connection that had carried a request before (keep-alive). */
      reused: boolean;
      /** raw: the answer to the pipelined request after it (null: none came though the connection stayed open; undefined: none due); bytes after the answer(s). */
      next?: OpenAIAnswer | null;
      trailing?: Buffer;
    }
  /** No status line (`status`), or no end of the body (`body`), in time. */
  | { kind: 'timeout'; what: 'status' | 'body'; bytes: number }
  /** The server closed the connection without an answer (or in the middle of one). */
  | { kind: 'closed'; partial: boolean; bytes: Buffer }
  /** `before`: the request that went on this keep-alive connection before it, and how long (ms) the connection then sat idle. */
  | { kind: 'error'; message: string; code: string; reused: boolean; before?: string; idleMs?: number }
  /** Bytes that are not an HTTP/1.x answer. */
  | { kind: 'garbage'; bytes: Buffer }
  /** The client dropped the connection on purpose before any answer. */
  | { kind: 'dropped' };

export interface Waits {
  /** For the status line. */
  statusMs: number;
  /** For the rest of the body once the status line came. */
  bodyMs: number;
  /** For a request whose framing lets the server wait (short, broken). */
  maybeMs: number;
}

/** The last request answered on each keep-alive connection (its label), and when. */
const lastSent = new WeakMap<Socket, { label: string; at: number }>();

/** Sends an item over node:http with `agent` (keep-alive); resolves with what came back. */
export function sendAgent(port: number, agent: Agent | false, it: OpenAIItem, w: Waits): Promise<Outcome> {
  return new Promise((resolve) => {
    const headers: Record<string, string | string[]> = {};
    for (const [k, v] of it.headers) {
      const key = k.toLowerCase();
      headers[key] = headers[key] === undefined ? v : [headers[key]!].flat().concat(v);
    }
    if (it.pieces) headers['transfer-encoding'] = 'chunked';
    else if (it.body.length || it.method === 'POST') headers['content-length'] = String(it.body.length);
    let req: ClientRequest;
    let before: { label: string; at: number } | undefined;
    let sock: Socket | undefined;
    let settled = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (o: Outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      resolve(o);
    };
    try {
      req = httpRequest({ host: '127.0.0.1', port, method: it.method, path: it.target, headers, agent });
    } catch (err) {
      return finish({ kind: 'error', message: (err as Error).message, code: (err as NodeJS.ErrnoException).code ?? 'THROWN', reused: false });
    }
    timer = setTimeout(() => {
      finish({ kind: 'timeout', what: 'status', bytes: 0 });
      req.destroy();
    }, w.statusMs);
    req.on('socket', (s: Socket) => {
      sock = s;
      before = lastSent.get(s);
      lastSent.delete(s);
    });
    req.on('error', (err: NodeJS.ErrnoException) => finish({ kind: 'error', message: err.message, code: err.code ?? '', reused: req.reusedSocket, before: before?.label, idleMs: before && performance.now() - before.at }));
    req.on('response', (res) => {
      clearTimeout(timer);
      const answer: OpenAIAnswer = { status: res.statusCode ?? 0, headers: res.headers, body: Buffer.alloc(0), complete: false };
      const chunks: Buffer[] = [];
      if (it.reader === 'abort') {
        res.once('data', () => undefined);
        setTimeout(() => req.destroy(), 20);
        return finish({ kind: 'answer', answer, reused: req.reusedSocket });
      }
      timer = setTimeout(() => {
        finish({ kind: 'timeout', what: 'body', bytes: chunks.reduce((a, c) => a + c.length, 0) });
        req.destroy();
      }, w.bodyMs + it.stallMs);
      if (it.reader === 'stall') {
        res.pause();
        setTimeout(() => res.resume(), it.stallMs);
      }
      res.on('data', (c: Buffer) => chunks.push(c));
      res.on('end', () => {
        if (sock) lastSent.set(sock, { label: it.label, at: performance.now() });
        finish({ kind: 'answer', answer: { ...answer, body: Buffer.concat(chunks), complete: true }, reused: req.reusedSocket });
      });
      res.on('error', () => undefined);
      res.on('close', () => {
        if (!res.complete) finish({ kind: 'closed', partial: true, bytes: Buffer.concat(chunks) });
      });
    });
    if (it.pieces) {
      let at = 0;
      void (async () => {
        for (const n of it.pieces!) {
          if (settled) return;
          req.write(it.body.subarray(at, at + n));
          at += n;
          await sleep(2);
        }
        req.end();
      })();
    } else req.end(it.body);
    if (it.reader === 'drop') {
      setTimeout(() => {
        if (settled) return;
        req.destroy();
        finish({ kind: 'dropped' });
      }, 5);
    }
  });
}

interface Parsed {
  answer: OpenAIAnswer;
  /** Where the next answer starts. */
  end: number;
}

/**
 * One HTTP/1.x answer at `from` in `buf`: null while more bytes are needed, 'garbage' for bytes
 * that cannot start one. `closed`: no more bytes will come (a body without a length ends here).
 */
export function parseAnswer(buf: Buffer, from: number, head: boolean, closed: boolean): Parsed | null | 'garbage' {
  for (;;) {
    const start = buf.subarray(from, from + 12).toString('latin1');
    if (!'HTTP/1.'.startsWith(start.slice(0, 7)) || (start.length >= 12 && !/^HTTP\/1\.[01] \d{3}/.test(start))) return 'garbage';
    const eoh = buf.indexOf('\r\n\r\n', from);
    if (eoh < 0) return buf.length - from > 65536 ? 'garbage' : null;
    const lines = buf.subarray(from, eoh).toString('latin1').split('\r\n');
    const status = Number(lines[0]!.slice(9, 12));
    const headers: Record<string, string> = {};
    for (const l of lines.slice(1)) {
      const c = l.indexOf(':');
      const k = l.slice(0, c).trim().toLowerCase();
      headers[k] = headers[k] === undefined ? l.slice(c + 1).trim() : `${headers[k]}, ${l.slice(c + 1).trim()}`;
    }
    let at = eoh + 4;
    if (status >= 100 && status < 200 && status !== 101) {
      from = at; // 100 Continue: the answer follows
      continue;
    }
    const done = (body: Buffer, end: number, complete = true): Parsed => ({ answer: { status, headers, body, complete }, end });
    if (head || status === 204 || status === 304) return done(Buffer.alloc(0), at);
    if (/chunked/i.test(headers['transfer-encoding'] ?? '')) {
      const parts: Buffer[] = [];
      for (;;) {
        const eol = buf.indexOf('\r\n', at);
        if (eol < 0) return closed ? done(Buffer.concat(parts), buf.length, false) : null;
        const size = parseInt(buf.subarray(at, eol).toString('latin1').split(';', 1)[0]!, 16);
        if (!Number.isFinite(size)) return 'garbage';
        if (size === 0) {
          const end = buf.indexOf('\r\n\r\n', eol);
          if (end < 0) return closed ? done(Buffer.concat(parts), buf.length, false) : null;
          return done(Buffer.concat(parts), end + 4);
        }
        if (buf.length < eol + 2 + size + 2) return closed ? done(Buffer.concat([...parts, buf.subarray(eol + 2)]), buf.length, false) : null;
        parts.push(buf.subarray(eol + 2, eol + 2 + size));
        at = eol + 2 + size + 2;
      }
    }
    const cl = headers['content-length'];
    if (cl !== undefined) {
      const n = Number(cl);
      if (buf.length < at + n) return closed ? done(buf.subarray(at), buf.length, false) : null;
      return done(buf.subarray(at, at + n), at + n);
    }
    return closed ? done(buf.subarray(at), buf.length) : null;
  }
}

/** Writes an item's raw bytes on a fresh socket; resolves with its answer (and the pipelined one's). */
export function sendRaw(port: number, it: OpenAIItem, w: Waits): Promise<Outcome> {
  return new Promise((resolve) => {
    const data = withHost(it.raw!, port);
    const sock: Socket = netConnect({ host: '127.0.0.1', port });
    const head = it.method.toUpperCase() === 'HEAD';
    let got = Buffer.alloc(0);
    let settled = false;
    let closed = false;
    let timer: NodeJS.Timeout | undefined;
    const finish = (o: Outcome) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      sock.destroy();
      resolve(o);
    };
    const maybe = it.framing === 'short' || it.framing === 'broken' || it.mayRefuse !== undefined;
    const check = () => {
      const first = parseAnswer(got, 0, head, closed);
      if (first === 'garbage') return finish({ kind: 'garbage', bytes: got.subarray(0, 300) });
      if (first === null) {
        if (closed) finish({ kind: 'closed', partial: got.length > 0, bytes: got.subarray(0, 300) });
        return;
      }
      if (!first.answer.complete && !closed) return;
      if (it.reader === 'abort' || it.reader === 'drop') return finish({ kind: 'answer', answer: { ...first.answer, complete: false }, reused: false });
      const keepAlive = !/close/i.test(String(first.answer.headers['connection'] ?? '')) && !/HTTP\/1\.0/.test(data.subarray(0, 300).toString('latin1').split('\r\n', 1)[0]!);
      if (it.framing === 'pipelined' && keepAlive) {
        const second = parseAnswer(got, first.end, false, closed);
        if (second === 'garbage') return finish({ kind: 'answer', answer: first.answer, reused: false, next: null, trailing: got.subarray(first.end, first.end + 300) });
        if (second === null || (!second.answer.complete && !closed)) {
          if (closed) finish({ kind: 'answer', answer: first.answer, reused: false, next: null });
          return;
        }
        return finish({ kind: 'answer', answer: first.answer, reused: false, next: second.answer, trailing: got.subarray(second.end) });
      }
      // a little longer: does anything follow the answer that should not?
      if (it.framing === 'exact' && !closed) {
        clearTimeout(timer);
        timer = setTimeout(() => finish({ kind: 'answer', answer: first.answer, reused: false, trailing: got.subarray(first.end) }), 30);
        return;
      }
      // (pipelined after an answer that closes the connection: no second answer is due)
      finish({ kind: 'answer', answer: first.answer, reused: false, trailing: it.framing === 'exact' ? got.subarray(first.end) : undefined });
    };
    sock.on('error', (err: NodeJS.ErrnoException) => {
      if (got.length) {
        closed = true;
        check();
      }
      finish({ kind: 'error', message: err.message, code: err.code ?? '', reused: false });
    });
    sock.on('data', (d: Buffer) => {
      got = Buffer.concat([got, d]);
      if (got.length > (64 << 20)) return finish({ kind: 'garbage', bytes: got.subarray(0, 300) });
      check();
    });
    sock.on('close', () => {
      closed = true;
      check();
      finish({ kind: 'closed', partial: got.length > 0, bytes: got.subarray(0, 300) });
    });
    sock.on('connect', async () => {
      if (it.reader === 'stall') {
        // a client that does not read for a while
        sock.pause();
        setTimeout(() => sock.resume(), it.stallMs);
      }
      let at = 0;
      for (const n of it.pieces ?? []) {
        sock.write(data.subarray(at, at + n));
        at += n;
        await sleep(5);
      }
      if (!settled) sock.write(data.subarray(at));
      if (it.reader === 'drop') {
        await sleep(5);
        return finish({ kind: 'dropped' });
      }
      timer = setTimeout(() => {
        if (maybe) {
          // the server may wait for bytes that never come: the client gives up (half-close), then any answer or a close
          sock.end();
          timer = setTimeout(() => finish({ kind: 'timeout', what: got.length ? 'body' : 'status', bytes: got.length }), w.maybeMs);
          return;
        }
        finish({ kind: 'timeout', what: got.length ? 'body' : 'status', bytes: got.length });
      }, maybe ? w.maybeMs : w.statusMs + w.bodyMs + it.stallMs);
    });
  });
}

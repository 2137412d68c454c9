/** The fuzzer's WebSocket client, and the replay of a connection's frames on a fresh server. */
import WebSocket from 'ws';
import type { FrameItem } from './frames.js';

/** `pong`: the answer to `ping()` (its payload in `data`). */
export type WsEvent = { kind: 'message'; text: string } | { kind: 'close'; code: number; reason: string } | { kind: 'pong'; data: string } | { kind: 'timeout' };

/** A WebSocket client that keeps every frame and the close, read in order with a deadline. */
export class WsClient {
  private readonly queue: WsEvent[] = [];
  private wake: (() => void) | null = null;
  closed: { code: number; reason: string } | null = null;
  private pings = 0;

  private constructor(readonly ws: WebSocket) {
    ws.on('message', (d, isBinary) => this.push({ kind: 'message', text: isBinary ? '\u0000binary:' + (d as Buffer).toString('hex') : d.toString() }));
    ws.on('close', (code, reason) => {
      this.closed = { code, reason: reason.toString() };
      this.push({ kind: 'close', code, reason: reason.toString() });
    });
    ws.on('pong', (d) => this.push({ kind: 'pong', data: d.toString() }));
    ws.on('error', () => undefined);
  }

  private push(e: WsEvent): void {
    this.queue.push(e);
    const w = this.wake;
    this.wake = null;
    w?.();
  }

  /** Opens; rejects with the reason (an HTTP status, a refused connection...). */
  static open(url: string, timeoutMs: number): Promise<WsClient> {
    return new Promise((resolve, reject) => {
      let ws: WebSocket;
      try {
        ws = new WebSocket(url, { handshakeTimeout: timeoutMs, perMessageDeflate: false, maxPayload: 256 << 20 });
      } catch (err) {
        reject(err as Error);
        return;
      }
      const c = new WsClient(ws);
      ws.once('open', () => resolve(c));
      ws.once('unexpected-response', (_req, res) => {
        reject(new Error(`upgrade refused: HTTP ${res.statusCode}`));
        ws.terminate();
      });
      ws.once('error', (e) => reject(e));
    });
  }

  /** Puts an event back in front (it was read too early). */
  unshift(e: WsEvent): void {
    this.queue.unshift(e);
  }

  /** The next event, or a timeout at `deadline` (performance.now() time). */
  async next(deadline: number): Promise<WsEvent> {
    for (;;) {
      const e = this.queue.shift();
      if (e) return e;
      const left = deadline - performance.now();
      if (left <= 0) return { kind: 'timeout' };
      await new Promise<void>((r) => {
        const t = setTimeout(() => {
          this.wake = null;
          r();
        }, left);
        this.wake = () => {
          clearTimeout(t);
          r();
        };
      });
    }
  }

  send(item: FrameItem): Promise<void> {
    return new Promise((resolve) => {
      if (this.ws.readyState !== WebSocket.OPEN) return resolve();
      const done = () => resolve();
      if (item.fragments <= 1) {
        this.ws.send(item.data, { binary: item.binary, compress: false, fin: true }, done);
        return;
      }
      const n = item.fragments;
      const step = Math.ceil(item.data.length / n);
      for (let i = 0; i < n; i++) {
        const part = item.data.subarray(i * step, Math.min(item.data.length, (i + 1) * step));
        const last = i === n - 1 || (i + 1) * step >= item.data.length;
        this.ws.send(part, { binary: item.binary, compress: false, fin: last }, last ? done : undefined);
        if (last) break;
      }
    });
  }

  /** Sends a ping; returns its payload (the server answers after every frame sent before it). */
  ping(): string {
    const data = `p${++this.pings}`;
    if (this.ws.readyState === WebSocket.OPEN) this.ws.ping(data);
    return data;
  }

  terminate(): void {
    this.ws.terminate();
  }
}

/**
 * Replays frames on a fresh connection (after a crash, to find the one that kills the server).
 * Returns the frame after which the connection closed (the last one sent when it did not).
 */
export async function replayFrames(port: number, items: FrameItem[], timeoutMs: number): Promise<FrameItem | void> {
  const c = await WsClient.open(`ws://127.0.0.1:${port}/v1/ws`, timeoutMs);
  await c.next(performance.now() + timeoutMs);
  for (const it of items) {
    if (c.closed) return it === items[0] ? undefined : items[items.indexOf(it) - 1];
    await c.send(it);
    const deadline = performance.now() + Math.min(timeoutMs, 2000);
    for (;;) {
      const e = await c.next(deadline);
      if (e.kind !== 'message') break;
      if (/"type":"(error|session\.updated|session\.resumed|response\.truncated|response\.done|session\.closed)"/.test(e.text)) break;
    }
    if (c.closed) {
      // closed by the server after this frame: the next frames cannot matter
      return it;
    }
  }
  c.terminate();
  return items[items.length - 1];
}

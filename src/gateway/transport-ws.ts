/**
 * The `ws` transport: node:http (node:https with TLS) for the HTTP routes, the ws package for the
 * WebSocket fronts: protocol v1 at /v1/ws and the Realtime front at /v1/realtime.
 */
import { readFileSync } from 'node:fs';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { createServer as createTlsServer } from 'node:https';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { WeftError } from '../errors.js';
import { parseProtocols } from './api-keys.js';
import type { FrontConnection, TransportSocket } from './socket-link.js';
import { bodyTooLarge, ExchangeBase, STATUS_TEXT, type HttpExchange } from './http-exchange.js';
import { parseTarget } from './http-request.js';
import type { Gateway } from './server.js';

export const WS_PATH = '/v1/ws';
export const REALTIME_PATH = '/v1/realtime';

/** A gateway transport: HTTP routes and protocol v1 on one port. */
export interface Transport {
  /** Listens; resolves with the bound port (WEFT_LISTEN_FAILED when it cannot). */
  listen(host: string, port: number): Promise<number>;
  /** Drops every socket and stops listening. */
  close(): Promise<void>;
}

/** A listen failure as a coded error (a port in use is not a weft bug). */
export function listenError(host: string, port: number, cause?: unknown): WeftError {
  const code = (cause as NodeJS.ErrnoException | undefined)?.code;
  const why =
    code === 'EADDRINUSE' ? 'the port is in use' :
    code === 'EACCES' ? 'permission denied (ports below 1024 need privileges)' :
    code === 'EADDRNOTAVAIL' ? 'the address is not one of this machine' :
    code ?? 'the port is in use or the address is not one of this machine';
  return new WeftError('WEFT_LISTEN_FAILED', `cannot listen on ${host}:${port}: ${why}`, { cause });
}

/** The PEM certificate chain and key of `--tls-cert`/`--tls-key` (WEFT_BAD_ARGUMENT naming a file that cannot be read). */
export function readTls(tls: { certFile: string; keyFile: string }): { cert: Buffer; key: Buffer } {
  const read = (file: string, flag: string) => {
    try {
      return readFileSync(file);
    } catch (err) {
      throw new WeftError('WEFT_BAD_ARGUMENT', `${flag} ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err });
    }
  };
  return { cert: read(tls.certFile, '--tls-cert'), key: read(tls.keyFile, '--tls-key') };
}

/** A raw HTTP/1.1 answer for a socket that is not (yet) a WebSocket: written, then the socket ends. */
export function rawHttpAnswer(status: number, body: string, headers: Record<string, string> = {}): string {
  let head = `HTTP/1.1 ${status} ${STATUS_TEXT[status] ?? 'Error'}\r\nConnection: close\r\n`;
  for (const [k, v] of Object.entries(headers)) head += `${k}: ${v}\r\n`;
  return `${head}Content-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

/** A header's value as one string (repeated headers joined as HTTP joins them). */
function header(v: string | string[] | undefined): string | undefined {
  return Array.isArray(v) ? v.join(', ') : v;
}

/**
 * Unmasked, unfragmented text frames (RFC 6455 §5.2: FIN + opcode 1, then the payload length in 7
 * bits, or 126 + 16 bits, or 127 + 64 bits; a server's frames are not masked), one after another in
 * one buffer.
 */
export function encodeTextFrames(texts: readonly string[]): Buffer {
  let total = 0;
  const sizes = texts.map((t) => {
    const n = Buffer.byteLength(t);
    total += n + (n < 126 ? 2 : n < 65536 ? 4 : 10);
    return n;
  });
  const buf = Buffer.allocUnsafe(total);
  let at = 0;
  texts.forEach((t, i) => {
    const n = sizes[i]!;
    buf[at++] = 0x81;
    if (n < 126) {
      buf[at++] = n;
    } else if (n < 65536) {
      buf[at++] = 126;
      buf.writeUInt16BE(n, at);
      at += 2;
    } else {
      buf[at++] = 127;
      buf.writeBigUInt64BE(BigInt(n), at);
      at += 8;
    }
    at += buf.write(t, at, 'utf8');
  });
  return buf;
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

export class WsTransport implements Transport {
  readonly http: Server;
  private readonly wss: WebSocketServer;
  /** Sockets that have not answered the last heartbeat ping. */
  private readonly silent = new WeakSet<WebSocket>();
  private heartbeat: NodeJS.Timeout | null = null;

  constructor(private readonly gw: Gateway) {
    const onRequest = (req: IncomingMessage, res: ServerResponse) => this.request(req, res);
    this.http = gw.options.tls ? createTlsServer(readTls(gw.options.tls), onRequest) : createServer(onRequest);
    // a client that sends its request head slowly (or never finishes it) is dropped after 10 s
    this.http.headersTimeout = 10_000;
    this.http.requestTimeout = 30_000;
    // frames up to 4x the protocol limit are read (and answered with WEFT_FRAME_TOO_LARGE); larger ones close with 1009
    this.wss = new WebSocketServer({
      noServer: true,
      maxPayload: gw.maxFrameBytes * 4,
      // the subprotocol admitUpgrade chose (a browser fails a handshake that answers none of those it offered)
      handleProtocols: (_offered, req) => (req as IncomingMessage & { weftProtocol?: string }).weftProtocol ?? false,
    });
    this.http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.upgrade(req, socket, head));
    if (gw.heartbeatMs > 0) {
      this.heartbeat = setInterval(() => {
        for (const ws of this.wss.clients) {
          if (this.silent.has(ws)) {
            ws.terminate(); // no pong since the last ping: a dead connection
            continue;
          }
          this.silent.add(ws);
          ws.ping();
        }
      }, gw.heartbeatMs);
      this.heartbeat.unref();
    }
  }

  private request(req: IncomingMessage, res: ServerResponse): void {
    this.gw.handleHttp(new NodeExchange(req, res, (peer, xff) => this.gw.clientAddress(peer, xff)));
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    // node:http removed its own error listener from an upgraded socket: a reset during the
    // handshake must not become an uncaught 'error'
    socket.on('error', () => socket.destroy());
    const { path, query } = parseTarget(req.url);
    const remoteAddress = this.gw.clientAddress(req.socket.remoteAddress ?? '', header(req.headers['x-forwarded-for']));
    const decision = this.gw.admitUpgrade({
      path,
      query,
      origin: req.headers.origin,
      authorization: req.headers.authorization,
      protocols: parseProtocols(req.headers['sec-websocket-protocol']),
      remoteAddress,
    });
    if ('refuse' in decision) return void socket.end(rawHttpAnswer(decision.refuse.status, decision.refuse.body, decision.refuse.headers));
    (req as IncomingMessage & { weftProtocol?: string }).weftProtocol = decision.accept.protocol;
    this.wss.handleUpgrade(req, socket, head, (ws) => this.open(ws, socket as Socket, remoteAddress, decision.accept.open));
  }

  private open(ws: WebSocket, raw: Socket, remoteAddress: string, connect: (sock: TransportSocket) => FrontConnection): void {
    // queued bytes went out (one callback per write)
    const drained = (err?: Error | null) => {
      if (!err) conn.onDrain();
    };
    // A step's frames for this socket, held while corked and written as one buffer of ready-made
    // frames with one write (ws would frame and write each message, with a callback each: that
    // was the largest share of the main thread's time per token at 256 sessions).
    let held: string[] | null = null;
    let heldBytes = 0;
    const flush = () => {
      const texts = held;
      held = null;
      heldBytes = 0;
      if (!texts || texts.length === 0 || ws.readyState !== ws.OPEN) return;
      raw.write(encodeTextFrames(texts), drained);
    };
    let resumeTimer: NodeJS.Timeout | undefined;
    const conn = connect({
      send: (text) => {
        if (held) {
          held.push(text);
          heldBytes += Buffer.byteLength(text);
        } else {
          ws.send(text, drained);
        }
      },
      // corked while the gateway delivers a step's frames
      cork: () => {
        held ??= [];
      },
      uncork: flush,
      get bufferedAmount() {
        return ws.bufferedAmount + heldBytes;
      },
      close: (code, reason) => {
        flush(); // the frames of this step go before the close frame
        ws.close(code, reason);
      },
      pauseReading: (ms) => {
        ws.pause();
        clearTimeout(resumeTimer);
        resumeTimer = setTimeout(() => ws.readyState === ws.OPEN && ws.resume(), ms);
        resumeTimer.unref();
      },
      remoteAddress,
    });
    ws.on('pong', () => this.silent.delete(ws));
    ws.on('message', (data, isBinary) => conn.onMessage(toBuffer(data), isBinary));
    ws.on('close', () => {
      clearTimeout(resumeTimer);
      conn.onClose();
    });
    ws.on('error', () => conn.onClose());
    conn.open();
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      const failed = (err: unknown) => reject(listenError(host, port, err));
      this.http.once('error', failed);
      this.http.listen(port, host, () => {
        this.http.off('error', failed);
        resolve((this.http.address() as AddressInfo).port);
      });
    });
  }

  async close(): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat);
    for (const c of this.wss.clients) c.terminate();
    this.wss.close();
    this.http.closeAllConnections();
    await new Promise<void>((r) => this.http.close(() => r()));
  }
}

/** An HttpExchange over node:http's request and response. */
class NodeExchange extends ExchangeBase implements HttpExchange {
  readonly method: string;
  readonly path: string;
  readonly query: string;
  readonly remoteAddress: string;

  constructor(
    private readonly req: IncomingMessage,
    private readonly res: ServerResponse,
    clientAddress: (peer: string, forwardedFor: string | undefined) => string,
  ) {
    super();
    this.method = (req.method ?? 'GET').toUpperCase();
    const t = parseTarget(req.url);
    this.path = t.path;
    this.query = t.query;
    this.remoteAddress = clientAddress(req.socket.remoteAddress ?? '', header(req.headers['x-forwarded-for']));
    res.on('close', () => this.gone());
    res.on('error', () => this.gone());
    req.on('error', () => undefined);
    res.on('drain', () => this.wroteOut());
  }

  header(name: string): string | undefined {
    const v = this.req.headers[name];
    return Array.isArray(v) ? v.join(', ') : v;
  }

  body(limit: number): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const declared = Number(this.req.headers['content-length']);
      if (Number.isFinite(declared) && declared > limit) return reject(bodyTooLarge(limit));
      const chunks: Buffer[] = [];
      let size = 0;
      this.req.on('data', (c: Buffer) => {
        size += c.length;
        if (size > limit) {
          this.req.removeAllListeners('data');
          this.req.pause();
          return reject(bodyTooLarge(limit));
        }
        chunks.push(c);
      });
      this.req.on('end', () => resolve(Buffer.concat(chunks)));
      this.req.on('error', (err) => reject(err));
      this.req.on('aborted', () => reject(new WeftError('WEFT_CANCELLED', 'the client went away while sending its body')));
    });
  }

  respond(status: number, headers: Record<string, string>, body: string): void {
    if (this.done || this.aborted || this.res.headersSent) return;
    this.done = true;
    // a body left unread (refused early: too large, no key) is not drained: the connection closes
    // (a request without a body is not complete yet while its handler runs: it keeps its connection)
    const announced = this.req.headers['transfer-encoding'] !== undefined || Number(this.req.headers['content-length'] ?? 0) > 0;
    if (announced && !this.req.complete) this.res.setHeader('connection', 'close');
    this.res.writeHead(status, headers);
    this.res.end(body);
  }

  startStream(status: number, headers: Record<string, string>): void {
    if (this.aborted || this.res.headersSent) return;
    this.res.writeHead(status, headers);
    this.res.flushHeaders();
  }

  write(chunk: string): boolean {
    if (this.done || this.aborted) return false;
    const ok = this.res.write(chunk);
    if (!ok) this.writable = false;
    return ok;
  }

  end(): void {
    if (this.done || this.aborted) return;
    this.done = true;
    this.res.end();
  }

  destroy(): void {
    this.done = true;
    this.res.destroy();
  }

  cork(): void {
    this.res.cork();
  }

  uncork(): void {
    this.res.uncork();
  }
}

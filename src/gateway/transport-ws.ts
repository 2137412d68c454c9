/** The `ws` transport: node:http for the HTTP routes, the ws package for protocol v1 at /v1/ws. */
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type RawData, type WebSocket } from 'ws';
import { WeftError } from '../errors.js';
import { ADDRESS_RATE_LIMITED, ORIGIN_REFUSED, parseTarget, rawHttpError, resumeParams, type ResumeParams } from './http-request.js';
import type { Gateway } from './server.js';

export const WS_PATH = '/v1/ws';

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
    this.http = createServer((req, res) => this.request(req, res));
    // a client that sends its request head slowly (or never finishes it) is dropped after 10 s
    this.http.headersTimeout = 10_000;
    this.http.requestTimeout = 30_000;
    // frames up to 4x the protocol limit are read (and answered with WEFT_FRAME_TOO_LARGE); larger ones close with 1009
    this.wss = new WebSocketServer({ noServer: true, maxPayload: gw.maxFrameBytes * 4 });
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
    const method = req.method ?? 'GET';
    const send = (status: number, type: string, body: string, headers?: Record<string, string>) => {
      if (res.headersSent || res.destroyed) return;
      res.writeHead(status, { ...headers, 'content-type': type });
      res.end(method === 'HEAD' ? undefined : body);
    };
    this.gw.httpResponse(method, parseTarget(req.url).path).then(
      (r) => send(r.status, r.type, r.body, r.headers),
      (err: unknown) => send(500, 'text/plain; charset=utf-8', `WEFT_INTERNAL: ${(err as Error)?.message ?? String(err)}\n`),
    );
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    // node:http removed its own error listener from an upgraded socket: a reset during the
    // handshake must not become an uncaught 'error'
    socket.on('error', () => socket.destroy());
    const { path, query } = parseTarget(req.url);
    if (path !== WS_PATH) return void socket.end(rawHttpError(404, 'not found\n'));
    if (!this.gw.origins.allows(req.headers.origin)) return void socket.end(rawHttpError(403, ORIGIN_REFUSED));
    const remoteAddress = req.socket.remoteAddress ?? '';
    const wait = this.gw.addressLimiter.refusesFor(remoteAddress);
    if (wait > 0) return void socket.end(rawHttpError(429, ADDRESS_RATE_LIMITED, Math.ceil(wait / 1000)));
    this.wss.handleUpgrade(req, socket, head, (ws) => this.open(ws, socket as Socket, remoteAddress, resumeParams(query)));
  }

  private open(ws: WebSocket, raw: Socket, remoteAddress: string, resume: ResumeParams): void {
    // one callback for every send (Node batches the completions of a same callback): queued bytes went out
    const drained = (err?: Error) => {
      if (!err) conn.onDrain();
    };
    let resumeTimer: NodeJS.Timeout | undefined;
    const conn = this.gw.connect(
      {
        send: (text) => ws.send(text, drained),
        // the upgraded TCP socket: corked while the gateway delivers a step's frames
        cork: () => raw.cork(),
        uncork: () => raw.uncork(),
        get bufferedAmount() {
          return ws.bufferedAmount;
        },
        close: (code, reason) => ws.close(code, reason),
        pauseReading: (ms) => {
          ws.pause();
          clearTimeout(resumeTimer);
          resumeTimer = setTimeout(() => ws.readyState === ws.OPEN && ws.resume(), ms);
          resumeTimer.unref();
        },
        remoteAddress,
      },
      resume,
    );
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

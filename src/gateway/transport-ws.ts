/** The `ws` transport: node:http for the HTTP routes, the ws package for protocol v1 at /v1/ws. */
import { createServer, type IncomingMessage, type Server } from 'node:http';
import type { AddressInfo, Socket } from 'node:net';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type RawData } from 'ws';
import type { Gateway } from './server.js';

export const WS_PATH = '/v1/ws';

/** A gateway transport: HTTP routes and protocol v1 on one port. */
export interface Transport {
  /** Listens; resolves with the bound port. */
  listen(host: string, port: number): Promise<number>;
  /** Drops every socket and stops listening. */
  close(): Promise<void>;
}

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

export class WsTransport implements Transport {
  readonly http: Server;
  private readonly wss: WebSocketServer;

  constructor(private readonly gw: Gateway) {
    this.http = createServer((req, res) => {
      const path = new URL(req.url ?? '/', 'http://localhost').pathname;
      void gw.httpResponse(req.method ?? 'GET', path).then((r) => {
        res.writeHead(r.status, { 'content-type': r.type });
        res.end(req.method === 'HEAD' ? undefined : r.body);
      });
    });
    // frames up to 4x the protocol limit are read (and answered with WEFT_FRAME_TOO_LARGE); larger ones close with 1009
    this.wss = new WebSocketServer({ noServer: true, maxPayload: gw.maxFrameBytes * 4 });
    this.http.on('upgrade', (req: IncomingMessage, socket: Duplex, head: Buffer) => this.upgrade(req, socket, head));
  }

  private upgrade(req: IncomingMessage, socket: Duplex, head: Buffer): void {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== WS_PATH) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    this.wss.handleUpgrade(req, socket, head, (ws) => {
      // the upgraded TCP socket: corked while the gateway delivers a step's frames
      const raw = socket as Socket;
      // one callback for every send (Node batches the completions of a same callback): queued bytes went out
      const drained = (err?: Error) => {
        if (!err) conn.onDrain();
      };
      const conn = this.gw.connect(
        {
          send: (text) => ws.send(text, drained),
          cork: () => raw.cork(),
          uncork: () => raw.uncork(),
          get bufferedAmount() {
            return ws.bufferedAmount;
          },
          close: (code, reason) => ws.close(code, reason),
        },
        url.searchParams.get('resume') ?? undefined,
      );
      ws.on('message', (data, isBinary) => conn.onMessage(toBuffer(data), isBinary));
      ws.on('close', () => conn.onClose());
      ws.on('error', () => conn.onClose());
      conn.open();
    });
  }

  listen(host: string, port: number): Promise<number> {
    return new Promise((resolve, reject) => {
      this.http.once('error', reject);
      this.http.listen(port, host, () => {
        this.http.off('error', reject);
        resolve((this.http.address() as AddressInfo).port);
      });
    });
  }

  async close(): Promise<void> {
    for (const c of this.wss.clients) c.terminate();
    this.wss.close();
    this.http.closeAllConnections();
    await new Promise<void>((r) => this.http.close(() => r()));
  }
}

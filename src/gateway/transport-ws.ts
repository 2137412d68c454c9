/** The `ws` transport: protocol v1 at /v1/ws on the gateway's HTTP server. */
import type { IncomingMessage, Server } from 'node:http';
import type { Duplex } from 'node:stream';
import { WebSocketServer, type RawData } from 'ws';
import type { Gateway } from './server.js';

export const WS_PATH = '/v1/ws';

function toBuffer(data: RawData): Buffer {
  if (Buffer.isBuffer(data)) return data;
  if (Array.isArray(data)) return Buffer.concat(data);
  return Buffer.from(data);
}

export function attachWsTransport(gw: Gateway, server: Server): { close(): void } {
  // frames up to 4x the protocol limit are read (and answered with WEFT_FRAME_TOO_LARGE); larger ones close with 1009
  const wss = new WebSocketServer({ noServer: true, maxPayload: gw.maxFrameBytes * 4 });
  const onUpgrade = (req: IncomingMessage, socket: Duplex, head: Buffer) => {
    const url = new URL(req.url ?? '/', 'http://localhost');
    if (url.pathname !== WS_PATH) {
      socket.end('HTTP/1.1 404 Not Found\r\nConnection: close\r\nContent-Length: 0\r\n\r\n');
      return;
    }
    wss.handleUpgrade(req, socket, head, (ws) => {
      const conn = gw.connect({
        send: (text, onSent) => ws.send(text, (err) => (err ? undefined : onSent?.())),
        get bufferedAmount() {
          return ws.bufferedAmount;
        },
        close: (code, reason) => ws.close(code, reason),
      }, url.searchParams.get('resume') ?? undefined);
      ws.on('message', (data, isBinary) => conn.onMessage(toBuffer(data), isBinary));
      ws.on('close', () => conn.onClose());
      ws.on('error', () => conn.onClose());
      conn.open();
    });
  };
  server.on('upgrade', onUpgrade);
  return {
    close() {
      server.off('upgrade', onUpgrade);
      for (const c of wss.clients) c.terminate();
      wss.close();
    },
  };
}

/**
 * The uWebSockets.js transport (@trufflesuite/uws-js-unofficial: prebuilt binaries shipped in the
 * npm package): the same HTTP routes and protocol v1 at /v1/ws on a uWS App.
 */
import { createRequire } from 'node:module';
import type * as UWS from '@trufflesuite/uws-js-unofficial';
import { WeftError } from '../errors.js';
import type { Connection } from './connection.js';
import { ADDRESS_RATE_LIMITED, ORIGIN_REFUSED, parseTarget, resumeParams, type ResumeParams } from './http-request.js';
import type { Gateway } from './server.js';
import { WS_PATH, listenError, type Transport } from './transport-ws.js';

interface UserData {
  resume?: ResumeParams;
  remoteAddress: string;
  conn?: Connection;
  closed?: boolean;
  /** Frames held while corked (the gateway delivers a step's events), sent by `flush` in one uWS cork. */
  queue?: string[];
  corked?: boolean;
  flush?: () => void;
}

const STATUS: Record<number, string> = { 200: '200 OK', 403: '403 Forbidden', 404: '404 Not Found', 405: '405 Method Not Allowed', 426: '426 Upgrade Required', 500: '500 Internal Server Error', 503: '503 Service Unavailable' };

let uws: typeof UWS | undefined;
function load(): typeof UWS {
  if (uws) return uws;
  try {
    uws = createRequire(import.meta.url)('@trufflesuite/uws-js-unofficial') as typeof UWS;
  } catch (err) {
    throw new WeftError('WEFT_BAD_ARGUMENT', `the uws transport is not available on this platform: ${(err as Error).message}`, { cause: err });
  }
  return uws;
}

export class UwsTransport implements Transport {
  private readonly app: UWS.TemplatedApp;
  private listenSocket: UWS.us_listen_socket | null = null;
  private readonly sockets = new Set<UWS.WebSocket<UserData>>();

  constructor(private readonly gw: Gateway) {
    const u = load();
    this.app = u.App();
    this.app.ws<UserData>(WS_PATH, {
      maxPayloadLength: gw.maxFrameBytes * 4,
      maxBackpressure: 64 << 20,
      // the heartbeat: uWS pings an idle connection and closes one that stays silent (4 s resolution)
      idleTimeout: gw.heartbeatMs > 0 ? Math.max(8, Math.round(gw.heartbeatMs / 4000) * 4) : 0,
      sendPingsAutomatically: gw.heartbeatMs > 0,
      upgrade: (res, req, context) => {
        // everything from req is read now: it is valid during this callback only
        const origin = req.getHeader('origin');
        if (!gw.origins.allows(origin === '' ? undefined : origin)) {
          res.cork(() => res.writeStatus('403 Forbidden').writeHeader('content-type', 'text/plain; charset=utf-8').end(ORIGIN_REFUSED));
          return;
        }
        const resume = resumeParams(req.getQuery() ?? '');
        const remoteAddress = Buffer.from(res.getRemoteAddressAsText()).toString();
        const wait = gw.addressLimiter.refusesFor(remoteAddress);
        if (wait > 0) {
          res.cork(() => res.writeStatus('429 Too Many Requests').writeHeader('retry-after', String(Math.ceil(wait / 1000))).writeHeader('content-type', 'text/plain; charset=utf-8').end(ADDRESS_RATE_LIMITED));
          return;
        }
        res.upgrade<UserData>(
          { resume, remoteAddress },
          req.getHeader('sec-websocket-key'),
          req.getHeader('sec-websocket-protocol'),
          req.getHeader('sec-websocket-extensions'),
          context,
        );
      },
      open: (ws) => {
        this.sockets.add(ws);
        const ud = ws.getUserData();
        const queue: string[] = (ud.queue = []);
        ud.flush = () => {
          for (const text of queue) ws.send(text, false);
          queue.length = 0;
        };
        const conn = gw.connect(
          {
            send: (text) => {
              if (ud.closed) return;
              queue.push(text);
              // sends come from scheduler callbacks, outside uWS's own (corked) handlers: cork them
              if (!ud.corked) ws.cork(ud.flush!);
            },
            cork: () => {
              ud.corked = true;
            },
            uncork: () => {
              ud.corked = false;
              if (!ud.closed && queue.length > 0) ws.cork(ud.flush!);
            },
            get bufferedAmount() {
              return ud.closed ? 0 : ws.getBufferedAmount();
            },
            close: (code, reason) => {
              if (ud.closed) return;
              ud.closed = true;
              ws.end(code, reason);
            },
            remoteAddress: ud.remoteAddress,
          },
          ud.resume,
        );
        ud.conn = conn;
        conn.open();
      },
      message: (ws, message, isBinary) => {
        // the ArrayBuffer is valid during this callback only: parsing is synchronous
        ws.getUserData().conn?.onMessage(Buffer.from(message), isBinary);
      },
      drain: (ws) => {
        ws.getUserData().conn?.onDrain();
      },
      close: (ws) => {
        this.sockets.delete(ws);
        const ud = ws.getUserData();
        ud.closed = true;
        ud.conn?.onClose();
      },
    });
    this.app.any('/*', (res, req) => {
      const method = req.getMethod();
      const path = parseTarget(req.getUrl()).path;
      let aborted = false;
      res.onAborted(() => (aborted = true));
      const send = (status: number, type: string, body: string, headers?: Record<string, string>) => {
        if (aborted) return;
        res.cork(() => {
          res.writeStatus(STATUS[status] ?? String(status)).writeHeader('content-type', type);
          for (const [name, value] of Object.entries(headers ?? {})) res.writeHeader(name, value);
          res.end(method.toUpperCase() === 'HEAD' ? '' : body);
        });
      };
      gw.httpResponse(method, path).then(
        (r) => send(r.status, r.type, r.body, r.headers),
        (err: unknown) => send(500, 'text/plain; charset=utf-8', `WEFT_INTERNAL: ${(err as Error)?.message ?? String(err)}\n`),
      );
    });
  }

  listen(host: string, port: number): Promise<number> {
    const u = load();
    return new Promise((resolve, reject) => {
      this.app.listen(host, port, (token) => {
        if (!token) return reject(listenError(host, port));
        this.listenSocket = token;
        resolve(u.us_socket_local_port(token as unknown as UWS.us_socket));
      });
    });
  }

  async close(): Promise<void> {
    for (const ws of [...this.sockets]) {
      const ud = ws.getUserData();
      if (!ud.closed) {
        ud.closed = true;
        ws.close();
      }
    }
    this.sockets.clear();
    if (this.listenSocket) load().us_listen_socket_close(this.listenSocket);
    this.listenSocket = null;
  }
}

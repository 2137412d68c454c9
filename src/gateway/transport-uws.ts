/**
 * The uWebSockets.js transport (@trufflesuite/uws-js-unofficial: prebuilt binaries shipped in the
 * npm package): the same HTTP routes and WebSocket fronts (/v1/ws, /v1/realtime) on a uWS App
 * (an SSLApp with TLS).
 */
import { createRequire } from 'node:module';
import type * as UWS from '@trufflesuite/uws-js-unofficial';
import { WeftError } from '../errors.js';
import { parseProtocols } from './api-keys.js';
import type { FrontConnection, TransportSocket } from './socket-link.js';
import { bodyTooLarge, ExchangeBase, STATUS_TEXT, type HttpExchange } from './http-exchange.js';
import { parseTarget } from './http-request.js';
import type { Gateway } from './server.js';
import { listenError, readTls, type Transport } from './transport-ws.js';

interface UserData {
  connect: (sock: TransportSocket) => FrontConnection;
  remoteAddress: string;
  conn?: FrontConnection;
  closed?: boolean;
  /** Frames held while corked (the gateway delivers a step's events), sent by `flush` in one uWS cork. */
  queue?: string[];
  corked?: boolean;
  flush?: () => void;
}

const statusLine = (status: number) => `${status} ${STATUS_TEXT[status] ?? 'Error'}`;

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
    if (gw.options.tls) {
      readTls(gw.options.tls); // a file that cannot be read is a clear error, not uWS's silent failure
      this.app = u.SSLApp({ cert_file_name: gw.options.tls.certFile, key_file_name: gw.options.tls.keyFile });
    } else {
      this.app = u.App();
    }
    // every upgrade comes here: admitUpgrade answers 404 for paths other than the WebSocket fronts'
    this.app.ws<UserData>('/*', {
      maxPayloadLength: gw.maxFrameBytes * 4,
      maxBackpressure: 64 << 20,
      // the heartbeat: uWS pings an idle connection and closes one that stays silent (4 s resolution)
      idleTimeout: gw.heartbeatMs > 0 ? Math.max(8, Math.round(gw.heartbeatMs / 4000) * 4) : 0,
      sendPingsAutomatically: gw.heartbeatMs > 0,
      upgrade: (res, req, context) => {
        // everything from req is read now: it is valid during this callback only
        const origin = req.getHeader('origin');
        const authorization = req.getHeader('authorization');
        const forwarded = req.getHeader('x-forwarded-for');
        const remoteAddress = gw.clientAddress(Buffer.from(res.getRemoteAddressAsText()).toString(), forwarded === '' ? undefined : forwarded);
        const decision = gw.admitUpgrade({
          path: parseTarget(req.getUrl()).path,
          query: req.getQuery() ?? '',
          origin: origin === '' ? undefined : origin,
          authorization: authorization === '' ? undefined : authorization,
          protocols: parseProtocols(req.getHeader('sec-websocket-protocol')),
          remoteAddress,
        });
        if ('refuse' in decision) {
          const r = decision.refuse;
          res.cork(() => {
            res.writeStatus(statusLine(r.status)).writeHeader('content-type', 'text/plain; charset=utf-8');
            for (const [k, v] of Object.entries(r.headers ?? {})) res.writeHeader(k, v);
            res.end(r.body);
          });
          return;
        }
        res.upgrade<UserData>(
          { connect: decision.accept.open, remoteAddress },
          req.getHeader('sec-websocket-key'),
          decision.accept.protocol ?? '',
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
        const conn = ud.connect(
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
      gw.handleHttp(new UwsExchange(res, req, gw.maxBodyBytes, (peer, xff) => gw.clientAddress(peer, xff)));
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

/**
 * An HttpExchange over a uWS HttpResponse. Everything of the request is read in the constructor
 * (uWS's request object lives during the handler only), the body included: uWS delivers it
 * through onData, which must be attached before the handler returns.
 */
class UwsExchange extends ExchangeBase implements HttpExchange {
  readonly method: string;
  readonly path: string;
  readonly query: string;
  readonly remoteAddress: string;
  private readonly headers = new Map<string, string>();
  private started = false;
  private corked = false;
  private pending = '';
  private readonly bodyPromise: Promise<Buffer>;
  private bodyComplete = true;
  private rejectBody: ((err: Error) => void) | null = null;

  constructor(
    private readonly res: UWS.HttpResponse,
    req: UWS.HttpRequest,
    maxBody: number,
    clientAddress: (peer: string, forwardedFor: string | undefined) => string,
  ) {
    super();
    this.method = req.getMethod().toUpperCase();
    this.path = parseTarget(req.getUrl()).path;
    this.query = req.getQuery() ?? '';
    req.forEach((k, v) => this.headers.set(k.toLowerCase(), v));
    this.remoteAddress = clientAddress(Buffer.from(res.getRemoteAddressAsText()).toString(), this.headers.get('x-forwarded-for'));
    res.onAborted(() => {
      // a body still arriving never will: its reader learns it (a request holds a key's lease meanwhile)
      this.rejectBody?.(new WeftError('WEFT_CANCELLED', 'the client went away while sending its body'));
      this.gone();
    });
    this.bodyPromise = this.readBody(maxBody);
    this.bodyPromise.catch(() => undefined);
  }

  private readBody(limit: number): Promise<Buffer> {
    const declared = Number(this.headers.get('content-length') ?? 0);
    const chunked = (this.headers.get('transfer-encoding') ?? '').toLowerCase().includes('chunked');
    if (!(declared > 0) && !chunked) return Promise.resolve(Buffer.alloc(0));
    this.bodyComplete = false;
    return new Promise((resolve, reject) => {
      this.rejectBody = reject;
      if (Number.isFinite(declared) && declared > limit) {
        reject(bodyTooLarge(limit));
        this.res.onData(() => undefined);
        return;
      }
      const chunks: Buffer[] = [];
      let size = 0;
      let failed = false;
      this.res.onData((ab, isLast) => {
        if (failed) return;
        size += ab.byteLength;
        if (size > limit) {
          failed = true;
          return reject(bodyTooLarge(limit));
        }
        chunks.push(Buffer.from(ab.slice(0))); // the ArrayBuffer is reused after this callback
        if (isLast) {
          this.bodyComplete = true;
          resolve(Buffer.concat(chunks));
        }
      });
    });
  }

  header(name: string): string | undefined {
    return this.headers.get(name);
  }

  body(limit: number): Promise<Buffer> {
    void limit; // the limit was applied while reading (the constructor's)
    return this.bodyPromise;
  }

  private writeHead(status: number, headers: Record<string, string>): void {
    this.res.writeStatus(statusLine(status));
    for (const [k, v] of Object.entries(headers)) this.res.writeHeader(k, v);
  }

  respond(status: number, headers: Record<string, string>, body: string): void {
    if (this.done || this.aborted || this.started) return;
    this.done = true;
    // a body left unread (refused early) closes the connection after the answer
    this.res.cork(() => {
      this.writeHead(status, headers);
      // HEAD: no body (uWS 20 leaves a response whose reported length is not 0 unfinished, and the
      // keep-alive connection then drops the next request: the length is reported as 0)
      if (this.method === 'HEAD') this.res.endWithoutBody(0, !this.bodyComplete);
      else this.res.end(body, !this.bodyComplete);
    });
  }

  startStream(status: number, headers: Record<string, string>): void {
    if (this.done || this.aborted || this.started) return;
    this.started = true;
    this.res.cork(() => this.writeHead(status, headers));
    this.res.onWritable(() => {
      this.wroteOut();
      return true;
    });
  }

  write(chunk: string): boolean {
    if (this.done || this.aborted) return false;
    if (this.corked) {
      this.pending += chunk;
      return this.writable;
    }
    let ok = true;
    this.res.cork(() => (ok = this.res.write(chunk)));
    if (!ok) this.writable = false;
    return ok;
  }

  end(): void {
    if (this.done || this.aborted) return;
    const rest = this.pending;
    this.pending = '';
    this.corked = false;
    this.done = true;
    this.res.cork(() => this.res.end(rest));
  }

  destroy(): void {
    if (this.done || this.aborted) return;
    this.done = true;
    this.res.close();
  }

  cork(): void {
    this.corked = true;
  }

  uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    const text = this.pending;
    this.pending = '';
    if (text !== '') this.write(text);
  }
}

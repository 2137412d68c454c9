/**
 * One HTTP request and its response, as both transports (node:http and uWebSockets.js) give it to
 * the gateway: the request's head, its body read under a size limit, and a response written whole
 * or streamed (SSE) with backpressure and an abort signal when the client goes away.
 */
import { WeftError } from '../errors.js';

export interface HttpExchange {
  /** Upper case. */
  readonly method: string;
  readonly path: string;
  /** Without `?`. */
  readonly query: string;
  /** A request header (the name in lower case). */
  header(name: string): string | undefined;
  readonly remoteAddress: string;
  /**
   * The request body, at most `limit` bytes: WEFT_BODY_TOO_LARGE as soon as a Content-Length or
   * the bytes read say it is larger (the rest is not read; the connection is closed after the answer).
   */
  body(limit: number): Promise<Buffer>;
  /** Sends a whole response. */
  respond(status: number, headers: Record<string, string>, body: string): void;
  /** Starts a streamed response (chunked; SSE). */
  startStream(status: number, headers: Record<string, string>): void;
  /** Writes a chunk of a streamed response; false when the client did not take it all yet (see `writable`). */
  write(chunk: string): boolean;
  /** Ends a streamed response. */
  end(): void;
  /** Drops the connection (a client that stopped reading). */
  destroy(): void;
  /** False while written bytes wait for a slow client; `onWritable` is called when they went out. */
  readonly writable: boolean;
  onWritable(cb: () => void): void;
  /** The client went away before the response ended (called once). */
  onAbort(cb: () => void): void;
  readonly aborted: boolean;
  /** Holds writes until `uncork` (one write per scheduler step). */
  cork(): void;
  uncork(): void;
}

/** What both transports' exchanges keep the same way: writability, abort, and their callbacks. */
export abstract class ExchangeBase {
  writable = true;
  aborted = false;
  /** The response ended (or was dropped) on weft's side. */
  protected done = false;
  private readonly writableCbs: (() => void)[] = [];
  private abortCb: (() => void) | null = null;

  onWritable(cb: () => void): void {
    if (this.writable) cb();
    else this.writableCbs.push(cb);
  }

  onAbort(cb: () => void): void {
    this.abortCb = cb;
  }

  /** The transport wrote out what waited for the client. */
  protected wroteOut(): void {
    this.writable = true;
    for (const cb of this.writableCbs.splice(0)) cb();
  }

  /** The transport saw the client go away. */
  protected gone(): void {
    if (this.aborted) return;
    this.aborted = true;
    if (!this.done) this.abortCb?.();
  }
}

/** The reason phrases of the statuses weft sends. */
export const STATUS_TEXT: Record<number, string> = {
  200: 'OK',
  204: 'No Content',
  400: 'Bad Request',
  401: 'Unauthorized',
  403: 'Forbidden',
  404: 'Not Found',
  405: 'Method Not Allowed',
  413: 'Payload Too Large',
  415: 'Unsupported Media Type',
  426: 'Upgrade Required',
  429: 'Too Many Requests',
  499: 'Client Closed Request',
  500: 'Internal Server Error',
  501: 'Not Implemented',
  503: 'Service Unavailable',
  504: 'Gateway Timeout',
  507: 'Insufficient Storage',
};

export function bodyTooLarge(limit: number): WeftError {
  return new WeftError('WEFT_BODY_TOO_LARGE', `the request body is larger than ${limit} bytes (weft serve --max-body-bytes)`);
}

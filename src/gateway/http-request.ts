/**
 * What both transports read from an HTTP request, parsed without anything that can throw on
 * client input: the request target (path and query), the resume token, the Origin header.
 *
 * `new URL(target, base)` throws on targets such as `//`, `//[` or `/\`, and decodeURIComponent
 * on `%zz`; neither is used here. The path is compared as sent (no percent-decoding, no dot
 * segments resolved): a route matches only its exact spelling, anything else is a 404.
 */

export interface RequestTarget {
  /** The path as sent, without the query (`/` when the target has none). */
  path: string;
  /** The query string without `?` ('' when none). */
  query: string;
}

/** Splits a request target into path and query. Never throws. */
export function parseTarget(raw: string | undefined): RequestTarget {
  const target = typeof raw === 'string' ? raw : '/';
  const q = target.indexOf('?');
  const beforeQuery = q < 0 ? target : target.slice(0, q);
  const query = q < 0 ? '' : target.slice(q + 1);
  // the fragment is never sent by clients; drop one that is
  const hash = beforeQuery.indexOf('#');
  const path = hash < 0 ? beforeQuery : beforeQuery.slice(0, hash);
  return { path: path === '' ? '/' : path, query: query.split('#', 1)[0]! };
}

/** What a WebSocket URL asks of a resume: `?resume=TOKEN&last_seq=N&response_id=ID`. */
export interface ResumeParams {
  /** Absent or empty: a fresh session. */
  token?: string;
  /** The last delta the client got (NaN when it is not an integer: answered with an error). */
  lastSeq?: number;
  responseId?: string;
}

/**
 * The resume parameters of a query string: the first of each, decoded as form values.
 * URLSearchParams never throws: a malformed escape stays as sent.
 */
export function resumeParams(query: string): ResumeParams {
  if (query === '' || !query.includes('resume')) return {};
  const q = new URLSearchParams(query);
  const out: ResumeParams = {};
  const token = q.get('resume');
  if (token) out.token = token;
  const last = q.get('last_seq');
  if (last !== null) out.lastSeq = /^-?\d{1,10}$/.test(last) ? Number(last) : NaN;
  const id = q.get('response_id');
  if (id) out.responseId = id;
  return out;
}

/** A raw HTTP/1.1 error response for a socket that is not (yet) a WebSocket: written, then the socket ends. */
export function rawHttpError(status: 400 | 403 | 404 | 429 | 503, body: string, retryAfterS?: number): string {
  const reason = { 400: 'Bad Request', 403: 'Forbidden', 404: 'Not Found', 429: 'Too Many Requests', 503: 'Service Unavailable' }[status];
  const retry = retryAfterS === undefined ? '' : `Retry-After: ${retryAfterS}\r\n`;
  return `HTTP/1.1 ${status} ${reason}\r\nConnection: close\r\n${retry}Content-Type: text/plain; charset=utf-8\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`;
}

/** The body of a refused upgrade from a client address over its byte budget. */
export const ADDRESS_RATE_LIMITED = 'WEFT_RATE_LIMITED: this client address sends more than its byte budget (weft serve --max-bytes-per-second-per-client); retry later\n';

/** The message of a refused Origin (the origin itself is not echoed). */
export const ORIGIN_REFUSED = 'WEFT_ORIGIN_REFUSED: this origin may not open a WebSocket here (weft serve --allowed-origins)\n';

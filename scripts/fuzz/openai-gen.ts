/**
 * The OpenAI phase's requests: a body from openai-body.ts, then the request around it mutated at
 * the byte level (truncated, not UTF-8, Content-Type wrong or missing, sized to the body limit and
 * past it, chunked, a wrong method or path, a body on a GET) and how it goes out: node:http over a
 * keep-alive agent, or a raw socket where the framing is the mutation (Content-Length lies,
 * hand-made chunked bodies good and broken, pipelining, HTTP/1.0, Expect: 100-continue); and how
 * the client reads the answer (to its end, after a stall, or not at all: it drops the connection).
 * A pure function of (seed, transport, index, body limit, model).
 */
import { HOST } from './http-gen.js';
import { Obj, ser, type J } from './json.js';
import { baseBody, mutateBody, type Route } from './openai-body.js';
import { Rng, seedOf } from './rng.js';

export interface OpenAIItem {
  index: number;
  method: string;
  target: string;
  /** Headers besides Host, Content-Length and Transfer-Encoding (which the sender writes, unless raw). */
  headers: [string, string][];
  /** The body the server reads as this request's (what the oracle judges); empty: none. */
  body: Buffer;
  /** agent: node:http with a keep-alive agent; raw: `raw` written to a fresh socket. */
  via: 'agent' | 'raw';
  /** agent: the body goes chunked, in pieces of these sizes; raw: the request is written in pieces of these sizes (then the rest). */
  pieces?: number[];
  /** raw: the whole request (HOST stands for the server's address). */
  raw?: Buffer;
  /**
   * exact: the bytes are this request; short: fewer body bytes than promised (the server may wait
   * for them: the client gives up and closes); extra: bytes follow the request (this request's
   * answer comes first); broken: framing a parser may refuse (any status line, or a close);
   * pipelined: a GET /v1/models follows in the same write (its answer must follow this one's).
   */
  framing: 'exact' | 'short' | 'extra' | 'broken' | 'pipelined';
  /**
   * Why an HTTP parser may refuse the request though it is HTTP/1.1 (uWebSockets.js takes no chunk
   * extensions and no HTTP/1.0 body, Node's parser no lower-case method): no answer, a close or
   * the transport's own (non-JSON) answer are all right; a JSON answer is checked.
   */
  mayRefuse?: string;
  /** How the answer is read: to its end; after a pause; or the connection dropped after the status line (abort) or at once (drop). */
  reader: 'read' | 'stall' | 'abort' | 'drop';
  stallMs: number;
  /** A 200 stream is sent again whole: the texts must be the same (greedy, or a seed). */
  twin?: boolean;
  label: string;
  log: string[];
}

export interface OpenAIGenOptions {
  /** The server's body limit (--max-body-bytes). */
  limit: number;
  /** The served model's id. */
  model: string;
}

export const ROUTE_PATH: Record<Route, string> = { chat: '/v1/chat/completions', text: '/v1/completions' };
const BAD_UTF8 = [[0xff], [0xc0, 0x80], [0x80], [0xe2, 0x82], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xfe, 0xfe], [0xc3]];
const CONTENT_TYPES: (string | null)[] = [null, null, null, 'text/plain', 'application/x-www-form-urlencoded', 'application/json; charset=utf-8', 'APPLICATION/JSON', 'application/json;charset=latin1', 'application/jsonp', 'application/json, text/plain', '', 'multipart/form-data; boundary=x', 'text/json', ' application/json ', 'application/vnd.api+json', 'application/json\u00ff'];
const OTHER_PATHS = (route: Route, model: string) => [ROUTE_PATH[route] + '/', ROUTE_PATH[route] + '?x=1', ROUTE_PATH[route] + '//', '/v1/Chat/Completions', '/v1/embeddings', '/v1/chat', '/v1/', '/v1/models', `/v1/models/${model}`, '/v1/models/nope', '/v1/models/%zz', '/v1/models/' + encodeURIComponent('a/b'), '/v1/completions/x', '/v1/responses'];
const MODEL_PATHS = (model: string) => ['/v1/models', '/v1/models', `/v1/models/${model}`, `/v1/models/${model}`, '/v1/models/nope', `/v1/models/${model}/`, '/v1/models/', '/v1/models?x=1', `/v1/models/${model.toUpperCase()}`];

/** The items of a run (each from its own seed: `openaiItem` makes one again from its index). */
export function genOpenAI(seed: number, transport: string, n: number, g: OpenAIGenOptions): OpenAIItem[] {
  return Array.from({ length: n }, (_, i) => openaiItem(seed, transport, i, g));
}

export function openaiItem(seed: number, transport: string, index: number, g: OpenAIGenOptions): OpenAIItem {
  const r = new Rng(seedOf(seed, transport, 'openai', index));
  const log: string[] = [];
  const headers: [string, string][] = [];
  if (r.chance(0.08)) {
    // the model routes, read plainly or with a body
    const method = r.chance(0.8) ? 'GET' : 'HEAD';
    const target = r.pick(MODEL_PATHS(g.model));
    const body = r.chance(0.2) ? Buffer.from(`{"model":${JSON.stringify(g.model)}}`) : Buffer.alloc(0);
    if (body.length) headers.push(['Content-Type', 'application/json']);
    const item: OpenAIItem = { index, method, target, headers, body, via: 'agent', framing: 'exact', reader: 'read', stallMs: 0, label: `${method} ${target}${body.length ? ' with a body' : ''}`, log };
    return r.chance(0.3) ? toRaw(r, item, 'pipelined') : item;
  }
  const route: Route = r.chance(0.55) ? 'chat' : 'text';
  let root: J = baseBody(r, route, g.model);
  const nMut = r.weighted([[30, 0], [40, 1], [20, 2], [10, 3]] as const);
  for (let i = 0; i < nMut && root instanceof Obj; i++) root = mutateBody(r, route, root, g.model, g.limit, log);
  const stream = root instanceof Obj && root.get('stream') === true;
  const reader = r.weighted<OpenAIItem['reader']>(stream ? [[80, 'read'], [8, 'stall'], [7, 'abort'], [5, 'drop']] : [[94, 'read'], [6, 'drop']]);
  if (reader === 'abort' && root instanceof Obj && r.chance(0.5)) {
    // a long answer the client walks away from: the server must stop it
    root.set('max_tokens', 400).set('ignore_eos', true);
    root.entries = root.entries.filter(([k]) => k !== 'max_completion_tokens');
    log.push('max_tokens 400, ignore_eos: a long answer the client drops');
  }
  if (reader !== 'read') log.push(`reader: ${reader}`);
  let body: Buffer = Buffer.from(ser(root), 'utf8');
  let method = 'POST';
  let target = ROUTE_PATH[route];
  let contentType: string | null = 'application/json';
  let pieces: number[] | undefined;
  let rawFraming = false;
  const byteOp = r.weighted([[46, 'none'], [6, 'truncate'], [5, 'utf8'], [10, 'content-type'], [5, 'size'], [6, 'method'], [5, 'path'], [3, 'get-body'], [5, 'chunked'], [9, 'raw']] as const);
  switch (byteOp) {
    case 'truncate': {
      const at = r.int(0, Math.max(0, body.length - 1));
      body = body.subarray(0, at);
      log.push(`body truncated at byte ${at}`);
      break;
    }
    case 'utf8': {
      const bad = Buffer.from(r.pick(BAD_UTF8));
      // inside a string (after a quote) or anywhere
      const anywhere = r.int(0, body.length);
      const quote = body.indexOf(0x22, anywhere);
      const at = quote >= 0 && r.chance(0.7) ? quote + 1 : anywhere;
      body = Buffer.concat([body.subarray(0, at), bad, body.subarray(at)]);
      log.push(`bytes ${bad.toString('hex')} (not UTF-8) at byte ${at}`);
      break;
    }
    case 'content-type':
      contentType = r.pick(CONTENT_TYPES);
      log.push(`Content-Type: ${contentType === null ? 'none' : JSON.stringify(contentType)}`);
      if (r.chance(0.1)) {
        headers.push(['Content-Type', 'text/plain']);
        log.push('and a second Content-Type: text/plain');
      }
      break;
    case 'size': {
      const size = r.pick([g.limit - 1, g.limit, g.limit, g.limit + 1, g.limit + 1, Math.floor(g.limit * 1.5)]);
      body = padTo(r, body, size, log);
      break;
    }
    case 'method':
      method = r.pick(['GET', 'PUT', 'DELETE', 'PATCH', 'OPTIONS', 'HEAD', 'post']);
      log.push(`method ${method}`);
      break;
    case 'path':
      target = r.pick(OTHER_PATHS(route, g.model));
      log.push(`target ${target}`);
      break;
    case 'get-body':
      method = r.pick(['GET', 'HEAD']);
      target = r.pick(['/v1/models', `/v1/models/${g.model}`]);
      log.push(`${method} ${target} with this body`);
      break;
    case 'chunked': {
      pieces = [];
      for (let left = body.length; left > 0; ) {
        const n = Math.min(left, r.pick([1, 7, 100, 4096, 65536]));
        pieces.push(n);
        left -= n;
      }
      log.push(`chunked, ${pieces.length} piece(s)`);
      break;
    }
    case 'raw':
      rawFraming = true;
      break;
  }
  if (contentType !== null) headers.unshift(['Content-Type', contentType]);
  if (r.chance(0.05)) headers.push(['Authorization', r.pick(['Bearer ', 'Bearer sk-x', 'Basic x', 'x'.repeat(300)])]);
  if (r.chance(0.05)) headers.push(['Accept', r.pick(['text/event-stream', 'application/xml', '*/*'])]);
  const label = `${method} ${target} (${route}${log.length ? `: ${log[0]!.slice(0, 60)}` : ''}${log.length > 1 ? ` +${log.length - 1}` : ''})`;
  const item: OpenAIItem = { index, method, target, headers, body, via: 'agent', pieces, framing: 'exact', reader, stallMs: reader === 'stall' ? r.pick([300, 800, 1500]) : 0, twin: stream && r.chance(0.25), label, log };
  return rawFraming ? toRaw(r, item, r.pick(['cl-short', 'cl-long', 'chunked', 'chunked', 'chunked-broken', 'pipelined', 'http10', 'expect', 'te-and-cl', 'split'] as const)) : item;
}

/** The body grown to exactly `size` bytes: a padding field or trailing whitespace (both leave the JSON as it was). */
function padTo(r: Rng, body: Buffer, size: number, log: string[]): Buffer {
  const need = size - body.length;
  if (need <= 0) return body;
  const text = body.toString('latin1');
  const brace = text.indexOf('{');
  if (brace >= 0 && need > 20 && r.chance(0.6)) {
    const empty = /^\s*}/.test(text.slice(brace + 1));
    const head = `"x_pad":"`;
    const tail = empty ? '"' : '",';
    log.push(`a padding field: ${size} bytes in all`);
    return Buffer.concat([body.subarray(0, brace + 1), Buffer.from(head + 'a'.repeat(need - head.length - tail.length) + tail), body.subarray(brace + 1)]);
  }
  log.push(`trailing whitespace: ${size} bytes in all`);
  return Buffer.concat([body, Buffer.alloc(need, r.pick([0x20, 0x0a, 0x09]))]);
}

type RawKind = 'cl-short' | 'cl-long' | 'chunked' | 'chunked-broken' | 'pipelined' | 'http10' | 'expect' | 'te-and-cl' | 'split';

/** The item sent over a raw socket, its framing made by hand. */
function toRaw(r: Rng, it: OpenAIItem, kind: RawKind): OpenAIItem {
  const head = (version = 'HTTP/1.1', extra: string[] = []) => Buffer.from([`${it.method} ${it.target} ${version}`, `Host: ${HOST}`, ...it.headers.map(([k, v]) => `${k}: ${v}`), ...extra, '', ''].join('\r\n'), 'latin1');
  const cl = (n: number) => `Content-Length: ${n}`;
  const withBody = (extra: string[] = []) => Buffer.concat([head('HTTP/1.1', it.body.length || it.method === 'POST' ? [cl(it.body.length), ...extra] : extra), it.body]);
  const out: OpenAIItem = { ...it, via: 'raw', pieces: undefined, label: `${it.label} [raw ${kind}]`, log: [...it.log, `raw: ${kind}`] };
  switch (kind) {
    case 'cl-short': {
      const more = r.pick([1, 10, 1000]);
      out.raw = Buffer.concat([head('HTTP/1.1', [cl(it.body.length + more)]), it.body]);
      out.framing = 'short';
      out.log.push(`Content-Length ${more} more than the body`);
      break;
    }
    case 'cl-long': {
      const n = r.int(0, Math.max(0, it.body.length - 1));
      out.raw = Buffer.concat([head('HTTP/1.1', [cl(n)]), it.body]);
      out.body = it.body.subarray(0, n);
      out.framing = 'extra';
      out.log.push(`Content-Length ${n} of a ${it.body.length}-byte body`);
      break;
    }
    case 'chunked': {
      const parts: Buffer[] = [head('HTTP/1.1', ['Transfer-Encoding: chunked'])];
      for (let at = 0; at < it.body.length; ) {
        const n = Math.min(it.body.length - at, r.pick([1, 5, 100, 9000]));
        const size = r.chance(0.2) ? n.toString(16).toUpperCase().padStart(4, '0') : n.toString(16);
        const ext = r.chance(0.05) ? ';ext=1' : '';
        if (ext) out.mayRefuse = 'a chunk extension';
        parts.push(Buffer.from(`${size}${ext}\r\n`), it.body.subarray(at, at + n), Buffer.from('\r\n'));
        at += n;
      }
      parts.push(Buffer.from(r.chance(0.2) ? '0\r\nX-Trailer: 1\r\n\r\n' : '0\r\n\r\n'));
      out.raw = Buffer.concat(parts);
      break;
    }
    case 'chunked-broken': {
      const how = r.pick(['zz\r\n', 'ffffffffffffffffff\r\n', '-1\r\n', `${(it.body.length + 5).toString(16)}\r\n`, `${it.body.length.toString(16)}\r\n`]);
      out.raw = Buffer.concat([head('HTTP/1.1', ['Transfer-Encoding: chunked']), Buffer.from(how), it.body, Buffer.from('\r\n')]);
      out.framing = 'broken';
      out.log.push(`chunked framing ${JSON.stringify(how)} (no last chunk)`);
      break;
    }
    case 'pipelined':
      out.raw = Buffer.concat([withBody(), Buffer.from(`GET /v1/models HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`)]);
      out.framing = 'pipelined';
      break;
    case 'http10':
      out.raw = Buffer.concat([head('HTTP/1.0', [cl(it.body.length)]), it.body]);
      out.mayRefuse = 'HTTP/1.0';
      break;
    case 'expect':
      out.raw = withBody(['Expect: 100-continue']);
      break;
    case 'te-and-cl':
      out.raw = Buffer.concat([head('HTTP/1.1', ['Transfer-Encoding: chunked', cl(it.body.length)]), it.body]);
      out.framing = 'broken';
      break;
    case 'split':
      out.raw = withBody();
      out.pieces = [r.int(1, 40), r.int(1, 400)];
      out.log.push('written in pieces');
      break;
  }
  if (it.method !== it.method.toUpperCase()) out.mayRefuse = 'a lower-case method';
  return out;
}

/**
 * The HTTP requests: mutated HTTP/1.1 requests (odd targets, methods, versions, headers,
 * WebSocket upgrades with bad keys or origins, truncated and pipelined requests, raw WebSocket
 * frames after an upgrade), a pure function of (seed, transport).
 */
import { Rng, seedOf } from './rng.js';

export interface HttpItem {
  index: number;
  /** The request bytes; HOST stands for 127.0.0.1:PORT. */
  data: Buffer;
  /** Write in pieces at these offsets (with small pauses). */
  splits: number[];
  /** Write only this many bytes, then close (no answer expected). */
  truncateAt?: number;
  closeWith: 'end' | 'destroy';
  /** 'answer': a status line or a close is due; 'maybe': the server may wait for more bytes. */
  expect: 'answer' | 'maybe';
  /** Raw WebSocket frames to write after a 101. */
  wsFrames?: Buffer[];
  /** The request target as written. */
  target: string;
  /** A well-formed HTTP/1.1 request head (plainRequest): every HTTP parser must answer it. */
  plain: boolean;
  label: string;
  log: string[];
}

/** Stands for 127.0.0.1:PORT in a request (the port is known only once the server runs). */
export const HOST = '\u0000HOST\u0000';
const TARGETS = ['/healthz', '/healthz', '/readyz', '/metrics', '/v1/ws', '/', '//', '//[', '/\\', '\\', '/%zz', '/%', '/%00', '/%2e%2e/', '/..', '/../../etc/passwd', '/v1/ws?resume=%', '/v1/ws?resume=%zz', '/v1/ws?resume=__proto__', '/v1/ws?resume=constructor', '/healthz?', '/healthz?a=b&a=c', '/healthz#x', '///', '//x', '//@', '//:', '/:', ':', '//[::1]', '//[::1', '//x:99999/', 'http://x/', 'http://x/healthz', 'http://[::1]:1/healthz', 'http://', 'http:', 'https://x/v1/ws', 'ws://x/v1/ws', '*', '', '?', '#', '/healthz/', '/HEALTHZ', '/v1/ws/', '/v1/WS', '/v1/ws/../v1/ws', '/\u00e9', '/\u00ff', '/a b', '/\t', '/%F0%9F%92%A5', '/?resume=%'];
const METHODS = ['GET', 'GET', 'GET', 'GET', 'HEAD', 'POST', 'OPTIONS', 'PUT', 'DELETE', 'PATCH', 'CONNECT', 'TRACE', 'PRI', 'get', 'G\u0000T', 'G\u00c9T', '', 'X'.repeat(1000), 'GET GET', '\u0016\u0003\u0001'];
const VERSIONS = ['HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.1', 'HTTP/1.0', 'HTTP/2.0', 'HTTP/0.9', 'HTTP/1.2', 'http/1.1', 'HTTP/11', 'HTTP/1.1 x', ''];

function wsKey(r: Rng): string {
  return r.bytes(16).toString('base64');
}

/** One raw WebSocket frame from the client: masked unless `unmasked`. */
function wsFrame(opts: { fin?: boolean; rsv?: number; opcode: number; payload: Buffer; unmasked?: boolean; lengthOverride?: bigint }): Buffer {
  const { fin = true, rsv = 0, opcode, payload, unmasked = false } = opts;
  const head: number[] = [(fin ? 0x80 : 0) | (rsv << 4) | (opcode & 0x0f)];
  const len = opts.lengthOverride ?? BigInt(payload.length);
  const mask = unmasked ? 0 : 0x80;
  const ext: Buffer[] = [];
  if (len < 126n) head.push(mask | Number(len));
  else if (len < 65536n) {
    head.push(mask | 126);
    const b = Buffer.alloc(2);
    b.writeUInt16BE(Number(len));
    ext.push(b);
  } else {
    head.push(mask | 127);
    const b = Buffer.alloc(8);
    b.writeBigUInt64BE(len);
    ext.push(b);
  }
  if (unmasked) return Buffer.concat([Buffer.from(head), ...ext, payload]);
  const key = Buffer.from([0x12, 0x34, 0x56, 0x78]);
  const body = Buffer.from(payload.map((x, i) => x ^ key[i % 4]!));
  return Buffer.concat([Buffer.from(head), ...ext, key, body]);
}

function rawWsFrames(r: Rng, log: string[]): Buffer[] {
  const text = Buffer.from('{"type":"response.cancel","event_id":"raw"}');
  const cases: [string, () => Buffer[]][] = [
    ['a valid masked text frame', () => [wsFrame({ opcode: 1, payload: text })]],
    ['an unmasked text frame', () => [wsFrame({ opcode: 1, payload: text, unmasked: true })]],
    ['RSV bits set', () => [wsFrame({ opcode: 1, payload: text, rsv: r.int(1, 7) })]],
    ['a reserved opcode', () => [wsFrame({ opcode: r.pick([3, 4, 5, 6, 7, 11, 12, 13, 14, 15]), payload: text })]],
    ['a ping of 126 bytes', () => [wsFrame({ opcode: 9, payload: Buffer.alloc(126, 1) })]],
    ['a fragmented ping', () => [wsFrame({ opcode: 9, payload: Buffer.from('x'), fin: false })]],
    ['a continuation without a start', () => [wsFrame({ opcode: 0, payload: text })]],
    ['a new message inside a fragmented one', () => [wsFrame({ opcode: 1, payload: text.subarray(0, 5), fin: false }), wsFrame({ opcode: 2, payload: text })]],
    ['a 64-bit length with the top bit set', () => [wsFrame({ opcode: 1, payload: Buffer.alloc(0), lengthOverride: 1n << 63n })]],
    ['a length of 2^40 and few bytes', () => [wsFrame({ opcode: 1, payload: Buffer.alloc(0), lengthOverride: 1n << 40n }), Buffer.alloc(100)]],
    ['a non-minimal 64-bit length', () => [Buffer.concat([Buffer.from([0x81, 0xff, 0, 0, 0, 0, 0, 0, 0, 5, 1, 2, 3, 4]), Buffer.from('hello')])]],
    ['a close with code 999', () => [wsFrame({ opcode: 8, payload: Buffer.from([0x03, 0xe7]) })]],
    ['a close with code 1005', () => [wsFrame({ opcode: 8, payload: Buffer.from([0x03, 0xed]) })]],
    ['a close with code 5000', () => [wsFrame({ opcode: 8, payload: Buffer.from([0x13, 0x88]) })]],
    ['a close with one byte', () => [wsFrame({ opcode: 8, payload: Buffer.from([0x03]) })]],
    ['a close with an invalid UTF-8 reason', () => [wsFrame({ opcode: 8, payload: Buffer.from([0x03, 0xe8, 0xff, 0xfe]) })]],
    ['100 pings', () => Array.from({ length: 100 }, () => wsFrame({ opcode: 9, payload: Buffer.from('p') }))],
    ['garbage bytes', () => [r.bytes(r.int(1, 200))]],
    ['an empty masked text frame', () => [wsFrame({ opcode: 1, payload: Buffer.alloc(0) })]],
    ['a compressed frame (RSV1) without the extension', () => [wsFrame({ opcode: 1, payload: Buffer.from([0xf2, 0x48, 0xcd]), rsv: 4 })]],
  ];
  const [name, make] = r.pick(cases);
  log.push(`then raw WebSocket: ${name}`);
  return make();
}

/** The HTTP requests of a run: a pure function of (seed, transport). */
export function genHttp(seed: number, transport: string, n: number): HttpItem[] {
  const r = new Rng(seedOf(seed, transport, 'http'));
  const out: HttpItem[] = [];
  for (let index = 0; index < n; index++) {
    const log: string[] = [];
    if (r.chance(0.1)) {
      // a clean upgrade, then raw WebSocket frames
      const wsFrames = rawWsFrames(r, log);
      const text = `GET /v1/ws HTTP/1.1\r\nHost: ${HOST}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: ${wsKey(r)}\r\nSec-WebSocket-Version: 13\r\n\r\n`;
      const label = '"GET" "/v1/ws" upgrade + raw frames';
      out.push({ index, data: Buffer.from(text, 'latin1'), splits: [], closeWith: 'destroy', expect: 'answer', wsFrames, target: '/v1/ws', plain: true, label, log: [label, ...log] });
      continue;
    }
    const upgrade = r.chance(0.25);
    let method = r.chance(0.75) || upgrade ? 'GET' : r.pick(METHODS);
    let target = r.chance(0.4) ? r.pick(TARGETS) : r.pick(['/healthz', '/v1/ws', '/metrics', '/nope']);
    if (upgrade && r.chance(0.6)) target = r.pick(['/v1/ws', '/v1/ws', '/v1/ws?resume=%', '/v1/ws?resume=x', '//', '//[', '/%zz', 'http://x/v1/ws', '/v1/ws/', '*']);
    if (r.chance(0.05)) target = r.pick(['/', 'a', '/?']).repeat(r.pick([8000, 70_000]));
    if (r.chance(0.04)) method = r.pick(METHODS);
    const version = r.chance(0.85) ? 'HTTP/1.1' : r.pick(VERSIONS);
    const eol = r.chance(0.93) ? '\r\n' : r.pick(['\n', '\r', '\r\r\n']);
    const headers: string[] = [];
    const hostMode = r.weighted([[80, 'one'], [6, 'none'], [6, 'two'], [4, 'empty'], [4, 'odd']] as const);
    if (hostMode === 'one') headers.push(`Host: ${HOST}`);
    else if (hostMode === 'two') headers.push(`Host: ${HOST}`, `Host: ${r.pick(['x', 'evil.example', HOST])}`);
    else if (hostMode === 'empty') headers.push('Host:');
    else if (hostMode === 'odd') headers.push(`Host: ${r.pick(['[', '[::1', 'a b', 'x'.repeat(10_000), '\u00ff', ':0', '127.0.0.1:99999', '\u0000'])}`);
    if (hostMode !== 'one') log.push(`host: ${hostMode}`);
    let body = '';
    let mayWait = eol !== '\r\n' || !version.startsWith('HTTP/1.');
    let wsFrames: Buffer[] | undefined;
    if (upgrade) {
      const key = r.weighted<string | null>([[70, wsKey(r)], [6, null], [6, ''], [6, 'x'], [4, 'not base64 !!'], [4, 'AAAAAAAAAAAAAAAAAAAAAAAA'], [4, 'A'.repeat(5000)]]);
      const ver = r.weighted<string | null>([[80, '13'], [5, null], [5, '8'], [4, 'abc'], [3, '13, 8'], [3, '99999999999']]);
      headers.push(r.pick(['Connection: Upgrade', 'Connection: upgrade', 'Connection: keep-alive, Upgrade', 'Connection: close']));
      headers.push(r.pick(['Upgrade: websocket', 'Upgrade: websocket', 'Upgrade: WebSocket', 'Upgrade: h2c', 'Upgrade: websocket, h2c', 'Upgrade:']));
      if (key !== null) headers.push(`Sec-WebSocket-Key: ${key}`);
      if (ver !== null) headers.push(`Sec-WebSocket-Version: ${ver}`);
      if (r.chance(0.3)) headers.push(`Origin: ${r.pick(['null', 'http://evil.example', 'file://', 'x'.repeat(3000), '\u00ff\u00fe', ''])}`);
      if (r.chance(0.15)) headers.push(`Sec-WebSocket-Extensions: ${r.pick(['permessage-deflate; client_max_window_bits', 'permessage-deflate; server_max_window_bits=7', 'permessage-deflate; client_max_window_bits=abc', 'x-unknown', ';;;', 'permessage-deflate, permessage-deflate'])}`);
      if (r.chance(0.15)) headers.push(`Sec-WebSocket-Protocol: ${r.pick(['a,b', ',', 'v1, v1', '\u00ff', 'x'.repeat(2000)])}`);
      log.push(`upgrade: key ${key === null ? 'missing' : JSON.stringify(key.slice(0, 30))}, version ${ver ?? 'missing'}`);
      if (r.chance(0.4)) wsFrames = rawWsFrames(r, log);
    }
    // odd headers
    const nOdd = r.weighted([[60, 0], [25, 1], [10, 2], [5, 3]] as const);
    for (let i = 0; i < nOdd; i++) {
      const h = r.int(0, 17);
      switch (h) {
        case 0:
          headers.push(`X-Long: ${'v'.repeat(r.pick([8000, 20_000, 100_000]))}`);
          log.push('a long header');
          break;
        case 1:
          for (let k = 0; k < r.pick([100, 2500]); k++) headers.push(`X-H${k}: ${k}`);
          log.push('many headers');
          break;
        case 2:
          headers.push('NoColonHere');
          log.push('a header without a colon');
          break;
        case 3:
          headers.push(' Leading-Space: x');
          log.push('a header with a leading space (obs-fold)');
          break;
        case 4:
          headers.push('Bad Name: x');
          log.push('a header name with a space');
          break;
        case 5:
          headers.push(': empty-name');
          log.push('an empty header name');
          break;
        case 6:
          headers.push(`X-Nul: a\u0000b`);
          log.push('a NUL in a header');
          break;
        case 7:
          headers.push(`X-Bytes: \u00ff\u00fe\u0080`);
          log.push('non-ASCII header bytes');
          break;
        case 8: {
          const cl = r.pick(['-1', 'abc', '99999999999999999999', '1, 2', '0x10', ' 5', '5']);
          headers.push(`Content-Length: ${cl}`);
          if (cl === '5' && r.chance(0.5)) body = 'hello';
          else if (/^\s*\d+$/.test(cl) && Number(cl) > 0) mayWait = true;
          log.push(`Content-Length: ${cl}${body ? ' with a body' : ''}`);
          break;
        }
        case 9:
          headers.push('Content-Length: 3', 'Content-Length: 4');
          body = 'abc';
          log.push('two Content-Lengths');
          break;
        case 10: {
          headers.push('Transfer-Encoding: chunked');
          body = r.pick(['0\r\n\r\n', '5\r\nhello\r\n0\r\n\r\n', 'zz\r\n', 'ffffffffffffffffff\r\n', '-1\r\n', '']);
          if (!body.endsWith('0\r\n\r\n')) mayWait = true;
          log.push(`chunked body ${JSON.stringify(body)}`);
          break;
        }
        case 11:
          headers.push('Transfer-Encoding: chunked', 'Content-Length: 5');
          body = '0\r\n\r\n';
          log.push('Transfer-Encoding and Content-Length');
          break;
        case 12:
          headers.push(`Transfer-Encoding: ${r.pick(['chunked, identity', 'gzip', 'identity', 'xchunked', 'chunked\u0000'])}`);
          mayWait = true;
          log.push('an odd Transfer-Encoding');
          break;
        case 13:
          headers.push('Expect: 100-continue');
          log.push('Expect: 100-continue');
          break;
        case 14:
          headers.push(`Connection: ${r.pick(['close', 'keep-alive', 'Upgrade', 'x, y, z', ''])}`);
          log.push('an odd Connection');
          break;
        case 15:
          headers.push(`Origin: ${r.pick(['null', 'http://evil.example', '\u00ff'])}`);
          log.push('an Origin');
          break;
        case 16:
          headers.push(`X-Obs: a`, ` folded`);
          log.push('an obs-fold continuation');
          break;
        default:
          headers.push(`Cookie: ${'a=b; '.repeat(2000)}`);
          log.push('a long cookie');
          break;
      }
    }
    r.shuffle(headers);
    const line = version ? `${method} ${target} ${version}` : `${method} ${target}`;
    let text = line + eol + headers.map((h) => h + eol).join('') + eol + body;
    let label = `${JSON.stringify(method.slice(0, 12))} ${JSON.stringify(target.slice(0, 24))}${target.length > 24 ? `(${target.length})` : ''}${upgrade ? ' upgrade' : ''}`;
    if (r.chance(0.05)) {
      text += `GET /healthz HTTP/1.1\r\nHost: ${HOST}\r\n\r\n`;
      log.push('then a pipelined GET /healthz');
    }
    const data = Buffer.from(text, 'latin1');
    let truncateAt: number | undefined;
    if (r.chance(0.12)) {
      truncateAt = r.int(0, Math.max(0, data.length - 1));
      log.push(`truncated at byte ${truncateAt}`);
      label += ' truncated';
    }
    const splits: number[] = [];
    if (r.chance(0.2)) {
      for (let k = r.int(1, 3); k > 0; k--) splits.push(r.int(1, Math.max(1, data.length - 1)));
      splits.sort((a, b) => a - b);
      log.push(`written in ${splits.length + 1} pieces`);
    }
    out.push({ index, data, splits, truncateAt, closeWith: r.chance(0.5) ? 'end' : 'destroy', expect: mayWait ? 'maybe' : 'answer', wsFrames, target, plain: plainRequest(text), label, log: [label, ...log] });
  }
  return out;
}

const TOKEN = /^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$/;

/**
 * Whether a request's head is well-formed HTTP/1.1 with nothing a strict parser may refuse: an
 * ordinary method, an origin-form target of visible ASCII, CRLF lines, at most 40 headers with
 * token names and visible values (no obs-fold), one Host, at most one Content-Length (digits) and
 * no Transfer-Encoding but `chunked` (without a Content-Length).
 */
export function plainRequest(text: string): boolean {
  const end = text.indexOf('\r\n\r\n');
  if (end < 0) return false;
  const [line, ...headers] = text.slice(0, end).split(HOST).join('127.0.0.1').split('\r\n');
  if (!/^(GET|HEAD|POST|PUT|DELETE|PATCH|OPTIONS|TRACE) \/[\x21-\x7e]* HTTP\/1\.1$/.test(line!) || headers.length > 40) return false;
  const count: Record<string, number> = {};
  for (const h of headers) {
    const colon = h.indexOf(':');
    const name = h.slice(0, colon).toLowerCase();
    if (colon <= 0 || !TOKEN.test(name) || !/^[ \t]*[\x20-\x7e]*$/.test(h.slice(colon + 1))) return false;
    count[name] = (count[name] ?? 0) + 1;
    if (name === 'content-length' && !/^\s*\d{1,15}\s*$/.test(h.slice(colon + 1))) return false;
    if (name === 'transfer-encoding' && h.slice(colon + 1).trim() !== 'chunked') return false;
  }
  return count['host'] === 1 && (count['content-length'] ?? 0) <= 1 && (count['transfer-encoding'] ?? 0) <= (count['content-length'] ? 0 : 1);
}

/** The request with HOST replaced by the server's address. */
export function withHost(data: Buffer, port: number): Buffer {
  const h = Buffer.from(HOST, 'latin1');
  const real = Buffer.from(`127.0.0.1:${port}`, 'latin1');
  const parts: Buffer[] = [];
  let from = 0;
  for (let i = data.indexOf(h); i >= 0; i = data.indexOf(h, from)) {
    parts.push(data.subarray(from, i), real);
    from = i + h.length;
  }
  parts.push(data.subarray(from));
  return Buffer.concat(parts);
}

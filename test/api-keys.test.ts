/**
 * API keys (src/gateway/api-keys.ts): the keys file, constant-time matching, budgets, and the key
 * at the WebSocket handshake of protocol v1 (refused with HTTP 401/429 before any WebSocket
 * exists), over both transports: the subprotocol entry browsers use, the budget in
 * session.created, an answer ended by a spent budget, resume tokens bound to their key, fair
 * share between keys through the gateway, and metrics labelled by key name only.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import WebSocket from 'ws';
import { Engine } from '../src/engine/engine.js';
import { ApiKeys, Tenant, chooseProtocol, parseProtocols, presentedKey } from '../src/gateway/api-keys.js';
import { Gateway } from '../src/gateway/server.js';
import { WeftClient } from '../src/client/node.js';
import { Client, type Ev } from './helpers/ws-client.js';

let engine: Engine;
beforeAll(async () => {
  engine = await Engine.load(join(import.meta.dirname, '..', 'models', 'default'), { threads: 2, contexts: 1, kvMemoryBytes: 64 << 20 });
});
afterAll(() => engine.dispose());

describe('the keys file', () => {
  test('parses keys and hashes; every mistake is WEFT_BAD_ARGUMENT naming the entry', () => {
    const hash = '9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08'; // sha256("test")
    const keys = new ApiKeys({ keys: [{ name: 'a', key: 'sk-aaaaaaaa', max_concurrent: 2, tokens_per_minute: 100, max_tokens: 10, weight: 3 }, { name: 'b', sha256: hash }], metrics_key: 'metrics-123' });
    expect(keys.authenticate('sk-aaaaaaaa')?.name).toBe('a');
    expect(keys.authenticate('test')?.name).toBe('b');
    expect(keys.authenticate('sk-aaaaaaab')).toBeNull();
    expect(keys.authenticate('')).toBeNull();
    expect(keys.authenticate(undefined)).toBeNull();
    expect(keys.allowsMetrics('metrics-123')).toBe(true);
    expect(keys.allowsMetrics('test')).toBe(true);
    expect(keys.allowsMetrics('nope-nope')).toBe(false);
    expect(keys.tenants[0]!.limits).toEqual({ maxConcurrent: 2, tokensPerMinute: 100, maxTokens: 10, weight: 3 });
    const cases: [unknown, RegExp][] = [
      [{}, /"keys" must be a non-empty array/],
      [{ keys: [], extra: 1 }, /unknown field "extra"/],
      [{ keys: [{ name: 'a' }] }, /keys\[0\] needs exactly one of "key" or "sha256"/],
      [{ keys: [{ name: 'a', key: 'short' }] }, /keys\[0\]\.key must be at least 8/],
      [{ keys: [{ name: 'a', sha256: 'xyz' }] }, /keys\[0\]\.sha256 must be 64 hex/],
      [{ keys: [{ name: 'a', key: 'sk-aaaaaaaa' }, { name: 'a', key: 'sk-bbbbbbbb' }] }, /keys\[1\]\.name "a" is used twice/],
      [{ keys: [{ name: 'a', key: 'sk-aaaaaaaa' }, { name: 'b', key: 'sk-aaaaaaaa' }] }, /keys\[1\]: the same key is listed twice/],
      [{ keys: [{ name: 'a', key: 'sk-aaaaaaaa', weight: 0 }] }, /weight must be a number in \(0, 1000\]/],
      [{ keys: [{ name: 'a', key: 'sk-aaaaaaaa', tokens_per_minute: 1.5 }] }, /tokens_per_minute must be an integer >= 1/],
      [{ keys: [{ name: 'a b', key: 'sk-aaaaaaaa' }] }, /keys\[0\]\.name must be/],
      [{ keys: [{ name: 'a', key: 'sk-aaaaaaaa', frob: 1 }] }, /keys\[0\]: unknown field "frob"/],
    ];
    for (const [json, re] of cases) {
      let err: unknown;
      try {
        new ApiKeys(json, 'keys.json');
      } catch (e) {
        err = e;
      }
      expect(err, JSON.stringify(json)).toMatchObject({ code: 'WEFT_BAD_ARGUMENT' });
      expect((err as Error).message).toMatch(re);
      expect((err as Error).message.startsWith('keys.json: ')).toBe(true);
    }
    expect(() => ApiKeys.load('/nonexistent/keys.json')).toThrow(/--api-keys \/nonexistent\/keys.json: cannot read it \(ENOENT\)/);
  });

  test('a tokens-per-minute bucket: charged, refilled with time, a wait that is right; concurrency leases given back once', () => {
    let now = 0;
    const t = new Tenant('t', { maxConcurrent: 1, tokensPerMinute: 600, maxTokens: null, weight: 1 }, () => now);
    expect(t.remaining()).toBe(600);
    expect(t.charge(590)).toBe(true);
    expect(t.remaining()).toBe(10);
    expect(() => t.checkBudget(20)).toThrow(expect.objectContaining({ code: 'WEFT_KEY_BUDGET' }));
    // 600 per minute = 10 per second: 11 more tokens take 1.1 s
    expect(t.retryAfterMs(21)).toBe(1100);
    now = 1100;
    expect(t.remaining()).toBe(21);
    t.checkBudget(20);
    expect(t.charge(30)).toBe(false);
    const release = t.acquire();
    expect(() => t.acquire()).toThrow(expect.objectContaining({ code: 'WEFT_KEY_CONCURRENCY' }));
    release();
    release();
    expect(t.active).toBe(0);
    expect(t.capMaxTokens(50)).toBe(50);
  });

  test('the key a request presents: Bearer header, or the browser subprotocol; the protocol answered', () => {
    expect(presentedKey('Bearer sk-1')).toBe('sk-1');
    expect(presentedKey('bearer  sk-1 ')).toBe('sk-1');
    expect(presentedKey('Basic xyz')).toBeUndefined();
    const offered = parseProtocols('realtime, openai-insecure-api-key.sk-2');
    expect(presentedKey(undefined, offered)).toBe('sk-2');
    expect(chooseProtocol(offered)).toBe('realtime');
    expect(chooseProtocol(parseProtocols('openai-insecure-api-key.sk-2'))).toBe('openai-insecure-api-key.sk-2');
    expect(chooseProtocol([])).toBeUndefined();
  });
});

/** Opens a WebSocket and resolves with the HTTP status it was refused with, or 101 and the socket. */
function handshake(url: string, opts: { headers?: Record<string, string>; protocols?: string[] } = {}): Promise<{ status: number; ws?: WebSocket; protocol?: string; retryAfter?: string }> {
  return new Promise((resolve) => {
    const ws = new WebSocket(url, opts.protocols ?? [], { headers: opts.headers });
    ws.on('unexpected-response', (_req, res) => {
      resolve({ status: res.statusCode ?? 0, retryAfter: res.headers['retry-after'] as string | undefined });
      res.resume();
      ws.terminate();
    });
    // frames are kept from the start: the first can come in the same read as the handshake's answer
    const frames: Ev[] = [];
    const waiters: (() => void)[] = [];
    ws.on('message', (d) => {
      frames.push(JSON.parse(String(d)) as Ev);
      for (const w of waiters.splice(0)) w();
    });
    inbox.set(ws, { frames, waiters });
    ws.on('open', () => resolve({ status: 101, ws, protocol: ws.protocol }));
    ws.on('error', () => undefined);
  });
}

const inbox = new WeakMap<WebSocket, { frames: Ev[]; waiters: (() => void)[] }>();
async function next(ws: WebSocket): Promise<Ev> {
  const box = inbox.get(ws)!;
  while (box.frames.length === 0) await new Promise<void>((r) => box.waiters.push(r));
  return box.frames.shift()!;
}

describe.each(['ws', 'uws'] as const)('keys at the protocol v1 handshake over %s', (transport) => {
  let gw: Gateway;
  let wsUrl: string;
  const keys = () =>
    new ApiKeys({
      keys: [
        { name: 'alice', key: 'sk-alice-123', max_concurrent: 1 },
        { name: 'bob', key: 'sk-bob-12345', tokens_per_minute: 60, max_tokens: 40 },
      ],
    });
  beforeAll(async () => {
    gw = new Gateway({ transport, port: 0, apiKeys: keys(), sessionSampling: { ignoreEos: true } });
    gw.attach(engine);
    wsUrl = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  });
  afterAll(() => gw.close());

  test('no key or a wrong key: HTTP 401 before any WebSocket; a key over max_concurrent: 429 with Retry-After', async () => {
    expect((await handshake(wsUrl)).status).toBe(401);
    expect((await handshake(wsUrl, { headers: { authorization: 'Bearer sk-wrong-00' } })).status).toBe(401);
    expect((await handshake(wsUrl.replace('/v1/ws', '/v1/realtime'))).status).toBe(401);
    const a = await handshake(wsUrl, { headers: { authorization: 'Bearer sk-alice-123' } });
    expect(a.status).toBe(101);
    const created = await next(a.ws!);
    expect(created).toMatchObject({ type: 'session.created', budget: { key: 'alice', max_concurrent: 1, concurrent: 1, tokens_per_minute: null } });
    const over = await handshake(wsUrl, { headers: { authorization: 'Bearer sk-alice-123' } });
    expect(over.status).toBe(429);
    expect(Number(over.retryAfter)).toBeGreaterThanOrEqual(1);
    a.ws!.close();
    const end = Date.now() + 5000;
    while (gw.keys!.tenants[0]!.active > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    const again = await handshake(wsUrl, { headers: { authorization: 'Bearer sk-alice-123' } });
    expect(again.status).toBe(101);
    again.ws!.close();
  });

  test('a browser key in the subprotocol: accepted, and the server answers the protocol offered first', async () => {
    const b = await handshake(wsUrl, { protocols: ['weft.v1', 'openai-insecure-api-key.sk-bob-12345'] });
    expect(b.status).toBe(101);
    expect(b.protocol).toBe('weft.v1');
    expect(await next(b.ws!)).toMatchObject({ type: 'session.created', budget: { key: 'bob', tokens_per_minute: 60, max_tokens: 40 } });
    b.ws!.close();
    // the SDK sends its apiKey that way; a refused one is WEFT_UNAUTHORIZED
    const c = await WeftClient.connect(wsUrl, { apiKey: 'sk-bob-12345' });
    expect(c.session.id).toMatch(/^sess_/);
    c.close();
    await expect(WeftClient.connect(wsUrl, { apiKey: 'sk-nobody-0', reconnect: { attempts: 0 } })).rejects.toMatchObject({ code: 'WEFT_UNAUTHORIZED' });
  });

  test('an answer that spends the budget ends with finish_reason budget and WEFT_KEY_BUDGET; the next message is refused with the wait', async () => {
    const c = await Client.open(wsUrl, { headers: { authorization: 'Bearer sk-bob-12345' } });
    await c.next(); // session.created
    // max_tokens is capped at the key's 40; the 60-token minute budget runs out during the second answer at the latest
    const finishes: unknown[] = [];
    let refused: Ev | null = null;
    for (let i = 0; i < 4 && !refused; i++) {
      c.send({ type: 'message.create', content: 'Tell me a long story.', sampling: { max_tokens: 500, temperature: 0.7, seed: i } });
      for (;;) {
        const ev = await c.next();
        if (ev.type === 'error') {
          refused = ev;
          break;
        }
        if (ev.type === 'response.done') {
          finishes.push(ev.finish_reason);
          if (ev.finish_reason === 'length') expect((ev.usage as { completion_tokens: number }).completion_tokens).toBe(40);
          if (ev.finish_reason === 'budget') expect(ev.error).toMatchObject({ code: 'WEFT_KEY_BUDGET' });
          break;
        }
      }
    }
    expect(finishes).toContain('budget');
    expect(refused).toMatchObject({ code: 'WEFT_KEY_BUDGET' });
    expect(String(refused!.message)).toMatch(/retry in \d+ s/);
    c.ws.close();
  });

  test('a resume token is good only with the key that made its session', async () => {
    const a = await Client.open(wsUrl, { headers: { authorization: 'Bearer sk-alice-123' } });
    const created = await a.next();
    const token = created.resume_token as string;
    a.ws.terminate();
    const end = Date.now() + 5000;
    while (gw.keys!.tenants[0]!.active > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    // bob cannot take alice's session
    const b = await Client.open(`${wsUrl}?resume=${token}`, { headers: { authorization: 'Bearer sk-bob-12345' } });
    expect(await b.next()).toMatchObject({ type: 'error', code: 'WEFT_RESUME_UNKNOWN' });
    const fresh = await b.next();
    expect(fresh.type).toBe('session.created');
    expect((fresh.session as { id: string }).id).not.toBe((created.session as { id: string }).id);
    b.ws.close();
    // alice can
    const a2 = await Client.open(`${wsUrl}?resume=${token}`, { headers: { authorization: 'Bearer sk-alice-123' } });
    expect(await a2.next()).toMatchObject({ type: 'session.resumed', session: { id: (created.session as { id: string }).id } });
    a2.ws.close();
  });
});

test('fair share between keys through the gateway, and metrics by key name (never the key)', async () => {
  const keys = new ApiKeys({ keys: [{ name: 'many', key: 'sk-many-1234' }, { name: 'few', key: 'sk-few-12345' }] });
  // 8 decode slots; many opens 24 sessions, few 8: each key gets about half of the slots
  const gw = new Gateway({ port: 0, apiKeys: keys, sessionSampling: { ignoreEos: true }, scheduler: { maxActive: 64, maxBatchSequences: 8 } });
  gw.attach(engine);
  const url = (await gw.listen()).url;
  const wsUrl = url.replace('http', 'ws') + '/v1/ws';
  try {
    const open = async (key: string) => {
      const c = await Client.open(wsUrl, { headers: { authorization: `Bearer ${key}` } });
      await c.next();
      return c;
    };
    const many = await Promise.all(Array.from({ length: 24 }, () => open('sk-many-1234')));
    const few = await Promise.all(Array.from({ length: 8 }, () => open('sk-few-12345')));
    const counts = { many: 0, few: 0 };
    let stop = false;
    const run = (c: Client, who: 'many' | 'few') =>
      (async () => {
        while (!stop) {
          c.send({ type: 'message.create', content: 'go', sampling: { max_tokens: 48, temperature: 0.5, seed: 1 } });
          for (;;) {
            const ev = await c.next();
            if (ev.type === 'response.delta' && !stop) counts[who]++;
            if (ev.type === 'response.done' || ev.type === 'error') break;
          }
        }
      })();
    const runs = [...many.map((c) => run(c, 'many')), ...few.map((c) => run(c, 'few'))];
    await new Promise((r) => setTimeout(r, 3000));
    stop = true;
    await Promise.all(runs);
    const ratio = counts.few / counts.many;
    expect(counts.few).toBeGreaterThan(50);
    expect(ratio).toBeGreaterThan(0.75);
    expect(ratio).toBeLessThan(1.25);
    for (const c of [...many, ...few]) c.ws.close();
    const metrics = await (await fetch(`${url}/metrics`, { headers: { authorization: 'Bearer sk-few-12345' } })).text();
    expect(metrics).toMatch(/^weft_key_tokens_total\{key="many"\} [1-9]/m);
    expect(metrics).toMatch(/^weft_key_decode_tokens\{key="few"\} [1-9]/m);
    expect(metrics).not.toContain('sk-many-1234');
    expect(metrics).not.toContain('sk-few-12345');
  } finally {
    await gw.close();
  }
});

/**
 * The SDK (src/client/, issue 12): streaming, cancel, coded errors, a reconnect that never loses
 * or repeats a token (a TCP proxy cuts the connection three times mid-answer), backpressure from
 * a consumer that stops reading, and servers that misbehave (garbage, an unknown event, a close
 * mid-frame, no answer): a typed error or ignored, never an unhandled rejection. With API keys:
 * the key's budget in `session`, an answer ended by the budget, a 429 at a reconnect retried until
 * the server lets go of the old socket, a 401 at a reconnect ending it at once.
 */
import { connect, createServer, type Socket } from 'node:net';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { WebSocketServer } from 'ws';
import { WeftClient, WeftError, type ClientNotice } from '../src/client/node.js';
import { Engine } from '../src/engine/engine.js';
import { ApiKeys } from '../src/gateway/api-keys.js';
import { Gateway } from '../src/gateway/server.js';
import { CuttingProxy } from './helpers/proxy.js';

let engine: Engine;
let gw: Gateway;
let url: string;
beforeAll(async () => {
  engine = await Engine.load(join(import.meta.dirname, '..', 'models', 'default'), { threads: 1, contexts: 2, kvMemoryBytes: 64 << 20 });
  gw = new Gateway({ port: 0, sessionSampling: { ignoreEos: true }, backpressureBytes: 4096 });
  gw.attach(engine);
  gw.format = Object.assign(Object.create(Object.getPrototypeOf(gw.format)), gw.format, { stopStrings: [] });
  url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
});
afterAll(async () => {
  await gw.close();
  engine.dispose();
});

const SAMPLING = { temperature: 0.9, top_k: 40, seed: 8, max_tokens: 128 };

async function until(cond: () => boolean, ms = 10_000): Promise<void> {
  const end = Date.now() + ms;
  while (!cond() && Date.now() < end) await new Promise((r) => setTimeout(r, 10));
  expect(cond()).toBe(true);
}

describe('the SDK against weft', () => {
  test('stream, text, done; an abort cancels; errors carry the server code', async () => {
    const c = await WeftClient.connect(url);
    expect(c.session).toMatchObject({ id: expect.any(String), model: 'default', resumeToken: expect.any(String) });
    const updated = await c.update({ system: 'Be brief.', sampling: { max_tokens: 16 } });
    expect(updated.session.system).toBe('Be brief.');
    const r = c.send('Who made the heaven and the earth?', { sampling: { temperature: 0 } });
    let streamed = '';
    for await (const chunk of r) streamed += chunk;
    const done = await r.done;
    expect(done).toMatchObject({ finishReason: 'length', text: streamed, usage: { completion_tokens: 16 } });
    expect(await r.text()).toBe(streamed);

    const abort = new AbortController();
    const long = c.send('Tell me of Moses.', { sampling: { max_tokens: 400 }, signal: abort.signal });
    for await (const _ of long) {
      abort.abort();
      break;
    }
    expect((await long.done).finishReason).toBe('cancelled');

    const bad = c.send('x', { sampling: { temperature: -1 } });
    await expect(bad.done).rejects.toMatchObject({ name: 'WeftError', code: 'WEFT_BAD_ARGUMENT' });
    await expect(c.update({ sampling: { nope: 1 } as never })).rejects.toBeInstanceOf(WeftError);
    await c.close();
    await expect(WeftClient.connect(url.replace('/v1/ws', '/nope'), { timeoutMs: 2000 })).rejects.toMatchObject({ code: 'WEFT_CONNECTION_LOST' });
  });

  test('three cuts during a 128-token answer: the SDK reconnects and delivers every token once', async () => {
    const proxy = await CuttingProxy.start(Number(new URL(url).port));
    try {
      const notices: ClientNotice[] = [];
      const c = await WeftClient.connect(`ws://127.0.0.1:${proxy.port}/v1/ws`, { onEvent: (e) => notices.push(e), reconnect: { minDelayMs: 20 } });
      const r = c.send('Tell me of the kings of Israel.', { sampling: SAMPLING });
      let text = '';
      let n = 0;
      const t0 = Date.now();
      for await (const chunk of r) {
        text += chunk;
        n++;
        if (n === 20 || n === 50 || n === 90) proxy.cut();
      }
      console.log(`three cuts: ${n} chunks in ${Date.now() - t0} ms`);
      const done = await r.done;
      expect(done.usage?.completion_tokens).toBe(128);
      expect(notices.filter((e) => e.type === 'reconnected').length).toBe(3);
      // an uninterrupted run of the same message
      const ref = await WeftClient.connect(url);
      expect(text).toBe(await ref.send('Tell me of the kings of Israel.', { sampling: SAMPLING }).text());
      expect(text).toBe(done.text);
      await ref.close();
      await c.close();
    } finally {
      await proxy.close();
    }
  });

  test('a consumer that stops reading pauses the socket; reading again resumes it; text() never blocks', async () => {
    const c = await WeftClient.connect(url);
    const r = c.send('Tell me of Moses.', { sampling: { ...SAMPLING, max_tokens: 400 } });
    const it = r[Symbol.asyncIterator]();
    await it.next();
    // the consumer stops: past 64 buffered chunks the client pauses the socket (TCP then pushes
    // back on the server; its backpressure skips the response once its own buffer passes the threshold)
    const ws = (c as unknown as { ws: { isPaused: boolean } }).ws;
    const end = Date.now() + 10_000;
    while (!ws.isPaused && Date.now() < end) await new Promise((res) => setTimeout(res, 10));
    expect(ws.isPaused).toBe(true);
    let rest = 0;
    for (let x = await it.next(); !x.done; x = await it.next()) rest++;
    expect(ws.isPaused).toBe(false);
    expect((await r.done).usage?.completion_tokens).toBe(400);
    expect(rest).toBeGreaterThan(60);
    // nobody iterates: the answer is buffered whole and text() resolves
    expect((await c.send('Amen.', { sampling: { max_tokens: 200 } }).text()).length).toBeGreaterThan(0);
    await c.close();
  });
});

describe('servers that misbehave', () => {
  async function fakeServer(onConnection: (ws: import('ws').WebSocket) => void, autoPong = true): Promise<{ url: string; close: () => Promise<void> }> {
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', autoPong });
    wss.on('connection', onConnection);
    await new Promise((r) => wss.once('listening', r));
    const close = () => {
      for (const c of wss.clients) c.terminate();
      return new Promise<void>((r) => wss.close(() => r()));
    };
    return { url: `ws://127.0.0.1:${(wss.address() as { port: number }).port}/v1/ws`, close };
  }
  const session = { id: 's', model: 'm', limits: { max_context: 1, max_frame_bytes: 1, default_max_tokens: 1 } };

  test('garbage and unknown events are ignored (and reported); a close mid-answer after retries is a typed error', async () => {
    const s = await fakeServer((ws) => {
      ws.send('not json {');
      ws.send(JSON.stringify({ type: 'session.created', session, resume_token: null }));
      ws.send(JSON.stringify({ type: 'something.new', x: 1 }));
      ws.on('message', (d) => {
        const ev = JSON.parse(d.toString());
        if (ev.type === 'message.create') {
          ws.send(JSON.stringify({ type: 'response.created', response_id: 'r1', event_id: ev.event_id }));
          ws.send(JSON.stringify({ type: 'response.delta', response_id: 'r1', seq: 0, text: 'Hi' }));
          ws.terminate(); // no resume token: the answer is lost
        }
      });
    });
    const notices: ClientNotice[] = [];
    const c = await WeftClient.connect(s.url, { onEvent: (e) => notices.push(e) });
    expect(notices).toContainEqual(expect.objectContaining({ type: 'ignored' }));
    const r = c.send('hello');
    const chunks: string[] = [];
    await expect((async () => {
      for await (const x of r) chunks.push(x);
    })()).rejects.toMatchObject({ code: 'WEFT_CONNECTION_LOST' });
    expect(chunks).toEqual(['Hi']);
    await expect(r.done).rejects.toBeInstanceOf(WeftError);
    await s.close();
  });

  test('a server that never answers is WEFT_TIMEOUT; one that closes mid-frame before the session starts is WEFT_CONNECTION_LOST', async () => {
    const silent = await fakeServer(() => undefined);
    await expect(WeftClient.connect(silent.url, { timeoutMs: 300 })).rejects.toMatchObject({ code: 'WEFT_TIMEOUT' });
    await silent.close();
    // a frame header promising 126+ bytes, then the socket is gone
    const midFrame = await fakeServer((ws) => {
      const sock = (ws as unknown as { _socket: import('node:net').Socket })._socket;
      sock.write(Buffer.from([0x81, 0x7e, 0x01]));
      sock.destroy();
    });
    await expect(WeftClient.connect(midFrame.url, { timeoutMs: 2000 })).rejects.toMatchObject({ code: 'WEFT_CONNECTION_LOST' });
    await midFrame.close();
  });

  test('the heartbeat notices a connection that stopped answering and resumes the session', async () => {
    let connections = 0;
    const s = await fakeServer((ws) => {
      connections++;
      // a server that answers no ping: each connection looks dead to the client's heartbeat
      if (connections === 1) ws.send(JSON.stringify({ type: 'session.created', session, resume_token: 'tok' }));
      else ws.send(JSON.stringify({ type: 'session.resumed', session, resume_token: 'tok', response: null }));
    }, false);
    const notices: ClientNotice[] = [];
    const c = await WeftClient.connect(s.url, { heartbeatMs: 100, reconnect: { minDelayMs: 10 }, onEvent: (e) => notices.push(e) });
    const end = Date.now() + 5000;
    while (!notices.some((e) => e.type === 'reconnected') && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    expect(notices).toContainEqual({ type: 'reconnected', resumed: true });
    expect(connections).toBeGreaterThanOrEqual(2);
    await c.close();
    await s.close();
  });
});

describe('the SDK against weft with API keys', () => {
  let keyed: Gateway;
  let keyedUrl: string;
  const ONE = 'sk-one-12345'; // max_concurrent 1
  const TPM = 'sk-tpm-12345'; // 60 tokens per minute, answers capped at 40
  beforeAll(async () => {
    const apiKeys = new ApiKeys({ keys: [{ name: 'one', key: ONE, max_concurrent: 1 }, { name: 'tpm', key: TPM, tokens_per_minute: 60, max_tokens: 40 }] });
    keyed = new Gateway({ port: 0, apiKeys, sessionSampling: { ignoreEos: true } });
    keyed.attach(engine);
    keyed.format = Object.assign(Object.create(Object.getPrototypeOf(keyed.format)), keyed.format, { stopStrings: [] });
    keyedUrl = (await keyed.listen()).url.replace('http', 'ws') + '/v1/ws';
  });
  afterAll(() => keyed.close());

  test('client.session keeps the budget of session.created; an answer that spends it resolves with finishReason budget', async () => {
    const c = await WeftClient.connect(keyedUrl, { apiKey: TPM });
    expect(c.session.budget).toEqual({ key: 'tpm', max_concurrent: null, concurrent: 1, tokens_per_minute: 60, tokens_remaining: 60, max_tokens: 40, weight: 1 });
    // each answer is capped at 40 tokens: the 60-token minute runs out during the second at the latest
    const finishes: string[] = [];
    let refused: unknown = null;
    for (let i = 0; i < 4 && !refused; i++) {
      try {
        const done = await c.send('Tell me a long story.', { sampling: { max_tokens: 500, temperature: 0.7, seed: i } }).done;
        finishes.push(done.finishReason);
        if (done.finishReason === 'budget') expect(done.event.error).toMatchObject({ code: 'WEFT_KEY_BUDGET' });
      } catch (err) {
        refused = err;
      }
    }
    expect(finishes).toContain('budget');
    expect(refused).toMatchObject({ name: 'WeftError', code: 'WEFT_KEY_BUDGET' });
    await c.close();
  });

  test("a reconnect refused with 429 (the key's one slot still held by the old socket) is retried until the server lets go; the session survives", async () => {
    const proxy = await staleProxy(Number(new URL(keyedUrl).port));
    try {
      const notices: ClientNotice[] = [];
      const c = await WeftClient.connect(`ws://127.0.0.1:${proxy.port}/v1/ws`, { apiKey: ONE, reconnect: { attempts: 30, minDelayMs: 20, maxDelayMs: 100 }, onEvent: (e) => notices.push(e) });
      const id = c.session.id;
      expect(c.session.budget).toMatchObject({ key: 'one', max_concurrent: 1, concurrent: 1 });
      proxy.cut(); // the client's side is gone; the server still holds the old socket, and with it the key's slot
      const attempts = () => notices.filter((e) => e.type === 'reconnecting').length;
      await until(() => attempts() >= 3);
      expect(notices.map((e) => e.type)).not.toContain('reconnected');
      // the same refusal at connect: a 429 is WEFT_RATE_LIMITED, the message naming both causes
      const refusal = WeftClient.connect(keyedUrl, { apiKey: ONE });
      await expect(refusal).rejects.toMatchObject({ code: 'WEFT_RATE_LIMITED', message: expect.stringMatching(/HTTP 429.*max_concurrent.*byte rate/) });
      proxy.release(); // the server sees the old socket close: the next attempt resumes
      await until(() => notices.some((e) => e.type === 'reconnected'));
      expect(notices).toContainEqual({ type: 'reconnected', resumed: true });
      expect(notices.map((e) => e.type)).not.toContain('lost');
      expect(c.session).toMatchObject({ id, budget: { key: 'one' } });
      expect((await c.send('Amen.', { sampling: { max_tokens: 4 } }).done).finishReason).toBe('length');
      await c.close();
    } finally {
      await proxy.close();
    }
  });

  test('a reconnect refused with 401 ends at once: the running response fails with WEFT_UNAUTHORIZED', async () => {
    let upgrades = 0;
    const wss = new WebSocketServer({ port: 0, host: '127.0.0.1', verifyClient: (_info, cb) => (upgrades++ === 0 ? cb(true) : cb(false, 401)) });
    wss.on('connection', (ws) => {
      ws.send(JSON.stringify({ type: 'session.created', session: { id: 's', model: 'm', limits: { max_context: 1, max_frame_bytes: 1, default_max_tokens: 1 } }, resume_token: 'tok' }));
      ws.on('message', () => ws.terminate()); // the message.create: the connection is lost mid-answer
    });
    await new Promise((r) => wss.once('listening', r));
    try {
      const notices: ClientNotice[] = [];
      const c = await WeftClient.connect(`ws://127.0.0.1:${(wss.address() as { port: number }).port}/v1/ws`, { apiKey: 'sk-revoked-1', reconnect: { minDelayMs: 10 }, onEvent: (e) => notices.push(e) });
      await expect(c.send('hello').done).rejects.toMatchObject({ code: 'WEFT_UNAUTHORIZED' });
      expect(notices.filter((e) => e.type === 'reconnecting').length).toBe(1);
      expect(notices).toContainEqual({ type: 'lost', error: expect.objectContaining({ code: 'WEFT_UNAUTHORIZED' }) });
      expect(upgrades).toBe(2);
    } finally {
      for (const ws of wss.clients) ws.terminate();
      await new Promise<void>((r) => wss.close(() => r()));
    }
  });
});

/**
 * A loopback TCP proxy whose cut drops only the client's side of each connection: the server keeps
 * its socket (it has not seen the close) until `release()`.
 */
async function staleProxy(target: number): Promise<{ port: number; cut: () => void; release: () => void; close: () => Promise<void> }> {
  const live = new Set<[Socket, Socket]>();
  const stale: Socket[] = [];
  const server = createServer((client) => {
    const upstream = connect(target, '127.0.0.1');
    const pair: [Socket, Socket] = [client, upstream];
    live.add(pair);
    client.pipe(upstream);
    upstream.pipe(client);
    const drop = () => {
      if (!live.delete(pair)) return;
      client.destroy();
      upstream.destroy();
    };
    for (const sock of pair) sock.on('error', drop).on('close', drop);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', () => r()));
  const release = () => {
    for (const sock of stale.splice(0)) sock.destroy();
  };
  return {
    port: (server.address() as { port: number }).port,
    cut: () => {
      for (const pair of [...live]) {
        live.delete(pair);
        pair[1].unpipe(pair[0]);
        pair[0].resetAndDestroy();
        stale.push(pair[1]);
      }
    },
    release,
    close: () => {
      release();
      for (const [a, b] of live) a.destroy(), b.destroy();
      return new Promise<void>((r) => server.close(() => r()));
    },
  };
}

/**
 * The gateway end to end: real sockets on loopback (port 0), the real engine on the embedded
 * default model, protocol v1 through the `ws` transport.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';
import { Session, type TurnDone } from '../src/session/session.js';
import { replayPrompt } from './helpers/replay.js';
import { Client, type Ev } from './helpers/ws-client.js';

let engine: Engine;
let gw: Gateway;
let base: string;
let wsUrl: string;
const SAMPLING = { temperature: 0.8, top_k: 40, seed: 5, max_tokens: 40 };

beforeAll(async () => {
  engine = await Engine.load(join(import.meta.dirname, '..', 'models', 'default'), { threads: 2, contexts: 2, kvMemoryBytes: 64 << 20 });
});
afterAll(() => engine.dispose());

async function direct(history: { role: 'user' | 'assistant'; content: string }[], content: string): Promise<TurnDone> {
  const s = new Session(gw.scheduler!, { format: gw.format!, history, sampling: { temperature: 0.8, topK: 40, seed: 5 }, maxTokens: 40 });
  const t = s.send(content);
  for await (const _ of t);
  const d = await t.done;
  await s.close();
  return d;
}

const until = async (cond: () => boolean, ms = 5000) => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('condition not met');
    await new Promise((r) => setTimeout(r, 10));
  }
};

describe.each(['ws', 'uws'] as const)('gateway over %s', (transport) => {
beforeAll(async () => {
  gw = new Gateway({ transport, port: 0, maxFrameBytes: 64 << 10 });
  gw.attach(engine);
  const { url } = await gw.listen();
  base = url;
  wsUrl = url.replace('http', 'ws') + '/v1/ws';
});
afterAll(() => gw.close());

describe('gateway', () => {
  test('healthz, readyz before and after the model, metrics, too many sessions', async () => {
    const g2 = new Gateway({ transport, port: 0, maxSessions: 1 });
    const { url } = await g2.listen();
    expect((await fetch(url + '/healthz')).status).toBe(200);
    expect((await fetch(url + '/readyz')).status).toBe(503);
    const early = await Client.open(url.replace('http', 'ws') + '/v1/ws');
    expect(await early.next()).toMatchObject({ type: 'error', code: 'WEFT_NOT_READY' });
    await early.waitClosed();
    g2.attach(engine);
    expect((await fetch(url + '/readyz')).status).toBe(200);
    const a = await Client.open(url.replace('http', 'ws') + '/v1/ws');
    expect((await a.next()).type).toBe('session.created');
    const b = await Client.open(url.replace('http', 'ws') + '/v1/ws');
    expect(await b.next()).toMatchObject({ type: 'error', code: 'WEFT_TOO_MANY_SESSIONS' });
    await b.waitClosed();
    a.ws.close();
    await g2.close();

    expect((await fetch(base + '/nope')).status).toBe(404);
    const m = await fetch(base + '/metrics');
    expect(m.status).toBe(200);
    const body = await m.text();
    for (const name of ['weft_time_to_first_token_seconds', 'weft_inter_token_latency_seconds', 'weft_queue_wait_seconds', 'weft_sessions_active', 'weft_open_connections', 'weft_generated_tokens_total', 'weft_prompt_tokens_total', 'weft_cached_tokens_total', 'weft_errors_total', 'weft_kv_pages_used', 'weft_kv_pages_total', 'weft_step_duration_seconds', 'weft_batch_sequences', 'weft_batch_tokens', 'weft_contexts_busy', 'weft_sessions_queued']) {
      expect(body, name).toContain(name);
    }
  });

  test('streaming end to end, then a follow-up turn that reuses the KV', async () => {
    const c = await Client.open(wsUrl);
    const created = await c.next();
    expect(created).toMatchObject({ type: 'session.created', session: { id: expect.any(String), model: 'default', limits: { max_context: 512 } } });
    const r1 = await c.turn('Who made the heaven and the earth?', SAMPLING);
    expect(r1.created.event_id).toBe('m-34');
    expect(r1.deltas.length).toBeGreaterThan(0);
    expect(r1.deltas.map((d) => d.seq)).toEqual(r1.deltas.map((_, i) => i));
    expect(['stop', 'length']).toContain(r1.done.finish_reason);
    expect(r1.done.usage).toMatchObject({ cached_tokens: 0, completion_tokens: expect.any(Number), prompt_tokens: expect.any(Number) });
    expect(Object.keys(r1.done.timing).sort()).toEqual(['duration_ms', 'queue_ms', 'ttft_ms']);
    expect(r1.done.truncated_turns).toBe(0);
    const d1 = await direct([], 'Who made the heaven and the earth?');
    expect(r1.text).toBe(d1.text);

    const r2 = await c.turn('And what did he say unto them?', SAMPLING);
    // the whole conversation so far is reused (turn 1's last token was sampled, never fed)
    expect(r2.done.usage.cached_tokens).toBe(r1.done.usage.prompt_tokens + r1.done.usage.completion_tokens - 1);
    expect(r2.deltas.map((d) => d.seq)).toEqual(r2.deltas.map((_, i) => i));
    const session = [...gw.sessions].find((x) => x.id === created.session.id)!;
    const ref = await replayPrompt(gw.scheduler!, gw.format!, session.currentTurn!.prompt, { temperature: 0.8, topK: 40, seed: 5 }, 40);
    expect(r2.text).toBe(ref.text);
    c.send({ type: 'session.close', event_id: 'bye' });
    expect(await c.next()).toMatchObject({ type: 'session.closed', event_id: 'bye' });
    await c.waitClosed();
  });

  test('cancellation, and every bad frame gets its code with the connection still usable', async () => {
    const c = await Client.open(wsUrl);
    await c.next((e) => e.type === 'session.created');
    c.send({ type: 'message.create', content: 'Tell me of Moses.', sampling: { max_tokens: 200 } });
    c.send({ type: 'message.create', content: 'again', event_id: 'busy' });
    c.send({ type: 'response.cancel', event_id: 'stop-it' });
    expect(await c.next((e) => e.type === 'error')).toMatchObject({ code: 'WEFT_RESPONSE_IN_PROGRESS', event_id: 'busy' });
    const done = await c.next((e) => e.type === 'response.done');
    expect(done).toMatchObject({ finish_reason: 'cancelled', event_id: 'stop-it' });
    expect(done.usage.completion_tokens).toBeLessThanOrEqual(1);

    // another session streams while this one sends every bad frame: its answer is unchanged
    const other = await Client.open(wsUrl);
    await other.next((e) => e.type === 'session.created');
    const otherTurn = other.turn('Who made the heaven and the earth?', SAMPLING);
    const bad: [unknown, string][] = [
      ['not json', 'WEFT_BAD_FRAME'],
      [Buffer.from('{"type":"session.close"}'), 'WEFT_BAD_FRAME'],
      [{ type: 'nope', event_id: 'u' }, 'WEFT_UNKNOWN_TYPE'],
      [{ type: 'message.create', event_id: 'x' }, 'WEFT_BAD_FRAME'],
      [{ type: 'message.create', content: 1 }, 'WEFT_BAD_FRAME'],
      [{ type: 'message.create', content: 'a', sampling: { top_k: 'many' } }, 'WEFT_BAD_FRAME'],
      [{ type: 'message.create', content: 'a', sampling: { temperature: -1 } }, 'WEFT_BAD_ARGUMENT'],
      [{ type: 'message.create', content: 'x'.repeat(100 << 10) }, 'WEFT_FRAME_TOO_LARGE'],
      [{ type: 'message.create', content: 'word '.repeat(600) }, 'WEFT_CONTEXT_OVERFLOW'],
      [{ type: 'response.cancel' }, 'WEFT_NO_RESPONSE'],
      [{ type: 'session.update', session: { system: 3 } }, 'WEFT_BAD_FRAME'],
    ];
    for (const [frame, code] of bad) {
      if (Buffer.isBuffer(frame)) c.ws.send(frame);
      else c.send(frame);
      const e = await c.next();
      expect(e, JSON.stringify(frame).slice(0, 80)).toMatchObject({ type: 'error', code });
      const id = (frame as { event_id?: string }).event_id;
      if (id) expect(e.event_id).toBe(id);
    }
    expect((await otherTurn).text).toBe((await direct([], 'Who made the heaven and the earth?')).text);
    other.ws.close();
    c.send({ type: 'session.update', session: { system: 'Be brief.', sampling: { max_tokens: 3 } }, event_id: 'up' });
    expect(await c.next()).toMatchObject({ type: 'session.updated', event_id: 'up', session: { system: 'Be brief.', sampling: { max_tokens: 3 }, context_policy: 'truncate' } });
    c.send({ type: 'session.update', session: { context_policy: 'never' }, event_id: 'cp' });
    expect(await c.next()).toMatchObject({ type: 'error', code: 'WEFT_BAD_FRAME', event_id: 'cp' });
    const r = await c.turn('Amen.');
    expect(r.done.usage.completion_tokens).toBeLessThanOrEqual(3);
    expect(r.deltas.length).toBeGreaterThan(0);
    c.ws.close();

    // a frame over 4 times the limit is not read: the connection closes (ws: status 1009; uWS drops the TCP connection: 1006)
    const huge = await Client.open(wsUrl);
    await huge.next((e) => e.type === 'session.created');
    huge.send({ type: 'message.create', content: 'x'.repeat(4 * (64 << 10)) });
    await huge.waitClosed();
    expect(huge.closeCode).toBe(transport === 'ws' ? 1009 : 1006);
  });

  test('a full admission queue answers WEFT_OVERLOADED; the session stays usable', async () => {
    const g6 = new Gateway({ transport, port: 0, scheduler: { maxActive: 1, maxQueue: 0 } });
    g6.attach(engine);
    const url = (await g6.listen()).url.replace('http', 'ws') + '/v1/ws';
    const [a, b] = await Promise.all([Client.open(url), Client.open(url)]);
    await Promise.all([a, b].map((c) => c.next((e) => e.type === 'session.created')));
    a.send({ type: 'message.create', content: 'Tell me of Moses.', sampling: { max_tokens: 200 } });
    await a.next((e) => e.type === 'response.delta');
    b.send({ type: 'message.create', content: 'Who made the heaven and the earth?', sampling: SAMPLING, event_id: 'full' });
    expect(await b.next()).toMatchObject({ type: 'error', code: 'WEFT_OVERLOADED', event_id: 'full' });
    a.send({ type: 'response.cancel' });
    await a.next((e) => e.type === 'response.done');
    const r = await b.turn('Who made the heaven and the earth?', SAMPLING);
    expect(r.done.usage.cached_tokens).toBe(0); // the rejected message was not added to the conversation
    a.ws.close();
    b.ws.close();
    await g6.close();
    expect(r.text).toBe((await direct([], 'Who made the heaven and the earth?')).text);
  });

  test('concurrent sessions all progress', async () => {
    const N = 12;
    const clients = await Promise.all(Array.from({ length: N }, () => Client.open(wsUrl)));
    await Promise.all(clients.map((c) => c.next((e) => e.type === 'session.created')));
    expect(gw.sessions.size).toBeGreaterThanOrEqual(N);
    const results = await Promise.all(clients.map((c, i) => c.turn(`Who was the son of David? ${i}`, { temperature: 0.9, seed: i, max_tokens: 24 })));
    for (const r of results) {
      expect(r.done.usage.completion_tokens).toBeGreaterThan(0);
      expect(r.deltas.map((d) => d.seq)).toEqual(r.deltas.map((_, i) => i));
    }
    for (const c of clients) c.ws.close();
  });

  test('disconnect mid-stream returns the KV pages at once; resume within the TTL gets the same session', async () => {
    const c = await Client.open(wsUrl);
    const created = await c.next((e) => e.type === 'session.created');
    expect(typeof created.resume_token).toBe('string');
    const r1 = await c.turn('Who made the heaven and the earth?', SAMPLING);
    c.send({ type: 'message.create', content: 'Tell me of the kings of Israel.', sampling: { max_tokens: 200 } });
    await c.next((e) => e.type === 'response.created');
    await c.next((e) => e.type === 'response.delta');
    c.ws.terminate();
    // every session of this gateway is now idle or detached: all KV pages are back in the pool (parked)
    await until(() => {
      const st = engine.stats();
      return st.kvPagesFree === st.kvPagesTotal;
    });

    const r = await Client.open(`${wsUrl}?resume=${encodeURIComponent(created.resume_token)}`);
    const resumed = await r.next();
    expect(resumed).toMatchObject({ type: 'session.resumed', session: { id: created.session.id }, resume_token: created.resume_token });
    const r2 = await r.turn('And what did he say unto them?', SAMPLING);
    expect(r2.done.usage.cached_tokens).toBeGreaterThan(0); // restored from host memory, not prefilled again
    expect(r2.deltas.map((d) => d.seq)).toEqual(r2.deltas.map((_, i) => i));
    // a token that was never issued
    const unknown = await Client.open(`${wsUrl}?resume=never-issued`);
    expect(await unknown.next()).toMatchObject({ type: 'error', code: 'WEFT_RESUME_UNKNOWN' });
    expect(await unknown.next()).toMatchObject({ type: 'session.created' });
    unknown.ws.close();
    // the same token cannot be used twice while its session is connected: refused, nothing changes
    const again = await Client.open(`${wsUrl}?resume=${encodeURIComponent(created.resume_token)}`);
    expect(await again.next()).toMatchObject({ type: 'error', code: 'WEFT_SESSION_CONNECTED' });
    await again.waitClosed();
    expect(again.closeCode).toBe(1013);
    expect(r1.done.usage.cached_tokens).toBe(0);
    r.send({ type: 'session.close' });
    await r.waitClosed();
  });

  test('with resume off (or after the TTL) a disconnect frees the session; an expired token gets an error and a fresh session', async () => {
    const g3 = new Gateway({ transport, port: 0, resumeTtlMs: 150 });
    g3.attach(engine);
    const url = (await g3.listen()).url.replace('http', 'ws') + '/v1/ws';
    const before = engine.stats().sequences;
    const c = await Client.open(url);
    const created = await c.next();
    c.send({ type: 'message.create', content: 'Tell me of Moses.', sampling: { max_tokens: 200 } });
    await c.next((e) => e.type === 'response.delta');
    c.ws.terminate();
    await until(() => engine.stats().sequences === before && g3.sessions.size === 0);
    const late = await Client.open(`${url}?resume=${created.resume_token}`);
    expect(await late.next()).toMatchObject({ type: 'error', code: 'WEFT_RESUME_UNKNOWN' });
    expect(await late.next()).toMatchObject({ type: 'session.created' });
    late.ws.close();
    await g3.close();

    const g4 = new Gateway({ transport, port: 0, resumeTtlMs: 0 });
    g4.attach(engine);
    const url4 = (await g4.listen()).url.replace('http', 'ws') + '/v1/ws';
    const d = await Client.open(url4);
    expect(await d.next()).toMatchObject({ type: 'session.created', resume_token: null });
    expect(engine.stats().sequences).toBe(before + 1);
    d.send({ type: 'message.create', content: 'Tell me of Moses.', sampling: { max_tokens: 200 } });
    await d.next((e) => e.type === 'response.delta');
    d.ws.terminate();
    await until(() => engine.stats().sequences === before && g4.sessions.size === 0);
    await g4.close();
  });
});

describe('gateway under load (answers that run to max_tokens: EOS ignored, no template stop string)', () => {
  let g5: Gateway;
  let url5: string;
  beforeAll(async () => {
    // the slow-reader test floods its socket with large frames: no per-connection byte limit in the way
    g5 = new Gateway({ transport, port: 0, sessionSampling: { ignoreEos: true }, backpressureBytes: 1024, maxBytesPerSecond: 1 << 30, maxBytesPerSecondPerClient: 1 << 30 });
    g5.attach(engine);
    // the default model's template ends a turn at a newline: drop that stop string so answers run to max_tokens
    g5.format = Object.assign(Object.create(Object.getPrototypeOf(g5.format)), g5.format, { stopStrings: [] });
    url5 = (await g5.listen()).url.replace('http', 'ws') + '/v1/ws';
  });
  afterAll(() => g5.close());

  test('32 concurrent sessions: every one gets its first token before any finishes its 64-token answer', async () => {
    const N = 32;
    const clients = await Promise.all(Array.from({ length: N }, () => Client.open(url5)));
    await Promise.all(clients.map((c) => c.next((e) => e.type === 'session.created')));
    const firstAt: number[] = [];
    const doneAt: number[] = [];
    const results = await Promise.all(
      clients.map(async (c, i) => {
        c.send({ type: 'message.create', content: `Who was the son of David? ${i}`, sampling: { temperature: 0.9, seed: i, max_tokens: 64 } });
        const created = await c.next((e) => e.type === 'response.created');
        const deltas: Ev[] = [];
        for (;;) {
          const e = await c.next((x) => x.response_id === created.response_id);
          if (e.type === 'response.delta') {
            if (deltas.length === 0) firstAt[i] = performance.now();
            deltas.push(e);
          } else {
            doneAt[i] = performance.now();
            return { deltas, done: e };
          }
        }
      }),
    );
    for (const r of results) {
      expect(r.done.finish_reason).toBe('length');
      expect(r.done.usage.completion_tokens).toBe(64);
      expect(r.deltas.map((d) => d.seq)).toEqual(r.deltas.map((_, i) => i));
    }
    expect(Math.max(...firstAt)).toBeLessThan(Math.min(...doneAt));
    for (const c of clients) c.ws.close();
  });

  test('a slow reader does not slow the others: its response is skipped while its socket is full, then resumes and finishes', async () => {
    const slow = await Client.open(url5);
    const created = await slow.next((e) => e.type === 'session.created');
    const conn = [...g5.connections].find((c) => c.session?.id === created.session.id)!;
    // the client stops reading its TCP socket; large session.updated echoes fill the kernel's
    // buffers until the server itself holds more than backpressureBytes (1 KiB here)
    slow.ws.pause();
    const big = 'x'.repeat(64 << 10);
    for (let i = 0; i < 400 && conn.bufferedAmount <= 1024; i++) {
      slow.send({ type: 'session.update', session: { system: big } });
      await until(() => g5.connections.has(conn), 1000);
      await new Promise((r) => setTimeout(r, 2));
    }
    expect(conn.bufferedAmount).toBeGreaterThan(1024);
    slow.send({ type: 'session.update', session: { system: '' } });
    const SLOW = { temperature: 0.9, seed: 77, max_tokens: 64 };
    slow.send({ type: 'message.create', content: 'Tell me of Moses.', sampling: SLOW });
    await until(() => conn.session!.currentTurn !== null);
    const slowTurn = conn.session!.currentTurn!;

    const others = await Promise.all(Array.from({ length: 4 }, () => Client.open(url5)));
    await Promise.all(others.map((c) => c.next((e) => e.type === 'session.created')));
    const t0 = performance.now();
    const results = await Promise.all(others.map((c, i) => c.turn(`And God said ${i}`, { temperature: 0.9, seed: i, max_tokens: 64 })));
    const othersMs = performance.now() - t0;
    for (const r of results) {
      expect(r.done.usage.completion_tokens).toBe(64);
      expect(r.deltas.map((d) => d.seq)).toEqual(r.deltas.map((_, i) => i));
    }
    // the slow session was skipped after its first token (sampled by its prefill) while the others streamed 64 each
    expect(slowTurn.request.generated.length).toBeLessThanOrEqual(2);
    expect(slowTurn.request.state).not.toBe('done');
    expect(conn.bufferedAmount).toBeGreaterThan(1024);

    // reading again drains the socket: the response resumes and ends as an unhindered one would
    slow.ws.resume();
    const r = await slow.next((e) => e.type === 'response.created', 20_000);
    const deltas: Ev[] = [];
    for (;;) {
      const e = await slow.next((x) => x.response_id === r.response_id, 20_000);
      if (e.type === 'response.delta') deltas.push(e);
      else {
        expect(e).toMatchObject({ type: 'response.done', finish_reason: 'length', usage: { completion_tokens: 64 } });
        break;
      }
    }
    expect(deltas.map((d) => d.seq)).toEqual(deltas.map((_, i) => i));
    const ref = new Session(g5.scheduler!, { format: g5.format!, sampling: { temperature: 0.9, seed: 77, ignoreEos: true }, maxTokens: 64 });
    const t = ref.send('Tell me of Moses.');
    for await (const _ of t);
    expect(deltas.map((d) => d.text).join('')).toBe((await t.done).text);
    await ref.close();
    expect(othersMs).toBeLessThan(20_000);
    for (const c of [slow, ...others]) c.ws.close();
  });
});
});

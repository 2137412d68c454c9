/**
 * Protocol v1.1's smaller additions (issue 11, section 8): per-delta log-probabilities, stop token
 * ids, the effective sampling defaults, a rotated resume token, and the heartbeat that closes a
 * dead connection.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';
import { Client } from './helpers/ws-client.js';

let engine: Engine;
beforeAll(async () => {
  engine = await Engine.load(join(import.meta.dirname, '..', 'models', 'default'), { threads: 1, contexts: 2, kvMemoryBytes: 64 << 20 });
});
afterAll(() => engine.dispose());

describe.each(['ws', 'uws'] as const)('protocol v1.1 over %s', (transport) => {
  let gw: Gateway;
  let url: string;
  beforeAll(async () => {
    gw = new Gateway({ transport, port: 0, sessionSampling: { topK: 40 }, defaultMaxTokens: 32 });
    gw.attach(engine);
    url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  });
  afterAll(() => gw.close());

  test('logprobs and top_logprobs per delta: the sampled token is the top one when greedy; stop_token_ids end the answer', async () => {
    const c = await Client.open(url);
    await c.next((e) => e.type === 'session.created');
    const r = await c.turn('Who made the heaven and the earth?', { temperature: 0, logprobs: true, top_logprobs: 3, max_tokens: 12 });
    const tok = engine.tokenizer!;
    for (const d of r.deltas.filter((x) => x.token !== undefined)) {
      expect(d.logprob).toBeLessThanOrEqual(0);
      expect(d.top_logprobs).toHaveLength(3);
      expect(d.top_logprobs[0].token).toBe(d.token); // greedy: the argmax
      expect(d.top_logprobs[0].logprob).toBeCloseTo(d.logprob, 5);
      expect(d.top_logprobs[0].text).toBe(tok.decode([d.token]));
      expect(d.top_logprobs[1].logprob).toBeLessThanOrEqual(d.top_logprobs[0].logprob);
    }
    const plain = await c.turn('And what did he say?', { temperature: 0, max_tokens: 4 });
    expect(plain.deltas.every((d) => d.logprob === undefined && d.token === undefined)).toBe(true);
    const only = await c.turn('Amen.', { temperature: 0, logprobs: true, max_tokens: 4 });
    expect(only.deltas.some((d) => typeof d.logprob === 'number' && d.top_logprobs === undefined)).toBe(true);

    // the third token of a greedy answer, as a stop token id: the answer ends before it
    const c2 = await Client.open(url);
    await c2.next((e) => e.type === 'session.created');
    const free = await c2.turn('Tell me of Moses.', { temperature: 0, logprobs: true, max_tokens: 6 });
    const c3 = await Client.open(url);
    await c3.next((e) => e.type === 'session.created');
    const third = free.deltas[2]!.token;
    const stopped = await c3.turn('Tell me of Moses.', { temperature: 0, stop_token_ids: [third], max_tokens: 6 });
    expect(stopped.done.finish_reason).toBe('stop');
    expect(stopped.done.usage.completion_tokens).toBe(2);
    c3.send({ type: 'message.create', content: 'x', sampling: { stop_token_ids: [-1] }, event_id: 'neg' });
    expect(await c3.next((e) => e.event_id === 'neg')).toMatchObject({ code: 'WEFT_BAD_FRAME' });
    c3.send({ type: 'message.create', content: 'x', sampling: { top_logprobs: 21 }, event_id: 'many' });
    expect(await c3.next((e) => e.event_id === 'many')).toMatchObject({ code: 'WEFT_BAD_FRAME' });
    for (const x of [c, c2, c3]) x.ws.close();
  });

  test('session.updated carries the effective sampling; a rotated resume token replaces the old one', async () => {
    const c = await Client.open(url);
    const created = await c.next((e) => e.type === 'session.created');
    c.send({ type: 'session.update', session: { sampling: { temperature: 0.7 } }, event_id: 'u' });
    const u = await c.next((e) => e.event_id === 'u');
    expect(u.session.sampling).toEqual({ temperature: 0.7 });
    expect(u.session.effective_sampling).toEqual({ temperature: 0.7, top_k: 40, max_tokens: 32 });
    expect(u.resume_token).toBeUndefined();
    c.send({ type: 'session.update', session: { rotate_resume_token: true }, event_id: 'r' });
    const rotated = await c.next((e) => e.event_id === 'r');
    expect(typeof rotated.resume_token).toBe('string');
    expect(rotated.resume_token).not.toBe(created.resume_token);
    c.ws.close();
    await c.waitClosed();
    const old = await Client.open(`${url}?resume=${created.resume_token}`);
    expect(await old.next()).toMatchObject({ type: 'error', code: 'WEFT_RESUME_UNKNOWN' });
    old.ws.close();
    const fresh = await Client.open(`${url}?resume=${rotated.resume_token}`);
    expect(await fresh.next()).toMatchObject({ type: 'session.resumed', session: { id: created.session.id } });
    fresh.ws.close();
  });
});

test('heartbeat (ws): a connection that stops answering pings is closed and its session kept for resume', async () => {
  const gw = new Gateway({ transport: 'ws', port: 0, heartbeatMs: 150 });
  gw.attach(engine);
  const url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  try {
    const live = await Client.open(url);
    const dead = await Client.open(url, { autoPong: false });
    const created = await dead.next((e) => e.type === 'session.created');
    await live.next((e) => e.type === 'session.created');
    await dead.waitClosed();
    expect(dead.closeCode).toBe(1006);
    await new Promise((r) => setTimeout(r, 400));
    expect(live.closed).toBe(false);
    expect(gw.numDetachedSessions).toBe(1);
    const back = await Client.open(`${url}?resume=${created.resume_token}`);
    expect(await back.next()).toMatchObject({ type: 'session.resumed' });
    for (const c of [live, back]) c.ws.close();
  } finally {
    await gw.close();
  }
});

test('progress (opt-in): a deliberately full server reports the place in line, then prefilling and generating', async () => {
  const gw = new Gateway({ transport: 'ws', port: 0, sessionSampling: { ignoreEos: true }, scheduler: { maxActive: 1 } });
  gw.attach(engine);
  gw.format = Object.assign(Object.create(Object.getPrototypeOf(gw.format)), gw.format, { stopStrings: [] });
  const url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  try {
    const [a, b, c] = await Promise.all([Client.open(url), Client.open(url), Client.open(url)]);
    await Promise.all([a, b, c].map((x) => x.next((e) => e.type === 'session.created')));
    for (const x of [b, c]) {
      x.send({ type: 'session.update', session: { progress: true }, event_id: 'p' });
      expect(await x.next((e) => e.event_id === 'p')).toMatchObject({ session: { progress: true } });
    }
    a.send({ type: 'message.create', content: 'Tell me of Moses.', sampling: { max_tokens: 400 } });
    await a.next((e) => e.type === 'response.delta');
    b.send({ type: 'message.create', content: 'Who made the heaven and the earth?', sampling: { max_tokens: 120 } });
    expect(await b.next((e) => e.type === 'response.progress')).toMatchObject({ state: 'queued', position: 1, ahead: 0 });
    c.send({ type: 'message.create', content: 'Amen.', sampling: { max_tokens: 8 } });
    expect(await c.next((e) => e.type === 'response.progress')).toMatchObject({ state: 'queued', position: 2, ahead: 1 });
    a.send({ type: 'response.cancel' });
    const states: string[] = [];
    for (;;) {
      const e = await b.next((x) => x.type === 'response.progress' || x.type === 'response.done');
      if (e.type === 'response.done') break;
      states.push(e.state);
    }
    expect(states.at(-1)).toMatch(/prefilling|generating/);
    expect(await c.next((e) => e.type === 'response.progress')).toMatchObject({ state: 'queued', position: 1, ahead: 0 });
    // without the opt-in, no progress events
    expect(a.events.some((e) => e.type === 'response.progress')).toBe(false);
    for (const x of [a, b, c]) x.ws.close();
  } finally {
    await gw.close();
  }
});

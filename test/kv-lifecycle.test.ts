/**
 * The KV lifecycle (issue 11, section 6): resident → parked → dropped by idle time, dropped under
 * a parked-memory budget (least recently active first), a per-session context cap; the state in
 * session.updated / response.done and /metrics; a dropped session answers as a resident one.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';
import { Client } from './helpers/ws-client.js';

let engine: Engine;
beforeAll(async () => {
  engine = await Engine.load(join(import.meta.dirname, '..', 'models', 'default'), { threads: 1, contexts: 2, kvMemoryBytes: 64 << 20 });
});
afterAll(() => engine.dispose());

const SAMPLING = { temperature: 0.8, top_k: 40, seed: 9, max_tokens: 24 };
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

async function state(c: Client, id: string): Promise<{ state: string; tokens: number }> {
  c.send({ type: 'session.update', session: {}, event_id: id });
  return (await c.next((e) => e.event_id === id)).session.kv;
}

test('resident, then parked, then dropped by idle time; a dropped session answers exactly as a resident one', async () => {
  // parked after 150 ms, dropped after 2 s: a wide window to see it parked on a loaded machine
  const gw = new Gateway({ port: 0, parkAfterMs: 150, dropAfterMs: 2000 });
  gw.attach(engine);
  const ref = new Gateway({ port: 0 });
  ref.attach(engine);
  const url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  const refUrl = (await ref.listen()).url.replace('http', 'ws') + '/v1/ws';
  try {
    const c = await Client.open(url);
    const r = await Client.open(refUrl);
    await Promise.all([c, r].map((x) => x.next((e) => e.type === 'session.created')));
    const first = await c.turn('Who made the heaven and the earth?', SAMPLING);
    await r.turn('Who made the heaven and the earth?', SAMPLING);
    expect(first.done.kv).toMatchObject({ state: 'resident' });
    expect(first.done.kv.tokens).toBeGreaterThan(0);
    await sleep(400);
    expect(await state(c, 'p')).toMatchObject({ state: 'parked', tokens: first.done.kv.tokens });
    const metrics = await (await fetch(url.replace('ws', 'http').replace('/v1/ws', '/metrics'))).text();
    expect(metrics).toMatch(/weft_sessions_kv\{state="parked"\} 1/);
    expect(metrics).toMatch(/weft_session_kv_bytes\{state="parked"\} [1-9]/);
    expect(metrics).not.toContain('weft_process_process_');
    let dropped = await state(c, 'd0');
    for (let i = 1; dropped.state !== 'dropped' && i < 40; i++) {
      await sleep(100);
      dropped = await state(c, `d${i}`);
    }
    expect(dropped).toEqual({ state: 'dropped', tokens: 0 });
    const afterDrop = await c.turn('And what did he say unto them?', SAMPLING);
    const resident = await r.turn('And what did he say unto them?', SAMPLING);
    expect(afterDrop.done.usage.cached_tokens).toBe(0);
    expect(resident.done.usage.cached_tokens).toBeGreaterThan(0);
    expect(afterDrop.done.usage.prompt_tokens).toBe(resident.done.usage.prompt_tokens);
    expect(afterDrop.text).toBe(resident.text);
    expect(afterDrop.done.kv).toMatchObject({ state: 'resident' });
    for (const x of [c, r]) x.ws.close();
  } finally {
    await gw.close();
    await ref.close();
  }
});

test('a parked-memory budget drops the least recently active parked sessions; a per-session token cap truncates', async () => {
  const bytesPerToken = engine.stats().kvBytesPerToken;
  const gw = new Gateway({ port: 0, parkAfterMs: 100, parkedMemoryBytes: 60 * bytesPerToken, maxSessionTokens: 200 });
  gw.attach(engine);
  const url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  try {
    const a = await Client.open(url);
    await a.next((e) => e.type === 'session.created');
    await a.turn('Who made the heaven and the earth?', SAMPLING);
    await sleep(30);
    const b = await Client.open(url);
    await b.next((e) => e.type === 'session.created');
    await b.turn('Tell me of Moses.', SAMPLING);
    await sleep(400);
    // each holds more than half the budget: the older (a) was dropped, the newer (b) stays parked
    expect((await state(a, 'a')).state).toBe('dropped');
    expect((await state(b, 'b')).state).toBe('parked');
    // the cap: a conversation never holds more than 200 tokens; old turns are dropped to stay under it
    let truncated = 0;
    for (let i = 0; i < 12 && truncated === 0; i++) {
      const t = await b.turn(`And what did he say unto them, the ${i}th time?`, { ...SAMPLING, max_tokens: 40 });
      expect(t.done.usage.prompt_tokens + t.done.usage.completion_tokens).toBeLessThanOrEqual(200);
      truncated = t.done.truncated_turns;
    }
    expect(truncated).toBeGreaterThan(0);
    for (const x of [a, b]) x.ws.close();
  } finally {
    await gw.close();
  }
});

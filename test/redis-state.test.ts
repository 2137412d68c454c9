/**
 * ClusterState (src/cluster/redis-state.ts) against a real redis-server: fenced records, claims
 * that never give a session to two instances, liveness by heartbeat, budgets shared by instances,
 * and a Redis that goes away and comes back.
 */
import { afterAll, beforeAll, expect, test } from 'vitest';
import { ClusterState, type ClusterRecord } from '../src/cluster/redis-state.js';
import { RedisServer } from './helpers/redis.js';

let redis: RedisServer;
const states: ClusterState[] = [];
const logs: string[] = [];

beforeAll(async () => {
  redis = await RedisServer.start();
});
afterAll(async () => {
  await Promise.all(states.map((s) => s.close()));
  await redis.stop();
});

async function instance(id: string, opts: { heartbeatMs?: number; instanceTtlMs?: number } = {}): Promise<ClusterState> {
  const s = new ClusterState(redis.url, id, { heartbeatMs: 50, instanceTtlMs: 200, ...opts, log: (l) => logs.push(`${id}: ${l}`) });
  states.push(s);
  s.start();
  const end = Date.now() + 5000;
  while (!(await s.isAlive(id))) {
    if (Date.now() > end) throw new Error(`${id} never came up`);
    await new Promise((r) => setTimeout(r, 20));
  }
  return s;
}

const record = (hash: string, extra: Partial<ClusterRecord> = {}): ClusterRecord => ({
  weft_session: 1, session_id: 'sess_1', token_hash: hash, expires_at: Date.now() + 60_000, system: null, sampling: {}, context_policy: 'truncate',
  conversation: { messages: [{ role: 'user', content: 'hi' }], tokens: null, answerStart: 0, lastGenerated: '' }, ...extra,
});
const hashOf = (n: number) => n.toString(16).padStart(64, '0');

test('records are fenced by their owner; a claim wins only over an absent, own or dead owner; never two winners', async () => {
  const a = await instance('a');
  const b = await instance('b');
  const h = hashOf(1);
  expect(await a.save(record(h, { pending: { response_id: 'resp_1', content: 'hi', sampling: { seed: 7 } } }), 60_000)).toBe('saved');
  expect(await a.owner(h)).toBe('a');
  expect((await b.load(h))?.pending?.sampling).toEqual({ seed: 7 });
  // b cannot write a's session, nor take it while a lives
  expect(await b.save(record(h), 60_000)).toBe('lost');
  expect(await b.claim(h, 60_000)).toEqual({ ok: false, owner: 'a' });
  // a dies (its heartbeat stops): after its TTL, exactly one of b and c wins the claim
  const c = await instance('c');
  await a.close();
  states.splice(states.indexOf(a), 1);
  await new Promise((r) => setTimeout(r, 300));
  const [cb, cc] = await Promise.all([b.claim(h, 60_000), c.claim(h, 60_000)]);
  expect([cb!.ok, cc!.ok].filter(Boolean)).toHaveLength(1);
  const winner = cb!.ok ? b : c;
  const loser = cb!.ok ? c : b;
  expect(cb!.ok ? cb : cc).toEqual({ ok: true, previous: 'a' });
  expect(await winner.owner(h)).toBe(winner.instanceId);
  expect(await loser.save(record(h), 60_000)).toBe('lost');
  expect(await winner.save(record(h), 60_000)).toBe('saved');
  // an owner claims its own session again (a reconnect to the same instance)
  expect(await winner.claim(h, 60_000)).toEqual({ ok: true, previous: winner.instanceId });
  await winner.remove(h);
  expect(await winner.load(h)).toBeNull();
  expect(logs.some((l) => l.includes('another instance owns it now'))).toBe(true);
});

test('a record that does not parse is logged and treated as absent; progress round-trips', async () => {
  const a = await instance('p');
  const h = hashOf(2);
  await a.redis.set(`weft:sess:${h}`, '{not json');
  expect(await a.load(h)).toBeNull();
  expect(logs.some((l) => l.includes('does not parse'))).toBe(true);
  await a.redis.set(`weft:sess:${h}`, JSON.stringify(record(hashOf(3))));
  expect(await a.load(h)).toBeNull(); // a record of another token
  await a.progress(h, { response_id: 'resp_9', next_seq: 12, text: 'abc' }, 10_000);
  expect(await a.loadProgress(h)).toEqual({ response_id: 'resp_9', next_seq: 12, text: 'abc' });
});

test("a key's tokens-per-minute and concurrency hold across instances; a dead instance's leases stop counting", async () => {
  const x = await instance('x');
  const y = await instance('y');
  const key = `k${Date.now()}`;
  expect(await x.takeTokens(key, 100, 60, 61)).toMatchObject({ ok: true, left: 40 });
  // y sees what x spent: 50 more are not there
  const r = await y.takeTokens(key, 100, 50, 51);
  expect(r).toMatchObject({ ok: false, left: 40 });
  expect(r!.waitMs).toBeGreaterThan(5000); // 11 tokens at 100/min: ~6.6 s
  expect(await y.takeTokens(key, 100, 30, 31)).toMatchObject({ ok: true, left: 10 });
  // generated tokens are charged even past the budget (need 0)
  expect(await x.takeTokens(key, 100, 20)).toMatchObject({ ok: true, left: 0 });

  expect(await x.lease(key, 2, 1)).toEqual({ ok: true, total: 1 });
  expect(await y.lease(key, 2, 1)).toEqual({ ok: true, total: 2 });
  expect(await y.lease(key, 2, 1)).toEqual({ ok: false, total: 2 });
  expect(await x.lease(key, 2, -1)).toEqual({ ok: true, total: 1 });
  expect(await x.lease(key, 2, 1)).toEqual({ ok: true, total: 2 });
  // x dies holding a lease: once its heartbeat expires, its leases are not counted
  await x.close();
  states.splice(states.indexOf(x), 1);
  await new Promise((r) => setTimeout(r, 300));
  expect(await y.lease(key, 2, 1)).toEqual({ ok: true, total: 2 });
});

test('Redis down: calls fail fast and say so; records saved meanwhile are written when it is back', async () => {
  const a = await instance('d');
  const h = hashOf(4);
  await redis.stop();
  const t0 = Date.now();
  expect(await a.save(record(h), 60_000)).toBe('down');
  expect(await a.load(h)).toBeNull();
  expect(await a.claim(h, 60_000)).toBeNull();
  expect(await a.takeTokens('k', 10, 1, 2)).toBeNull();
  expect(Date.now() - t0).toBeLessThan(3000);
  expect(a.up).toBe(false);
  expect(a.numDirty).toBe(1);
  await redis.run();
  const end = Date.now() + 10_000;
  while (a.numDirty > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 50));
  expect(a.up).toBe(true);
  expect(a.numDirty).toBe(0);
  expect((await a.load(h))?.session_id).toBe('sess_1');
  expect(logs.some((l) => l.includes('d: redis: unavailable'))).toBe(true);
  expect(logs.some((l) => l.includes('wrote 1 session records again'))).toBe(true);
});

test('a Redis that answers slowly: calls give up after the command timeout, the instance says so and goes on', async () => {
  const a = await instance('s');
  const { Redis } = await import('ioredis');
  const blocker = new Redis(redis.url);
  await blocker.ping();
  void blocker.call('DEBUG', 'SLEEP', '2').catch(() => undefined);
  await new Promise((r) => setTimeout(r, 100));
  const t0 = Date.now();
  expect(await a.load(hashOf(9))).toBeNull();
  expect(Date.now() - t0).toBeLessThan(1800);
  expect(a.up).toBe(false);
  expect(logs.some((l) => l.startsWith('s: redis: unavailable'))).toBe(true);
  blocker.disconnect();
  const end = Date.now() + 10_000;
  while (!(await a.isAlive('s')) && Date.now() < end) await new Promise((r) => setTimeout(r, 100));
  expect(await a.isAlive('s')).toBe(true);
});

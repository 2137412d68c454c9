/**
 * Several weft instances sharing state in a real Redis (docs/scale-out.md): a session taken over
 * by another instance after its own was killed (SIGKILL) mid-answer gets exactly the deltas it
 * missed, token-identical to an uninterrupted run; a live owner keeps its sessions; budgets hold
 * across instances; Redis going away does not stop an instance from serving its own sessions.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { RedisServer } from './helpers/redis.js';
import { WeftProcess } from './helpers/weft-process.js';
import { Client, type Ev } from './helpers/ws-client.js';

let redis: RedisServer;
const procs: WeftProcess[] = [];

beforeAll(async () => {
  redis = await RedisServer.start();
});
afterAll(async () => {
  await Promise.all(procs.map((p) => p.kill()));
  await redis.stop();
});

async function instance(id: string, extra: string[] = []): Promise<WeftProcess> {
  const p = await WeftProcess.start(['--instance-id', id, '--redis', redis.url, ...extra]);
  procs.push(p);
  return p;
}

const SAMPLING = { temperature: 0.9, top_k: 50, seed: 424242, max_tokens: 120 };

/** Sends a message and reads its deltas until `stopAfter` of them (or the end); returns them. */
async function turn(c: Client, content: string, stopAfter = Infinity): Promise<{ id: string; deltas: Ev[]; done: Ev | null }> {
  c.send({ type: 'message.create', content, sampling: SAMPLING });
  const created = await c.next((e) => e.type === 'response.created' || e.type === 'error');
  if (created.type === 'error') throw new Error(JSON.stringify(created));
  const deltas: Ev[] = [];
  for (;;) {
    const e = await c.next((x) => x.response_id === created.response_id);
    if (e.type === 'response.delta') {
      deltas.push(e);
      if (deltas.length >= stopAfter) return { id: created.response_id, deltas, done: null };
    } else if (e.type === 'response.done') return { id: created.response_id, deltas, done: e };
  }
}

describe('takeover', () => {
  test('an instance killed mid-answer: another takes the session over and the client gets exactly the deltas it missed', async () => {
    const [a, b, ref] = await Promise.all([instance('ta'), instance('tb'), instance('tref')]);
    // the uninterrupted run, on its own instance
    const r = await Client.open(ref.wsUrl);
    await r.next();
    const want1 = await turn(r, 'Tell me about the sea.');
    const want2 = await turn(r, 'And the mountains?');
    r.ws.close();

    const c = await Client.open(a.wsUrl);
    const created = await c.next();
    expect(created.resume_token).toMatch(/^ta\./);
    const got1 = await turn(c, 'Tell me about the sea.');
    expect(got1.deltas.map((d) => d.text).join('')).toBe(want1.deltas.map((d) => d.text).join(''));
    // killed half way through the answer
    expect(want2.deltas.length).toBeGreaterThanOrEqual(8);
    const half = Math.floor(want2.deltas.length / 2);
    const part = await turn(c, 'And the mountains?', half);
    await a.kill();
    const lastSeq = part.deltas[part.deltas.length - 1]!.seq as number;
    expect(lastSeq).toBe(half - 1);
    const t0 = performance.now();
    const c2 = await Client.open(`${b.wsUrl}?resume=${created.resume_token}&last_seq=${lastSeq}&response_id=${part.id}`);
    const resumed = await c2.next();
    expect(resumed).toMatchObject({ type: 'session.resumed', response: { response_id: part.id, status: 'in_progress', next_seq: half } });
    expect(resumed.resume_token).toMatch(/^tb\./);
    const rest: Ev[] = [];
    let firstAt = 0;
    for (;;) {
      const e = await c2.next();
      expect(e.type).not.toBe('error');
      if (e.type === 'response.delta') {
        if (!firstAt) firstAt = performance.now() - t0;
        rest.push(e);
      }
      if (e.type === 'response.done') {
        expect(e.response_id).toBe(part.id);
        break;
      }
    }
    // each seq exactly once, and the text of the uninterrupted run
    expect(rest.map((d) => d.seq)).toEqual(Array.from({ length: want2.deltas.length - half }, (_, i) => i + half));
    expect([...part.deltas, ...rest].map((d) => d.text).join('')).toBe(want2.deltas.map((d) => d.text).join(''));
    expect(firstAt).toBeLessThan(5000);
    // the session goes on on b: a third turn equals the uninterrupted run's
    const r2 = await Client.open(ref.wsUrl);
    await r2.next();
    await turn(r2, 'Tell me about the sea.');
    await turn(r2, 'And the mountains?');
    const want3 = await turn(r2, 'Thanks!');
    const got3 = await turn(c2, 'Thanks!');
    expect(got3.deltas.map((d) => d.text).join('')).toBe(want3.deltas.map((d) => d.text).join(''));
    expect(b.err).toContain('taken over from ta');
    c2.ws.close();
    r2.ws.close();
  });

  test('a live owner keeps its session: a resume that reaches another instance is WEFT_SESSION_ELSEWHERE naming the owner', async () => {
    const [a, b] = await Promise.all([instance('la'), instance('lb')]);
    const c = await Client.open(a.wsUrl);
    const created = await c.next();
    await turn(c, 'Hello.');
    c.ws.terminate();
    const t0 = Date.now();
    const d = await Client.open(`${b.wsUrl}?resume=${created.resume_token}`);
    expect(await d.next()).toMatchObject({ type: 'error', code: 'WEFT_SESSION_ELSEWHERE', instance: 'la' });
    await d.waitClosed();
    expect(Date.now() - t0).toBeGreaterThan(900); // it waited for the owner's heartbeat to expire
    // the owner still has it
    const e = await Client.open(`${a.wsUrl}?resume=${created.resume_token}`);
    expect(await e.next()).toMatchObject({ type: 'session.resumed' });
    e.ws.close();
  });
});

/**
 * Several weft instances sharing state in a real Redis (docs/scale-out.md): a session taken over
 * by another instance after its own was killed (SIGKILL) mid-answer gets exactly the deltas it
 * missed, token-identical to an uninterrupted run; a live owner keeps its sessions; budgets hold
 * across instances; Redis going away does not stop an instance from serving its own sessions.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { writeFileSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Conversation, type TurnResult } from './helpers/conversation.js';
import { Nginx } from './helpers/nginx.js';
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

  test('an answer run again that differs from what the lost instance sent is said (WEFT_REPLAY_GAP with the text), never silent', async () => {
    const [a, b] = await Promise.all([instance('va'), instance('vb')]);
    const c = await Client.open(a.wsUrl);
    const created = await c.next();
    const part = await turn(c, 'Tell me about the sea.', 6);
    await a.kill();
    // what the lost instance had flushed, falsified: as if it had sampled other tokens (another backend or build)
    const { createHash } = await import('node:crypto');
    const { Redis } = await import('ioredis');
    const r = new Redis(redis.url);
    const key = `weft:prog:${createHash('sha256').update(created.resume_token).digest('hex')}`;
    await r.set(key, JSON.stringify({ response_id: part.id, next_seq: 3, text: 'not what it said' }), 'PX', 60_000);
    r.disconnect();
    const c2 = await Client.open(`${b.wsUrl}?resume=${created.resume_token}&last_seq=${part.deltas.length - 1}&response_id=${part.id}`);
    expect(await c2.next()).toMatchObject({ type: 'session.resumed' });
    const gap = await c2.next((e) => e.type === 'error');
    expect(gap).toMatchObject({ code: 'WEFT_REPLAY_GAP', response_id: part.id });
    expect(typeof gap.text).toBe('string');
    expect(b.err).toContain('differs from what the lost instance sent');
    c2.ws.close();
  });

  test('split brain: an owner presumed dead (frozen) that comes back loses the session at its next write; it is never served by both', async () => {
    const [a, b] = await Promise.all([instance('sa'), instance('sb')]);
    const c1 = await Client.open(a.wsUrl);
    const created = await c1.next();
    await turn(c1, 'Hello.');
    a.signal('SIGSTOP'); // its heartbeat stops: after its TTL it counts as dead
    try {
      await new Promise((r) => setTimeout(r, 1300));
      const c2 = await Client.open(`${b.wsUrl}?resume=${created.resume_token}`);
      const resumed = await c2.next();
      expect(resumed).toMatchObject({ type: 'session.resumed' });
      expect(resumed.resume_token).toMatch(/^sb\./);
      a.signal('SIGCONT');
      // the old owner's client sends a message: the old owner's fenced write is refused, it stops serving the session
      c1.send({ type: 'message.create', content: 'Still there?', sampling: SAMPLING });
      const ev = await c1.next((e) => e.type === 'error' || e.type === 'response.delta');
      expect(ev).toMatchObject({ type: 'error', code: 'WEFT_SESSION_ELSEWHERE' });
      await c1.waitClosed();
      expect(a.err).toContain('another instance owns it now');
      // the new owner serves it
      const t = await turn(c2, 'Still there?');
      expect(t.done).toMatchObject({ type: 'response.done' });
      c2.ws.close();
    } finally {
      a.signal('SIGCONT');
    }
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

// ---- three instances behind NGINX ---------------------------------------------------------------

const N = 60;
const TURNS = 3;
const PROMPTS = ['Tell me a story about a lighthouse keeper.', 'What happened next?', 'How did it end?'];
const samplingOf = (i: number, t: number) => ({ temperature: 0.8, top_k: 40, seed: 7000 + i * 10 + t, max_tokens: 40 });

/** Each conversation run on one instance without interruption: the answers every cluster run must equal. */
async function reference(url: string, n: number): Promise<TurnResult[][]> {
  const out: TurnResult[][] = [];
  const run = async (i: number) => {
    const c = new Conversation(url);
    await c.start();
    const turns: TurnResult[] = [];
    for (let t = 0; t < TURNS; t++) turns.push(await c.turn(`${PROMPTS[t]} (#${i})`, samplingOf(i, t)));
    c.close();
    out[i] = turns;
  };
  for (let i = 0; i < n; i += 20) await Promise.all(Array.from({ length: Math.min(20, n - i) }, (_, k) => run(i + k)));
  return out;
}

function expectSameAnswers(got: TurnResult[], want: TurnResult[], what: string): void {
  expect(got.length, what).toBe(want.length);
  got.forEach((g, t) => {
    // each seq exactly once, in order, none missing
    expect(g.seqs, `${what} turn ${t}: seqs`).toEqual(want[t]!.seqs.map((_, k) => k));
    expect(g.text, `${what} turn ${t}: text`).toBe(want[t]!.text);
    expect(g.done.finish_reason, `${what} turn ${t}`).toBe(want[t]!.done.finish_reason);
  });
}

describe('three instances behind NGINX with one Redis', () => {
  let want: TurnResult[][];
  beforeAll(async () => {
    const ref = await WeftProcess.start([]);
    procs.push(ref);
    want = await reference(ref.wsUrl, N);
    await ref.kill();
  });

  test('60 multi-turn sessions; one instance is SIGKILLed mid-answer: every answer completes, each seq once, text = an uninterrupted run', async () => {
    const ids = ['k1', 'k2', 'k3'];
    const inst = await Promise.all(ids.map((id) => instance(id)));
    const proxy = await Nginx.start({ instances: inst.map((p, i) => ({ id: ids[i]!, address: `127.0.0.1:${p.port}` })) });
    try {
      const wsUrl = proxy.url.replace('http', 'ws') + '/v1/ws';
      const convs = Array.from({ length: N }, () => new Conversation(wsUrl));
      await Promise.all(convs.map((c) => c.start()));
      // least connections: every instance serves some
      for (const id of ids) expect(convs.filter((c) => c.instances[0] === id).length, id).toBeGreaterThan(10);
      let secondTurnStarted = 0;
      let victim = '';
      const killAt = new Promise<void>((resolve) => {
        const timer = setInterval(() => {
          if (secondTurnStarted < N * 0.8) return;
          clearInterval(timer);
          resolve();
        }, 5);
      });
      void killAt.then(async () => {
        // the instance serving most sessions, mid-answer
        const count = (id: string) => convs.filter((c) => c.instances[c.instances.length - 1] === id).length;
        victim = [...ids].sort((a, b) => count(b) - count(a))[0]!;
        await inst[ids.indexOf(victim)]!.kill();
      });
      const got = await Promise.all(
        convs.map(async (c, i) => {
          const turns: TurnResult[] = [];
          for (let t = 0; t < TURNS; t++) {
            if (t === 1) secondTurnStarted++;
            turns.push(await c.turn(`${PROMPTS[t]} (#${i})`, samplingOf(i, t)));
          }
          return turns;
        }),
      );
      expect(victim).not.toBe('');
      got.forEach((turns, i) => expectSameAnswers(turns, want[i]!, `session ${i}`));
      // the victim's sessions moved once, to a live instance; the others never moved
      const moved = convs.filter((c) => c.instances.length > 1);
      expect(moved.length).toBeGreaterThan(5);
      for (const c of convs) {
        expect(c.instances.length).toBeLessThanOrEqual(2);
        if (c.instances.length === 2) {
          expect(c.instances[0]).toBe(victim);
          expect(c.instances[1]).not.toBe(victim);
        }
      }
      const interrupted = got.filter((turns) => turns.some((t) => t.reconnects > 0)).length;
      expect(interrupted).toBeGreaterThan(0);
      // no session served by two instances at once: no fenced write was ever refused
      for (const p of inst) expect(p.err).not.toContain('another instance owns it now');
      const takeovers = inst.filter((p) => p.alive).map((p) => (p.err.match(/taken over from /g) ?? []).length).reduce((a, b) => a + b, 0);
      expect(takeovers).toBe(moved.length);
      for (const c of convs) c.close();
    } finally {
      await proxy.stop();
      await Promise.all(inst.map((p) => p.kill()));
    }
  });

  test('a rolling restart (each instance drained, then started again) with zero failed turns', async () => {
    const ids = ['r1', 'r2', 'r3'];
    const inst = await Promise.all(ids.map((id) => instance(id, ['--drain-timeout', '5'])));
    const proxy = await Nginx.start({ instances: inst.map((p, i) => ({ id: ids[i]!, address: `127.0.0.1:${p.port}` })) });
    try {
      const wsUrl = proxy.url.replace('http', 'ws') + '/v1/ws';
      const n = 24;
      const convs = Array.from({ length: n }, () => new Conversation(wsUrl));
      await Promise.all(convs.map((c) => c.start()));
      let restarting = true;
      const restarts = (async () => {
        for (const p of inst) {
          expect(await p.stop()).toBe(0); // SIGTERM: a drain, then exit 0
          await p.run();
        }
        restarting = false;
      })();
      // conversations go on (turn after turn, starting over) until every instance was restarted
      const rounds: TurnResult[][][] = [];
      await Promise.all(
        convs.map(async (c, i) => {
          for (let round = 0; restarting || round === 0; round++) {
            const turns: TurnResult[] = [];
            for (let t = 0; t < TURNS; t++) turns.push(await c.turn(`${PROMPTS[t]} (#${i})`, samplingOf(i, t)));
            (rounds[i] ??= []).push(turns);
            // later rounds go on in the same session (another conversation): only the first is compared
            if (round === 0) expectSameAnswers(turns, want[i]!, `session ${i}`);
            if (!restarting) break;
          }
        }),
      );
      await restarts;
      expect(rounds.flat().length).toBeGreaterThanOrEqual(n);
      // sessions moved off each drained instance (taken over where they were resumed), and none was lost
      for (const id of ids) expect(convs.filter((c) => c.instances.slice(0, -1).includes(id)).length, `sessions moved off ${id}`).toBeGreaterThan(0);
      expect(convs.every((c) => c.errors.every((e) => ['WEFT_DRAINING', 'WEFT_SESSION_ELSEWHERE'].includes(e.code)))).toBe(true);
      for (const p of inst) expect(p.err).not.toContain('another instance owns it now');
    } finally {
      await proxy.stop();
      await Promise.all(inst.map((p) => p.kill()));
    }
  });
});

// ---- keys, Redis failures -------------------------------------------------------------------------

const metric = async (url: string, line: RegExp): Promise<number> => {
  const text = await (await fetch(`${url}/metrics`, { headers: { authorization: 'Bearer sk-shared-123' } })).text();
  const m = line.exec(text);
  return m ? Number(m[1]) : NaN;
};

describe('keys and failures across instances', () => {
  let keysFile: string;
  beforeAll(() => {
    const dir = mkdtempSync(join(tmpdir(), 'weft-keys-'));
    keysFile = join(dir, 'keys.json');
    writeFileSync(
      keysFile,
      JSON.stringify({
        keys: [
          { name: 'shared', key: 'sk-shared-123', tokens_per_minute: 300, max_tokens: 16 },
          { name: 'other', key: 'sk-other-1234' },
        ],
      }),
    );
  });

  test("a key's tokens per minute hold across instances (not N times the quota)", async () => {
    const inst = await Promise.all(['b1', 'b2', 'b3'].map((id) => instance(id, ['--api-keys', keysFile])));
    try {
      const refused = await Promise.all(
        inst.map(async (p, i) => {
          const c = new Conversation(p.wsUrl, { headers: { authorization: 'Bearer sk-shared-123' } });
          await c.start();
          for (let t = 0; t < 40; t++) {
            try {
              await c.turn(`Tell me something, number ${i}-${t}.`, { temperature: 0.7, seed: t, max_tokens: 64 });
            } catch (err) {
              if (String(err).includes('WEFT_KEY_BUDGET')) return true;
              throw err;
            }
          }
          return false;
        }),
      );
      expect(refused).toEqual([true, true, true]);
      // every token charged, on all instances together: the budget and what was in flight when it ran out
      const charged = (await Promise.all(inst.map((p) => metric(p.url, /^weft_key_tokens_total\{key="shared"\} (\S+)$/m)))).reduce((a, b) => a + b, 0);
      expect(charged).toBeGreaterThan(250);
      expect(charged).toBeLessThan(300 * 1.6); // three separate budgets would have allowed 900
    } finally {
      await Promise.all(inst.map((p) => p.kill()));
    }
  });

  test("a resume token is good only with its session's key, on any instance", async () => {
    const [x, y] = await Promise.all([instance('x1', ['--api-keys', keysFile]), instance('y1', ['--api-keys', keysFile])]);
    try {
      const c = new Conversation(x.wsUrl, { headers: { authorization: 'Bearer sk-other-1234' } });
      await c.start();
      await c.turn('Hello.', { max_tokens: 4 });
      const token = c.token!;
      await x.kill();
      const wrong = await Client.open(`${y.wsUrl}?resume=${token}`, { headers: { authorization: 'Bearer sk-shared-123' } });
      expect(await wrong.next()).toMatchObject({ type: 'error', code: 'WEFT_RESUME_UNKNOWN' });
      expect(await wrong.next()).toMatchObject({ type: 'session.created' });
      wrong.ws.close();
      expect(y.err).toContain('a resume token of key "other" was presented with key "shared"');
      // its own key still can (the record was not given away)
      const right = await Client.open(`${y.wsUrl}?resume=${token}`, { headers: { authorization: 'Bearer sk-other-1234' } });
      expect(await right.next()).toMatchObject({ type: 'session.resumed' });
      right.ws.close();
      // a forged token naming another instance is unknown too
      const forged = await Client.open(`${y.wsUrl}?resume=x1.${'A'.repeat(32)}`, { headers: { authorization: 'Bearer sk-other-1234' } });
      expect(await forged.next()).toMatchObject({ type: 'error', code: 'WEFT_RESUME_UNKNOWN' });
      forged.ws.close();
    } finally {
      await Promise.all([x.kill(), y.kill()]);
    }
  });

  test('Redis down: instances serve their own sessions and say so; when it is back they write them again and takeover works', async () => {
    const [a, b] = await Promise.all([instance('d1'), instance('d2')]);
    try {
      const c = new Conversation(a.wsUrl);
      await c.start();
      await c.turn('First.', { max_tokens: 8, temperature: 0 });
      await redis.stop();
      const t0 = Date.now();
      const r = await c.turn('Second.', { max_tokens: 8, temperature: 0 });
      expect(r.seqs.length).toBeGreaterThan(0);
      expect(Date.now() - t0).toBeLessThan(5000);
      const ready = await fetch(`${a.url}/readyz`);
      expect(ready.status).toBe(200);
      expect(await ready.text()).toContain('redis: down');
      expect(await metric(a.url, /^weft_redis_up (\S+)$/m)).toBe(0);
      // Redis comes back empty (no persistence): the instance writes its sessions again
      await redis.run();
      const end = Date.now() + 20_000;
      while (!a.err.includes("wrote this instance's") && Date.now() < end) await new Promise((res) => setTimeout(res, 50));
      expect(a.err, a.err).toContain('redis: unavailable');
      expect(a.err, a.err).toMatch(/wrote this instance's \d+ sessions again/);
      expect(await (await fetch(`${a.url}/readyz`)).text()).toContain('redis: up');
      // so that when a dies, b takes the session over
      await a.kill();
      const token = c.token!;
      c.close();
      const d = await Client.open(`${b.wsUrl}?resume=${token}`);
      expect(await d.next()).toMatchObject({ type: 'session.resumed' });
      d.ws.close();
    } finally {
      await Promise.all([a.kill(), b.kill()]);
    }
  });
});

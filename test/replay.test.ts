/**
 * Sessions that survive the network (issue 11, section 1): a TCP proxy between client and server
 * cuts the connection three times during a 256-token answer; the client resumes with the last
 * seq it got each time; the text equals an uninterrupted run's and every seq comes exactly once.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';
import { CuttingProxy } from './helpers/proxy.js';
import { Client, type Ev } from './helpers/ws-client.js';

let engine: Engine;
beforeAll(async () => {
  engine = await Engine.load(join(import.meta.dirname, '..', 'models', 'default'), { threads: 1, contexts: 2, kvMemoryBytes: 64 << 20 });
});
afterAll(() => engine.dispose());

describe.each(['ws', 'uws'] as const)('replay after reconnect over %s', (transport) => {
  let gw: Gateway;
  let proxy: CuttingProxy;
  let direct: string;
  beforeAll(async () => {
    gw = new Gateway({ transport, port: 0, sessionSampling: { ignoreEos: true } });
    gw.attach(engine);
    // no template stop string: answers run to max_tokens
    gw.format = Object.assign(Object.create(Object.getPrototypeOf(gw.format)), gw.format, { stopStrings: [] });
    const { port, url } = await gw.listen();
    direct = url.replace('http', 'ws') + '/v1/ws';
    proxy = await CuttingProxy.start(port);
  });
  afterAll(async () => {
    await proxy.close();
    await gw.close();
  });

  /** One 256-token answer over the proxy, cut after 40, 110 and 180 deltas; resumes with last_seq each time. */
  async function cutThreeTimes(sampling: object): Promise<{ text: string; seqs: number[]; done: Ev; resumed: Ev[] }> {
    const via = `ws://127.0.0.1:${proxy.port}/v1/ws`;
    let c = await Client.open(via);
    const created = await c.next((e) => e.type === 'session.created');
    c.send({ type: 'message.create', content: 'Tell me of the kings of Israel.', sampling: { ...sampling, max_tokens: 256 } });
    const responseId = (await c.next((e) => e.type === 'response.created')).response_id;
    const seqs: number[] = [];
    let text = '';
    const resumed: Ev[] = [];
    const cuts = [40, 110, 180];
    for (;;) {
      let e: Ev;
      try {
        e = await c.next((x) => x.response_id === responseId || x.type === 'error');
      } catch {
        // the connection was cut: resume with the last seq received (retry while the server has not seen the close yet)
        for (;;) {
          c = await Client.open(`${via}?resume=${encodeURIComponent(created.resume_token)}&last_seq=${seqs.at(-1) ?? -1}`);
          const first = await c.next();
          if (first.type === 'session.resumed') {
            resumed.push(first);
            break;
          }
          expect(first).toMatchObject({ type: 'error', code: 'WEFT_SESSION_CONNECTED' });
          await new Promise((r) => setTimeout(r, 20));
        }
        continue;
      }
      expect(e.type).not.toBe('error');
      if (e.type === 'response.delta') {
        seqs.push(e.seq);
        text += e.text;
        if (seqs.length === cuts[0]) {
          cuts.shift();
          proxy.cut();
        }
      } else if (e.type === 'response.done') {
        c.ws.close();
        return { text, seqs, done: e, resumed };
      }
    }
  }

  async function uninterrupted(sampling: object): Promise<string> {
    const c = await Client.open(direct);
    await c.next((e) => e.type === 'session.created');
    const r = await c.turn('Tell me of the kings of Israel.', { ...sampling, max_tokens: 256 });
    c.ws.close();
    expect(r.done.usage.completion_tokens).toBe(256);
    return r.text;
  }

  test.each([
    ['greedy', { temperature: 0 }],
    ['sampled with a seed', { temperature: 0.9, top_k: 40, seed: 1234 }],
  ])('%s: three cuts during a 256-token answer lose and repeat nothing', async (_, sampling) => {
    const r = await cutThreeTimes(sampling);
    expect(r.resumed.length).toBe(3);
    for (const e of r.resumed) expect(e.response).toMatchObject({ status: expect.stringMatching(/in_progress|done/) });
    expect(r.seqs).toEqual(Array.from({ length: 256 }, (_, i) => i));
    expect(r.done).toMatchObject({ finish_reason: 'length', usage: { completion_tokens: 256 } });
    expect(r.text).toBe(await uninterrupted(sampling));
  }, 60_000);

  test('a disconnected answer goes on into the replay log and pauses when it is full; last_seq errors are coded', async () => {
    const small = new Gateway({ transport, port: 0, sessionSampling: { ignoreEos: true }, replayBytes: 2048 });
    small.attach(engine);
    small.format = gw.format;
    const url = (await small.listen()).url.replace('http', 'ws') + '/v1/ws';
    try {
      const c = await Client.open(url);
      const created = await c.next((e) => e.type === 'session.created');
      c.send({ type: 'message.create', content: 'Tell me of Moses.', sampling: { max_tokens: 400 } });
      const id = (await c.next((e) => e.type === 'response.created')).response_id;
      await c.next((e) => e.type === 'response.delta' && e.seq === 60);
      c.ws.terminate();
      // the window (2 KiB: about 30 deltas with their frames) is full: the answer pauses at once
      const turn = () => [...small.sessions][0]!.currentTurn!;
      await new Promise((r) => setTimeout(r, 1000));
      const paused = turn().request.generated.length;
      expect(paused).toBeGreaterThanOrEqual(61);
      expect(paused).toBeLessThan(70);
      await new Promise((r) => setTimeout(r, 300));
      expect(turn().request.generated.length).toBe(paused);
      // last_seq 3 is no longer in the window: coded error with the whole text so far, then the live stream
      const r = await Client.open(`${url}?resume=${created.resume_token}&last_seq=3`);
      expect(await r.next()).toMatchObject({ type: 'session.resumed', response: { response_id: id, status: 'in_progress' } });
      const gap = await r.next();
      expect(gap).toMatchObject({ type: 'error', code: 'WEFT_REPLAY_GAP', response_id: id, next_seq: expect.any(Number) });
      expect(gap.text.length).toBeGreaterThan(0);
      const next = await r.next((e) => e.type === 'response.delta');
      expect(next.seq).toBe(gap.next_seq);
      // in-band: a last_seq beyond what was sent, and one that is not an integer
      r.send({ type: 'session.resume', last_seq: 100_000, event_id: 'far' });
      expect(await r.next((e) => e.event_id === 'far')).toMatchObject({ type: 'session.resumed', response: { response_id: id } });
      expect(await r.next((e) => e.event_id === 'far')).toMatchObject({ type: 'error', code: 'WEFT_BAD_ARGUMENT' });
      r.send({ type: 'session.resume', last_seq: -2, event_id: 'neg' });
      expect(await r.next((e) => e.event_id === 'neg')).toMatchObject({ type: 'error', code: 'WEFT_BAD_FRAME' });
      r.send({ type: 'response.cancel' });
      const done = await r.next((e) => e.type === 'response.done');
      expect(done.finish_reason).toBe('cancelled');
      r.ws.close();
      await r.waitClosed(); // the server has seen the close: the token is free to resume
      const bad = await Client.open(`${url}?resume=${created.resume_token}&last_seq=abc`);
      expect(await bad.next()).toMatchObject({ type: 'session.resumed' });
      expect(await bad.next()).toMatchObject({ type: 'error', code: 'WEFT_BAD_ARGUMENT' });
      bad.ws.close();
    } finally {
      await small.close();
    }
  }, 30_000);
});

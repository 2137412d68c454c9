/**
 * The scheduler on a tiny model: concurrent requests all progress, a request's output equals
 * single-sequence generate() with the same seed, cancellation, admission limits, backpressure,
 * chunked prefill, KV pressure.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine, type SamplingOptions } from '../src/engine/engine.js';
import { generate } from '../src/engine/generate.js';
import { Scheduler, type DoneEvent, type RequestEvent, type ScheduledRequest } from '../src/scheduler/scheduler.js';
import { TextStopper } from '../src/scheduler/text-stop.js';
import { TinyModels } from './helpers/models.js';

const models = new TinyModels();
let dir: string;
let engine: Engine;

beforeAll(async () => {
  dir = await models.make('sched', { arch: 'llama', dtype: 'f32', seed: 5, layers: 2, vocab: 512, maxPos: 256 });
  // 2 contexts × 1 thread: the machine's cores are not oversubscribed (with 2 threads per context on 2
  // cores, one context's step was seen starved for milliseconds while the other ran 60 steps back to back)
  engine = await Engine.load(dir, { threads: 1, contexts: 2, kvMemoryBytes: 64 << 20 });
});
afterAll(() => {
  engine.dispose();
  models.cleanup();
});

const sampling = (seed: number): SamplingOptions => ({ temperature: 0.9, topK: 40, topP: 0.95, seed, ignoreEos: true });
const prompt = (i: number, n = 6) => Array.from({ length: n }, (_, k) => (i * 37 + k * 11 + 3) % 500);

async function collect(req: ScheduledRequest, log?: { id: number; type: string }[]): Promise<{ tokens: number[]; done: DoneEvent }> {
  const tokens: number[] = [];
  for await (const ev of req) {
    log?.push({ id: req.id, type: ev.type });
    if (ev.type === 'token') tokens.push(ev.token);
    else return { tokens, done: ev };
  }
  throw new Error('no done event');
}

describe('scheduler', () => {
  test('N concurrent requests all progress, and each equals single-sequence generate() with its seed', async () => {
    const sched = new Scheduler(engine);
    const N = 12;
    const log: { id: number; type: string }[] = [];
    const reqs = Array.from({ length: N }, (_, i) => sched.submit({ tokens: prompt(i), sampling: sampling(100 + i), maxTokens: 64 }));
    const outs = await Promise.all(reqs.map((r) => collect(r, log)));
    const firstDone = log.findIndex((e) => e.type === 'done');
    for (const r of reqs) {
      const firstToken = log.findIndex((e) => e.id === r.id && e.type === 'token');
      expect(firstToken).toBeGreaterThanOrEqual(0);
      expect(firstToken).toBeLessThan(firstDone);
    }
    for (let i = 0; i < N; i++) {
      expect(outs[i]!.done.finishReason).toBe('length');
      expect(outs[i]!.done.usage).toEqual({ promptTokens: 6, cachedTokens: 0, completionTokens: 64 });
      const ref = await generate(engine, prompt(i), { ...sampling(100 + i), maxTokens: 64 });
      expect(outs[i]!.tokens).toEqual(ref.tokens);
    }
    expect(engine.stats().sequences).toBe(0);
    await sched.close();
  });

  test('chunked prefill: a long prompt does not stall generating streams', async () => {
    // one context: every step is one batch, so a stall would show
    const one = await Engine.load(dir, { threads: 2, contexts: 1, kvMemoryBytes: 16 << 20 });
    const sched = new Scheduler(one, { maxBatchTokens: 16 });
    const a = sched.submit({ tokens: prompt(1), sampling: sampling(1), maxTokens: 60 });
    // let a start generating
    const it = a[Symbol.asyncIterator]();
    await it.next();
    const long = prompt(2, 160);
    const b = sched.submit({ tokens: long, sampling: sampling(2), maxTokens: 4 });
    let aTokensBeforeB = 1;
    let bFirst = false;
    const bDone = (async () => {
      for await (const ev of b) {
        if (ev.type === 'token' && !bFirst) bFirst = true;
      }
    })();
    for (;;) {
      const { value, done } = await it.next();
      if (done || value.type === 'done') break;
      if (!bFirst) aTokensBeforeB++;
    }
    await bDone;
    // b needs ceil(160 / 15) steps of prefill (one slot of 16 goes to a's decode token); a decoded in each
    expect(aTokensBeforeB).toBeGreaterThanOrEqual(Math.ceil(160 / 15));
    const ref = await generate(engine, long, { ...sampling(2), maxTokens: 4 });
    expect(b.generated).toEqual(ref.tokens);
    await sched.close();
    one.dispose();
  });

  test('cancel ends a request within one step with finish reason cancelled and frees its KV', async () => {
    const sched = new Scheduler(engine);
    const r = sched.submit({ tokens: prompt(3), sampling: sampling(3), maxTokens: 200 });
    const other = sched.submit({ tokens: prompt(4), sampling: sampling(4), maxTokens: 20 });
    let n = 0;
    let done: DoneEvent | undefined;
    for await (const ev of r) {
      if (ev.type === 'token' && ++n === 3) r.cancel();
      if (ev.type === 'done') done = ev;
    }
    expect(done!.finishReason).toBe('cancelled');
    expect(r.generated.length).toBeLessThanOrEqual(4);
    expect((await collect(other)).done.finishReason).toBe('length');
    expect(engine.stats().sequences).toBe(0);
    // an AbortSignal cancels too, also before admission
    const ac = new AbortController();
    ac.abort();
    const c = sched.submit({ tokens: prompt(5), maxTokens: 5, signal: ac.signal });
    expect((await c.done).finishReason).toBe('cancelled');
    await sched.close();
  });

  test('admission queue: beyond maxQueue submit throws WEFT_OVERLOADED; queued requests run later', async () => {
    const sched = new Scheduler(engine, { maxActive: 1, maxQueue: 2 });
    const a = sched.submit({ tokens: prompt(1), sampling: sampling(1), maxTokens: 8 });
    const b = sched.submit({ tokens: prompt(2), sampling: sampling(2), maxTokens: 8 });
    const c = sched.submit({ tokens: prompt(3), sampling: sampling(3), maxTokens: 8 });
    let err: unknown;
    try {
      sched.submit({ tokens: prompt(4), maxTokens: 8 });
    } catch (e) {
      err = e;
    }
    expect((err as { code?: string })?.code).toBe('WEFT_OVERLOADED');
    const outs = await Promise.all([a, b, c].map((r) => collect(r)));
    expect(outs.map((o) => o.done.finishReason)).toEqual(['length', 'length', 'length']);
    expect(outs[2]!.done.timing.queueMs).toBeGreaterThan(0);
    // bad requests are refused at submit
    expect(() => sched.submit({ tokens: [], maxTokens: 8 })).toThrow(/non-empty/);
    expect(() => sched.submit({ tokens: [9999] })).toThrow(expect.objectContaining({ code: 'WEFT_TOKEN_OUT_OF_RANGE' }));
    expect(() => sched.submit({ tokens: prompt(1, 300) })).toThrow(expect.objectContaining({ code: 'WEFT_CONTEXT_OVERFLOW' }));
    await sched.close();
  });

  test('a blocked consumer is skipped (does not slow the others) and resumes when it drains', async () => {
    const sched = new Scheduler(engine, { maxBufferedEvents: 4 });
    let blocked = true;
    const slow = sched.submit({ tokens: prompt(7), sampling: sampling(7), maxTokens: 64 }); // nobody reads it yet
    const hooked = sched.submit({ tokens: prompt(8), sampling: sampling(8), maxTokens: 64, isBlocked: () => blocked });
    const others = Array.from({ length: 4 }, (_, i) => sched.submit({ tokens: prompt(10 + i), sampling: sampling(10 + i), maxTokens: 64 }));
    const hookedTokens: number[] = [];
    const hookedDone = (async () => {
      for await (const ev of hooked) if (ev.type === 'token') hookedTokens.push(ev.token);
    })();
    const outs = await Promise.all(others.map((r) => collect(r)));
    for (const o of outs) expect(o.tokens.length).toBe(64);
    expect(slow.generated.length).toBeLessThanOrEqual(4);
    expect(hooked.generated.length).toBeLessThanOrEqual(1);
    blocked = false;
    sched.wake();
    const slowOut = await collect(slow);
    await hookedDone;
    expect(slowOut.tokens).toEqual((await generate(engine, prompt(7), { ...sampling(7), maxTokens: 64 })).tokens);
    expect(hookedTokens).toEqual((await generate(engine, prompt(8), { ...sampling(8), maxTokens: 64 })).tokens);
    await sched.close();
  });

  test('a backpressure hook that throws counts as not blocked and breaks nothing', async () => {
    const sched = new Scheduler(engine);
    const r = sched.submit({ tokens: prompt(4), sampling: sampling(4), maxTokens: 16, isBlocked: () => { throw new Error('the transport is gone'); } });
    const out = await collect(r);
    expect(out.done.finishReason).toBe('length');
    expect(out.tokens).toEqual((await generate(engine, prompt(4), { ...sampling(4), maxTokens: 16 })).tokens);
    await sched.close();
  });

  test('stop tokens and stop strings finish with stop; text is streamed', async () => {
    const sched = new Scheduler(engine);
    const ref = await generate(engine, prompt(9), { ...sampling(9), maxTokens: 20 });
    const stopTok = ref.tokens[5]!;
    const r = sched.submit({ tokens: prompt(9), sampling: { ...sampling(9), stopTokens: [stopTok] }, maxTokens: 20 });
    const out = await collect(r);
    expect(out.done.finishReason).toBe('stop');
    expect(out.tokens).toEqual(ref.tokens.slice(0, ref.tokens.indexOf(stopTok)));

    const tok = engine.tokenizer!;
    const full = tok.decode(ref.tokens);
    const needle = full.slice(8, 10);
    const s = sched.submit({ tokens: prompt(9), sampling: sampling(9), maxTokens: 20, decoder: tok.createDecoder(), stopStrings: [needle] });
    let text = '';
    let done: DoneEvent | undefined;
    for await (const ev of s as AsyncIterable<RequestEvent>) {
      if (ev.type === 'token') text += ev.text;
      else done = ev;
    }
    text += done!.text ?? '';
    expect(done!.finishReason).toBe('stop');
    expect(text).toBe(full.slice(0, full.indexOf(needle)));
    await sched.close();
  });

  test('pipelining: the next step is launched before a step\'s tokens are delivered; listen() gets the tokens generate() gives', async () => {
    const sched = new Scheduler(engine);
    const r = sched.submit({ tokens: prompt(3), sampling: sampling(3), maxTokens: 8 });
    const tokens: number[] = [];
    const stepsAtDelivery: number[] = [];
    const done = await new Promise<DoneEvent>((resolve) =>
      r.listen((ev) => {
        if (ev.type === 'done') return resolve(ev);
        tokens.push(ev.token);
        stepsAtDelivery.push(sched.counters.steps);
      }),
    );
    expect(done.finishReason).toBe('length');
    // token i comes from step i + 1 (step 1 is the prefill); step i + 2 is already running when it is delivered
    expect(stepsAtDelivery).toEqual([2, 3, 4, 5, 6, 7, 8, 8]);
    expect(tokens).toEqual((await generate(engine, prompt(3), { ...sampling(3), maxTokens: 8 })).tokens);
    expect(() => r.listen(() => undefined)).toThrow(/one listener/);
    await sched.close();
  });

  test('TextStopper holds back a possible stop-string prefix', () => {
    const pieces = ['Hel', 'lo\n', 'x'];
    let i = 0;
    const dec = { push: () => pieces[i++]!, flush: () => '' };
    const st = new TextStopper(dec, ['\n']);
    expect(st.push(0)).toEqual({ text: 'Hel', stop: false });
    expect(st.push(0)).toEqual({ text: 'lo', stop: true });
    i = 0;
    const st2 = new TextStopper({ push: () => ['ab', 'c', 'd'][i++]!, flush: () => '' }, ['bcx']);
    expect(st2.push(0).text).toBe('a');
    expect(st2.push(0).text).toBe('');
    expect(st2.push(0).text).toBe('bcd');
  });

  test('TextStopper holds back exactly the longest stop-string prefix (vs a brute-force reference), in linear time per token', () => {
    let seed = 3;
    const rnd = (n: number) => ((seed = (seed * 1103515245 + 12345) >>> 0) % n);
    const word = (len: number) => Array.from({ length: len }, () => 'ab'[rnd(2)]).join('');
    for (let round = 0; round < 300; round++) {
      const stops = Array.from({ length: 1 + rnd(3) }, () => word(1 + rnd(6)));
      const pieces = Array.from({ length: 12 }, () => word(rnd(4)));
      let i = 0;
      const st = new TextStopper({ push: () => pieces[i++]!, flush: () => '' }, stops);
      // reference: hold the longest suffix of the pending text that is a proper prefix of a stop string
      let pending = '';
      for (let k = 0; k < pieces.length; k++) {
        pending += pieces[k];
        const got = st.push(0);
        const at = Math.min(...stops.map((x) => pending.indexOf(x)).filter((x) => x >= 0));
        if (Number.isFinite(at)) {
          expect(got).toEqual({ text: pending.slice(0, at), stop: true });
          break;
        }
        let hold = 0;
        for (const x of stops) for (let n = 1; n < x.length; n++) if (pending.endsWith(x.slice(0, n))) hold = Math.max(hold, n);
        expect(got, JSON.stringify({ stops, pieces, k })).toEqual({ text: pending.slice(0, pending.length - hold), stop: false });
        pending = pending.slice(pending.length - hold);
      }
    }
    // the worst case for a quadratic hold-back scan: 16 stop strings of 1,024 characters and a long held prefix
    const stops = Array.from({ length: 16 }, (_, j) => 'ab'.repeat(511) + 'c' + String.fromCharCode(100 + j));
    const st = new TextStopper({ push: () => 'ab', flush: () => '' }, stops);
    const t0 = performance.now();
    for (let k = 0; k < 1000; k++) st.push(0);
    expect(performance.now() - t0).toBeLessThan(300); // ~1,000 tokens: well under 0.3 ms each
  });
});

describe('device failures', () => {
  test('a step that times out on the device (WEFT_DEVICE_TIMEOUT) ends each of its requests with that code, no one-by-one retries; later requests run', async () => {
    // the CPU backend has no device to time out: the step fails as the CUDA backend's would.
    // One context, so that the three requests share every step.
    const one = await Engine.load(dir, { threads: 1, contexts: 1, kvMemoryBytes: 16 << 20 });
    const sched = new Scheduler(one);
    const real = one.step.bind(one);
    let calls = 0, failAt = 3;
    const { WeftError } = await import('../src/errors.js');
    one.step = async (lease, entries) => {
      calls++;
      if (calls === failAt) throw new WeftError('WEFT_DEVICE_TIMEOUT', "a step's GPU work did not finish within 10000 ms (the watchdog)");
      return real(lease, entries);
    };
    try {
      const reqs = Array.from({ length: 3 }, (_, i) => sched.submit({ tokens: prompt(i), sampling: sampling(7 + i), maxTokens: 16 }));
      const outs = await Promise.all(reqs.map((r) => collect(r)));
      for (const o of outs) {
        expect(o.done.finishReason).toBe('error');
        expect(o.done.error?.code).toBe('WEFT_DEVICE_TIMEOUT');
        expect(o.tokens.length).toBeLessThan(16);
      }
      expect(calls).toBe(failAt); // nothing retried after the failed step
      failAt = -1;
      const after = await collect(sched.submit({ tokens: prompt(9), sampling: sampling(9), maxTokens: 8 }));
      expect(after.done.finishReason).toBe('length');
      expect(after.tokens).toEqual((await generate(one, prompt(9), { ...sampling(9), maxTokens: 8 })).tokens);
      expect(one.stats().sequences).toBe(0);
    } finally {
      one.dispose();
    }
  });
});

describe('KV pressure', () => {
  let small: Engine;
  beforeAll(async () => {
    const bytesPerToken = engine.stats().kvBytesPerToken;
    // 20 pages of 16 tokens
    small = await Engine.load(dir, { threads: 2, contexts: 1, kvMemoryBytes: 20 * 16 * bytesPerToken });
  });
  afterAll(() => small.dispose());

  test('idle sequences are parked (LRU) to make room; with nothing to park the newest request fails with WEFT_KV_EXHAUSTED', async () => {
    expect(small.stats().kvPagesTotal).toBe(20);
    const sched = new Scheduler(small);
    const idle = small.createSequence(sampling(1));
    const first = sched.submit({ sequence: idle, tokens: prompt(1, 190), sampling: sampling(1), maxTokens: 2 });
    expect((await first.done).finishReason).toBe('length');
    sched.release(idle);
    expect(idle.info().numPages).toBeGreaterThanOrEqual(12);
    const r = sched.submit({ tokens: prompt(2, 100), sampling: sampling(2), maxTokens: 60 });
    const out = await collect(r);
    expect(out.done.finishReason).toBe('length');
    expect(idle.info().parked).toBe(true);
    expect(sched.counters.kvParks).toBeGreaterThanOrEqual(1);
    // the next turn on the parked sequence restores it
    const again = sched.submit({ sequence: idle, tokens: prompt(3, 4), sampling: sampling(3), maxTokens: 4 });
    const againOut = await collect(again);
    expect(againOut.done.error).toBeUndefined();
    expect(againOut.done.finishReason).toBe('length');
    expect(againOut.done.usage.cachedTokens).toBe(191);
    expect(idle.info().parked).toBe(false);
    idle.free();
    sched.forget(idle);

    // two requests that cannot both fit: the newer one fails, the older one finishes
    const a = sched.submit({ tokens: prompt(4, 100), sampling: sampling(4), maxTokens: 120 });
    const b = sched.submit({ tokens: prompt(5, 100), sampling: sampling(5), maxTokens: 120 });
    const [oa, ob] = await Promise.all([collect(a), collect(b)]);
    expect(oa.done.finishReason).toBe('length');
    expect(ob.done.finishReason).toBe('error');
    expect(ob.done.error?.code).toBe('WEFT_KV_EXHAUSTED');
    expect(small.stats().kvPagesFree).toBe(20);
    await sched.close();
  });
});

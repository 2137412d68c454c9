/**
 * Fair share across tenants on the default model: decode slots go to tenants in proportion to
 * their weights (a tenant with many streams cannot starve one with few, and no slot stays empty
 * while a request could run), admission is fair across tenants, and a request's tokens do not
 * change with the contention it ran under.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { generate } from '../src/engine/generate.js';
import { Scheduler, type ScheduledRequest, type SubmitOptions } from '../src/scheduler/scheduler.js';

const DIR = join(import.meta.dirname, '..', 'models', 'default');
let engine: Engine;

beforeAll(async () => {
  // one context: steps run one after another, so each step's batch can be read whole
  engine = await Engine.load(DIR, { threads: 2, contexts: 1, kvMemoryBytes: 64 << 20 });
});
afterAll(() => engine.dispose());

const greedy = { temperature: 0, ignoreEos: true };
const prompt = (i: number, n = 6) => Array.from({ length: n }, (_, k) => (i * 37 + k * 11 + 3) % 4000);

/** One settled step as its consumers saw it. */
interface Step {
  /** Sequences in the step's batch (onStep). */
  sequences: number;
  /** Tokens delivered, by tenant. */
  tokens: Map<string, number>;
  /** Requests that got a token. */
  ran: Set<number>;
  /** Requests that had their first token before this step / that were done before it. */
  startedBefore: number;
  doneBefore: number;
  dones: number;
  /** When its events were delivered. */
  at: number;
}

/** Watches every step of a scheduler (one context) and the requests submitted through it. */
function watch(sched: Scheduler) {
  const steps: Step[] = [];
  let started = 0;
  let done = 0;
  const fresh = (): Step => ({ sequences: 0, tokens: new Map(), ran: new Set(), startedBefore: started, doneBefore: done, dones: 0, at: 0 });
  let cur = fresh();
  sched.onStep = (s) => {
    cur.sequences = s.sequences;
  };
  sched.onDelivered = () => {
    cur.at = performance.now();
    steps.push(cur);
    cur = fresh();
  };
  /** Submits and listens: the request's tokens, and the steps of its first token and of its end. */
  const submit = (opts: SubmitOptions) => {
    const req = sched.submit(opts);
    const out = { req, tokens: [] as number[], firstStep: -1, doneStep: -1, done: null as Promise<void> | null };
    out.done = new Promise<void>((resolve) =>
      req.listen((ev) => {
        if (ev.type === 'token') {
          if (ev.index === 0) {
            started++;
            out.firstStep = steps.length;
          }
          out.tokens.push(ev.token);
          cur.ran.add(req.id);
          cur.tokens.set(req.tenant, (cur.tokens.get(req.tenant) ?? 0) + 1);
        } else {
          expect(ev.finishReason).toBe('length');
          done++;
          cur.dones++;
          out.doneStep = steps.length;
          resolve();
        }
      }),
    );
    return out;
  };
  return { steps, submit };
}

/** Tokens per second of each tenant over the steps in which all `total` requests streamed. */
function rates(steps: Step[], total: number): { window: number; perS: Map<string, number> } {
  const inWindow = steps.map((s, i) => ({ s, i })).filter(({ s }) => s.startedBefore === total && s.doneBefore === 0 && s.dones === 0);
  const first = inWindow[0]!.i;
  const last = inWindow[inWindow.length - 1]!.i;
  const seconds = (steps[last]!.at - steps[first - 1]!.at) / 1000;
  const perS = new Map<string, number>();
  for (const { s } of inWindow) for (const [t, n] of s.tokens) perS.set(t, (perS.get(t) ?? 0) + n / seconds);
  return { window: inWindow.length, perS };
}

describe('fair share across tenants', () => {
  test('equal weights, A with 24 streams and B with 2, batch 8: both of B\'s run in every step, and every step is full', async () => {
    const sched = new Scheduler(engine, { maxBatchSequences: 8, maxActive: 64 });
    const w = watch(sched);
    const a = Array.from({ length: 24 }, (_, i) => w.submit({ tenant: 'A', tokens: prompt(i), sampling: greedy, maxTokens: 16 }));
    const b = [0, 1].map((i) => w.submit({ tenant: 'B', tokens: prompt(100 + i), sampling: greedy, maxTokens: 24 }));
    await Promise.all([...a, ...b].map((o) => o.done));
    const from = Math.max(...b.map((o) => o.firstStep));
    const to = Math.min(...b.map((o) => o.doneStep));
    expect(to - from).toBeGreaterThanOrEqual(20);
    for (let s = from; s <= to; s++) for (const o of b) expect(w.steps[s]!.ran.has(o.req.id), `step ${s}`).toBe(true);
    // work-conserving: every step runs as many sequences as there are requests left, up to 8
    w.steps.forEach((s, i) => expect(s.sequences, `step ${i}`).toBe(Math.min(8, 26 - s.doneBefore)));
    const stats = sched.tenantStats();
    expect(stats.get('A')).toEqual({ weight: 1, active: 0, queued: 0, decodeTokens: 24 * 16 });
    expect(stats.get('B')).toEqual({ weight: 1, active: 0, queued: 0, decodeTokens: 2 * 24 });
    await sched.close();
  });

  test('equal weights, A with 24 streams and B with 8, batch 8: B\'s tokens/s is within 25% of A\'s', async () => {
    const sched = new Scheduler(engine, { maxBatchSequences: 8, maxActive: 64 });
    const w = watch(sched);
    const all = [
      ...Array.from({ length: 24 }, (_, i) => w.submit({ tenant: 'A', tokens: prompt(i), sampling: greedy, maxTokens: 40 })),
      ...Array.from({ length: 8 }, (_, i) => w.submit({ tenant: 'B', tokens: prompt(100 + i), sampling: greedy, maxTokens: 40 })),
    ];
    await Promise.all(all.map((o) => o.done));
    const { window, perS } = rates(w.steps, 32);
    expect(window).toBeGreaterThanOrEqual(20);
    const ratio = perS.get('B')! / perS.get('A')!;
    expect(ratio, `B ${perS.get('B')!.toFixed(0)} vs A ${perS.get('A')!.toFixed(0)} tokens/s over ${window} steps`).toBeGreaterThan(0.75);
    expect(ratio).toBeLessThan(1.25);
    await sched.close();
  });

  test('weights 3:1, both backlogged: tokens split 3:1 (within 25%)', async () => {
    const sched = new Scheduler(engine, { maxBatchSequences: 8, maxActive: 64 });
    const w = watch(sched);
    const all = [
      ...Array.from({ length: 12 }, (_, i) => w.submit({ tenant: 'A', weight: 3, tokens: prompt(i), sampling: greedy, maxTokens: 32 })),
      ...Array.from({ length: 12 }, (_, i) => w.submit({ tenant: 'B', weight: 1, tokens: prompt(100 + i), sampling: greedy, maxTokens: 32 })),
    ];
    await Promise.all(all.map((o) => o.done));
    const { window, perS } = rates(w.steps, 24);
    expect(window).toBeGreaterThanOrEqual(20);
    const ratio = perS.get('A')! / perS.get('B')!;
    expect(ratio, `A ${perS.get('A')!.toFixed(0)} vs B ${perS.get('B')!.toFixed(0)} tokens/s over ${window} steps`).toBeGreaterThan(3 * 0.75);
    expect(ratio).toBeLessThan(3 * 1.25);
    expect(sched.tenantStats().get('A')!.weight).toBe(3);
    await sched.close();
  });

  test('admission is fair across tenants: B\'s requests queued behind 16 of A\'s are admitted in the next wave; one tenant is FIFO', async () => {
    const sched = new Scheduler(engine, { maxActive: 4 });
    const w = watch(sched);
    const a = Array.from({ length: 20 }, (_, i) => w.submit({ tenant: 'A', tokens: prompt(i), sampling: greedy, maxTokens: 8 }));
    const b = [0, 1].map((i) => w.submit({ tenant: 'B', tokens: prompt(100 + i), sampling: greedy, maxTokens: 8 }));
    // A holds the 4 active slots: B goes first, then A's in FIFO order
    expect(b.map((o) => sched.queuePosition(o.req))).toEqual([0, 1]);
    expect(a.map((o) => sched.queuePosition(o.req))).toEqual([-1, -1, -1, -1, ...Array.from({ length: 16 }, (_, i) => i + 2)]);
    expect(sched.tenantStats().get('A')).toMatchObject({ active: 4, queued: 16 });
    expect(sched.tenantStats().get('B')).toMatchObject({ active: 0, queued: 2 });
    await Promise.all([...a, ...b].map((o) => o.done));
    // A's first four end together; the freed slots go A, B, A, B (ties to the oldest queued)
    for (const o of b) expect(o.firstStep).toBeLessThanOrEqual(a[5]!.firstStep);
    expect(Math.max(...b.map((o) => o.firstStep))).toBeLessThan(a[6]!.firstStep);
    for (let i = 1; i < 20; i++) expect(a[i]!.firstStep).toBeGreaterThanOrEqual(a[i - 1]!.firstStep);
    await sched.close();

    // one tenant: FIFO, as before tenants
    const one = new Scheduler(engine, { maxActive: 2 });
    const w1 = watch(one);
    const reqs = Array.from({ length: 8 }, (_, i) => w1.submit({ tokens: prompt(i), sampling: greedy, maxTokens: 4 }));
    expect(reqs.map((o) => one.queuePosition(o.req))).toEqual([-1, -1, 0, 1, 2, 3, 4, 5]);
    await Promise.all(reqs.map((o) => o.done));
    for (let i = 2; i < 8; i++) expect(reqs[i]!.firstStep).toBeGreaterThan(reqs[i - 2]!.firstStep);
    expect([...one.tenantStats().keys()]).toEqual(['']);
    await one.close();
  });

  test('admission goes by (active + 1) / weight; weight and tenant are validated', async () => {
    const sched = new Scheduler(engine, { maxActive: 2 });
    const busy = [0, 1].map((i) => sched.submit({ tenant: 'A', tokens: prompt(i), maxTokens: 200, sampling: greedy }));
    const a = [2, 3].map((i) => sched.submit({ tenant: 'A', tokens: prompt(i), maxTokens: 4 }));
    const c = [4, 5, 6].map((i) => sched.submit({ tenant: 'C', tokens: prompt(i), maxTokens: 4 }));
    // C (weight 1) at 1, 2, 3 against A's 3, 4: C, C, then the tie at 3 goes to A's older request
    expect([...c, ...a].map((r) => sched.queuePosition(r))).toEqual([0, 1, 3, 2, 4]);
    // the latest submit sets C's weight: 2 puts all of C's (0.5, 1, 1.5, 2) before A's (3, 4)
    const c4 = sched.submit({ tenant: 'C', weight: 2, tokens: prompt(7), maxTokens: 4 });
    expect([...c, c4, ...a].map((r) => sched.queuePosition(r))).toEqual([0, 1, 2, 3, 4, 5]);
    for (const weight of [0, -1, Number.NaN, Number.POSITIVE_INFINITY, '2' as unknown as number]) {
      expect(() => sched.submit({ tenant: 'C', weight, tokens: prompt(1), maxTokens: 4 })).toThrow(expect.objectContaining({ code: 'WEFT_BAD_ARGUMENT' }));
    }
    expect(() => sched.submit({ tenant: 5 as unknown as string, tokens: prompt(1), maxTokens: 4 })).toThrow(expect.objectContaining({ code: 'WEFT_BAD_ARGUMENT' }));
    expect(sched.tenantStats().get('C')).toMatchObject({ weight: 2, active: 0, queued: 4 });
    await sched.close();
    for (const r of [...busy, ...a, ...c, c4]) expect((await r.done).finishReason).toBe('cancelled');
    expect(sched.tenantStats().get('A')).toMatchObject({ active: 0, queued: 0 });
  });

  test('a request\'s greedy tokens are the same with and without contention from another tenant', async () => {
    const refs = await Promise.all([0, 1].map((i) => generate(engine, prompt(200 + i), { ...greedy, maxTokens: 24 })));
    const alone = new Scheduler(engine, { maxBatchSequences: 8, maxActive: 64 });
    const solo = await Promise.all([0, 1].map((i) => tokensOf(alone.submit({ tenant: 'B', tokens: prompt(200 + i), sampling: greedy, maxTokens: 24 }))));
    await alone.close();
    const busy = new Scheduler(engine, { maxBatchSequences: 8, maxActive: 64 });
    const others = Array.from({ length: 16 }, (_, i) => busy.submit({ tenant: 'A', tokens: prompt(i, 3 + (i % 5)), sampling: greedy, maxTokens: 20 + (i % 7) }));
    const contended = await Promise.all([0, 1].map((i) => tokensOf(busy.submit({ tenant: 'B', tokens: prompt(200 + i), sampling: greedy, maxTokens: 24 }))));
    const othersOut = await Promise.all(others.map(tokensOf));
    expect(solo).toEqual(refs.map((r) => r.tokens));
    expect(contended).toEqual(solo);
    expect(othersOut[3]).toEqual((await generate(engine, prompt(3, 6), { ...greedy, maxTokens: 23 })).tokens);
    await busy.close();
  });
});

async function tokensOf(req: ScheduledRequest): Promise<number[]> {
  const tokens: number[] = [];
  for await (const ev of req) if (ev.type === 'token') tokens.push(ev.token);
  return tokens;
}

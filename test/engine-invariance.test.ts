/**
 * Invariants serving engines get wrong: same seed → same tokens; a sequence's output does not
 * depend on its batch, the context that ran it, or concurrency; chunked = one-shot; a follow-up
 * turn on cached KV = a full re-prefill; park/restore and truncate keep the continuation.
 */
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine, type SamplingOptions, type Sequence } from '../src/engine/engine.js';
import { TinyModels, argmax } from './helpers/models.js';

const models = new TinyModels();
let engine: Engine;
const PROMPT = [12, 200, 7, 91, 33, 480, 5, 18];
const SAMPLING: SamplingOptions = { temperature: 0.9, topP: 0.95, topK: 40, seed: 1234, ignoreEos: true };

beforeAll(async () => {
  const dir = await models.make('inv', { arch: 'llama', dtype: 'f16', seed: 21, layers: 2, vocab: 512 });
  engine = await Engine.load(dir, { threads: 2, contexts: 2, kvMemoryBytes: 64 << 20 });
});
afterAll(() => {
  engine.dispose();
  models.cleanup();
});

/** Prefill then decode n tokens one step at a time on the given context. */
async function generate(seq: Sequence, prompt: number[], n: number, context = 0): Promise<number[]> {
  const out: number[] = [];
  let next = prompt;
  // a fixed context, bypassing the pool (the native layer still refuses a busy context)
  const lease = { index: context, release: () => {} };
  for (let i = 0; i < n; i++) {
    const [r] = await engine.step(lease, [{ sequence: seq, tokens: next, sample: true }]);
    out.push(r!.token!);
    next = [r!.token!];
  }
  return out;
}

describe('determinism and invariance', () => {
  test('the same seed gives the same tokens; another seed differs', async () => {
    const a = engine.createSequence(SAMPLING);
    const b = engine.createSequence(SAMPLING);
    const c = engine.createSequence({ ...SAMPLING, seed: 99 });
    const ta = await generate(a, PROMPT, 24);
    const tb = await generate(b, PROMPT, 24);
    const tc = await generate(c, PROMPT, 24);
    expect(tb).toEqual(ta);
    expect(tc).not.toEqual(ta);
    [a, b, c].forEach((s) => s.free());
  });

  test('a sequence alone and in a batch of 16 gives the same tokens and logits', async () => {
    const alone = engine.createSequence(SAMPLING);
    const soloTokens = await generate(alone, PROMPT, 12);
    alone.free();

    const seqs = Array.from({ length: 16 }, (_, i) => engine.createSequence(i === 5 ? SAMPLING : { ...SAMPLING, seed: 500 + i }));
    const prompts = seqs.map((_, i) => (i === 5 ? PROMPT : PROMPT.map((t) => (t * (i + 3)) % 512).slice(0, 3 + (i % 6))));
    const next = prompts.slice();
    const got: number[] = [];
    for (let step = 0; step < 12; step++) {
      const results = await engine.run(seqs.map((s, i) => ({ sequence: s, tokens: next[i]!, sample: true })));
      results.forEach((r, i) => (next[i] = [r.token!]));
      got.push(results[5]!.token!);
    }
    expect(got).toEqual(soloTokens);
    seqs.forEach((s) => s.free());
  });

  test('output does not depend on which context ran it, or on concurrent steps', async () => {
    const a = engine.createSequence(SAMPLING);
    const onZero = await generate(a, PROMPT, 10, 0);
    const b = engine.createSequence(SAMPLING);
    const onOne = await generate(b, PROMPT, 10, 1);
    expect(onOne).toEqual(onZero);
    // two contexts stepping at the same time
    const c = engine.createSequence(SAMPLING);
    const d = engine.createSequence(SAMPLING);
    const [tc, td] = await Promise.all([generate(c, PROMPT, 10, 0), generate(d, PROMPT, 10, 1)]);
    expect(tc).toEqual(onZero);
    expect(td).toEqual(onZero);
    [a, b, c, d].forEach((s) => s.free());
  });

  test('a follow-up turn on cached KV equals a full re-prefill of the transcript', async () => {
    const chat = engine.createSequence({ seed: 1, ignoreEos: true });
    const turn1 = await generate(chat, PROMPT, 6);
    const turn2 = [44, 45, 46, 47];
    // feed the last generated token, then the new turn, in one step
    const [cached] = await engine.run([{ sequence: chat, tokens: [turn1.at(-1)!, ...turn2], logits: 'last' }]);
    const fresh = engine.createSequence();
    const transcript = [...PROMPT, ...turn1, ...turn2];
    const [full] = await engine.run([{ sequence: fresh, tokens: transcript, logits: 'last' }]);
    expect(chat.numTokens).toBe(transcript.length);
    expect(cached!.logits).toEqual(full!.logits);
    chat.free();
    fresh.free();
  });

  test('park/restore and truncate keep the continuation', async () => {
    const ref = engine.createSequence(SAMPLING);
    const expected = await generate(ref, PROMPT, 16);
    ref.free();

    const s = engine.createSequence(SAMPLING);
    const first = await generate(s, PROMPT, 8);
    const free = engine.stats().kvPagesFree;
    await s.park();
    expect(s.info().parked).toBe(true);
    expect(engine.stats().kvPagesFree).toBeGreaterThan(free);
    await s.restore();
    const rest = await generate(s, [first.at(-1)!], 8);
    expect([...first, ...rest]).toEqual(expected);

    // truncate back to the prompt and regenerate greedily: same as a fresh greedy run
    const g = engine.createSequence({ ignoreEos: true });
    const greedy = await generate(g, PROMPT, 5);
    g.truncate(PROMPT.length - 1);
    g.setSampling({ ignoreEos: true });
    const again = await generate(g, [PROMPT.at(-1)!], 5);
    expect(again).toEqual(greedy);
    s.free();
    g.free();
  });
});

describe('sampling', () => {
  test('greedy is the argmax; logprobs are the log-softmax of the logits', async () => {
    const s = engine.createSequence({ logprobs: 5, ignoreEos: true });
    const [r] = await engine.run([{ sequence: s, tokens: PROMPT, logits: 'last', sample: true }]);
    const logits = r!.logits!;
    expect(r!.token).toBe(argmax(logits));
    let m = -Infinity;
    for (const v of logits) m = Math.max(m, v);
    let z = 0;
    for (const v of logits) z += Math.exp(v - m);
    const lse = m + Math.log(z);
    expect(r!.logprob!).toBeCloseTo(logits[r!.token!]! - lse, 4);
    expect(r!.top!.length).toBe(5);
    expect(r!.top![0]!.token).toBe(r!.token);
    for (let i = 1; i < 5; i++) expect(r!.top![i]!.logprob).toBeLessThanOrEqual(r!.top![i - 1]!.logprob);
    for (const t of r!.top!) expect(t.logprob).toBeCloseTo(logits[t.token]! - lse, 4);
    s.free();
  });

  test('top_k = 1 and min_p = 1 reduce to greedy; stop tokens are flagged', async () => {
    const greedy = engine.createSequence({ ignoreEos: true });
    const want = await generate(greedy, PROMPT, 6);
    const k1 = engine.createSequence({ temperature: 1.5, topK: 1, seed: 3, ignoreEos: true });
    expect(await generate(k1, PROMPT, 6)).toEqual(want);
    const p1 = engine.createSequence({ temperature: 1.5, minP: 1, seed: 3, ignoreEos: true });
    expect(await generate(p1, PROMPT, 6)).toEqual(want);
    const stopper = engine.createSequence({ stopTokens: [want[2]!], ignoreEos: true });
    const [r0] = await engine.run([{ sequence: stopper, tokens: PROMPT, sample: true }]);
    expect(r0!.stop).toBe(want[0] === want[2]);
    const [r1] = await engine.run([{ sequence: stopper, tokens: [want[0]!], sample: true }]);
    const [r2] = await engine.run([{ sequence: stopper, tokens: [want[1]!], sample: true }]);
    expect(r2!.token).toBe(want[2]);
    expect(r2!.stop).toBe(true);
    expect(r1!.token).toBe(want[1]);
    [greedy, k1, p1, stopper].forEach((s) => s.free());
  });

  test('penalties change the choice the way they should', async () => {
    const plain = engine.createSequence({ ignoreEos: true });
    const [r] = await engine.run([{ sequence: plain, tokens: PROMPT, logits: 'last', sample: true }]);
    const top = r!.token!;
    // a huge presence penalty on a token sampled before pushes it away next time
    const pen = engine.createSequence({ presencePenalty: 100, ignoreEos: true });
    const [a] = await engine.run([{ sequence: pen, tokens: PROMPT, sample: true }]);
    expect(a!.token).toBe(top);
    pen.truncate(PROMPT.length - 1);
    const [b] = await engine.run([{ sequence: pen, tokens: [PROMPT.at(-1)!], sample: true }]);
    expect(b!.token).not.toBe(top);
    // a repetition penalty applies to prompt tokens: when the argmax is in the prompt it moves
    const rep = engine.createSequence({ repetitionPenalty: 100, ignoreEos: true });
    const [c] = await engine.run([{ sequence: rep, tokens: [...PROMPT, top], sample: true }]);
    expect([...PROMPT, top]).not.toContain(c!.token);
    [plain, pen, rep].forEach((s) => s.free());
  });

  test('temperature sampling follows the distribution (chi-square sanity over 400 draws)', async () => {
    const counts = new Map<number, number>();
    const probe = engine.createSequence();
    const [p] = await engine.run([{ sequence: probe, tokens: PROMPT, logits: 'last' }]);
    probe.free();
    const logits = p!.logits!;
    let m = -Infinity;
    for (const v of logits) m = Math.max(m, v);
    const probs = Array.from(logits, (v) => Math.exp(v - m));
    const z = probs.reduce((a, b) => a + b, 0);
    const seqs = Array.from({ length: 400 }, (_, i) => engine.createSequence({ temperature: 1, seed: i, ignoreEos: true }));
    for (let i = 0; i < seqs.length; i += 50) {
      const rs = await engine.run(seqs.slice(i, i + 50).map((s) => ({ sequence: s, tokens: PROMPT, sample: true })));
      for (const r of rs) counts.set(r.token!, (counts.get(r.token!) ?? 0) + 1);
    }
    seqs.forEach((s) => s.free());
    // the most likely token is drawn about as often as its probability says
    const best = argmax(logits);
    const expected = (400 * probs[best]!) / z;
    expect(Math.abs((counts.get(best) ?? 0) - expected)).toBeLessThan(4 * Math.sqrt(expected) + 2);
  });
});

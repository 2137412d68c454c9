/**
 * The prefix cache (issue 10, section 1: automatic KV reuse for stateless clients) on the embedded
 * default model: a request on a taken sequence answers exactly as a cold run on a fresh sequence
 * (greedy, seeded sampling, different sampling than the entry's), follow-ups and partial prefixes,
 * LRU eviction that frees KV, one request per entry, and KV pressure (entries parked and restored).
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine, type SamplingOptions, type Sequence } from '../src/engine/engine.js';
import { Scheduler, type DoneEvent } from '../src/scheduler/scheduler.js';
import { ChatFormat } from '../src/session/chat-format.js';
import { PrefixCache } from '../src/session/prefix-cache.js';

const MODEL = join(import.meta.dirname, '..', 'models', 'default');
const GREEDY: SamplingOptions = {};
const SAMPLED: SamplingOptions = { temperature: 0.8, topK: 40, seed: 11 };

let engine: Engine;
let sched: Scheduler;
let format: ChatFormat;

beforeAll(async () => {
  engine = await Engine.load(MODEL, { threads: 2, contexts: 2, kvMemoryBytes: 64 << 20 });
  sched = new Scheduler(engine);
  format = new ChatFormat(engine.tokenizer!);
});
afterAll(async () => {
  await sched.close();
  engine.dispose();
});

const enc = (text: string) => engine.tokenizer!.encode(text, { addSpecialTokens: false });

function commonPrefix(a: readonly number[], b: readonly number[]): number {
  let n = 0;
  while (n < a.length && n < b.length && a[n] === b[n]) n++;
  return n;
}

interface Served {
  tokens: number[];
  cached: number;
  done: DoneEvent;
  seq: Sequence;
  /** Whether the taken sequence was parked when taken. */
  parked: boolean;
}

/** What the HTTP front does: take, run on the sequence (always with sampling), put back. */
async function serveOn(s: Scheduler, cache: PrefixCache, prompt: number[], sampling: SamplingOptions, maxTokens = 24): Promise<Served> {
  const hit = cache.take(prompt);
  const seq = hit?.sequence ?? s.engine.createSequence();
  const cached = hit?.cached ?? 0;
  const info = seq.info();
  expect(info.numTokens).toBe(cached);
  const req = s.submit({ sequence: seq, tokens: prompt.slice(cached), sampling, maxTokens });
  const done = await req.done;
  expect(done.finishReason).not.toBe('error');
  cache.put(seq, [...prompt.slice(0, cached), ...req.fed]);
  return { tokens: req.generated, cached, done, seq, parked: info.parked };
}

/** The reference: the same prompt on a fresh sequence. */
async function coldOn(s: Scheduler, prompt: number[], sampling: SamplingOptions, maxTokens = 24): Promise<number[]> {
  const req = s.submit({ tokens: [...prompt], sampling, maxTokens });
  const done = await req.done;
  expect(done.usage.cachedTokens).toBe(0);
  return req.generated;
}

const serve = (cache: PrefixCache, prompt: number[], sampling: SamplingOptions, maxTokens = 24) => serveOn(sched, cache, prompt, sampling, maxTokens);
const cold = (prompt: number[], sampling: SamplingOptions, maxTokens = 24) => coldOn(sched, prompt, sampling, maxTokens);

/** A sequence holding `prompt`'s KV (a finished prefill-only request). */
async function prefilled(prompt: number[]): Promise<Sequence> {
  const seq = engine.createSequence();
  await sched.submit({ sequence: seq, tokens: prompt, prefillOnly: true }).done;
  expect(seq.numTokens).toBe(prompt.length);
  return seq;
}

const gone = (seq: Sequence) => {
  try {
    seq.info();
    return false;
  } catch (err) {
    return (err as { code?: string }).code === 'WEFT_SEQUENCE_NOT_FOUND';
  }
};

describe('prefix cache', () => {
  test.each([
    ['greedy', GREEDY],
    ['seeded sampling', SAMPLED],
  ])('a follow-up (prompt + answer + new tokens) reuses the whole earlier KV and answers as a cold run: %s', async (_, sampling) => {
    const cache = new PrefixCache(sched);
    const p1 = format.encode([{ role: 'user', content: 'Who made the heaven and the earth?' }]);
    const r1 = await serve(cache, p1, sampling);
    expect(r1.cached).toBe(0);
    expect(r1.tokens).toEqual(await cold(p1, sampling));
    expect(cache.counters).toMatchObject({ hits: 0, misses: 1 });
    // the entry holds the prompt and the answer but its last, never-fed token
    const held = cache.numTokens;
    expect(held).toBeGreaterThanOrEqual(p1.length + r1.tokens.length - 1);
    expect(held).toBeLessThanOrEqual(p1.length + r1.tokens.length);

    let prompt = p1;
    let answer = r1.tokens;
    for (const next of ['And what did he say unto them?', 'And where did they go?']) {
      prompt = [...prompt, ...answer, ...enc(`\nAnd one asked him, saying, ${next}\nAnd he answered and said,`)];
      const entry = cache.numTokens;
      const r = await serve(cache, prompt, sampling);
      expect(r.cached).toBe(entry);
      expect(r.done.usage.cachedTokens).toBe(entry);
      expect(r.done.usage.promptTokens).toBe(prompt.length - entry);
      expect(r.tokens).toEqual(await cold(prompt, sampling));
      answer = r.tokens;
    }
    expect(cache.counters).toMatchObject({ hits: 2, misses: 1, evictions: 0 });
    expect(cache.counters.hitTokens).toBeGreaterThan(2 * p1.length);
    cache.clear();
    expect(cache.size).toBe(0);
  });

  test('a reused sequence given other sampling answers as a cold run with that sampling (submit reseeds it)', async () => {
    const cache = new PrefixCache(sched);
    const first: SamplingOptions = { temperature: 1.2, seed: 5, presencePenalty: 0.8, frequencyPenalty: 0.5, repetitionPenalty: 1.3 };
    let prompt = format.encode([{ role: 'user', content: 'What did the LORD say unto Moses?' }]);
    let answer = (await serve(cache, prompt, first)).tokens;
    for (const sampling of [{ temperature: 0.7, topP: 0.9, seed: 77 }, GREEDY, first, { temperature: 0.9, minP: 0.05, seed: 3 }]) {
      prompt = [...prompt, ...answer, ...enc('\nAnd one asked him, saying, And then?\nAnd he answered and said,')];
      const r = await serve(cache, prompt, sampling);
      expect(r.cached).toBeGreaterThan(0);
      expect(r.tokens).toEqual(await cold(prompt, sampling));
      answer = r.tokens;
    }
    cache.clear();
  });

  test('a partial common prefix (a shared system prompt) is cut to the common prefix; a repeated prompt keeps all but its last token; a short match is a miss', async () => {
    const cache = new PrefixCache(sched, { minMatch: 16 });
    const system =
      'In the beginning God created the heaven and the earth. And the earth was without form, and void; and darkness was upon the face of the deep. ' +
      'And the Spirit of God moved upon the face of the waters. And God said, Let there be light: and there was light.';
    const pA = format.encode([{ role: 'system', content: system }, { role: 'user', content: 'Who was Abraham?' }]);
    const pB = format.encode([{ role: 'system', content: system }, { role: 'user', content: 'Where is the land of Canaan?' }]);
    const common = commonPrefix(pA, pB);
    expect(common).toBeGreaterThanOrEqual(16);
    expect(common).toBeLessThan(pA.length);
    // the cut must save at least what it throws away (the entry's question and answer)
    expect(common).toBeGreaterThanOrEqual(pA.length - common + 24);

    for (const sampling of [GREEDY, SAMPLED]) {
      await serve(cache, pA, sampling);
      const rB = await serve(cache, pB, sampling);
      expect(rB.cached).toBe(common);
      expect(rB.done.usage.cachedTokens).toBe(common);
      expect(rB.tokens).toEqual(await cold(pB, sampling));
      // the same prompt again: everything but its last token is reused (one token is prefilled to sample from)
      const again = await serve(cache, pB, sampling);
      expect(again.cached).toBe(pB.length - 1);
      expect(again.tokens).toEqual(rB.tokens);
      cache.clear();
    }

    // fewer than minMatch tokens in common: a miss, and the entry stays
    const long = enc(
      'And God said, Let there be light: and there was light. And God saw the light, that it was good: and God divided the light from the darkness. ' +
        'And God called the light Day, and the darkness he called Night.',
    );
    expect(long.length).toBeGreaterThan(36);
    cache.put(await prefilled(long), long);
    const misses = cache.counters.misses;
    expect(cache.take([...long.slice(0, 10), ...enc(' and the waters')])).toBeNull();
    expect(cache.counters.misses).toBe(misses + 1);
    expect(cache.size).toBe(1);
    // a cut that would throw away more than it saves: a miss (a short shared prefix must not wipe out a long entry)
    expect(cache.take([...long.slice(0, 16), ...enc(' and the waters')])).toBeNull();
    const cut = cache.take([...long.slice(0, long.length - 2), ...enc(' and the waters')]);
    expect(cut?.cached).toBe(long.length - 2);
    expect(cut?.sequence.numTokens).toBe(long.length - 2);
    cache.put(cut!.sequence, long.slice(0, long.length - 2));
    // an entry shorter than minMatch matches when the prompt extends all of it
    const short = long.slice(0, 8);
    cache.put(await prefilled(short), short);
    const hit = cache.take([...short, ...enc(' Amen.')]);
    expect(hit?.cached).toBe(8);
    expect(hit?.sequence.numTokens).toBe(8);
    cache.put(hit!.sequence, short);
    cache.clear();
  });

  test('entries beyond maxEntries and maxTokens are freed, least recently put first, and their KV returns to the pool', async () => {
    const before = engine.stats();
    const cache = new PrefixCache(sched, { maxEntries: 2 });
    const prompts = ['And Adam knew Eve his wife', 'Now the serpent was more subtil', 'And Noah begat three sons', 'The LORD is my shepherd'].map((t) => enc(t + '; and it came to pass in those days that the people went up unto the mountain.'));
    const [a, b, c, d] = await Promise.all(prompts.map(prefilled));
    expect(engine.stats().sequences).toBe(before.sequences + 4);
    cache.put(a!, prompts[0]!);
    cache.put(b!, prompts[1]!);
    expect(cache.size).toBe(2);
    cache.put(c!, prompts[2]!);
    expect(cache.size).toBe(2);
    expect(gone(a!)).toBe(true);
    expect(cache.counters.evictions).toBe(1);
    expect(cache.take([...prompts[0]!, 5])).toBeNull();
    // b is taken and put back: c is now the least recently used
    const hit = cache.take([...prompts[1]!, 5]);
    expect(hit?.sequence).toBe(b);
    expect(hit?.cached).toBe(prompts[1]!.length);
    cache.put(b!, prompts[1]!);
    cache.put(d!, prompts[3]!);
    expect(gone(c!)).toBe(true);
    expect(gone(b!) || gone(d!)).toBe(false);
    expect(cache.counters.evictions).toBe(2);
    cache.clear();
    expect(engine.stats()).toMatchObject({ sequences: before.sequences, kvPagesFree: before.kvPagesFree });

    // a token budget
    const byTokens = new PrefixCache(sched, { maxTokens: 2 * prompts[0]!.length + 5 });
    const seqs = await Promise.all(prompts.slice(0, 3).map(prefilled));
    seqs.forEach((s, i) => byTokens.put(s, prompts[i]!));
    expect(byTokens.size).toBe(2);
    expect(byTokens.numTokens).toBe(prompts[1]!.length + prompts[2]!.length);
    expect(gone(seqs[0]!)).toBe(true);
    // one entry over the budget alone is freed at once, the others stay
    const big = [...prompts[3]!, ...prompts[3]!, ...prompts[3]!];
    const bigSeq = await prefilled(big);
    expect(byTokens.put(bigSeq, big)).toBe(false);
    expect(gone(bigSeq)).toBe(true);
    expect(byTokens.size).toBe(2);
    byTokens.clear();

    // disabled: put frees at once; a put whose tokens do not match the KV's length is refused
    const off = new PrefixCache(sched, { maxEntries: 0 });
    const e = await prefilled(prompts[0]!);
    expect(off.put(e, prompts[0]!)).toBe(false);
    expect(gone(e)).toBe(true);
    const on = new PrefixCache(sched);
    const f = await prefilled(prompts[0]!);
    expect(on.put(f, prompts[0]!.slice(1))).toBe(false);
    expect(gone(f)).toBe(true);
    expect(engine.stats()).toMatchObject({ sequences: before.sequences, kvPagesFree: before.kvPagesFree });
  });

  test('a taken entry serves one request at a time: a second take of the same prefix gets another entry, then none', async () => {
    const cache = new PrefixCache(sched);
    const p = format.encode([{ role: 'user', content: 'Who was the father of Isaac?' }]);
    const [x, y] = await Promise.all([prefilled(p), prefilled(p)]);
    cache.put(x!, p);
    cache.put(y!, p);
    const more = [...p, ...enc(' Abraham')];
    const first = cache.take(more);
    const second = cache.take(more);
    expect(first?.sequence).toBe(x); // the older of two equal matches
    expect(second?.sequence).toBe(y);
    expect(cache.take(more)).toBeNull();
    cache.put(x!, p);
    cache.put(y!, p);
    cache.clear();

    // two requests with the same prompt at once, one entry: one reuses it, the other runs cold; both answer the same
    const seeded = { ...SAMPLED, seed: 21 };
    const r0 = await serve(cache, p, seeded);
    const next = [...p, ...r0.tokens, ...enc('\nAnd one asked him, saying, And he said?\nAnd he answered and said,')];
    const [r1, r2] = await Promise.all([serve(cache, next, seeded), serve(cache, next, seeded)]);
    expect([r1.cached > 0, r2.cached > 0].sort()).toEqual([false, true]);
    expect(r1.tokens).toEqual(r2.tokens);
    expect(r1.tokens).toEqual(await cold(next, seeded));
    expect(cache.size).toBe(2);
    cache.clear();
  });

  test('a sequence in a step is never freed: put refuses it, eviction skips it', async () => {
    const cache = new PrefixCache(sched, { maxEntries: 1 });
    const long = enc('And it came to pass, '.repeat(60)).slice(0, 480);
    const [a, b] = await Promise.all([prefilled(long.slice(0, 16)), prefilled(long.slice(0, 20))]);
    cache.put(a!, long.slice(0, 16));
    // misuse: a cached sequence submitted behind the cache's back, then a put that must evict
    const req = sched.submit({ sequence: a!, tokens: long.slice(16), prefillOnly: true });
    for (let i = 0; i < 100_000 && !a!.info().busy && req.state !== 'done'; i++) await new Promise((r) => setImmediate(r));
    // a step's sequences stay busy until the step settles on this thread: no await from here on
    expect(a!.info().busy).toBe(true);
    expect(() => cache.put(a!, long.slice(0, 16))).toThrow(expect.objectContaining({ code: 'WEFT_SEQUENCE_BUSY' }));
    cache.put(b!, long.slice(0, 20));
    // a is in its step: b, the only other entry, is evicted instead
    expect(gone(b!)).toBe(true);
    expect(gone(a!)).toBe(false);
    expect(cache.size).toBe(1);
    await req.done;
    expect(gone(a!)).toBe(false);
    cache.clear();
    expect(gone(a!)).toBe(true);
  });
});

describe('prefix cache under KV pressure', () => {
  let small: Engine;
  let smallSched: Scheduler;
  beforeAll(async () => {
    // 24 pages of 16 tokens: three or four short conversations fill it
    const probe = engine.stats();
    small = await Engine.load(MODEL, { threads: 2, contexts: 1, kvMemoryBytes: 24 * probe.kvPageTokens * probe.kvBytesPerToken });
    smallSched = new Scheduler(small);
  });
  afterAll(async () => {
    await smallSched.close();
    small.dispose();
  });

  const VERSES = [
    'And Abraham rose up early in the morning, and saddled his ass, and took two of his young men with him, and Isaac his son, and clave the wood for the burnt offering.',
    'Now Moses kept the flock of Jethro his father in law, the priest of Midian: and he led the flock to the backside of the desert, and came to the mountain of God.',
    'Then David said to the Philistine, Thou comest to me with a sword, and with a spear, and with a shield: but I come to thee in the name of the LORD of hosts.',
    'In Gibeon the LORD appeared to Solomon in a dream by night: and God said, Ask what I shall give thee. And Solomon said, Thou hast shewed unto thy servant great mercy.',
    'And Elijah the Tishbite, who was of the inhabitants of Gilead, said unto Ahab, As the LORD God of Israel liveth, before whom I stand, there shall not be dew nor rain these years.',
  ];

  test('entries parked by the scheduler still answer as a cold run when taken (whole and partial matches)', async () => {
    expect(small.stats().kvPagesTotal).toBe(24);
    const cache = new PrefixCache(smallSched);
    const prompts = VERSES.map((v) => format.encode([{ role: 'user', content: v }]));
    const firsts: Served[] = [];
    for (const p of prompts) firsts.push(await serveOn(smallSched, cache, p, SAMPLED, 24));
    // five entries of about six pages each do not fit 24 pages: the least recently released were parked
    expect(cache.size).toBe(5);
    expect(smallSched.counters.kvParks).toBeGreaterThan(0);
    expect(firsts[0]!.seq.info().parked).toBe(true);

    // follow-ups, oldest (parked) first: restored at admission, answers equal cold runs
    let parkedTakes = 0;
    for (let i = 0; i < 3; i++) {
      const p = [...prompts[i]!, ...firsts[i]!.tokens, ...enc('\nAnd one asked him, saying, And then?\nAnd he answered and said,')];
      const r = await serveOn(smallSched, cache, p, SAMPLED, 24);
      if (r.parked) parkedTakes++;
      expect(r.seq).toBe(firsts[i]!.seq);
      expect(r.cached).toBeGreaterThanOrEqual(prompts[i]!.length + firsts[i]!.tokens.length - 1);
      expect(r.done.usage.cachedTokens).toBe(r.cached);
      expect(r.tokens).toEqual(await coldOn(smallSched, p, SAMPLED, 24));
    }
    expect(parkedTakes).toBeGreaterThan(0);

    // a partial match on a parked entry: the cache restores it (parking others for room) to cut it
    const last = firsts[4]!.seq;
    await last.park();
    const pX = format.encode([{ role: 'user', content: VERSES[4]!.replace(/these years\.$/, 'but according to my word.') }]);
    const common = commonPrefix(prompts[4]!, pX);
    expect(common).toBeGreaterThan(prompts[4]!.length / 2);
    const rX = await serveOn(smallSched, cache, pX, GREEDY, 24);
    expect(rX.seq).toBe(last);
    expect(rX.cached).toBe(common);
    expect(rX.parked).toBe(false);
    expect(rX.tokens).toEqual(await coldOn(smallSched, pX, GREEDY, 24));
    cache.clear();
    expect(small.stats()).toMatchObject({ sequences: 0, kvPagesFree: 24 });
  });

  test('a parked-bytes budget frees parked entries, least recently used first', async () => {
    const cache = new PrefixCache(smallSched, { maxParkedBytes: 0 });
    const prompts = VERSES.map((v) => format.encode([{ role: 'user', content: v }]));
    const served: Served[] = [];
    for (const p of prompts) served.push(await serveOn(smallSched, cache, p, GREEDY, 40));
    cache.trim();
    expect(cache.counters.evictions).toBeGreaterThan(0);
    for (const s of served) if (!gone(s.seq)) expect(s.seq.info().parked).toBe(false);
    expect(gone(served[0]!.seq)).toBe(true);
    cache.clear();
    expect(small.stats()).toMatchObject({ sequences: 0, kvPagesFree: 24 });
  });
});

/**
 * Sessions on the embedded default model (its real chat template): multi-turn KV reuse equals a
 * fresh session given the whole transcript, the state machine, the context policy.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine, type SamplingOptions } from '../src/engine/engine.js';
import { Scheduler } from '../src/scheduler/scheduler.js';
import { ChatFormat } from '../src/session/chat-format.js';
import { Session, SessionState, type Turn, type TurnDone } from '../src/session/session.js';
import { replayPrompt } from './helpers/replay.js';

let engine: Engine;
let sched: Scheduler;
const SAMPLING: SamplingOptions = { temperature: 0.8, topK: 40, seed: 11 };

beforeAll(async () => {
  engine = await Engine.load(join(import.meta.dirname, '..', 'models', 'default'), { threads: 2, contexts: 2, kvMemoryBytes: 64 << 20 });
  sched = new Scheduler(engine);
});
afterAll(async () => {
  await sched.close();
  engine.dispose();
});

async function run(turn: Turn): Promise<{ text: string; seqs: number[]; done: TurnDone }> {
  let text = '';
  const seqs: number[] = [];
  for await (const ev of turn) {
    if (ev.type === 'delta') {
      text += ev.text;
      seqs.push(ev.seq);
    } else return { text, seqs, done: ev };
  }
  throw new Error('no done');
}

describe('session', () => {
  test('the default template ends a chat answer at the first newline', () => {
    const f = new ChatFormat(engine.tokenizer!);
    expect(f.stopStrings).toEqual(['\n']);
    expect(f.render([{ role: 'user', content: 'Hi' }], true)).toBe('<|endoftext|>And one asked him, saying, Hi\nAnd he answered and said,');
  });

  test('a follow-up turn reuses the KV of every token so far (answers as generated) and equals a fresh sequence given the same prompt', async () => {
    const a = new Session(sched, { sampling: SAMPLING, maxTokens: 40 });
    expect(a.state).toBe(SessionState.Idle);
    const t1 = a.send('Who made the heaven and the earth?');
    expect([SessionState.Queued, SessionState.Prefilling]).toContain(a.state);
    const r1 = await run(t1);
    expect(a.state).toBe(SessionState.Idle);
    expect(r1.text).not.toContain('\n');
    expect(r1.text).toBe(r1.done.text);
    expect(r1.seqs).toEqual(r1.seqs.map((_, i) => i));
    expect(['stop', 'length']).toContain(r1.done.finishReason);
    expect(r1.done.usage.cached_tokens).toBe(0);

    const t2 = a.send('And what did he say unto them?');
    const r2 = await run(t2);
    // the whole conversation is reused: turn 1's prompt and answer (but its last token, sampled and never fed)
    const p1 = r1.done.usage.prompt_tokens;
    const c1 = r1.done.usage.completion_tokens;
    expect(r2.done.usage.cached_tokens).toBe(p1 + c1 - 1);
    expect(t2.prompt.slice(0, p1 + c1)).toEqual([...t1.prompt, ...t1.request.generated]);
    // what the template adds after the answer, as tokens: the answer's own "\n" is not doubled
    const added = engine.tokenizer!.decode(t2.prompt.slice(p1 + c1) as number[]);
    expect(added).toBe('And one asked him, saying, And what did he say unto them?\nAnd he answered and said,');
    expect(engine.tokenizer!.decode(t1.request.generated).endsWith('\n')).toBe(r1.done.finishReason === 'stop');

    const ref = await replayPrompt(sched, a.format, t2.prompt, SAMPLING, 40);
    expect(ref.text).toBe(r2.text);
    expect(ref.tokens).toEqual(t2.request.generated);
    expect(a.messages.map((m) => m.role)).toEqual(['user', 'assistant', 'user', 'assistant']);
    expect(a.messages[1]).toEqual({ role: 'assistant', content: r1.text });

    // a session given the same transcript as text renders and encodes it whole: same messages, its own tokens
    const b = new Session(sched, { sampling: SAMPLING, maxTokens: 40, history: [{ role: 'user', content: 'Who made the heaven and the earth?' }, { role: 'assistant', content: r1.done.text }] });
    const tb = b.send('And what did he say unto them?');
    const rb = await run(tb);
    expect(rb.done.usage.cached_tokens).toBe(0);
    expect(rb.text).toBe((await replayPrompt(sched, b.format, tb.prompt, SAMPLING, 40)).text);

    const before = engine.stats().sequences;
    await a.close();
    await b.close();
    expect(a.state).toBe(SessionState.Closed);
    expect(engine.stats().sequences).toBe(before - 2);
    expect(() => a.send('again')).toThrow(expect.objectContaining({ code: 'WEFT_DISPOSED' }));
  });

  test('listen() pushes the same deltas as iterating, held-back stop-string text included', async () => {
    // no template stop string and EOS ignored: 12 tokens every time
    const base = new ChatFormat(engine.tokenizer!);
    const format = Object.assign(Object.create(Object.getPrototypeOf(base)), base, { stopStrings: [] }) as ChatFormat;
    const opts = { format, sampling: { ...SAMPLING, ignoreEos: true }, maxTokens: 12 };
    const plain = new Session(sched, opts);
    const p = await run(plain.send('Tell me of Moses.'));
    expect(p.done.finishReason).toBe('length');
    const text = p.done.text;
    // a stop string that starts with the answer's last character and never completes: that character is held back to the end
    const stop = [text.slice(-1) + '\u0001'];
    const iterated: { seq: number; text: string }[] = [];
    const a = new Session(sched, opts);
    for await (const ev of a.send('Tell me of Moses.', { stop })) if (ev.type === 'delta') iterated.push({ seq: ev.seq, text: ev.text });
    const pushed: { seq: number; text: string }[] = [];
    const b = new Session(sched, opts);
    const done = await new Promise<TurnDone>((resolve, reject) =>
      b.send('Tell me of Moses.', { stop }).listen({ delta: (seq, t) => pushed.push({ seq, text: t }), done: resolve, fail: reject }),
    );
    expect(pushed).toEqual(iterated);
    expect(pushed.at(-1)).toEqual({ seq: 12, text: text.slice(-1) });
    expect(pushed.map((d) => d.seq)).toEqual(pushed.map((_, i) => i));
    expect(pushed.map((d) => d.text).join('')).toBe(text);
    expect(done).toMatchObject({ finishReason: 'length', text, usage: { completion_tokens: 12 } });
    await Promise.all([plain, a, b].map((s) => s.close()));
  });

  test('busy, cancel, and the context policy', async () => {
    const s = new Session(sched, { sampling: { ...SAMPLING, ignoreEos: true }, stop: [], maxTokens: 200 });
    const t = s.send('Tell me of Moses.', { stop: [] });
    expect(() => s.send('more')).toThrow(expect.objectContaining({ code: 'WEFT_SEQUENCE_BUSY' }));
    for await (const ev of t) if (ev.type === 'delta') t.cancel(); // cancel after the first token
    const d = await t.done;
    expect(d.usage.completion_tokens).toBeLessThanOrEqual(2);
    expect(d.finishReason).toBe('cancelled');
    expect(s.state).toBe(SessionState.Idle);
    const n = s.messages.length;
    expect(() => s.send('word '.repeat(600))).toThrow(expect.objectContaining({ code: 'WEFT_CONTEXT_OVERFLOW' }));
    expect(s.messages.length).toBe(n);
    const r = await run(s.send('Amen.', { maxTokens: 3 }));
    expect(r.done.usage.cached_tokens).toBeGreaterThan(0);
    await s.close();
  });

  test('sendAsync: a long conversation is tokenized in the worker with the answer of send; one that cannot fit is refused by its size, untokenized', async () => {
    const tok = engine.tokenizer!;
    const threshold = tok.asyncThresholdChars;
    tok.asyncThresholdChars = 64; // the default model's context (512) holds only short texts: send them to the worker anyway
    try {
      const history = [
        { role: 'user' as const, content: 'In the beginning God created the heaven and the earth. And the earth was without form, and void.' },
        { role: 'assistant' as const, content: 'And God said, Let there be light: and there was light.' },
      ];
      const a = new Session(sched, { sampling: SAMPLING, history, maxTokens: 16 });
      const b = new Session(sched, { sampling: SAMPLING, history, maxTokens: 16 });
      const pending = a.sendAsync('And what did he call the light?');
      expect(a.state).toBe(SessionState.Preparing);
      expect(tok.encodeQueueLength).toBe(1);
      expect(() => a.send('more')).toThrow(expect.objectContaining({ code: 'WEFT_SEQUENCE_BUSY' }));
      const viaWorker = await run(await pending);
      const inline = await run(b.send('And what did he call the light?'));
      expect(viaWorker.text).toBe(inline.text);
      expect(viaWorker.done.usage).toEqual(inline.done.usage);
      expect(a.messages).toEqual(b.messages);

      // a cancel while it waits for the worker: WEFT_CANCELLED, the transcript unchanged
      const n = a.messages.length;
      const abort = new AbortController();
      const cancelled = a.sendAsync('And the evening and the morning were the first day.', { signal: abort.signal });
      abort.abort();
      await expect(cancelled).rejects.toMatchObject({ code: 'WEFT_CANCELLED' });
      expect(a.messages.length).toBe(n);
      expect(a.state).toBe(SessionState.Idle);

      // 1 MiB of text: rejected before any tokenizing (the worker sees nothing, the event loop is not held)
      const huge = 'and the LORD said unto Moses '.repeat(40_000);
      const t0 = performance.now();
      await expect(a.sendAsync(huge)).rejects.toMatchObject({ code: 'WEFT_CONTEXT_OVERFLOW', message: expect.stringMatching(/at least \d+ tokens/) });
      expect(() => a.send(huge)).toThrow(expect.objectContaining({ code: 'WEFT_CONTEXT_OVERFLOW' }));
      expect(performance.now() - t0).toBeLessThan(200);
      expect(tok.encodeQueueLength).toBe(0);
      expect(a.messages.length).toBe(n);
      await Promise.all([a.close(), b.close()]);
    } finally {
      tok.asyncThresholdChars = threshold;
    }
  });
});

/**
 * The session owns its tokens: a follow-up turn's prompt is the conversation's tokens exactly as
 * generated plus the tokens of what the chat template adds after them, for a Jinja ChatML
 * template, the tiny model's own template and the plain template (the default model's is in
 * session.test.ts); and the context policy that keeps a long chat alive.
 */
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { Scheduler } from '../src/scheduler/scheduler.js';
import { Session, type Turn } from '../src/session/session.js';
import { TinyModels } from './helpers/models.js';
import { replayPrompt } from './helpers/replay.js';

const CHATML =
  "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] | trim + '<|im_end|>\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

const models = new TinyModels();
const engines: Engine[] = [];
afterAll(() => {
  for (const e of engines) e.dispose();
  models.cleanup();
});

async function load(name: string, template: string | null | undefined): Promise<{ engine: Engine; sched: Scheduler }> {
  const dir = await models.make(name, { seed: 5, maxPos: 320 });
  const cfgPath = join(dir, 'tokenizer_config.json');
  const cfg = JSON.parse(readFileSync(cfgPath, 'utf8'));
  if (template === null) delete cfg.chat_template;
  else if (template !== undefined) cfg.chat_template = template;
  writeFileSync(cfgPath, JSON.stringify(cfg));
  const engine = await Engine.load(dir, { threads: 1, contexts: 1, kvMemoryBytes: 16 << 20 });
  engines.push(engine);
  return { engine, sched: new Scheduler(engine) };
}

async function finish(t: Turn) {
  for await (const _ of t);
  return t.done;
}

const SAMPLING = { temperature: 0.9, seed: 3, ignoreEos: true };

describe.each([
  ['a Jinja ChatML template', CHATML],
  ["the tiny model's template", undefined],
  ['the plain template', null],
] as const)('%s', (name, template) => {
  let engine: Engine;
  let sched: Scheduler;
  beforeAll(async () => ({ engine, sched } = await load(name.replace(/\W+/g, '-'), template)));

  test('every token of the conversation is reused, answers as generated, and the turn equals a fresh sequence given its prompt', async () => {
    const s = new Session(sched, { sampling: SAMPLING, maxTokens: 6, system: 'Be brief.' });
    const t1 = s.send('hello there');
    const d1 = await finish(t1);
    const t2 = s.send(' and then?');
    const d2 = await finish(t2);
    const t3 = s.send('more');
    const d3 = await finish(t3);
    expect([d1, d2, d3].map((d) => d.truncatedTurns)).toEqual([0, 0, 0]);
    for (const [prev, d, t] of [[t1, d2, t2], [t2, d3, t3]] as const) {
      const whole = [...prev.prompt, ...prev.request.generated];
      expect(t.prompt.slice(0, whole.length)).toEqual(whole);
      const fed = prev.request.generated.length - (prev.request.finishReason === 'stop' && prev.request.generated.length === 0 ? 0 : 1);
      expect(d.usage.cached_tokens).toBeGreaterThanOrEqual(prev.prompt.length + fed);
      expect(d.usage.prompt_tokens).toBe(t.prompt.length);
    }
    expect(d1.usage.cached_tokens).toBe(0);
    const ref = await replayPrompt(sched, s.format, t3.prompt, SAMPLING, 6);
    expect(ref.tokens).toEqual(t3.request.generated);
    // the tokens after turn 2's answer are the template's, rendered for the new message
    const added = engine.tokenizer!.decode(t3.prompt.slice(t2.prompt.length + t2.request.generated.length) as number[]);
    expect(added).toContain('more');
    expect(s.messages.map((m) => m.role)).toEqual(['system', 'user', 'assistant', 'user', 'assistant', 'user', 'assistant']);
    await s.close();
  });

  test('context policy: truncate drops the oldest exchanges (never the system prompt or the new message) and says so; reject refuses', async () => {
    const s = new Session(sched, { sampling: SAMPLING, maxTokens: 24, system: 'Keep this.' });
    let truncated = 0;
    let turns = 0;
    const maxContext = engine.stats().maxContext;
    while (truncated === 0 && turns < 40) {
      const t = s.send(`question number ${turns} about the weather today`);
      const d = await finish(t);
      turns++;
      truncated = d.truncatedTurns;
      expect(t.prompt.length).toBeLessThanOrEqual(maxContext - Math.min(24, Math.floor(maxContext / 4)));
      if (truncated > 0) {
        expect(s.messages[0]).toEqual({ role: 'system', content: 'Keep this.' });
        expect(s.messages.at(-2)).toEqual({ role: 'user', content: `question number ${turns - 1} about the weather today` });
        expect(s.messages.filter((m) => m.role === 'user').length).toBe(turns - truncated);
        // the truncated conversation was rendered again and prefilled: its answer equals a fresh sequence's
        expect((await replayPrompt(sched, s.format, t.prompt, SAMPLING, 24)).tokens).toEqual(t.request.generated);
      }
    }
    expect(truncated).toBeGreaterThan(0);
    const after = await finish(s.send('and one more'));
    expect(after.usage.cached_tokens).toBeGreaterThan(0); // back on the token path after a truncation

    const r = new Session(sched, { sampling: SAMPLING, maxTokens: 24, contextPolicy: 'reject' });
    let code = '';
    for (let i = 0; i < 40 && !code; i++) {
      const n = r.messages.length;
      try {
        await finish(r.send(`question number ${i} about the weather today`));
      } catch (err) {
        code = (err as { code: string }).code;
        expect(r.messages.length).toBe(n);
      }
    }
    expect(code).toBe('WEFT_CONTEXT_OVERFLOW');
    expect(() => s.send('x '.repeat(400))).toThrow(expect.objectContaining({ code: 'WEFT_CONTEXT_OVERFLOW' }));
    await Promise.all([s.close(), r.close()]);
  });
});

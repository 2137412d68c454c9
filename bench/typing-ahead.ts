/**
 * Typing-ahead prefill, measured through the gateway (run by `npm run bench:gateway -- --typing`):
 * a ~2,000-token message typed in 20 pieces over 2 s (input.append) then committed, against the
 * same message sent whole after the same 2 s; time to first token after the commit / send, and
 * the answers compared (greedy: they must be equal). The peer is the plain send in the same run.
 *
 * The model needs a context above 2,000 tokens: by default a ~12M-parameter random model with
 * 4,096 positions (`small`: its prefill outruns the typing on 2 cores), and the ~100M bench model
 * of `npm run bench:engine` (`bench100m`: on a 2-core VM its prefill is slower than the typing,
 * so typing-ahead can hide only the 2 s of typing), each generated once under --dir.
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import WebSocket from 'ws';
import { makeTinyModel, PRESETS, type TinyModelOptions } from '../scripts/make-tiny-model.js';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';

export interface TypingResult {
  model: string;
  message_tokens: number;
  plain_ttft_ms: number[];
  typed_ttft_ms: number[];
  plain_cached_tokens: number;
  typed_cached_tokens: number;
  /** Prompt tokens over the plain send's TTFT: the prefill rate the typing has to beat. */
  prefill_tokens_per_s: number;
  speedup: number;
  answers_equal: boolean;
}

type Ev = Record<string, any>;

/** One client session over ws: send frames, wait for events. */
async function open(url: string): Promise<{ send: (ev: object) => void; next: (pred: (e: Ev) => boolean) => Promise<Ev & { at: number }>; close: () => void }> {
  const ws = new WebSocket(url);
  const queue: (Ev & { at: number })[] = [];
  let wake: (() => void) | null = null;
  ws.on('message', (d) => {
    queue.push({ ...JSON.parse(d.toString()), at: performance.now() });
    wake?.();
  });
  await new Promise((r, j) => ws.once('open', r).once('error', j));
  return {
    send: (ev) => ws.send(JSON.stringify(ev)),
    async next(pred) {
      for (;;) {
        const i = queue.findIndex(pred);
        if (i >= 0) return queue.splice(0, i + 1).at(-1)!;
        await new Promise<void>((r) => (wake = r));
      }
    },
    close: () => ws.close(),
  };
}

/** Sends `message` whole, or typed in `pieces` over `typingMs` and committed; TTFT after the send or commit, and the answer. */
async function turn(url: string, message: string, typed: boolean, pieces: number, typingMs: number): Promise<{ ttft: number; text: string; cached: number; prompt: number }> {
  const c = await open(url);
  await c.next((e) => e.type === 'session.created');
  const size = Math.ceil(message.length / pieces);
  for (let i = 0; i < pieces; i++) {
    if (typed) c.send({ type: 'input.append', text: message.slice(i * size, (i + 1) * size) });
    await new Promise((r) => setTimeout(r, typingMs / pieces));
  }
  const sampling = { temperature: 0, max_tokens: 16 };
  const t0 = performance.now();
  c.send(typed ? { type: 'message.create', commit: true, sampling } : { type: 'message.create', content: message, sampling });
  const created = await c.next((e) => e.type === 'response.created' || e.type === 'error');
  if (created.type === 'error') throw new Error(`${created.code}: ${created.message}`);
  let first = 0;
  let text = '';
  for (;;) {
    const e = await c.next((x) => x.response_id === created.response_id);
    if (e.type === 'response.delta') {
      first ||= e.at;
      text += e.text;
    } else {
      c.close();
      return { ttft: (first || e.at) - t0, text, cached: e.usage.cached_tokens, prompt: e.usage.prompt_tokens };
    }
  }
}

/** The generated models, by name. */
const MODELS: Record<string, TinyModelOptions> = {
  small: { hidden: 384, layers: 6, heads: 6, kvHeads: 2, ffn: 1024, vocab: 8192, maxPos: 4096, dtype: 'f16', tie: true },
  bench100m: PRESETS.bench100m!,
};

export async function benchTypingAhead(opts: { dir: string; model?: string; preset?: string; threads?: number; repeats: number }): Promise<TypingResult> {
  const preset = opts.preset ?? 'small';
  const model = opts.model ?? join(opts.dir, `typing-${preset}`);
  if (!opts.model && !existsSync(join(model, 'config.json'))) await makeTinyModel(model, MODELS[preset]!);
  const engine = await Engine.load(model, { threads: opts.threads, contexts: 1, kvMemoryBytes: 256 * 2 ** 20 });
  const gw = new Gateway({ port: 0, maxFrameBytes: 4 << 20, maxBytesPerSecond: 64 << 20, maxBytesPerSecondPerClient: 64 << 20 });
  gw.attach(engine);
  const url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  try {
    const words = 'and the word was with the people of the land and they went up unto the city to see the house '.split(' ');
    let message = '';
    for (let i = 0; engine.tokenizer!.encode(message, { addSpecialTokens: false }).length < 2000; i++) message += words[i % words.length] + (i % 17 === 16 ? '. ' : ' ');
    const plain: number[] = [];
    const typed: number[] = [];
    let equal = true;
    let last = { plain: { cached: 0, prompt: 0 }, typed: { cached: 0, prompt: 0 } };
    await turn(url, message.slice(0, 200), false, 1, 0); // warm-up
    for (let r = 0; r < opts.repeats; r++) {
      const p = await turn(url, message, false, 20, 2000);
      const t = await turn(url, message, true, 20, 2000);
      plain.push(p.ttft);
      typed.push(t.ttft);
      equal &&= p.text === t.text && p.prompt === t.prompt;
      last = { plain: p, typed: t };
    }
    const median = (xs: number[]) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)]!;
    return {
      model,
      message_tokens: last.plain.prompt,
      plain_ttft_ms: plain,
      typed_ttft_ms: typed,
      plain_cached_tokens: last.plain.cached,
      typed_cached_tokens: last.typed.cached,
      prefill_tokens_per_s: (last.plain.prompt / median(plain)) * 1000,
      speedup: median(plain) / median(typed),
      answers_equal: equal,
    };
  } finally {
    await gw.close();
    engine.dispose();
  }
}

/** The result as a markdown table. */
export function typingTable(r: TypingResult): string {
  const fmt = (xs: number[]) => xs.map((x) => x.toFixed(0)).join(', ');
  return [
    `typing-ahead: a ${r.message_tokens}-token prompt (${r.model}; prefill ${r.prefill_tokens_per_s.toFixed(0)} tokens/s), typed in 20 pieces over 2 s, greedy 16-token answers`,
    '| mode | TTFT after send ms (each run) | cached tokens | answers equal |',
    '|---|---|---|---|',
    `| sent whole | ${fmt(r.plain_ttft_ms)} | ${r.plain_cached_tokens} | |`,
    `| typed, then commit | ${fmt(r.typed_ttft_ms)} | ${r.typed_cached_tokens} | ${r.answers_equal ? 'yes' : 'NO'} |`,
    `TTFT ratio (medians): ${r.speedup.toFixed(1)}x lower with typing-ahead (goal >= 5x)`,
  ].join('\n');
}

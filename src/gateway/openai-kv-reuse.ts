/**
 * KV reuse for the OpenAI front's stateless clients: a request's sequence is taken from the prefix
 * cache (src/session/prefix-cache.ts) when an earlier request's prompt + answer is a prefix of its
 * prompt, and handed back to it at the end, cut to what a follow-up's prompt will begin with.
 * `usage.prompt_tokens_details.cached_tokens` says how many prompt tokens were not computed again;
 * the answer is the same as a cold run's.
 */
import type { SamplingOptions, Sequence } from '../engine/engine.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { ChatFormat } from '../session/chat-format.js';
import type { PrefixCache } from '../session/prefix-cache.js';
import type { ChatParams, TextParams } from './openai-schema.js';
import type { Kind } from './openai-shapes.js';

/** One request's use of the prefix cache, from its prompt's lookup to the hand-back of its sequence. */
export class KvReuse {
  /** Prompt tokens already in the taken sequence's KV: the request submits the rest. */
  readonly cached: number;
  private readonly hit: { sequence: Sequence; cached: number } | null;
  /** The sequence the request runs on, until it is handed back (null: none yet, or the cache is off). */
  private seq: Sequence | null = null;

  /** Looks up `prompt` in `cache` (null: off) among the entries of `owner` (an API key's name, '' without keys). */
  constructor(
    private readonly scheduler: Scheduler,
    private readonly cache: PrefixCache | null,
    private readonly prompt: number[],
    private readonly owner: string,
  ) {
    this.hit = cache?.take(prompt, owner) ?? null;
    this.cached = this.hit?.cached ?? 0;
  }

  /** The request was refused before it ran: the sequence taken goes back to the cache as it was. */
  putBack(): void {
    if (this.hit) this.cache!.put(this.hit.sequence, this.prompt.slice(0, this.cached), this.owner);
  }

  /** The sequence to submit on: the one taken, or a new one for the cache to keep (null: the cache is off). */
  open(sampling: SamplingOptions): Sequence | null {
    this.seq = this.hit?.sequence ?? (this.cache ? this.scheduler.engine.createSequence(sampling) : null);
    return this.seq;
  }

  /**
   * The request ended: its sequence, holding the prompt and `fed` (the tokens fed after the cached
   * ones; null: a failed run, whose KV is not kept), goes back to the cache under the tokens a
   * follow-up's prompt will begin with (`followUp`; null: not known, all of them).
   */
  giveBack(fed: number[] | null, followUp: () => Promise<number[] | null>): void {
    if (!this.seq) return;
    const s = this.seq;
    this.seq = null;
    const cache = this.cache;
    if (!fed || !cache) return this.free(s);
    const kv = [...this.prompt.slice(0, this.cached), ...fed];
    // a follow-up sends the answer back as text, whose tokens need not be the ones generated: the
    // entry keeps what a follow-up's prompt will begin with (the conversation rendered with the
    // answer), so that the follow-up extends it instead of missing it
    void followUp().then(
      (next) => {
        let n = 0;
        if (next) while (n < kv.length && n < next.length && kv[n] === next[n]) n++;
        else n = kv.length;
        if (n === 0) return this.free(s);
        try {
          if (n < kv.length) s.truncate(n);
          cache.put(s, kv.slice(0, n), this.owner);
        } catch {
          this.free(s);
        }
      },
      () => {
        try {
          cache.put(s, kv, this.owner);
        } catch {
          this.free(s); // never an unhandled rejection: a sequence the cache cannot take is freed
        }
      },
    );
  }

  private free(s: Sequence): void {
    this.scheduler.forget(s);
    try {
      s.free();
    } catch {
      /* already gone */
    }
  }
}

/**
 * The tokens a follow-up's prompt begins with: the conversation (or prompt) with `answer` as the
 * client will send it back. Null: not known (no format, or a prompt given as tokens).
 */
export async function followUpTokens(format: ChatFormat | null, kind: Kind, params: ChatParams | TextParams, answer: string): Promise<number[] | null> {
  if (!format) return null;
  const tok = format.tokenizer;
  if (kind === 'chat') {
    const messages = [...(params as ChatParams).messages, { role: 'assistant' as const, content: answer }];
    return tok.encodeAsync(format.render(messages, false), { addSpecialTokens: false });
  }
  const pr = (params as TextParams).prompt;
  return typeof pr === 'string' ? tok.encodeAsync(pr + answer) : null;
}

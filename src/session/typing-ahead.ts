/**
 * Typing-ahead: while a message is still being typed, the session prefills its KV with the
 * conversation and the part of the message that more text can no longer change, so that the turn
 * that sends the message prefills only the rest. This file finds those tokens and runs the
 * prefills one after another; the session (src/session/session.ts) cuts and extends its KV.
 */
import { WeftError } from '../errors.js';
import type { ChatFormat } from './chat-format.js';
import type { Conversation } from './conversation.js';

/** Stands for the end of a message being typed, to find where it ends in the rendered prompt. */
const TYPING_MARKER = '\u2063weft-typing\u2063';

/**
 * The prompt tokens of a turn that would send `partial`, up to what more typing can no longer
 * change: the last, unfinished word and two more tokens are held back (a BPE merge can cross
 * them). More than `limit` tokens is WEFT_CONTEXT_OVERFLOW.
 */
export async function stableTokens(conversation: Conversation, format: ChatFormat, partial: string, limit: number): Promise<number[]> {
  const word = /\S*$/.exec(partial)![0].length;
  const d = conversation.next(partial.slice(0, partial.length - word) + TYPING_MARKER);
  const text = d.text.slice(0, Math.max(0, d.text.indexOf(TYPING_MARKER)));
  if (d.prefix.length + format.tokenizer.minTokens(text) > limit) throw new WeftError('WEFT_CONTEXT_OVERFLOW', 'the message being typed no longer fits the context');
  const ids = [...d.prefix, ...(await format.tokenizer.encodeAsync(text, { addSpecialTokens: false }))];
  const stable = ids.slice(0, Math.max(0, ids.length - 2));
  if (stable.length > limit) throw new WeftError('WEFT_CONTEXT_OVERFLOW', 'the message being typed no longer fits the context');
  return stable;
}

/** A session's typing-ahead prefills, run one at a time (the sequence is in the scheduler meanwhile). */
export class TypingAhead {
  /** The prefill in flight, or the last one queued; null when none runs. */
  private typing: Promise<number> | null = null;

  /** Whether a prefill is in flight (the session's sequence is not its own to cut or free). */
  get busy(): boolean {
    return this.typing !== null;
  }

  /** Runs `run` once the prefill before it settles, whether or not that one failed. */
  enqueue(run: () => Promise<number>): Promise<number> {
    const p = (this.typing ?? Promise.resolve(0)).then(run, run);
    this.typing = p;
    void p.finally(() => {
      if (this.typing === p) this.typing = null;
    }).catch(() => undefined);
    return p;
  }

  /** Resolves when no prefill is running. */
  async settled(): Promise<void> {
    while (this.typing) await this.typing.catch(() => undefined);
  }
}

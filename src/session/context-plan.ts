/**
 * Planning a turn's prompt under a session's context policy: which of the oldest exchanges it
 * leaves out so that the prompt fits.
 *
 * `truncate` (default) drops the oldest exchanges (never the system prompt, never the new message)
 * until the prompt leaves room for the answer (max_tokens, at most a quarter of the context) and,
 * when there are turns enough, a quarter of the context more (so that the re-prefill a drop costs
 * buys several cached turns), and says so in the done event (`truncatedTurns`); `reject` (or a new
 * message that does not fit even alone) is WEFT_CONTEXT_OVERFLOW with the transcript unchanged.
 *
 * A plan is found in two steps per number of exchanges left out, so that a caller can tokenize in
 * between on its own thread or in the encode worker: `draftPrompt` (the text to encode, after the
 * checks that need no tokenizing) and `planPrompt` (the prompt once encoded, or null: leave out
 * one more). The session drops the exchanges from its conversation only when the turn begins.
 */
import { WeftError } from '../errors.js';
import type { ChatFormat, ChatMessage } from './chat-format.js';
import { type Conversation, type NextPrompt, oldestExchange } from './conversation.js';

export type ContextPolicy = 'truncate' | 'reject';

/** What a turn adds: a user message (`send`), or nothing (`respondAsync`: it answers the conversation as it stands). */
export type Content = string | null;

/** A turn's prompt once tokenized: every token, and how many of the oldest exchanges it leaves out. */
export interface Plan {
  prompt: number[];
  skip: number;
}

/** A turn's prompt before tokenizing: kept tokens, the text to encode, the exchanges left out. */
export interface Draft extends NextPrompt {
  skip: number;
}

/** What planning reads of a session, as it stands at the call (its policy may change between turns). */
export interface ContextScope {
  readonly conversation: Conversation;
  readonly format: ChatFormat;
  readonly policy: ContextPolicy;
  /** The session's context: the model's, or less with `maxContextTokens`. */
  readonly maxContext: number;
  /** The answer's max_tokens: the turn's, else the session's default, else 256. */
  readonly maxTokens: number;
}

/** Most prompt tokens a turn may have: all but one (reject), or leaving room for the answer (truncate). */
export function promptLimit(s: ContextScope): number {
  if (s.policy === 'reject') return s.maxContext - 1;
  const room = Math.min(s.maxTokens, Math.floor(s.maxContext / 4));
  return s.maxContext - Math.max(1, room);
}

/**
 * The text to encode for a turn that drops the `skip` oldest exchanges, after the checks that
 * need no tokenizing: a draft that is certain not to fit by its byte count moves on to the next
 * `skip` (truncate) or is WEFT_CONTEXT_OVERFLOW.
 */
export function draftPrompt(s: ContextScope, content: Content, skip: number): Draft {
  const limit = promptLimit(s);
  const added: ChatMessage[] = content === null ? [] : [{ role: 'user', content }];
  for (;;) {
    const d = skip === 0 ? s.conversation.prompt(added) : { prefix: [], text: s.format.render([...withoutOldest(s, skip, content), ...added], true) };
    const atLeast = d.prefix.length + s.format.tokenizer.minTokens(d.text);
    if (atLeast <= limit) return { ...d, skip };
    if (!canDrop(s, skip, content)) overflow(s, `at least ${atLeast}`, Buffer.byteLength(d.text));
    skip++;
  }
}

/**
 * The prompt of a draft whose text encoded to `ids`, or null when it must drop one more exchange.
 * Once turns are dropped, a quarter of the context more is freed when there are turns to drop:
 * dropping changes the prefix (the next turn prefills the whole conversation again), so it
 * should buy several turns of cache hits, not one.
 */
export function planPrompt(s: ContextScope, d: Draft, ids: number[], content: Content): Plan | null {
  const prompt = d.prefix.length > 0 ? [...d.prefix, ...ids] : ids;
  const limit = promptLimit(s);
  const target = d.skip === 0 ? limit : limit - Math.floor(s.maxContext / 4);
  if (prompt.length <= target || (prompt.length <= limit && !canDrop(s, d.skip, content))) return { prompt, skip: d.skip };
  if (!canDrop(s, d.skip, content)) overflow(s, String(prompt.length));
  return null;
}

/**
 * Messages a turn never drops to fit the context: for `respondAsync` (content null) those after
 * the last answer (the last message at least), which the answer is to; for `send`, none (its
 * message is apart).
 */
export function numKept(messages: readonly ChatMessage[], content: Content): number {
  if (content !== null) return 0;
  let n = 0;
  while (n < messages.length && messages[messages.length - 1 - n]!.role !== 'assistant') n++;
  return Math.max(Math.min(1, messages.length), n);
}

/** Whether the truncate policy can leave out one more exchange than `skip`. */
function canDrop(s: ContextScope, skip: number, content: Content): boolean {
  return s.policy === 'truncate' && withoutOldest(s, skip + 1, content).length < withoutOldest(s, skip, content).length;
}

function overflow(s: ContextScope, tokens: string, bytes?: number): never {
  const size = bytes === undefined ? `${tokens} tokens` : `${bytes} bytes: ${tokens} tokens`;
  throw new WeftError('WEFT_CONTEXT_OVERFLOW', `the conversation (${size}) does not fit the context of ${s.maxContext} tokens${s.policy === 'truncate' ? ', even with only the system prompt and the new message' : ''}`);
}

/** The messages without the `skip` oldest exchanges (the system message stays, and those a turn keeps: numKept). */
function withoutOldest(s: ContextScope, skip: number, content: Content): ChatMessage[] {
  const msgs = [...s.conversation.messages];
  const keepLast = numKept(msgs, content);
  for (let k = 0; k < skip; k++) {
    const { first, count } = oldestExchange(msgs, keepLast);
    if (count === 0) break;
    msgs.splice(first, count);
  }
  return msgs;
}

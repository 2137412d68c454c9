/**
 * A conversation as the model has seen it: the messages (text, for the transcript and for
 * re-rendering) and the token ids of everything so far, answers exactly as they were generated.
 *
 * The next turn's prompt is those tokens plus the tokens of what the chat template adds after
 * the last answer (its turn terminator, the new user message, the generation prompt), found by
 * rendering the conversation with a marker in place of the last answer's content. So a follow-up
 * turn re-uses the KV of every token so far, and never re-tokenizes an answer into different
 * tokens (a re-rendered answer that begins with a space would, with many templates, get two).
 *
 * When the tokens no longer match the messages (the system prompt changed, old turns were
 * dropped to fit the context, a message before the last answer was edited or removed: `splice`),
 * the whole conversation is rendered and encoded again.
 *
 * Messages added after the last answer (`splice` at the end: a front that adds items before it
 * asks for a response) leave the tokens as they are: they are rendered with the next prompt.
 */
import type { ChatFormat, ChatMessage } from './chat-format.js';

/** Never a substring of a real message, and not touched by templates that trim or escape content. */
const MARKER = '\u2063weft-answer\u2063';
/** Most characters of a template's text after an answer that an answer's stop text can overlap. */
const MAX_OVERLAP = 256;

/** A conversation as saved to disk (--state-dir) and read back. */
export interface ConversationData {
  messages: ChatMessage[];
  tokens: number[] | null;
  answerStart: number;
  lastGenerated: string;
}

export interface NextPrompt {
  /** Tokens that stay as they are (the conversation so far), possibly none. */
  prefix: number[];
  /** Text to encode and append after `prefix`. */
  text: string;
}

export class Conversation {
  readonly messages: ChatMessage[] = [];
  /** Every token so far, answers as generated; null when the messages must be rendered again. */
  private tokens: number[] | null = null;
  /** The last answer's generated text, stop string included (it may already hold the template's terminator). */
  private lastGenerated = '';
  /** Where the last answer's tokens start in `tokens`. */
  private answerStart = 0;
  /** Messages [0, numCovered) are what `tokens` holds (those after were added since: `splice`). */
  private numCovered = 0;

  constructor(private readonly format: ChatFormat) {}

  toJSON(): ConversationData {
    return { messages: this.messages.map((m) => ({ ...m })), tokens: this.tokens && [...this.tokens], answerStart: this.answerStart, lastGenerated: this.lastGenerated };
  }

  /** Takes over a saved conversation (checked by the caller). */
  restore(d: ConversationData): void {
    this.messages.length = 0;
    this.messages.push(...d.messages.map((m) => ({ ...m })));
    this.tokens = d.tokens && [...d.tokens];
    this.answerStart = d.answerStart;
    this.lastGenerated = d.lastGenerated;
    this.numCovered = this.messages.length;
  }

  /** Tokens of the conversation so far (empty when they must be rebuilt from the messages). */
  get numTokens(): number {
    return this.tokens?.length ?? 0;
  }

  get system(): string | undefined {
    return this.messages[0]?.role === 'system' ? this.messages[0].content : undefined;
  }

  /** Replaces (or with '' / undefined removes) the system message. The tokens are rebuilt at the next turn. */
  setSystem(system: string | undefined): void {
    if (this.messages[0]?.role === 'system') this.messages.splice(0, 1);
    if (system) this.messages.unshift({ role: 'system', content: system });
    this.tokens = null;
  }

  /** Adds messages as they are (a transcript to continue); the tokens are rebuilt at the next turn. */
  append(messages: ChatMessage[]): void {
    this.messages.push(...messages.map((m) => ({ ...m })));
    this.tokens = null;
  }

  /**
   * Replaces `deleteCount` messages from `start` with `messages`, which are kept as they are (the
   * same objects: a front may know them by identity). A change before the end of the last answer
   * makes the tokens be rebuilt at the next turn; one after it keeps them.
   */
  splice(start: number, deleteCount: number, ...messages: ChatMessage[]): void {
    this.messages.splice(start, deleteCount, ...messages);
    if (start < this.numCovered) {
      this.tokens = null;
      this.numCovered = 0;
    }
  }

  /** The prompt of a turn that adds the user message `content`. */
  next(content: string): NextPrompt {
    return this.prompt([{ role: 'user', content }]);
  }

  /** The prompt of a turn that answers the messages so far and `added` (none: the conversation as it stands). */
  prompt(added: ChatMessage[]): NextPrompt {
    const answer = this.messages[this.numCovered - 1];
    if (this.tokens && this.tokens.length > 0 && answer?.role === 'assistant') {
      const after = this.afterLastAnswer(added);
      if (after !== null) return { prefix: this.tokens, text: after.slice(overlap(this.lastGenerated, after)) };
    }
    return { prefix: [], text: this.format.render([...this.messages, ...added], true) };
  }

  /**
   * A turn ended: its user message (none: the turn answered the conversation as it stood) and
   * answer join the transcript; the tokens are its prompt and every generated token.
   */
  commit(content: string | null, answer: string, prompt: readonly number[], generated: readonly number[], generatedText: string): void {
    if (content !== null) this.messages.push({ role: 'user', content });
    this.messages.push({ role: 'assistant', content: answer });
    this.tokens = [...prompt, ...generated];
    this.answerStart = prompt.length;
    this.lastGenerated = generatedText;
    this.numCovered = this.messages.length;
  }

  /**
   * The last answer keeps its first `numGenerated` tokens (barge-in: what the user saw); its text
   * becomes theirs. Null when the conversation does not end with an answer whose tokens are known.
   */
  trimLastAnswer(numGenerated: number): { text: string; numTokens: number } | null {
    const last = this.messages[this.numCovered - 1];
    if (!this.tokens || last?.role !== 'assistant') return null;
    const answer = this.tokens.slice(this.answerStart, this.answerStart + Math.max(0, numGenerated));
    this.tokens = this.tokens.slice(0, this.answerStart + answer.length);
    this.lastGenerated = this.format.tokenizer.decode(answer);
    last.content = this.lastGenerated;
    return { text: last.content, numTokens: this.tokens.length };
  }

  /**
   * Drops the oldest exchange (user message and its answer; never the system message, nor the
   * `keepLast` last messages), so that a conversation fits the context again. False when there is
   * nothing left to drop.
   */
  dropOldestTurn(keepLast = 0): boolean {
    const { first, count } = oldestExchange(this.messages, keepLast);
    if (count === 0) return false;
    this.messages.splice(first, count);
    this.tokens = null;
    return true;
  }

  /** Rendered text after the last answer's content: terminator, the messages after it and `added`, the generation prompt. */
  private afterLastAnswer(added: ChatMessage[]): string | null {
    const msgs = this.messages.map((m, i) => (i === this.numCovered - 1 ? { role: m.role, content: MARKER } : m));
    const text = this.format.render([...msgs, ...added], true);
    const at = text.indexOf(MARKER);
    return at < 0 || text.indexOf(MARKER, at + 1) >= 0 ? null : text.slice(at + MARKER.length);
  }
}

/**
 * The oldest exchange of `messages` that may be dropped to fit the context: where it starts (after
 * a system message) and how many messages it has (a user message and what follows it up to the next
 * one; 0: none), never any of the `keepLast` last messages.
 */
export function oldestExchange(messages: readonly ChatMessage[], keepLast = 0): { first: number; count: number } {
  const first = messages[0]?.role === 'system' ? 1 : 0;
  const end = messages.length - keepLast;
  if (end <= first) return { first, count: 0 };
  let n = 1;
  while (first + n < end && messages[first + n]!.role !== 'user') n++;
  return { first, count: n };
}

/** Length of the longest suffix of `generated` that is a prefix of `after` (the terminator the model already produced). */
function overlap(generated: string, after: string): number {
  for (let n = Math.min(generated.length, after.length, MAX_OVERLAP); n > 0; n--) {
    if (generated.endsWith(after.slice(0, n))) return n;
  }
  return 0;
}

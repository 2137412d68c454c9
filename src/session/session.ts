/**
 * A chat session: its conversation (messages, and every token so far as the model saw and
 * generated it: src/session/conversation.ts), its engine Sequence (the conversation's KV, kept
 * across turns, and which of the tokens it holds), its defaults (src/session/session-options.ts),
 * and a state machine.
 *
 * KV reuse: a follow-up turn's prompt is the conversation's tokens plus the tokens of what the
 * chat template adds after the last answer; the KV holds a prefix of those tokens (all of them
 * but an answer's last, never-fed token), so only the new message is prefilled. When the
 * conversation must be rendered again (system prompt changed, turns dropped) the longest prefix
 * of the KV that still matches is kept. `cached_tokens` is the part of the prompt already in KV.
 * A turn equals a fresh sequence prefilled with the same prompt tokens (the sampler is reseeded).
 *
 * Context policy: a prompt that does not fit the context drops the oldest exchanges (`truncate`,
 * the default) or is WEFT_CONTEXT_OVERFLOW (`reject`): src/session/context-plan.ts plans it, and
 * the session drops the exchanges once the turn begins. Generation that reaches the context limit
 * ends with finish reason `length`. A `send` while a turn is running is WEFT_SEQUENCE_BUSY.
 *
 * Besides `send` (a user message and its answer), a front whose client builds the conversation
 * item by item (the Realtime front) adds, edits and removes messages with `splice` and asks for
 * an answer to the conversation as it stands with `respondAsync`; the KV is cut back to the
 * longest prefix that still matches when an edit changed what was already cached.
 *
 * Typing-ahead (`typeAhead`: src/session/typing-ahead.ts) prefills the KV with a message while it
 * is still being typed; this file keeps the KV's bookkeeping (`cached`) for it as for a turn.
 */
import { WeftError } from '../errors.js';
import type { Sequence } from '../engine/engine.js';
import type { DoneEvent, ScheduledRequest, Scheduler } from '../scheduler/scheduler.js';
import { ChatFormat, type ChatMessage } from './chat-format.js';
import { type Content, type ContextPolicy, type ContextScope, draftPrompt, numKept, type Plan, planPrompt, promptLimit } from './context-plan.js';
import { Conversation } from './conversation.js';
import type { AsyncTurnOptions, SessionOptions, TurnOptions } from './session-options.js';
import { Turn, type TurnDone } from './turn.js';
import { stableTokens, TypingAhead } from './typing-ahead.js';

export enum SessionState {
  /** No turn in progress; the conversation's KV is cached (possibly parked to host memory under KV pressure). */
  Idle = 'idle',
  /** A new message is being rendered and tokenized (in the encode worker when it is long: sendAsync). */
  Preparing = 'preparing',
  /** A turn was submitted and waits in the scheduler's admission queue. */
  Queued = 'queued',
  /** The turn's new prompt tokens are being prefilled (in chunks, alongside others' decode steps). */
  Prefilling = 'prefilling',
  /** Tokens are being sampled and streamed. */
  Generating = 'generating',
  /** Closed: the KV is freed and no further turn is accepted. */
  Closed = 'closed',
}

/** Where a session's KV is (src/session/kv-lifecycle.ts moves it). */
export type KvState = 'resident' | 'parked' | 'dropped';

export { Turn, type TurnDone, type TurnEvent, type TurnListener } from './turn.js';
export type { ContextPolicy } from './context-plan.js';
export type { AsyncTurnOptions, SessionOptions, TurnOptions } from './session-options.js';

let nextSessionId = 1;

export class Session {
  readonly id = `sess_${nextSessionId++}`;
  readonly format: ChatFormat;
  readonly conversation: Conversation;
  contextPolicy: ContextPolicy;
  private seq: Sequence | null;
  /** Token ids whose KV the sequence holds, in order (a prefix of the conversation's tokens). */
  private cached: number[] = [];
  private turn: Turn | null = null;
  private closed = false;
  private preparing = false;
  private activeAt = performance.now();
  private readonly typingAhead = new TypingAhead();

  constructor(
    readonly scheduler: Scheduler,
    readonly defaults: SessionOptions = {},
  ) {
    const tok = scheduler.engine.tokenizer;
    if (!tok) throw new WeftError('WEFT_TOKENIZER', 'a chat session needs the model tokenizer');
    this.format = defaults.format ?? new ChatFormat(tok);
    this.conversation = new Conversation(this.format);
    if (defaults.system) this.conversation.setSystem(defaults.system);
    if (defaults.history) this.conversation.append(defaults.history);
    this.contextPolicy = defaults.contextPolicy ?? 'truncate';
    if (this.contextPolicy !== 'truncate' && this.contextPolicy !== 'reject') throw new WeftError('WEFT_BAD_ARGUMENT', `contextPolicy must be truncate or reject (got ${String(this.contextPolicy)})`);
    this.seq = scheduler.engine.createSequence(defaults.sampling);
  }

  /** The transcript (system message first when there is one). */
  get messages(): readonly ChatMessage[] {
    return this.conversation.messages;
  }

  /** Replaces (or with '' removes) the system prompt; an idle session only. */
  setSystem(system: string | undefined): void {
    if (this.state !== SessionState.Idle) throw new WeftError('WEFT_SEQUENCE_BUSY', 'a response is running in this session');
    this.conversation.setSystem(system);
  }

  get state(): SessionState {
    if (this.closed) return SessionState.Closed;
    if (this.preparing) return SessionState.Preparing;
    const r = this.turn?.request;
    if (!r || r.state === 'done') return SessionState.Idle;
    return r.state === 'queued' ? SessionState.Queued : r.state === 'prefilling' ? SessionState.Prefilling : SessionState.Generating;
  }

  /** The turn in progress (or the last one), if any. */
  get currentTurn(): Turn | null {
    return this.turn;
  }

  /** Tokens of the conversation currently cached in the sequence's KV. */
  get cachedTokens(): number {
    return this.cached.length;
  }

  /**
   * Starts a turn: the user message is added and the answer streams from the returned Turn.
   * The conversation is tokenized on this thread: see sendAsync for long messages.
   */
  send(content: string, opts: TurnOptions = {}): Turn {
    this.checkIdle(content);
    const encode = (text: string) => this.format.tokenizer.encode(text, { addSpecialTokens: false });
    let plan: Plan | null = null;
    for (let skip = 0; plan === null; ) {
      const d = draftPrompt(this.scope(opts), content, skip);
      plan = planPrompt(this.scope(opts), d, encode(d.text), content);
      skip = d.skip + 1;
    }
    return this.begin(content, plan, opts);
  }

  /**
   * send, for input from the network: a conversation that cannot fit the context is rejected by
   * its byte count before it is tokenized, and a long one is tokenized in the encode worker, so
   * the event loop is never held for long. The session is busy (Preparing) meanwhile.
   */
  async sendAsync(content: string, opts: AsyncTurnOptions = {}): Promise<Turn> {
    this.checkIdle(content);
    return this.startAsync(content, opts);
  }

  /**
   * Starts a turn that answers the conversation as it stands (messages added with `splice`), as
   * sendAsync does; no user message is added, the answer joins the transcript. The context
   * policy drops the oldest exchanges before the messages that follow the last answer.
   */
  async respondAsync(opts: AsyncTurnOptions = {}): Promise<Turn> {
    this.checkIdle('');
    return this.startAsync(null, opts);
  }

  /**
   * Replaces `deleteCount` messages of the transcript from `start` with `messages` (kept as the
   * same objects); an idle session only. An edit before the end of the last answer makes the next
   * turn render the conversation again, keeping the longest prefix of the KV that still matches.
   */
  splice(start: number, deleteCount: number, ...messages: ChatMessage[]): void {
    if (this.closed || !this.seq) throw new WeftError('WEFT_DISPOSED', 'the session is closed');
    if (this.state !== SessionState.Idle || this.typingAhead.busy) throw new WeftError('WEFT_SEQUENCE_BUSY', 'a response is running in this session');
    this.conversation.splice(start, deleteCount, ...messages);
  }

  private async startAsync(content: Content, opts: AsyncTurnOptions): Promise<Turn> {
    // a typing-ahead prefill settles first (within a step or two); its KV is the new prompt's prefix.
    // Awaited only when one runs: with none, the session is Preparing before sendAsync returns
    if (this.typingAhead.busy) await this.typingAhead.settled();
    this.preparing = true;
    let plan: Plan | null = null;
    try {
      for (let skip = 0; plan === null; ) {
        const d = draftPrompt(this.scope(opts), content, skip);
        plan = planPrompt(this.scope(opts), d, await this.format.tokenizer.encodeAsync(d.text, { addSpecialTokens: false, signal: opts.signal }), content);
        skip = d.skip + 1;
      }
    } finally {
      this.preparing = false;
    }
    if (this.closed) throw new WeftError('WEFT_DISPOSED', 'the session is closed');
    if (opts.signal?.aborted) throw new WeftError('WEFT_CANCELLED', 'the message was cancelled before its response started');
    return this.begin(content, plan, opts);
  }

  private checkIdle(content: string): void {
    if (this.closed || !this.seq) throw new WeftError('WEFT_DISPOSED', 'the session is closed');
    if (typeof content !== 'string') throw new WeftError('WEFT_BAD_ARGUMENT', 'content must be a string');
    if (this.state !== SessionState.Idle) throw new WeftError('WEFT_SEQUENCE_BUSY', 'a response is already running in this session');
  }

  /**
   * Typing-ahead: prefills the KV with the conversation and the part of a message still being
   * typed that more text can no longer change (src/session/typing-ahead.ts). The turn that sends
   * the message then prefills only the rest; an edit that changed earlier text is cut back to the
   * common prefix. Resolves with the tokens now in KV. A partial message that cannot fit is
   * WEFT_CONTEXT_OVERFLOW.
   */
  typeAhead(partial: string): Promise<number> {
    if (this.closed || !this.seq) return Promise.reject(new WeftError('WEFT_DISPOSED', 'the session is closed'));
    if (this.state !== SessionState.Idle) return Promise.reject(new WeftError('WEFT_SEQUENCE_BUSY', 'a response is running in this session'));
    return this.typingAhead.enqueue(async () => {
      if (this.closed || !this.seq || this.state !== SessionState.Idle) return this.cached.length;
      const stable = await stableTokens(this.conversation, this.format, partial, promptLimit(this.scope({})));
      if (this.closed || !this.seq || this.state !== SessionState.Idle) return this.cached.length;
      return this.prefillAhead(stable);
    });
  }

  /** Makes the KV hold `stable` (a typing-ahead's tokens): cut back to the common prefix, the rest prefilled. */
  private async prefillAhead(stable: number[]): Promise<number> {
    let keep = 0;
    while (keep < Math.min(this.cached.length, stable.length) && this.cached[keep] === stable[keep]) keep++;
    keep = this.cutKv(keep);
    if (stable.length <= keep) return keep;
    const prior = this.cached.slice(0, keep);
    const request = this.scheduler.submit({ sequence: this.seq!, tokens: stable.slice(keep), prefillOnly: true });
    await request.done;
    this.cached = [...prior, ...request.fed];
    if (this.seq && !this.closed) this.scheduler.release(this.seq);
    return this.cached.length;
  }

  /** The session's context: the model's, or less with `maxContextTokens`. */
  private get maxContext(): number {
    const model = this.scheduler.engine.stats().maxContext;
    return Math.min(model, this.defaults.maxContextTokens ?? model);
  }

  /** What the context policy plans a turn's prompt with, read afresh at each step (contextPolicy may change). */
  private scope(opts: TurnOptions): ContextScope {
    const maxTokens = opts.maxTokens ?? this.defaults.maxTokens ?? 256;
    return { conversation: this.conversation, format: this.format, policy: this.contextPolicy, maxContext: this.maxContext, maxTokens };
  }

  /** Submits the turn whose whole prompt is `plan.prompt`. */
  private begin(content: Content, plan: Plan, opts: TurnOptions): Turn {
    if (this.closed || !this.seq) throw new WeftError('WEFT_DISPOSED', 'the session is closed');
    if (this.state !== SessionState.Idle) throw new WeftError('WEFT_SEQUENCE_BUSY', 'a response is already running in this session');
    const ids = plan.prompt;
    // keep the longest cached prefix, leaving at least one token to prefill (the sample comes from it)
    let keep = 0;
    const limit = Math.min(this.cached.length, ids.length - 1);
    while (keep < limit && this.cached[keep] === ids[keep]) keep++;
    const sampling = { ...this.defaults.sampling, ...opts.sampling };
    const stopStrings = [...this.format.stopStrings, ...(this.defaults.stop ?? []), ...(opts.stop ?? [])];
    keep = this.cutKv(keep);
    const seq = this.seq;
    const prior = this.cached.slice(0, keep);
    // the KV now holds `prior` only, whether or not the scheduler accepts the turn (WEFT_OVERLOADED)
    this.cached = prior;
    opts.admit?.(ids.length, keep);
    const request = this.scheduler.submit({
      sequence: seq,
      tokens: ids.slice(keep),
      sampling,
      // the answer stops at the session's context cap too
      maxTokens: Math.max(1, Math.min(opts.maxTokens ?? this.defaults.maxTokens ?? 256, this.maxContext - ids.length)),
      decoder: this.format.tokenizer.createDecoder(),
      stopStrings,
      isBlocked: opts.isBlocked ?? this.defaults.isBlocked,
      tenant: opts.tenant ?? this.defaults.tenant,
      weight: opts.weight ?? this.defaults.weight,
    });
    const keepLast = numKept(this.conversation.messages, content);
    for (let k = 0; k < plan.skip; k++) this.conversation.dropOldestTurn(keepLast);
    this.activeAt = performance.now();
    const done = request.done.then((ev) => this.settle(content, request, ev, stopStrings, prior, ids, plan.skip));
    this.turn = new Turn(request, done, ids);
    return this.turn;
  }

  /**
   * Cuts the KV to its first `keep` tokens. A parked sequence is restored to be cut; one that
   * cannot be (no free pages) is replaced by a new, empty one. Returns the tokens kept.
   */
  private cutKv(keep: number): number {
    if (keep >= this.cached.length) return keep;
    const seq = this.seq!;
    let parked = seq.info().parked;
    if (parked) {
      try {
        this.scheduler.engine.native.restoreSequence(seq.id);
        parked = false;
      } catch {
        /* no free pages: replaced below */
      }
    }
    if (parked) {
      // one that is only extended is restored by the scheduler at admission
      this.scheduler.forget(seq);
      seq.free();
      this.seq = this.scheduler.engine.createSequence(this.defaults.sampling);
      keep = 0;
    } else {
      seq.truncate(keep);
    }
    this.cached = this.cached.slice(0, keep);
    return keep;
  }

  /**
   * Barge-in: the last answer keeps only its first `numTokens` generated tokens (what the user
   * was shown), in the transcript and in the KV; an idle session only. Returns the kept text.
   */
  truncateLastAnswer(numTokens: number): string {
    if (this.closed || !this.seq) throw new WeftError('WEFT_DISPOSED', 'the session is closed');
    if (this.state !== SessionState.Idle) throw new WeftError('WEFT_SEQUENCE_BUSY', 'a response is running in this session');
    // a typing-ahead prefill holds the sequence: refuse before anything changes (the caller waits: typingSettled)
    if (this.typingAhead.busy) throw new WeftError('WEFT_SEQUENCE_BUSY', 'a typing-ahead prefill is running in this session');
    const kept = this.conversation.trimLastAnswer(numTokens);
    if (kept === null) throw new WeftError('WEFT_NO_RESPONSE', 'the session has no answer to truncate');
    this.cutKv(Math.min(this.cached.length, kept.numTokens));
    return kept.text;
  }

  private settle(content: Content, request: ScheduledRequest, ev: DoneEvent, stopStrings: string[], prior: number[], prompt: number[], truncatedTurns: number): TurnDone {
    const generatedText = this.format.tokenizer.decode(request.generated);
    let text = generatedText;
    let cut = -1;
    for (const s of stopStrings) {
      const i = s ? text.indexOf(s) : -1;
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) text = text.slice(0, cut);
    this.cached = [...prior, ...request.fed];
    this.activeAt = performance.now();
    this.conversation.commit(content, text, prompt, request.generated, generatedText);
    if (this.seq && !this.closed) this.scheduler.release(this.seq);
    const done: TurnDone = {
      type: 'done',
      finishReason: ev.finishReason,
      text,
      usage: { prompt_tokens: ev.usage.promptTokens + ev.usage.cachedTokens, cached_tokens: ev.usage.cachedTokens, completion_tokens: ev.usage.completionTokens },
      timing: { queue_ms: ev.timing.queueMs, ttft_ms: ev.timing.ttftMs, duration_ms: ev.timing.durationMs },
      truncatedTurns,
    };
    if (ev.error) done.error = ev.error;
    return done;
  }

  /**
   * Parks the conversation's KV in host memory, returning its pages to the pool (an idle session
   * only; no-op otherwise). The next turn restores it (or re-prefills when the prefix changed).
   */
  async park(): Promise<void> {
    if (this.closed || !this.seq || this.state !== SessionState.Idle) return;
    const info = this.seq.info();
    if (info.parked || info.busy || info.numPages === 0) return;
    await this.seq.park();
  }

  /**
   * Drops the conversation's KV (device and host memory): only the tokens stay, and the next turn
   * prefills them again, computing what the kept KV would have held. An idle session only.
   */
  drop(): void {
    if (this.closed || !this.seq || this.state !== SessionState.Idle || this.cached.length === 0 || this.typingAhead.busy) return;
    if (this.seq.info().busy) return; // in a step (a typing-ahead prefill): the next sweep
    this.scheduler.forget(this.seq);
    this.seq.free();
    this.seq = this.scheduler.engine.createSequence(this.defaults.sampling);
    this.cached = [];
  }

  /** Where the conversation's KV is: `resident` (KV pages), `parked` (host memory), `dropped` (tokens only). */
  get kvState(): KvState {
    if (this.cached.length === 0 && this.conversation.numTokens > 0) return 'dropped';
    if (!this.seq || this.closed) return 'dropped';
    try {
      return this.seq.info().parked ? 'parked' : 'resident';
    } catch {
      return 'dropped';
    }
  }

  /** Resolves when no typing-ahead prefill is running. */
  typingSettled(): Promise<void> {
    return this.typingAhead.settled();
  }

  /** When the session last started or ended a turn (performance.now()). */
  get lastActiveAt(): number {
    return this.activeAt;
  }

  /** Cancels a running turn and frees the KV (once the turn's step settles). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const turn = this.turn;
    if (turn) {
      turn.cancel();
      await turn.done;
    }
    await this.typingSettled(); // a typing-ahead prefill holds the sequence until its step settles
    if (this.seq) {
      this.scheduler.forget(this.seq);
      try {
        this.seq.free();
      } catch {
        /* already gone */
      }
      this.seq = null;
    }
  }
}

/**
 * A chat session: its transcript, its engine Sequence (the conversation's KV, kept across turns),
 * its sampling defaults and limits, and a state machine.
 *
 * KV reuse: each turn renders the whole transcript with the chat template and encodes it; the
 * longest common prefix with the tokens already in the sequence's KV is kept (the rest of the
 * KV is truncated) and only the remaining tokens are prefilled. `cached_tokens` is that prefix.
 * Because the kept KV is exactly the prefix of the fresh encoding, a follow-up turn computes the
 * same thing a fresh session given the whole transcript would (the sampler is reseeded per turn).
 *
 * Context policy: a turn whose prompt does not fit the context (leaving room for one generated
 * token) is rejected with WEFT_CONTEXT_OVERFLOW and the transcript is left unchanged. Generation
 * that reaches the context limit ends with finish reason `length`.
 * A `send` while a turn is running is rejected with WEFT_SEQUENCE_BUSY.
 */
import { WeftError } from '../errors.js';
import type { SamplingOptions, Sequence } from '../engine/engine.js';
import type { DoneEvent, FinishReason, ScheduledRequest, Scheduler } from '../scheduler/scheduler.js';
import { ChatFormat, type ChatMessage } from './chat-format.js';

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

export interface TurnOptions {
  sampling?: SamplingOptions;
  maxTokens?: number;
  /** Stop strings (in addition to the chat template's turn terminator). */
  stop?: string[];
  /** Backpressure hook (see Scheduler SubmitOptions.isBlocked). */
  isBlocked?: () => boolean;
}

export interface AsyncTurnOptions extends TurnOptions {
  /** Gives up on the message while it is being tokenized (WEFT_CANCELLED; the transcript is unchanged). */
  signal?: AbortSignal;
}

export interface SessionOptions extends TurnOptions {
  system?: string;
  /** Prior messages (a transcript to continue). */
  history?: ChatMessage[];
  /** Shared by sessions of the same engine and tokenizer; built once when omitted. */
  format?: ChatFormat;
}

export type TurnEvent =
  /** One per generated token (seq from 0, no gaps; text may be ''); a last delta with token -1 carries text the decoder held back to the end. */
  | { type: 'delta'; seq: number; text: string; token: number }
  | {
      type: 'done';
      finishReason: FinishReason;
      /** The assistant message as added to the transcript. */
      text: string;
      error?: DoneEvent['error'];
      usage: { prompt_tokens: number; cached_tokens: number; completion_tokens: number };
      timing: { queue_ms: number; ttft_ms: number; duration_ms: number };
    };

export type TurnDone = Extract<TurnEvent, { type: 'done' }>;

/** Receives a turn's events as they come (`Turn.listen`): the push alternative to iterating. */
export interface TurnListener {
  /** One per generated token, seq from 0 without gaps (text may be ''); a last one may carry held-back text. */
  delta(seq: number, text: string): void;
  done(ev: TurnDone): void;
  /** The turn could not be settled (an internal failure). */
  fail(err: unknown): void;
}

/**
 * One turn in progress: iterate it for deltas and the done event, or `listen` (one of the two);
 * `done` resolves either way.
 */
export class Turn implements AsyncIterable<TurnEvent> {
  constructor(
    readonly request: ScheduledRequest,
    readonly done: Promise<TurnDone>,
  ) {}

  cancel(): void {
    this.request.cancel();
  }

  /** Text the decoder held back until the end (a prefix of a stop string that never completed). */
  private heldBack(done: TurnDone, streamed: string): string {
    return done.text.length > streamed.length && done.text.startsWith(streamed) ? done.text.slice(streamed.length) : '';
  }

  async *[Symbol.asyncIterator](): AsyncIterator<TurnEvent> {
    let text = '';
    for await (const ev of this.request) {
      if (ev.type === 'token') {
        text += ev.text ?? '';
        yield { type: 'delta', seq: ev.index, text: ev.text ?? '', token: ev.token };
      }
    }
    const done = await this.done;
    const tail = this.heldBack(done, text);
    if (tail) yield { type: 'delta', seq: this.request.generated.length, text: tail, token: -1 };
    yield done;
  }

  /** Pushes the turn's events to `l` as each scheduler step delivers them: no promise or event object per token. */
  listen(l: TurnListener): void {
    let text = '';
    this.request.listen((ev) => {
      if (ev.type !== 'token') return;
      const t = ev.text ?? '';
      text += t;
      l.delta(ev.index, t);
    });
    this.done.then(
      (done) => {
        const tail = this.heldBack(done, text);
        if (tail) l.delta(this.request.generated.length, tail);
        l.done(done);
      },
      (err) => l.fail(err),
    ).catch(() => undefined); // a listener that throws never becomes an unhandled rejection
  }
}

let nextSessionId = 1;

export class Session {
  readonly id = `sess_${nextSessionId++}`;
  readonly messages: ChatMessage[] = [];
  readonly format: ChatFormat;
  private seq: Sequence | null;
  /** Token ids whose KV the sequence holds, in order. */
  private cached: number[] = [];
  private turn: Turn | null = null;
  private closed = false;
  private preparing = false;

  constructor(
    readonly scheduler: Scheduler,
    readonly defaults: SessionOptions = {},
  ) {
    const tok = scheduler.engine.tokenizer;
    if (!tok) throw new WeftError('WEFT_TOKENIZER', 'a chat session needs the model tokenizer');
    this.format = defaults.format ?? new ChatFormat(tok);
    if (defaults.system) this.messages.push({ role: 'system', content: defaults.system });
    if (defaults.history) this.messages.push(...defaults.history.map((m) => ({ ...m })));
    this.seq = scheduler.engine.createSequence(defaults.sampling);
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
    const messages = this.nextConversation(content);
    const text = this.format.render(messages, true);
    this.checkFits(text);
    return this.begin(content, this.format.tokenizer.encode(text, { addSpecialTokens: false }), opts);
  }

  /**
   * send, for input from the network: a conversation that cannot fit the context is rejected by
   * its byte count before it is tokenized, and a long one is tokenized in the encode worker, so
   * the event loop is never held for long. The session is busy (Preparing) meanwhile.
   */
  async sendAsync(content: string, opts: AsyncTurnOptions = {}): Promise<Turn> {
    const messages = this.nextConversation(content);
    const text = this.format.render(messages, true);
    this.checkFits(text);
    this.preparing = true;
    let ids: number[];
    try {
      ids = await this.format.tokenizer.encodeAsync(text, { addSpecialTokens: false, signal: opts.signal });
    } finally {
      this.preparing = false;
    }
    if (this.closed) throw new WeftError('WEFT_DISPOSED', 'the session is closed');
    if (opts.signal?.aborted) throw new WeftError('WEFT_CANCELLED', 'the message was cancelled before its response started');
    return this.begin(content, ids, opts);
  }

  /** The transcript with the new user message, after the checks that need no tokenizing. */
  private nextConversation(content: string): ChatMessage[] {
    if (this.closed || !this.seq) throw new WeftError('WEFT_DISPOSED', 'the session is closed');
    if (typeof content !== 'string') throw new WeftError('WEFT_BAD_ARGUMENT', 'content must be a string');
    if (this.state !== SessionState.Idle) throw new WeftError('WEFT_SEQUENCE_BUSY', 'a response is already running in this session');
    return [...this.messages, { role: 'user', content }];
  }

  /** Rejects a rendered conversation that is certain not to fit by its byte count alone (no tokenizing). */
  private checkFits(text: string): void {
    const maxContext = this.scheduler.engine.stats().maxContext;
    const atLeast = this.format.tokenizer.minTokens(text);
    if (atLeast >= maxContext) {
      throw new WeftError('WEFT_CONTEXT_OVERFLOW', `the conversation (${Buffer.byteLength(text)} bytes: at least ${atLeast} tokens) does not fit the context of ${maxContext} tokens`);
    }
  }

  /** Submits the turn whose whole prompt is `ids`. */
  private begin(content: string, ids: number[], opts: TurnOptions): Turn {
    if (this.closed || !this.seq) throw new WeftError('WEFT_DISPOSED', 'the session is closed');
    if (this.state !== SessionState.Idle) throw new WeftError('WEFT_SEQUENCE_BUSY', 'a response is already running in this session');
    const maxContext = this.scheduler.engine.stats().maxContext;
    if (ids.length >= maxContext) {
      throw new WeftError('WEFT_CONTEXT_OVERFLOW', `the conversation (${ids.length} tokens) does not fit the context of ${maxContext} tokens`);
    }
    // keep the longest cached prefix, leaving at least one token to prefill (the sample comes from it)
    let keep = 0;
    const limit = Math.min(this.cached.length, ids.length - 1);
    while (keep < limit && this.cached[keep] === ids[keep]) keep++;
    let seq = this.seq;
    const sampling = { ...this.defaults.sampling, ...opts.sampling };
    const stopStrings = [...this.format.stopStrings, ...(this.defaults.stop ?? []), ...(opts.stop ?? [])];
    if (keep < this.cached.length) {
      let parked = seq.info().parked;
      if (parked) {
        // truncating needs the pages in place: restore now when the pool has room
        try {
          this.scheduler.engine.native.restoreSequence(seq.id);
          parked = false;
        } catch {
          /* no free pages: replaced below */
        }
      }
      if (parked) {
        // a parked sequence that must be cut and cannot be restored is replaced (full re-prefill);
        // one that is only extended is restored by the scheduler at admission
        this.scheduler.forget(seq);
        seq.free();
        seq = this.seq = this.scheduler.engine.createSequence(this.defaults.sampling);
        keep = 0;
      } else {
        seq.truncate(keep);
      }
    }
    const prior = this.cached.slice(0, keep);
    // the KV now holds `prior` only, whether or not the scheduler accepts the turn (WEFT_OVERLOADED)
    this.cached = prior;
    const request = this.scheduler.submit({
      sequence: seq,
      tokens: ids.slice(keep),
      sampling,
      maxTokens: opts.maxTokens ?? this.defaults.maxTokens ?? 256,
      decoder: this.format.tokenizer.createDecoder(),
      stopStrings,
      isBlocked: opts.isBlocked ?? this.defaults.isBlocked,
    });
    this.messages.push({ role: 'user', content });
    const done = request.done.then((ev) => this.settle(request, ev, stopStrings, prior));
    this.turn = new Turn(request, done);
    return this.turn;
  }

  private settle(request: ScheduledRequest, ev: DoneEvent, stopStrings: string[], prior: number[]): TurnDone {
    let text = this.format.tokenizer.decode(request.generated);
    let cut = -1;
    for (const s of stopStrings) {
      const i = s ? text.indexOf(s) : -1;
      if (i >= 0 && (cut < 0 || i < cut)) cut = i;
    }
    if (cut >= 0) text = text.slice(0, cut);
    this.cached = [...prior, ...request.fed];
    this.messages.push({ role: 'assistant', content: text });
    if (this.seq && !this.closed) this.scheduler.release(this.seq);
    const done: TurnDone = {
      type: 'done',
      finishReason: ev.finishReason,
      text,
      usage: { prompt_tokens: ev.usage.promptTokens + ev.usage.cachedTokens, cached_tokens: ev.usage.cachedTokens, completion_tokens: ev.usage.completionTokens },
      timing: { queue_ms: ev.timing.queueMs, ttft_ms: ev.timing.ttftMs, duration_ms: ev.timing.durationMs },
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

  /** Cancels a running turn and frees the KV (once the turn's step settles). */
  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    const turn = this.turn;
    if (turn) {
      turn.cancel();
      await turn.done;
    }
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

/**
 * A request submitted to the Scheduler: what a submit may ask for (`checkSubmit`), its state, its
 * events (an async iterator, or a callback with `listen`) and how they are made from step results,
 * the tokens it fed and generated, and cancel.
 */
import { WeftError, type WeftErrorCode } from '../errors.js';
import type { SamplingOptions, Sequence, StepResult } from '../engine/engine.js';
import type { StreamDecoder } from '../tokenizer/stream-decoder.js';
import { Channel } from './channel.js';
import { TextStopper } from './text-stop.js';

export type FinishReason = 'stop' | 'length' | 'cancelled' | 'error';

/** Lifecycle of a request inside the scheduler. */
export type RequestState = 'queued' | 'prefilling' | 'generating' | 'done';

export interface TokenEvent {
  type: 'token';
  /** 0-based index of the generated token. */
  index: number;
  token: number;
  /** Text completed by this token (only when the request was given a decoder; may be ''). */
  text?: string;
  logprob?: number;
  top?: { token: number; logprob: number }[];
}

export interface DoneEvent {
  type: 'done';
  finishReason: FinishReason;
  /** Text still held back by the decoder at the end (only with a decoder). */
  text?: string;
  error?: { code: WeftErrorCode; message: string };
  usage: { promptTokens: number; cachedTokens: number; completionTokens: number };
  timing: { queueMs: number; ttftMs: number; durationMs: number };
}

export type RequestEvent = TokenEvent | DoneEvent;

export interface SubmitOptions {
  /** Tokens to prefill (appended to the sequence's cached KV). At least one. */
  tokens: number[];
  /** An existing sequence (a session's): its KV is kept and extended. Default: a new one, freed at the end. */
  sequence?: Sequence;
  /** Set on the sequence before the first step (reseeds its sampler). Required for a new sequence's non-default sampling. */
  sampling?: SamplingOptions;
  /** Most tokens to generate. Default 256. */
  maxTokens?: number;
  /** Only extend the sequence's KV with `tokens` (no sampling): done with finish reason `length` and no token. */
  prefillOnly?: boolean;
  /** Streaming text: a decoder (`tokenizer.createDecoder()`) and optional stop strings. */
  decoder?: StreamDecoder;
  stopStrings?: string[];
  /** Backpressure hook: true while the consumer has too much buffered (e.g. socket bytes). Call `wake()` when it drains. */
  isBlocked?: () => boolean;
  signal?: AbortSignal;
  /** The tenant (an API key's name) the request is scheduled for: steps and admission are shared fairly across tenants. Default ''. */
  tenant?: string;
  /** The tenant's scheduling weight: a positive finite number, default 1. Each submit sets its tenant's weight. */
  weight?: number;
}

/**
 * Checks what a submit asks for on its own, against the model's vocabulary and context (the
 * scheduler's state is checked by the scheduler). Throws WEFT_BAD_ARGUMENT / WEFT_TOKEN_OUT_OF_RANGE
 * / WEFT_CONTEXT_OVERFLOW; returns the weight and maxTokens, defaults applied.
 */
export function checkSubmit(opts: SubmitOptions, vocabSize: number, maxContext: number): { weight: number; maxTokens: number } {
  const { tokens } = opts;
  if (!Array.isArray(tokens) || tokens.length === 0) throw new WeftError('WEFT_BAD_ARGUMENT', 'submit: tokens must be a non-empty array');
  for (const t of tokens) {
    if (!Number.isInteger(t) || t < 0 || t >= vocabSize) throw new WeftError('WEFT_TOKEN_OUT_OF_RANGE', `token id ${t} is not in [0, ${vocabSize})`);
  }
  if (opts.tenant !== undefined && typeof opts.tenant !== 'string') throw new WeftError('WEFT_BAD_ARGUMENT', 'tenant must be a string');
  const weight = opts.weight ?? 1;
  if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0) throw new WeftError('WEFT_BAD_ARGUMENT', `weight must be a positive finite number (got ${weight})`);
  const maxTokens = opts.maxTokens ?? 256;
  if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new WeftError('WEFT_BAD_ARGUMENT', `maxTokens must be a positive integer (got ${maxTokens})`);
  const cached = opts.sequence ? opts.sequence.numTokens : 0;
  if (cached + tokens.length > maxContext) {
    throw new WeftError('WEFT_CONTEXT_OVERFLOW', `the prompt (${tokens.length} new + ${cached} cached tokens) does not fit the context of ${maxContext}`);
  }
  return { weight, maxTokens };
}

/** What a request needs of its scheduler. */
export interface RequestOwner {
  cancel(req: ScheduledRequest): void;
  wake(): void;
}

let nextRequestId = 1;

/** A submitted request: its events, its state, and cancel. */
export class ScheduledRequest implements AsyncIterable<RequestEvent> {
  readonly id = nextRequestId++;
  /** The tenant it is scheduled for (`opts.tenant`, or ''). */
  readonly tenant: string;
  state: RequestState = 'queued';
  readonly events = new Channel<RequestEvent>();
  /** Token ids this request appended to the sequence's KV (prompt tokens, then fed decode tokens). */
  readonly fed: number[] = [];
  /** Generated token ids (stop token excluded). */
  readonly generated: number[] = [];
  finishReason: FinishReason | null = null;
  readonly done: Promise<DoneEvent>;

  /** @internal */ seq: Sequence | null;
  /** @internal */ ownsSeq: boolean;
  /** @internal */ offset = 0;
  /** @internal */ nextToken = -1;
  /** @internal */ inFlight = false;
  /** @internal Events emitted and not yet delivered (a step being settled). */ undelivered = 0;
  /** @internal */ cancelRequested = false;
  /** @internal */ isolate = false;
  /** @internal */ lastServed = 0;
  /** @internal */ cachedAtStart = 0;
  /** @internal */ readonly submittedAt = performance.now();
  /** @internal */ admittedAt = 0;
  /** @internal */ firstTokenAt = 0;
  /** @internal */ stopper: TextStopper | null;
  /** @internal */ resolveDone!: (e: DoneEvent) => void;
  private sink: ((ev: RequestEvent) => void) | null = null;

  constructor(
    private readonly scheduler: RequestOwner,
    readonly opts: SubmitOptions,
    readonly maxTokens: number,
  ) {
    this.tenant = opts.tenant ?? '';
    this.seq = opts.sequence ?? null;
    this.ownsSeq = !opts.sequence;
    this.stopper = opts.decoder ? new TextStopper(opts.decoder, opts.stopStrings ?? []) : null;
    this.done = new Promise((r) => (this.resolveDone = r));
    this.events.onDrain = () => this.scheduler.wake();
  }

  [Symbol.asyncIterator](): AsyncIterator<RequestEvent> {
    return this.events[Symbol.asyncIterator]();
  }

  /**
   * Receives the events through a callback, called synchronously as each step's events are
   * delivered, instead of the async iterator (no promise per event). Events delivered before
   * are passed at once. A callback that throws cancels the request.
   */
  listen(sink: (ev: RequestEvent) => void): void {
    if (this.sink) throw new WeftError('WEFT_BAD_ARGUMENT', 'a request has one listener');
    this.sink = sink;
    for (const ev of this.events.takeAll()) this.deliverTo(sink, ev);
  }

  private deliverTo(sink: (ev: RequestEvent) => void, ev: RequestEvent): void {
    try {
      sink(ev);
    } catch {
      if (ev.type !== 'done') this.cancel();
    }
  }

  /** @internal Hands one event to the consumer; a done event also ends the stream and resolves `done`. */
  deliver(ev: RequestEvent): void {
    if (this.sink) this.deliverTo(this.sink, ev);
    else this.events.push(ev);
    if (ev.type === 'done') {
      this.events.close();
      this.resolveDone(ev);
    }
  }

  /**
   * @internal Whether it may go in the next step: not in one, not done or cancelled, and (when
   * generating) its consumer not behind by `maxBufferedEvents` nor blocked.
   */
  runnable(maxBufferedEvents: number): boolean {
    if (this.inFlight || this.state === 'done' || this.cancelRequested) return false;
    if (this.state !== 'generating') return true;
    if (this.events.buffered + this.undelivered >= maxBufferedEvents) return false;
    return !this.consumerBlocked();
  }

  /** The backpressure hook; one that throws (a transport already gone) counts as not blocked. */
  private consumerBlocked(): boolean {
    try {
      return this.opts.isBlocked?.() === true;
    } catch {
      return false;
    }
  }

  /**
   * @internal Takes the token a step sampled for it: its event (with logprobs when asked for, and
   * text with a decoder), and whether a stop string ended it.
   */
  takeToken(res: StepResult): { ev: TokenEvent; stopped: boolean } {
    const token = res.token!;
    if (this.firstTokenAt === 0) this.firstTokenAt = performance.now();
    this.generated.push(token);
    const ev: TokenEvent = { type: 'token', index: this.generated.length - 1, token };
    if (res.logprob !== undefined && this.opts.sampling?.logprobs) {
      ev.logprob = res.logprob;
      ev.top = res.top ?? [];
    }
    let stopped = false;
    if (this.stopper) {
      const out = this.stopper.push(token);
      ev.text = out.text;
      stopped = out.stop;
    }
    return { ev, stopped };
  }

  /** @internal Its done event: usage, timing, and the text a decoder still held back. */
  doneEvent(reason: FinishReason, error?: DoneEvent['error']): DoneEvent {
    const now = performance.now();
    const admitted = this.admittedAt || now;
    const done: DoneEvent = {
      type: 'done',
      finishReason: reason,
      usage: { promptTokens: this.opts.tokens.length, cachedTokens: this.cachedAtStart, completionTokens: this.generated.length },
      timing: { queueMs: admitted - this.submittedAt, ttftMs: this.firstTokenAt ? this.firstTokenAt - this.submittedAt : 0, durationMs: now - this.submittedAt },
    };
    if (error) done.error = error;
    if (this.stopper && reason !== 'stop') done.text = this.stopper.flush();
    return done;
  }

  /** @internal Frees the sequence when the request created it. */
  freeOwnedSequence(): void {
    if (!this.seq || !this.ownsSeq) return;
    try {
      this.seq.free();
    } catch {
      /* already gone */
    }
  }

  /** Stops the request: at once when it is not in a step, else when its step settles. */
  cancel(): void {
    this.scheduler.cancel(this);
  }
}

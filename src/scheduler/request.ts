/**
 * A request submitted to the Scheduler: its state, its events (an async iterator, or a callback
 * with `listen`), the tokens it fed and generated, and cancel.
 */
import { WeftError, type WeftErrorCode } from '../errors.js';
import type { SamplingOptions, Sequence } from '../engine/engine.js';
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

  /** Stops the request: at once when it is not in a step, else when its step settles. */
  cancel(): void {
    this.scheduler.cancel(this);
  }
}

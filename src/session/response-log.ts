/**
 * One response's events kept for replay: a connection that drops and comes back with the last
 * `seq` it got receives exactly the deltas after it, then the live stream, then `done` once.
 *
 * The log listens to the turn (it is the turn's only listener) and forwards to the attached
 * consumer, if any. It keeps the whole text so far and a window of the latest deltas of at most
 * `replayBytes` bytes (oldest dropped). While no consumer is attached the response keeps
 * generating until that window is full, then it is paused (`blocked()`, the scheduler's
 * backpressure hook) with its KV kept, as a slow reader's is.
 */
import type { TokenInfo, TurnDone, TurnListener } from './turn.js';

/** Builds a delta's frame (a protocol front's wire format), once: it is sent and kept for replay. */
export type FrameBuilder = (seq: number, text: string, token?: TokenInfo) => string;

/** Where a log's events go: a protocol front's connection. */
export interface ResponseSink {
  /** A delta's frame, as built by the log's FrameBuilder. */
  delta(seq: number, frame: string): void;
  done(done: TurnDone): void;
  fail(err: unknown): void;
  /** True while the consumer has too much unsent (socket backpressure). */
  blocked(): boolean;
}

/** What a resume gets for a `last_seq`: deltas to send, or a gap the window no longer holds. */
export type Replay = { frames: string[] } | { gap: true; text: string; nextSeq: number };

export class ResponseLog implements TurnListener {
  /** The whole text so far (every delta's text, in order). */
  text = '';
  /** Seq of the next delta. */
  nextSeq = 0;
  /** Set once the turn ended. */
  result: { done: TurnDone } | { error: unknown } | null = null;
  private readonly window: { seq: number; frame: string; bytes: number }[] = [];
  private windowBytes = 0;
  private sink: ResponseSink | null = null;

  constructor(
    readonly responseId: string,
    private readonly replayBytes: number,
    private readonly frame: FrameBuilder,
  ) {}

  get attached(): boolean {
    return this.sink !== null;
  }

  /** The scheduler's backpressure hook for this response. */
  blocked(): boolean {
    if (this.sink) return this.sink.blocked();
    return this.windowBytes >= this.replayBytes;
  }

  delta(seq: number, text: string, token?: TokenInfo): void {
    this.text += text;
    this.nextSeq = seq + 1;
    const frame = this.frame(seq, text, token);
    const bytes = Buffer.byteLength(frame);
    this.window.push({ seq, frame, bytes });
    this.windowBytes += bytes;
    // an attached consumer was sent the oldest: keep the window under the bound; a detached one
    // stops the response (blocked) before the window passes it
    while (this.sink && this.windowBytes > this.replayBytes && this.window.length > 1) this.windowBytes -= this.window.shift()!.bytes;
    this.sink?.delta(seq, frame);
  }

  done(done: TurnDone): void {
    this.result = { done };
    this.sink?.done(done);
  }

  fail(err: unknown): void {
    this.result = { error: err };
    this.sink?.fail(err);
  }

  /** The deltas after `lastSeq` (-1: all), or a gap when the window starts later than lastSeq + 1. */
  replayAfter(lastSeq: number): Replay {
    const first = this.window[0]?.seq ?? this.nextSeq;
    if (lastSeq + 1 < first) return { gap: true, text: this.text, nextSeq: this.nextSeq };
    return { frames: this.window.filter((d) => d.seq > lastSeq).map((d) => d.frame) };
  }

  /** Sends the events from now on to `sink` (the caller sends the replay first). */
  attach(sink: ResponseSink): void {
    this.sink = sink;
  }

  detach(): void {
    this.sink = null;
  }
}

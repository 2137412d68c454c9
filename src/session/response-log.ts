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
import type { TurnDone, TurnListener } from './turn.js';

/** Where a log's events go: a protocol front's connection. */
export interface ResponseSink {
  delta(seq: number, text: string): void;
  done(done: TurnDone): void;
  fail(err: unknown): void;
  /** True while the consumer has too much unsent (socket backpressure). */
  blocked(): boolean;
}

/** What a resume gets for a `last_seq`: deltas to send, or a gap the window no longer holds. */
export type Replay = { deltas: { seq: number; text: string }[] } | { gap: true; text: string; nextSeq: number };

export class ResponseLog implements TurnListener {
  /** The whole text so far (every delta's text, in order). */
  text = '';
  /** Seq of the next delta. */
  nextSeq = 0;
  /** Set once the turn ended. */
  result: { done: TurnDone } | { error: unknown } | null = null;
  private readonly window: { seq: number; text: string; bytes: number }[] = [];
  private windowBytes = 0;
  private sink: ResponseSink | null = null;

  constructor(
    readonly responseId: string,
    private readonly replayBytes: number,
  ) {}

  get attached(): boolean {
    return this.sink !== null;
  }

  /** The scheduler's backpressure hook for this response. */
  blocked(): boolean {
    if (this.sink) return this.sink.blocked();
    return this.windowBytes >= this.replayBytes;
  }

  delta(seq: number, text: string): void {
    this.text += text;
    this.nextSeq = seq + 1;
    // a delta's bytes: its text plus the frame around it (~60 bytes)
    const bytes = Buffer.byteLength(text) + 64;
    this.window.push({ seq, text, bytes });
    this.windowBytes += bytes;
    // an attached consumer was sent the oldest: keep the window under the bound; a detached one
    // stops the response (blocked) before the window passes it
    while (this.sink && this.windowBytes > this.replayBytes && this.window.length > 1) this.windowBytes -= this.window.shift()!.bytes;
    this.sink?.delta(seq, text);
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
    return { deltas: this.window.filter((d) => d.seq > lastSeq).map(({ seq, text }) => ({ seq, text })) };
  }

  /** Sends the events from now on to `sink` (the caller sends the replay first). */
  attach(sink: ResponseSink): void {
    this.sink = sink;
  }

  detach(): void {
    this.sink = null;
  }
}

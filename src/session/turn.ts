/**
 * One turn of a chat session in progress: its events (deltas, then done) by iteration or by
 * `listen`, and cancel.
 */
import type { DoneEvent, FinishReason, ScheduledRequest } from '../scheduler/scheduler.js';

export type TurnEvent =
  /** One per generated token (seq from 0, no gaps; text may be ''); a last delta with token -1 carries text the decoder held back to the end. */
  | { type: 'delta'; seq: number; text: string; token: number; logprob?: number; top?: { token: number; logprob: number }[] }
  | {
      type: 'done';
      finishReason: FinishReason;
      /** The assistant message as added to the transcript. */
      text: string;
      error?: DoneEvent['error'];
      usage: { prompt_tokens: number; cached_tokens: number; completion_tokens: number };
      /** Oldest exchanges dropped so that the conversation fits the context (context policy `truncate`). */
      truncatedTurns: number;
      timing: { queue_ms: number; ttft_ms: number; duration_ms: number };
    };

export type TurnDone = Extract<TurnEvent, { type: 'done' }>;

/** The token behind a delta: its id and, when asked for, its log-probability and the top alternatives. */
export interface TokenInfo {
  token: number;
  logprob?: number;
  top?: { token: number; logprob: number }[];
}

/** Receives a turn's events as they come (`Turn.listen`): the push alternative to iterating. */
export interface TurnListener {
  /** One per generated token, seq from 0 without gaps (text may be ''); a last one may carry held-back text. */
  delta(seq: number, text: string, token?: TokenInfo): void;
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
    /** The whole prompt of the turn (cached tokens and new ones): a fresh sequence prefilled with it answers the same. */
    readonly prompt: readonly number[] = [],
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
        yield { type: 'delta', seq: ev.index, text: ev.text ?? '', token: ev.token, ...(ev.logprob === undefined ? {} : { logprob: ev.logprob, top: ev.top }) };
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
      l.delta(ev.index, t, ev);
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

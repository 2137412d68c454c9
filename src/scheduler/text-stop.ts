/**
 * Streaming detokenization with stop strings. Each generated token is pushed through a
 * StreamDecoder (never splits a UTF-8 character); text that could be the start of a stop string
 * is held back until it is known not to be one. When a stop string appears, the text before it
 * is released and the stream ends (the stop string itself is never emitted).
 */
import type { StreamDecoder } from '../tokenizer/stream-decoder.js';

export class TextStopper {
  private pending = '';
  private stopped = false;

  constructor(
    private readonly decoder: StreamDecoder,
    private readonly stops: readonly string[] = [],
  ) {
    this.stops = stops.filter((s) => s.length > 0);
  }

  /** Adds one token; returns the text safe to emit now and whether a stop string was reached. */
  push(token: number): { text: string; stop: boolean } {
    if (this.stopped) return { text: '', stop: true };
    this.pending += this.decoder.push(token);
    return this.release(false);
  }

  /** End of stream (not by a stop string): everything still held back. */
  flush(): string {
    if (this.stopped) return '';
    this.pending += this.decoder.flush();
    return this.release(true).text;
  }

  private release(final: boolean): { text: string; stop: boolean } {
    let first = -1;
    for (const s of this.stops) {
      const i = this.pending.indexOf(s);
      if (i >= 0 && (first < 0 || i < first)) first = i;
    }
    if (first >= 0) {
      const text = this.pending.slice(0, first);
      this.pending = '';
      this.stopped = true;
      this.decoder.flush();
      return { text, stop: true };
    }
    let hold = 0;
    if (!final) {
      // the longest suffix of pending that is a proper prefix of a stop string
      for (const s of this.stops) {
        for (let n = Math.min(s.length - 1, this.pending.length); n > hold; n--) {
          if (this.pending.endsWith(s.slice(0, n))) {
            hold = n;
            break;
          }
        }
      }
    }
    const text = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { text, stop: false };
  }
}

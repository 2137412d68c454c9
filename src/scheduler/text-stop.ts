/**
 * Streaming detokenization with stop strings. Each generated token is pushed through a
 * StreamDecoder (never splits a UTF-8 character); text that could be the start of a stop string
 * is held back until it is known not to be one. When a stop string appears, the text before it
 * is released and the stream ends (the stop string itself is never emitted).
 */
import type { StreamDecoder } from '../tokenizer/stream-decoder.js';

/** KMP failure table: fail[i] = length of the longest proper prefix of s[0..i] that is also its suffix. */
function failureTable(s: string): Int32Array {
  const fail = new Int32Array(s.length);
  for (let i = 1, k = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    while (k > 0 && c !== s.charCodeAt(k)) k = fail[k - 1]!;
    if (c === s.charCodeAt(k)) k++;
    fail[i] = k;
  }
  return fail;
}

export class TextStopper {
  private pending = '';
  private stopped = false;
  private readonly stops: readonly string[];
  private readonly fails: Int32Array[];
  /**
   * Per stop string, a KMP automaton over the whole stream: the length of the longest suffix of
   * the text so far that is a proper prefix of it. Fed only the new characters of each token, so
   * holding back costs time linear in the text (stop strings come from clients: up to 16 of
   * 1,024 characters), never a rescan of what is held.
   */
  private readonly matched: Int32Array;

  constructor(
    private readonly decoder: StreamDecoder,
    stops: readonly string[] = [],
  ) {
    this.stops = stops.filter((s) => s.length > 0);
    this.fails = this.stops.map(failureTable);
    this.matched = new Int32Array(this.stops.length);
  }

  private feed(text: string): void {
    for (let j = 0; j < this.stops.length; j++) {
      const s = this.stops[j]!;
      const fail = this.fails[j]!;
      let k = this.matched[j]!;
      for (let i = 0; i < text.length; i++) {
        const c = text.charCodeAt(i);
        while (k > 0 && c !== s.charCodeAt(k)) k = fail[k - 1]!;
        if (c === s.charCodeAt(k)) k++;
        if (k === s.length) k = fail[k - 1]!; // a whole match: release() finds it with indexOf
      }
      this.matched[j] = k;
    }
  }

  /** Adds one token; returns the text safe to emit now and whether a stop string was reached. */
  push(token: number): { text: string; stop: boolean } {
    if (this.stopped) return { text: '', stop: true };
    const text = this.decoder.push(token);
    this.feed(text);
    this.pending += text;
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
    // the longest suffix of pending that is a proper prefix of a stop string
    let hold = 0;
    if (!final) for (const k of this.matched) hold = Math.max(hold, k);
    const text = this.pending.slice(0, this.pending.length - hold);
    this.pending = this.pending.slice(this.pending.length - hold);
    return { text, stop: false };
  }
}

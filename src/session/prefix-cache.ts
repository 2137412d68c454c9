/**
 * Automatic KV reuse for stateless clients: a bounded, least-recently-used cache of finished
 * sequences, matched by token prefix. A chat completion whose prompt extends an earlier request's
 * prompt + answer (a follow-up), or shares a long enough prefix with it (a system prompt), takes
 * that request's sequence and prefills only the rest.
 *
 *     const hit = cache.take(prompt);
 *     const seq = hit?.sequence ?? engine.createSequence();
 *     const cached = hit?.cached ?? 0;
 *     const req = scheduler.submit({ sequence: seq, tokens: prompt.slice(cached), sampling, ... });
 *     await req.done;
 *     cache.put(seq, [...prompt.slice(0, cached), ...req.fed]);
 *
 * ALWAYS pass `sampling` to `submit` with a taken sequence: submit sets it on the sequence, which
 * reseeds the sampler and clears its penalty counts. Without it the previous request's settings,
 * seed state and penalties leak into this one and the answer differs from a cold run's.
 *
 * A sequence serves one request at a time: `take` removes the entry, the caller owns it until it
 * hands it back with `put` (or frees it: `scheduler.forget` then `free`). Cached entries are
 * released to the scheduler, which parks them to host memory under KV pressure (least recently
 * released first) and restores a parked one when a request on it is admitted. Beyond
 * `maxEntries`, `maxTokens` or `maxParkedBytes`, the least recently used entries are freed. A
 * sequence that is in a step is never freed.
 *
 * Entries belong to the API key whose request made them (`owner`): a key never takes another's,
 * so `cached_tokens` tells nobody what another key sent.
 *
 * The engine has no copy-on-write fork: a partial match (a shared system prompt) truncates the
 * taken entry's KV to the common prefix and its tail is lost, so one is taken only when it saves
 * at least as many tokens as it throws away.
 */
import { WeftError, toWeftError } from '../errors.js';
import type { Sequence } from '../engine/engine.js';
import type { Scheduler } from '../scheduler/scheduler.js';

export interface PrefixCacheOptions {
  /** Most cached sequences; 0 disables the cache (put frees at once). Default 64. */
  maxEntries?: number;
  /** Most tokens of KV held by all entries together. Default: unlimited. */
  maxTokens?: number;
  /** Most bytes of entries' KV parked in host memory (by the scheduler). Default: unlimited. */
  maxParkedBytes?: number;
  /** Shortest common prefix worth reusing (an entry that is wholly a prefix of the prompt always is). Default 16. */
  minMatch?: number;
}

export interface PrefixHit {
  sequence: Sequence;
  /** Tokens of the prompt already in the sequence's KV: submit `prompt.slice(cached)`. */
  cached: number;
}

interface Entry {
  seq: Sequence;
  tokens: Int32Array;
  /** The first `minMatch` tokens (the quick filter), or null for an entry shorter than that. */
  key: string | null;
  /** When it was put (a tick): the older of two equal matches is taken. */
  putAt: number;
  /** Whose it is (an API key's name; '' without keys): only its owner's requests may take it. */
  owner: string;
}

export class PrefixCache {
  /** Least recently used first. */
  private readonly entries = new Map<Sequence, Entry>();
  /** Entries by their first `minMatch` tokens: a match of at least `minMatch` is in the prompt's bucket. */
  private readonly buckets = new Map<string, Set<Entry>>();
  /** Entries shorter than `minMatch`: a match must be the whole entry. */
  private readonly short = new Set<Entry>();
  private totalTokens = 0;
  private tick = 0;
  readonly maxEntries: number;
  readonly maxTokens: number;
  readonly maxParkedBytes: number;
  readonly minMatch: number;
  /** Counters for metrics: takes that found an entry or none, prompt tokens reused, entries freed. */
  readonly counters = { hits: 0, misses: 0, hitTokens: 0, evictions: 0 };

  constructor(
    readonly scheduler: Scheduler,
    opts: PrefixCacheOptions = {},
  ) {
    const count = (v: number | undefined, name: string, fallback: number, min: number) => {
      if (v === undefined) return fallback;
      if (v !== Infinity && (!Number.isInteger(v) || v < min)) throw new WeftError('WEFT_BAD_ARGUMENT', `${name} must be an integer >= ${min} (got ${v})`);
      return v;
    };
    this.maxEntries = count(opts.maxEntries, 'maxEntries', 64, 0);
    this.maxTokens = count(opts.maxTokens, 'maxTokens', Infinity, 0);
    this.maxParkedBytes = count(opts.maxParkedBytes, 'maxParkedBytes', Infinity, 0);
    this.minMatch = count(opts.minMatch, 'minMatch', 16, 1);
  }

  /** Entries cached. */
  get size(): number {
    return this.entries.size;
  }

  /** Tokens of KV the entries hold. */
  get numTokens(): number {
    return this.totalTokens;
  }

  /**
   * The sequence sharing the longest prefix with `prompt` (at least `minMatch` tokens, or the
   * whole entry, and at least as many as a cut would throw away), removed from the cache and cut
   * to that prefix, leaving at least one prompt token to prefill; null when none matches. It may
   * be parked: the scheduler restores it at admission.
   */
  take(prompt: readonly number[], owner = ''): PrefixHit | null {
    for (const { entry, keep } of this.candidates(prompt, owner)) {
      if (!this.cut(entry, keep)) continue;
      this.remove(entry);
      this.counters.hits++;
      this.counters.hitTokens += keep;
      return { sequence: entry.seq, cached: keep };
    }
    this.counters.misses++;
    return null;
  }

  /**
   * Hands a finished request's sequence to the cache; `tokens` are exactly the tokens whose KV it
   * holds (the prefix it was taken with + `request.fed`). Returns false when it was freed instead
   * (the cache is disabled, it alone is over `maxTokens`, or its KV does not hold
   * `tokens.length` tokens: a wrong entry would give wrong answers). Entries beyond the
   * limits are freed, least recently used first. WEFT_SEQUENCE_BUSY for a sequence in a step.
   */
  put(seq: Sequence, tokens: readonly number[], owner = ''): boolean {
    const info = seq.info();
    if (info.busy) throw new WeftError('WEFT_SEQUENCE_BUSY', `sequence ${seq.id} is in a step; put it once its request is done`);
    const old = this.entries.get(seq);
    if (old) this.remove(old);
    if (this.maxEntries === 0 || tokens.length === 0 || tokens.length > this.maxTokens || info.numTokens !== tokens.length) {
      this.free(seq);
      this.counters.evictions++;
      return false;
    }
    const entry: Entry = { seq, tokens: Int32Array.from(tokens), key: tokens.length >= this.minMatch ? keyOf(tokens, this.minMatch) : null, putAt: ++this.tick, owner };
    this.entries.set(seq, entry);
    if (entry.key === null) this.short.add(entry);
    else {
      const bucket = this.buckets.get(entry.key);
      if (bucket) bucket.add(entry);
      else this.buckets.set(entry.key, new Set([entry]));
    }
    this.totalTokens += entry.tokens.length;
    this.scheduler.release(seq);
    this.trim();
    return this.entries.has(seq);
  }

  /**
   * Frees the least recently used entries while the cache is over a limit (put does this; call it
   * from a timer to hold `maxParkedBytes` as the scheduler parks entries between puts).
   */
  trim(): void {
    while (this.entries.size > this.maxEntries || this.totalTokens > this.maxTokens) {
      if (!this.evictOne(() => true)) break;
    }
    if (this.maxParkedBytes === Infinity) return;
    const st = this.scheduler.engine.stats();
    // host bytes of a parked entry's KV: whole pages
    const bytesOf = (e: Entry) => Math.ceil(e.tokens.length / st.kvPageTokens) * st.kvPageTokens * st.kvBytesPerToken;
    const parked = (e: Entry) => this.infoOf(e)?.parked === true;
    let bytes = 0;
    for (const e of this.entries.values()) if (parked(e)) bytes += bytesOf(e);
    while (bytes > this.maxParkedBytes) {
      const evicted = this.evictOne(parked);
      if (!evicted) break;
      bytes -= bytesOf(evicted);
    }
  }

  /** Frees every entry (but one in a step, which stays). */
  clear(): void {
    for (const e of [...this.entries.values()]) {
      if (this.infoOf(e)?.busy) continue;
      this.remove(e);
      this.free(e.seq);
    }
  }

  // ---------------------------------------------------------------------------------------------

  /**
   * Matching entries, best first: the most tokens kept, then the least KV cut away, then the least
   * recently used (of entries sharing a system prompt, the one least likely to be followed up).
   * An entry that would lose more tokens than it saves is no match: a shared system prompt must
   * not wipe out conversations (each new one cutting the last one's entry back to that prompt).
   */
  private candidates(prompt: readonly number[], owner: string): { entry: Entry; keep: number }[] {
    const found: { entry: Entry; keep: number }[] = [];
    const consider = (entry: Entry) => {
      // another key's entry is no match: its cached_tokens would tell what that key sent
      if (entry.owner !== owner) return;
      const t = entry.tokens;
      const n = Math.min(t.length, prompt.length);
      let common = 0;
      while (common < n && t[common] === prompt[common]) common++;
      if (common < this.minMatch && common < t.length) return;
      const keep = Math.min(common, prompt.length - 1);
      // without a fork, a cut throws the tail away: only when that saves at least as much
      if (keep >= 1 && keep >= t.length - keep) found.push({ entry, keep });
    };
    if (prompt.length >= this.minMatch) for (const e of this.buckets.get(keyOf(prompt, this.minMatch)) ?? []) consider(e);
    for (const e of this.short) consider(e);
    const waste = (f: { entry: Entry; keep: number }) => f.entry.tokens.length - f.keep;
    found.sort((a, b) => b.keep - a.keep || waste(a) - waste(b) || a.entry.putAt - b.entry.putAt);
    return found;
  }

  /**
   * Cuts an entry's KV to its first `keep` tokens; false when it cannot be used now (in a step,
   * freed by someone else: dropped; parked with no pages to restore it into: left cached).
   */
  private cut(entry: Entry, keep: number): boolean {
    const info = this.infoOf(entry);
    if (!info || info.busy) {
      if (!info) this.remove(entry);
      return false;
    }
    if (keep >= info.numTokens) return true; // a parked one is restored by the scheduler at admission
    if (info.parked && !this.restore(entry)) return false;
    call(() => entry.seq.truncate(keep));
    return true;
  }

  /** Restores a parked entry's KV (to be cut), parking other idle entries, oldest first, for room. */
  private restore(entry: Entry): boolean {
    const native = this.scheduler.engine.native;
    for (;;) {
      try {
        call(() => native.restoreSequence(entry.seq.id));
        return true;
      } catch (err) {
        if (toWeftError(err).code !== 'WEFT_KV_EXHAUSTED') throw err;
      }
      const victim = [...this.entries.values()].find((e) => {
        const info = e !== entry && this.infoOf(e);
        return info && !info.parked && !info.busy && info.numPages > 0;
      });
      if (!victim) return false;
      call(() => native.parkSequence(victim.seq.id));
    }
  }

  /** Frees the least recently used entry that `which` accepts and that is not in a step. */
  private evictOne(which: (e: Entry) => boolean): Entry | null {
    for (const e of this.entries.values()) {
      if (!which(e)) continue;
      const info = this.infoOf(e);
      if (info?.busy) continue;
      this.remove(e);
      if (info) {
        this.free(e.seq);
        this.counters.evictions++;
      }
      return e;
    }
    return null;
  }

  private remove(e: Entry): void {
    if (!this.entries.delete(e.seq)) return;
    this.totalTokens -= e.tokens.length;
    if (e.key === null) this.short.delete(e);
    else {
      const bucket = this.buckets.get(e.key)!;
      bucket.delete(e);
      if (bucket.size === 0) this.buckets.delete(e.key);
    }
  }

  private free(seq: Sequence): void {
    this.scheduler.forget(seq);
    try {
      seq.free();
    } catch {
      /* already gone */
    }
  }

  /** The entry's sequence info; null when it was freed by someone else. */
  private infoOf(e: Entry) {
    try {
      return e.seq.info();
    } catch {
      return null;
    }
  }
}

function keyOf(tokens: ArrayLike<number>, n: number): string {
  let key = '';
  for (let i = 0; i < n; i++) key += tokens[i] + ',';
  return key;
}

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toWeftError(err);
  }
}

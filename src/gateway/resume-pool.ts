/**
 * Sessions whose connection is gone, kept for a reconnect with their resume token until the TTL
 * runs out. Apart from the connected sessions (they do not count against `--max-sessions`), and
 * bounded on its own: at most `maxTotal` sessions, at most `maxPerClient` from one client address;
 * past either bound the oldest one (of that address, or of all) is ended to make room. So a client
 * that opens and drops connections in a loop evicts its own sessions, and locks nobody out.
 */

export interface ResumePoolLimits {
  ttlMs: number;
  maxTotal: number;
  maxPerClient: number;
}

interface Entry<T> {
  value: T;
  address: string;
  timer: NodeJS.Timeout;
}

export class ResumePool<T> {
  /** By token, oldest first (Map keeps insertion order). */
  private readonly entries = new Map<string, Entry<T>>();
  private readonly byAddress = new Map<string, Set<string>>();

  /** `end` is called for every session that leaves the pool other than by `take` (TTL, eviction, clear). */
  constructor(
    private readonly limits: ResumePoolLimits,
    private readonly end: (value: T, why: 'expired' | 'evicted' | 'closed') => void,
  ) {}

  get size(): number {
    return this.entries.size;
  }

  /** The sessions held, oldest first. */
  *values(): IterableIterator<T> {
    for (const e of this.entries.values()) yield e.value;
  }

  /** The session held for `token`, left in the pool. */
  peek(token: string): T | undefined {
    return this.entries.get(token)?.value;
  }

  has(token: string): boolean {
    return this.entries.has(token);
  }

  /** Keeps `value` under `token` for the TTL, evicting the oldest entries beyond the limits. */
  add(token: string, value: T, address: string): void {
    this.drop(token, 'evicted');
    const theirs = this.byAddress.get(address);
    while (theirs && theirs.size >= this.limits.maxPerClient) this.drop(theirs.values().next().value!, 'evicted');
    while (this.entries.size >= this.limits.maxTotal) this.drop(this.entries.keys().next().value!, 'evicted');
    const timer = setTimeout(() => this.drop(token, 'expired'), this.limits.ttlMs);
    timer.unref();
    this.entries.set(token, { value, address, timer });
    const mine = this.byAddress.get(address) ?? new Set<string>();
    this.byAddress.set(address, mine);
    mine.add(token);
  }

  /** The session of `token`, removed from the pool; undefined when there is none. */
  take(token: string): T | undefined {
    const e = this.remove(token);
    return e?.value;
  }

  /** Ends every session in the pool. */
  clear(): void {
    for (const token of [...this.entries.keys()]) this.drop(token, 'closed');
  }

  private drop(token: string, why: 'expired' | 'evicted' | 'closed'): void {
    const e = this.remove(token);
    if (e) this.end(e.value, why);
  }

  private remove(token: string): Entry<T> | undefined {
    const e = this.entries.get(token);
    if (!e) return undefined;
    clearTimeout(e.timer);
    this.entries.delete(token);
    const mine = this.byAddress.get(e.address);
    mine?.delete(token);
    if (mine?.size === 0) this.byAddress.delete(e.address);
    return e;
  }
}

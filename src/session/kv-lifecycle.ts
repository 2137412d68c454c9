/**
 * The KV lifecycle of idle sessions: each is `resident` (KV pages in the pool), `parked` (its KV
 * copied to host memory, pages returned) or `dropped` (only its tokens kept; the next turn
 * prefills them again). A sweep every `sweepMs` parks sessions idle for `parkAfterMs`, drops
 * those idle for `dropAfterMs`, and drops parked ones, least recently active first, while the
 * parked KV passes `parkedMemoryBytes`. Under KV-pool pressure the scheduler parks too.
 */
import type { Engine } from '../engine/engine.js';
import type { KvState, Session } from './session.js';
import { SessionState } from './session.js';

export interface KvPolicy {
  /** Park a session idle this long (ms); 0: never by age. */
  parkAfterMs: number;
  /** Drop a session idle this long (ms); 0: never by age. */
  dropAfterMs: number;
  /** Most bytes of parked KV; beyond, the least recently active parked sessions are dropped. */
  parkedMemoryBytes: number;
}

export class KvLifecycle {
  private timer: NodeJS.Timeout | null = null;
  /** Counters for metrics and tests. */
  readonly counters = { parked: 0, dropped: 0 };

  constructor(
    private readonly engine: Engine,
    private readonly sessions: () => Iterable<Session>,
    readonly policy: KvPolicy,
    sweepMs = 1000,
  ) {
    if (policy.parkAfterMs > 0 || policy.dropAfterMs > 0 || Number.isFinite(policy.parkedMemoryBytes)) {
      // a sweep never throws out of the timer (a session busy meanwhile is left for the next one)
      this.timer = setInterval(() => void this.sweep().catch(() => undefined), sweepMs);
      this.timer.unref();
    }
  }

  /** KV bytes a session holds (its cached tokens at the pool's bytes per token). */
  bytesOf(s: Session): number {
    return s.cachedTokens * this.engine.stats().kvBytesPerToken;
  }

  /** Sessions and their KV bytes by state. */
  census(): Record<KvState, { sessions: number; bytes: number }> {
    const out: Record<KvState, { sessions: number; bytes: number }> = { resident: { sessions: 0, bytes: 0 }, parked: { sessions: 0, bytes: 0 }, dropped: { sessions: 0, bytes: 0 } };
    for (const s of this.sessions()) {
      const c = out[s.kvState];
      c.sessions++;
      c.bytes += this.bytesOf(s);
    }
    return out;
  }

  /** One pass of the policy. */
  async sweep(now = performance.now()): Promise<void> {
    const { parkAfterMs, dropAfterMs, parkedMemoryBytes } = this.policy;
    const idle = [...this.sessions()].filter((s) => s.state === SessionState.Idle).sort((a, b) => a.lastActiveAt - b.lastActiveAt);
    for (const s of idle) {
      const age = now - s.lastActiveAt;
      const state = s.kvState;
      if (dropAfterMs > 0 && age >= dropAfterMs && state !== 'dropped') {
        try {
          s.drop();
          this.counters.dropped++;
        } catch {
          /* busy meanwhile: next sweep */
        }
      } else if (parkAfterMs > 0 && age >= parkAfterMs && state === 'resident') {
        try {
          await s.park();
          this.counters.parked++;
        } catch {
          /* busy meanwhile: next sweep */
        }
      }
    }
    if (!Number.isFinite(parkedMemoryBytes)) return;
    let parked = 0;
    for (const s of idle) if (s.kvState === 'parked') parked += this.bytesOf(s);
    for (const s of idle) {
      if (parked <= parkedMemoryBytes) break;
      if (s.kvState !== 'parked' || s.state !== SessionState.Idle) continue;
      parked -= this.bytesOf(s);
      try {
        s.drop();
        this.counters.dropped++;
      } catch {
        /* busy meanwhile: next sweep */
      }
    }
  }

  close(): void {
    if (this.timer) clearInterval(this.timer);
    this.timer = null;
  }
}

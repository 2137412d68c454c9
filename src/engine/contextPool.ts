/**
 * Leases execution contexts one step at a time. A caller waits (FIFO) when all are busy; an
 * AbortSignal withdraws a waiting request with WEFT_CANCELLED. A context whose step timed out on
 * the device (WEFT_DEVICE_TIMEOUT) is set aside: when its lease is released it is not handed out
 * again until `ready()` says its late work has drained (polled every 50 ms meanwhile).
 */
import { WeftError } from '../errors.js';

export interface ContextLease {
  readonly index: number;
  release(): void;
}

export class ContextPool {
  private readonly free: number[];
  private readonly waiters: { resolve: (lease: ContextLease) => void; reject: (err: Error) => void; signal?: AbortSignal; onAbort?: () => void }[] = [];
  private readonly aside = new Map<number, { ready: () => boolean; released: boolean }>();
  private poll: NodeJS.Timeout | undefined;
  private readonly issued = new WeakSet<ContextLease>();
  private closed = false;

  constructor(readonly size: number) {
    this.free = Array.from({ length: size }, (_, i) => size - 1 - i);
  }

  get numFree(): number {
    return this.free.length;
  }

  get numWaiting(): number {
    return this.waiters.length;
  }

  /** Contexts set aside after a device timeout, not yet drained. */
  get numSetAside(): number {
    return this.aside.size;
  }

  /** Whether `lease` is one of this pool's (a caller may step with a lease it made itself). */
  owns(lease: ContextLease): boolean {
    return this.issued.has(lease);
  }

  /**
   * The context of `lease` (one of this pool's, not yet released) returns to service only once
   * `ready()` is true.
   */
  setAside(lease: ContextLease, ready: () => boolean): void {
    if (this.closed || !this.issued.has(lease)) return;
    this.aside.set(lease.index, { ready, released: false });
  }

  /** The engine is gone: waiters fail with WEFT_DISPOSED, the drain poll stops. */
  close(): void {
    this.closed = true;
    if (this.poll) clearInterval(this.poll);
    this.poll = undefined;
    this.aside.clear();
    for (const w of this.waiters.splice(0)) {
      if (w.onAbort) w.signal?.removeEventListener('abort', w.onAbort);
      w.reject(new WeftError('WEFT_DISPOSED', 'the engine was disposed'));
    }
  }

  private checkAside(): void {
    for (const [index, a] of this.aside) {
      if (!a.released) continue;
      let ok = false;
      try {
        ok = a.ready();
      } catch {
        ok = false; // the engine was disposed: the context stays out
      }
      if (ok) {
        this.aside.delete(index);
        this.giveBack(index);
      }
    }
    if (![...this.aside.values()].some((a) => a.released) && this.poll) {
      clearInterval(this.poll);
      this.poll = undefined;
    }
  }

  private giveBack(index: number): void {
    const next = this.waiters.shift();
    if (next) {
      if (next.onAbort) next.signal?.removeEventListener('abort', next.onAbort);
      next.resolve(this.lease(index));
    } else {
      this.free.push(index);
    }
  }

  /** A lease now, or null when every context is busy. */
  tryAcquire(): ContextLease | null {
    const index = this.free.pop();
    return index === undefined ? null : this.lease(index);
  }

  acquire(signal?: AbortSignal): Promise<ContextLease> {
    if (signal?.aborted) return Promise.reject(new WeftError('WEFT_CANCELLED', 'context lease cancelled'));
    const lease = this.tryAcquire();
    if (lease) return Promise.resolve(lease);
    return new Promise((resolve, reject) => {
      const waiter: (typeof this.waiters)[number] = { resolve, reject, signal };
      if (signal) {
        waiter.onAbort = () => {
          const i = this.waiters.indexOf(waiter);
          if (i >= 0) this.waiters.splice(i, 1);
          reject(new WeftError('WEFT_CANCELLED', 'context lease cancelled'));
        };
        signal.addEventListener('abort', waiter.onAbort, { once: true });
      }
      this.waiters.push(waiter);
    });
  }

  private lease(index: number): ContextLease {
    let released = false;
    const lease: ContextLease = {
      index,
      release: () => {
        if (released) return;
        released = true;
        const a = this.aside.get(index);
        if (a) {
          a.released = true;
          this.checkAside();
          if (this.aside.has(index) && !this.poll) {
            this.poll = setInterval(() => this.checkAside(), 50);
            this.poll.unref();
          }
          return;
        }
        this.giveBack(index);
      },
    };
    this.issued.add(lease);
    return lease;
  }
}

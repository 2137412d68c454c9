/**
 * Leases execution contexts one step at a time. A caller waits (FIFO) when all are busy; an
 * AbortSignal withdraws a waiting request with WEFT_CANCELLED.
 */
import { WeftError } from '../errors.js';

export interface ContextLease {
  readonly index: number;
  release(): void;
}

export class ContextPool {
  private readonly free: number[];
  private readonly waiters: { resolve: (lease: ContextLease) => void; reject: (err: Error) => void; signal?: AbortSignal; onAbort?: () => void }[] = [];

  constructor(readonly size: number) {
    this.free = Array.from({ length: size }, (_, i) => size - 1 - i);
  }

  get numFree(): number {
    return this.free.length;
  }

  get numWaiting(): number {
    return this.waiters.length;
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
    return {
      index,
      release: () => {
        if (released) return;
        released = true;
        const next = this.waiters.shift();
        if (next) {
          if (next.onAbort) next.signal?.removeEventListener('abort', next.onAbort);
          next.resolve(this.lease(index));
        } else {
          this.free.push(index);
        }
      },
    };
  }
}

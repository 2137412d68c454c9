/**
 * A single-consumer event queue: the producer pushes without waiting, the consumer reads with
 * `for await`. `buffered` is the number of unread events (the scheduler's default backpressure
 * signal); `onDrain` runs when the consumer takes an event, so a skipped producer can resume.
 */
export class Channel<T> implements AsyncIterable<T> {
  private readonly items: T[] = [];
  private waiter: ((r: IteratorResult<T>) => void) | null = null;
  private closed = false;
  private iterating = false;
  onDrain: (() => void) | null = null;

  get buffered(): number {
    return this.items.length;
  }

  push(item: T): void {
    if (this.closed) return;
    const w = this.waiter;
    if (w) {
      this.waiter = null;
      w({ value: item, done: false });
    } else {
      this.items.push(item);
    }
  }

  /** Removes and returns the buffered events (for a consumer that switches to a push callback). */
  takeAll(): T[] {
    return this.items.splice(0);
  }

  /** No more events; the iterator ends after the buffered ones. */
  close(): void {
    if (this.closed) return;
    this.closed = true;
    const w = this.waiter;
    this.waiter = null;
    w?.({ value: undefined, done: true });
  }

  [Symbol.asyncIterator](): AsyncIterator<T> {
    if (this.iterating) throw new Error('a Channel has one consumer');
    this.iterating = true;
    return {
      next: () => {
        if (this.items.length > 0) {
          const value = this.items.shift()!;
          this.onDrain?.();
          return Promise.resolve({ value, done: false });
        }
        if (this.closed) return Promise.resolve({ value: undefined, done: true });
        return new Promise((resolve) => {
          this.waiter = resolve;
          this.onDrain?.();
        });
      },
      return: () => {
        this.items.length = 0;
        this.closed = true;
        this.onDrain?.();
        return Promise.resolve({ value: undefined, done: true });
      },
    };
  }
}

/**
 * Per-connection limits on what a client sends: frames per second and bytes per second, each a
 * token bucket (a burst of `burst`, refilled at `rate` per second). A frame that finds either
 * bucket short is not parsed: the client gets `WEFT_RATE_LIMITED` with `retry_after_ms`, and the
 * transport stops reading the socket until then, so that a flood costs neither parsing nor the
 * tokenizer worker (TCP pushes back on the sender).
 */

export interface RateLimits {
  /** Frames per second a connection may send (sustained). */
  framesPerSecond: number;
  /** Bytes of frames per second a connection may send (sustained). */
  bytesPerSecond: number;
  /** Frames a connection may send at once (bucket size). */
  frameBurst: number;
  /** Bytes a connection may send at once (bucket size): at least one frame of the largest size. */
  byteBurst: number;
}

export class TokenBucket {
  private level: number;
  private at = performance.now();

  constructor(
    private readonly rate: number,
    private readonly burst: number,
  ) {
    this.level = burst;
  }

  private refill(now: number): void {
    this.level = Math.min(this.burst, this.level + ((now - this.at) / 1000) * this.rate);
    this.at = now;
  }

  /**
   * Takes `n` when there is that much (`n` over the burst: when the bucket is full, leaving a
   * debt); else the ms until there will be, taking nothing.
   */
  take(n: number, now: number): number {
    this.refill(now);
    const need = Math.min(n, this.burst);
    if (this.level >= need) {
      this.level -= n;
      return 0;
    }
    return Math.max(1, Math.ceil(((need - this.level) / this.rate) * 1000));
  }

  /** Ms until the bucket holds at least `n` again (0 when it does). */
  msUntil(n: number, now: number): number {
    this.refill(now);
    return this.level >= n ? 0 : Math.ceil(((n - this.level) / this.rate) * 1000);
  }

  /** Returns `n` taken by mistake. */
  give(n: number): void {
    this.level = Math.min(this.burst, this.level + n);
  }
}

export class ConnectionRateLimiter {
  private readonly frames: TokenBucket;
  private readonly bytes: TokenBucket;

  constructor(limits: RateLimits) {
    this.frames = new TokenBucket(limits.framesPerSecond, limits.frameBurst);
    this.bytes = new TokenBucket(limits.bytesPerSecond, limits.byteBurst);
  }

  /** 0 when a frame of `size` bytes may be taken now; else ms until it may. */
  admit(size: number): number {
    const now = performance.now();
    const wait = this.frames.take(1, now);
    if (wait > 0) return wait;
    const byteWait = this.bytes.take(size, now);
    if (byteWait > 0) this.frames.give(1); // the frame was not taken
    return byteWait;
  }
}

/**
 * One byte budget per client address, shared by all of its connections: a client that drops and
 * reopens connections (each new one starting with a full per-connection bucket) still cannot
 * make the server parse more than `bytesPerSecond` of its frames. Idle addresses are forgotten
 * (a full bucket is the same as none).
 */
export class AddressRateLimiter {
  private readonly buckets = new Map<string, { bucket: TokenBucket; usedAt: number }>();

  constructor(
    private readonly bytesPerSecond: number,
    private readonly burst: number,
  ) {}

  /** 0 when `address` may send `size` more bytes now; else ms until it may. */
  admit(address: string, size: number): number {
    const now = performance.now();
    let e = this.buckets.get(address);
    if (!e) {
      if (this.buckets.size >= 65_536) this.forgetIdle(now);
      e = { bucket: new TokenBucket(this.bytesPerSecond, this.burst), usedAt: now };
      this.buckets.set(address, e);
    }
    e.usedAt = now;
    return e.bucket.take(size, now);
  }

  /**
   * Ms an address must wait before it may open another WebSocket: while it has spent more than
   * half its burst, new connections are refused at the upgrade (429), before any frame is read
   * (a client that floods and reconnects costs a handshake, not a megabyte).
   */
  refusesFor(address: string): number {
    const e = this.buckets.get(address);
    return e ? e.bucket.msUntil(this.burst / 2, performance.now()) : 0;
  }

  /** Drops addresses whose bucket has refilled since their last frame. */
  private forgetIdle(now: number): void {
    const full = (this.burst / this.bytesPerSecond) * 1000;
    for (const [a, e] of this.buckets) if (now - e.usedAt > full) this.buckets.delete(a);
  }
}

/**
 * The iteration loop over the Engine. Requests are submitted (a prompt's tokens to prefill, then
 * decode) and read back as an async iterator of events, apart from submission. Whenever an
 * execution context is free and there is runnable work, the scheduler builds one batch for it:
 *
 *  - the next decode token of generating requests, one slot kept for a prefill when one is waiting;
 *    when there are more than the step's slots, they are shared fairly across tenants (below) and
 *    go round-robin within a tenant (least recently served first);
 *  - prefill chunks under the per-step token budget (chunked prefill: a long prompt takes a few
 *    steps, and the others' decode tokens ride along in each of them), tenants in fair order too;
 *  - a request whose consumer is blocked (its `isBlocked()` hook says so, or it has more than
 *    `maxBufferedEvents` unread events) is skipped until it drains;
 *  - a request is never in two steps at once; a cancel takes effect within one step.
 *
 * Pipelining: when a step settles, its requests' state is updated and the next step is launched
 * before the step's events are delivered, so the engine computes while consumers (sockets) do
 * their per-token work. Wakes from outside (submit, cancel, drain) run the loop with
 * setImmediate, so that prompts arriving together on many sockets are admitted into one step.
 *
 * Fair share across tenants (a request's `tenant` with its `weight`) decides which queued request
 * is admitted next and which runnable ones get a step's decode slots and prefill tokens: see
 * fair-share.ts. It only chooses who runs: a sequence's tokens do not depend on its batch.
 *
 * Admission: at most `maxActive` requests hold KV and are scheduled; the rest wait in a queue of
 * at most `maxQueue` (beyond it submit throws WEFT_OVERLOADED). KV pressure: when a step fails
 * with WEFT_KV_EXHAUSTED the scheduler parks idle sequences (least recently used first;
 * sequences handed over with `release()`) and retries; with nothing left to park, the
 * newest request of the batch fails with WEFT_KV_EXHAUSTED so that older ones can finish.
 * A step that fails for another reason fails its request when it ran alone; in a larger batch
 * its requests are retried one per step so that one bad request does not fail the others.
 */
import { WeftError, toWeftError } from '../errors.js';
import type { Engine, Sequence, StepEntry, StepResult } from '../engine/engine.js';
import type { ContextLease } from '../engine/contextPool.js';
import { FairShare, leastRecentlyServed, type TenantStats } from './fair-share.js';
import { ScheduledRequest, checkSubmit, type DoneEvent, type FinishReason, type RequestEvent, type SubmitOptions } from './request.js';

export { ScheduledRequest } from './request.js';
export type { DoneEvent, FinishReason, RequestEvent, RequestState, SubmitOptions, TokenEvent } from './request.js';
export type { TenantStats } from './fair-share.js';

export interface SchedulerOptions {
  /** Most requests holding KV and being scheduled at once. Default: maxBatchSequences × contexts. */
  maxActive?: number;
  /** Most requests waiting for admission. Default 256. */
  maxQueue?: number;
  /** Tokens per step (decode tokens + prefill chunks). Default and upper bound: the engine's maxBatchTokens. */
  maxBatchTokens?: number;
  /** Sequences per step. Default and upper bound: the engine's maxBatchSequences. */
  maxBatchSequences?: number;
  /** Unread events after which a request is skipped until its consumer reads. Default 64. */
  maxBufferedEvents?: number;
}

type Batch = { req: ScheduledRequest; entry: StepEntry; decode: boolean }[];

export class Scheduler {
  private readonly queue: ScheduledRequest[] = [];
  private readonly active: ScheduledRequest[] = [];
  private readonly fair = new FairShare();
  /** Idle sequences that may be parked under KV pressure, least recently used first. */
  private readonly idle = new Map<Sequence, number>();
  private tick = 0;
  private pumping = false;
  private closed = false;
  private readonly inFlightSteps = new Set<Promise<void>>();
  /** Events of a step being settled, delivered once the next step is launched. */
  private deferring = false;
  private readonly outReqs: ScheduledRequest[] = [];
  private readonly outEvents: RequestEvent[] = [];
  readonly maxActive: number;
  readonly maxQueue: number;
  readonly maxBatchTokens: number;
  readonly maxBatchSequences: number;
  readonly maxBufferedEvents: number;
  private readonly maxContext: number;
  private readonly vocabSize: number;
  /** Counters for tests and metrics. */
  readonly counters = { steps: 0, kvParks: 0, kvRetries: 0 };
  /** Called after a step's events were delivered (a transport flushes the frames it corked). */
  onDelivered: (() => void) | null = null;
  /** True while a step's events are being delivered. */
  delivering = false;
  /** Observer of every step that completed (metrics: step duration, batch size). */
  onStep: ((step: { durationMs: number; sequences: number; tokens: number }) => void) | null = null;

  constructor(
    readonly engine: Engine,
    opts: SchedulerOptions = {},
  ) {
    const st = engine.stats();
    const pos = (v: number | undefined, name: string, fallback: number, max = Infinity) => {
      if (v === undefined) return fallback;
      if (!Number.isInteger(v) || v < 1) throw new WeftError('WEFT_BAD_ARGUMENT', `${name} must be a positive integer (got ${v})`);
      return Math.min(v, max);
    };
    this.maxBatchTokens = pos(opts.maxBatchTokens, 'maxBatchTokens', st.maxBatchTokens, st.maxBatchTokens);
    this.maxBatchSequences = pos(opts.maxBatchSequences, 'maxBatchSequences', st.maxBatchSequences, Math.min(st.maxBatchSequences, st.maxLogitRows));
    this.maxActive = pos(opts.maxActive, 'maxActive', this.maxBatchSequences * st.contexts);
    this.maxQueue = opts.maxQueue === 0 ? 0 : pos(opts.maxQueue, 'maxQueue', 256);
    this.maxBufferedEvents = pos(opts.maxBufferedEvents, 'maxBufferedEvents', 64);
    this.maxContext = st.maxContext;
    this.vocabSize = engine.config.vocabSize;
  }

  get numActive(): number {
    return this.active.length;
  }

  get numQueued(): number {
    return this.queue.length;
  }

  /**
   * Where a request waits for admission: how many queued requests are admitted before it in the
   * current fair order (the order they would go in if no active request finished and nothing more
   * were submitted; with one tenant, FIFO and exact). 0 for the next one; -1 when it is not queued.
   */
  queuePosition(req: ScheduledRequest): number {
    if (req.state !== 'queued') return -1;
    return this.fair.queuePosition(this.queue, req);
  }

  /** Per-tenant counters (a copy), for metrics. */
  tenantStats(): Map<string, TenantStats> {
    return this.fair.stats();
  }

  /**
   * Submits a request. Throws WEFT_OVERLOADED when the admission queue is full, WEFT_BAD_ARGUMENT /
   * WEFT_TOKEN_OUT_OF_RANGE / WEFT_CONTEXT_OVERFLOW for a request that could never run.
   */
  submit(opts: SubmitOptions): ScheduledRequest {
    if (this.closed) throw new WeftError('WEFT_DISPOSED', 'the scheduler was closed');
    const { weight, maxTokens } = checkSubmit(opts, this.vocabSize, this.maxContext);
    if (opts.sequence && [...this.active, ...this.queue].some((r) => r.seq === opts.sequence)) {
      throw new WeftError('WEFT_SEQUENCE_BUSY', 'the sequence already has a request in the scheduler');
    }
    if (this.active.length >= this.maxActive && this.queue.length >= this.maxQueue) {
      throw new WeftError('WEFT_OVERLOADED', `the admission queue is full (${this.maxQueue} waiting)`);
    }
    if (opts.sampling && opts.sequence) this.engine.setSampling(opts.sequence, opts.sampling); // validates now
    const req = new ScheduledRequest(this, opts, maxTokens);
    if (opts.sequence) this.idle.delete(opts.sequence);
    if (opts.signal) {
      if (opts.signal.aborted) queueMicrotask(() => req.cancel());
      else opts.signal.addEventListener('abort', () => req.cancel(), { once: true });
    }
    this.queue.push(req);
    this.fair.queued(req, weight);
    this.admit();
    this.wake();
    return req;
  }

  /**
   * Hands a sequence back between requests (a session's, idle until its next turn): under KV
   * pressure it may be parked; the next submit with it restores it. Least recently released is
   * parked first.
   */
  release(seq: Sequence): void {
    this.idle.delete(seq);
    this.idle.set(seq, ++this.tick);
  }

  /** Forgets a sequence (before the owner frees it). */
  forget(seq: Sequence): void {
    this.idle.delete(seq);
  }

  cancel(req: ScheduledRequest): void {
    if (req.state === 'done') return;
    req.cancelRequested = true;
    if (!req.inFlight) this.finish(req, 'cancelled');
    this.wake();
  }

  private readonly pumpSoon = () => {
    this.pumping = false;
    this.pump();
  };

  /**
   * Re-runs the loop once the event loop has handled the I/O it has (setImmediate, not a
   * microtask): prompts that arrive together on many sockets are admitted into one step.
   */
  wake(): void {
    if (this.pumping || this.closed) return;
    this.pumping = true;
    setImmediate(this.pumpSoon);
  }

  /** Cancels everything and waits for steps in flight to settle. */
  async close(): Promise<void> {
    for (const r of [...this.queue, ...this.active]) this.cancel(r);
    this.closed = true;
    await Promise.allSettled([...this.inFlightSteps]);
  }

  // ---------------------------------------------------------------------------------------------

  private admit(): void {
    while (this.queue.length > 0 && this.active.length < this.maxActive) {
      const req = this.fair.admissionOrder(this.queue).next().value!;
      this.queue.splice(this.queue.indexOf(req), 1);
      this.fair.admitted(req);
      this.active.push(req); // before a failure, so that finish() finds it
      try {
        if (!req.seq) req.seq = this.engine.createSequence(req.opts.sampling);
        else if (req.seq.info().parked) this.restoreWithPressure(req.seq);
        req.cachedAtStart = req.seq.numTokens;
      } catch (err) {
        this.fail(req, err);
        continue;
      }
      req.admittedAt = performance.now();
      req.state = 'prefilling';
      req.lastServed = 0;
    }
  }

  private restoreWithPressure(seq: Sequence): void {
    for (;;) {
      try {
        call(() => this.engine.native.restoreSequence(seq.id));
        return;
      } catch (err) {
        if (toWeftError(err).code !== 'WEFT_KV_EXHAUSTED' || !this.parkOne()) throw err;
      }
    }
  }

  /** Parks the least recently used idle sequence that holds pages; false when there is none. */
  private parkOne(): boolean {
    for (const seq of this.idle.keys()) {
      let info;
      try {
        info = seq.info();
      } catch {
        this.idle.delete(seq); // freed by its owner
        continue;
      }
      if (info.parked || info.busy || info.numPages === 0) continue;
      call(() => this.engine.native.parkSequence(seq.id));
      this.counters.kvParks++;
      return true;
    }
    return false;
  }

  private pump(): void {
    if (this.closed) return;
    this.admit();
    for (;;) {
      const candidates = this.active.filter((r) => r.runnable(this.maxBufferedEvents));
      if (candidates.length === 0) return;
      const lease = this.engine.contexts.tryAcquire();
      if (!lease) return;
      const free = this.engine.contexts.numFree + 1;
      const batch = this.buildBatch(candidates, Math.ceil(candidates.length / free));
      if (batch.length === 0) {
        lease.release();
        return;
      }
      this.launch(lease, batch);
    }
  }

  private buildBatch(candidates: ScheduledRequest[], share: number): Batch {
    candidates.sort(leastRecentlyServed);
    const isolated = candidates.find((r) => r.isolate);
    const pick = isolated ? [isolated] : candidates;
    const maxSeqs = Math.min(this.maxBatchSequences, Math.max(1, share));
    const decodes = pick.filter((r) => r.state === 'generating');
    const prefills = pick.filter((r) => r.state === 'prefilling');
    const batch: Batch = [];
    let tokens = 0;
    const decodeSlots = prefills.length > 0 ? Math.max(1, maxSeqs - 1) : maxSeqs;
    this.fair.shareDecodeSlots(decodes, (r) => {
      if (batch.length >= decodeSlots || tokens + 1 > this.maxBatchTokens) return null;
      batch.push({ req: r, entry: { sequence: r.seq!, tokens: [r.nextToken], sample: true }, decode: true });
      tokens += 1;
      return 1;
    });
    this.fair.sharePrefillTokens(prefills, (r) => {
      if (batch.length >= maxSeqs || tokens >= this.maxBatchTokens) return null;
      const left = r.opts.tokens.length - r.offset;
      const n = Math.min(left, this.maxBatchTokens - tokens);
      const chunk = r.opts.tokens.slice(r.offset, r.offset + n);
      batch.push({ req: r, entry: { sequence: r.seq!, tokens: chunk, sample: n === left && !r.opts.prefillOnly }, decode: false });
      tokens += n;
      return n;
    });
    const now = ++this.tick;
    for (const b of batch) {
      b.req.inFlight = true;
      b.req.lastServed = now;
    }
    return batch;
  }

  private launch(lease: ContextLease, batch: Batch): void {
    this.counters.steps++;
    const started = performance.now();
    const p: Promise<void> = this.engine.step(lease, batch.map((b) => b.entry)).then(
      (results) => this.settle(p, lease, batch, started, results, null),
      (err) => this.settle(p, lease, batch, started, null, err),
    );
    this.inFlightSteps.add(p);
  }

  /**
   * A step settled: its requests' state is updated, the next step is launched at once (the
   * engine does not wait while JS delivers this step's tokens), and only then are the events
   * delivered to their consumers.
   */
  private settle(p: Promise<void>, lease: ContextLease, batch: Batch, started: number, results: StepResult[] | null, err: unknown): void {
    this.deferring = true;
    try {
      if (results) {
        if (this.onStep) {
          let tokens = 0;
          for (const b of batch) tokens += b.entry.tokens.length;
          try {
            this.onStep({ durationMs: performance.now() - started, sequences: batch.length, tokens });
          } catch {
            /* an observer never breaks the loop */
          }
        }
        this.onResults(batch, results);
      } else {
        this.onStepError(batch, err);
      }
    } catch (e) {
      for (const b of batch) this.fail(b.req, e);
    }
    for (const b of batch) {
      b.req.inFlight = false;
      // a cancel that arrived while the step ran
      if (b.req.cancelRequested) this.finish(b.req, 'cancelled');
    }
    lease.release();
    this.inFlightSteps.delete(p);
    try {
      this.pump();
    } finally {
      this.deferring = false;
      this.deliver();
    }
  }

  private onResults(batch: Batch, results: StepResult[]): void {
    batch.forEach((b, i) => {
      const r = b.req;
      const res = results[i]!;
      r.fed.push(...Array.from(b.entry.tokens));
      r.isolate = false;
      if (!b.decode) r.offset += b.entry.tokens.length;
      if (r.state === 'done') return;
      if (r.cancelRequested) return this.finish(r, 'cancelled');
      if (r.opts.prefillOnly && r.offset >= r.opts.tokens.length) return this.finish(r, 'length');
      if (!b.entry.sample) return; // more prompt to prefill
      r.state = 'generating';
      if (res.stop) return this.finish(r, 'stop');
      this.fair.generated(r);
      const { ev, stopped } = r.takeToken(res);
      this.emit(r, ev);
      if (stopped) return this.finish(r, 'stop');
      r.nextToken = ev.token;
      if (r.generated.length >= r.maxTokens || r.cachedAtStart + r.fed.length >= this.maxContext) return this.finish(r, 'length');
    });
  }

  private onStepError(batch: Batch, err: unknown): void {
    const e = toWeftError(err);
    const live = batch.filter((b) => b.req.state !== 'done');
    for (const b of live) if (b.req.cancelRequested) this.finish(b.req, 'cancelled');
    const rest = live.filter((b) => b.req.state !== 'done');
    if (rest.length === 0) return;
    if (e.code === 'WEFT_KV_EXHAUSTED') {
      this.counters.kvRetries++;
      if (this.parkOne()) return; // retried on the next pump (pages were freed)
      // nothing idle to park: the newest request gives way to the older ones
      const newest = rest.reduce((a, b) => (b.req.admittedAt > a.req.admittedAt || (b.req.admittedAt === a.req.admittedAt && b.req.id > a.req.id) ? b : a));
      this.fail(newest.req, e);
      return;
    }
    // the device, not a request, failed: each request of the step ends with that error (its
    // sequence keeps the state it had before the step; a timed-out context is set aside and its
    // sequences stay busy until it drains), rather than a retry one by one that would meet
    // WEFT_SEQUENCE_BUSY or the same lost device
    if (rest.length === 1 || e.code === 'WEFT_DEVICE_TIMEOUT' || e.code === 'WEFT_DEVICE_LOST') {
      for (const b of rest) this.fail(b.req, e);
      return;
    }
    for (const b of rest) b.req.isolate = true;
  }

  private fail(req: ScheduledRequest, err: unknown): void {
    const e = toWeftError(err);
    this.finish(req, 'error', { code: e.code, message: e.message });
  }

  private finish(req: ScheduledRequest, reason: FinishReason, error?: DoneEvent['error']): void {
    if (req.state === 'done') return;
    req.state = 'done';
    req.finishReason = reason;
    const qi = this.queue.indexOf(req);
    if (qi >= 0) {
      this.queue.splice(qi, 1);
      this.fair.left(req, 'queue');
    }
    const ai = this.active.indexOf(req);
    if (ai >= 0) {
      this.active.splice(ai, 1);
      this.fair.left(req, 'active');
    }
    const done = req.doneEvent(reason, error);
    // finish() never runs while the sequence is inside a native step (a cancel during a step
    // waits for the step to settle), so an owned sequence is freed at once
    req.freeOwnedSequence();
    this.emit(req, done);
    this.wake();
  }

  /** Hands an event to its request's consumer, or queues it while a step is being settled. */
  private emit(req: ScheduledRequest, ev: RequestEvent): void {
    if (this.deferring) {
      req.undelivered++;
      this.outReqs.push(req);
      this.outEvents.push(ev);
    } else {
      req.deliver(ev);
    }
  }

  private deliver(): void {
    const reqs = this.outReqs;
    const events = this.outEvents;
    this.delivering = true;
    try {
      for (let i = 0; i < reqs.length; i++) {
        reqs[i]!.undelivered--;
        reqs[i]!.deliver(events[i]!);
      }
    } finally {
      reqs.length = 0;
      events.length = 0;
      this.delivering = false;
    }
    try {
      this.onDelivered?.();
    } catch {
      /* an observer never breaks the loop */
    }
  }
}

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toWeftError(err);
  }
}

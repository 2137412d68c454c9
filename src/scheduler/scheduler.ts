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
 * Fair share across tenants (a request's `tenant`, an API key's name, with its `weight`):
 *  - Decode slots and prefill tokens are each shared by stride scheduling (`StrideLane`): every
 *    tenant has a pass; each slot (or prefill chunk) goes to the tenant with the least pass among
 *    those with a runnable request left, and advances its pass by 1 (or the chunk's tokens) /
 *    weight. Over steps a tenant gets slots in proportion to its weight, and within one step the
 *    tenants' picks interleave. It is work-conserving: a tenant with fewer runnable requests than
 *    its share takes what it can and the rest goes to the others, never an empty slot while a
 *    runnable request waits. Credit is not banked: a tenant that had nothing runnable (or less than
 *    its share) is brought up to the lane's virtual time (the pass of the latest pick) when it is
 *    next a candidate, so coming back does not starve the others with a burst.
 *  - Admission: the next request admitted is the oldest queued one of the tenant with the least
 *    (active + 1) / weight, ties to the tenant whose oldest queued request came first: FIFO within
 *    a tenant, and FIFO over everything with a single tenant.
 *  - This only chooses who runs in a step: a sequence's tokens do not depend on the batch it is in.
 *  - Tenants are kept for the scheduler's life (`tenantStats()`): a bounded set such as API key
 *    names, not one per user.
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
import { ScheduledRequest, type DoneEvent, type FinishReason, type RequestEvent, type SubmitOptions, type TokenEvent } from './request.js';

export { ScheduledRequest } from './request.js';
export type { DoneEvent, FinishReason, RequestEvent, RequestState, SubmitOptions, TokenEvent } from './request.js';

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

/** A tenant's counters (`Scheduler.tenantStats()`). */
export interface TenantStats {
  /** Its weight, as its latest submit gave it. */
  weight: number;
  /** Requests admitted (holding KV, scheduled). */
  active: number;
  /** Requests waiting for admission. */
  queued: number;
  /** Tokens generated for it since the scheduler started. */
  decodeTokens: number;
}

/** Least recently served first, then oldest: the order of requests within a tenant. */
const leastRecentlyServed = (a: ScheduledRequest, b: ScheduledRequest) => a.lastServed - b.lastServed || a.id - b.id;

export class Scheduler {
  private readonly queue: ScheduledRequest[] = [];
  private readonly active: ScheduledRequest[] = [];
  private readonly tenants = new Map<string, TenantStats>();
  private readonly decodeLane = new StrideLane();
  private readonly prefillLane = new StrideLane();
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
    if (req.state !== 'queued' || !this.queue.includes(req)) return -1;
    let n = 0;
    for (const r of this.admissionOrder()) {
      if (r === req) return n;
      n++;
    }
    return -1;
  }

  /** Per-tenant counters (a copy), for metrics. */
  tenantStats(): Map<string, TenantStats> {
    return new Map([...this.tenants].map(([name, t]) => [name, { ...t }]));
  }

  /**
   * Submits a request. Throws WEFT_OVERLOADED when the admission queue is full, WEFT_BAD_ARGUMENT /
   * WEFT_TOKEN_OUT_OF_RANGE / WEFT_CONTEXT_OVERFLOW for a request that could never run.
   */
  submit(opts: SubmitOptions): ScheduledRequest {
    if (this.closed) throw new WeftError('WEFT_DISPOSED', 'the scheduler was closed');
    const { tokens } = opts;
    if (!Array.isArray(tokens) || tokens.length === 0) throw new WeftError('WEFT_BAD_ARGUMENT', 'submit: tokens must be a non-empty array');
    for (const t of tokens) {
      if (!Number.isInteger(t) || t < 0 || t >= this.vocabSize) throw new WeftError('WEFT_TOKEN_OUT_OF_RANGE', `token id ${t} is not in [0, ${this.vocabSize})`);
    }
    if (opts.tenant !== undefined && typeof opts.tenant !== 'string') throw new WeftError('WEFT_BAD_ARGUMENT', 'tenant must be a string');
    const weight = opts.weight ?? 1;
    if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0) throw new WeftError('WEFT_BAD_ARGUMENT', `weight must be a positive finite number (got ${weight})`);
    const maxTokens = opts.maxTokens ?? 256;
    if (!Number.isInteger(maxTokens) || maxTokens < 1) throw new WeftError('WEFT_BAD_ARGUMENT', `maxTokens must be a positive integer (got ${maxTokens})`);
    const cached = opts.sequence ? opts.sequence.numTokens : 0;
    if (cached + tokens.length > this.maxContext) {
      throw new WeftError('WEFT_CONTEXT_OVERFLOW', `the prompt (${tokens.length} new + ${cached} cached tokens) does not fit the context of ${this.maxContext}`);
    }
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
    const tenant = this.tenants.get(req.tenant);
    if (tenant) tenant.weight = weight;
    else this.tenants.set(req.tenant, { weight, active: 0, queued: 0, decodeTokens: 0 });
    this.queue.push(req);
    this.tenantOf(req).queued++;
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

  private tenantOf(req: ScheduledRequest): TenantStats {
    return this.tenants.get(req.tenant)!;
  }

  private readonly weightOf = (tenant: string) => this.tenants.get(tenant)!.weight;

  private admit(): void {
    while (this.queue.length > 0 && this.active.length < this.maxActive) {
      const req = this.admissionOrder().next().value!;
      this.queue.splice(this.queue.indexOf(req), 1);
      this.tenantOf(req).queued--;
      this.tenantOf(req).active++;
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

  /**
   * The queued requests in the order they are admitted while the active counts change only by
   * these admissions: each time the oldest queued request of the tenant with the least
   * (active + 1) / weight, ties to the tenant whose oldest queued request came first.
   */
  private *admissionOrder(): Generator<ScheduledRequest> {
    const byTenant = new Map<string, { reqs: ScheduledRequest[]; at: number; active: number; weight: number }>();
    for (const r of this.queue) {
      const q = byTenant.get(r.tenant);
      if (q) q.reqs.push(r);
      else byTenant.set(r.tenant, { reqs: [r], at: 0, active: this.tenantOf(r).active, weight: this.tenantOf(r).weight });
    }
    for (;;) {
      let best: { reqs: ScheduledRequest[]; at: number; active: number; weight: number } | null = null;
      for (const q of byTenant.values()) {
        if (q.at >= q.reqs.length) continue;
        if (!best) {
          best = q;
          continue;
        }
        // (q.active + 1) / q.weight vs best's, without dividing
        const d = (q.active + 1) * best.weight - (best.active + 1) * q.weight;
        if (d < 0 || (d === 0 && q.reqs[q.at]!.id < best.reqs[best.at]!.id)) best = q;
      }
      if (!best) return;
      best.active++;
      yield best.reqs[best.at++]!;
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

  private runnable(r: ScheduledRequest): boolean {
    if (r.inFlight || r.state === 'done' || r.cancelRequested) return false;
    if (r.state !== 'generating') return true;
    if (r.events.buffered + r.undelivered >= this.maxBufferedEvents) return false;
    return !this.consumerBlocked(r);
  }

  /** The request's backpressure hook; one that throws (a transport already gone) counts as not blocked. */
  private consumerBlocked(r: ScheduledRequest): boolean {
    try {
      return r.opts.isBlocked?.() === true;
    } catch {
      return false;
    }
  }

  private pump(): void {
    if (this.closed) return;
    this.admit();
    for (;;) {
      const candidates = this.active.filter((r) => this.runnable(r));
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
    this.decodeLane.visit(decodes, this.weightOf, (r) => {
      if (batch.length >= decodeSlots || tokens + 1 > this.maxBatchTokens) return null;
      batch.push({ req: r, entry: { sequence: r.seq!, tokens: [r.nextToken], sample: true }, decode: true });
      tokens += 1;
      return 1;
    });
    this.prefillLane.visit(prefills, this.weightOf, (r) => {
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
      const token = res.token!;
      if (r.firstTokenAt === 0) r.firstTokenAt = performance.now();
      r.generated.push(token);
      this.tenantOf(r).decodeTokens++;
      const ev: TokenEvent = { type: 'token', index: r.generated.length - 1, token };
      if (res.logprob !== undefined && r.opts.sampling?.logprobs) {
        ev.logprob = res.logprob;
        ev.top = res.top ?? [];
      }
      let stopped = false;
      if (r.stopper) {
        const out = r.stopper.push(token);
        ev.text = out.text;
        stopped = out.stop;
      }
      this.emit(r, ev);
      if (stopped) return this.finish(r, 'stop');
      r.nextToken = token;
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
    if (rest.length === 1) {
      this.fail(rest[0]!.req, e);
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
      this.tenantOf(req).queued--;
    }
    const ai = this.active.indexOf(req);
    if (ai >= 0) {
      this.active.splice(ai, 1);
      this.tenantOf(req).active--;
    }
    const now = performance.now();
    const admitted = req.admittedAt || now;
    const done: DoneEvent = {
      type: 'done',
      finishReason: reason,
      usage: { promptTokens: req.opts.tokens.length, cachedTokens: req.cachedAtStart, completionTokens: req.generated.length },
      timing: { queueMs: admitted - req.submittedAt, ttftMs: req.firstTokenAt ? req.firstTokenAt - req.submittedAt : 0, durationMs: now - req.submittedAt },
    };
    if (error) done.error = error;
    if (req.stopper && reason !== 'stop') done.text = req.stopper.flush();
    // finish() never runs while the sequence is inside a native step (a cancel during a step
    // waits for the step to settle), so an owned sequence is freed at once
    if (req.seq && req.ownsSeq) {
      try {
        req.seq.free();
      } catch {
        /* already gone */
      }
    }
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

/**
 * Stride scheduling of one kind of step capacity (decode slots, prefill tokens) over tenants.
 * `visit` offers the candidates to `use` one at a time: next the tenant with the least pass among
 * those with candidates left (ties: its next candidate is the less recently served), its
 * candidates in the given order; `use` takes one and returns what it cost (charged to the tenant
 * as cost / weight), or returns null to stop. A tenant is brought up to the virtual time (the pass
 * of the latest pick) when it is visited, so what it left unused is not owed back.
 */
class StrideLane {
  private vtime = 0;
  private readonly pass = new Map<string, number>();

  visit(candidates: ScheduledRequest[], weightOf: (tenant: string) => number, use: (r: ScheduledRequest) => number | null): void {
    type Queue = { tenant: string; reqs: ScheduledRequest[]; at: number; pass: number; weight: number };
    const byTenant = new Map<string, Queue>();
    for (const r of candidates) {
      const q = byTenant.get(r.tenant);
      if (q) q.reqs.push(r);
      else byTenant.set(r.tenant, { tenant: r.tenant, reqs: [r], at: 0, pass: Math.max(this.pass.get(r.tenant) ?? 0, this.vtime), weight: weightOf(r.tenant) });
    }
    for (;;) {
      let best: Queue | null = null;
      for (const q of byTenant.values()) {
        if (q.at >= q.reqs.length) continue;
        if (!best || q.pass < best.pass || (q.pass === best.pass && leastRecentlyServed(q.reqs[q.at]!, best.reqs[best.at]!) < 0)) best = q;
      }
      if (!best) break;
      const cost = use(best.reqs[best.at]!);
      if (cost === null) break;
      this.vtime = best.pass;
      best.pass += cost / best.weight;
      best.at++;
    }
    for (const q of byTenant.values()) this.pass.set(q.tenant, q.pass);
  }
}

function call<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    throw toWeftError(err);
  }
}

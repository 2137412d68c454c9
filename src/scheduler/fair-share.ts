/**
 * Fair share across tenants (a request's `tenant`, an API key's name, with its `weight`): which
 * queued request the Scheduler admits next, and which runnable requests get a step's decode slots
 * and prefill tokens. The Scheduler keeps the queue and the active set; it tells `FairShare` what
 * happens to each request (`queued`, `admitted`, `left`, `generated`) and asks it for an order.
 *
 *  - Decode slots and prefill tokens are each shared by stride scheduling (`StrideLane`): every
 *    tenant has a pass; each slot (or prefill chunk) goes to the tenant with the least pass among
 *    those with a runnable request left, and advances its pass by 1 (or the chunk's tokens) /
 *    weight. Over steps a tenant gets slots in proportion to its weight, and within one step the
 *    tenants' picks interleave. It is work-conserving: a tenant with fewer runnable requests than
 *    its share takes what it can and the rest goes to the others, never an empty slot while a
 *    runnable request waits. Credit is not banked: a tenant that had nothing runnable (or less than
 *    its share) is brought up to the lane's virtual time (the pass of the latest pick) when it is
 *    next a candidate, so coming back does not starve the others with a burst.
 *  - Within a tenant, requests go round-robin: least recently served first (`leastRecentlyServed`).
 *  - Admission: the next request admitted is the oldest queued one of the tenant with the least
 *    (active + 1) / weight, ties to the tenant whose oldest queued request came first: FIFO within
 *    a tenant, and FIFO over everything with a single tenant.
 *  - This only chooses who runs in a step: a sequence's tokens do not depend on the batch it is in.
 *  - Tenants are kept for the scheduler's life (`stats()`): a bounded set such as API key names,
 *    not one per user.
 */
import type { ScheduledRequest } from './request.js';

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

/**
 * Offered one candidate at a time by a lane: takes it and returns what it cost (a decode slot 1,
 * a prefill chunk its tokens), or returns null to stop offering.
 */
export type UseCandidate = (r: ScheduledRequest) => number | null;

/** Least recently served first, then oldest: the order of requests within a tenant. */
export const leastRecentlyServed = (a: ScheduledRequest, b: ScheduledRequest) => a.lastServed - b.lastServed || a.id - b.id;

/** The tenants' counters and weights, the admission order and the two stride lanes of a Scheduler. */
export class FairShare {
  private readonly tenants = new Map<string, TenantStats>();
  private readonly decodeLane = new StrideLane();
  private readonly prefillLane = new StrideLane();

  /** A request was submitted: its tenant is added, or takes this submit's weight; it counts as queued. */
  queued(req: ScheduledRequest, weight: number): void {
    const tenant = this.tenants.get(req.tenant);
    if (tenant) tenant.weight = weight;
    else this.tenants.set(req.tenant, { weight, active: 0, queued: 0, decodeTokens: 0 });
    this.tenantOf(req).queued++;
  }

  /** A queued request was admitted. */
  admitted(req: ScheduledRequest): void {
    const t = this.tenantOf(req);
    t.queued--;
    t.active++;
  }

  /** A request left the scheduler from the queue or from the active set. */
  left(req: ScheduledRequest, from: 'queue' | 'active'): void {
    if (from === 'queue') this.tenantOf(req).queued--;
    else this.tenantOf(req).active--;
  }

  /** A token was generated for a request. */
  generated(req: ScheduledRequest): void {
    this.tenantOf(req).decodeTokens++;
  }

  /** Per-tenant counters (a copy). */
  stats(): Map<string, TenantStats> {
    return new Map([...this.tenants].map(([name, t]) => [name, { ...t }]));
  }

  /**
   * The queued requests in the order they are admitted while the active counts change only by
   * these admissions: each time the oldest queued request of the tenant with the least
   * (active + 1) / weight, ties to the tenant whose oldest queued request came first.
   */
  *admissionOrder(queue: readonly ScheduledRequest[]): Generator<ScheduledRequest> {
    const byTenant = new Map<string, { reqs: ScheduledRequest[]; at: number; active: number; weight: number }>();
    for (const r of queue) {
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

  /** How many of `queue` are admitted before `req` in `admissionOrder`; -1 when it is not in `queue`. */
  queuePosition(queue: readonly ScheduledRequest[], req: ScheduledRequest): number {
    if (!queue.includes(req)) return -1;
    let n = 0;
    for (const r of this.admissionOrder(queue)) {
      if (r === req) return n;
      n++;
    }
    return -1;
  }

  /** Offers generating requests (in `leastRecentlyServed` order) to `use` for a step's decode slots, tenants by stride. */
  shareDecodeSlots(candidates: ScheduledRequest[], use: UseCandidate): void {
    this.decodeLane.visit(candidates, this.weightOf, use);
  }

  /** Offers prefilling requests (in `leastRecentlyServed` order) to `use` for a step's prefill tokens, tenants by stride. */
  sharePrefillTokens(candidates: ScheduledRequest[], use: UseCandidate): void {
    this.prefillLane.visit(candidates, this.weightOf, use);
  }

  private tenantOf(req: ScheduledRequest): TenantStats {
    return this.tenants.get(req.tenant)!;
  }

  private readonly weightOf = (tenant: string) => this.tenants.get(tenant)!.weight;
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

  visit(candidates: ScheduledRequest[], weightOf: (tenant: string) => number, use: UseCandidate): void {
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

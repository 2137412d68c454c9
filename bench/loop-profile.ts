/**
 * Where the main thread's time goes while tokens stream (bench/gateway.ts): the per-token
 * functions of the scheduler, the session/gateway path and the transports are wrapped (their
 * prototypes patched for one profiled round, then restored) and each one's self time summed,
 * its callees' time excluded. What no wrapper covers (socket reads, native step results turned
 * into JS objects, promise continuations, timers, GC) is `other`: the event loop's busy time
 * (performance.eventLoopUtilization) minus the wrapped total.
 */
import { performance, type EventLoopUtilization } from 'node:perf_hooks';
import { Engine } from '../src/engine/engine.js';
import { SocketLink } from '../src/gateway/socket-link.js';
import { Scheduler } from '../src/scheduler/scheduler.js';
import { TextStopper } from '../src/scheduler/text-stop.js';
import { ResponseLog } from '../src/session/response-log.js';

/** A bucket, and the (prototype, method) pairs whose self time it sums. */
const TARGETS: [bucket: string, proto: object, method: string][] = [
  // a step settled: its requests' state, the lease, then the next step's launch and the delivery
  ['settle', Scheduler.prototype, 'settle'],
  ['results', Scheduler.prototype, 'onResults'],
  ['detokenize', TextStopper.prototype, 'push'],
  ['batch', Scheduler.prototype, 'buildBatch'],
  ['launch', Scheduler.prototype, 'launch'],
  ['launch', Engine.prototype, 'step'],
  // events to their sessions: turn listeners, the session runners
  ['deliver', Scheduler.prototype, 'deliver'],
  // a delta's frame built and kept for replay (ResponseLog.delta less the send it makes)
  ['frames', ResponseLog.prototype, 'delta'],
  // the transport's send of one frame (into a corked socket), then the writes at the step's end
  ['send', SocketLink.prototype, 'send'],
  ['write', SocketLink.prototype, 'uncork'],
];

export const BUCKETS = ['settle', 'results', 'detokenize', 'batch', 'launch', 'native', 'deliver', 'frames', 'send', 'write'] as const;

export interface LoopProfile {
  /** Event-loop busy time over the round (ms) and its share of the wall time. */
  busyMs: number;
  utilization: number;
  /** Self time per bucket (ms), plus `other`: busy time no wrapper covers. */
  selfMs: Record<string, number>;
}

type Fn = (...args: unknown[]) => unknown;

export class LoopProfiler {
  private readonly self = new Map<string, number>();
  /** Time of the callees of each open call, innermost last. */
  private readonly childMs: number[] = [];
  private readonly restore: (() => void)[] = [];
  private elu0: EventLoopUtilization | null = null;

  /** Patches the targets (and `engine.native.step`: the native call's synchronous part) and starts the clock. */
  start(engine: Engine): void {
    for (const [bucket, proto, method] of TARGETS) this.wrap(bucket, proto as Record<string, Fn>, method);
    this.wrap('native', engine.native as unknown as Record<string, Fn>, 'step');
    this.self.clear();
    this.elu0 = performance.eventLoopUtilization();
  }

  /** Restores the patched methods; the round's profile. */
  stop(): LoopProfile {
    const elu = performance.eventLoopUtilization(this.elu0!);
    for (const r of this.restore.splice(0).reverse()) r();
    const selfMs: Record<string, number> = {};
    let wrapped = 0;
    for (const b of BUCKETS) {
      selfMs[b] = this.self.get(b) ?? 0;
      wrapped += selfMs[b]!;
    }
    selfMs.other = Math.max(0, elu.active - wrapped);
    return { busyMs: elu.active, utilization: elu.utilization, selfMs };
  }

  private wrap(bucket: string, target: Record<string, Fn>, method: string): void {
    const orig = target[method];
    const ownDesc = Object.getOwnPropertyDescriptor(target, method);
    if (typeof orig !== 'function') throw new Error(`loop profile: ${method} is not a method`);
    const self = this.self;
    const stack = this.childMs;
    const wrapped = function (this: unknown, ...args: unknown[]) {
      const t0 = performance.now();
      stack.push(0);
      try {
        return orig.apply(this, args);
      } finally {
        const dt = performance.now() - t0;
        const children = stack.pop()!;
        self.set(bucket, (self.get(bucket) ?? 0) + dt - children);
        if (stack.length > 0) stack[stack.length - 1]! += dt;
      }
    };
    // defineProperty: a native class's methods are read-only (an own property shadows them)
    Object.defineProperty(target, method, { value: wrapped, writable: true, configurable: true, enumerable: ownDesc?.enumerable ?? false });
    this.restore.push(ownDesc ? () => Object.defineProperty(target, method, ownDesc) : () => delete target[method]);
  }
}

/** A profiled round of one mode and session count. */
export interface ProfileRow extends LoopProfile {
  mode: string;
  sessions: number;
  tokens: number;
}

/** The profiled rounds as a markdown table: busy share of the wall time, then µs per token. */
export function profileTable(rows: ProfileRow[]): string {
  const cols = [...BUCKETS, 'other'];
  const lines = [
    `| sessions | mode | event loop busy | busy µs/token | ${cols.join(' | ')} |`,
    '|---|---|---|---|' + cols.map(() => '---|').join(''),
  ];
  for (const r of rows) {
    const us = (ms: number) => ((ms * 1000) / r.tokens).toFixed(2);
    lines.push(`| ${r.sessions} | ${r.mode} | ${(r.utilization * 100).toFixed(1)}% | ${us(r.busyMs)} | ${cols.map((c) => us(r.selfMs[c]!)).join(' | ')} |`);
  }
  return lines.join('\n');
}

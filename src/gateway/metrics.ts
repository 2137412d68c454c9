/** Prometheus metrics of one gateway (its own prom-client Registry; `weft_` prefix). */
import type { Tenant } from './api-keys.js';
import type { ClusterState } from '../cluster/redis-state.js';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import type { Engine } from '../engine/engine.js';
import { ERRORS } from '../errors.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { KvLifecycle } from '../session/kv-lifecycle.js';
import type { Session } from '../session/session.js';

const LATENCY_BUCKETS = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10];

export class GatewayMetrics {
  readonly registry = new Registry();
  readonly ttft = new Histogram({ name: 'weft_time_to_first_token_seconds', help: 'Time from a message (message.create, response.create, or an HTTP completion request) to its first generated token.', buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly interToken = new Histogram({ name: 'weft_inter_token_latency_seconds', help: 'Time between consecutive response.delta events of a response.', buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly queueWait = new Histogram({ name: 'weft_queue_wait_seconds', help: 'Time a turn waited in the scheduler admission queue.', buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly stepDuration = new Histogram({ name: 'weft_step_duration_seconds', help: 'Duration of one engine step (one batch on one execution context).', buckets: LATENCY_BUCKETS, registers: [this.registry] });
  readonly batchSequences = new Histogram({ name: 'weft_batch_sequences', help: 'Sequences in one engine step.', buckets: [1, 2, 4, 8, 16, 32, 64, 128, 256], registers: [this.registry] });
  readonly batchTokens = new Histogram({ name: 'weft_batch_tokens', help: 'Tokens (decode tokens + prefill chunks) in one engine step.', buckets: [1, 4, 16, 64, 128, 256, 512, 1024, 2048, 4096], registers: [this.registry] });
  readonly sessionsActive = new Gauge({ name: 'weft_sessions_active', help: 'Sessions open on the gateway.', registers: [this.registry] });
  readonly sessionsDetached = new Gauge({ name: 'weft_sessions_detached', help: 'Sessions whose connection is gone, waiting for a resume.', registers: [this.registry] });
  readonly connections = new Gauge({ name: 'weft_open_connections', help: 'Open WebSocket connections (protocol v1 and Realtime).', registers: [this.registry] });
  readonly promptTokens = new Counter({ name: 'weft_prompt_tokens_total', help: 'Prompt tokens of finished turns (cached included).', registers: [this.registry] });
  readonly cachedTokens = new Counter({ name: 'weft_cached_tokens_total', help: 'Prompt tokens served from a session KV cache instead of prefilled.', registers: [this.registry] });
  readonly generatedTokens = new Counter({ name: 'weft_generated_tokens_total', help: 'Generated (completion) tokens.', registers: [this.registry] });
  readonly httpRequests = new Counter({ name: 'weft_http_requests_total', help: 'OpenAI-compatible HTTP requests answered, by status (a stream counts when it starts).', labelNames: ['status'], registers: [this.registry] });
  readonly errors = new Counter({ name: 'weft_errors_total', help: 'error events sent and responses that ended in error, by code.', labelNames: ['code'], registers: [this.registry] });

  constructor(
    getEngine: () => Engine | null,
    getScheduler: () => Scheduler | null,
    getKv: () => KvLifecycle | null = () => null,
    getSessions: () => Iterable<Session> = () => [],
  ) {
    const reg = this.registry;
    // every code starts at 0: rate() sees the first error of a code (a series that appears at 1 reads as no increase)
    for (const code of Object.keys(ERRORS)) this.errors.inc({ code }, 0);
    new Gauge({
      name: 'weft_sessions_state', help: 'Open sessions (those waiting for a resume included) by turn state: idle, preparing (tokenizing a message), queued (admission queue), prefilling, generating.', labelNames: ['state'], registers: [reg],
      collect() {
        const n: Record<string, number> = { idle: 0, preparing: 0, queued: 0, prefilling: 0, generating: 0 };
        for (const s of getSessions()) {
          const st: string = s.state;
          if (st in n) n[st]!++;
        }
        for (const [state, v] of Object.entries(n)) this.set({ state }, v);
      },
    });
    new Gauge({
      name: 'weft_sessions_queued', help: 'Turns waiting in the scheduler admission queue.', registers: [reg],
      collect() { this.set(getScheduler()?.numQueued ?? 0); },
    });
    new Gauge({
      name: 'weft_kv_pages_used', help: 'KV cache pages in use.', registers: [reg],
      collect() { const s = getEngine()?.stats(); this.set(s ? s.kvPagesTotal - s.kvPagesFree : 0); },
    });
    new Gauge({
      name: 'weft_kv_pages_total', help: 'KV cache pages in the pool.', registers: [reg],
      collect() { this.set(getEngine()?.stats().kvPagesTotal ?? 0); },
    });
    new Gauge({
      name: 'weft_contexts_busy', help: 'Execution contexts running a step.', registers: [reg],
      collect() { this.set(getEngine()?.stats().contextsBusy ?? 0); },
    });
    new Gauge({
      name: 'weft_sessions_kv', help: 'Sessions by where their KV is: resident (KV pages), parked (host memory), dropped (tokens only).', labelNames: ['state'], registers: [reg],
      collect() {
        const c = getKv()?.census();
        for (const state of ['resident', 'parked', 'dropped'] as const) this.set({ state }, c?.[state].sessions ?? 0);
      },
    });
    new Gauge({
      name: 'weft_session_kv_bytes', help: 'KV bytes held for sessions, by state (resident: in the pool; parked: host memory).', labelNames: ['state'], registers: [reg],
      collect() {
        const c = getKv()?.census();
        for (const state of ['resident', 'parked'] as const) this.set({ state }, c?.[state].bytes ?? 0);
      },
    });
    collectDefaultMetrics({ register: reg, prefix: 'weft_' });
  }

  /** The state shared with other instances: whether Redis answers, operations, records waiting to be written again. */
  watchCluster(cluster: ClusterState): void {
    const reg = this.registry;
    new Gauge({ name: 'weft_redis_up', help: 'Whether the last Redis call of this instance succeeded (1) or not (0).', registers: [reg], collect() { this.set(cluster.up ? 1 : 0); } });
    let ops = 0;
    let failures = 0;
    new Counter({ name: 'weft_redis_ops_total', help: 'Redis calls made by this instance (heartbeats, records, claims, budgets).', registers: [reg], collect() { this.inc(cluster.ops - ops); ops = cluster.ops; } });
    new Counter({ name: 'weft_redis_failures_total', help: 'Redis calls that failed (Redis down or slow).', registers: [reg], collect() { this.inc(cluster.failures - failures); failures = cluster.failures; } });
    new Gauge({ name: 'weft_redis_dirty_records', help: 'Session records saved while Redis was down, waiting to be written again.', registers: [reg], collect() { this.set(cluster.numDirty); } });
    this.takeovers = new Counter({ name: 'weft_session_takeovers_total', help: 'Sessions this instance took over from another (by outcome: resumed, regenerated, refused).', labelNames: ['outcome'], registers: [reg] });
  }

  /** Takeovers of sessions from other instances (set by watchCluster). */
  takeovers: Counter<'outcome'> | null = null;

  /** The stateless KV reuse cache of the OpenAI front (entries, tokens, hits, misses, evictions). */
  watchPrefixCache(get: () => { size: number; numTokens: number; counters: { hits: number; misses: number; hitTokens: number; evictions: number } } | null): void {
    const reg = this.registry;
    new Gauge({ name: 'weft_prefix_cache_entries', help: 'Finished HTTP requests whose KV is kept for reuse.', registers: [reg], collect() { this.set(get()?.size ?? 0); } });
    new Gauge({ name: 'weft_prefix_cache_tokens', help: 'Tokens of KV the prefix cache holds.', registers: [reg], collect() { this.set(get()?.numTokens ?? 0); } });
    for (const [name, key, help] of [
      ['weft_prefix_cache_hits_total', 'hits', 'HTTP requests that reused an earlier request\'s KV.'],
      ['weft_prefix_cache_misses_total', 'misses', 'HTTP requests that found no KV to reuse.'],
      ['weft_prefix_cache_hit_tokens_total', 'hitTokens', 'Prompt tokens served from the prefix cache.'],
      ['weft_prefix_cache_evictions_total', 'evictions', 'Prefix cache entries freed (limits, or refused).'],
    ] as const) {
      let last = 0;
      new Counter({ name, help, registers: [reg], collect() { const v = get()?.counters[key] ?? 0; if (v > last) this.inc(v - last); last = v; } });
    }
  }

  /** Per-API-key series, labelled by the key's name (never the key): tokens charged, leases held, budget left, decode tokens scheduled. */
  watchKeys(tenants: readonly Tenant[], getScheduler: () => Scheduler | null): void {
    const reg = this.registry;
    const charged = new Counter({ name: 'weft_key_tokens_total', help: 'Tokens charged to an API key (prompt tokens not served from KV, and generated tokens).', labelNames: ['key'], registers: [reg] });
    for (const t of tenants) {
      charged.inc({ key: t.name }, 0);
      t.onCharge = (n) => charged.inc({ key: t.name }, Math.max(0, n));
    }
    new Gauge({
      name: 'weft_key_concurrent', help: 'Sessions and HTTP requests an API key holds now.', labelNames: ['key'], registers: [reg],
      collect() { for (const t of tenants) this.set({ key: t.name }, t.active); },
    });
    new Gauge({
      name: 'weft_key_tokens_remaining', help: "Tokens left in an API key's per-minute budget (keys with one).", labelNames: ['key'], registers: [reg],
      collect() {
        for (const t of tenants) {
          const left = t.remaining();
          if (left !== null) this.set({ key: t.name }, left);
        }
      },
    });
    new Gauge({
      name: 'weft_key_decode_tokens', help: 'Tokens the scheduler generated for an API key since start (its fair share at work).', labelNames: ['key'], registers: [reg],
      collect() {
        const stats = getScheduler()?.tenantStats();
        for (const t of tenants) this.set({ key: t.name }, stats?.get(t.name)?.decodeTokens ?? 0);
      },
    });
  }
}

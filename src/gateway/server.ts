/**
 * The gateway: HTTP and WebSocket on one port. `GET /healthz` (process up), `GET /readyz` (model
 * loaded, accepting sessions), `GET /metrics` (Prometheus text), the OpenAI-compatible routes,
 * protocol v1 at `/v1/ws` (docs/protocol.md) and the Realtime front at `/v1/realtime`, through
 * the `ws` transport (node:http + ws) or uWebSockets.js. The Gateway holds what the fronts share:
 * the engine and scheduler, the sessions (connected, and detached ones waiting for a resume), the
 * limits, and the lifecycle (listen, drain, close). Apart: its options (gateway-options.ts), the
 * plain HTTP routes (http-routes.ts), the upgrade admission (admission.ts), the client address
 * behind proxies (trusted-proxies.ts), and the sessions saved to the state dir and Redis
 * (saved-sessions.ts).
 */
import { hashToken } from '../session/state-store.js';
import { randomBytes } from 'node:crypto';
import { hostname } from 'node:os';
import { basename } from 'node:path';
import type { Engine } from '../engine/engine.js';
import { Scheduler } from '../scheduler/scheduler.js';
import { ChatFormat } from '../session/chat-format.js';
import { WeftError } from '../errors.js';
import { ApiKeys, type Tenant } from './api-keys.js';
import { admitUpgrade, type UpgradeDecision, type UpgradeRequest } from './admission.js';
import type { GatewayOptions } from './gateway-options.js';
import { RealtimeConnection } from './realtime.js';
import { OpenAIHttp } from './openai-http.js';
import type { HttpExchange } from './http-exchange.js';
import { HttpRoutes } from './http-routes.js';
import { Connection } from './connection.js';
import type { FrontConnection, TransportSocket } from './socket-link.js';
import { GatewayMetrics } from './metrics.js';
import { OriginPolicy } from './origin.js';
import { AddressRateLimiter, type RateLimits } from './rate-limit.js';
import { ResumePool } from './resume-pool.js';
import { KvLifecycle } from '../session/kv-lifecycle.js';
import type { Session } from '../session/session.js';
import { StateStore, type SessionRecord } from '../session/state-store.js';
import type { ConversationData } from '../session/conversation.js';
import { ClusterState, type LastAnswer, type PendingAnswer } from '../cluster/redis-state.js';
import { SavedSessions } from './saved-sessions.js';
import type { SessionRunner } from './session-runner.js';
import { TrustedProxies } from './trusted-proxies.js';
import { WsTransport, WS_PATH, type Transport } from './transport-ws.js';
import { UwsTransport } from './transport-uws.js';

export type { GatewayOptions };

const INSTANCE_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** The default instance id: the hostname (its first label, characters outside the id's set as `-`) and the port. */
export function defaultInstanceId(port: number): string {
  const host = (hostname().split('.')[0] ?? '').replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 50) || 'weft';
  return `${host}-${port}`;
}

export class Gateway {
  engine: Engine | null = null;
  scheduler: Scheduler | null = null;
  format: ChatFormat | null = null;
  modelName = '';
  /** When the gateway was made (the model's `created` in /v1/models). */
  readonly startedAt = Date.now();
  readonly sessions = new Set<Session>();
  readonly connections = new Set<Connection>();
  /** Realtime-front connections (/v1/realtime). */
  readonly realtime = new Set<FrontConnection>();
  /** Resume tokens of the sessions connected now. */
  readonly liveTokens = new Set<string>();
  /** Connections that corked frames during the delivery of the current step's events. */
  readonly corked: { uncork(): void }[] = [];
  readonly metrics = new GatewayMetrics(() => this.engine, () => this.scheduler, () => this.kv, () => this.sessions);
  readonly maxSessions: number;
  readonly maxFrameBytes: number;
  readonly backpressureBytes: number;
  readonly defaultMaxTokens: number;
  readonly resumeTtlMs: number;
  readonly rateLimits: RateLimits;
  readonly addressLimiter: AddressRateLimiter;
  readonly maxBufferedBytes: number;
  readonly drainTimeoutMs: number;
  readonly replayBytes: number;
  readonly heartbeatMs: number;
  kv: KvLifecycle | null = null;
  /** The state dir's store (null: none). */
  readonly store: StateStore | null;
  /** Sessions saved to the state dir and Redis, and made live again (src/gateway/saved-sessions.ts). */
  private readonly saved: SavedSessions;
  readonly origins: OriginPolicy;
  private readonly detached: ResumePool<SessionRunner>;
  readonly transportName: 'ws' | 'uws';
  private readonly transport: Transport;
  private closing = false;
  /** Shutting down: no new connections or responses; running ones finish (drain). */
  draining = false;
  private drained: Promise<void> | null = null;
  /** The plain HTTP routes (src/gateway/http-routes.ts). */
  private readonly routes: HttpRoutes;

  constructor(readonly options: GatewayOptions = {}) {
    const pos = (v: number | undefined, name: string, fallback: number) => {
      if (v === undefined) return fallback;
      if (!Number.isInteger(v) || v < 1) throw new WeftError('WEFT_BAD_ARGUMENT', `${name} must be a positive integer (got ${v})`);
      return v;
    };
    this.maxSessions = pos(options.maxSessions, 'maxSessions', 1024);
    this.maxFrameBytes = pos(options.maxFrameBytes, 'maxFrameBytes', 1 << 20);
    this.backpressureBytes = pos(options.backpressureBytes, 'backpressureBytes', 256 << 10);
    this.defaultMaxTokens = pos(options.defaultMaxTokens, 'defaultMaxTokens', 256);
    const ttl = options.resumeTtlMs ?? 60_000;
    if (!Number.isFinite(ttl) || ttl < 0) throw new WeftError('WEFT_BAD_ARGUMENT', `resumeTtlMs must be a non-negative number (got ${ttl})`);
    this.resumeTtlMs = ttl;
    const framesPerSecond = pos(options.maxFramesPerSecond, 'maxFramesPerSecond', 100);
    const bytesPerSecond = pos(options.maxBytesPerSecond, 'maxBytesPerSecond', 1 << 20);
    this.rateLimits = { framesPerSecond, bytesPerSecond, frameBurst: 2 * framesPerSecond, byteBurst: Math.max(bytesPerSecond, 2 * this.maxFrameBytes) };
    const perClient = pos(options.maxBytesPerSecondPerClient, 'maxBytesPerSecondPerClient', 4 << 20);
    this.addressLimiter = new AddressRateLimiter(perClient, Math.max(perClient, 2 * this.maxFrameBytes));
    this.maxBufferedBytes = pos(options.maxBufferedBytes, 'maxBufferedBytes', 16 << 20);
    this.replayBytes = pos(options.replayBytes, 'replayBytes', 256 << 10);
    const heartbeat = options.heartbeatMs ?? 30_000;
    if (!Number.isFinite(heartbeat) || heartbeat < 0) throw new WeftError('WEFT_BAD_ARGUMENT', `heartbeatMs must be a non-negative number (got ${heartbeat})`);
    this.heartbeatMs = heartbeat;
    const drain = options.drainTimeoutMs ?? 10_000;
    if (!Number.isFinite(drain) || drain < 0) throw new WeftError('WEFT_BAD_ARGUMENT', `drainTimeoutMs must be a non-negative number (got ${drain})`);
    this.drainTimeoutMs = drain;
    this.origins = new OriginPolicy(options.allowedOrigins ?? []);
    const log = (this.log = options.log ?? ((line: string) => process.stderr.write(`weft: ${line}\n`)));
    if (options.redis !== undefined && !/^rediss?:\/\/./.test(options.redis)) throw new WeftError('WEFT_BAD_ARGUMENT', `redis must be a redis:// or rediss:// URL (got ${JSON.stringify(String(options.redis).slice(0, 100))})`);
    this.routes = new HttpRoutes(this, () => this.closing);
    this.store = options.stateDir ? new StateStore(options.stateDir, log) : null;
    this.saved = new SavedSessions(this, this.store);
    this.detached = new ResumePool<SessionRunner>(
      {
        ttlMs: ttl,
        maxTotal: pos(options.maxDetachedSessions, 'maxDetachedSessions', this.maxSessions),
        maxPerClient: pos(options.maxDetachedPerClient, 'maxDetachedPerClient', 16),
      },
      (runner) => {
        this.metrics.sessionsDetached.set(this.detached.size);
        this.endSession(runner);
      },
    );
    if (options.contextPolicy !== undefined && options.contextPolicy !== 'truncate' && options.contextPolicy !== 'reject') {
      throw new WeftError('WEFT_BAD_ARGUMENT', `contextPolicy must be truncate or reject (got ${String(options.contextPolicy)})`);
    }
    this.transportName = options.transport ?? 'ws';
    if (this.transportName !== 'ws' && this.transportName !== 'uws') throw new WeftError('WEFT_BAD_ARGUMENT', `transport must be ws or uws (got ${String(this.transportName)})`);
    this.proxies = TrustedProxies.from(options.trustedProxies);
    if (options.instanceId !== undefined && !INSTANCE_ID.test(options.instanceId)) {
      throw new WeftError('WEFT_BAD_ARGUMENT', `instanceId must be 1-64 letters, digits, _ or - (got ${JSON.stringify(String(options.instanceId).slice(0, 80))})`);
    }
    this.instanceId = options.instanceId ?? defaultInstanceId(options.port ?? 8080);
    this.keys = options.apiKeys === undefined ? null : typeof options.apiKeys === 'string' ? ApiKeys.load(options.apiKeys) : options.apiKeys;
    if (this.keys) this.metrics.watchKeys(this.keys.tenants, () => this.scheduler);
    this.maxBodyBytes = pos(options.maxBodyBytes, 'maxBodyBytes', 4 << 20);
    this.openai = new OpenAIHttp(this);
    this.metrics.watchPrefixCache(() => this.openai.prefixCache);
    this.transport = this.transportName === 'uws' ? new UwsTransport(this) : new WsTransport(this);
  }

  /** Largest HTTP request body. */
  readonly maxBodyBytes: number;
  /** The OpenAI-compatible HTTP routes (src/gateway/openai-http.ts). */
  readonly openai: OpenAIHttp;

  private httpBusy(): boolean {
    return this.openai.busy;
  }

  private cancelHttpForShutdown(): void {
    this.openai.cancelForShutdown();
  }

  /** The reverse proxies in front of weft (null: none). */
  private readonly proxies: TrustedProxies | null;

  /** The client's address: the peer's, or behind a trusted proxy the last untrusted X-Forwarded-For entry. */
  clientAddress(peer: string, forwardedFor: string | undefined): string {
    return this.proxies?.clientAddress(peer, forwardedFor) ?? peer;
  }

  private touchTimer: NodeJS.Timeout | null = null;

  /** Tokens this instance took sessions over from (by hash): the session's new token, until the resume TTL runs out. */
  readonly movedTokens = new Map<string, { token: string; until: number }>();
  /** Takeovers running here (by the old token's hash): resolve with the new token (null: none). */
  readonly takeoversInFlight = new Map<string, Promise<string | null>>();

  /** The state shared with other instances (null: one instance; set by listen). */
  cluster: ClusterState | null = null;
  readonly log: (line: string) => void;

  /** This instance's id (the prefix of its resume tokens). */
  instanceId: string;

  /** A new resume token: the instance id, a dot, 24 random bytes (base64url). */
  newResumeToken(): string {
    return `${this.instanceId}.${randomBytes(24).toString('base64url')}`;
  }

  /** The API keys (null: open). */
  readonly keys: ApiKeys | null;

  /**
   * Whether a WebSocket upgrade is taken, decided before any WebSocket exists: the path, the
   * Origin, the client address's byte budget, and with API keys the key (401) and its concurrency
   * (429). Both transports ask this (src/gateway/admission.ts).
   */
  admitUpgrade(u: UpgradeRequest): UpgradeDecision {
    return admitUpgrade(this, u);
  }

  /** A transport's new socket on /v1/realtime. */
  connectRealtime(sock: TransportSocket, query: string, tenant: Tenant | null): FrontConnection {
    const conn = new RealtimeConnection(this, sock, { query, tenant });
    this.realtime.add(conn);
    this.metrics.connections.set(this.connections.size + this.realtime.size);
    return conn;
  }

  /** A Realtime connection is gone. */
  forgetRealtime(conn: FrontConnection): void {
    this.realtime.delete(conn);
    this.metrics.connections.set(this.connections.size + this.realtime.size);
  }

  /** Every plain HTTP request of both transports: probes, /metrics, OpenAI routes, the chat page (src/gateway/http-routes.ts). */
  handleHttp(ex: HttpExchange): void {
    this.routes.handle(ex);
  }

  /** Makes the gateway ready: sessions are served by this engine (the caller keeps ownership of it). */
  attach(engine: Engine): void {
    if (!engine.tokenizer) throw new WeftError('WEFT_TOKENIZER', `${engine.dir} has no tokenizer.json: the gateway needs one`);
    this.format = new ChatFormat(engine.tokenizer);
    this.scheduler = new Scheduler(engine, this.options.scheduler);
    this.cluster?.beginHeartbeat();
    this.scheduler.onDelivered = () => {
      for (const c of this.corked) c.uncork();
      this.corked.length = 0;
    };
    this.scheduler.onStep = (st) => {
      this.metrics.stepDuration.observe(st.durationMs / 1000);
      this.metrics.batchSequences.observe(st.sequences);
      this.metrics.batchTokens.observe(st.tokens);
    };
    // a directory's name, or a GGUF file's without its extension (model.Q4_K_M.gguf: model.Q4_K_M)
    this.modelName = basename(engine.dir).replace(/(\.plan)?\.gguf$/i, '');
    this.engine = engine;
    const ms = (v: number | undefined, name: string) => {
      if (v === undefined) return 0;
      if (!Number.isFinite(v) || v < 0) throw new WeftError('WEFT_BAD_ARGUMENT', `${name} must be a non-negative number of ms (got ${v})`);
      return v;
    };
    const budget = this.options.parkedMemoryBytes;
    if (budget !== undefined && (!Number.isFinite(budget) || budget < 0)) throw new WeftError('WEFT_BAD_ARGUMENT', `parkedMemoryBytes must be a non-negative number (got ${budget})`);
    this.kv = new KvLifecycle(engine, () => this.sessions, {
      parkAfterMs: ms(this.options.parkAfterMs, 'parkAfterMs'),
      dropAfterMs: ms(this.options.dropAfterMs, 'dropAfterMs'),
      parkedMemoryBytes: budget ?? Infinity,
    }, Math.min(1000, Math.max(25, (this.options.parkAfterMs || this.options.dropAfterMs || 1000) / 4)));
  }

  limits(): Record<string, number> {
    const st = this.engine!.stats();
    return { max_context: st.maxContext, max_frame_bytes: this.maxFrameBytes, default_max_tokens: this.defaultMaxTokens };
  }

  /** Reads the sessions saved in the state dir (after attach): they can be resumed with their tokens. Returns how many. */
  loadState(): Promise<number> {
    return this.saved.load();
  }

  /** Whether the state dir holds a session for this token that `key` (an API key's name, null without keys) may resume. */
  hasSaved(token: string, key: string | null = null): boolean {
    return this.saved.has(token, key);
  }

  /** A session saved in the state dir for this resume token, made live again (its KV is rebuilt by the next turn), or undefined. */
  restoreSession(token: string, tenant: Tenant | null = null): SessionRunner | undefined {
    return this.saved.restore(token, tenant);
  }

  /** A session made live from its record (the state dir's, or another instance's in Redis). */
  revive(token: string, r: SessionRecord, tenant: Tenant | null): SessionRunner {
    return this.saved.revive(token, r, tenant);
  }

  /** Saves a session to the state dir and Redis, with the answer running now (SavedSessions.persist says when it is a no-op). */
  persist(runner: SessionRunner, running?: { pending: PendingAnswer; conversation: ConversationData }, last?: LastAnswer): Promise<void> {
    return this.saved.persist(runner, running, last);
  }

  /** Forgets a saved session (it ended, or its token was rotated). */
  forgetSaved(token: string | null): void {
    this.saved.forget(token);
  }

  /** Every session runner: connected ones and those waiting for a resume. */
  private *runners(): IterableIterator<SessionRunner> {
    for (const c of this.connections) if (c.runner) yield c.runner;
    yield* this.detached.values();
  }

  /** Connected sessions (those waiting for a resume are not counted). */
  get numLiveSessions(): number {
    return this.sessions.size - this.detached.size;
  }

  /** Sessions waiting for a resume. */
  get numDetachedSessions(): number {
    return this.detached.size;
  }

  /** Keeps a disconnected session for resume until the TTL runs out (then closes it); `address`: the client's, for its cap. */
  detach(token: string, runner: SessionRunner, address: string): void {
    this.detached.add(token, runner, address);
    this.metrics.sessionsDetached.set(this.detached.size);
  }

  hasDetached(token: string): boolean {
    return this.detached.has(token);
  }

  /** The detached session of a resume token, left in the detached set. */
  peekDetached(token: string): SessionRunner | undefined {
    return this.detached.peek(token);
  }

  /** The detached session of a resume token (removed from the detached set), or undefined. */
  takeDetached(token: string): SessionRunner | undefined {
    const d = this.detached.take(token);
    this.metrics.sessionsDetached.set(this.detached.size);
    return d;
  }

  /** Ends a session: a running response is cancelled, the KV freed, its saved state deleted. */
  endSession(runner: SessionRunner): void {
    runner.cancelAll();
    if (!this.closing && !this.draining) this.forgetSaved(runner.resumeToken);
    void runner.session
      .close()
      .catch(() => undefined)
      .finally(() => {
        this.sessions.delete(runner.session);
        this.metrics.sessionsActive.set(this.sessions.size);
      });
  }

  /** A transport's new socket (`resume`: the resume token of the URL, if any). */
  connect(sock: TransportSocket, resume?: { token?: string; lastSeq?: number; responseId?: string }, tenant: Tenant | null = null): Connection {
    const conn = new Connection(this, sock, resume?.token, resume?.lastSeq, resume?.responseId, tenant);
    this.connections.add(conn);
    this.metrics.connections.set(this.connections.size + this.realtime.size);
    return conn;
  }

  async listen(): Promise<{ host: string; port: number; url: string }> {
    const host = this.options.host ?? '127.0.0.1';
    const port = await this.transport.listen(host, this.options.port ?? 8080);
    if (this.options.instanceId === undefined) this.instanceId = defaultInstanceId(port);
    if (this.options.redis && !this.cluster) {
      this.cluster = new ClusterState(this.options.redis, this.instanceId, { log: this.log });
      this.cluster.onReconnect = () => {
        const runners = [...this.runners()].filter((r) => r.resumeToken && !r.busy);
        void Promise.all(runners.map((r) => this.persist(r))).then(() => runners.length > 0 && this.log(`redis: wrote this instance's ${runners.length} sessions again`));
      };
      // connected now; it says it lives once the model is loaded (attach): a loading instance's sessions stay takeable
      this.cluster.connect();
      if (this.scheduler) this.cluster.beginHeartbeat();
      // the records of the sessions held here do not expire while they are held (they are written only per turn)
      const every = Math.max(1000, Math.floor(this.resumeTtlMs / 3));
      this.touchTimer = setInterval(() => {
        const hashes = [...this.runners()].filter((r) => r.resumeToken).map((r) => hashToken(r.resumeToken!));
        if (hashes.length > 0) void this.cluster?.touch(hashes, this.resumeTtlMs);
      }, every);
      this.touchTimer.unref();
      this.metrics.watchCluster(this.cluster);
      if (this.keys) for (const t of this.keys.tenants) t.share(this.cluster);
    }
    this.origins.bind(host, port);
    const h = host.includes(':') ? `[${host}]` : host;
    return { host, port, url: `http://${h}:${port}` };
  }

  /**
   * Shuts down without cutting answers: /readyz turns 503, new connections and new responses are
   * refused (WEFT_DRAINING), running answers get `drainTimeoutMs` to finish and are then ended
   * with finish_reason `shutdown`; every socket is closed with 1001; then `close()`.
   */
  drain(): Promise<void> {
    this.drained ??= (async () => {
      // still listening: /readyz answers 503 and a new connection gets WEFT_DRAINING (not a refused TCP connect)
      this.draining = true;
      const target = this.options.drainTarget?.replace(/\/+$/, '');
      for (const c of this.connections) c.notifyDraining(this.drainTimeoutMs, target ? `${target}${WS_PATH}` : undefined);
      for (const c of this.realtime) c.notifyDraining(this.drainTimeoutMs, undefined);
      const busy = () => [...this.runners()].some((r) => r.busy) || [...this.realtime].some((c) => c.busy) || this.httpBusy();
      const wait = async (ms: number) => {
        const end = performance.now() + ms;
        while (busy() && performance.now() < end) await new Promise((r) => setTimeout(r, 10));
      };
      await wait(this.drainTimeoutMs);
      for (const r of this.runners()) r.cancelForShutdown();
      for (const c of this.realtime) c.cancelForShutdown();
      this.cancelHttpForShutdown();
      await wait(5000); // a cancel takes effect within one step
      // every conversation, as it stands after its last answer, for a restarted weft to resume
      await Promise.all([...this.runners()].map((r) => this.persist(r)));
      await this.store?.flush();
      // several instances: the others may take these sessions over as soon as their clients reconnect
      await this.cluster?.leave();
      for (const c of [...this.connections]) c.closeForShutdown();
      for (const c of [...this.realtime]) c.closeForShutdown();
      await this.close();
    })();
    return this.drained;
  }

  /** Closes every connection (their sessions free their KV), the scheduler and the server; not the engine. */
  async close(): Promise<void> {
    this.closing = true;
    this.kv?.close();
    for (const c of [...this.connections]) c.onClose(true);
    for (const c of [...this.realtime]) c.onClose(true);
    this.detached.clear();
    await Promise.allSettled([...this.sessions].map((s) => s.close()));
    this.openai.close();
    await this.scheduler?.close();
    if (this.touchTimer) clearInterval(this.touchTimer);
    await this.cluster?.close();
    await this.transport.close();
  }
}

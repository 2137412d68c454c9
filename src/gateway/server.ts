/**
 * The gateway: HTTP and WebSocket on one port. `GET /healthz` (process up), `GET /readyz` (model
 * loaded, accepting sessions), `GET /metrics` (Prometheus text), and protocol v1 at `/v1/ws`
 * (docs/protocol.md), through the `ws` transport (node:http + ws) or uWebSockets.js.
 */
import { randomBytes } from 'node:crypto';
import { BlockList, isIP } from 'node:net';
import { hostname } from 'node:os';
import { basename } from 'node:path';
import type { Engine, SamplingOptions } from '../engine/engine.js';
import { Scheduler, type SchedulerOptions } from '../scheduler/scheduler.js';
import { ChatFormat } from '../session/chat-format.js';
import { WeftError } from '../errors.js';
import { ApiKeys, chooseProtocol, presentedKey, type Tenant } from './api-keys.js';
import { ADDRESS_RATE_LIMITED, ORIGIN_REFUSED, resumeParams } from './http-request.js';
import { RealtimeConnection } from './realtime.js';
import { OpenAIHttp } from './openai-http.js';
import type { HttpExchange } from './http-exchange.js';
import { Connection, type FrontConnection, type TransportSocket } from './connection.js';
import { GatewayMetrics } from './metrics.js';
import { OriginPolicy } from './origin.js';
import { AddressRateLimiter, type RateLimits } from './rate-limit.js';
import { ResumePool } from './resume-pool.js';
import { KvLifecycle } from '../session/kv-lifecycle.js';
import { Session } from '../session/session.js';
import { StateStore, hashToken, type SessionRecord } from '../session/state-store.js';
import type { ConversationData } from '../session/conversation.js';
import { ClusterState, type LastAnswer, type PendingAnswer } from '../cluster/redis-state.js';
import { SessionRunner } from './session-runner.js';
import { StaticFiles } from './static.js';
import { WsTransport, WS_PATH, REALTIME_PATH, type Transport } from './transport-ws.js';
import { UwsTransport } from './transport-uws.js';

export interface GatewayOptions {
  host?: string;
  /** 0 picks a free port. Default 8080. */
  port?: number;
  /** Most connected sessions at once (sessions waiting for a resume are counted apart). Default 1024. */
  maxSessions?: number;
  /** Most sessions waiting for a resume; beyond it the oldest is ended. Default: maxSessions. */
  maxDetachedSessions?: number;
  /** Most sessions waiting for a resume from one client address; beyond it that address's oldest is ended. Default 16. */
  maxDetachedPerClient?: number;
  /** Frames per second one connection may send (a burst of twice as many). Default 100. */
  maxFramesPerSecond?: number;
  /** Bytes per second one connection may send (a burst of at least two max-size frames). Default 1 MiB. */
  maxBytesPerSecond?: number;
  /** Bytes per second all connections of one client address may send together (a burst of at least two max-size frames). Default 4 MiB. */
  maxBytesPerSecondPerClient?: number;
  /** A client that sends a frame while the server holds more than this for it, unread, is disconnected (1008). Default 16 MiB. */
  maxBufferedBytes?: number;
  /**
   * Browser origins allowed to open a WebSocket besides the server's own (`*`: any). Clients that
   * send no Origin (non-browser ones) are always allowed. Default: none.
   */
  allowedOrigins?: string[];
  /** Bytes of a response's latest deltas kept for replay after a reconnect; a disconnected response pauses when they fill up. Default 256 KiB. */
  replayBytes?: number;
  /**
   * The server pings every connection this often (ms); one that has not answered by the next ping
   * is closed (its session kept for resume). 0 disables. Default 30000. (uWebSockets.js: its idle
   * timeout, in whole multiples of 4 s, with automatic pings.)
   */
  heartbeatMs?: number;
  /** Park an idle session's KV in host memory after this many ms (0: only under KV pressure). Default 0. */
  parkAfterMs?: number;
  /** Drop an idle session's KV (keep its tokens; the next turn prefills them) after this many ms (0: never by age). Default 0. */
  dropAfterMs?: number;
  /** Most bytes of parked KV; beyond, the least recently active parked sessions are dropped. Default: no limit. */
  parkedMemoryBytes?: number;
  /** Most tokens one session's conversation may hold (below the model's context); the context policy applies. */
  maxSessionTokens?: number;
  /**
   * A directory where sessions are saved (at the end of every turn and at drain) so that a
   * restarted weft resumes them (src/session/state-store.ts). Default: none.
   */
  stateDir?: string;
  /** Where the gateway logs what an operator should see (state files skipped, writes that failed). Default: stderr. */
  log?: (line: string) => void;
  /** How long a drain (SIGTERM) lets running answers finish before ending them, in ms. Default 10000. */
  drainTimeoutMs?: number;
  /** Another instance's base URL (ws:// or wss://) that draining clients are told to resume on. */
  drainTarget?: string;
  /** Largest client frame in bytes. Default 1 MiB. */
  maxFrameBytes?: number;
  /** A session whose socket has more than this many bytes buffered is skipped by the scheduler until it drains. Default 256 KiB. */
  backpressureBytes?: number;
  /** max_tokens when a message does not set one. Default 256. */
  defaultMaxTokens?: number;
  /**
   * How long a disconnected session waits (its KV parked in host memory) for a reconnect with its
   * resume_token, in ms. 0 disables resume: a disconnect frees the session. Default 60000.
   */
  resumeTtlMs?: number;
  /** `ws` (the ws package on node:http, default) or `uws` (uWebSockets.js): same protocol, same port layout. */
  transport?: 'ws' | 'uws';
  /** Server-side sampling defaults of every session (a client's sampling overrides them field by field). */
  sessionSampling?: SamplingOptions;
  /** A message that does not fit the context: `truncate` (drop the oldest turns, the default) or `reject`. Per session in session.update. */
  contextPolicy?: 'truncate' | 'reject';
  scheduler?: SchedulerOptions;
  /** TLS: PEM files of the certificate chain and its private key. HTTPS and wss:// on the same port, both transports. Default: plain HTTP. */
  tls?: { certFile: string; keyFile: string };
  /**
   * API keys (src/gateway/api-keys.ts): a JSON file, or the parsed keys. With keys every route but
   * /healthz and /readyz needs one. Default: none (open; weft says so at start).
   */
  apiKeys?: string | ApiKeys;
  /** Largest HTTP request body (OpenAI-compatible routes) in bytes; over it: 413. Default 4 MiB. */
  maxBodyBytes?: number;
  /**
   * Redis URL (redis:// or rediss://) of the state shared by several instances (docs/scale-out.md):
   * session records, the running answer of each, ownership, API-key budgets. Default: none (one
   * instance).
   */
  redis?: string;
  /**
   * Addresses (or CIDR ranges) of reverse proxies in front of weft (NGINX): for a connection from
   * one, the client's address for per-address limits is the last address of X-Forwarded-For that
   * is not a trusted proxy. Default: none (the peer's address is the client's).
   */
  trustedProxies?: string[];
  /**
   * This instance's id among several behind a proxy (docs/scale-out.md): resume tokens begin with
   * it (`ID.random`), so that the proxy routes a resume to the instance that holds the session.
   * Letters, digits, `_` and `-`, at most 64. Default: the hostname and the port.
   */
  instanceId?: string;
  /**
   * Finished sequences of stateless HTTP requests kept for KV reuse (a follow-up whose prompt
   * extends one reuses its KV). 0 disables. Default 64.
   */
  prefixCacheEntries?: number;
}

const INSTANCE_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** The trusted proxies as a BlockList (WEFT_BAD_ARGUMENT naming an entry that is neither an address nor a CIDR range). */
function trustList(entries: string[]): BlockList {
  const list = new BlockList();
  for (const raw of entries) {
    const e = raw.trim();
    const [addr, bits] = e.split('/', 2) as [string, string | undefined];
    const family = isIP(addr);
    const prefix = bits === undefined ? undefined : Number(bits);
    if (family === 0 || (bits !== undefined && (!/^\d{1,3}$/.test(bits) || prefix! > (family === 4 ? 32 : 128)))) {
      throw new WeftError('WEFT_BAD_ARGUMENT', `trustedProxies: ${JSON.stringify(e)} is not an IP address or a CIDR range (such as 10.0.0.0/8)`);
    }
    const type = family === 4 ? 'ipv4' : 'ipv6';
    if (prefix === undefined) list.addAddress(addr, type);
    else list.addSubnet(addr, prefix, type);
  }
  return list;
}

function isTrusted(list: BlockList, address: string): boolean {
  const a = address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
  const family = isIP(a);
  return family !== 0 && list.check(a, family === 4 ? 'ipv4' : 'ipv6');
}

/** The default instance id: the hostname (its first label, characters outside the id's set as `-`) and the port. */
export function defaultInstanceId(port: number): string {
  const host = (hostname().split('.')[0] ?? '').replace(/[^A-Za-z0-9_-]/g, '-').slice(0, 50) || 'weft';
  return `${host}-${port}`;
}

/** What a transport reads of a WebSocket upgrade request, for `Gateway.admitUpgrade`. */
export interface UpgradeRequest {
  path: string;
  query: string;
  origin: string | undefined;
  authorization: string | undefined;
  /** The Sec-WebSocket-Protocol entries. */
  protocols: string[];
  remoteAddress: string;
}

/** An upgrade refused with an HTTP answer, or accepted with the subprotocol to answer and the connection to open. */
export type UpgradeDecision =
  | { refuse: { status: number; body: string; headers?: Record<string, string> } }
  | { accept: { protocol: string | undefined; open: (sock: TransportSocket) => FrontConnection } };

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
  readonly store: StateStore | null;
  /** Sessions read from the state dir, by token hash, until resumed or expired. */
  private restorable = new Map<string, SessionRecord>();
  readonly origins: OriginPolicy;
  private readonly detached: ResumePool<SessionRunner>;
  readonly transportName: 'ws' | 'uws';
  private readonly transport: Transport;
  private closing = false;
  /** Shutting down: no new connections or responses; running ones finish (drain). */
  draining = false;
  private drained: Promise<void> | null = null;
  /** The chat page and the SDK's browser build (src/gateway/static.ts), read once at startup. */
  private readonly statics = new StaticFiles();

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
    for (const dir of this.statics.missing) log(`the chat page (GET /) is incomplete: ${dir} is missing`);
    this.store = options.stateDir ? new StateStore(options.stateDir, log) : null;
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
    this.trusted = options.trustedProxies && options.trustedProxies.length > 0 ? trustList(options.trustedProxies) : null;
    if (options.instanceId !== undefined && !INSTANCE_ID.test(options.instanceId)) {
      throw new WeftError('WEFT_BAD_ARGUMENT', `instanceId must be 1-64 letters, digits, _ or - (got ${JSON.stringify(String(options.instanceId).slice(0, 80))})`);
    }
    this.instanceId = options.instanceId ?? defaultInstanceId(options.port ?? 8080);
    this.keys = options.apiKeys === undefined ? null : typeof options.apiKeys === 'string' ? ApiKeys.load(options.apiKeys) : options.apiKeys;
    if (this.keys) this.metrics.watchKeys(this.keys.tenants, () => this.scheduler);
    this.maxBodyBytes = pos(options.maxBodyBytes, 'maxBodyBytes', 4 << 20);
    this.openai = new OpenAIHttp(this);
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

  private readonly trusted: BlockList | null;

  /** The client's address: the peer's, or behind a trusted proxy the last untrusted X-Forwarded-For entry. */
  clientAddress(peer: string, forwardedFor: string | undefined): string {
    if (!this.trusted || !forwardedFor || !isTrusted(this.trusted, peer)) return peer;
    const hops = forwardedFor.split(',').map((h) => h.trim()).filter((h) => h !== '');
    for (let i = hops.length - 1; i >= 0; i--) {
      const h = hops[i]!;
      if (isIP(h) === 0) return peer; // not an address: the header was not written by a proxy we trust
      if (!isTrusted(this.trusted, h)) return h;
    }
    return hops[0] ?? peer;
  }

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
   * (429). Both transports ask this.
   */
  admitUpgrade(u: UpgradeRequest): UpgradeDecision {
    const refuse = (status: number, body: string, retryAfterMs?: number): UpgradeDecision => ({
      refuse: { status, body, headers: retryAfterMs === undefined ? undefined : { 'retry-after': String(Math.max(1, Math.ceil(retryAfterMs / 1000))) } },
    });
    if (u.path !== WS_PATH && u.path !== REALTIME_PATH) return refuse(404, 'not found\n');
    if (!this.origins.allows(u.origin)) return refuse(403, ORIGIN_REFUSED);
    const wait = this.addressLimiter.refusesFor(u.remoteAddress);
    if (wait > 0) return refuse(429, ADDRESS_RATE_LIMITED, wait);
    // behind a proxy with other instances, a draining one answers 503 before the upgrade: the proxy tries the next
    if (this.draining && this.cluster) return refuse(503, 'WEFT_DRAINING: this instance is shutting down; another one takes its sessions over\n', 1000);
    let tenant: Tenant | null = null;
    if (this.keys) {
      tenant = this.keys.authenticate(presentedKey(u.authorization, u.protocols));
      if (!tenant) return refuse(401, 'WEFT_UNAUTHORIZED: a valid API key is required (Authorization: Bearer KEY, or the WebSocket subprotocol openai-insecure-api-key.KEY)\n');
      const max = tenant.limits.maxConcurrent;
      if (max !== null && tenant.active >= max) return refuse(429, `WEFT_KEY_CONCURRENCY: the API key "${tenant.name}" holds its maximum of ${max} concurrent sessions and requests\n`, 1000);
    }
    const protocol = chooseProtocol(u.protocols);
    if (u.path === REALTIME_PATH) {
      return { accept: { protocol, open: (sock) => this.connectRealtime(sock, u.query, tenant) } };
    }
    return { accept: { protocol, open: (sock) => this.connect(sock, resumeParams(u.query), tenant) } };
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

  /**
   * Every plain HTTP request of both transports: `/healthz` and `/readyz` (always open), `/metrics`
   * (with API keys: any key, or the file's metrics_key), the OpenAI-compatible routes under `/v1/`
   * (src/gateway/openai-http.ts), and the chat page's static files (public: they hold no data,
   * and the WebSocket they open needs a key).
   */
  handleHttp(ex: HttpExchange): void {
    const text = (status: number, body: string, type = 'text/plain; charset=utf-8', headers: Record<string, string> = {}) =>
      ex.respond(status, { ...headers, 'content-type': type }, ex.method === 'HEAD' ? '' : body);
    const path = ex.path;
    if (path.startsWith('/v1/') && path !== WS_PATH && path !== REALTIME_PATH) return this.openai.handle(ex);
    if (ex.method !== 'GET' && ex.method !== 'HEAD') return text(405, 'method not allowed\n');
    if (path === '/healthz') return text(200, 'ok\n');
    if (path === '/readyz') {
      if (this.closing || this.draining) return text(503, 'draining\n');
      if (!this.scheduler) return text(503, 'loading\n');
      // Redis down: this instance still serves its own sessions (ready), and says what it cannot do
      const redis = this.cluster ? (this.cluster.up ? 'redis: up\n' : 'redis: down (serving this instance\'s sessions; no takeover, no shared budgets)\n') : '';
      return text(200, `ready\n${redis}`);
    }
    if (path === '/metrics') {
      if (this.keys && !this.keys.allowsMetrics(presentedKey(ex.header('authorization')))) {
        return text(401, 'WEFT_UNAUTHORIZED: /metrics needs an API key or the metrics key (Authorization: Bearer KEY)\n', undefined, { 'www-authenticate': 'Bearer' });
      }
      this.metrics.registry.metrics().then(
        (body) => text(200, body, this.metrics.registry.contentType),
        (err: unknown) => text(500, `${(err as Error).message}\n`),
      );
      return;
    }
    if (path === WS_PATH || path === REALTIME_PATH) {
      // with API keys a plain GET says whether the key would pass (a browser sees a refused upgrade only as a close)
      if (this.keys && !this.keys.authenticate(presentedKey(ex.header('authorization')))) return text(401, 'WEFT_UNAUTHORIZED: a valid API key is required\n', undefined, { 'www-authenticate': 'Bearer' });
      return text(426, 'upgrade to WebSocket\n');
    }
    const file = this.statics.get(path);
    if (file) return ex.respond(file.status, { ...file.headers, 'content-type': file.type }, ex.method === 'HEAD' ? '' : file.body);
    return text(404, 'not found\n');
  }

  /** Makes the gateway ready: sessions are served by this engine (the caller keeps ownership of it). */
  attach(engine: Engine): void {
    if (!engine.tokenizer) throw new WeftError('WEFT_TOKENIZER', `${engine.dir} has no tokenizer.json: the gateway needs one`);
    this.format = new ChatFormat(engine.tokenizer);
    this.scheduler = new Scheduler(engine, this.options.scheduler);
    this.scheduler.onDelivered = () => {
      for (const c of this.corked) c.uncork();
      this.corked.length = 0;
    };
    this.scheduler.onStep = (st) => {
      this.metrics.stepDuration.observe(st.durationMs / 1000);
      this.metrics.batchSequences.observe(st.sequences);
      this.metrics.batchTokens.observe(st.tokens);
    };
    this.modelName = basename(engine.dir);
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
  async loadState(): Promise<number> {
    if (!this.store || !this.engine) return 0;
    this.restorable = await this.store.load(this.engine.config.vocabSize);
    return this.restorable.size;
  }

  /** Whether the state dir holds a session for this token that `key` (an API key's name, null without keys) may resume. */
  hasSaved(token: string, key: string | null = null): boolean {
    const r = this.restorable.get(hashToken(token));
    return r !== undefined && (r.key ?? null) === key;
  }

  /** A session saved in the state dir for this resume token, made live again (its KV is rebuilt by the next turn), or undefined. */
  restoreSession(token: string, tenant: Tenant | null = null): SessionRunner | undefined {
    const hash = hashToken(token);
    const r = this.restorable.get(hash);
    if (!r || !this.scheduler || !this.format) return undefined;
    if ((r.key ?? null) !== (tenant?.name ?? null)) return undefined; // another key's session: unknown to this one
    this.restorable.delete(hash);
    if (r.expires_at <= Date.now()) {
      void this.store?.remove(hash);
      return undefined;
    }
    return this.revive(token, r, tenant);
  }

  /** A session made live from its record (the state dir's, or another instance's in Redis). */
  revive(token: string, r: SessionRecord, tenant: Tenant | null): SessionRunner {
    const session = new Session(this.scheduler!, {
      format: this.format!,
      maxTokens: this.defaultMaxTokens,
      sampling: this.options.sessionSampling,
      contextPolicy: r.context_policy,
      maxContextTokens: this.options.maxSessionTokens,
    });
    session.conversation.restore(r.conversation);
    const runner = new SessionRunner(this, session);
    runner.sampling = r.sampling;
    runner.system = r.system ?? undefined;
    runner.resumeToken = token;
    runner.tenant = tenant;
    this.sessions.add(session);
    this.metrics.sessionsActive.set(this.sessions.size);
    return runner;
  }

  /**
   * Saves a session: to the state dir, and to Redis (with the answer running now, `pending`, and
   * the conversation as it was before it, so that another instance can run it again). No-op
   * without either, or without a resume token. A Redis write refused because another instance
   * owns the session now ends it here.
   */
  async persist(runner: SessionRunner, running?: { pending: PendingAnswer; conversation: ConversationData }, last?: LastAnswer): Promise<void> {
    const token = runner.resumeToken;
    if ((!this.store && !this.cluster) || !token) return;
    const record: SessionRecord = {
      weft_session: 1,
      session_id: runner.session.id,
      token_hash: hashToken(token),
      expires_at: Date.now() + this.resumeTtlMs,
      system: runner.system ?? null,
      sampling: { ...runner.sampling },
      context_policy: runner.session.contextPolicy,
      conversation: running?.conversation ?? runner.session.conversation.toJSON(),
      key: runner.tenant?.name ?? null,
    };
    const saved = this.store && !running ? this.store.save(record) : Promise.resolve();
    if (this.cluster) {
      const r = await this.cluster.save({ ...record, pending: running?.pending ?? null, last: last ?? runner.lastAnswer ?? null }, this.resumeTtlMs);
      if (r === 'lost') runner.lost();
    }
    await saved;
  }

  /** Forgets a saved session (it ended, or its token was rotated). */
  forgetSaved(token: string | null): void {
    if (this.store && token) void this.store.remove(hashToken(token));
    if (this.cluster && token) void this.cluster.remove(hashToken(token));
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
      this.cluster.start();
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
    await this.cluster?.close();
    await this.transport.close();
  }
}

/**
 * The gateway: HTTP and WebSocket on one port. `GET /healthz` (process up), `GET /readyz` (model
 * loaded, accepting sessions), `GET /metrics` (Prometheus text), and protocol v1 at `/v1/ws`
 * (docs/protocol.md), through the `ws` transport (node:http + ws) or uWebSockets.js.
 */
import { basename } from 'node:path';
import type { Engine, SamplingOptions } from '../engine/engine.js';
import { Scheduler, type SchedulerOptions } from '../scheduler/scheduler.js';
import { ChatFormat } from '../session/chat-format.js';
import type { Session } from '../session/session.js';
import { WeftError } from '../errors.js';
import { Connection, type TransportSocket } from './connection.js';
import { GatewayMetrics } from './metrics.js';
import type { WireSampling } from './protocol.js';
import { WsTransport, WS_PATH, type Transport } from './transport-ws.js';
import { UwsTransport } from './transport-uws.js';

export interface GatewayOptions {
  host?: string;
  /** 0 picks a free port. Default 8080. */
  port?: number;
  /** Most sessions (connections) at once. Default 1024. */
  maxSessions?: number;
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
  scheduler?: SchedulerOptions;
}

/** A session whose connection is gone, kept for resume. */
export interface DetachedSession {
  session: Session;
  sampling: WireSampling;
  system: string | undefined;
}

export class Gateway {
  engine: Engine | null = null;
  scheduler: Scheduler | null = null;
  format: ChatFormat | null = null;
  modelName = '';
  readonly sessions = new Set<Session>();
  readonly connections = new Set<Connection>();
  /** Connections that corked frames during the delivery of the current step's events. */
  readonly corked: Connection[] = [];
  readonly metrics = new GatewayMetrics(() => this.engine, () => this.scheduler);
  readonly maxSessions: number;
  readonly maxFrameBytes: number;
  readonly backpressureBytes: number;
  readonly defaultMaxTokens: number;
  readonly resumeTtlMs: number;
  private readonly detached = new Map<string, DetachedSession & { timer: NodeJS.Timeout }>();
  readonly transportName: 'ws' | 'uws';
  private readonly transport: Transport;
  private closing = false;

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
    this.transportName = options.transport ?? 'ws';
    if (this.transportName !== 'ws' && this.transportName !== 'uws') throw new WeftError('WEFT_BAD_ARGUMENT', `transport must be ws or uws (got ${String(this.transportName)})`);
    this.transport = this.transportName === 'uws' ? new UwsTransport(this) : new WsTransport(this);
  }

  /** The answer to a plain HTTP request (both transports serve these). */
  async httpResponse(method: string, path: string): Promise<{ status: number; body: string; type: string }> {
    const text = (status: number, body: string, type = 'text/plain; charset=utf-8') => ({ status, body, type });
    if (method.toUpperCase() !== 'GET' && method.toUpperCase() !== 'HEAD') return text(405, 'method not allowed\n');
    if (path === '/healthz') return text(200, 'ok\n');
    if (path === '/readyz') return this.scheduler && !this.closing ? text(200, 'ready\n') : text(503, 'loading\n');
    if (path === '/metrics') {
      try {
        return text(200, await this.metrics.registry.metrics(), this.metrics.registry.contentType);
      } catch (err) {
        return text(500, `${(err as Error).message}\n`);
      }
    }
    if (path === WS_PATH) return text(426, 'upgrade to WebSocket\n');
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
  }

  limits(): Record<string, number> {
    const st = this.engine!.stats();
    return { max_context: st.maxContext, max_frame_bytes: this.maxFrameBytes, default_max_tokens: this.defaultMaxTokens };
  }

  /** Keeps a disconnected session for resume until the TTL runs out (then closes it). */
  detach(token: string, d: DetachedSession): void {
    const timer = setTimeout(() => {
      if (this.detached.get(token)?.session !== d.session) return;
      this.detached.delete(token);
      void this.endSession(d.session);
    }, this.resumeTtlMs);
    timer.unref();
    this.detached.set(token, { ...d, timer });
  }

  /** The detached session of a resume token (removed from the detached set), or undefined. */
  takeDetached(token: string): DetachedSession | undefined {
    const d = this.detached.get(token);
    if (!d) return undefined;
    clearTimeout(d.timer);
    this.detached.delete(token);
    return d;
  }

  private async endSession(session: Session): Promise<void> {
    await session.close().catch(() => undefined);
    this.sessions.delete(session);
    this.metrics.sessionsActive.set(this.sessions.size);
  }

  /** A transport's new socket (`resume`: the resume token of the URL, if any). */
  connect(sock: TransportSocket, resume?: string): Connection {
    const conn = new Connection(this, sock, resume);
    this.connections.add(conn);
    this.metrics.connections.set(this.connections.size);
    return conn;
  }

  async listen(): Promise<{ host: string; port: number; url: string }> {
    const host = this.options.host ?? '127.0.0.1';
    const port = await this.transport.listen(host, this.options.port ?? 8080);
    const h = host.includes(':') ? `[${host}]` : host;
    return { host, port, url: `http://${h}:${port}` };
  }

  /** Closes every connection (their sessions free their KV), the scheduler and the server; not the engine. */
  async close(): Promise<void> {
    this.closing = true;
    for (const c of [...this.connections]) c.onClose(true);
    for (const d of this.detached.values()) clearTimeout(d.timer);
    this.detached.clear();
    await Promise.allSettled([...this.sessions].map((s) => s.close()));
    await this.scheduler?.close();
    await this.transport.close();
  }
}

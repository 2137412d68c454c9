/**
 * The gateway's options (`new Gateway(options)`, the CLI's flags: src/cli/args.ts): each with its
 * meaning and default. The Gateway checks them when it is made (WEFT_BAD_ARGUMENT).
 */
import type { SamplingOptions } from '../engine/engine.js';
import type { SchedulerOptions } from '../scheduler/scheduler.js';
import type { ApiKeys } from './api-keys.js';

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
  /**
   * Most tokens of KV those entries hold together (resident or parked in host memory); beyond,
   * the least recently used are freed. Default 65536.
   */
  prefixCacheTokens?: number;
}

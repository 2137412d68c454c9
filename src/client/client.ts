/**
 * weft's client for protocol v1.1 (docs/client.md), for any WHATWG WebSocket: browsers, Node 22's
 * global, or the `ws` package (src/client/node.ts). No Node-only import: this file is served to
 * browsers as it is compiled.
 *
 * A session that survives the network: when the connection drops, the client reconnects with its
 * resume token and the last `seq` it delivered, and the answer goes on where it stopped (the
 * server replays what was missed; a delta seen twice is dropped, a gap is filled from the text the
 * server sends). Responses are pulled: a consumer that stops reading stops the socket's reading
 * (where the WebSocket can pause: the `ws` package), so the server's backpressure reaches back to
 * the engine.
 */
import type { BudgetInfo, ClientEvent, ResponseDoneEvent, ServerEvent, SessionInfo, WireSampling } from './protocol.js';

/** A failure with weft's code: the server's (`WEFT_*` from its catalog) or the client's own. */
export class WeftError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
    this.name = 'WeftError';
  }
}

/** The WebSocket surface the client uses. */
export interface WebSocketLike {
  readonly readyState: number;
  send(data: string): void;
  close(code?: number, reason?: string): void;
  onopen: ((ev: unknown) => void) | null;
  onmessage: ((ev: { data: unknown }) => void) | null;
  onclose: ((ev: { code: number; reason?: string }) => void) | null;
  onerror: ((ev: unknown) => void) | null;
}
export type WebSocketConstructor = new (url: string, protocols?: string | string[]) => WebSocketLike;

/** The subprotocol entry that carries an API key (browsers cannot set an Authorization header on a WebSocket). */
const KEY_PROTOCOL_PREFIX = 'openai-insecure-api-key.';

export interface ConnectOptions {
  /** The WebSocket class (default: the global one). */
  WebSocket?: WebSocketConstructor;
  /**
   * The API key of a server run with --api-keys: sent at every (re)connect as the subprotocol
   * entry `openai-insecure-api-key.KEY` (what browsers can send). A refused key fails connect
   * with WEFT_UNAUTHORIZED where the server's answer is visible (Node), else WEFT_CONNECTION_LOST.
   * The key's limits and remaining budget are in `session.budget`.
   */
  apiKey?: string;
  /** Take up an existing session (its resume token) instead of creating one. */
  resumeToken?: string;
  /** Reconnects after a lost connection: attempts and backoff. Default 8 attempts, 100 ms doubling to 5 s. */
  reconnect?: { attempts?: number; minDelayMs?: number; maxDelayMs?: number };
  /** How long to wait for the server's first event. Default 10 s. */
  timeoutMs?: number;
  /**
   * Where the WebSocket can ping (the `ws` package in Node): a ping every `heartbeatMs` (default
   * 15 s; 0: none), and a connection whose pong has not come by the next ping is taken as dead:
   * closed and resumed. (Browsers cannot ping; there the server's heartbeat closes a dead socket.)
   */
  heartbeatMs?: number;
  /** Called for what the client ignores or survives: a frame that is not JSON, a reconnect. */
  onEvent?: (ev: ClientNotice) => void;
}

export type ClientNotice =
  | { type: 'ignored'; reason: string; data: string }
  | { type: 'reconnecting'; attempt: number; delayMs: number }
  | { type: 'reconnected'; resumed: boolean }
  | { type: 'lost'; error: WeftError }
  | { type: 'draining'; retryAfterMs: number; resumeUrl?: string }
  | { type: 'progress'; event: Extract<ServerEvent, { type: 'response.progress' }> };

export interface ResponseDone {
  id: string;
  finishReason: ResponseDoneEvent['finish_reason'];
  text: string;
  usage?: ResponseDoneEvent['usage'];
  timing?: ResponseDoneEvent['timing'];
  event: ResponseDoneEvent;
}

export interface SendOptions {
  sampling?: WireSampling;
  /** Aborting cancels the response (response.cancel). */
  signal?: AbortSignal;
}

/** Chunks buffered in a response before the client stops reading the socket. */
const HIGH_WATER = 64;

/** One answer: iterate it for text chunks, or await `text()` / `done`. */
export class WeftResponse implements AsyncIterable<string> {
  id: string | null = null;
  /** The last delta seq delivered (a reconnect resumes after it). */
  lastSeq = -1;
  private textSoFar = '';
  private readonly chunks: string[] = [];
  private wake: (() => void) | null = null;
  private ended = false;
  /** Someone iterates: only then does a full buffer pause the socket (text() and done never block it). */
  private iterating = false;
  private failure: WeftError | null = null;
  readonly done: Promise<ResponseDone>;
  private settle!: { resolve: (d: ResponseDone) => void; reject: (e: WeftError) => void };

  /** @internal */
  constructor(
    /** @internal */ readonly eventId: string,
    private readonly client: WeftClient,
  ) {
    this.done = new Promise((resolve, reject) => (this.settle = { resolve, reject }));
    this.done.catch(() => undefined); // a caller that never awaits it does not get an unhandled rejection
  }

  /** Whether the response has ended (done or failed). */
  get finished(): boolean {
    return this.ended;
  }

  /** The whole answer once it ended. */
  async text(): Promise<string> {
    return (await this.done).text;
  }

  /** Cancels the response; `truncateAtSeq`: what the user was shown (barge-in). */
  cancel(truncateAtSeq?: number): void {
    if (this.ended) return;
    this.client.sendEvent({ type: 'response.cancel', ...(truncateAtSeq === undefined ? {} : { truncate_at_seq: truncateAtSeq }) });
  }

  async *[Symbol.asyncIterator](): AsyncIterator<string> {
    this.iterating = true;
    for (;;) {
      if (this.chunks.length > 0) {
        const chunk = this.chunks.shift()!;
        if (this.chunks.length < HIGH_WATER / 2) this.client.flow(true);
        yield chunk;
        continue;
      }
      if (this.failure) throw this.failure;
      if (this.ended) return;
      await new Promise<void>((r) => (this.wake = r));
    }
  }

  /** @internal A delta: dropped when seen before (a replay), else delivered. */
  onDelta(seq: number, text: string): void {
    if (seq <= this.lastSeq || this.ended) return;
    this.lastSeq = seq;
    this.push(text);
  }

  /** @internal The server no longer held the deltas after lastSeq: the text so far fills the gap. */
  onGap(text: string, nextSeq: number): void {
    if (text.startsWith(this.textSoFar)) this.push(text.slice(this.textSoFar.length));
    this.lastSeq = nextSeq - 1;
  }

  private push(text: string): void {
    this.textSoFar += text;
    if (text === '') return;
    this.chunks.push(text);
    if (this.iterating && this.chunks.length >= HIGH_WATER) this.client.flow(false);
    this.wake?.();
  }

  /** @internal */
  onDone(ev: ResponseDoneEvent): void {
    if (this.ended) return;
    this.ended = true;
    this.client.flow(true);
    if (ev.finish_reason === 'error' && ev.error) this.fail(new WeftError(ev.error.code, ev.error.message));
    else this.settle.resolve({ id: ev.response_id, finishReason: ev.finish_reason, text: ev.text ?? this.textSoFar, usage: ev.usage, timing: ev.timing, event: ev });
    this.wake?.();
  }

  /** @internal */
  fail(err: WeftError): void {
    this.ended = true;
    this.failure = err;
    this.settle.reject(err);
    this.wake?.();
  }
}

let nextEventId = 1;

/** What a reconnect attempt may fail with and still be followed by the next one (anything else, WEFT_UNAUTHORIZED among them, ends them). */
const RETRIED = new Set([
  'WEFT_CONNECTION_LOST', 'WEFT_SESSION_CONNECTED', 'WEFT_TIMEOUT', 'WEFT_TOO_MANY_SESSIONS', 'WEFT_DRAINING',
  // HTTP 429 at the handshake, or the key's concurrency as an error event (two handshakes that raced)
  'WEFT_RATE_LIMITED', 'WEFT_KEY_CONCURRENCY',
]);

export class WeftClient {
  /** The WebSocket class when connect() is given none (set to the `ws` package by the Node entry). */
  static defaultWebSocket: WebSocketConstructor | undefined = (globalThis as { WebSocket?: WebSocketConstructor }).WebSocket;
  /** `budget`: the API key's limits and use when the session was created (a server run with --api-keys). */
  session!: SessionInfo & { resumeToken: string | null; budget?: BudgetInfo };
  private ws!: WebSocketLike;
  private readonly WS: WebSocketConstructor;
  private current: WeftResponse | null = null;
  private readonly pending = new Map<string, { resolve: (ev: ServerEvent) => void; reject: (e: WeftError) => void }>();
  private closing = false;
  private paused = false;
  /** Events sent while reconnecting: sent once the session is back. */
  private outbox: string[] = [];
  private heartbeat: ReturnType<typeof setInterval> | null = null;

  private constructor(
    private readonly url: string,
    private readonly opts: ConnectOptions,
  ) {
    const WS = opts.WebSocket ?? WeftClient.defaultWebSocket;
    if (!WS) throw new WeftError('WEFT_BAD_ARGUMENT', 'no WebSocket class: pass { WebSocket } (in Node 20, import from weft/client/node)');
    this.WS = WS;
  }

  /** Opens a session (or resumes `opts.resumeToken`'s) on `url` (ws://HOST:PORT/v1/ws). */
  static async connect(url: string, opts: ConnectOptions = {}): Promise<WeftClient> {
    const c = new WeftClient(url, opts);
    await c.open(opts.resumeToken);
    return c;
  }

  /** Updates the session: system prompt, sampling defaults, context policy, progress events. */
  update(s: { system?: string; sampling?: WireSampling; contextPolicy?: 'truncate' | 'reject'; progress?: boolean }): Promise<Extract<ServerEvent, { type: 'session.updated' }>> {
    const session: Record<string, unknown> = {};
    if (s.system !== undefined) session.system = s.system;
    if (s.sampling !== undefined) session.sampling = s.sampling;
    if (s.contextPolicy !== undefined) session.context_policy = s.contextPolicy;
    if (s.progress !== undefined) session.progress = s.progress;
    return this.request({ type: 'session.update', session }) as Promise<Extract<ServerEvent, { type: 'session.updated' }>>;
  }

  /** Sends a user message; the answer streams from the returned response. */
  send(content: string, opts: SendOptions = {}): WeftResponse {
    const eventId = `c${nextEventId++}`;
    const r = new WeftResponse(eventId, this);
    if (this.current && !this.current.finished) {
      r.fail(new WeftError('WEFT_RESPONSE_IN_PROGRESS', 'a response is already running in this session'));
      return r;
    }
    this.current = r;
    if (opts.signal) {
      if (opts.signal.aborted) queueMicrotask(() => r.cancel());
      else opts.signal.addEventListener('abort', () => r.cancel(), { once: true });
    }
    this.sendEvent({ type: 'message.create', content, ...(opts.sampling ? { sampling: opts.sampling } : {}), event_id: eventId });
    return r;
  }

  /** Ends the session (its KV is freed on the server) and the connection. */
  async close(): Promise<void> {
    if (this.closing) return;
    this.closing = true;
    if (this.ws.readyState === 1) {
      const closed = new Promise<void>((r) => {
        const prev = this.ws.onclose;
        this.ws.onclose = (ev) => {
          prev?.(ev);
          r();
        };
      });
      this.ws.send(JSON.stringify({ type: 'session.close' }));
      await Promise.race([closed, new Promise((r) => setTimeout(r, 2000))]);
    }
    this.ws.close();
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.current?.fail(new WeftError('WEFT_DISPOSED', 'the client was closed'));
  }

  /** @internal Sends an event now, or (while reconnecting) once the session is back. */
  sendEvent(ev: ClientEvent): void {
    const text = JSON.stringify(ev);
    if (this.ws.readyState === 1 && this.outbox.length === 0) this.ws.send(text);
    else if (!this.closing) this.outbox.push(text);
  }

  /** @internal Stops or resumes reading the socket (the `ws` package's pause/resume; a no-op elsewhere). */
  flow(on: boolean): void {
    if (this.paused === !on) return;
    this.paused = !on;
    const ws = this.ws as unknown as { pause?: () => void; resume?: () => void };
    if (on) ws.resume?.();
    else ws.pause?.();
  }

  private request(ev: ClientEvent & { event_id?: string }): Promise<ServerEvent> {
    const eventId = `c${nextEventId++}`;
    return new Promise<ServerEvent>((resolve, reject) => {
      this.pending.set(eventId, { resolve, reject });
      this.sendEvent({ ...ev, event_id: eventId });
    });
  }

  /** Connects (or reconnects with `resume`) and waits for the server's first event. */
  private open(resume?: string): Promise<void> {
    const last = this.current && !this.current.finished ? this.current : null;
    const u = new URL(this.url);
    if (resume) {
      u.searchParams.set('resume', resume);
      if (last?.id) {
        u.searchParams.set('last_seq', String(last.lastSeq));
        u.searchParams.set('response_id', last.id);
      }
    }
    const key = this.opts.apiKey;
    const ws = key ? new this.WS(u.toString(), [KEY_PROTOCOL_PREFIX + key]) : new this.WS(u.toString());
    this.ws = ws;
    this.paused = false;
    return new Promise<void>((resolve, reject) => {
      let first = true;
      const timer = setTimeout(() => {
        if (!first) return;
        first = false;
        ws.close();
        reject(new WeftError('WEFT_TIMEOUT', `no answer from ${this.url} within ${this.opts.timeoutMs ?? 10_000} ms`));
      }, this.opts.timeoutMs ?? 10_000);
      ws.onmessage = (m) => {
        const ev = this.parse(m.data);
        if (!ev) return;
        if (first) {
          if (ev.type === 'session.created' || ev.type === 'session.resumed') {
            first = false;
            clearTimeout(timer);
            // session.resumed carries no budget: the one of session.created is kept
            const budget = ev.type === 'session.created' ? ev.budget : this.session?.budget;
            this.session = { ...ev.session, resumeToken: ev.resume_token ?? resume ?? null, ...(budget ? { budget } : {}) };
            this.startHeartbeat(ws);
            resolve();
          } else if (ev.type === 'error' && ev.code !== 'WEFT_RESUME_UNKNOWN') {
            first = false;
            clearTimeout(timer);
            reject(new WeftError(ev.code, ev.message));
            return;
          }
          if (ev.type === 'error') {
            // the session is gone: a fresh one follows; a response that was running is lost
            this.current?.fail(new WeftError(ev.code, ev.message));
            return;
          }
        }
        this.dispatch(ev);
      };
      // the close event follows; where the error says why the handshake failed (Node's ws: the HTTP status), keep it
      let refusal = '';
      ws.onerror = (ev) => {
        const m = /Unexpected server response: (\d+)/.exec(String((ev as { message?: unknown })?.message ?? ''));
        if (m) refusal = m[1]!;
      };
      ws.onclose = (ev) => {
        clearTimeout(timer);
        if (this.heartbeat) clearInterval(this.heartbeat);
        if (first) {
          first = false;
          if (refusal === '401') return reject(new WeftError('WEFT_UNAUTHORIZED', `${this.url} refused the API key (HTTP 401)`));
          // 429 is either the key's max_concurrent (WEFT_KEY_CONCURRENCY) or the address's byte rate: the status cannot tell which
          if (refusal === '429') return reject(new WeftError('WEFT_RATE_LIMITED', `${this.url} refused the connection for now (HTTP 429): the API key holds its max_concurrent sessions and requests, or this address is over its byte rate`));
          reject(new WeftError('WEFT_CONNECTION_LOST', `the connection to ${this.url} closed before the session started (${refusal ? `HTTP ${refusal}` : ev.code})`));
          return;
        }
        if (!this.closing) void this.reconnect();
      };
    });
  }

  /** Pings where the WebSocket can (the ws package); no pong by the next ping: the connection is dead. */
  private startHeartbeat(ws: WebSocketLike): void {
    const pinger = ws as unknown as { ping?: () => void; on?: (ev: 'pong', cb: () => void) => void; terminate?: () => void };
    const every = this.opts.heartbeatMs ?? 15_000;
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (every <= 0 || typeof pinger.ping !== 'function' || typeof pinger.on !== 'function') return;
    let answered = true;
    pinger.on('pong', () => (answered = true));
    this.heartbeat = setInterval(() => {
      if (ws.readyState !== 1) return;
      if (!answered) {
        // a dead connection: its close starts the reconnect
        if (pinger.terminate) pinger.terminate();
        else ws.close();
        return;
      }
      answered = false;
      pinger.ping!();
    }, every);
    (this.heartbeat as { unref?: () => void }).unref?.();
  }

  /** After a lost connection: reconnect with the resume token, backing off; a running response goes on. */
  private async reconnect(): Promise<void> {
    const token = this.session?.resumeToken;
    const { attempts = 8, minDelayMs = 100, maxDelayMs = 5000 } = this.opts.reconnect ?? {};
    for (let attempt = 1; token && attempt <= attempts && !this.closing; attempt++) {
      const delayMs = Math.min(maxDelayMs, minDelayMs * 2 ** (attempt - 1));
      this.opts.onEvent?.({ type: 'reconnecting', attempt, delayMs });
      await new Promise((r) => setTimeout(r, delayMs));
      try {
        const before = this.session.id;
        await this.open(token);
        this.opts.onEvent?.({ type: 'reconnected', resumed: this.session.id === before });
        const queued = this.outbox.splice(0);
        for (const text of queued) this.ws.send(text);
        return;
      } catch (err) {
        // a 429 is retried: a key at max_concurrent may be held by this client's old socket, not yet seen closed
        if (!RETRIED.has((err as WeftError).code)) return this.lost(err as WeftError);
      }
    }
    this.lost(new WeftError('WEFT_CONNECTION_LOST', `the connection was lost and ${attempts} reconnects failed`));
  }

  private lost(err: WeftError): void {
    this.outbox.length = 0;
    this.opts.onEvent?.({ type: 'lost', error: err });
    this.current?.fail(err);
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
  }

  /** A frame that is not a JSON object with a type is ignored (and reported to onEvent). */
  private parse(data: unknown): ServerEvent | null {
    const text = typeof data === 'string' ? data : String(data);
    try {
      const ev = JSON.parse(text) as ServerEvent;
      if (typeof ev === 'object' && ev !== null && typeof ev.type === 'string') return ev;
    } catch {
      /* reported below */
    }
    this.opts.onEvent?.({ type: 'ignored', reason: 'not a JSON event', data: text.slice(0, 200) });
    return null;
  }

  private dispatch(ev: ServerEvent): void {
    const r = this.current;
    switch (ev.type) {
      case 'response.created':
        if (r && ev.event_id === r.eventId) r.id = ev.response_id;
        return;
      case 'response.delta':
        if (r && ev.response_id === r.id) r.onDelta(ev.seq, ev.text);
        return;
      case 'response.done':
        if (r && ev.response_id === r.id) r.onDone(ev);
        return;
      case 'response.progress':
        this.opts.onEvent?.({ type: 'progress', event: ev });
        return;
      case 'session.draining':
        this.opts.onEvent?.({ type: 'draining', retryAfterMs: ev.retry_after_ms, resumeUrl: ev.resume_url });
        return;
      case 'error': {
        if (ev.code === 'WEFT_REPLAY_GAP' && r && ev.response_id === r.id && typeof ev.text === 'string') return r.onGap(ev.text, ev.next_seq ?? r.lastSeq + 1);
        const p = ev.event_id ? this.pending.get(ev.event_id) : undefined;
        if (p) {
          this.pending.delete(ev.event_id!);
          return p.reject(new WeftError(ev.code, ev.message));
        }
        if (r && ev.event_id === r.eventId) r.fail(new WeftError(ev.code, ev.message));
        return;
      }
      default: {
        const id = (ev as { event_id?: string }).event_id;
        const p = id ? this.pending.get(id) : undefined;
        if (p) {
          this.pending.delete(id!);
          p.resolve(ev);
        }
        if (ev.type === 'session.updated' && ev.resume_token) this.session.resumeToken = ev.resume_token;
        // other event types (newer servers) are ignored
      }
    }
  }
}

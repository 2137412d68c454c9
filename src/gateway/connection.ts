/**
 * One client connection speaking protocol v1 (docs/protocol.md) over any transport: it owns one
 * Session (its transcript and KV) and runs at most one response at a time. When the transport
 * closes, a running response is cancelled and the session's KV pages are returned to the pool at
 * once: with resume enabled the KV is parked in host memory and the session waits for a
 * reconnect with its resume_token until the TTL runs out; otherwise the session is freed.
 */
import { randomBytes } from 'node:crypto';
import { toWeftError, type WeftErrorCode } from '../errors.js';
import { Session, type Turn, type TurnDone } from '../session/session.js';
import type { Gateway } from './server.js';
import { ProtocolError, parseClientFrame, toTurnSampling, type ClientEvent, type WireSampling } from './protocol.js';
import { ConnectionRateLimiter } from './rate-limit.js';

/**
 * What a transport gives a connection. The transport calls `Connection.onDrain()` whenever
 * queued bytes have been written out (after a send that had to wait, at the latest).
 */
export interface TransportSocket {
  /** Sends one text frame. */
  send(text: string): void;
  /** Holds the frames sent until `uncork()`, which writes them out together. */
  cork(): void;
  uncork(): void;
  /** Bytes queued and not yet written out. */
  readonly bufferedAmount: number;
  close(code?: number, reason?: string): void;
  /**
   * Stops reading the client's frames for `ms` (TCP then pushes back on the client). Optional:
   * uWebSockets.js' WebSocket cannot pause reading; there a client that keeps sending over its
   * limit is disconnected instead.
   */
  pauseReading?(ms: number): void;
  /** The client's IP address as the transport saw it ('' when unknown). */
  readonly remoteAddress: string;
}

let nextResponseId = 1;

export class Connection {
  session: Session | null = null;
  private sampling: WireSampling = {};
  private system: string | undefined;
  private running: { id: string; turn: Turn; cancelEventId?: string; shutdown?: boolean } | null = null;
  /** A message.create being tokenized (sendAsync): at most one per connection. */
  private preparing: { abort: AbortController; cancelled: boolean; cancelEventId?: string } | null = null;
  private closed = false;
  private readonly limiter: ConnectionRateLimiter;
  private pausedUntil = 0;
  /** Frames, and their bytes, dropped by the rate limiter since the last one taken. */
  private numDropped = 0;
  private droppedBytes = 0;
  private blocked = false;
  private corked = false;
  private resumeToken: string | null = null;
  /** `{"type":"response.delta","response_id":"…","seq":` of the running response. */
  private deltaPrefix = '';
  private lastDeltaAt = 0;

  constructor(
    private readonly gw: Gateway,
    private readonly sock: TransportSocket,
    private readonly resume?: string,
  ) {
    this.limiter = new ConnectionRateLimiter(gw.rateLimits);
  }

  /** Whether a response is running or being prepared. */
  get busy(): boolean {
    return this.running !== null || this.preparing !== null;
  }

  /** The server shuts down: a running response ends now with finish_reason `shutdown`. */
  cancelForShutdown(): void {
    if (this.running) {
      this.running.shutdown = true;
      this.running.turn.cancel();
    }
    this.preparing?.abort.abort();
  }

  /** Closes the socket (the session is ended, not kept for resume). */
  closeForShutdown(): void {
    if (this.closed) return;
    this.onClose(true);
    this.sock.close(1001, 'server shutting down');
  }

  /** Bytes the transport holds for this client, not yet written out (backpressure, tests). */
  get bufferedAmount(): number {
    return this.sock.bufferedAmount;
  }

  /** Called by the transport once the WebSocket is open. Never throws. */
  open(): void {
    try {
      this.start();
    } catch (err) {
      const e = toWeftError(err);
      this.refuse(e.code, e.message);
    }
  }

  private start(): void {
    const scheduler = this.gw.scheduler;
    if (!scheduler || !this.gw.format) return this.refuse('WEFT_NOT_READY', 'the model is still loading; retry when GET /readyz is 200');
    if (this.gw.draining) return this.refuse('WEFT_DRAINING', 'the server is shutting down; connect to another instance or retry later');
    const full = this.gw.numLiveSessions >= this.gw.maxSessions;
    if (this.resume !== undefined && this.gw.hasDetached(this.resume)) {
      if (full) return this.refuse('WEFT_TOO_MANY_SESSIONS', `the gateway serves its maximum of ${this.gw.maxSessions} connected sessions; the session stays resumable`);
      const d = this.gw.takeDetached(this.resume)!;
      this.session = d.session;
      this.sampling = d.sampling;
      this.system = d.system;
      this.resumeToken = this.resume;
      return this.send({ type: 'session.resumed', session: { id: d.session.id, model: this.gw.modelName, limits: this.gw.limits() }, resume_token: this.resume });
    }
    if (this.resume !== undefined) this.error('WEFT_RESUME_UNKNOWN', 'the resume token is unknown or expired; a new session follows');
    if (full) return this.refuse('WEFT_TOO_MANY_SESSIONS', `the gateway serves its maximum of ${this.gw.maxSessions} connected sessions`);
    const session = new Session(scheduler, { format: this.gw.format, maxTokens: this.gw.defaultMaxTokens, sampling: this.gw.options.sessionSampling, contextPolicy: this.gw.options.contextPolicy });
    this.session = session;
    this.gw.sessions.add(session);
    this.gw.metrics.sessionsActive.set(this.gw.sessions.size);
    this.resumeToken = this.gw.resumeTtlMs > 0 ? randomBytes(24).toString('base64url') : null;
    this.send({
      type: 'session.created',
      session: { id: session.id, model: this.gw.modelName, limits: this.gw.limits() },
      resume_token: this.resumeToken,
    });
  }

  /** Called by the transport for every frame. Never throws. */
  onMessage(data: Buffer | string, isBinary: boolean): void {
    if (this.closed) return;
    if (this.sock.bufferedAmount > this.gw.maxBufferedBytes) {
      // it sends while it does not read what it is sent: the answers would pile up here without bound
      this.error('WEFT_RATE_LIMITED', `the client does not read its answers (${this.sock.bufferedAmount} bytes waiting for it); the connection is closed`);
      this.onClose();
      this.sock.close(1008, 'WEFT_RATE_LIMITED');
      return;
    }
    const size = typeof data === 'string' ? Buffer.byteLength(data) : data.length;
    const wait = this.limiter.admit(size);
    if (wait > 0) return this.rateLimited(wait, size);
    this.numDropped = 0;
    this.droppedBytes = 0;
    const ev = parseClientFrame(data, isBinary, this.gw.maxFrameBytes);
    if (ev instanceof ProtocolError) return this.error(ev.code, ev.message, ev.event_id);
    try {
      this.handle(ev);
    } catch (err) {
      const e = toWeftError(err);
      this.error(e.code, e.message, ev.event_id);
    }
  }

  /** A frame over the connection's rate: answered without being parsed, and the socket is not read until the budget is back. */
  private rateLimited(waitMs: number, size: number): void {
    this.gw.metrics.errors.inc({ code: 'WEFT_RATE_LIMITED' });
    this.droppedBytes += size;
    if (++this.numDropped > this.gw.rateLimits.frameBurst || this.droppedBytes > this.gw.rateLimits.byteBurst) {
      // it keeps sending without heeding retry_after_ms (a transport that cannot pause reading)
      this.error('WEFT_RATE_LIMITED', 'the client keeps sending over its rate limit; the connection is closed');
      this.onClose();
      this.sock.close(1008, 'WEFT_RATE_LIMITED');
      return;
    }
    this.sendText(`{"type":"error","code":"WEFT_RATE_LIMITED","message":"too many frames or bytes per second on this connection; the frame was dropped","retry_after_ms":${waitMs}}`);
    const now = performance.now();
    if (this.sock.pauseReading && now + waitMs > this.pausedUntil) {
      this.pausedUntil = now + waitMs;
      this.sock.pauseReading(waitMs);
    }
  }

  /**
   * Called by the transport when the socket is gone (either side). Cancels a running response; the
   * session is detached for resume (its KV parked) or, with `end` or resume disabled, closed.
   */
  onClose(end = false): void {
    if (this.closed) return;
    this.closed = true;
    this.gw.connections.delete(this);
    this.gw.metrics.connections.set(this.gw.connections.size);
    const running = this.running;
    running?.turn.cancel();
    this.preparing?.abort.abort();
    const session = this.session;
    if (session && this.resumeToken && !end && this.gw.resumeTtlMs > 0 && !this.gw.draining) {
      this.gw.detach(this.resumeToken, { session, sampling: this.sampling, system: this.system }, this.sock.remoteAddress);
      void (running ? running.turn.done : Promise.resolve()).then(() => session.park()).catch(() => undefined);
      return;
    }
    if (session) {
      void session
        .close()
        .catch(() => undefined)
        .finally(() => {
          this.gw.sessions.delete(session);
          this.gw.metrics.sessionsActive.set(this.gw.sessions.size);
        });
    }
  }

  private handle(ev: ClientEvent): void {
    const session = this.session!;
    switch (ev.type) {
      case 'session.update': {
        if (this.running || this.preparing) return this.error('WEFT_RESPONSE_IN_PROGRESS', 'session.update while a response is running', ev.event_id);
        if (ev.session.sampling) this.sampling = { ...this.sampling, ...ev.session.sampling };
        if (ev.session.system !== undefined) {
          this.system = ev.session.system || undefined;
          session.setSystem(this.system);
        }
        if (ev.session.context_policy !== undefined) session.contextPolicy = ev.session.context_policy;
        return this.send(withId({ type: 'session.updated', session: { id: session.id, system: this.system ?? null, sampling: this.sampling, context_policy: session.contextPolicy } }, ev.event_id));
      }
      case 'message.create':
        return this.create(session, ev);
      case 'response.cancel':
        if (this.preparing && !this.preparing.cancelled) {
          // the message is still being tokenized: its response is created and cancelled at once
          this.preparing.cancelled = true;
          this.preparing.cancelEventId = ev.event_id;
          return;
        }
        if (!this.running) return this.error('WEFT_NO_RESPONSE', 'no response is running', ev.event_id);
        this.running.cancelEventId = ev.event_id;
        this.running.turn.cancel();
        return;
      case 'session.close':
        this.send(withId({ type: 'session.closed', session: { id: session.id } }, ev.event_id));
        // ended before the socket closes: some transports report the close synchronously, and a
        // close without session.close would keep the session for resume
        this.onClose(true);
        this.sock.close(1000, 'session.close');
        return;
    }
  }

  private create(session: Session, ev: Extract<ClientEvent, { type: 'message.create' }>): void {
    if (this.running || this.preparing) return this.error('WEFT_RESPONSE_IN_PROGRESS', 'a response is already running in this session (wait for response.done or send response.cancel)', ev.event_id);
    if (this.gw.draining) return this.error('WEFT_DRAINING', 'the server is shutting down and starts no new responses', ev.event_id);
    const opts = toTurnSampling({ ...this.sampling, ...ev.sampling });
    const threshold = this.gw.backpressureBytes;
    const preparing = (this.preparing = { abort: new AbortController(), cancelled: false as boolean, cancelEventId: undefined as string | undefined });
    session
      .sendAsync(ev.content, {
        sampling: opts.sampling,
        maxTokens: opts.maxTokens,
        stop: opts.stop,
        isBlocked: () => (this.blocked = this.sock.bufferedAmount > threshold),
        signal: preparing.abort.signal,
      })
      .then(
        (turn) => {
          this.preparing = null;
          this.started(turn, ev.event_id, preparing.cancelled ? preparing.cancelEventId ?? null : undefined);
        },
        (err) => {
          this.preparing = null;
          const e = toWeftError(err);
          if (!this.closed) this.error(e.code, e.message, ev.event_id);
        },
      );
  }

  /** A turn was submitted: response.created, then its events. `cancelId`: a cancel came while it was being prepared. */
  private started(turn: Turn, eventId: string | undefined, cancelId: string | null | undefined): void {
    const id = `resp_${nextResponseId++}`;
    this.running = { id, turn };
    this.send(withId({ type: 'response.created', response_id: id }, eventId));
    this.deltaPrefix = `{"type":"response.delta","response_id":${JSON.stringify(id)},"seq":`;
    this.lastDeltaAt = 0;
    turn.listen({
      delta: (seq, text) => this.delta(seq, text),
      done: (done) => this.done(id, done),
      fail: (err) => {
        const e = toWeftError(err);
        this.running = null;
        this.send({ type: 'response.done', response_id: id, finish_reason: 'error', error: { code: e.code, message: e.message } });
        this.gw.metrics.errors.inc({ code: e.code });
      },
    });
    if (cancelId !== undefined) {
      this.running.cancelEventId = cancelId ?? undefined;
      turn.cancel();
    }
    if (this.closed) turn.cancel();
  }

  /** One token's frame, built without an object or a JSON.stringify of the whole event. */
  private delta(seq: number, text: string): void {
    const now = performance.now();
    if (this.lastDeltaAt > 0) this.gw.metrics.interToken.observe((now - this.lastDeltaAt) / 1000);
    this.lastDeltaAt = now;
    this.sendText(this.deltaPrefix + seq + ',"text":' + JSON.stringify(text) + '}');
  }

  private done(id: string, ev: TurnDone): void {
    const m = this.gw.metrics;
    m.ttft.observe(ev.timing.ttft_ms / 1000);
    m.queueWait.observe(ev.timing.queue_ms / 1000);
    m.promptTokens.inc(ev.usage.prompt_tokens);
    m.cachedTokens.inc(ev.usage.cached_tokens);
    m.generatedTokens.inc(ev.usage.completion_tokens);
    const done: Record<string, unknown> = { type: 'response.done', response_id: id, finish_reason: ev.finishReason, usage: ev.usage, timing: ev.timing, truncated_turns: ev.truncatedTurns };
    if (ev.error) {
      done.error = ev.error;
      m.errors.inc({ code: ev.error.code });
    }
    const running = this.running?.id === id ? this.running : null;
    if (running?.shutdown && ev.finishReason === 'cancelled') done.finish_reason = 'shutdown';
    this.running = null;
    this.send(withId(done, running?.cancelEventId));
  }

  private refuse(code: WeftErrorCode, message: string): void {
    this.error(code, message);
    this.sock.close(1013, code);
    this.closed = true;
    this.gw.connections.delete(this);
    this.gw.metrics.connections.set(this.gw.connections.size);
  }

  private error(code: WeftErrorCode, message: string, eventId?: string): void {
    this.gw.metrics.errors.inc({ code });
    this.send(withId({ type: 'error', code, message }, eventId));
  }

  private send(ev: object): void {
    this.sendText(JSON.stringify(ev));
  }

  /**
   * Frames sent while the scheduler delivers a step's events are corked and written out together
   * when the step's delivery ends (`uncork`, called by the gateway): one write per socket per step.
   */
  private sendText(text: string): void {
    if (this.closed) return;
    if (!this.corked && this.gw.scheduler?.delivering) {
      this.corked = true;
      this.sock.cork();
      this.gw.corked.push(this);
    }
    this.sock.send(text);
  }

  /** Writes out the frames corked during a step's delivery. */
  uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    this.sock.uncork();
  }

  /** Called by the transport when queued bytes were written out: a blocked response resumes. */
  onDrain(): void {
    if (this.blocked && this.sock.bufferedAmount <= this.gw.backpressureBytes) {
      this.blocked = false;
      this.gw.scheduler?.wake();
    }
  }
}

function withId<T extends object>(ev: T, eventId: string | undefined): T {
  return eventId === undefined ? ev : { ...ev, event_id: eventId };
}

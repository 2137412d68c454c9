/**
 * One client connection speaking protocol v1 (docs/protocol.md) over any transport: its frames,
 * and the session it serves through a SessionRunner (responses, replay). Its socket's limits
 * (frame rate, bytes, unread answers), corking and backpressure are its SocketLink's
 * (src/gateway/socket-link.ts). A resume token finds a session kept here for a reconnect, one a
 * previous weft saved in the state dir (src/gateway/saved-sessions.ts), or one another instance
 * served (taken over from Redis: src/gateway/takeover.ts). When the transport closes without
 * session.close and resume is enabled, the runner is detached and kept for a reconnect with the
 * resume_token until the TTL runs out: a running response goes on into its replay log, and the
 * session's KV is parked in host memory once no response runs. Otherwise the session is freed.
 */
import { toWeftError, type WeftErrorCode } from '../errors.js';
import { Session } from '../session/session.js';
import type { Gateway } from './server.js';
import { ProtocolError, parseClientFrame } from './protocol.js';
import { SessionRunner, type Wire } from './session-runner.js';
import type { Tenant } from './api-keys.js';
import { LinkedFront, openFront, type FrontConnection, type TransportSocket } from './socket-link.js';
import { takeOverSession } from './takeover.js';
import { hashToken } from '../session/state-store.js';

export class Connection extends LinkedFront implements FrontConnection {
  runner: SessionRunner | null = null;
  private resumeToken: string | null = null;
  /** Gives back the API key's concurrency lease. */
  private releaseLease: (() => void) | null = null;
  private readonly wire: Wire = {
    sendText: (text) => this.sendText(text),
    blocked: () => this.link.blocked(),
  };

  /**
   * `resume`: the resume token of the URL, if any; `lastSeq`: the last delta the client got
   * (replay after it; absent: the running response from its start, if its end was not delivered).
   */
  constructor(
    gw: Gateway,
    sock: TransportSocket,
    private resume?: string,
    private readonly lastSeq?: number,
    private readonly responseId?: string,
    /** The API key's tenant (null: no API keys). */
    private readonly tenant: Tenant | null = null,
  ) {
    super(gw, sock);
  }

  /** A refused frame's error event (SocketLink). */
  sendError(code: WeftErrorCode, message: string, retryAfterMs?: number): void {
    this.send(retryAfterMs === undefined ? { type: 'error', code, message } : { type: 'error', code, message, retry_after_ms: retryAfterMs });
  }

  /** The session this connection serves. */
  get session(): Session | null {
    return this.runner?.session ?? null;
  }

  /** Whether a response is running or being prepared. */
  get busy(): boolean {
    return this.runner?.busy ?? false;
  }

  /** The server shuts down: a running response ends now with finish_reason `shutdown`. */
  cancelForShutdown(): void {
    this.runner?.cancelForShutdown();
  }

  /** The server drains: the client learns how long it has and where to go next. */
  notifyDraining(retryAfterMs: number, resumeUrl: string | undefined): void {
    if (this.closed || !this.runner) return;
    this.send({ type: 'session.draining', retry_after_ms: retryAfterMs, ...(resumeUrl ? { resume_url: resumeUrl } : {}) });
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
    openFront(this.gw, () => this.start(), (code, message) => this.refuse(code, message));
  }

  private start(): void {
    if (this.tenant) this.releaseLease = this.tenant.acquire(); // WEFT_KEY_CONCURRENCY: refused by open()
    if (this.resume !== undefined && this.gw.cluster) {
      // a token this instance took a session over from: the session lives under its new token
      const moved = this.gw.movedTokens.get(hashToken(this.resume));
      if (moved && moved.until > Date.now()) this.resume = moved.token;
      // a takeover of this token in progress here (the client reconnected again meanwhile): wait for it
      const inFlight = this.gw.takeoversInFlight.get(hashToken(this.resume));
      if (inFlight) return this.afterTakeover(inFlight);
    }
    this.continueStart();
  }

  /** A second connection for a token whose takeover runs here: once it is done, a resume of the session under its new token. */
  private afterTakeover(inFlight: Promise<string | null>): void {
    this.held = [];
    void inFlight.then((fresh) => {
      if (this.closed) return;
      const held = this.held ?? [];
      this.held = null;
      if (fresh) this.resume = fresh;
      try {
        this.continueStart();
      } catch (err) {
        const e = toWeftError(err);
        this.refuse(e.code, e.message);
      }
      for (const f of held) this.onMessage(f.data, f.isBinary);
    });
  }

  /** The session of this connection: a resume of one held here, restored from the state dir, taken over from another instance, or a new one. */
  private continueStart(): void {
    // a resume token is good only with the key that created its session
    const ownKey = (r: SessionRunner | undefined) => (r?.tenant?.name ?? null) === (this.tenant?.name ?? null);
    const full = this.gw.numLiveSessions >= this.gw.maxSessions;
    if (this.resume !== undefined && this.gw.hasDetached(this.resume) && ownKey(this.gw.peekDetached(this.resume))) {
      if (full) return this.refuse('WEFT_TOO_MANY_SESSIONS', `the gateway serves its maximum of ${this.gw.maxSessions} connected sessions; the session stays resumable`);
      const runner = this.gw.takeDetached(this.resume)!;
      this.adopt(runner, this.resume);
      this.send({ type: 'session.resumed', session: { id: runner.session.id, model: this.gw.modelName, limits: this.gw.limits() }, resume_token: this.resume, response: runner.status() });
      runner.replay(this.lastSeq ?? -1, this.responseId);
      return;
    }
    if (this.resume !== undefined && !this.gw.hasDetached(this.resume) && !this.gw.liveTokens.has(this.resume)) {
      // a session a previous weft saved in the state dir
      if (full && this.gw.hasSaved(this.resume, this.tenant?.name ?? null)) return this.refuse('WEFT_TOO_MANY_SESSIONS', `the gateway serves its maximum of ${this.gw.maxSessions} connected sessions; the session stays resumable`);
      const restored = this.gw.restoreSession(this.resume, this.tenant);
      if (restored) {
        this.adopt(restored, this.resume);
        return this.send({ type: 'session.resumed', session: { id: restored.session.id, model: this.gw.modelName, limits: this.gw.limits() }, resume_token: this.resume, response: null });
      }
    }
    if (this.resume !== undefined && this.gw.liveTokens.has(this.resume)) {
      return this.refuse('WEFT_SESSION_CONNECTED', 'the session of this resume token is connected on another socket; retry once that one has closed');
    }
    // another instance's session (it died, or the proxy sent the client here): take it over from Redis
    if (this.resume !== undefined && this.gw.cluster) return this.takeOver(this.resume);
    this.startFresh(this.resume !== undefined);
  }

  /** A new session (`unknown`: the client asked for one that is not known: said first). */
  private startFresh(unknown: boolean): void {
    const scheduler = this.gw.scheduler!;
    const full = this.gw.numLiveSessions >= this.gw.maxSessions;
    if (unknown) this.error('WEFT_RESUME_UNKNOWN', 'the resume token is unknown or expired; a new session follows');
    if (full) return this.refuse('WEFT_TOO_MANY_SESSIONS', `the gateway serves its maximum of ${this.gw.maxSessions} connected sessions`);
    const session = new Session(scheduler, {
      format: this.gw.format!,
      maxTokens: this.gw.defaultMaxTokens,
      sampling: this.gw.options.sessionSampling,
      contextPolicy: this.gw.options.contextPolicy,
      maxContextTokens: this.gw.options.maxSessionTokens,
    });
    this.runner = new SessionRunner(this.gw, session);
    this.runner.tenant = this.tenant;
    this.runner.onLost = () => this.sessionLost();
    this.runner.attach(this.wire);
    this.gw.sessions.add(session);
    this.gw.metrics.sessionsActive.set(this.gw.sessions.size);
    this.resumeToken = this.gw.resumeTtlMs > 0 ? this.gw.newResumeToken() : null;
    if (this.resumeToken) this.gw.liveTokens.add(this.resumeToken);
    this.runner.resumeToken = this.resumeToken;
    this.send({
      type: 'session.created',
      session: { id: session.id, model: this.gw.modelName, limits: this.gw.limits() },
      resume_token: this.resumeToken,
      ...(this.tenant ? { budget: this.tenant.budget() } : {}),
    });
  }

  /** A session kept here, saved by a previous weft, or taken over: this connection's now, under `token`. */
  private adopt(runner: SessionRunner, token: string): void {
    this.runner = runner;
    runner.onLost = () => this.sessionLost();
    this.resumeToken = token;
    this.gw.liveTokens.add(token);
    runner.attach(this.wire);
  }

  /**
   * Takes over a session another instance served (src/gateway/takeover.ts). Frames that come
   * meanwhile are held, and handled once it has succeeded.
   */
  private takeOver(token: string): void {
    this.held = [];
    const release = () => {
      const held = this.held ?? [];
      this.held = null;
      for (const f of held) this.onMessage(f.data, f.isBinary);
    };
    const hash = hashToken(token);
    let done!: (fresh: string | null) => void;
    this.gw.takeoversInFlight.set(hash, new Promise((r) => (done = r)));
    const settle = (fresh: string | null) => {
      this.gw.takeoversInFlight.delete(hash);
      if (fresh) this.gw.movedTokens.set(hash, { token: fresh, until: Date.now() + this.gw.resumeTtlMs });
      done(fresh);
    };
    takeOverSession(this.gw, token, {
      closed: () => this.closed,
      tenant: this.tenant,
      lastSeq: this.lastSeq,
      responseId: this.responseId,
      adopt: (runner, fresh) => this.adopt(runner, fresh),
      startFresh: (unknown) => this.startFresh(unknown),
      refuse: (code, message) => this.refuse(code, message),
      send: (ev) => this.send(ev),
      sendText: (text) => this.sendText(text),
      closeElsewhere: () => this.closeElsewhere(),
    }).then(
      (fresh) => {
        settle(fresh);
        release();
      },
      (err: unknown) => {
        settle(null);
        const e = toWeftError(err);
        this.gw.log(`takeover of a session failed: ${e.message}`);
        if (!this.closed) this.refuse(e.code, e.message);
      },
    );
  }

  /** Another instance took this session over (this one was presumed dead): the client is sent there. */
  private sessionLost(): void {
    if (this.closed) return;
    this.error('WEFT_SESSION_ELSEWHERE', 'another instance took this session over; reconnect through the proxy');
    this.closeElsewhere();
  }

  /** Closes the socket (1013 WEFT_SESSION_ELSEWHERE: the client reconnects through the proxy) and ends the connection. */
  private closeElsewhere(): void {
    this.sock.close(1013, 'WEFT_SESSION_ELSEWHERE');
    this.onClose(true);
  }

  /** Frames that came while a takeover was in progress (null: none is). */
  private held: { data: Buffer | string; isBinary: boolean }[] | null = null;

  /** Called by the transport for every frame. Never throws. */
  onMessage(data: Buffer | string, isBinary: boolean): void {
    if (this.closed || !this.link.admit(data)) return;
    if (this.held) {
      if (this.held.length >= 64) return this.error('WEFT_RATE_LIMITED', 'too many frames while the session is being taken over from another instance; this one was dropped');
      this.held.push({ data, isBinary });
      return;
    }
    const ev = parseClientFrame(data, isBinary, this.gw.maxFrameBytes);
    if (ev instanceof ProtocolError) return this.error(ev.code, ev.message, ev.event_id);
    try {
      if (ev.type === 'session.close') {
        this.send(withId({ type: 'session.closed', session: { id: this.runner!.session.id } }, ev.event_id));
        // ended before the socket closes: some transports report the close synchronously, and a
        // close without session.close would keep the session for resume
        this.onClose(true);
        this.sock.close(1000, 'session.close');
        return;
      }
      if (ev.type === 'session.update' && ev.session.rotate_resume_token && this.resumeToken && !this.runner!.refusesUpdate()) {
        this.gw.liveTokens.delete(this.resumeToken);
        this.gw.forgetSaved(this.resumeToken);
        this.resumeToken = this.gw.newResumeToken();
        this.gw.liveTokens.add(this.resumeToken);
        this.runner!.resumeToken = this.resumeToken;
        return this.runner!.handle(ev, { resume_token: this.resumeToken });
      }
      this.runner!.handle(ev);
    } catch (err) {
      const e = toWeftError(err);
      this.error(e.code, e.message, ev.event_id);
    }
  }

  /**
   * Called by the transport when the socket is gone (either side). With resume enabled (and not
   * `end`) the session is detached for a reconnect: a running response goes on into its replay
   * log and the KV is parked once it ends. Otherwise the session is closed.
   */
  onClose(end = false): void {
    if (this.closed) return;
    this.closed = true;
    this.gw.connections.delete(this);
    this.gw.metrics.connections.set(this.gw.connections.size + this.gw.realtime.size);
    this.releaseLease?.();
    if (this.resumeToken) this.gw.liveTokens.delete(this.resumeToken);
    const runner = this.runner;
    if (!runner) return;
    runner.detach();
    if (this.resumeToken && !end && this.gw.resumeTtlMs > 0 && !this.gw.draining) {
      this.gw.detach(this.resumeToken, runner, this.sock.remoteAddress);
      void runner.idle().then(() => runner.session.park()).catch(() => undefined);
      return;
    }
    this.gw.endSession(runner);
  }

  private refuse(code: WeftErrorCode, message: string): void {
    this.error(code, message);
    this.sock.close(1013, code);
    this.closed = true;
    this.releaseLease?.();
    this.gw.connections.delete(this);
    this.gw.metrics.connections.set(this.gw.connections.size + this.gw.realtime.size);
  }

  private error(code: WeftErrorCode, message: string, eventId?: string): void {
    this.gw.metrics.errors.inc({ code });
    this.send(withId({ type: 'error', code, message }, eventId));
  }

  private send(ev: object): void {
    this.sendText(JSON.stringify(ev));
  }

}

function withId<T extends object>(ev: T, eventId: string | undefined): T {
  return eventId === undefined ? ev : { ...ev, event_id: eventId };
}

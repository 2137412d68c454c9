/**
 * One client connection speaking protocol v1 (docs/protocol.md) over any transport: its limits
 * (frame rate, bytes, unread answers), its frames, and the session it serves through a
 * SessionRunner (responses, replay). When the transport closes without session.close and resume
 * is enabled, the runner is detached and kept for a reconnect with the resume_token until the
 * TTL runs out: a running response goes on into its replay log, and the session's KV is parked
 * in host memory once no response runs. Otherwise the session is freed.
 */
import { toWeftError, type WeftErrorCode } from '../errors.js';
import { Session } from '../session/session.js';
import type { Gateway } from './server.js';
import { ProtocolError, parseClientFrame } from './protocol.js';
import { ConnectionRateLimiter } from './rate-limit.js';
import { SessionRunner, type Wire } from './session-runner.js';
import type { Tenant } from './api-keys.js';
import { hashToken } from '../session/state-store.js';

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

/**
 * A WebSocket front's connection as the gateway and the transports see it: protocol v1's
 * Connection (/v1/ws) and the Realtime front's (/v1/realtime, src/gateway/realtime.ts).
 */
export interface FrontConnection {
  /** Called by the transport once the WebSocket is open. Never throws. */
  open(): void;
  /** Called by the transport for every frame. Never throws. */
  onMessage(data: Buffer | string, isBinary: boolean): void;
  /** Called by the transport when the socket is gone (`end`: the session is ended, not kept). */
  onClose(end?: boolean): void;
  /** Called by the transport when queued bytes were written out. */
  onDrain(): void;
  /** Writes out the frames corked during a step's delivery. */
  uncork(): void;
  /** Whether a response is running or being prepared (a drain waits for it). */
  readonly busy: boolean;
  /** The server drains: tell the client how long it has (and where to go next). */
  notifyDraining(retryAfterMs: number, resumeUrl: string | undefined): void;
  /** The drain's time is up: a running response ends now. */
  cancelForShutdown(): void;
  /** Closes the socket for shutdown (1001). */
  closeForShutdown(): void;
}

/**
 * Opens a front's connection: refused (`refuse`) while the model loads or the server drains, or
 * when `start` throws (a key over its concurrency); else `start` makes its session.
 */
export function openFront(gw: Gateway, start: () => void, refuse: (code: WeftErrorCode, message: string) => void): void {
  try {
    if (!gw.scheduler || !gw.format) return refuse('WEFT_NOT_READY', 'the model is still loading; retry when GET /readyz is 200');
    if (gw.draining) return refuse('WEFT_DRAINING', 'the server is shutting down; connect to another instance or retry later');
    start();
  } catch (err) {
    const e = toWeftError(err);
    refuse(e.code, e.message);
  }
}

/** What a SocketLink needs of its front's connection. */
export interface LinkOwner {
  /** Sends the front's error event for a frame that was refused (the link counts it in the metrics). */
  sendError(code: WeftErrorCode, message: string, retryAfterMs?: number): void;
  /** The link closes the socket (1008): the connection ends. */
  onClose(): void;
}

/**
 * A front connection's socket, whatever the protocol: frames sent while the scheduler delivers a
 * step's events are corked and written out together when the delivery ends (one write per socket
 * per step); received frames are checked before they are parsed (the connection's and the client
 * address's rate limits, and a client that does not read its answers); and the socket's buffered
 * bytes pause the connection's responses (backpressure) until they drain.
 */
export class SocketLink {
  private readonly limiter: ConnectionRateLimiter;
  private pausedUntil = 0;
  /** Frames, and their bytes, dropped by the rate limiter since the last one taken. */
  private numDropped = 0;
  private droppedBytes = 0;
  private wasBlocked = false;
  private corked = false;

  constructor(
    private readonly gw: Gateway,
    private readonly sock: TransportSocket,
    private readonly owner: LinkOwner,
  ) {
    this.limiter = new ConnectionRateLimiter(gw.rateLimits);
  }

  /**
   * Whether a received frame may be parsed. When not, the client was told; a client that sends
   * while it does not read, or keeps sending over its limit, is disconnected.
   */
  admit(data: Buffer | string): boolean {
    if (this.sock.bufferedAmount > this.gw.maxBufferedBytes) {
      // it sends while it does not read what it is sent: the answers would pile up here without bound
      this.refuse('WEFT_RATE_LIMITED', `the client does not read its answers (${this.sock.bufferedAmount} bytes waiting for it); the connection is closed`);
      this.disconnect();
      return false;
    }
    const size = typeof data === 'string' ? Buffer.byteLength(data) : data.length;
    const wait = this.limiter.admit(size) || this.gw.addressLimiter.admit(this.sock.remoteAddress, size);
    if (wait > 0) {
      this.rateLimited(wait, size);
      return false;
    }
    this.numDropped = 0;
    this.droppedBytes = 0;
    return true;
  }

  /** A frame over the connection's rate: answered without being parsed, and the socket is not read until the budget is back. */
  private rateLimited(waitMs: number, size: number): void {
    this.droppedBytes += size;
    // a transport that cannot pause reading would read (and unmask) everything the client sends:
    // close at once; else close when it keeps sending without heeding retry_after_ms
    const close = !this.sock.pauseReading || ++this.numDropped > this.gw.rateLimits.frameBurst || this.droppedBytes > this.gw.rateLimits.byteBurst;
    const what = close ? 'the frame was dropped and the connection is closed' : 'the frame was dropped';
    this.refuse('WEFT_RATE_LIMITED', `too many frames or bytes per second from this connection or client address; ${what}`, waitMs);
    if (close) return this.disconnect();
    const now = performance.now();
    if (this.sock.pauseReading && now + waitMs > this.pausedUntil) {
      this.pausedUntil = now + waitMs;
      this.sock.pauseReading(waitMs);
    }
  }

  private refuse(code: WeftErrorCode, message: string, retryAfterMs?: number): void {
    this.gw.metrics.errors.inc({ code });
    this.owner.sendError(code, message, retryAfterMs);
  }

  private disconnect(): void {
    this.owner.onClose();
    this.sock.close(1008, 'WEFT_RATE_LIMITED');
  }

  /** Sends one frame, corked while the scheduler delivers a step's events (`uncork`, called by the gateway, writes them out). */
  send(text: string): void {
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

  /** The responses' backpressure hook: true while the socket holds more than the threshold. */
  blocked(): boolean {
    return (this.wasBlocked = this.sock.bufferedAmount > this.gw.backpressureBytes);
  }

  /** Queued bytes were written out: a response paused by backpressure resumes. */
  onDrain(): void {
    if (this.wasBlocked && this.sock.bufferedAmount <= this.gw.backpressureBytes) {
      this.wasBlocked = false;
      this.gw.scheduler?.wake();
    }
  }
}

/**
 * What the WebSocket fronts share: their socket's link (SocketLink), through which every frame
 * goes while the connection is open, and the transport's calls that only the link serves.
 */
export abstract class LinkedFront implements LinkOwner {
  protected closed = false;
  protected readonly link: SocketLink;

  constructor(
    protected readonly gw: Gateway,
    protected readonly sock: TransportSocket,
  ) {
    this.link = new SocketLink(gw, sock, this);
  }

  /** The front's error event for a frame the link refused. */
  abstract sendError(code: WeftErrorCode, message: string, retryAfterMs?: number): void;
  abstract onClose(end?: boolean): void;

  /** Sends one frame while the connection is open (corked per step: SocketLink). */
  protected sendText(text: string): void {
    if (!this.closed) this.link.send(text);
  }

  /** Writes out the frames corked during a step's delivery. */
  uncork(): void {
    this.link.uncork();
  }

  /** Called by the transport when queued bytes were written out: a blocked response resumes. */
  onDrain(): void {
    this.link.onDrain();
  }
}

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
    private readonly resume?: string,
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
    const scheduler = this.gw.scheduler!;
    if (this.tenant) this.releaseLease = this.tenant.acquire(); // WEFT_KEY_CONCURRENCY: refused by open()
    // a resume token is good only with the key that created its session
    const ownKey = (r: SessionRunner | undefined) => (r?.tenant?.name ?? null) === (this.tenant?.name ?? null);
    const full = this.gw.numLiveSessions >= this.gw.maxSessions;
    if (this.resume !== undefined && this.gw.hasDetached(this.resume) && ownKey(this.gw.peekDetached(this.resume))) {
      if (full) return this.refuse('WEFT_TOO_MANY_SESSIONS', `the gateway serves its maximum of ${this.gw.maxSessions} connected sessions; the session stays resumable`);
      const runner = (this.runner = this.gw.takeDetached(this.resume)!);
      runner.onLost = () => this.sessionLost();
      this.resumeToken = this.resume;
      this.gw.liveTokens.add(this.resume);
      runner.attach(this.wire);
      this.send({ type: 'session.resumed', session: { id: runner.session.id, model: this.gw.modelName, limits: this.gw.limits() }, resume_token: this.resume, response: runner.status() });
      runner.replay(this.lastSeq ?? -1, this.responseId);
      return;
    }
    if (this.resume !== undefined && !this.gw.hasDetached(this.resume) && !this.gw.liveTokens.has(this.resume)) {
      // a session a previous weft saved in the state dir
      if (full && this.gw.hasSaved(this.resume, this.tenant?.name ?? null)) return this.refuse('WEFT_TOO_MANY_SESSIONS', `the gateway serves its maximum of ${this.gw.maxSessions} connected sessions; the session stays resumable`);
      const restored = this.gw.restoreSession(this.resume, this.tenant);
      if (restored) {
        this.runner = restored;
        restored.onLost = () => this.sessionLost();
        this.resumeToken = this.resume;
        this.gw.liveTokens.add(this.resume);
        restored.attach(this.wire);
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

  /**
   * Takes over a session another instance served (src/cluster/redis-state.ts): claims it (an
   * owner that is alive is waited for up to its heartbeat TTL: a killed instance is dead by then;
   * one still alive keeps it: WEFT_SESSION_ELSEWHERE), reads its record, makes it live here under
   * a new resume token naming this instance, and runs again the answer that was running, sending
   * the client the deltas after its last_seq. Frames that come meanwhile wait.
   */
  private takeOver(token: string): void {
    this.held = [];
    const release = () => {
      const held = this.held ?? [];
      this.held = null;
      for (const f of held) this.onMessage(f.data, f.isBinary);
    };
    this.claim(token).then(release, (err: unknown) => {
      const e = toWeftError(err);
      this.gw.log(`takeover of a session failed: ${e.message}`);
      if (!this.closed) this.refuse(e.code, e.message);
    });
  }

  private async claim(token: string): Promise<void> {
    const gw = this.gw;
    const cluster = gw.cluster!;
    const hash = hashToken(token);
    const outcome = (o: string) => gw.metrics.takeovers?.inc({ outcome: o });
    const deadline = performance.now() + cluster.instanceTtlMs + 1000;
    let claim = await cluster.claim(hash, gw.resumeTtlMs);
    while (claim && !claim.ok && performance.now() < deadline && !this.closed) {
      await new Promise((r) => setTimeout(r, 100));
      claim = await cluster.claim(hash, gw.resumeTtlMs);
    }
    if (this.closed) return;
    if (claim && !claim.ok) {
      outcome('refused');
      gw.metrics.errors.inc({ code: 'WEFT_SESSION_ELSEWHERE' });
      this.send({ type: 'error', code: 'WEFT_SESSION_ELSEWHERE', message: `the session is served by instance ${claim.owner}, which is alive; reconnect through the proxy`, instance: claim.owner });
      this.sock.close(1013, 'WEFT_SESSION_ELSEWHERE');
      return this.onClose(true);
    }
    const record = claim ? await cluster.load(hash) : null; // null claim: Redis cannot say now
    if (this.closed) return;
    if (!record || record.expires_at <= Date.now() || (record.key ?? null) !== (this.tenant?.name ?? null)) {
      if (record && (record.key ?? null) !== (this.tenant?.name ?? null)) gw.log(`a resume token of key ${JSON.stringify(record.key)} was presented with ${this.tenant ? `key ${JSON.stringify(this.tenant.name)}` : 'no key'}: refused as unknown`);
      return this.startFresh(true);
    }
    if (gw.numLiveSessions >= gw.maxSessions) return this.refuse('WEFT_TOO_MANY_SESSIONS', `the gateway serves its maximum of ${gw.maxSessions} connected sessions; the session stays resumable`);
    // the session lives here now, under a token that names this instance (the proxy routes its next resume here)
    const fresh = gw.newResumeToken();
    const runner = (this.runner = gw.revive(fresh, record, this.tenant));
    runner.onLost = () => this.sessionLost();
    this.resumeToken = fresh;
    gw.liveTokens.add(fresh);
    runner.attach(this.wire);
    const pending = record.pending ?? null;
    const last = record.last ?? null;
    runner.lastAnswer = last;
    const progress = pending ? await cluster.loadProgress(hash) : null;
    // written under the new token before the old one goes: a death now loses nothing
    await gw.persist(runner, pending ? { pending, conversation: record.conversation } : undefined);
    await cluster.remove(hash);
    gw.log(`session ${record.session_id}: taken over from ${claim?.previous ?? 'nobody'}${pending ? `; answer ${pending.response_id} runs again from its start` : ''}`);
    outcome(pending ? 'regenerated' : 'resumed');
    this.send({
      type: 'session.resumed',
      session: { id: runner.session.id, model: gw.modelName, limits: gw.limits() },
      resume_token: fresh,
      response: pending ? { response_id: pending.response_id, status: 'in_progress', next_seq: (this.responseId === pending.response_id ? (this.lastSeq ?? -1) : -1) + 1 } : last ? { response_id: last.response_id, status: 'done', next_seq: last.next_seq } : null,
    });
    if (pending) return runner.regenerate(pending, this.lastSeq ?? -1, this.responseId, progress);
    if (last && this.responseId === last.response_id && (this.lastSeq ?? -1) + 1 < last.next_seq + 1) {
      // the answer ended on the lost instance after the client's last delta: its text, then its end
      gw.metrics.errors.inc({ code: 'WEFT_REPLAY_GAP' });
      this.send({ type: 'error', code: 'WEFT_REPLAY_GAP', message: 'the instance that ran this answer is gone; its whole text follows', response_id: last.response_id, text: last.text, next_seq: last.next_seq });
      this.sendText(JSON.stringify(last.done));
    }
  }

  /** Another instance took this session over (this one was presumed dead): the client is sent there. */
  private sessionLost(): void {
    if (this.closed) return;
    this.error('WEFT_SESSION_ELSEWHERE', 'another instance took this session over; reconnect through the proxy');
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

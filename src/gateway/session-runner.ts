/**
 * Protocol v1's side of one session: its settings on the wire, its responses (at most one at a
 * time, each with a replay log), cancel and barge-in, truncation, and replay on resume. It
 * outlives a connection: when the socket drops the runner is detached (a running response goes
 * on into its log, paused once the log's window is full), and a resumed connection attaches it
 * again and gets what it missed.
 */
import { WeftError, toWeftError, type WeftErrorCode } from '../errors.js';
import { ResponseLog, type FrameBuilder, type ResponseSink } from '../session/response-log.js';
import type { Session, Turn, TurnDone } from '../session/session.js';
import { toTurnSampling, toWireSampling, type ClientEvent, type WireSampling } from './protocol.js';
import type { Gateway } from './server.js';
import { randomBytes, randomInt } from 'node:crypto';
import { budgetTap, type Tenant } from './api-keys.js';
import type { LastAnswer, PendingAnswer, Progress } from '../cluster/redis-state.js';
import { hashToken } from '../session/state-store.js';

/** What a connection gives its session's runner. */
export interface Wire {
  /** Sends one frame's text (corked per step by the connection). */
  sendText(text: string): void;
  /** True while the socket holds more than the backpressure threshold. */
  blocked(): boolean;
}

interface Response {
  id: string;
  turn: Turn;
  log: ResponseLog;
  cancelEventId?: string;
  /** Ended by a drain: a cancelled finish is reported as `shutdown`. */
  shutdown?: boolean;
  /** Barge-in: keep the tokens of deltas 0..truncateAt when the cancel settles. */
  truncateAt?: number;
  /** Ended because the API key's budget ran out. */
  budgetSpent?: boolean;
  /** Its response.done, built once when it ended. */
  doneFrame?: Record<string, unknown>;
  /** The response.done was sent to a connection. */
  delivered?: boolean;
}

type Create = Extract<ClientEvent, { type: 'message.create' }>;


export class SessionRunner {
  sampling: WireSampling = {};
  system: string | undefined;
  /** response.progress events (session.update progress). */
  progress = false;
  /** The session's resume token (set by the connection; null when resume is off). */
  resumeToken: string | null = null;
  /** The API key's tenant (null: no API keys): its budget is charged, its weight schedules the turns. */
  tenant: Tenant | null = null;
  private wire: Wire | null = null;
  /** The running response, or the last one (kept for replay and response.truncate). */
  private current: Response | null = null;
  /** A message.create being tokenized (sendAsync). */
  private preparing: { abort: AbortController; cancelled: boolean; cancelEventId?: string } | null = null;
  /** A message.create that came while a cancel was settling (barge-in): started when it has. */
  private queued: Create | null = null;
  private lastDeltaAt = 0;
  /** The message being typed (input.append), and whether a typing-ahead prefill runs / is due. */
  private input = '';
  private typing = false;
  private typingDue = false;

  constructor(
    private readonly gw: Gateway,
    readonly session: Session,
  ) {}

  /** Whether a response is running or being prepared. */
  get busy(): boolean {
    return this.running !== null || this.preparing !== null;
  }

  private get running(): Response | null {
    return this.current && !this.current.log.result ? this.current : null;
  }

  /** The running response: where a resume stands. */
  status(): { response_id: string; status: 'in_progress' | 'done'; next_seq: number } | null {
    const c = this.current;
    if (!c) return null;
    return { response_id: c.id, status: c.log.result ? 'done' : 'in_progress', next_seq: c.log.nextSeq };
  }

  /** Frames go to `wire` from now on. */
  attach(wire: Wire): void {
    this.wire = wire;
    this.gw.scheduler?.wake(); // a response paused while detached may go on
  }

  /** The connection is gone: a running response keeps generating into its log (until the window is full). */
  detach(): void {
    this.wire = null;
    this.current?.log.detach();
    this.preparing?.abort.abort();
    this.queued = null;
  }

  /**
   * Sends the deltas of `responseId` (default: the current response when its done was not
   * delivered) after `lastSeq`, then attaches the live stream; a gap the log no longer holds is
   * WEFT_REPLAY_GAP with the whole text so far.
   */
  replay(lastSeq: number, responseId?: string, eventId?: string): void {
    if (!Number.isInteger(lastSeq) || lastSeq < -1) return this.error('WEFT_BAD_ARGUMENT', 'last_seq must be an integer from -1 (none received)', eventId);
    const c = this.current;
    if (!c || (responseId !== undefined && responseId !== c.id)) {
      if (responseId !== undefined) this.error('WEFT_REPLAY_GAP', `response ${JSON.stringify(responseId.slice(0, 64))} is not this session's latest response`, eventId);
      return;
    }
    if (responseId === undefined && c.delivered) return;
    if (lastSeq >= c.log.nextSeq) return this.error('WEFT_BAD_ARGUMENT', `last_seq ${lastSeq} is beyond what was sent (next seq ${c.log.nextSeq})`, eventId);
    const r = c.log.replayAfter(lastSeq);
    if ('gap' in r) {
      this.send({ type: 'error', code: 'WEFT_REPLAY_GAP', message: `the deltas after seq ${lastSeq} are no longer held (--replay-bytes); the text so far follows`, response_id: c.id, text: r.text, next_seq: r.nextSeq, ...(eventId === undefined ? {} : { event_id: eventId }) });
      this.gw.metrics.errors.inc({ code: 'WEFT_REPLAY_GAP' });
    } else {
      for (const f of r.frames) this.wire?.sendText(f);
    }
    if (c.log.result) this.finish(c);
    else c.log.attach(this.sink(c));
  }

  /** A client event; `updated`: fields the connection adds to session.updated (a rotated resume token). */
  handle(ev: ClientEvent, updated?: Record<string, unknown>): void {
    switch (ev.type) {
      case 'session.update':
        return this.update(ev, updated);
      case 'message.create':
        return this.create(ev);
      case 'input.append':
        return this.append(ev.text, ev.event_id);
      case 'input.clear':
        this.input = '';
        return;
      case 'response.cancel':
        return this.cancel(ev.event_id, ev.truncate_at_seq);
      case 'response.truncate':
        return this.truncate(ev.seq, ev.response_id, ev.event_id);
      case 'session.resume':
        // in-band: answered like a reconnect's session.resumed (echoing event_id), then the replay
        this.send(withId({ type: 'session.resumed', session: { id: this.session.id, model: this.gw.modelName, limits: this.gw.limits() }, response: this.status() }, ev.event_id));
        return this.replay(ev.last_seq, ev.response_id, ev.event_id);
      case 'session.close':
        return; // the connection ends the session
    }
  }

  /** Whether a session.update would be refused now (a response runs). */
  refusesUpdate(): boolean {
    return this.busy;
  }

  private update(ev: Extract<ClientEvent, { type: 'session.update' }>, updated: Record<string, unknown> = {}): void {
    if (this.busy) return this.error('WEFT_RESPONSE_IN_PROGRESS', 'session.update while a response is running', ev.event_id);
    if (ev.session.sampling) this.sampling = { ...this.sampling, ...ev.session.sampling };
    if (ev.session.system !== undefined) {
      this.system = ev.session.system || undefined;
      this.session.setSystem(this.system);
    }
    if (ev.session.context_policy !== undefined) this.session.contextPolicy = ev.session.context_policy;
    if (ev.session.progress !== undefined) this.progress = ev.session.progress;
    void this.gw.persist(this);
    const session = { id: this.session.id, system: this.system ?? null, sampling: this.sampling, effective_sampling: this.effectiveSampling(), context_policy: this.session.contextPolicy, progress: this.progress, kv: this.kv() };
    this.send(withId({ type: 'session.updated', session, ...updated }, ev.event_id));
  }

  /** Where the session's KV is and how many tokens it holds. */
  private kv(): { state: string; tokens: number } {
    return { state: this.session.kvState, tokens: this.session.cachedTokens };
  }

  /** What a message.create without sampling would use: the server's defaults, then the session's. */
  private effectiveSampling(): WireSampling {
    const d = this.gw.options.sessionSampling ?? {};
    const server: WireSampling = { temperature: 0, max_tokens: this.gw.defaultMaxTokens, ...toWireSampling(d) };
    return { ...server, ...this.sampling };
  }

  private cancel(eventId: string | undefined, truncateAt: number | undefined): void {
    if (this.preparing && !this.preparing.cancelled) {
      // the message is still being tokenized: its response is created and cancelled at once
      this.preparing.cancelled = true;
      this.preparing.cancelEventId = eventId;
      return;
    }
    const r = this.running;
    if (!r) return this.error('WEFT_NO_RESPONSE', 'no response is running', eventId);
    r.cancelEventId = eventId;
    if (truncateAt !== undefined) r.truncateAt = truncateAt;
    r.turn.cancel();
  }

  /** response.truncate: the last answer (finished) keeps the tokens of deltas 0..seq. */
  private truncate(seq: number, responseId: string | undefined, eventId: string | undefined): void {
    if (this.busy) return this.error('WEFT_RESPONSE_IN_PROGRESS', 'response.truncate while a response is running (use response.cancel with truncate_at_seq)', eventId);
    const c = this.current;
    if (!c || (responseId !== undefined && responseId !== c.id)) return this.error('WEFT_NO_RESPONSE', 'only the latest response of the session can be truncated', eventId);
    // a typing-ahead prefill may hold the sequence: the trim waits for it (a step or two)
    void this.session.typingSettled().then(() => {
      try {
        if (this.busy || this.current !== c) throw new WeftError('WEFT_RESPONSE_IN_PROGRESS', 'a response started before the truncate could run');
        const kept = this.trim(c, seq);
        this.send(withId({ type: 'response.truncated', response_id: c.id, seq, text: kept }, eventId));
      } catch (err) {
        const e = toWeftError(err);
        this.error(e.code, e.message, eventId);
      }
    });
  }

  /** Trims the session's last answer (and KV) to the tokens of deltas 0..seq; the kept text. */
  private trim(c: Response, seq: number): string {
    if (!Number.isInteger(seq) || seq < -1 || seq >= c.log.nextSeq) throw new WeftError('WEFT_BAD_ARGUMENT', `seq ${seq} is not a delta of ${c.id} (0..${c.log.nextSeq - 1}, or -1 for none)`);
    return this.session.truncateLastAnswer(Math.min(seq + 1, c.turn.request.generated.length));
  }

  /** Typing-ahead: the message grows; what can no longer change is prefilled while the user types. */
  private append(text: string, eventId: string | undefined): void {
    const next = this.input + text;
    const tok = this.session.format.tokenizer;
    if (Buffer.byteLength(next) > this.gw.maxFrameBytes || tok.minTokens(next) >= this.gw.limits().max_context) {
      return this.error('WEFT_CONTEXT_OVERFLOW', 'the message being typed no longer fits (the context, or the frame size limit); it is kept as it was', eventId);
    }
    this.input = next;
    this.kickTyping();
  }

  /** Starts a typing-ahead prefill of the current input when the session is idle (one at a time; the newest input wins). */
  private kickTyping(): void {
    if (this.typing) {
      this.typingDue = true;
      return;
    }
    if (this.input === '' || this.busy || this.queued) return;
    this.typing = true;
    this.typingDue = false;
    this.session.typeAhead(this.input).then(
      () => undefined,
      (err) => {
        const e = toWeftError(err);
        if (e.code !== 'WEFT_SEQUENCE_BUSY') this.error(e.code, `typing-ahead: ${e.message}`);
      },
    ).finally(() => {
      this.typing = false;
      if (this.typingDue) this.kickTyping();
    });
  }

  /**
   * Another instance died while it ran an answer of this session, and this one took the session
   * over (src/cluster): the answer runs again from the same conversation with the same message and
   * sampling (seed included), so its tokens are the same; the client gets the deltas after
   * `lastSeq` of `clientResponseId` (when it is this answer; else response.created and every delta).
   */
  regenerate(pending: PendingAnswer, lastSeq: number, clientResponseId: string | undefined, progress: Progress | null = null): void {
    const known = clientResponseId === pending.response_id;
    const expect = progress && progress.response_id === pending.response_id && progress.next_seq > 0 ? progress : null;
    this.create({ type: 'message.create', content: pending.content, sampling: pending.sampling as WireSampling }, { id: pending.response_id, skipThrough: known ? lastSeq : -1, announce: !known, expect });
  }

  /** The last answer that ended (kept in Redis for a client that missed its end when its instance died). */
  lastAnswer: LastAnswer | null = null;

  /** Called when another instance took this session over (it was presumed dead): set by the connection. */
  onLost: (() => void) | null = null;

  /** This instance lost the session to another (a fenced write was refused): its answer stops here, and the client is sent to the owner. */
  lost(): void {
    if (this.wasLost) return;
    this.wasLost = true;
    this.gw.metrics.errors.inc({ code: 'WEFT_SESSION_ELSEWHERE' });
    this.cancelAll();
    this.onLost?.();
  }

  private wasLost = false;

  private create(ev: Create, regen?: { id: string; skipThrough: number; announce: boolean; expect?: Progress | null }): void {
    const r = this.running;
    if (r && r.turn.request.cancelRequested && !this.queued) {
      this.queued = ev; // barge-in: the cancel settles within a step, then this message starts
      return;
    }
    if (this.busy) return this.error('WEFT_RESPONSE_IN_PROGRESS', 'a response is already running in this session (wait for response.done or send response.cancel)', ev.event_id);
    if (this.gw.draining) return this.error('WEFT_DRAINING', 'the server is shutting down and starts no new responses', ev.event_id);
    if (ev.commit) {
      // the typed message is sent (and cleared) only once the message is accepted
      ev = { ...ev, content: this.input };
      delete ev.commit;
      this.input = '';
    }
    const wire: WireSampling = { ...this.sampling, ...ev.sampling };
    // an answer another instance may have to run again token for token gets its seed now
    const cluster = this.gw.cluster;
    if (cluster && wire.seed === undefined) wire.seed = randomInt(2 ** 47);
    const opts = toTurnSampling(wire);
    const tenant = regen ? null : this.tenant; // an answer run again was paid for
    const id = regen?.id ?? `resp_${randomBytes(9).toString('base64url')}`;
    if (cluster && this.resumeToken) {
      // before it starts: the conversation as it stands, and what to run again, for whoever takes over
      void this.gw.persist(this, { pending: { response_id: id, content: ev.content, sampling: { ...wire } }, conversation: this.session.conversation.toJSON() });
    }
    const log = new ResponseLog(id, this.gw.replayBytes, this.frameBuilder(id, opts.logprobs ? (opts.topLogprobs ?? 0) : -1));
    const preparing = (this.preparing = { abort: new AbortController(), cancelled: false as boolean, cancelEventId: undefined as string | undefined });
    this.session
      .sendAsync(ev.content, {
        sampling: opts.sampling,
        maxTokens: opts.maxTokens,
        stop: opts.stop,
        isBlocked: () => log.blocked(),
        signal: preparing.abort.signal,
        ...(tenant
          ? {
              maxTokens: tenant.capMaxTokens(opts.maxTokens ?? this.gw.defaultMaxTokens),
              tenant: tenant.name,
              weight: tenant.limits.weight,
              // the key pays for what the engine computes: prompt tokens not in the KV, then each generated token
              admit: (prompt: number, cached: number) => {
                tenant.checkBudget(prompt - cached);
                tenant.charge(prompt - cached);
              },
            }
          : {}),
      })
      .then(
        (turn) => {
          this.preparing = null;
          this.started({ id, turn, log }, ev.event_id, preparing.cancelled ? (preparing.cancelEventId ?? null) : undefined, regen);
        },
        (err) => {
          this.preparing = null;
          const e = toWeftError(err);
          const wait = (err as { retryAfterMs?: number })?.retryAfterMs;
          if (!this.wire) return;
          if (wait === undefined) return this.error(e.code, e.message, ev.event_id);
          this.gw.metrics.errors.inc({ code: e.code });
          this.send(withId({ type: 'error', code: e.code, message: e.message, retry_after_ms: wait }, ev.event_id));
        },
      );
  }

  /** A turn was submitted: response.created, then its events. `cancelId`: a cancel came while it was being prepared. */
  private started(r: Response, eventId: string | undefined, cancelId: string | null | undefined, regen?: { skipThrough: number; announce: boolean; expect?: Progress | null }): void {
    this.current = r;
    if (!regen || regen.announce) this.send(withId({ type: 'response.created', response_id: r.id }, eventId));
    this.lastDeltaAt = 0;
    const tenant = regen ? null : this.tenant;
    r.turn.listen(
      tenant
        ? budgetTap(r.log, tenant, () => {
            r.budgetSpent = true;
            r.turn.cancel();
          })
        : r.log,
    );
    const sink = this.sink(r);
    // an answer run again: the deltas the client already has are not sent twice, and the run is
    // checked against the progress the lost instance flushed (another backend or build may sample
    // other tokens: then the client is sent the text as it is now, never a silent divergence)
    const skip = regen?.skipThrough ?? -1;
    const expect = regen?.expect ?? null;
    r.log.attach(
      skip < 0 && !expect
        ? sink
        : {
            ...sink,
            delta: (seq, frame) => {
              if (seq > skip) sink.delta(seq, frame);
              if (expect && seq === expect.next_seq - 1 && r.log.text !== expect.text) this.diverged(r, expect);
            },
          },
    );
    void r.turn.done.then((d) => this.observe(d), () => undefined);
    if (this.gw.cluster && this.resumeToken) this.flushProgress(r);
    if (this.progress) this.watch(r);
    if (cancelId !== undefined) {
      r.cancelEventId = cancelId ?? undefined;
      r.turn.cancel();
    }
    if (!this.wire) r.log.detach();
  }

  /** An answer run again differs from what the lost instance had sent: the client gets the text as it is now (WEFT_REPLAY_GAP). */
  private diverged(r: Response, expect: Progress): void {
    this.gw.log(`session ${this.session.id}: answer ${r.id} run again differs from what the lost instance sent by seq ${expect.next_seq - 1} (another backend or build?); the client gets the whole text so far`);
    this.gw.metrics.errors.inc({ code: 'WEFT_REPLAY_GAP' });
    this.send({ type: 'error', code: 'WEFT_REPLAY_GAP', message: 'the answer run again on this instance differs from what the lost one had sent; its whole text so far follows', response_id: r.id, text: r.log.text, next_seq: r.log.nextSeq });
  }

  /** While `r` runs, its progress goes to Redis every 250 ms (the new owner checks its run again against it). */
  private flushProgress(r: Response): void {
    const cluster = this.gw.cluster!;
    const hash = hashToken(this.resumeToken!);
    let sent = -1;
    const timer = setInterval(() => {
      if (r.log.result || this.wasLost) return clearInterval(timer);
      if (r.log.nextSeq === sent) return;
      sent = r.log.nextSeq;
      void cluster.progress(hash, { response_id: r.id, next_seq: r.log.nextSeq, text: r.log.text }, this.gw.resumeTtlMs);
    }, 250);
    timer.unref();
  }

  /**
   * A response's delta frames, built by concatenation (no object or JSON.stringify of the whole
   * event per token). `topLogprobs` -1: no log-probabilities; else the sampled token's and that
   * many alternatives.
   */
  private frameBuilder(id: string, topLogprobs: number): FrameBuilder {
    const prefix = `{"type":"response.delta","response_id":${JSON.stringify(id)},"seq":`;
    const tok = this.session.format.tokenizer;
    const num = (x: number) => (Number.isFinite(x) ? String(x) : '-9999');
    return (seq, text, info) => {
      let f = prefix + seq + ',"text":' + JSON.stringify(text);
      if (topLogprobs >= 0 && info && info.token >= 0 && info.logprob !== undefined) {
        f += ',"token":' + info.token + ',"logprob":' + num(info.logprob);
        if (topLogprobs > 0) {
          const top = (info.top ?? []).slice(0, topLogprobs).map((t) => `{"token":${t.token},"text":${JSON.stringify(tok.decode([t.token]))},"logprob":${num(t.logprob)}}`);
          f += ',"top_logprobs":[' + top.join(',') + ']';
        }
      }
      return f + '}';
    };
  }

  private sink(r: Response): ResponseSink {
    return {
      delta: (_seq, frame) => {
        const now = performance.now();
        if (this.lastDeltaAt > 0) this.gw.metrics.interToken.observe((now - this.lastDeltaAt) / 1000);
        this.lastDeltaAt = now;
        this.wire?.sendText(frame);
      },
      done: () => this.finish(r),
      fail: () => this.finish(r),
      blocked: () => this.wire?.blocked() ?? false,
    };
  }

  /** The response ended (or a resume finds it ended): response.done to the connection, then a queued message. */
  private finish(r: Response): void {
    if (!r.doneFrame) {
      r.doneFrame = this.doneFrame(r);
      if (this.gw.cluster) this.lastAnswer = { response_id: r.id, text: r.log.text, next_seq: r.log.nextSeq, done: r.doneFrame };
      void this.gw.persist(this); // the conversation as it stands after this answer
    }
    if (!this.wire) return; // delivered on resume
    r.delivered = true;
    r.log.detach();
    this.send(withId(r.doneFrame, r.cancelEventId));
    const next = this.queued;
    this.queued = null;
    if (next) this.create(next);
    else this.kickTyping(); // typed while the answer streamed
  }

  /** The response.done of an ended response, after its barge-in trim. */
  private doneFrame(r: Response): Record<string, unknown> {
    const result = r.log.result!;
    let done: Record<string, unknown>;
    if ('error' in result) {
      const e = toWeftError(result.error);
      // an internal failure: usage and timing from the request, as far as it got
      const q = r.turn.request;
      const now = performance.now();
      done = {
        type: 'response.done', response_id: r.id, finish_reason: 'error', error: { code: e.code, message: e.message },
        usage: { prompt_tokens: r.turn.prompt.length, cached_tokens: q.cachedAtStart, completion_tokens: q.generated.length },
        timing: { queue_ms: (q.admittedAt || now) - q.submittedAt, ttft_ms: q.firstTokenAt ? q.firstTokenAt - q.submittedAt : 0, duration_ms: now - q.submittedAt },
        truncated_turns: 0,
      };
      this.gw.metrics.errors.inc({ code: e.code });
    } else {
      const ev = result.done;
      done = { type: 'response.done', response_id: r.id, finish_reason: ev.finishReason, usage: ev.usage, timing: ev.timing, truncated_turns: ev.truncatedTurns, kv: this.kv() };
      if (ev.error) {
        done.error = ev.error;
        this.gw.metrics.errors.inc({ code: ev.error.code });
      }
      if (r.shutdown && ev.finishReason === 'cancelled') done.finish_reason = 'shutdown';
      if (r.budgetSpent && ev.finishReason === 'cancelled') {
        done.finish_reason = 'budget';
        done.error = { code: 'WEFT_KEY_BUDGET', message: `the API key "${this.tenant?.name}" spent its tokens per minute during this answer` };
        this.gw.metrics.errors.inc({ code: 'WEFT_KEY_BUDGET' });
      }
      if (r.truncateAt !== undefined) {
        try {
          done.truncated_at_seq = r.truncateAt;
          done.text = this.trim(r, r.truncateAt);
        } catch (err) {
          done.truncate_error = { code: toWeftError(err).code, message: toWeftError(err).message };
        }
      }
    }
    return done;
  }

  /**
   * response.progress while `r` runs, checked every 100 ms and sent when it changed: `queued`
   * (position: 1 for the next one admitted; ahead: requests before it), `prefilling` (tokens done
   * of total), `generating`, `paused` (the consumer is not reading: backpressure, or no
   * connection and a full replay window).
   */
  private watch(r: Response): void {
    let last = '';
    const check = () => {
      if (r.log.result) return clearInterval(timer);
      const q = r.turn.request;
      let ev: Record<string, unknown>;
      if (q.state === 'queued') {
        const ahead = Math.max(0, this.gw.scheduler!.queuePosition(q));
        ev = { state: 'queued', position: ahead + 1, ahead };
      } else if (q.state === 'prefilling') ev = { state: 'prefilling', done: q.offset, total: q.opts.tokens.length };
      else if (r.log.blocked()) ev = { state: 'paused', reason: this.wire ? 'backpressure' : 'disconnected' };
      else ev = { state: 'generating', tokens: q.generated.length };
      const key = JSON.stringify({ ...ev, tokens: undefined });
      if (key === last) return;
      last = key;
      this.send({ type: 'response.progress', response_id: r.id, ...ev });
    };
    const timer = setInterval(check, 100);
    timer.unref();
    check();
  }

  private observe(d: TurnDone): void {
    const m = this.gw.metrics;
    m.ttft.observe(d.timing.ttft_ms / 1000);
    m.queueWait.observe(d.timing.queue_ms / 1000);
    m.promptTokens.inc(d.usage.prompt_tokens);
    m.cachedTokens.inc(d.usage.cached_tokens);
    m.generatedTokens.inc(d.usage.completion_tokens);
  }

  /** The server shuts down: a running response ends now with finish_reason `shutdown`. */
  cancelForShutdown(): void {
    const r = this.running;
    if (r) {
      r.shutdown = true;
      r.turn.cancel();
    }
    this.preparing?.abort.abort();
    this.queued = null;
  }

  /** Cancels a running response (the session is being ended). */
  cancelAll(): void {
    this.running?.turn.cancel();
    this.preparing?.abort.abort();
    this.queued = null;
  }

  /** Resolves when no response runs. */
  idle(): Promise<void> {
    const r = this.running;
    return r ? r.turn.done.then(() => undefined, () => undefined) : Promise.resolve();
  }

  error(code: WeftErrorCode, message: string, eventId?: string): void {
    this.gw.metrics.errors.inc({ code });
    this.send(withId({ type: 'error', code, message }, eventId));
  }

  private send(ev: object): void {
    this.wire?.sendText(JSON.stringify(ev));
  }
}

function withId<T extends object>(ev: T, eventId: string | undefined): T {
  return eventId === undefined ? ev : { ...ev, event_id: eventId };
}

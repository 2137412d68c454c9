/**
 * Protocol v1's side of one session: its settings on the wire, its responses (at most one at a
 * time, each with a replay log), cancel and barge-in, truncation, and replay on resume. It
 * outlives a connection: when the socket drops the runner is detached (a running response goes
 * on into its log, paused once the log's window is full), and a resumed connection attaches it
 * again and gets what it missed.
 *
 * A response's events are built in response-frames.ts, typing-ahead runs in typing-ahead.ts, and
 * the session's side in a cluster (records for a takeover, an answer run again) in
 * runner-cluster.ts.
 */
import { WeftError, toWeftError, type WeftErrorCode } from '../errors.js';
import { ResponseLog, type ResponseSink } from '../session/response-log.js';
import type { Session, TurnDone } from '../session/session.js';
import { toTurnSampling, toWireSampling, type ClientEvent, type WireSampling } from './protocol.js';
import type { Gateway } from './server.js';
import { randomBytes } from 'node:crypto';
import { budgetTap, type Tenant } from './api-keys.js';
import type { LastAnswer, PendingAnswer, Progress } from '../cluster/redis-state.js';
import { deltaFrameBuilder, doneFrame, kvOf, trimAnswer, watchProgress, type RunnerResponse } from './response-frames.js';
import { RunnerCluster, type Rerun } from './runner-cluster.js';
import { TypingAhead } from './typing-ahead.js';

/** What a connection gives its session's runner. */
export interface Wire {
  /** Sends one frame's text (corked per step by the connection). */
  sendText(text: string): void;
  /** True while the socket holds more than the backpressure threshold. */
  blocked(): boolean;
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
  private current: RunnerResponse | null = null;
  /** A message.create being tokenized (sendAsync). */
  private preparing: { abort: AbortController; cancelled: boolean; cancelEventId?: string } | null = null;
  /** A message.create that came while a cancel was settling (barge-in): started when it has. */
  private queued: Create | null = null;
  private lastDeltaAt = 0;
  /** The message being typed (input.append) and its prefill. */
  private readonly typing: TypingAhead;
  /** The session's side in a cluster. */
  private readonly clusterSide: RunnerCluster;

  constructor(
    private readonly gw: Gateway,
    readonly session: Session,
  ) {
    this.typing = new TypingAhead(gw, session, () => !this.busy && !this.queued, (code, message, eventId) => this.error(code, message, eventId));
    this.clusterSide = new RunnerCluster(gw, this, (ev) => this.send(ev));
  }

  /** Whether a response is running or being prepared. */
  get busy(): boolean {
    return this.running !== null || this.preparing !== null;
  }

  private get running(): RunnerResponse | null {
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
        return this.typing.append(ev.text, ev.event_id);
      case 'input.clear':
        return this.typing.clear();
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
    const session = { id: this.session.id, system: this.system ?? null, sampling: this.sampling, effective_sampling: this.effectiveSampling(), context_policy: this.session.contextPolicy, progress: this.progress, kv: kvOf(this.session) };
    this.send(withId({ type: 'session.updated', session, ...updated }, ev.event_id));
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
        const kept = trimAnswer(this.session, c, seq);
        this.send(withId({ type: 'response.truncated', response_id: c.id, seq, text: kept }, eventId));
      } catch (err) {
        const e = toWeftError(err);
        this.error(e.code, e.message, eventId);
      }
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
    this.clusterSide.lost();
  }

  private create(ev: Create, regen?: Rerun): void {
    const r = this.running;
    if (r && r.turn.request.cancelRequested && !this.queued) {
      this.queued = ev; // barge-in: the cancel settles within a step, then this message starts
      return;
    }
    if (this.busy) return this.error('WEFT_RESPONSE_IN_PROGRESS', 'a response is already running in this session (wait for response.done or send response.cancel)', ev.event_id);
    if (this.gw.draining) return this.error('WEFT_DRAINING', 'the server is shutting down and starts no new responses', ev.event_id);
    if (ev.commit) {
      // the typed message is sent (and cleared) only once the message is accepted
      ev = { ...ev, content: this.typing.take() };
      delete ev.commit;
    }
    const wire: WireSampling = { ...this.sampling, ...ev.sampling };
    const id = regen?.id ?? `resp_${randomBytes(9).toString('base64url')}`;
    // with a cluster: its seed (in wire), and its pending record written before the answer starts (so that no
    // delta reaches the client before another instance could run the answer again)
    const saved = this.clusterSide.beforeStart(id, ev.content, wire);
    const opts = toTurnSampling(wire);
    // an answer run again keeps its key's cap, name and weight, but its prompt was paid for
    const tenant = this.tenant;
    const log = new ResponseLog(id, this.gw.replayBytes, deltaFrameBuilder(id, opts.logprobs ? (opts.topLogprobs ?? 0) : -1, this.session.format.tokenizer));
    const preparing = (this.preparing = { abort: new AbortController(), cancelled: false as boolean, cancelEventId: undefined as string | undefined });
    const send = () => this.session.sendAsync(ev.content, {
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
              ...(regen
                ? {}
                : {
                    admit: (prompt: number, cached: number) => {
                      tenant.checkBudget(prompt - cached);
                      tenant.charge(prompt - cached);
                    },
                  }),
            }
          : {}),
      });
    // without a cluster the message starts now, as it always did (nothing to wait for)
    (saved ? saved.then(send) : send())
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
  private started(r: RunnerResponse, eventId: string | undefined, cancelId: string | null | undefined, regen?: Rerun): void {
    this.current = r;
    if (!regen || regen.announce) this.send(withId({ type: 'response.created', response_id: r.id }, eventId));
    this.lastDeltaAt = 0;
    const tenant = regen ? null : this.tenant; // the tokens of an answer run again are not charged twice
    r.turn.listen(
      tenant
        ? budgetTap(r.log, tenant, () => {
            r.budgetSpent = true;
            r.turn.cancel();
          })
        : r.log,
    );
    r.log.attach(regen ? this.clusterSide.rerunSink(regen, r.log, this.sink(r)) : this.sink(r));
    void r.turn.done.then((d) => this.observe(d), () => undefined);
    this.clusterSide.started(r.id, r.log);
    if (this.progress) watchProgress(r, this.gw.scheduler!, () => this.wire !== null, (ev) => this.send(ev));
    if (cancelId !== undefined) {
      r.cancelEventId = cancelId ?? undefined;
      r.turn.cancel();
    }
    if (!this.wire) r.log.detach();
  }

  private sink(r: RunnerResponse): ResponseSink {
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
  private finish(r: RunnerResponse): void {
    if (!r.doneFrame) {
      r.doneFrame = doneFrame(r, this.session, this.tenant, this.gw.metrics);
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
    else this.typing.kick(); // typed while the answer streamed
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

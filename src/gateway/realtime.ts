/**
 * The OpenAI Realtime-compatible front at /v1/realtime (docs/realtime.md), text only: one client
 * connection and the Session it drives, on the scheduler and sessions every front shares.
 *
 * The conversation's items are the session's messages (src/gateway/realtime-items.ts):
 * conversation.item.create/delete/truncate edit them (the KV is cut back to what still matches at
 * the next response), and response.create answers the conversation as it stands
 * (Session.respondAsync), its answer becoming an assistant item (src/gateway/realtime-response.ts
 * shapes it). One response runs at a time; the events that change the conversation wait for its
 * end in arrival order (so a cancel, a truncate of what was shown and a new message, sent at once,
 * apply in that order), and so does a response.create that follows a cancel (barge-in).
 *
 * The socket side (corking per step, rate limits, unread answers, backpressure) is protocol v1's
 * (SocketLink); budgets are the API key's (src/gateway/api-keys.ts).
 */
import type * as RT from 'openai/resources/realtime/realtime';
import { WeftError, toWeftError, type WeftErrorCode } from '../errors.js';
import type { SamplingOptions } from '../engine/engine.js';
import type { ChatMessage } from '../session/chat-format.js';
import { Session, type Turn, type TurnDone } from '../session/session.js';
import type { TokenInfo } from '../session/turn.js';
import { budgetTap, type Tenant } from './api-keys.js';
import { LinkedFront, openFront, type FrontConnection, type TransportSocket } from './socket-link.js';
import { openaiError } from './openai-shapes.js';
import { toWireSampling } from './protocol.js';
import { asRealtimeError, numChars, parseRealtimeFrame, RealtimeError, type RealtimeEvent, type SessionPatch } from './realtime-events.js';
import { RealtimeItems } from './realtime-items.js';
import { newResponse, outcome, responseJson, usage, type Response } from './realtime-response.js';
import type { Gateway } from './server.js';

/** Most events that may wait for a running response. */
const MAX_QUEUED = 64;

let nextEventId = 1;

export class RealtimeConnection extends LinkedFront implements FrontConnection {
  /** The session this connection drives (null until it opened). */
  session: Session | null = null;
  private items!: RealtimeItems;
  private releaseLease: (() => void) | null = null;
  /** The session's response settings (session.update). */
  private maxOutputTokens: number | 'inf';
  private sampling: SamplingOptions = {};
  private stop: string[] | undefined;
  /** The response being prepared or running. */
  private current: Response | null = null;
  /** Events that wait for the running response to end. */
  private readonly queue: RealtimeEvent[] = [];

  constructor(
    gw: Gateway,
    sock: TransportSocket,
    readonly ctx: { query: string; tenant: Tenant | null },
  ) {
    super(gw, sock);
    this.maxOutputTokens = gw.defaultMaxTokens;
  }

  /** Whether a response is running or being prepared. */
  get busy(): boolean {
    return this.current !== null;
  }

  /** Called by the transport once the WebSocket is open. Never throws. */
  open(): void {
    openFront(this.gw, () => this.start(), (code, message) => this.refuse(code, message));
  }

  private start(): void {
    const gw = this.gw;
    const model = new URLSearchParams(this.ctx.query).get('model');
    if (model !== null && model !== gw.modelName) return this.refuse('WEFT_MODEL_NOT_FOUND', `the model ${JSON.stringify(model.slice(0, 200))} does not exist (this server has ${JSON.stringify(gw.modelName)})`, 1008);
    if (gw.numLiveSessions >= gw.maxSessions) return this.refuse('WEFT_TOO_MANY_SESSIONS', `the gateway serves its maximum of ${gw.maxSessions} connected sessions`);
    const tenant = this.ctx.tenant;
    if (tenant) this.releaseLease = tenant.acquire(); // WEFT_KEY_CONCURRENCY: refused by open()
    const session = new Session(gw.scheduler!, {
      format: gw.format!,
      maxTokens: gw.defaultMaxTokens,
      sampling: gw.options.sessionSampling,
      contextPolicy: gw.options.contextPolicy,
      maxContextTokens: gw.options.maxSessionTokens,
      ...(tenant ? { tenant: tenant.name, weight: tenant.limits.weight } : {}),
    });
    this.session = session;
    this.items = new RealtimeItems(session);
    gw.sessions.add(session);
    gw.metrics.sessionsActive.set(gw.sessions.size);
    this.emit({ type: 'session.created', session: this.sessionJson(), ...this.budget() });
  }

  /** Called by the transport for every frame. Never throws. */
  onMessage(data: Buffer | string, isBinary: boolean): void {
    if (this.closed || !this.session || !this.link.admit(data)) return;
    const ev = parseRealtimeFrame(data, isBinary, this.gw.maxFrameBytes);
    if (ev instanceof RealtimeError) return this.error(ev);
    switch (ev.type) {
      case 'response.cancel':
        return this.run(ev, () => this.cancel(ev.response_id));
      case 'conversation.item.retrieve':
        return this.run(ev, () => this.emit({ type: 'conversation.item.retrieved', item: this.items.get(ev.item_id) }));
      case 'response.create':
        if (this.gw.draining) return this.error(new RealtimeError('WEFT_DRAINING', 'the server is shutting down and starts no new responses', null, ev.event_id));
        // after a cancel (barge-in) it waits for the cancelled response's end; else one response at a time
        if (this.current && !this.current.cancelled) return this.error(new RealtimeError('WEFT_RESPONSE_IN_PROGRESS', 'a response is already running (wait for response.done, or send response.cancel)', null, ev.event_id));
    }
    if (!this.busy && this.queue.length === 0) return this.apply(ev);
    if (this.queue.length >= MAX_QUEUED) return this.error(new RealtimeError('WEFT_RESPONSE_IN_PROGRESS', `${MAX_QUEUED} events already wait for the running response to end`, null, ev.event_id));
    this.queue.push(ev);
  }

  /** Runs a client event's handler: what it throws goes back as an error event naming it. */
  private run(ev: RealtimeEvent, fn: () => void): void {
    try {
      fn();
    } catch (err) {
      this.error(asRealtimeError(toWeftError(err), ev.event_id), (err as { retryAfterMs?: number }).retryAfterMs);
    }
  }

  /** An event that changes the conversation or starts a response, on an idle session. */
  private apply(ev: RealtimeEvent): void {
    this.run(ev, () => {
      switch (ev.type) {
        case 'session.update':
          return this.update(ev.session);
        case 'conversation.item.create': {
          const added = this.items.create(ev.item, ev.previous_item_id);
          this.emit({ type: 'conversation.item.added', ...added } satisfies Omit<RT.ConversationItemAdded, 'event_id'>);
          return this.emit({ type: 'conversation.item.done', ...added } satisfies Omit<RT.ConversationItemDone, 'event_id'>);
        }
        case 'conversation.item.delete':
          this.items.delete(ev.item_id);
          return this.emit({ type: 'conversation.item.deleted', item_id: ev.item_id } satisfies Omit<RT.ConversationItemDeletedEvent, 'event_id'>);
        case 'conversation.item.truncate': {
          // weft's extension: text_end, the characters kept (fewer than asked when a token was shown in part)
          const kept = this.items.truncate(ev.item_id, ev.content_index, ev.text_end);
          return this.emit({ type: 'conversation.item.truncated', item_id: ev.item_id, content_index: 0, audio_end_ms: ev.audio_end_ms ?? 0, text_end: kept });
        }
        case 'response.create':
          return this.respond(ev);
      }
    });
  }

  /** The running response ended: the events that waited for it, in order, until one starts a response. */
  private drainQueue(): void {
    while (!this.closed && !this.busy && this.queue.length > 0) this.apply(this.queue.shift()!);
  }

  // --- the conversation ------------------------------------------------------------------------

  private update(p: SessionPatch): void {
    if (p.instructions !== undefined) this.items.setInstructions(p.instructions);
    if (p.contextPolicy !== undefined) this.session!.contextPolicy = p.contextPolicy;
    if (p.maxOutputTokens !== undefined) this.maxOutputTokens = p.maxOutputTokens;
    if (p.sampling) this.sampling = { ...this.sampling, ...p.sampling };
    if (p.stop) this.stop = p.stop;
    this.emit({ type: 'session.updated', session: this.sessionJson(), ...this.budget() });
  }

  private sessionJson(): RT.RealtimeSessionCreateRequest & Record<string, unknown> {
    return {
      type: 'realtime',
      object: 'realtime.session',
      id: this.session!.id,
      model: this.gw.modelName,
      output_modalities: ['text'],
      instructions: this.items.instructionsText,
      max_output_tokens: this.maxOutputTokens,
      tools: [],
      tool_choice: 'auto',
      truncation: this.session!.contextPolicy === 'reject' ? 'disabled' : 'auto',
      // weft's sampling extensions, as set
      ...toWireSampling(this.sampling),
      ...(this.stop ? { stop: this.stop } : {}),
    };
  }

  private get conversationId(): string {
    return `conv_${this.session!.id.replace(/^sess_/, '')}`;
  }

  /** The API key's budget (a weft field of session.created and session.updated). */
  private budget(): Record<string, unknown> {
    return this.ctx.tenant ? { budget: this.ctx.tenant.budget() } : {};
  }

  // --- responses -------------------------------------------------------------------------------

  private respond(ev: Extract<RealtimeEvent, { type: 'response.create' }>): void {
    if (this.gw.draining) throw new WeftError('WEFT_DRAINING', 'the server is shutting down and starts no new responses');
    const s = this.session!;
    const p = ev.response;
    const tenant = this.ctx.tenant;
    const max = p.maxOutputTokens ?? this.maxOutputTokens;
    const limit = max === 'inf' ? this.gw.limits().max_context! : max; // 'inf': the session's room in the context
    const maxTokens = tenant ? tenant.capMaxTokens(limit) : limit;
    const r = (this.current = newResponse(this.items.newId(), ev.event_id, max, p.metadata ?? null));
    const before = [...s.messages];
    s.respondAsync({
      sampling: { ...this.sampling, ...p.sampling },
      maxTokens,
      stop: p.stop ?? this.stop,
      isBlocked: () => this.link.blocked(),
      signal: r.abort.signal,
      // the key pays for the prompt tokens the KV does not hold (else WEFT_KEY_BUDGET, and no response), then each generated token
      admit: (numPrompt, numCached) => {
        tenant?.checkBudget(numPrompt - numCached);
        tenant?.charge(numPrompt - numCached);
      },
    }).then(
      (turn) => this.started(r, turn, before),
      (err) => {
        this.current = null;
        if (!this.closed) this.error(asRealtimeError(toWeftError(err), r.eventId), (err as { retryAfterMs?: number }).retryAfterMs);
        this.drainQueue();
      },
    );
  }

  private started(r: Response, turn: Turn, before: ChatMessage[]): void {
    r.turn = turn;
    // the oldest exchanges the context policy left out are gone from the conversation
    for (const id of this.items.removedSince(before)) this.emit({ type: 'conversation.item.deleted', item_id: id });
    this.emit({ type: 'response.created', response: responseJson(r, this.conversationId, 'in_progress', null, [], null) } satisfies Omit<RT.ResponseCreatedEvent, 'event_id'>);
    const item = { id: r.itemId, object: 'realtime.item', type: 'message', role: 'assistant', status: 'in_progress', content: [] } satisfies RT.ConversationItem;
    this.emit({ type: 'response.output_item.added', response_id: r.id, output_index: 0, item } satisfies Omit<RT.ResponseOutputItemAddedEvent, 'event_id'>);
    this.emit({ type: 'conversation.item.added', previous_item_id: this.items.lastId(), item } satisfies Omit<RT.ConversationItemAdded, 'event_id'>);
    this.emit({ type: 'response.content_part.added', ...this.partIds(r), part: { type: 'text', text: '' } } satisfies Omit<RT.ResponseContentPartAddedEvent, 'event_id'>);
    const listener = { delta: (_seq: number, text: string, token?: TokenInfo) => this.delta(r, text, token), done: (d: TurnDone) => this.finish(r, d, null), fail: (err: unknown) => this.finish(r, null, err) };
    const tenant = this.ctx.tenant;
    turn.listen(
      tenant
        ? budgetTap(listener, tenant, () => {
            r.budgetSpent = true;
            turn.cancel();
          })
        : listener,
    );
    if (r.cancelled || this.closed) turn.cancel(); // cancelled while it was being prepared
  }

  private partIds(r: Response): { response_id: string; item_id: string; output_index: 0; content_index: 0 } {
    return { response_id: r.id, item_id: r.itemId, output_index: 0, content_index: 0 };
  }

  /** One generated token (its text may be ''), or text held back to the end. */
  private delta(r: Response, text: string, token: TokenInfo | undefined): void {
    r.text += text;
    r.numChars += numChars(text);
    // a last delta without a token carries text held back to the end: the last token's
    if (token) r.ends.push(r.numChars);
    else if (r.ends.length > 0) r.ends[r.ends.length - 1] = r.numChars;
    if (text === '') return;
    const now = performance.now();
    if (r.lastDeltaAt > 0) this.gw.metrics.interToken.observe((now - r.lastDeltaAt) / 1000);
    r.lastDeltaAt = now;
    this.sendText(`${r.deltaPrefix}${JSON.stringify(text)},"event_id":"event_${nextEventId++}"}`);
  }

  /** The response ended (`d`), or could not be settled (`err`): the closing events, then what waited. */
  private finish(r: Response, d: TurnDone | null, err: unknown): void {
    this.current = null;
    const { status, details, error } = outcome(r, d, err);
    if (error) this.gw.metrics.errors.inc({ code: error.code });
    // the answer joined the conversation (not when the turn could not be settled)
    const added = d ? this.items.answered({ itemId: r.itemId, ends: r.ends }, status === 'completed' ? 'completed' : 'incomplete') : null;
    const item = added?.item ?? { id: r.itemId, object: 'realtime.item', type: 'message', role: 'assistant', status: 'incomplete', content: [{ type: 'output_text', text: r.text }] };
    const u = usage(r, d);
    this.observe(u, d);
    this.emit({ type: 'response.output_text.done', ...this.partIds(r), text: r.text } satisfies Omit<RT.ResponseTextDoneEvent, 'event_id'>);
    this.emit({ type: 'response.content_part.done', ...this.partIds(r), part: { type: 'text', text: r.text } } satisfies Omit<RT.ResponseContentPartDoneEvent, 'event_id'>);
    this.emit({ type: 'response.output_item.done', response_id: r.id, output_index: 0, item } satisfies Omit<RT.ResponseOutputItemDoneEvent, 'event_id'>);
    if (added) this.emit({ type: 'conversation.item.done', ...added } satisfies Omit<RT.ConversationItemDone, 'event_id'>);
    this.emit({ type: 'response.done', response: responseJson(r, this.conversationId, status, details, [item], u) } satisfies Omit<RT.ResponseDoneEvent, 'event_id'>);
    this.drainQueue();
  }

  private cancel(responseId: string | undefined): void {
    const r = this.current;
    if (!r || (responseId !== undefined && responseId !== r.id)) {
      throw new RealtimeError('WEFT_NO_RESPONSE', responseId === undefined ? 'no response is running' : `response ${JSON.stringify(responseId)} is not running`, responseId === undefined ? null : 'response_id');
    }
    r.cancelled = true;
    r.turn?.cancel(); // one being prepared is cancelled once it starts
  }

  /** A response's tokens and latencies in the gateway's metrics. */
  private observe(u: RT.RealtimeResponseUsage, d: TurnDone | null): void {
    const m = this.gw.metrics;
    m.promptTokens.inc(u.input_tokens);
    m.cachedTokens.inc(u.input_token_details!.cached_tokens);
    m.generatedTokens.inc(u.output_tokens);
    if (!d) return;
    m.queueWait.observe(d.timing.queue_ms / 1000);
    if (d.usage.completion_tokens > 0) m.ttft.observe(d.timing.ttft_ms / 1000);
  }

  // --- the socket ------------------------------------------------------------------------------

  private emit(ev: { type: string } & Record<string, unknown>): void {
    const { type, ...rest } = ev;
    this.sendText(JSON.stringify({ type, event_id: `event_${nextEventId++}`, ...rest }));
  }

  /** A frame the socket link refused (rate limits, unread answers): the link counted it. */
  sendError(code: WeftErrorCode, message: string, retryAfterMs?: number): void {
    this.emitError(new RealtimeError(code, message), retryAfterMs);
  }

  /** An error event in OpenAI's shape, weft's code in `code` (`retry_after_ms`, a weft field, when waiting helps). */
  private error(e: RealtimeError, retryAfterMs?: number): void {
    this.gw.metrics.errors.inc({ code: e.code });
    this.emitError(e, retryAfterMs);
  }

  private emitError(e: RealtimeError, retryAfterMs?: number): void {
    const error = { ...openaiError(e, e.param).error, event_id: e.eventId ?? null, ...(retryAfterMs === undefined ? {} : { retry_after_ms: retryAfterMs }) };
    this.emit({ type: 'error', error } satisfies Omit<RT.RealtimeErrorEvent, 'event_id'>);
  }

  private refuse(code: WeftErrorCode, message: string, closeCode = 1013): void {
    this.error(new RealtimeError(code, message));
    this.sock.close(closeCode, code);
    this.onClose();
  }

  /** Called by the transport when the socket is gone: a running response is cancelled and the session closed. */
  onClose(): void {
    if (this.closed) return;
    this.closed = true;
    this.releaseLease?.();
    this.current?.abort.abort();
    this.queue.length = 0;
    const s = this.session;
    if (s) {
      void s
        .close()
        .catch(() => undefined)
        .finally(() => {
          this.gw.sessions.delete(s);
          this.gw.metrics.sessionsActive.set(this.gw.sessions.size);
        });
    }
    this.gw.forgetRealtime(this);
  }

  /** The server drains: an error event says so (running responses may finish; new ones are refused). */
  notifyDraining(retryAfterMs: number): void {
    if (this.closed || !this.session) return;
    this.error(new RealtimeError('WEFT_DRAINING', `the server is shutting down: a running response may finish within ${retryAfterMs} ms, new ones are refused; reconnect later or to another instance`), retryAfterMs);
  }

  /** The drain's time is up: a running response ends now (status failed, WEFT_DRAINING). */
  cancelForShutdown(): void {
    const r = this.current;
    if (r) {
      r.shutdown = true;
      r.turn?.cancel();
      r.abort.abort();
    }
    this.queue.length = 0;
  }

  closeForShutdown(): void {
    if (this.closed) return;
    this.onClose();
    this.sock.close(1001, 'server shutting down');
  }
}

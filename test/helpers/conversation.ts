/**
 * A protocol v1 conversation that survives its connection: on a close it reconnects (through a
 * proxy) with its resume token and, mid-answer, the response id and the last seq it got, and it
 * records every delta frame so that a test can check each seq came exactly once.
 */
import WebSocket from 'ws';
import type { Ev } from './ws-client.js';

export interface TurnResult {
  responseId: string;
  text: string;
  /** Every seq received, in order (duplicates included: a test checks there are none). */
  seqs: number[];
  done: Ev;
  /** Reconnects during the turn. */
  reconnects: number;
}

/** Codes after which the same message is sent again once reconnected (nothing of it ran). */
const RESEND = new Set(['WEFT_DRAINING', 'WEFT_SESSION_ELSEWHERE', 'WEFT_NOT_READY', 'WEFT_TOO_MANY_SESSIONS']);

export class Conversation {
  token: string | null = null;
  sessionId = '';
  /** Instance ids that served the session (from the resume tokens' prefixes), in order. */
  readonly instances: string[] = [];
  /** Every error event seen (a test decides which are allowed). */
  readonly errors: Ev[] = [];
  private ws: WebSocket | null = null;
  private inbox: Ev[] = [];
  private wake: (() => void) | null = null;
  private closedAt = 0;

  constructor(
    private readonly url: string,
    private readonly opts: { headers?: Record<string, string>; retryMs?: number; deadlineMs?: number } = {},
  ) {}

  /** Opens (or reopens) the socket: a fresh session, or a resume of this one after `lastSeq` of `responseId`. */
  private async open(lastSeq?: number, responseId?: string): Promise<Ev> {
    const deadline = Date.now() + (this.opts.deadlineMs ?? 60_000);
    for (let attempt = 0; ; attempt++) {
      if (Date.now() > deadline) throw new Error(`could not reconnect session ${this.sessionId}: ${JSON.stringify(this.errors.slice(-3))}`);
      const q = this.token ? `?resume=${encodeURIComponent(this.token)}${responseId ? `&response_id=${encodeURIComponent(responseId)}&last_seq=${lastSeq ?? -1}` : ''}` : '';
      const ws = new WebSocket(this.url + q, { headers: this.opts.headers });
      // every frame is kept from the first: the replay can come in the same read as session.resumed
      const buf: Ev[] = [];
      let closed = false;
      let notify: (() => void) | null = null;
      ws.on('message', (d) => {
        buf.push(JSON.parse(String(d)) as Ev);
        if (this.ws === ws) this.wake?.();
        notify?.();
      });
      ws.on('close', () => {
        closed = true;
        if (this.ws === ws) {
          this.ws = null;
          this.closedAt = Date.now();
          this.wake?.();
        }
        notify?.();
      });
      ws.on('error', () => undefined);
      while (buf.length === 0 && !closed) await new Promise<void>((r) => (notify = r));
      notify = null;
      const first = buf.shift() ?? null;
      if (first && (first.type === 'session.created' || first.type === 'session.resumed') && !closed) this.inbox = buf;
      if (first && (first.type === 'session.created' || first.type === 'session.resumed') && !closed) {
        if (first.type === 'session.created' && this.token) throw new Error(`session ${this.sessionId} was lost: a fresh session was created instead of a resume`);
        this.ws = ws;
        this.token = first.resume_token ?? this.token;
        this.sessionId = (first.session as { id: string }).id;
        const inst = this.token!.slice(0, this.token!.indexOf('.'));
        if (this.instances[this.instances.length - 1] !== inst) this.instances.push(inst);
        return first;
      }
      if (first?.type === 'error') {
        this.errors.push(first);
        if (first.code === 'WEFT_RESUME_UNKNOWN') throw new Error(`session ${this.sessionId} was lost: ${first.message}`);
      }
      ws.terminate();
      await new Promise((r) => setTimeout(r, Math.min(1000, (this.opts.retryMs ?? 100) * (attempt + 1))));
    }
  }

  async start(): Promise<void> {
    await this.open();
  }

  /** The next event, or null when the socket closed. */
  private async next(): Promise<Ev | null> {
    for (;;) {
      if (this.inbox.length > 0) return this.inbox.shift()!;
      if (!this.ws) return null;
      await new Promise<void>((r) => {
        this.wake = r;
        setTimeout(r, 1000);
      });
      this.wake = null;
    }
  }

  /** Sends a message and reads its answer to the end, across reconnects. */
  async turn(content: string, sampling: Record<string, unknown>): Promise<TurnResult> {
    let responseId = '';
    const seqs: number[] = [];
    let text = '';
    let reconnects = 0;
    let sent = false;
    for (;;) {
      if (!this.ws) {
        reconnects++;
        const r = await this.open(seqs.length > 0 ? seqs[seqs.length - 1] : -1, responseId || undefined);
        const running = r.response as { response_id: string; status: string } | null | undefined;
        // the message never started (its response.created never came): send it again
        if (sent && !responseId && !(running && running.status === 'in_progress')) sent = false;
        if (running && !responseId && running.status === 'in_progress') responseId = running.response_id;
      }
      if (!sent) {
        this.ws!.send(JSON.stringify({ type: 'message.create', content, sampling }));
        sent = true;
      }
      const ev = await this.next();
      if (!ev) continue; // closed: reconnect
      if (ev.type === 'error') {
        this.errors.push(ev);
        if (ev.code === 'WEFT_REPLAY_GAP') throw new Error(`replay gap in session ${this.sessionId}: ${JSON.stringify(ev)}`);
        if (RESEND.has(ev.code) && !responseId) {
          sent = false;
          await new Promise((r) => setTimeout(r, this.opts.retryMs ?? 100));
          continue;
        }
        if (ev.code === 'WEFT_SESSION_ELSEWHERE') continue; // the socket closes: reconnect
        throw new Error(`session ${this.sessionId}: ${JSON.stringify(ev)}`);
      }
      if (ev.type === 'response.created') responseId = ev.response_id;
      else if (ev.type === 'response.delta' && ev.response_id === responseId) {
        seqs.push(ev.seq);
        text += ev.text;
      } else if (ev.type === 'response.done' && ev.response_id === responseId) {
        return { responseId, text, seqs, done: ev, reconnects };
      }
    }
  }

  close(): void {
    const ws = this.ws;
    this.ws = null;
    ws?.close();
  }

  /** ms since the socket last closed (0: never). */
  get closedFor(): number {
    return this.closedAt ? Date.now() - this.closedAt : 0;
  }
}

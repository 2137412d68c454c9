/**
 * What a WebSocket client knows of its session: its resume token (and the tokens of sessions it
 * left, or rotated away), the sampling defaults and settings the server echoed, the message being
 * typed, and its responses (the one running, the latest, those whose response.done came). Also
 * the checks of the response stream: gapless deltas, a well-formed response.done.
 */
import type { FrameItem } from './frames.js';
import type { Run } from './run.js';
import { isPlainObject } from './util.js';

export interface OpenResponse {
  id: string;
  /** The next delta's seq; -1: whatever comes first (a replay after a resume). */
  seq: number;
  deadline: number;
  /** A replay (after session.resumed): its deltas and response.done come again. */
  replay?: boolean;
}

/** A failure of the connection's worker: kind, rule (the signature), detail, the frame it answers. */
export type FailFn = (kind: string, rule: string, detail: string, item?: FrameItem) => void;

/** A session's settings as the client last saw them, kept under its token while it waits for a resume. */
interface Settings {
  /** The sampling defaults (undefined: not known). */
  defaults: Record<string, unknown> | undefined;
  /** response.progress turned on (undefined: not known). */
  progress: boolean | undefined;
  /** The typed message may hold a lone surrogate. */
  typedUnsure: boolean;
}

export class ClientSession implements Settings {
  token: string | null = null;
  defaults: Record<string, unknown> | undefined = {};
  progress: boolean | undefined = false;
  typedUnsure = false;
  /** The response running (from response.created, or a replay) until its response.done. */
  open: OpenResponse | null = null;
  /** The session's latest response (what response.truncate and session.resume act on). */
  latest: string | null = null;
  /** Responses whose response.done came. */
  readonly doneIds = new Set<string>();
  /** A response the server may replay unasked (after a resume that named last_seq or response_id): its events are not strays. */
  replayable: string | null = null;
  /** event_ids of this connection's frames already answered: a second answer is reported, then skipped. */
  readonly answeredIds = new Set<string>();
  /** Tokens of sessions left for a resume (oldest first, at most 4), with their settings. */
  readonly oldTokens: string[] = [];
  private readonly saved = new Map<string, Settings>();
  /** Tokens replaced by rotate_resume_token: they must not resume any more. */
  private readonly rotatedAway = new Set<string>();

  constructor(
    private readonly run: Run,
    private readonly fail: FailFn,
  ) {}

  /** The connection is being left: the session waits for a resume under its token. */
  leave(): void {
    if (!this.token) return;
    this.saved.set(this.token, { defaults: this.defaults, progress: this.progress, typedUnsure: this.typedUnsure });
    this.remember(this.token);
  }

  private remember(token: string): void {
    this.oldTokens.push(token);
    if (this.oldTokens.length > 4) this.oldTokens.shift();
  }

  /** session.updated carried a new token: the old one stops working (and is tried again now and then). */
  rotated(token: string): void {
    if (this.token) {
      this.rotatedAway.add(this.token);
      this.remember(this.token);
    }
    this.token = token;
  }

  /** The token a `?resume=` value (percent-encoded) names, if this client was given it. */
  savedToken(resume: string): string | undefined {
    return [...this.saved.keys()].find((t) => encodeURIComponent(t) === resume);
  }

  isRotatedAway(resume: string): boolean {
    return [...this.rotatedAway].some((t) => encodeURIComponent(t) === resume);
  }

  /** A connection got session.created (`resumed` undefined) or session.resumed of the session saved under `resumed`. */
  connected(token: string | null, resumed: string | undefined | null): void {
    this.token = token;
    const s = resumed === null ? { defaults: {}, progress: false, typedUnsure: false } : resumed === undefined ? undefined : this.saved.get(resumed);
    this.defaults = s?.defaults;
    this.progress = s?.progress;
    this.typedUnsure = s?.typedUnsure ?? true;
    this.open = null;
    this.answeredIds.clear();
    this.latest = null;
    this.replayable = null;
  }

  /** The session was closed (session.closed): its token must not resume. */
  ended(): void {
    this.open = null;
    this.token = null;
  }

  /** response.created: the response runs. */
  created(id: string, deadline: number, item: FrameItem): void {
    if (this.open) this.fail('two-responses', 'response.created while another response runs', `response ${id} created while ${this.open.id} had no response.done`, item);
    this.open = { id, seq: 0, deadline };
    this.latest = id;
    this.replayable = null;
  }

  /** Handles response.delta / response.done of the open response (and a replay's WEFT_REPLAY_GAP). Returns false for any other event. */
  streamEvent(m: Record<string, unknown>, item: FrameItem | undefined): boolean {
    const t = m['type'];
    if (t === 'error' && m['code'] === 'WEFT_REPLAY_GAP' && this.open?.replay && m['response_id'] === this.open.id) {
      // the deltas the replay window no longer holds: the text so far, then the stream from next_seq
      if (typeof m['text'] !== 'string' || typeof m['next_seq'] !== 'number') this.fail('shape', 'WEFT_REPLAY_GAP without text or next_seq', JSON.stringify(m).slice(0, 300), item);
      this.open.seq = typeof m['next_seq'] === 'number' ? m['next_seq'] : -1;
      this.run.count('WEFT_REPLAY_GAP (replay)');
      return true;
    }
    if (t !== 'response.delta' && t !== 'response.done') return false;
    if ((!this.open || m['response_id'] !== this.open.id) && m['response_id'] === this.replayable) {
      this.run.count(`replayed ${t}`);
      return true;
    }
    if (!this.open || m['response_id'] !== this.open.id) {
      this.fail('stray', `${t} of no running response`, `got ${JSON.stringify(m).slice(0, 300)} (running: ${this.open?.id ?? 'none'})`, item);
      return true;
    }
    if (t === 'response.delta') {
      if ((this.open.seq >= 0 && m['seq'] !== this.open.seq) || typeof m['seq'] !== 'number' || typeof m['text'] !== 'string') this.fail('shape', `response.delta out of sequence or without text${this.open.replay ? ' (a replay)' : ''}`, `expected seq ${this.open.seq}, got ${JSON.stringify(m).slice(0, 200)}`, item);
      this.open.seq = typeof m['seq'] === 'number' ? m['seq'] + 1 : this.open.seq + 1;
      return true;
    }
    this.checkDone(m, item);
    this.doneIds.add(this.open.id);
    if (this.open.replay) this.run.count('replay');
    else this.run.responses++;
    this.open = null;
    return true;
  }

  private checkDone(m: Record<string, unknown>, item: FrameItem | undefined): void {
    const reason = m['finish_reason'];
    if (!['stop', 'length', 'cancelled', 'shutdown', 'error'].includes(reason as string)) this.fail('shape', 'response.done with an unknown finish_reason', JSON.stringify(m).slice(0, 300), item);
    if (reason === 'error') {
      const err = m['error'];
      const code = isPlainObject(err) ? err['code'] : undefined;
      if (typeof code !== 'string' || !code.startsWith('WEFT_')) this.fail('uncoded', 'response.done error without a WEFT_ code', JSON.stringify(m).slice(0, 300), item);
      else if (code === 'WEFT_INTERNAL') this.fail('internal', 'a response failed with WEFT_INTERNAL', JSON.stringify(m).slice(0, 400), item);
      else this.run.note(`${this.run.transport}: a response ended with error ${code}`);
    }
  }
}

/**
 * The WebSocket part: each worker is one connection (reconnecting, resuming) that sends its
 * frames one at a time and waits for each answer: the oracle's expectation (oracle.ts) checked by
 * ws-answer.ts, the response stream by ws-session.ts. A frame with no answer (input.append,
 * input.clear) is followed by a WebSocket ping: its pong, which the server sends after it has
 * handled the frame, says that no answer is coming.
 */
import { FrameGen, withLatest, type FrameItem } from './frames.js';
import { expectFor, hasLoneSurrogate, judge, type Expectation, type Judgement } from './oracle.js';
import { showFrame } from './report.js';
import type { Run, Suspect } from './run.js';
import { isPlainObject, sleep } from './util.js';
import { checkAnswer, checkCancelDone, checkError, describeExp, type AnswerContext, type FollowUp } from './ws-answer.js';
import { WsClient, replayFrames, type WsEvent } from './ws-client.js';
import { ClientSession } from './ws-session.js';

export class WsWorker implements AnswerContext {
  private readonly gen: FrameGen;
  private client: WsClient | null = null;
  readonly session: ClientSession;
  private nextResume: string | null = null;
  private nextExtra = '';
  private connectedRetries = 0;
  /** Frames since this connection opened (replayed when a crash does not reproduce with one frame). */
  private history: FrameItem[] = [];
  /** The server incarnation this connection belongs to. */
  private epoch = 0;
  sentAt = 0;

  constructor(
    readonly run: Run,
    readonly conn: number,
    private budget: { left: number },
  ) {
    this.gen = new FrameGen(run.o.seed, run.transport, conn, run.limit);
    this.session = new ClientSession(run, this.fail);
  }

  readonly fail = (kind: string, rule: string, detail: string, item?: FrameItem): void => {
    this.run.fail({
      phase: 'ws',
      kind,
      signature: `ws:${kind}: ${rule}`,
      detail,
      conn: item ? this.conn : undefined,
      index: item?.index,
      input: item ? showFrame(item.data, item.binary) : undefined,
      log: item?.log,
    });
  };

  private drop(): void {
    this.client?.terminate();
    this.client = null;
    this.session.open = null;
  }

  async work(): Promise<void> {
    while (!this.run.gaveUp) {
      if (this.budget.left <= 0 || this.run.overDeadline()) break;
      await this.run.ready;
      if (this.run.gaveUp) break;
      if (!this.client && !(await this.connect())) {
        if (this.run.gaveUp) break;
        await sleep(200);
        continue;
      }
      const item = this.gen.next();
      if (item.kind === 'reconnect') {
        await this.finishResponse();
        if (!this.client) continue;
        const s = this.session;
        s.leave();
        const c = this.client;
        if (item.how === 'terminate') c.terminate();
        else c.ws.close(item.how === 'close' ? 1000 : 4000);
        this.client = null;
        const token = item.resume === 'own' ? s.token : item.resume === 'old' ? (s.oldTokens[0] ?? null) : undefined;
        this.nextResume = token === undefined ? (item.resume as string | null) : token === null ? null : encodeURIComponent(token);
        this.nextExtra = this.nextResume === null ? '' : item.extra;
        continue;
      }
      if (this.budget.left <= 0) break;
      this.budget.left--;
      this.run.frames++;
      await this.frame(item);
    }
    await this.finishResponse();
    if (this.client) {
      this.client.ws.close(1000);
      this.client = null;
    }
  }

  /**
   * The next event that can answer something. Skipped on the way: what the server may send at any
   * time (response.progress after progress: true, session.draining, a typing-ahead prefill's error)
   * and pongs other than `pong`'s.
   */
  private async next(c: WsClient, deadline: number, pong?: string): Promise<WsEvent> {
    for (;;) {
      const e = await c.next(deadline);
      if (e.kind === 'pong') {
        if (e.data === pong) return e;
        continue;
      }
      if (e.kind !== 'message' || !this.background(e.text)) return e;
    }
  }

  /** Whether a frame from the server is one that answers nothing (and checks it). */
  private background(text: string): boolean {
    if (!/^\{"type":"(response\.progress|session\.draining|error)"/.test(text)) return false;
    const m = parseObject(text);
    if (!m) return false;
    if (m['type'] === 'error') {
      // a typing-ahead prefill that failed: reported with an error that answers no frame
      if (m['event_id'] !== undefined || typeof m['message'] !== 'string' || !m['message'].startsWith('typing-ahead:')) return false;
      this.run.count(`typing-ahead ${String(m['code'])}`);
      if (m['code'] === 'WEFT_INTERNAL') this.fail('internal', 'a typing-ahead prefill failed with WEFT_INTERNAL', text.slice(0, 300));
      else this.run.note(`${this.run.transport}: a typing-ahead prefill failed with ${String(m['code'])}`);
      return true;
    }
    this.run.count(String(m['type']));
    if (m['type'] === 'response.progress') {
      if (this.session.progress === false) this.fail('unsolicited', 'response.progress without progress: true', text.slice(0, 300));
      else if (m['response_id'] !== this.session.open?.id) this.fail('stray', 'response.progress of no running response', `${text.slice(0, 300)} (running: ${this.session.open?.id ?? 'none'})`);
    }
    return true;
  }

  /** Opens a connection (resuming when the last reconnect item asked for it). */
  private async connect(): Promise<boolean> {
    const resume = this.nextResume;
    const extra = this.nextExtra;
    this.nextResume = null;
    this.nextExtra = '';
    this.epoch = this.run.epoch;
    // a '#' would make the rest a fragment (never sent, and the ws client refuses it): it goes percent-encoded
    const url = `ws://127.0.0.1:${this.run.port}/v1/ws${resume !== null ? `?resume=${resume.replace(/#/g, '%23')}${extra}` : ''}`;
    const wanted = resume !== null ? this.session.savedToken(resume) : undefined;
    let c: WsClient;
    try {
      c = await WsClient.open(url, this.run.o.answerTimeoutMs);
    } catch (err) {
      if (await this.run.lost(this.epoch)) return false;
      this.fail('connect', `cannot connect${resume !== null ? ' (with a resume token)' : ''}: ${(err as Error).message.replace(/\d+/g, 'N').slice(0, 80)}`, `${url.slice(0, 200)}: ${(err as Error).message}`);
      return false;
    }
    const deadline = performance.now() + this.run.o.answerTimeoutMs;
    // coded errors may come first (WEFT_RESUME_UNKNOWN, a bad last_seq...), then session.created or session.resumed
    const codes: string[] = [];
    let e: WsEvent;
    let m: Record<string, unknown> | null;
    for (;;) {
      e = await this.next(c, deadline);
      m = e.kind === 'message' ? parseObject(e.text) : null;
      if (m?.['type'] !== 'error' || typeof m['code'] !== 'string' || !m['code'].startsWith('WEFT_')) break;
      codes.push(m['code']);
      this.run.count(`connect: ${m['code']}`);
    }
    const sawUnknown = codes.includes('WEFT_RESUME_UNKNOWN');
    if (sawUnknown && resume === null) this.fail('connect', 'WEFT_RESUME_UNKNOWN without a resume token', url);
    this.run.count(`connect: ${String(m?.['type'] ?? e.kind)}`);
    if (m?.['type'] === 'session.created' || m?.['type'] === 'session.resumed') {
      const resumed = m['type'] === 'session.resumed';
      if (resumed && resume !== null && this.session.isRotatedAway(resume)) this.fail('connect', 'a rotated-away resume token still resumes its session', url.slice(0, 200));
      else if (resumed && (resume === null || !wanted)) this.fail('connect', 'session.resumed for a token never issued', `${url.slice(0, 200)}`);
      const s = m['session'];
      if (isPlainObject(s) && isPlainObject(s['limits'])) {
        const l = s['limits'];
        if (typeof l['max_context'] === 'number') this.run.maxContext = l['max_context'];
      }
      if (!resumed && resume !== null && !sawUnknown) {
        // an empty `?resume=` is no resume (docs/protocol.md); `?resume= ` is empty once the URL is parsed
        if (resume.trim() !== '') this.fail('connect', 'a resume token that was not taken got no WEFT_RESUME_UNKNOWN', url.slice(0, 200));
      }
      this.session.connected(typeof m['resume_token'] === 'string' ? m['resume_token'] : null, resumed ? wanted : null);
      this.client = c;
      this.history = [];
      this.connectedRetries = 0;
      if (resumed && extra) {
        // the resume's own errors (a bad last_seq, a gap) may follow session.resumed: take them now
        for (;;) {
          const x = await this.next(c, performance.now() + 500);
          const xm = x.kind === 'message' ? parseObject(x.text) : null;
          if (xm?.['type'] === 'error' && xm['event_id'] === undefined && typeof xm['code'] === 'string' && xm['code'].startsWith('WEFT_')) {
            this.run.count(`connect: ${xm['code']} after session.resumed`);
            continue;
          }
          if (x.kind !== 'timeout') c.unshift(x);
          break;
        }
      }
      const r = m['response'];
      if (resumed && isPlainObject(r) && typeof r['response_id'] === 'string') {
        this.session.latest = r['response_id'];
        // a response still running, or one whose response.done never reached us, is replayed (all its deltas, then response.done)
        if (r['status'] === 'in_progress' || !this.session.doneIds.has(r['response_id'])) this.session.open = { id: r['response_id'], seq: -1, deadline: performance.now() + this.run.o.responseTimeoutMs };
        else if (extra) this.session.replayable = r['response_id'];
      }
      return true;
    }
    c.terminate();
    if (await this.run.lost(this.epoch)) return false;
    // a token whose session is still connected elsewhere (its old socket's close not seen yet): refused with a code, retry later
    if (e.kind === 'close' && codes.includes('WEFT_SESSION_CONNECTED')) {
      if (this.connectedRetries++ < 4) {
        this.nextResume = resume;
        this.nextExtra = extra;
        await sleep(250 * this.connectedRetries);
      }
      return false;
    }
    const what = e.kind === 'timeout' ? 'no session.created' : e.kind === 'close' ? `closed (${e.code}) after ${codes.join(', ') || 'nothing'}` : e.kind === 'message' ? `got ${e.text.slice(0, 200)}` : e.kind;
    this.fail('connect', `on connect: ${what.replace(/\d+/g, 'N').slice(0, 60)}`, `${url.slice(0, 200)}: ${what}`);
    return false;
  }

  /** Waits for the open response's response.done (deltas checked on the way). */
  private async finishResponse(): Promise<void> {
    const s = this.session;
    while (s.open && this.client) {
      const e = await this.next(this.client, s.open.deadline);
      if (e.kind === 'timeout') {
        if (await this.run.lost(this.epoch)) return this.drop();
        this.fail('response-stall', `response.done never came${s.open.replay ? ' (a replay)' : ''}`, `response ${s.open.id}: no response.done within ${this.run.o.responseTimeoutMs} ms of its response.created (last seq ${s.open.seq - 1})`);
        return this.drop();
      }
      if (e.kind === 'close') {
        if (await this.run.lost(this.epoch)) return this.drop();
        this.fail('closed', 'connection closed during a response', `closed (${e.code} ${e.reason}) while response ${s.open.id} ran`);
        this.client = null;
        s.open = null;
        return;
      }
      if (e.kind !== 'message') continue;
      const m = this.parseEvent(e.text, undefined);
      if (m && !s.streamEvent(m, undefined)) this.fail('unsolicited', `${String(m['type'])} while only a response runs`, `got ${e.text.slice(0, 300)}`);
    }
  }

  private parseEvent(text: string, item: FrameItem | undefined): Record<string, unknown> | null {
    const m = parseObject(text);
    if (!m) this.fail('uncoded', 'the server sent a frame that is not a JSON object', `got ${text.slice(0, 300)}`, item);
    else if (typeof m['type'] !== 'string') this.fail('uncoded', 'the server sent an event without a type', `got ${text.slice(0, 300)}`, item);
    else return m;
    return null;
  }

  private async frame(generated: FrameItem): Promise<void> {
    if (!generated.pipelined) await this.finishResponse();
    if (!this.client) return; // lost while finishing: the next loop reconnects
    const c = this.client;
    const s = this.session;
    const item = s.latest ? withLatest(generated, s.latest) : generated;
    const j = judge(item.data, item.binary, this.run.limit);
    const exp = expectFor(j, s.open !== null, s.defaults, s.typedUnsure);
    const suspect: Suspect = {
      what: `frame ${this.run.transport}:${this.conn}:${item.index}`,
      sentAt: performance.now(),
      input: showFrame(item.data, item.binary, 300),
      conn: this.conn,
      index: item.index,
      log: item.log,
      replay: (port) => replayFrames(port, [item], this.run.o.answerTimeoutMs),
    };
    if (this.history.length) {
      const before = [...this.history];
      suspect.replayWith = { what: `after the ${before.length} frame(s) before it on its connection, from frame ${this.run.transport}:${this.conn}:${before[0]!.index}`, first: before[0]!.index, replay: (port) => replayFrames(port, [...before, item], this.run.o.answerTimeoutMs) };
    }
    this.run.remember(suspect);
    this.history.push(item);
    if (this.history.length > 64) this.history.shift();
    try {
      this.sentAt = performance.now();
      await c.send(item);
      const follow = await this.answer(item, j, exp);
      if (j.problems.length === 0 && !j.tooLarge) this.typed(j);
      if (!this.client) return;
      if (follow.kind === 'close') await this.closeAfterSessionClosed(item);
      else if (follow.kind === 'error') await this.resumeError(item, j, exp, follow.code);
      else if (follow.kind === 'replay') s.open = { id: follow.responseId, seq: follow.fromSeq, deadline: performance.now() + this.run.o.responseTimeoutMs, replay: true };
    } finally {
      suspect.doneAt = performance.now();
    }
  }

  /** The message being typed, after a valid frame: may it hold what `content` may not? */
  private typed(j: Judgement): void {
    if (j.type === 'input.clear' || j.commit) this.session.typedUnsure = false;
    else if (j.text !== undefined && hasLoneSurrogate(j.text)) this.session.typedUnsure = true;
  }

  /** Waits for the frame's answer and checks it; returns what must follow it. */
  private async answer(item: FrameItem, j: Judgement, exp: Expectation): Promise<FollowUp> {
    const c = this.client!;
    const s = this.session;
    // a large message.create may be tokenized off the event loop first. A kind of frame that went
    // unanswered 3 times already gets a short wait (it is reported; the run goes on)
    const kindKey = exp.invalid ? `invalid: ${exp.invalid}` : `valid ${j.type}`;
    const waited = (this.run.unanswered.get(kindKey) ?? 0) >= 3 ? Math.min(1500, this.run.o.answerTimeoutMs) : this.run.o.answerTimeoutMs;
    const deadline = performance.now() + waited;
    // no answer is due: the pong of a ping sent after the frame says that none is coming
    const pong = exp.answers.has('silence') ? c.ping() : undefined;
    for (;;) {
      const e = await this.next(c, deadline, pong);
      if (e.kind === 'pong') {
        this.run.count('no answer (silence)');
        if (exp.echo !== undefined) s.answeredIds.add(exp.echo);
        return { kind: 'nothing' };
      }
      if (e.kind === 'timeout') {
        if (await this.run.lost(this.epoch)) {
          this.drop();
          return { kind: 'nothing' };
        }
        this.run.unanswered.set(kindKey, (this.run.unanswered.get(kindKey) ?? 0) + 1);
        this.fail('no-answer', `no answer to a frame (${exp.invalid ? 'invalid: ' + exp.invalid : (j.type ?? 'valid')})`, `no answer within ${waited} ms (expected ${describeExp(exp)})`, item);
        this.drop();
        return { kind: 'nothing' };
      }
      if (e.kind === 'close') {
        this.client = null;
        s.open = null;
        this.run.count(`close ${e.code}`);
        if (exp.closeOk) {
          if (j.badUtf8 && !j.overHard) this.run.note(`${this.run.transport}: a text frame with invalid UTF-8 closes the connection (${e.code})`);
          if (j.overHard) this.run.note(`${this.run.transport}: a frame over 4x max_frame_bytes closes the connection (${e.code})`);
          return { kind: 'nothing' };
        }
        if (!(await this.run.lost(this.epoch))) this.fail('closed', `connection closed instead of an answer (${e.code === 1006 ? '1006' : e.code})`, `the server closed the connection (${e.code} ${e.reason}) without answering; expected ${describeExp(exp)}`, item);
        return { kind: 'nothing' };
      }
      const m = this.parseEvent(e.text, item);
      if (!m) continue;
      const type = m['type'] as string;
      // a response.done that echoes this frame's event_id, or is 'cancelled' (only this frame can
      // have cancelled it), answers this frame; any other ends the response by itself
      if (type === 'response.done' && s.open && !s.open.replay && m['response_id'] === s.open.id && ((exp.echo !== undefined && m['event_id'] === exp.echo) || m['finish_reason'] === 'cancelled')) {
        checkCancelDone(this, item, j, exp, m);
        s.streamEvent(m, item);
        return { kind: 'nothing' };
      }
      if (s.streamEvent(m, item)) continue;
      const eid = m['event_id'];
      if (typeof eid === 'string' && eid !== exp.echo && s.answeredIds.has(eid) && type !== 'response.done') {
        this.fail('second-answer', `a second answer (${type === 'error' ? String(m['code']) : type}) to an earlier frame`, `got ${JSON.stringify(m).slice(0, 300)} while waiting for the answer to this frame; the frame with event_id ${JSON.stringify(eid).slice(0, 60)} was answered already`, item);
        continue;
      }
      if (exp.echo !== undefined) s.answeredIds.add(exp.echo);
      return checkAnswer(this, item, j, exp, m);
    }
  }

  /** After session.resumed: the error the replay must send (WEFT_REPLAY_GAP for another response_id, WEFT_BAD_ARGUMENT for a last_seq beyond it). */
  private async resumeError(item: FrameItem, j: Judgement, exp: Expectation, code: string): Promise<void> {
    const c = this.client;
    if (!c) return;
    const deadline = performance.now() + this.run.o.answerTimeoutMs;
    const after: Expectation = { ...exp, answers: new Set(), codes: new Set([code]) };
    this.run.count(`${code} expected after session.resumed`);
    for (;;) {
      const e = await this.next(c, deadline);
      if (e.kind === 'message') {
        const m = this.parseEvent(e.text, item);
        if (!m || this.session.streamEvent(m, item)) continue;
        if (m['type'] === 'error') checkError(this, item, j, after, m);
        else this.fail('wrong-answer', `session.resume: ${String(m['type']).slice(0, 40)} after session.resumed instead of ${code}`, `got ${JSON.stringify(m).slice(0, 300)}`, item);
        return;
      }
      if (e.kind === 'close') this.client = null;
      if (!(await this.run.lost(this.epoch))) this.fail('no-answer', `session.resumed without the ${code} that must follow it`, `${e.kind === 'close' ? `closed (${e.code})` : 'nothing'} within ${this.run.o.answerTimeoutMs} ms`, item);
      if (e.kind === 'timeout') this.drop();
      return;
    }
  }

  private async closeAfterSessionClosed(item: FrameItem): Promise<void> {
    const c = this.client!;
    const deadline = performance.now() + this.run.o.answerTimeoutMs;
    for (;;) {
      const e = await this.next(c, deadline);
      if (e.kind === 'close') break;
      if (e.kind === 'timeout') {
        if (await this.run.lost(this.epoch)) break;
        this.fail('no-close', 'the socket stays open after session.closed', `no close within ${this.run.o.answerTimeoutMs} ms of session.closed`, item);
        c.terminate();
        break;
      }
      if (e.kind !== 'message') continue;
      const m = this.parseEvent(e.text, item);
      if (m && !this.session.streamEvent(m, item)) this.fail('unsolicited', `${String(m['type'])} after session.closed`, e.text.slice(0, 300), item);
    }
    this.client = null;
    this.session.ended(); // the session is gone: its token must not resume
  }
}

function parseObject(text: string): Record<string, unknown> | null {
  try {
    const m: unknown = JSON.parse(text);
    return isPlainObject(m) ? m : null;
  } catch {
    return null;
  }
}

/**
 * Whether the answer a frame got is the one the oracle allows: the right event or error code,
 * the event_id echoed, the event's fields (session.updated's merged sampling and new resume
 * token, response.truncated's seq, session.resumed's latest response). Says what must follow the
 * answer (a close after session.closed, the replay after session.resumed).
 */
import type { FrameItem } from './frames.js';
import { afterResumed, type AfterResumed, type AnswerKind, type Expectation, type Judgement, type ResumedResponse } from './oracle.js';
import type { Run } from './run.js';
import { isPlainObject, own } from './util.js';
import type { ClientSession, FailFn } from './ws-session.js';

/** The worker a frame belongs to, as the checks see it. */
export interface AnswerContext {
  readonly run: Run;
  readonly conn: number;
  readonly session: ClientSession;
  readonly fail: FailFn;
  /** When the frame was sent (performance.now()). */
  readonly sentAt: number;
}

/** What comes after an answer: nothing more, the socket's close (session.closed), or what a session.resume replays. */
export type FollowUp = AfterResumed | { kind: 'close' };

/** Codes that only a frame taken as valid can get. */
const VALID_ONLY_CODES = new Set(['WEFT_RESPONSE_IN_PROGRESS', 'WEFT_NO_RESPONSE', 'WEFT_CONTEXT_OVERFLOW', 'WEFT_OVERLOADED', 'WEFT_KV_EXHAUSTED', 'WEFT_BAD_ARGUMENT', 'WEFT_REPLAY_GAP', 'WEFT_TOKEN_OUT_OF_RANGE']);

const ANSWER_EVENTS: Record<string, AnswerKind> = {
  'session.updated': 'session.updated',
  'response.created': 'response.created',
  'session.closed': 'session.closed',
  'response.truncated': 'response.truncated',
  'session.resumed': 'session.resumed',
};

export function describeExp(e: Expectation): string {
  const parts = [...e.answers, ...[...e.codes].filter((c) => c !== 'WEFT_RATE_LIMITED')];
  if (e.closeOk) parts.push('a close');
  return parts.join(' | ') || '?';
}

const why = (j: Judgement, exp: Expectation) => (exp.invalid ? `invalid frame (${exp.invalid}${j.problems[0]?.detail ? ': ' + j.problems[0].detail : ''})` : 'valid frame');

/** Checks one answer (an error or an answer event; the response stream is handled before). */
export function checkAnswer(ctx: AnswerContext, item: FrameItem, j: Judgement, exp: Expectation, m: Record<string, unknown>): FollowUp {
  const { run, fail } = ctx;
  const type = m['type'] as string;
  run.count(type === 'error' ? String(m['code']) : type);
  if (type === 'error' || type === 'session.updated' || type === 'session.resumed') run.slowAnswer(performance.now() - ctx.sentAt, `${type === 'error' ? String(m['code']) : type} for frame ${run.transport}:${ctx.conn}:${item.index} (${item.data.length} bytes; ${item.log.join('; ').slice(0, 160)})`);
  if (type === 'error') {
    checkError(ctx, item, j, exp, m);
    return { kind: 'nothing' };
  }
  const kind = ANSWER_EVENTS[type];
  if (!kind) {
    fail('unexpected', `unexpected event ${type.slice(0, 40)}`, `got ${JSON.stringify(m).slice(0, 300)}; expected ${describeExp(exp)}`, item);
    return { kind: 'nothing' };
  }
  if (!exp.answers.has(kind)) {
    if (exp.invalid) fail('accepted-invalid', exp.invalid, `${why(j, exp)} was accepted: got ${JSON.stringify(m).slice(0, 300)}; expected ${describeExp(exp)}`, item);
    else fail('wrong-answer', `${kind} for ${j.type}`, `got ${JSON.stringify(m).slice(0, 300)}; expected ${describeExp(exp)}`, item);
  }
  checkEcho(ctx, item, exp, m['event_id'], type);
  switch (kind) {
    case 'session.updated':
      checkUpdated(ctx, item, j, m);
      return { kind: 'nothing' };
    case 'response.truncated':
      if (typeof m['response_id'] !== 'string' || typeof m['text'] !== 'string' || m['seq'] !== j.seq) fail('shape', 'response.truncated without response_id, text or the seq asked', JSON.stringify(m).slice(0, 300), item);
      return { kind: 'nothing' };
    case 'response.created':
      if (typeof m['response_id'] !== 'string') fail('shape', 'response.created without a response_id', JSON.stringify(m).slice(0, 300), item);
      else ctx.session.created(m['response_id'], performance.now() + run.o.responseTimeoutMs, item);
      return { kind: 'nothing' };
    case 'session.resumed':
      return checkResumed(ctx, item, j, m);
    default:
      // session.closed: the socket closes next (a running response may end first)
      return { kind: 'close' };
  }
}

/** An error: a WEFT_ code, a message, a code the oracle allows, the event_id echoed. */
export function checkError(ctx: AnswerContext, item: FrameItem, j: Judgement, exp: Expectation, m: Record<string, unknown>): void {
  const { fail } = ctx;
  const code = m['code'];
  if (typeof code !== 'string' || !code.startsWith('WEFT_')) {
    fail('uncoded', 'an error without a WEFT_ code', `got ${JSON.stringify(m).slice(0, 300)}`, item);
    return;
  }
  if (typeof m['message'] !== 'string') fail('shape', 'an error without a message', JSON.stringify(m).slice(0, 300), item);
  if (!exp.codes.has(code)) {
    const detail = `${why(j, exp)} answered ${code} (${String(m['message']).slice(0, 200)}); expected ${describeExp(exp)}`;
    if (exp.invalid && VALID_ONLY_CODES.has(code)) fail('accepted-invalid', exp.invalid, `${detail}: the frame was taken as a valid one`, item);
    else if (!exp.invalid && (code === 'WEFT_BAD_FRAME' || code === 'WEFT_UNKNOWN_TYPE')) fail('rejected-valid', `${j.type} rejected with ${code}`, detail, item);
    else fail('wrong-code', `${exp.invalid ? 'invalid frame' : `valid ${j.type}`} answered ${code}`, detail, item);
  }
  if (code !== 'WEFT_FRAME_TOO_LARGE' && code !== 'WEFT_RATE_LIMITED') checkEcho(ctx, item, exp, m['event_id'], `error ${code}`);
}

/** A response.done that ended the running response because of this frame (a cancel, or what was taken as one). */
export function checkCancelDone(ctx: AnswerContext, item: FrameItem, j: Judgement, exp: Expectation, m: Record<string, unknown>): void {
  if (!exp.answers.has('cancel.done')) {
    if (exp.invalid) ctx.fail('accepted-invalid', exp.invalid, `${why(j, exp)} was taken as a response.cancel: got ${JSON.stringify(m).slice(0, 300)}; expected ${describeExp(exp)}`, item);
    else ctx.fail('wrong-answer', `response.done (${String(m['finish_reason'])}) for ${j.type}`, `got ${JSON.stringify(m).slice(0, 300)}; expected ${describeExp(exp)}`, item);
  } else if (m['finish_reason'] !== 'cancelled') ctx.run.note(`${ctx.run.transport}: a response.cancel was answered by a response.done with finish_reason ${String(m['finish_reason'])}`);
  checkEcho(ctx, item, exp, m['event_id'], 'response.done (cancelled)');
  ctx.run.count('response.done (cancel)');
}

function checkEcho(ctx: AnswerContext, item: FrameItem, exp: Expectation, echoed: unknown, what: string): void {
  if (exp.echo !== undefined && echoed !== exp.echo) {
    ctx.fail('no-echo', `${what.replace(/ WEFT_\w+/, '')} does not echo the event_id${echoed === undefined ? '' : ' (another one)'}`, `${what} carries event_id ${JSON.stringify(echoed)?.slice(0, 80)}; the frame's is ${JSON.stringify(exp.echo).slice(0, 80)}`, item);
  } else if (exp.echo === undefined && echoed !== undefined) {
    ctx.fail('no-echo', `${what.replace(/ WEFT_\w+/, '')} carries an event_id the frame did not have`, `${what} carries event_id ${JSON.stringify(echoed).slice(0, 80)}`, item);
  }
}

/** session.updated: the merged sampling and the context policy echoed; a new resume token when (and only when) one was asked. */
function checkUpdated(ctx: AnswerContext, item: FrameItem, j: Judgement, m: Record<string, unknown>): void {
  const { fail, session } = ctx;
  const s = m['session'];
  const sampling = isPlainObject(s) ? s['sampling'] : undefined;
  if (!isPlainObject(sampling)) fail('shape', 'session.updated without session.sampling', JSON.stringify(m).slice(0, 300), item);
  else {
    for (const [k, v] of Object.entries(j.sampling ?? {})) {
      if (JSON.stringify(sampling[k]) !== JSON.stringify(v)) fail('shape', 'session.updated does not echo the merged sampling', `sampling.${k}: sent ${JSON.stringify(v)?.slice(0, 80)}, echoed ${JSON.stringify(sampling[k])?.slice(0, 80)}`, item);
    }
    session.defaults = { ...sampling };
  }
  const policy = parsedField(item, ['session', 'context_policy']);
  if (policy !== undefined && isPlainObject(s) && s['context_policy'] !== policy) fail('shape', 'session.updated does not echo context_policy', `sent ${JSON.stringify(policy)}, echoed ${JSON.stringify(s['context_policy'])}`, item);
  if (j.progress !== undefined) session.progress = j.progress;
  const token = m['resume_token'];
  if (j.rotate && session.token !== null) {
    if (typeof token !== 'string' || token === session.token) fail('shape', 'session.updated without a new resume_token (rotate_resume_token)', `got resume_token ${JSON.stringify(token)?.slice(0, 60)}`, item);
    else {
      session.rotated(token);
      ctx.run.count('resume_token rotated');
    }
  } else if (own(m, 'resume_token')) fail('shape', 'session.updated carries a resume_token it was not asked for', JSON.stringify(m).slice(0, 300), item);
}

/** session.resumed (in-band): the session's latest response as the client knows it; what the replay sends next. */
function checkResumed(ctx: AnswerContext, item: FrameItem, j: Judgement, m: Record<string, unknown>): FollowUp {
  const { fail, session } = ctx;
  const r = m['response'];
  const shaped = r === null || (isPlainObject(r) && typeof r['response_id'] === 'string' && (r['status'] === 'in_progress' || r['status'] === 'done') && typeof r['next_seq'] === 'number');
  if (!shaped) {
    fail('shape', 'session.resumed without a well-formed response', JSON.stringify(m).slice(0, 300), item);
    return { kind: 'nothing' };
  }
  const latest = r as ResumedResponse | null;
  if ((latest?.response_id ?? null) !== session.latest) fail('shape', 'session.resumed names another response than the latest', `names ${JSON.stringify(latest?.response_id ?? null)}; the latest is ${JSON.stringify(session.latest)}`, item);
  else if (latest && latest.status !== 'done' && !session.open) fail('shape', 'session.resumed says in_progress for a response whose response.done came', JSON.stringify(m).slice(0, 300), item);
  return afterResumed(j, latest, latest !== null && session.doneIds.has(latest.response_id));
}

/** A field of a frame's JSON (undefined when the frame does not parse or has none). */
function parsedField(item: FrameItem, path: string[]): unknown {
  try {
    let v: unknown = JSON.parse(item.data.toString('utf8'));
    for (const k of path) v = isPlainObject(v) && own(v, k) ? v[k] : undefined;
    return v;
  } catch {
    return undefined;
  }
}

/**
 * Protocol v1's server events of one response (src/gateway/session-runner.ts runs it): its
 * response.delta frames, its response.done (after a barge-in's trim), and response.progress while
 * it runs. The record of the response is here too, as these read how it ended.
 */
import { WeftError, toWeftError } from '../errors.js';
import type { Scheduler } from '../scheduler/scheduler.js';
import type { FrameBuilder, ResponseLog } from '../session/response-log.js';
import type { Session, Turn } from '../session/session.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Tenant } from './api-keys.js';
import type { GatewayMetrics } from './metrics.js';

/** One response of a session: its turn, its replay log, and how it ended. */
export interface RunnerResponse {
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

/**
 * A response's delta frames, built by concatenation (no object or JSON.stringify of the whole
 * event per token). `topLogprobs` -1: no log-probabilities; else the sampled token's and that
 * many alternatives.
 */
export function deltaFrameBuilder(id: string, topLogprobs: number, tok: Tokenizer): FrameBuilder {
  const prefix = `{"type":"response.delta","response_id":${JSON.stringify(id)},"seq":`;
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

/** Where the session's KV is and how many tokens it holds. */
export function kvOf(session: Session): { state: string; tokens: number } {
  return { state: session.kvState, tokens: session.cachedTokens };
}

/** Trims the session's last answer (and KV), `r`'s, to the tokens of deltas 0..seq; the kept text. */
export function trimAnswer(session: Session, r: RunnerResponse, seq: number): string {
  if (!Number.isInteger(seq) || seq < -1 || seq >= r.log.nextSeq) throw new WeftError('WEFT_BAD_ARGUMENT', `seq ${seq} is not a delta of ${r.id} (0..${r.log.nextSeq - 1}, or -1 for none)`);
  return session.truncateLastAnswer(Math.min(seq + 1, r.turn.request.generated.length));
}

/** The response.done of an ended response, after its barge-in trim; its errors are counted. */
export function doneFrame(r: RunnerResponse, session: Session, tenant: Tenant | null, metrics: GatewayMetrics): Record<string, unknown> {
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
    metrics.errors.inc({ code: e.code });
  } else {
    const ev = result.done;
    done = { type: 'response.done', response_id: r.id, finish_reason: ev.finishReason, usage: ev.usage, timing: ev.timing, truncated_turns: ev.truncatedTurns, kv: kvOf(session) };
    if (ev.error) {
      done.error = ev.error;
      metrics.errors.inc({ code: ev.error.code });
    }
    if (r.shutdown && ev.finishReason === 'cancelled') done.finish_reason = 'shutdown';
    if (r.budgetSpent && ev.finishReason === 'cancelled') {
      done.finish_reason = 'budget';
      done.error = { code: 'WEFT_KEY_BUDGET', message: `the API key "${tenant?.name}" spent its tokens per minute during this answer` };
      metrics.errors.inc({ code: 'WEFT_KEY_BUDGET' });
    }
    if (r.truncateAt !== undefined) {
      try {
        done.truncated_at_seq = r.truncateAt;
        done.text = trimAnswer(session, r, r.truncateAt);
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
export function watchProgress(r: RunnerResponse, scheduler: Scheduler, connected: () => boolean, send: (ev: object) => void): void {
  let last = '';
  const check = () => {
    if (r.log.result) return clearInterval(timer);
    const q = r.turn.request;
    let ev: Record<string, unknown>;
    if (q.state === 'queued') {
      const ahead = Math.max(0, scheduler.queuePosition(q));
      ev = { state: 'queued', position: ahead + 1, ahead };
    } else if (q.state === 'prefilling') ev = { state: 'prefilling', done: q.offset, total: q.opts.tokens.length };
    else if (r.log.blocked()) ev = { state: 'paused', reason: connected() ? 'backpressure' : 'disconnected' };
    else ev = { state: 'generating', tokens: q.generated.length };
    const key = JSON.stringify({ ...ev, tokens: undefined });
    if (key === last) return;
    last = key;
    send({ type: 'response.progress', response_id: r.id, ...ev });
  };
  const timer = setInterval(check, 100);
  timer.unref();
  check();
}

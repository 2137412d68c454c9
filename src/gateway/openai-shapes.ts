/**
 * The OpenAI API's response shapes, as the HTTP front (src/gateway/openai-http.ts) sends them:
 * the error body and its `type` for a status, chat and text completions whole or as stream chunks,
 * usage, log-probabilities in both APIs' shapes, and the rate-limit headers of a key with a
 * tokens-per-minute budget. Builders only: nothing here writes to a connection.
 */
import type { WeftError, WeftErrorCode } from '../errors.js';
import type { DoneEvent, TokenEvent } from '../scheduler/scheduler.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';
import type { Tenant } from './api-keys.js';

/** Which API a request came in on: `/v1/chat/completions` or `/v1/completions`. */
export type Kind = 'chat' | 'text';

export const JSON_TYPE = { 'content-type': 'application/json' };
export const SSE_HEADERS = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-accel-buffering': 'no' };

/** OpenAI's error `type` for an HTTP status. */
function errorType(status: number): string {
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 429) return 'rate_limit_error';
  if (status >= 500) return 'server_error';
  return 'invalid_request_error';
}

/** OpenAI's error body for a weft error (weft's code in `code`). */
export function openaiError(e: WeftError, param: string | null = null): { error: { message: string; type: string; param: string | null; code: WeftErrorCode } } {
  return { error: { message: e.message, type: errorType(e.status), param, code: e.code } };
}

/** OpenAI's rate-limit headers for a key with a tokens-per-minute budget. */
export function budgetHeaders(tenant: Tenant | null): Record<string, string> {
  const tpm = tenant?.limits.tokensPerMinute;
  if (!tenant || tpm === null || tpm === undefined) return {};
  return {
    'x-ratelimit-limit-tokens': String(tpm),
    'x-ratelimit-remaining-tokens': String(tenant.remaining()),
    'x-ratelimit-reset-tokens': `${(tenant.retryAfterMs(tpm) / 1000).toFixed(3)}s`,
  };
}

/** What every body of one answer carries. */
export interface AnswerMeta {
  kind: Kind;
  /** `chatcmpl-…` or `cmpl-…`. */
  id: string;
  /** Unix seconds. */
  created: number;
  model: string;
  /** stream_options.include_usage: every chunk has `usage: null`, and a last chunk has the usage. */
  includeUsage: boolean;
}

/** The fields every body of an answer begins with. */
function head(m: AnswerMeta, object: string): Record<string, unknown> {
  return { id: m.id, object, created: m.created, model: m.model, system_fingerprint: `weft_${m.model}` };
}

/** A chat completion chunk (`delta`: role or content; `{}` with the finish reason). */
export function chatChunk(m: AnswerMeta, delta: Record<string, unknown>, finish: string | null, logprobs: unknown = null): object {
  return {
    ...head(m, 'chat.completion.chunk'),
    choices: [{ index: 0, delta, logprobs, finish_reason: finish }],
    ...(m.includeUsage ? { usage: null } : {}),
  };
}

/** A completions API chunk (its object is `text_completion`, as a whole one's). */
export function textChunk(m: AnswerMeta, text: string, finish: string | null, logprobs: unknown): object {
  return {
    ...head(m, 'text_completion'),
    choices: [{ index: 0, text, logprobs, finish_reason: finish }],
    ...(m.includeUsage ? { usage: null } : {}),
  };
}

/** A streamed chunk of text in the answer's API. */
export function textDelta(m: AnswerMeta, text: string, logprobs: unknown = null): object {
  return m.kind === 'chat' ? chatChunk(m, { content: text }, null, logprobs) : textChunk(m, text, null, logprobs);
}

/** The stream's chunk that carries the finish reason. */
export function finishChunk(m: AnswerMeta, finish: string): object {
  return m.kind === 'chat' ? chatChunk(m, {}, finish) : textChunk(m, '', finish, null);
}

export type Usage = ReturnType<typeof usageOf>;

/** OpenAI's usage of an ended request; `cached_tokens`: prompt tokens not computed again. */
export function usageOf(promptTokens: number, ev: DoneEvent) {
  return {
    prompt_tokens: promptTokens,
    completion_tokens: ev.usage.completionTokens,
    total_tokens: promptTokens + ev.usage.completionTokens,
    prompt_tokens_details: { cached_tokens: ev.usage.cachedTokens },
  };
}

/** The stream's last chunk with stream_options.include_usage: no choices, the usage. */
export function usageChunk(m: AnswerMeta, usage: Usage): object {
  return { ...head(m, m.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion'), choices: [], usage };
}

/** A whole (not streamed) completion. */
export function completion(m: AnswerMeta, text: string, logprobs: unknown, finish: string, usage: Usage): object {
  const choice =
    m.kind === 'chat'
      ? { index: 0, message: { role: 'assistant', content: text, refusal: null }, logprobs, finish_reason: finish }
      : { index: 0, text, logprobs, finish_reason: finish };
  return { ...head(m, m.kind === 'chat' ? 'chat.completion' : 'text_completion'), choices: [choice], usage };
}

/** One sampled token's log-probability, in chat's shape (the completions API's columns are built from these). */
export interface LogprobEntry {
  token: string;
  logprob: number;
  bytes: number[];
  top_logprobs: { token: string; logprob: number; bytes: number[] }[];
}

function tokenText(tok: Tokenizer, id: number): { token: string; bytes: number[] } {
  const token = tok.decode([id]);
  return { token, bytes: [...Buffer.from(token, 'utf8')] };
}

/** The entry of a token event that carries a log-probability, with its `topLogprobs` best alternatives. */
export function logprobEntry(tok: Tokenizer, ev: TokenEvent, topLogprobs: number): LogprobEntry {
  const top = topLogprobs > 0 ? (ev.top ?? []).slice(0, topLogprobs).map((t) => ({ ...tokenText(tok, t.token), logprob: t.logprob })) : [];
  return { ...tokenText(tok, ev.token), logprob: ev.logprob!, top_logprobs: top };
}

/**
 * The logprobs object of a choice or chunk: chat's `content` list, or the completions API's
 * columns (`offset`: where the first entry's text starts in the answer).
 */
export function logprobsOf(kind: Kind, entries: LogprobEntry[], offset: number): unknown {
  if (kind === 'chat') return { content: entries, refusal: null };
  const offsets: number[] = [];
  let at = offset;
  for (const e of entries) {
    offsets.push(at);
    at += e.token.length;
  }
  return {
    tokens: entries.map((e) => e.token),
    token_logprobs: entries.map((e) => e.logprob),
    top_logprobs: entries.map((e) => Object.fromEntries(e.top_logprobs.map((t) => [t.token, t.logprob]))),
    text_offset: offsets,
  };
}

/**
 * The OpenAI oracle's second half: whether an answer is one the expectation (openai-judge.ts)
 * allows, and well-formed. A 200 is a chat.completion or text_completion (one choice, its text,
 * finish_reason stop or length, usage that adds up and stays within max_tokens, logprobs when
 * asked and only then), an SSE stream of chunks of the right object that ends with
 * `data: [DONE]` (an error event only with a weft code), or the models list / model. Anything
 * else is OpenAI's error body with a weft code from the catalog, the catalog's status, the type
 * of that status, `param` null or naming a field of the request, Retry-After on 429 and 503.
 */
import { ERRORS } from '../../src/errors.js';
import { paramInRequest, type OpenAIExpectation } from './openai-judge.js';
import { isPlainObject, own } from './util.js';

export interface OpenAIAnswer {
  status: number;
  /** Lower-case names. */
  headers: Record<string, string | string[] | undefined>;
  body: Buffer;
  /** The body was read to its end (false: the client dropped the connection on purpose). */
  complete: boolean;
}

export interface Problem {
  kind: string;
  /** What was broken, without the request's details (the failure's signature). */
  rule: string;
  detail: string;
}

/** OpenAI's error type for a status. */
export function errorType(status: number): string {
  return status === 401 ? 'authentication_error' : status === 403 ? 'permission_error' : status === 429 ? 'rate_limit_error' : status >= 500 ? 'server_error' : 'invalid_request_error';
}

const header = (a: OpenAIAnswer, k: string) => [a.headers[k]].flat()[0] ?? '';
const short = (s: string) => s.replace(/"[^"]*"/g, '"…"').replace(/\d+/g, 'N').slice(0, 80);
const isCount = (v: unknown): v is number => typeof v === 'number' && Number.isInteger(v) && v >= 0;

/** The problems of an answer (empty: it is right). `defaultMaxTokens` bounds an answer whose request set none. */
export function checkAnswer(exp: OpenAIExpectation, a: OpenAIAnswer, target: string, model: string, defaultMaxTokens: number): Problem[] {
  const out: Problem[] = [];
  const bad = (kind: string, rule: string, detail = '') => out.push({ kind, rule, detail });
  if (a.status === 200) {
    if (!exp.ok) bad('accepted-invalid', `a 200 for ${short(exp.invalid ?? '?')}`, `the request: ${exp.invalid}`);
    if (!a.complete || exp.kind === 'none') return out;
    if (exp.head) {
      if (a.body.length) bad('shape', 'a body in the answer to HEAD', `${a.body.length} bytes`);
      return out;
    }
    const bound = exp.maxTokens ?? defaultMaxTokens;
    if (exp.kind === 'chat' || exp.kind === 'text') {
      if (exp.stream) checkStream(exp, a, bound, bad);
      else checkCompletion(exp, a, bound, bad);
    } else checkModels(exp.kind, a, model, bad);
    return out;
  }
  // no body to read the code from: HEAD, or a client that stopped reading
  if ((exp.head && a.body.length === 0) || !a.complete) return out;
  let body: unknown;
  try {
    body = JSON.parse(a.body.toString('utf8'));
  } catch {
    bad('shape', `a ${a.status} whose body is not JSON`, a.body.toString('utf8').slice(0, 200));
    return out;
  }
  const err = checkError(body, a.status, bad);
  if (!/^application\/json/.test(header(a, 'content-type'))) bad('shape', 'an error without Content-Type: application/json', header(a, 'content-type'));
  if ((a.status === 429 || a.status === 503) && !/^\d+$/.test(header(a, 'retry-after'))) bad('shape', `a ${a.status} without Retry-After`);
  if (!err) return out;
  if (!exp.codes.has(err.code)) {
    if (exp.ok) bad('rejected-valid', `${err.code} for a valid request`, `${a.status} ${err.message}${exp.unsure.length ? ` (unsure: ${exp.unsure.join('; ')})` : ''}`);
    else bad('wrong-code', `${err.code} for ${short(exp.invalid ?? '?')} (expected ${[...exp.codes].filter((c) => c !== 'WEFT_OVERLOADED' && c !== 'WEFT_KV_EXHAUSTED').join(' or ')})`, `${a.status} ${err.message}`);
  }
  if (err.param !== null && !paramInRequest(err.param, exp.body, target)) bad('param', `param names no field of the request (${short(err.param)})`, `param ${JSON.stringify(err.param)}: ${err.message}`);
  return out;
}

type Bad = (kind: string, rule: string, detail?: string) => void;

/**
 * OpenAI's error body: {"error": {message, type, param, code}} with a weft code whose catalog
 * status is the answer's `status` (null: an error event in a stream) and the type of that status.
 */
function checkError(body: unknown, status: number | null, bad: Bad): { code: string; param: string | null; message: string } | null {
  const e = isPlainObject(body) ? body.error : undefined;
  if (!isPlainObject(e)) return bad('shape', `a ${status ?? 'stream'} error without an error object`, JSON.stringify(body).slice(0, 200)), null;
  const { message, type, param, code } = e;
  if (typeof message !== 'string' || typeof type !== 'string' || !own(e, 'param') || (param !== null && typeof param !== 'string') || typeof code !== 'string') {
    return bad('shape', 'an error without message, type, param and code', JSON.stringify(e).slice(0, 200)), null;
  }
  if (!own(ERRORS, code)) return bad('uncoded', `a code that is not in the catalog (${short(code)})`, JSON.stringify(e).slice(0, 200)), null;
  const want = ERRORS[code as keyof typeof ERRORS].status;
  if (status !== null && want !== status) bad('status', `${code} with status ${status} (the catalog says ${want})`, message);
  if (type !== errorType(want)) bad('shape', `type ${type} for ${code} (status ${want})`, message);
  return { code, param: param as string | null, message };
}

function checkModels(kind: 'models' | 'model', a: OpenAIAnswer, model: string, bad: Bad): void {
  let b: unknown;
  try {
    b = JSON.parse(a.body.toString('utf8'));
  } catch {
    return bad('shape', `GET /v1/${kind} not JSON`);
  }
  const isModel = (m: unknown) => isPlainObject(m) && m.id === model && m.object === 'model';
  if (kind === 'model' ? !isModel(b) : !(isPlainObject(b) && b.object === 'list' && Array.isArray(b.data) && b.data.some(isModel))) bad('shape', `a ${kind === 'model' ? 'model' : 'models list'} that is not OpenAI's`, JSON.stringify(b).slice(0, 200));
}

function checkUsage(u: unknown, bound: number, bad: Bad): void {
  if (!isPlainObject(u) || !isCount(u.prompt_tokens) || !isCount(u.completion_tokens) || !isCount(u.total_tokens)) return bad('usage', 'usage without token counts', JSON.stringify(u));
  if (u.total_tokens !== u.prompt_tokens + u.completion_tokens) bad('usage', 'total_tokens is not prompt_tokens + completion_tokens', JSON.stringify(u));
  if (u.prompt_tokens < 1) bad('usage', 'no prompt tokens', JSON.stringify(u));
  const cached = isPlainObject(u.prompt_tokens_details) ? u.prompt_tokens_details.cached_tokens : undefined;
  if (!isCount(cached) || cached > u.prompt_tokens) bad('usage', 'prompt_tokens_details.cached_tokens missing or over prompt_tokens', JSON.stringify(u));
  if (u.completion_tokens > bound) bad('usage', 'more completion tokens than max_tokens', `${u.completion_tokens} > ${bound}`);
}

function checkLogprobs(exp: OpenAIExpectation, lp: unknown, bad: Bad): void {
  if (!exp.logprobs) {
    if (lp !== null && lp !== undefined) bad('logprobs', 'logprobs that were not asked for', JSON.stringify(lp).slice(0, 120));
    return;
  }
  const logprob = (v: unknown) => typeof v === 'number' && v <= 0 && !Number.isNaN(v);
  if (exp.kind === 'chat') {
    const c = isPlainObject(lp) ? lp.content : undefined;
    if (!Array.isArray(c)) return bad('logprobs', 'chat logprobs without a content list', JSON.stringify(lp)?.slice(0, 120));
    for (const t of c) {
      if (!isPlainObject(t) || typeof t.token !== 'string' || !logprob(t.logprob) || !Array.isArray(t.bytes) || !Array.isArray(t.top_logprobs)) return bad('logprobs', 'a chat logprob entry that is not {token, logprob, bytes, top_logprobs}', JSON.stringify(t).slice(0, 120));
      if (t.top_logprobs.length !== exp.topLogprobs) return bad('logprobs', 'top_logprobs of another length than asked', `${t.top_logprobs.length} for top_logprobs ${exp.topLogprobs}`);
    }
    return;
  }
  if (!isPlainObject(lp)) return bad('logprobs', 'completions logprobs that are not an object', JSON.stringify(lp)?.slice(0, 120));
  const { tokens, token_logprobs: lps, top_logprobs: tops, text_offset: offs } = lp;
  if (!Array.isArray(tokens) || !Array.isArray(lps) || !Array.isArray(tops) || !Array.isArray(offs) || new Set([tokens.length, lps.length, tops.length, offs.length]).size !== 1) return bad('logprobs', 'completions logprobs columns of different lengths', JSON.stringify(lp).slice(0, 120));
  if (!lps.every(logprob) || tops.some((t) => !isPlainObject(t) || Object.keys(t).length > exp.topLogprobs)) bad('logprobs', 'completions logprobs out of shape', JSON.stringify(lp).slice(0, 120));
}

function checkCompletion(exp: OpenAIExpectation, a: OpenAIAnswer, bound: number, bad: Bad): void {
  if (!/^application\/json/.test(header(a, 'content-type'))) bad('shape', 'a completion without Content-Type: application/json', header(a, 'content-type'));
  let b: unknown;
  try {
    b = JSON.parse(a.body.toString('utf8'));
  } catch {
    return bad('shape', 'a 200 completion that is not JSON', a.body.toString('utf8').slice(0, 200));
  }
  const object = exp.kind === 'chat' ? 'chat.completion' : 'text_completion';
  if (!isPlainObject(b) || b.object !== object || typeof b.id !== 'string' || !Array.isArray(b.choices) || b.choices.length !== 1) return bad('shape', `not a ${object} with one choice`, JSON.stringify(b).slice(0, 200));
  const c = b.choices[0] as unknown;
  if (!isPlainObject(c) || c.index !== 0 || (c.finish_reason !== 'stop' && c.finish_reason !== 'length')) return bad('shape', 'a choice without index 0 and finish_reason stop or length', JSON.stringify(c).slice(0, 200));
  if (exp.kind === 'chat' ? !(isPlainObject(c.message) && c.message.role === 'assistant' && typeof c.message.content === 'string') : typeof c.text !== 'string') bad('shape', `a choice without its ${exp.kind === 'chat' ? 'message' : 'text'}`, JSON.stringify(c).slice(0, 200));
  checkUsage(b.usage, bound, bad);
  if (c.finish_reason === 'length' && isPlainObject(b.usage) && b.usage.completion_tokens === 0) bad('usage', 'finish_reason length with no completion tokens');
  checkLogprobs(exp, c.logprobs, bad);
}

/** What a 200 says, streamed or whole: its text, finish_reason and completion tokens (null: not a well-formed answer). */
export function summary(exp: OpenAIExpectation, a: OpenAIAnswer): { text: string; finish: string; completionTokens?: number } | null {
  try {
    const chat = exp.kind === 'chat';
    if (!exp.stream) {
      const b = JSON.parse(a.body.toString('utf8')) as { choices: { message?: { content: string }; text?: string; finish_reason: string }[]; usage: { completion_tokens: number } };
      const c = b.choices[0]!;
      return { text: (chat ? c.message!.content : c.text)!, finish: c.finish_reason, completionTokens: b.usage.completion_tokens };
    }
    let text = '';
    let finish = '';
    let completionTokens: number | undefined;
    for (const line of a.body.toString('utf8').split('\n')) {
      if (!line.startsWith('data: {')) continue;
      const c = JSON.parse(line.slice(6)) as { choices: { delta?: { content?: string }; text?: string; finish_reason: string | null }[]; usage?: { completion_tokens: number } | null };
      if (c.usage) completionTokens = c.usage.completion_tokens;
      const ch = c.choices[0];
      if (!ch) continue;
      text += (chat ? ch.delta?.content : ch.text) ?? '';
      if (ch.finish_reason) finish = ch.finish_reason;
    }
    return { text, finish, completionTokens };
  } catch {
    return null;
  }
}

/** An SSE stream: `data:` events of chunks, at most one usage chunk at the end, then `data: [DONE]`. */
function checkStream(exp: OpenAIExpectation, a: OpenAIAnswer, bound: number, bad: Bad): void {
  if (!/^text\/event-stream/.test(header(a, 'content-type'))) bad('sse', 'a stream without Content-Type: text/event-stream', header(a, 'content-type'));
  const text = a.body.toString('utf8');
  const events = text.split(/\r?\n\r?\n/);
  if (events.pop() !== '') return bad('sse', 'a stream that does not end with a blank line', JSON.stringify(text.slice(-120)));
  const data: string[] = [];
  for (const ev of events) {
    const lines = ev.split(/\r?\n/).filter((l) => !l.startsWith(':'));
    if (lines.length === 0) continue;
    if (lines.length !== 1 || !lines[0]!.startsWith('data: ')) return bad('sse', 'an event that is not one data: line', JSON.stringify(ev.slice(0, 120)));
    data.push(lines[0]!.slice(6));
  }
  if (data.pop() !== '[DONE]') return bad('sse', 'a stream that does not end with data: [DONE]', JSON.stringify(text.slice(-160)));
  const object = exp.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion';
  let id: unknown;
  let finishes = 0;
  let usages = 0;
  let errored = false;
  for (const [i, d] of data.entries()) {
    let c: unknown;
    try {
      c = JSON.parse(d);
    } catch {
      return bad('sse', 'a data: line that is not JSON', d.slice(0, 120));
    }
    if (errored) return bad('sse', 'chunks after an error event', d.slice(0, 120));
    if (isPlainObject(c) && own(c, 'error')) {
      const e = checkError(c, null, bad);
      if (e && !exp.codes.has(e.code)) bad('sse', `an error event ${e.code} in a stream`, e.message);
      errored = true;
      continue;
    }
    if (!isPlainObject(c) || c.object !== object || typeof c.id !== 'string' || !Array.isArray(c.choices)) return bad('sse', `a chunk that is not a ${object}`, d.slice(0, 160));
    if (i > 0 && c.id !== id) return bad('sse', 'chunks of one stream with different ids', `${String(id)} then ${c.id}`);
    id = c.id;
    if (c.choices.length === 0) {
      if (!exp.includeUsage) bad('sse', 'a usage chunk without stream_options.include_usage', d.slice(0, 160));
      checkUsage(c.usage, bound, bad);
      usages++;
      continue;
    }
    if (usages) return bad('sse', 'a chunk after the usage chunk', d.slice(0, 160));
    if (c.usage !== null && c.usage !== undefined) bad('sse', 'usage in a chunk with choices', d.slice(0, 160));
    const ch = c.choices[0] as unknown;
    if (c.choices.length !== 1 || !isPlainObject(ch) || ch.index !== 0 || ![null, 'stop', 'length'].includes(ch.finish_reason as string | null)) return bad('sse', 'a chunk without one choice of index 0 and finish_reason null, stop or length', d.slice(0, 160));
    if (finishes) return bad('sse', 'a chunk after the finish_reason', d.slice(0, 160));
    if (ch.finish_reason !== null) finishes++;
    const dl = ch.delta;
    if (exp.kind === 'chat' && i === 0 && !(isPlainObject(dl) && dl.role === 'assistant')) bad('sse', 'a chat stream whose first chunk has no role', d.slice(0, 160));
    const okDelta = exp.kind === 'chat' ? isPlainObject(dl) && (dl.role === undefined || dl.role === 'assistant') && (dl.content === undefined || typeof dl.content === 'string') : typeof ch.text === 'string';
    if (!okDelta) bad('sse', `a chunk without its ${exp.kind === 'chat' ? 'delta' : 'text'}`, d.slice(0, 160));
    if (ch.logprobs !== null && ch.logprobs !== undefined) checkLogprobs(exp, ch.logprobs, bad);
  }
  if (errored) return;
  if (finishes !== 1) bad('sse', `a stream with ${finishes} finish_reason chunks`);
  if (exp.includeUsage && usages !== 1) bad('sse', 'a stream with include_usage and no usage chunk');
}

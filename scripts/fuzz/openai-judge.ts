/**
 * The OpenAI oracle's first half: from a request alone (method, target, Content-Type, the body
 * the server reads), what its answer may be: a 200 of the right kind (chat, text, models, model),
 * and which weft codes (src/errors.ts) may refuse it. The rules are docs/openai.md's: routes
 * (HEAD where GET, a trailing `/` and a query ignored, another /v1/ path 404, another method 405),
 * a body of `application/json` (else WEFT_BAD_REQUEST) within the limit (else 413), unknown
 * fields ignored and `null` a field not given, a known field of the wrong type or out of range
 * WEFT_BAD_ARGUMENT, what weft does not do WEFT_UNSUPPORTED, another model 404. What the docs
 * leave open is `unsure`: a 200 and the listed codes are all right.
 */
import type { Route } from './openai-body.js';
import { hasLoneSurrogate } from './oracle.js';
import { isPlainObject, isValidUtf8, own } from './util.js';

export interface OpenAIExpectation {
  /** What a 200 must be; 'none': no 200 is right. */
  kind: Route | 'models' | 'model' | 'none';
  /** A 200 is right. */
  ok: boolean;
  /** The weft codes that may refuse it. */
  codes: Set<string>;
  /** Why a 200 is wrong (the first reason), for the report. */
  invalid?: string;
  /** What made the oracle unsure. */
  unsure: string[];
  head: boolean;
  stream: boolean;
  includeUsage: boolean;
  logprobs: boolean;
  /** Alternatives asked per position (chat top_logprobs, completions logprobs). */
  topLogprobs: number;
  /** The most completion tokens a 200 may report (undefined: the server's default). */
  maxTokens?: number;
  /** The parsed body, for `param` (undefined: not JSON). */
  body?: unknown;
}

/** Codes any generation may meet under load. */
const TRANSIENT = ['WEFT_OVERLOADED', 'WEFT_KV_EXHAUSTED'];
const MIME = 'application/json';
const ROUTES: Record<string, Route> = { '/v1/chat/completions': 'chat', '/v1/completions': 'text' };

/** What the answer to a request may be; `maxContext` is the model's context (tokens), `model` the served id. */
export function expectOpenAI(method: string, target: string, contentType: string | undefined, body: Buffer, limit: number, model: string, maxContext: number): OpenAIExpectation {
  const e: OpenAIExpectation = { kind: 'none', ok: false, codes: new Set(), unsure: [], head: method === 'HEAD', stream: false, includeUsage: false, logprobs: false, topLogprobs: 0 };
  const refuse = (code: string, why: string) => {
    e.codes.add(code);
    e.invalid ??= why;
  };
  const path = target.split('?', 1)[0]!;
  const slashless = path.replace(/\/+$/, '');
  if (slashless === '/v1/models' || slashless.startsWith('/v1/models/')) {
    if (method !== 'GET' && method !== 'HEAD') return refuse('WEFT_METHOD_NOT_ALLOWED', `${method} on the models route`), e;
    if (slashless === '/v1/models') return { ...e, kind: 'models', ok: true };
    const id = slashless.slice('/v1/models/'.length);
    if (id === model) return { ...e, kind: 'model', ok: true };
    if (/%|\//.test(id)) e.unsure.push('an encoded model id');
    refuse('WEFT_MODEL_NOT_FOUND', `no model ${id}`);
    if (e.unsure.length) e.codes.add('WEFT_NOT_FOUND');
    return e;
  }
  const route = ROUTES[slashless];
  if (!route) {
    refuse('WEFT_NOT_FOUND', `no route ${path}`);
    return e;
  }
  if (method !== 'POST') return refuse('WEFT_METHOD_NOT_ALLOWED', `${method} on ${path}`), e;
  e.kind = route;
  e.codes.add(TRANSIENT[0]!).add(TRANSIENT[1]!);
  if (body.length > limit) refuse('WEFT_BODY_TOO_LARGE', `a ${body.length}-byte body over the ${limit}-byte limit`);
  const mime = (contentType ?? '').split(';', 1)[0]!.trim().toLowerCase();
  if (mime !== MIME) {
    // a list, or bytes past ASCII (which a transport may drop): either answer
    if (mime.startsWith(MIME) && /,|[^\x20-\x7e]/.test(contentType ?? '')) e.unsure.push('an odd Content-Type'), e.codes.add('WEFT_BAD_REQUEST');
    else refuse('WEFT_BAD_REQUEST', `Content-Type ${JSON.stringify(contentType ?? 'none')}`);
  }
  let text = body.toString('utf8');
  if (!isValidUtf8(body)) {
    e.unsure.push('a body that is not UTF-8');
    e.codes.add('WEFT_BAD_REQUEST');
  }
  if (text.startsWith('\ufeff')) {
    e.unsure.push('a byte order mark');
    e.codes.add('WEFT_BAD_REQUEST');
    text = text.slice(1);
  }
  let b: unknown;
  try {
    b = JSON.parse(text);
  } catch {
    refuse('WEFT_BAD_REQUEST', 'not JSON');
    return done(e);
  }
  e.body = b;
  if (!isPlainObject(b)) {
    refuse('WEFT_BAD_REQUEST', 'not a JSON object');
    return done(e);
  }
  fields(e, route, b, model, maxContext);
  return done(e);
}

/** A 200 is right when nothing refuses the request (unsure cases add codes, never a reason). */
function done(e: OpenAIExpectation): OpenAIExpectation {
  e.ok = e.invalid === undefined;
  return e;
}

type Body = Record<string, unknown>;
const num = (v: unknown): v is number => typeof v === 'number' && Number.isFinite(v);
const int = (v: unknown): v is number => num(v) && Number.isInteger(v);
const absent = (b: Body, k: string) => !own(b, k) || b[k] === null;

function fields(e: OpenAIExpectation, route: Route, b: Body, model: string, maxContext: number): void {
  /** A 200 is wrong; the first code is the one expected, the others are right too. */
  const bad = (k: string, why: string, ...codes: string[]) => {
    for (const c of codes.length ? codes : ['WEFT_BAD_ARGUMENT']) e.codes.add(c);
    e.invalid ??= `${k}: ${why}`;
  };
  /** Either a 200 or these codes. */
  const maybe = (why: string, ...codes: string[]) => {
    e.unsure.push(why);
    for (const c of codes) e.codes.add(c);
  };
  const range = (k: string, lo: number, hi: number) => {
    if (!absent(b, k) && !(num(b[k]) && b[k] >= lo && b[k] <= hi)) bad(k, `not a number in [${lo}, ${hi}]`);
  };
  const minInt = (k: string, lo: number) => {
    if (!absent(b, k) && !(int(b[k]) && b[k] >= lo)) bad(k, `not an integer from ${lo}`);
  };
  const bool = (k: string) => {
    if (!absent(b, k) && typeof b[k] !== 'boolean') bad(k, 'not a boolean');
  };
  if (typeof b.model !== 'string' || b.model === '') bad('model', 'not a model id');
  else if (b.model !== model) bad('model', `unknown model ${JSON.stringify(b.model.slice(0, 40))}`, 'WEFT_MODEL_NOT_FOUND');
  bool('stream');
  e.stream = b.stream === true;
  if (!absent(b, 'stream_options')) {
    const so = b.stream_options;
    if (!isPlainObject(so)) bad('stream_options', 'not an object');
    else {
      if (!e.stream) bad('stream_options', 'without stream: true');
      if (!absent(so, 'include_usage') && typeof so.include_usage !== 'boolean') bad('stream_options.include_usage', 'not a boolean');
      e.includeUsage = so.include_usage === true;
    }
  }
  if (!absent(b, 'n')) {
    if (!int(b.n) || b.n < 1) bad('n', 'not an integer from 1');
    else if (b.n > 128) bad('n', 'over 128', 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
    else if (b.n > 1) bad('n', 'more than one choice', 'WEFT_UNSUPPORTED');
  }
  const limitOf = (k: string) => (int(b[k]) && b[k] >= 1 ? b[k] : undefined);
  const mct = route === 'chat' ? limitOf('max_completion_tokens') : undefined;
  if (route === 'chat') minInt('max_completion_tokens', 1);
  // "max_completion_tokens wins when both are given": whether a bad max_tokens beside it is checked, the docs do not say
  if (mct !== undefined && !absent(b, 'max_tokens') && limitOf('max_tokens') === undefined) maybe('a bad max_tokens beside max_completion_tokens', 'WEFT_BAD_ARGUMENT');
  else minInt('max_tokens', 1);
  e.maxTokens = mct ?? limitOf('max_tokens');
  range('temperature', 0, 2);
  range('top_p', 0, 1);
  range('presence_penalty', -2, 2);
  range('frequency_penalty', -2, 2);
  if (!absent(b, 'seed')) {
    if (!int(b.seed)) bad('seed', 'not an integer');
    else if (!Number.isSafeInteger(b.seed)) maybe('a seed past 2^53', 'WEFT_BAD_ARGUMENT');
  }
  // weft's extensions
  minInt('top_k', 0);
  if (int(b.top_k) && b.top_k > 2 ** 31 - 1) maybe('a top_k past int32', 'WEFT_BAD_ARGUMENT');
  range('min_p', 0, 1);
  range('repetition_penalty', 0.01, 10);
  bool('ignore_eos');
  stop(b, bad, maybe);
  if (!absent(b, 'user') && typeof b.user !== 'string') bad('user', 'not a string');
  if (!absent(b, 'modalities')) {
    const m = b.modalities;
    if (!Array.isArray(m) || m.some((x) => typeof x !== 'string')) bad('modalities', 'not an array of strings', 'WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED');
    else if (m.some((x) => x !== 'text')) bad('modalities', 'not text only', 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
    else if (m.length !== 1) maybe('modalities not exactly ["text"]', 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
  }
  if (!absent(b, 'audio')) bad('audio', 'audio output', 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
  if (!absent(b, 'tools')) {
    if (!Array.isArray(b.tools)) bad('tools', 'not an array', 'WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED');
    else if (b.tools.length > 0) bad('tools', 'tools', 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
  }
  if (!absent(b, 'response_format')) {
    const rf = b.response_format;
    if (!isPlainObject(rf) || rf.type !== 'text') bad('response_format', 'not {"type": "text"}', 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
  }
  if (route === 'chat') chat(e, b, bad, maybe, maxContext);
  else text(e, b, bad, maybe, maxContext);
}

type Bad = (k: string, why: string, ...codes: string[]) => void;
type Maybe = (why: string, ...codes: string[]) => void;

function stop(b: Body, bad: Bad, maybe: Maybe): void {
  if (absent(b, 'stop')) return;
  const s = b.stop;
  const list = typeof s === 'string' ? [s] : Array.isArray(s) ? s : null;
  if (!list || list.some((x) => typeof x !== 'string')) return bad('stop', 'not a string or an array of strings');
  if (list.length > 4) return bad('stop', 'more than 4 stop sequences');
  if (list.some((x: string) => x === '')) return bad('stop', 'an empty stop sequence');
  if (list.some((x: string) => hasLoneSurrogate(x))) maybe('a stop sequence with a lone surrogate', 'WEFT_BAD_ARGUMENT');
}

function chat(e: OpenAIExpectation, b: Body, bad: Bad, maybe: Maybe, maxContext: number): void {
  if (!absent(b, 'logprobs') && typeof b.logprobs !== 'boolean') bad('logprobs', 'not a boolean');
  e.logprobs = b.logprobs === true;
  if (!absent(b, 'top_logprobs')) {
    if (!int(b.top_logprobs) || b.top_logprobs < 0 || b.top_logprobs > 20) bad('top_logprobs', 'not an integer in [0, 20]');
    else if (!e.logprobs) bad('top_logprobs', 'without logprobs: true');
    else e.topLogprobs = b.top_logprobs;
  }
  const msgs = b.messages;
  if (!Array.isArray(msgs) || msgs.length === 0) return bad('messages', 'not a non-empty array');
  let chars = 0;
  msgs.forEach((m: unknown, i) => {
    const at = `messages[${i}]`;
    if (!isPlainObject(m)) return bad(at, 'not an object');
    const role = m.role;
    if (role === 'tool' || role === 'function') bad(`${at}.role`, `role ${role}`, 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
    else if (typeof role !== 'string' || !['system', 'developer', 'user', 'assistant'].includes(role)) bad(`${at}.role`, `role ${JSON.stringify(role)}`, 'WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED');
    if (role === 'assistant' && own(m, 'tool_calls') && !(Array.isArray(m.tool_calls) && m.tool_calls.length === 0)) {
      if (Array.isArray(m.tool_calls)) bad(`${at}.tool_calls`, 'tool calls', 'WEFT_UNSUPPORTED');
      else maybe('tool_calls not an array', 'WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED');
    }
    const c = m.content;
    if (typeof c === 'string') {
      chars += c.length;
      if (hasLoneSurrogate(c)) maybe('content with a lone surrogate', 'WEFT_BAD_ARGUMENT');
    } else if (Array.isArray(c)) {
      c.forEach((p: unknown, j) => {
        const pat = `${at}.content[${j}]`;
        if (!isPlainObject(p)) return bad(pat, 'not a content part object');
        if (p.type !== 'text') bad(`${pat}.type`, `a ${JSON.stringify(p.type)} part`, 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
        else if (typeof p.text !== 'string') bad(`${pat}.text`, 'not a string');
        else {
          chars += p.text.length;
          if (hasLoneSurrogate(p.text)) maybe('a text part with a lone surrogate', 'WEFT_BAD_ARGUMENT');
        }
      });
    } else if (role === 'assistant' && c === null && Array.isArray(m.tool_calls) && m.tool_calls.length > 0) {
      /* refused for its tool calls */
    } else bad(`${at}.content`, 'not a string or an array of parts');
  });
  const last = msgs[msgs.length - 1];
  if (isPlainObject(last) && last.role === 'assistant') bad(`messages[${msgs.length - 1}].role`, 'an assistant message last', 'WEFT_UNSUPPORTED');
  // the chat template adds a few tokens per message
  if (chars + 16 * msgs.length + 64 >= maxContext) maybe('messages that may not fit the context', 'WEFT_CONTEXT_OVERFLOW');
}

function text(e: OpenAIExpectation, b: Body, bad: Bad, maybe: Maybe, maxContext: number): void {
  if (!absent(b, 'logprobs')) {
    if (!int(b.logprobs) || b.logprobs < 0 || b.logprobs > 5) bad('logprobs', 'not an integer in [0, 5]');
    else {
      e.logprobs = true;
      e.topLogprobs = b.logprobs;
    }
  }
  if (!absent(b, 'echo') && b.echo !== false) bad('echo', b.echo === true ? 'echo' : 'not a boolean', 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
  if (!absent(b, 'suffix')) bad('suffix', 'a suffix', 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
  if (!absent(b, 'best_of') && b.best_of !== 1) bad('best_of', 'not 1', 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
  const p = b.prompt;
  if (typeof p === 'string' || (Array.isArray(p) && p.length === 1 && typeof p[0] === 'string')) {
    const s = typeof p === 'string' ? p : (p[0] as string);
    if (s === '') bad('prompt', 'empty');
    if (hasLoneSurrogate(s)) maybe('a prompt with a lone surrogate', 'WEFT_BAD_ARGUMENT');
    if (s !== '' && !/[\p{L}\p{N}]/u.test(s)) maybe('a prompt that may encode to no tokens', 'WEFT_BAD_ARGUMENT');
    if (s.length + 8 >= maxContext) maybe('a prompt that may not fit the context', 'WEFT_CONTEXT_OVERFLOW');
  } else if (Array.isArray(p) && p.length > 0 && p.every((t) => int(t))) {
    const ids = p as number[];
    if (ids.some((t) => t < 0 || t >= 2 ** 31)) bad('prompt', 'a token id out of range', 'WEFT_TOKEN_OUT_OF_RANGE', 'WEFT_BAD_ARGUMENT');
    else if (ids.some((t) => t >= 256)) maybe('token ids past 255 (the vocabulary is not known here)', 'WEFT_TOKEN_OUT_OF_RANGE');
    if (ids.length >= maxContext) bad('prompt', 'more tokens than the context', 'WEFT_CONTEXT_OVERFLOW');
  } else if (Array.isArray(p) && p.length > 1) bad('prompt', 'several prompts', 'WEFT_UNSUPPORTED', 'WEFT_BAD_ARGUMENT');
  else bad('prompt', 'not a string or an array of token ids');
}

/** Fields the route's request objects must have: a `param` may name one that is missing. */
const REQUIRED = new Set(['model', 'messages', 'prompt', 'role', 'content', 'type', 'text']);

/**
 * Whether `param` names a field of the request: a path such as `messages[0].content[1].type` that
 * is in the body, or whose last step is a required field missing from an object that is there;
 * `model` for a model route.
 */
export function paramInRequest(param: string, body: unknown, target: string): boolean {
  if (param === 'model' && target.startsWith('/v1/models/')) return true;
  const steps = [...param.matchAll(/(?:^|\.)([^.[\]]+)|\[(\d+)\]/g)].map((m) => m[1] ?? Number(m[2]));
  if (steps.length === 0 || steps.map((s, i) => (typeof s === 'number' ? `[${s}]` : i ? `.${s}` : s)).join('') !== param) return false;
  let at: unknown = body;
  for (let i = 0; i < steps.length; i++) {
    const s = steps[i]!;
    const last = i === steps.length - 1;
    if (typeof s === 'number') {
      if (!Array.isArray(at) || s >= at.length) return false;
      at = at[s];
    } else {
      if (!isPlainObject(at)) return false;
      if (!own(at, s)) return last && REQUIRED.has(s);
      at = at[s];
    }
  }
  return true;
}

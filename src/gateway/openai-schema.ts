/**
 * The OpenAI-compatible request bodies (POST /v1/chat/completions, POST /v1/completions) checked
 * and turned into what the scheduler runs. As OpenAI does, unknown fields are ignored; a known
 * field of the wrong type or out of range is a 400 naming it (`param`), and a valid request for
 * something weft does not do (n > 1, audio, tools, images) is a 400 WEFT_UNSUPPORTED naming it.
 */
import { WeftError, type WeftErrorCode } from '../errors.js';
import type { SamplingOptions } from '../engine/engine.js';
import type { ChatMessage } from '../session/chat-format.js';

/** A client error with the request field it is about (OpenAI's `param`). */
export class ParamError extends WeftError {
  constructor(
    code: WeftErrorCode,
    message: string,
    readonly param: string | null,
  ) {
    super(code, message);
  }
}

/** What both routes share once checked. */
export interface CompletionParams {
  model: string;
  stream: boolean;
  includeUsage: boolean;
  maxTokens: number | undefined;
  sampling: SamplingOptions;
  stop: string[];
  /** Log-probabilities of the chosen tokens. */
  logprobs: boolean;
  /** Alternatives per position (0..20). */
  topLogprobs: number;
}

export interface ChatParams extends CompletionParams {
  messages: ChatMessage[];
}

export interface TextParams extends CompletionParams {
  /** A text prompt, or token ids. */
  prompt: string | number[];
}

type Body = Record<string, unknown>;

const typeName = (v: unknown) => (v === null ? 'null' : Array.isArray(v) ? 'array' : typeof v);

function bad(param: string, what: string, v: unknown): ParamError {
  return new ParamError('WEFT_BAD_ARGUMENT', `${param} must be ${what} (got ${typeName(v) === 'string' || typeName(v) === 'number' ? JSON.stringify(v) : typeName(v)})`, param);
}

function unsupported(param: string, message: string): ParamError {
  return new ParamError('WEFT_UNSUPPORTED', message, param);
}

/** A JSON request body as an object (WEFT_BAD_REQUEST when it is not one). */
export function parseBody(raw: Buffer, contentType: string | undefined): Body {
  const type = (contentType ?? '').split(';', 1)[0]!.trim().toLowerCase();
  if (type !== 'application/json') throw new ParamError('WEFT_BAD_REQUEST', `the request body must be JSON with Content-Type: application/json (got ${JSON.stringify(type || 'none')})`, null);
  let v: unknown;
  try {
    v = JSON.parse(raw.toString('utf8'));
  } catch (err) {
    throw new ParamError('WEFT_BAD_REQUEST', `the request body is not valid JSON: ${(err as Error).message}`, null);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw new ParamError('WEFT_BAD_REQUEST', `the request body must be a JSON object (got ${typeName(v)})`, null);
  return v as Body;
}

function optNumber(b: Body, k: string, min: number, max: number): number | undefined {
  const v = b[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isFinite(v) || v < min || v > max) throw bad(k, `a number from ${min} to ${max}`, v);
  return v;
}

function optInt(b: Body, k: string, min: number, max = Number.MAX_SAFE_INTEGER): number | undefined {
  const v = b[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) throw bad(k, `an integer from ${min}${max === Number.MAX_SAFE_INTEGER ? '' : ` to ${max}`}`, v);
  return v;
}

function optBool(b: Body, k: string): boolean | undefined {
  const v = b[k];
  if (v === undefined || v === null) return undefined;
  if (typeof v !== 'boolean') throw bad(k, 'true or false', v);
  return v;
}

/** The fields both routes take: model, stream, sampling, stop, max tokens, n. */
function common(b: Body, chat: boolean): Omit<CompletionParams, 'logprobs' | 'topLogprobs'> {
  if (typeof b.model !== 'string' || b.model === '') throw bad('model', 'a model id (GET /v1/models lists them)', b.model);
  const stream = optBool(b, 'stream') ?? false;
  let includeUsage = false;
  const so = b.stream_options;
  if (so !== undefined && so !== null) {
    if (typeof so !== 'object' || Array.isArray(so)) throw bad('stream_options', 'an object', so);
    if (!stream) throw new ParamError('WEFT_BAD_ARGUMENT', 'stream_options is only allowed when stream is true', 'stream_options');
    const iu = (so as Body).include_usage;
    if (iu !== undefined && iu !== null && typeof iu !== 'boolean') throw bad('stream_options.include_usage', 'true or false', iu);
    includeUsage = iu === true;
  }
  const n = optInt(b, 'n', 1);
  if (n !== undefined && n !== 1) throw unsupported('n', `n must be 1: weft returns one choice per request (got ${n}); send several requests instead`);
  const maxCompletion = chat ? optInt(b, 'max_completion_tokens', 1) : undefined;
  const maxTokens = maxCompletion ?? optInt(b, 'max_tokens', 1);
  const sampling: SamplingOptions = {};
  const temperature = optNumber(b, 'temperature', 0, 2);
  if (temperature !== undefined) sampling.temperature = temperature;
  const topP = optNumber(b, 'top_p', 0, 1);
  // top_p 0 (OpenAI: the most likely token only) as the smallest float32 normal (the engine's range is (0, 1])
  if (topP !== undefined) sampling.topP = Math.max(topP, 2 ** -126);
  const presence = optNumber(b, 'presence_penalty', -2, 2);
  if (presence !== undefined) sampling.presencePenalty = presence;
  const frequency = optNumber(b, 'frequency_penalty', -2, 2);
  if (frequency !== undefined) sampling.frequencyPenalty = frequency;
  const seed = optInt(b, 'seed', Number.MIN_SAFE_INTEGER);
  // the engine takes non-negative seeds: a negative one maps to its 52-bit two's complement (distinct seeds stay distinct)
  if (seed !== undefined) sampling.seed = seed >= 0 ? seed : Number(BigInt.asUintN(52, BigInt(seed)));
  // weft extensions (other OpenAI-compatible servers take them too)
  const topK = optInt(b, 'top_k', 0);
  if (topK !== undefined) sampling.topK = topK;
  const minP = optNumber(b, 'min_p', 0, 1);
  if (minP !== undefined) sampling.minP = minP;
  const rep = optNumber(b, 'repetition_penalty', 0.01, 10);
  if (rep !== undefined) sampling.repetitionPenalty = rep;
  const ignoreEos = optBool(b, 'ignore_eos');
  if (ignoreEos) sampling.ignoreEos = true;
  let stop: string[] = [];
  const s = b.stop;
  if (typeof s === 'string') stop = [s];
  else if (Array.isArray(s)) {
    if (s.length > 4 || s.some((x) => typeof x !== 'string' || x === '')) throw bad('stop', 'a string or an array of at most 4 non-empty strings', s);
    stop = s as string[];
  } else if (s !== undefined && s !== null) throw bad('stop', 'a string or an array of strings', s);
  if (stop.includes('')) throw bad('stop', 'a non-empty string', '');
  if (b.user !== undefined && b.user !== null && typeof b.user !== 'string') throw bad('user', 'a string', b.user);
  if (b.modalities !== undefined && b.modalities !== null) {
    if (!Array.isArray(b.modalities) || b.modalities.some((m) => m !== 'text')) throw unsupported('modalities', 'weft generates text only: modalities must be ["text"]');
  }
  if (b.audio !== undefined && b.audio !== null) throw unsupported('audio', 'weft generates text only (no audio output)');
  if (b.tools !== undefined && b.tools !== null && !Array.isArray(b.tools)) throw bad('tools', 'an array of tools', b.tools);
  if (Array.isArray(b.tools) && b.tools.length > 0) throw unsupported('tools', 'weft does not call tools');
  if (b.response_format !== undefined && b.response_format !== null) {
    const t = (b.response_format as Body)?.type;
    if (t !== 'text') throw unsupported('response_format', `weft does not constrain output to a format (response_format.type ${JSON.stringify(t)}); only "text"`);
  }
  return { model: b.model, stream, includeUsage, maxTokens, sampling, stop };
}

function text(content: unknown, param: string): string {
  if (typeof content === 'string') return content;
  if (!Array.isArray(content)) throw bad(param, 'a string or an array of content parts', content);
  let out = '';
  content.forEach((p: unknown, j) => {
    const where = `${param}[${j}]`;
    if (typeof p !== 'object' || p === null || Array.isArray(p)) throw bad(where, 'a content part object', p);
    const part = p as Body;
    if (part.type !== 'text') {
      if (typeof part.type === 'string') throw unsupported(`${where}.type`, `content parts of type ${JSON.stringify(part.type)} are not supported (weft takes text parts)`);
      throw bad(`${where}.type`, '"text"', part.type);
    }
    if (typeof part.text !== 'string') throw bad(`${where}.text`, 'a string', part.text);
    out += part.text;
  });
  return out;
}

/** POST /v1/chat/completions. */
export function chatParams(b: Body): ChatParams {
  const c = common(b, true);
  const logprobs = optBool(b, 'logprobs') ?? false;
  const top = optInt(b, 'top_logprobs', 0, 20);
  if (top !== undefined && !logprobs) throw new ParamError('WEFT_BAD_ARGUMENT', 'top_logprobs needs logprobs: true', 'top_logprobs');
  const msgs = b.messages;
  if (!Array.isArray(msgs) || msgs.length === 0) throw bad('messages', 'a non-empty array of messages', msgs);
  const messages: ChatMessage[] = msgs.map((m: unknown, i) => {
    const where = `messages[${i}]`;
    if (typeof m !== 'object' || m === null || Array.isArray(m)) throw bad(where, 'a message object', m);
    const msg = m as Body;
    const role = msg.role;
    if (role === 'tool' || role === 'function') throw unsupported(`${where}.role`, `messages with role ${JSON.stringify(role)} are not supported (weft does not call tools)`);
    if (role !== 'system' && role !== 'developer' && role !== 'user' && role !== 'assistant') {
      throw bad(`${where}.role`, 'one of "system", "developer", "user", "assistant"', role);
    }
    if (role === 'assistant' && Array.isArray(msg.tool_calls) && msg.tool_calls.length > 0) throw unsupported(`${where}.tool_calls`, 'weft does not call tools');
    if (msg.content === null || msg.content === undefined) throw bad(`${where}.content`, 'a string or an array of text parts', msg.content);
    return { role: role === 'developer' ? 'system' : role, content: text(msg.content, `${where}.content`) };
  });
  const last = messages[messages.length - 1]!;
  if (last.role === 'assistant') throw unsupported(`messages[${messages.length - 1}].role`, 'the last message must not be an assistant message (weft does not continue a partial answer)');
  return { ...c, messages, logprobs, topLogprobs: top ?? 0 };
}

/** POST /v1/completions. */
export function textParams(b: Body, vocabSize: number): TextParams {
  const c = common(b, false);
  if (optBool(b, 'echo')) throw unsupported('echo', 'echo is not supported');
  if (b.suffix !== undefined && b.suffix !== null) throw unsupported('suffix', 'suffix (insertion) is not supported');
  const bestOf = optInt(b, 'best_of', 1);
  if (bestOf !== undefined && bestOf !== 1) throw unsupported('best_of', 'best_of must be 1');
  const lp = optInt(b, 'logprobs', 0, 5);
  let prompt: string | number[];
  const p = b.prompt;
  if (typeof p === 'string') prompt = p;
  else if (Array.isArray(p) && p.length === 1 && typeof p[0] === 'string') prompt = p[0];
  else if (Array.isArray(p) && p.length > 0 && p.every((t) => Number.isInteger(t))) {
    if (p.some((t) => (t as number) < 0 || (t as number) >= vocabSize)) throw new ParamError('WEFT_TOKEN_OUT_OF_RANGE', `prompt token ids must be in [0, ${vocabSize})`, 'prompt');
    prompt = p as number[];
  } else if (Array.isArray(p) && p.length > 1) throw unsupported('prompt', 'one prompt per request: a string, or one array of token ids');
  else throw bad('prompt', 'a string or an array of token ids', p);
  if (prompt.length === 0) throw bad('prompt', 'a non-empty string', prompt);
  return { ...c, prompt, logprobs: lp !== undefined, topLogprobs: lp ?? 0 };
}

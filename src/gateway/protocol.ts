/**
 * Protocol v1 (docs/protocol.md): client frames are JSON text objects with a `type` and an
 * optional `event_id` that the server's answer echoes. `parseClientFrame` turns one frame into a
 * typed ClientEvent or a ProtocolError (code from the catalog in src/errors.ts).
 */
import type { WeftErrorCode } from '../errors.js';
import type { SamplingOptions } from '../engine/engine.js';

import type { ClientEvent, SessionUpdate, WireSampling } from '../client/protocol.js';

export type { ClientEvent, SessionUpdate, WireSampling } from '../client/protocol.js';

export interface ErrorEvent {
  type: 'error';
  code: WeftErrorCode;
  message: string;
  event_id?: string;
}

export class ProtocolError {
  constructor(
    readonly code: WeftErrorCode,
    readonly message: string,
    readonly event_id?: string,
  ) {}

  toEvent(): ErrorEvent {
    const ev: ErrorEvent = { type: 'error', code: this.code, message: this.message };
    if (this.event_id !== undefined) ev.event_id = this.event_id;
    return ev;
  }
}

export const CLIENT_EVENT_TYPES = ['session.update', 'message.create', 'input.append', 'input.clear', 'response.cancel', 'response.truncate', 'session.resume', 'session.close'] as const;

/** Most characters an event_id may have. */
export const MAX_EVENT_ID = 256;

const NUMERIC: Record<Exclude<keyof WireSampling, 'stop' | 'stop_token_ids' | 'logprobs'>, 'number' | 'integer'> = {
  temperature: 'number',
  top_p: 'number',
  top_k: 'integer',
  min_p: 'number',
  repetition_penalty: 'number',
  presence_penalty: 'number',
  frequency_penalty: 'number',
  seed: 'integer',
  max_tokens: 'integer',
  top_logprobs: 'integer',
};

/** Most stop strings, and most characters in one. */
export const MAX_STOP_STRINGS = 16;
export const MAX_STOP_CHARS = 1024;

/** The fields each client event may have (besides `type` and `event_id`). */
const EVENT_FIELDS: Record<ClientEvent['type'], readonly string[]> = {
  'session.update': ['session'],
  'message.create': ['content', 'commit', 'sampling'],
  'input.append': ['text'],
  'input.clear': [],
  'response.cancel': ['truncate_at_seq'],
  'response.truncate': ['response_id', 'seq'],
  'session.resume': ['response_id', 'last_seq'],
  'session.close': [],
};
const SESSION_FIELDS = ['system', 'sampling', 'context_policy', 'rotate_resume_token', 'progress'];

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
/** A key of a table, looked up without the prototype chain (`constructor`, `__proto__` are not fields). */
const has = (table: object, key: string) => Object.prototype.hasOwnProperty.call(table, key);

/** The first key of `obj` that is not among `allowed`, if any. */
function unknownKey(obj: Record<string, unknown>, allowed: readonly string[]): string | undefined {
  for (const k of Object.keys(obj)) if (!allowed.includes(k)) return k;
  return undefined;
}

const quoteKey = (k: string) => JSON.stringify(k.length > 64 ? k.slice(0, 64) + '…' : k);

function parseSampling(v: unknown, where: string, id: string | undefined): WireSampling {
  const bad = (msg: string) => new ProtocolError('WEFT_BAD_FRAME', `${where}: ${msg}`, id);
  if (!isObject(v)) throw bad('must be an object');
  const out: WireSampling = {};
  for (const k of Object.keys(v)) {
    const val = v[k];
    if (k === 'stop') {
      if (!Array.isArray(val) || val.some((s) => typeof s !== 'string')) throw bad('stop must be an array of strings');
      if (val.length > MAX_STOP_STRINGS) throw bad(`stop takes at most ${MAX_STOP_STRINGS} strings`);
      if (val.some((s: string) => s.length > MAX_STOP_CHARS)) throw bad(`a stop string has at most ${MAX_STOP_CHARS} characters`);
      out.stop = val as string[];
      continue;
    }
    if (k === 'stop_token_ids') {
      if (!Array.isArray(val) || val.length > MAX_STOP_STRINGS || val.some((t) => !Number.isInteger(t) || t < 0)) throw bad(`stop_token_ids must be an array of at most ${MAX_STOP_STRINGS} token ids`);
      out.stop_token_ids = val as number[];
      continue;
    }
    if (k === 'logprobs') {
      if (typeof val !== 'boolean') throw bad('logprobs must be a boolean');
      out.logprobs = val;
      continue;
    }
    if (!has(NUMERIC, k)) throw bad(`unknown field ${quoteKey(k)}`);
    const kind = NUMERIC[k as keyof typeof NUMERIC];
    if (typeof val !== 'number' || !Number.isFinite(val)) throw bad(`${k} must be a finite number`);
    if (kind === 'integer' && !Number.isInteger(val)) throw bad(`${k} must be an integer`);
    if (k === 'max_tokens' && val < 1) throw bad('max_tokens must be at least 1');
    if (k === 'top_logprobs' && (val < 0 || val > 20)) throw bad('top_logprobs must be from 0 to 20');
    (out as Record<string, number>)[k] = val;
  }
  return out;
}

/** A delta seq field: an integer from -1 (none) up. */
function seqField(v: unknown, name: string, id: string | undefined): number {
  if (typeof v !== 'number' || !Number.isInteger(v) || v < -1 || v > 2 ** 31) throw new ProtocolError('WEFT_BAD_FRAME', `${name} must be an integer from -1`, id);
  return v;
}

/** Deepest nesting and most values (`,` `:` and brackets outside strings) a frame may have: a valid one has a handful. */
export const MAX_FRAME_DEPTH = 8;
export const MAX_FRAME_VALUES = 256;

/**
 * Why a frame's JSON cannot be a protocol frame, judged from its structure alone, or null. JSON.parse
 * of a megabyte nested a million levels deep takes over 100 ms (of numbers, 15 ms); valid frames
 * are a few strings in a few objects. Strings are skipped with indexOf (memchr), so a frame that
 * is one long `content` costs microseconds.
 */
export function structureError(b: Buffer): string | null {
  let depth = 0;
  let values = 0;
  for (let i = 0; i < b.length; i++) {
    const c = b[i]!;
    if (c === 0x22) {
      // to the closing quote: one not preceded by an odd run of backslashes
      let j = i;
      for (;;) {
        j = b.indexOf(0x22, j + 1);
        if (j < 0) return null; // unterminated: JSON.parse says so
        let k = j - 1;
        while (b[k] === 0x5c) k--;
        if ((j - 1 - k) % 2 === 0) break;
      }
      i = j;
    } else if (c === 0x5b || c === 0x7b) {
      if (++depth > MAX_FRAME_DEPTH) return `the frame nests deeper than ${MAX_FRAME_DEPTH} levels`;
      values++;
    } else if (c === 0x5d || c === 0x7d) depth--;
    else if (c === 0x2c || c === 0x3a) values++;
    if (values > MAX_FRAME_VALUES) return `the frame has more than ${MAX_FRAME_VALUES} values`;
  }
  return null;
}

/**
 * Parses one client frame. `data` is the frame's payload; `isBinary` whether it came as a binary
 * frame. Throws nothing: a rejected frame comes back as a ProtocolError. A key that is not a
 * documented field, on any object of the frame, is WEFT_BAD_FRAME.
 */
export function parseClientFrame(data: string | Buffer, isBinary: boolean, maxFrameBytes: number): ClientEvent | ProtocolError {
  const size = typeof data === 'string' ? Buffer.byteLength(data) : data.length;
  if (size > maxFrameBytes) return new ProtocolError('WEFT_FRAME_TOO_LARGE', `the frame has ${size} bytes; the limit is ${maxFrameBytes}`);
  if (isBinary) return new ProtocolError('WEFT_BAD_FRAME', 'binary frames are not accepted: send JSON text frames');
  const bytes = typeof data === 'string' ? Buffer.from(data) : data;
  const shape = structureError(bytes);
  if (shape) return new ProtocolError('WEFT_BAD_FRAME', shape);
  let msg: unknown;
  try {
    msg = JSON.parse(typeof data === 'string' ? data : data.toString('utf8'));
  } catch {
    return new ProtocolError('WEFT_BAD_FRAME', 'the frame is not valid JSON');
  }
  if (!isObject(msg)) return new ProtocolError('WEFT_BAD_FRAME', 'a frame must be a JSON object');
  let id: string | undefined;
  if (has(msg, 'event_id')) {
    if (typeof msg.event_id !== 'string' || msg.event_id.length > MAX_EVENT_ID) {
      return new ProtocolError('WEFT_BAD_FRAME', `event_id must be a string of at most ${MAX_EVENT_ID} characters`);
    }
    id = msg.event_id;
  }
  const type = msg.type;
  if (typeof type !== 'string') return new ProtocolError('WEFT_BAD_FRAME', 'a frame needs a type (a string)', id);
  if (!has(EVENT_FIELDS, type)) return new ProtocolError('WEFT_UNKNOWN_TYPE', `unknown event type ${quoteKey(type)}`, id);
  const fields = EVENT_FIELDS[type as ClientEvent['type']];
  const extra = unknownKey(msg, ['type', 'event_id', ...fields]);
  if (extra !== undefined) return new ProtocolError('WEFT_BAD_FRAME', `${type}: unknown field ${quoteKey(extra)}`, id);
  const withId = <T extends object>(ev: T): T & { event_id?: string } => (id === undefined ? ev : { ...ev, event_id: id });
  try {
    switch (type) {
      case 'session.update': {
        if (!isObject(msg.session)) throw new ProtocolError('WEFT_BAD_FRAME', 'session.update needs a session object', id);
        const s = msg.session;
        const extraField = unknownKey(s, SESSION_FIELDS);
        if (extraField !== undefined) throw new ProtocolError('WEFT_BAD_FRAME', `session.update: unknown field session.${quoteKey(extraField)}`, id);
        const session: SessionUpdate = {};
        if (has(s, 'system')) {
          if (typeof s.system !== 'string') throw new ProtocolError('WEFT_BAD_FRAME', 'session.system must be a string', id);
          session.system = s.system;
        }
        if (has(s, 'sampling')) session.sampling = parseSampling(s.sampling, 'session.sampling', id);
        if (has(s, 'context_policy')) {
          if (s.context_policy !== 'truncate' && s.context_policy !== 'reject') throw new ProtocolError('WEFT_BAD_FRAME', 'session.context_policy must be "truncate" or "reject"', id);
          session.context_policy = s.context_policy;
        }
        if (has(s, 'progress')) {
          if (typeof s.progress !== 'boolean') throw new ProtocolError('WEFT_BAD_FRAME', 'session.progress must be a boolean', id);
          session.progress = s.progress;
        }
        if (has(s, 'rotate_resume_token')) {
          if (typeof s.rotate_resume_token !== 'boolean') throw new ProtocolError('WEFT_BAD_FRAME', 'session.rotate_resume_token must be a boolean', id);
          session.rotate_resume_token = s.rotate_resume_token;
        }
        return withId({ type: 'session.update' as const, session });
      }
      case 'message.create': {
        const commit = has(msg, 'commit') ? msg.commit : undefined;
        if (commit !== undefined && commit !== true) throw new ProtocolError('WEFT_BAD_FRAME', 'message.create commit must be true (the typed input is the message)', id);
        if (commit && has(msg, 'content')) throw new ProtocolError('WEFT_BAD_FRAME', 'message.create takes content or commit, not both', id);
        if (!commit && typeof msg.content !== 'string') throw new ProtocolError('WEFT_BAD_FRAME', 'message.create needs content (a string) or commit: true', id);
        const ev: Extract<ClientEvent, { type: 'message.create' }> = { type: 'message.create', content: commit ? '' : (msg.content as string) };
        if (commit) ev.commit = true;
        if (has(msg, 'sampling')) ev.sampling = parseSampling(msg.sampling, 'sampling', id);
        return withId(ev);
      }
      case 'input.append':
        if (typeof msg.text !== 'string') throw new ProtocolError('WEFT_BAD_FRAME', 'input.append needs text (a string)', id);
        return withId({ type: 'input.append' as const, text: msg.text });
      case 'input.clear':
        return withId({ type: 'input.clear' as const });
      case 'response.cancel': {
        const ev: Extract<ClientEvent, { type: 'response.cancel' }> = { type: 'response.cancel' };
        if (has(msg, 'truncate_at_seq')) ev.truncate_at_seq = seqField(msg.truncate_at_seq, 'truncate_at_seq', id);
        return withId(ev);
      }
      case 'response.truncate':
      case 'session.resume': {
        const key = type === 'response.truncate' ? 'seq' : 'last_seq';
        if (!has(msg, key)) throw new ProtocolError('WEFT_BAD_FRAME', `${type} needs ${key} (an integer, -1 for none)`, id);
        const n = seqField(msg[key], key, id);
        const responseId = has(msg, 'response_id') ? msg.response_id : undefined;
        if (responseId !== undefined && (typeof responseId !== 'string' || responseId.length > MAX_EVENT_ID)) throw new ProtocolError('WEFT_BAD_FRAME', 'response_id must be a string', id);
        const ev = type === 'response.truncate' ? { type: 'response.truncate' as const, seq: n } : { type: 'session.resume' as const, last_seq: n };
        return withId(responseId === undefined ? ev : { ...ev, response_id: responseId as string });
      }
      default:
        return withId({ type: 'session.close' as const });
    }
  } catch (err) {
    if (err instanceof ProtocolError) return err;
    throw err;
  }
}

/** The sampling fields that the wire and the engine both have: wire name, engine name. */
const SAMPLING_NAMES = [
  ['temperature', 'temperature'],
  ['top_p', 'topP'],
  ['top_k', 'topK'],
  ['min_p', 'minP'],
  ['repetition_penalty', 'repetitionPenalty'],
  ['presence_penalty', 'presencePenalty'],
  ['frequency_penalty', 'frequencyPenalty'],
  ['seed', 'seed'],
] as const;

/** The engine's sampling options as the wire spells them (the fields both have). */
export function toWireSampling(s: SamplingOptions): WireSampling {
  const w: WireSampling = {};
  for (const [wire, engine] of SAMPLING_NAMES) {
    const v = s[engine];
    if (v !== undefined) w[wire] = v;
  }
  return w;
}

/** Wire sampling → the engine's options, max_tokens and stop strings. */
export function toTurnSampling(w: WireSampling): { sampling: SamplingOptions; maxTokens?: number; stop?: string[]; logprobs?: boolean; topLogprobs?: number } {
  const s: SamplingOptions = {};
  for (const [wire, engine] of SAMPLING_NAMES) {
    const v = w[wire];
    if (v !== undefined) s[engine] = v;
  }
  if (w.stop_token_ids !== undefined) s.stopTokens = w.stop_token_ids;
  // the engine returns log-probabilities with n >= 1 alternatives; top_logprobs 0 drops them on the wire
  if (w.logprobs) s.logprobs = Math.max(1, w.top_logprobs ?? 0);
  const out: ReturnType<typeof toTurnSampling> = { sampling: s };
  if (w.logprobs) {
    out.logprobs = true;
    out.topLogprobs = w.top_logprobs ?? 0;
  }
  if (w.max_tokens !== undefined) out.maxTokens = w.max_tokens;
  if (w.stop !== undefined) out.stop = w.stop;
  return out;
}

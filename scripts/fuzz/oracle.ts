/**
 * The oracle: what protocol v1 (docs/protocol.md) says the answer to a frame is. `judge` reads a
 * frame alone (valid, or why not, with the code each reason gives); `expectFor` adds the
 * session's state (a response running, the sampling defaults) and says which answers and error
 * codes are right.
 */
import { structureError } from '../../src/gateway/protocol.js';
import { FRAME_FIELDS, MAX_EVENT_ID, MAX_FRAME_DEPTH, MAX_FRAME_VALUES, MAX_STOP_CHARS, MAX_STOP_STRINGS, MAX_TOKEN_ID, MAX_TOP_LOGPROBS, PROTO_KEYS, SAMPLING_KINDS, SESSION_FIELDS } from './schema.js';
import { isPlainObject, isValidUtf8, own } from './util.js';

export interface Judgement {
  size: number;
  binary: boolean;
  badUtf8: boolean;
  /** Over max_frame_bytes: WEFT_FRAME_TOO_LARGE. */
  tooLarge: boolean;
  /** Over 4x max_frame_bytes: not read, the connection is closed. */
  overHard: boolean;
  /** The frame's `type` when it is one of the client events. */
  type?: string;
  /** The frame's event_id when it is a valid one (a string of at most 256 characters). */
  eventId?: string;
  /** Why the frame is invalid, with the code each reason gives. Empty: a valid frame. */
  problems: { code: string; rule: string; detail: string }[];
  /** The frame's sampling (valid fields only), for the range check against the session's defaults. */
  sampling?: Record<string, unknown>;
  /** Values the protocol allows but the server may reasonably refuse (lone surrogates in content, empty stop strings...). */
  unsure: string[];
  /** response.truncate, session.resume: the response_id named, and seq / last_seq. */
  responseId?: string;
  seq?: number;
  /** input.append: the text. */
  text?: string;
  /** message.create {commit: true}: the message is the typed input. */
  commit?: boolean;
  /** session.update: rotate_resume_token true (session.updated carries a new token); progress as set. */
  rotate?: boolean;
  progress?: boolean;
}

const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/;
/** A string with a UTF-16 surrogate that is not part of a pair (not Unicode text). */
export const hasLoneSurrogate = (s: string) => LONE_SURROGATE.test(s);

/**
 * Whether a frame breaks the structure limits (nesting, number of values), judged before parsing
 * so no event_id can be echoed. The scan is the server's own (a byte-level rule the docs state;
 * a second copy here would only repeat it): the fuzzer checks that such frames get their code.
 */
export const overStructureLimits = (b: Buffer): boolean => structureError(b) !== null;

/** Judges one frame alone (the session's state comes in `expectFor`). */
export function judge(data: Buffer, binary: boolean, limit: number): Judgement {
  const j: Judgement = { size: data.length, binary, badUtf8: !binary && !isValidUtf8(data), tooLarge: data.length > limit, overHard: data.length > 4 * limit, problems: [], unsure: [] };
  if (j.tooLarge) return j;
  const bad = (rule: string, detail = '', code = 'WEFT_BAD_FRAME') => j.problems.push({ code, rule, detail });
  if (binary) {
    bad('binary frame');
    return j;
  }
  if (overStructureLimits(j.badUtf8 ? Buffer.from(data.toString('utf8')) : data)) {
    bad(`nested deeper than ${MAX_FRAME_DEPTH} or more than ${MAX_FRAME_VALUES} values`);
    return j;
  }
  let msg: unknown;
  try {
    msg = JSON.parse(data.toString('utf8'));
  } catch {
    bad('not JSON');
    return j;
  }
  if (!isPlainObject(msg)) {
    bad('not an object', Array.isArray(msg) ? 'array' : msg === null ? 'null' : typeof msg);
    return j;
  }
  if (own(msg, 'event_id')) {
    const id = msg['event_id'];
    if (typeof id === 'string' && id.length <= MAX_EVENT_ID) j.eventId = id;
    else bad('bad event_id', typeof id === 'string' ? `${id.length} characters` : id === null ? 'null' : Array.isArray(id) ? 'array' : typeof id);
  }
  const type = own(msg, 'type') ? msg['type'] : undefined;
  if (typeof type !== 'string') {
    bad('type not a string', type === undefined ? 'missing' : type === null ? 'null' : typeof type);
    return j;
  }
  const allowed = FRAME_FIELDS.get(type);
  if (!allowed) {
    bad('unknown type', JSON.stringify(type.slice(0, 40)), 'WEFT_UNKNOWN_TYPE');
    return j;
  }
  j.type = type;
  const unknownKeys = (o: Record<string, unknown>, keys: readonly string[], where: string) => {
    for (const k of Object.keys(o)) {
      if (!keys.includes(k)) bad(`unknown key at ${where}${PROTO_KEYS.includes(k) ? ' (prototype name)' : ''}`, JSON.stringify(k.slice(0, 40)));
    }
  };
  unknownKeys(msg, allowed, '$');
  if (type === 'session.update') {
    const s = own(msg, 'session') ? msg['session'] : undefined;
    if (!isPlainObject(s)) bad('session not an object', s === undefined ? 'missing' : Array.isArray(s) ? 'array' : String(s === null ? 'null' : typeof s));
    else {
      unknownKeys(s, SESSION_FIELDS, '$.session');
      if (own(s, 'system') && typeof s['system'] !== 'string') bad('system not a string', typeof s['system']);
      if (own(s, 'context_policy') && s['context_policy'] !== 'truncate' && s['context_policy'] !== 'reject') bad('context_policy not truncate or reject');
      if (own(s, 'sampling')) j.sampling = judgeSampling(s['sampling'], '$.session.sampling', bad, j.unsure);
      for (const k of ['progress', 'rotate_resume_token']) {
        if (own(s, k) && typeof s[k] !== 'boolean') bad(`${k} not a boolean`, s[k] === null ? 'null' : typeof s[k]);
      }
      if (typeof s['progress'] === 'boolean') j.progress = s['progress'];
      j.rotate = s['rotate_resume_token'] === true;
    }
  } else if (type === 'message.create') {
    if (own(msg, 'commit')) {
      // the typed message: commit must be true, and there is no content
      if (msg['commit'] !== true) bad('commit not true', JSON.stringify(msg['commit'])?.slice(0, 20));
      else if (own(msg, 'content')) bad('commit with content');
      else j.commit = true;
    } else {
      const c = own(msg, 'content') ? msg['content'] : undefined;
      if (typeof c !== 'string') bad('content not a string', c === undefined ? 'missing' : c === null ? 'null' : typeof c);
      else if (LONE_SURROGATE.test(c)) j.unsure.push('content has a lone surrogate');
    }
    if (own(msg, 'sampling')) j.sampling = judgeSampling(msg['sampling'], '$.sampling', bad, j.unsure);
  } else if (type === 'input.append') {
    const t = own(msg, 'text') ? msg['text'] : undefined;
    if (typeof t !== 'string') bad('text not a string', t === undefined ? 'missing' : t === null ? 'null' : typeof t);
    else j.text = t;
  } else if (type === 'response.cancel') {
    if (own(msg, 'truncate_at_seq') && !isSeq(msg['truncate_at_seq'])) bad('a seq that is not an integer from -1', 'truncate_at_seq');
  } else if (type === 'response.truncate' || type === 'session.resume') {
    const key = type === 'response.truncate' ? 'seq' : 'last_seq';
    if (!own(msg, key)) bad(`${key} missing`);
    else if (!isSeq(msg[key])) bad('a seq that is not an integer from -1', key);
    else j.seq = msg[key] as number;
    if (own(msg, 'response_id')) {
      const id = msg['response_id'];
      if (typeof id !== 'string' || id.length > MAX_EVENT_ID) bad(`response_id not a string of at most ${MAX_EVENT_ID} characters`);
      else j.responseId = id;
    }
  }
  return j;
}

/** seq, last_seq, truncate_at_seq: an integer from -1 (to 2^31). */
const isSeq = (v: unknown) => typeof v === 'number' && Number.isInteger(v) && v >= -1 && v <= 2 ** 31;

function judgeSampling(v: unknown, where: string, bad: (rule: string, detail?: string) => void, unsure: string[]): Record<string, unknown> | undefined {
  if (!isPlainObject(v)) {
    bad('sampling not an object', Array.isArray(v) ? 'array' : v === null ? 'null' : typeof v);
    return undefined;
  }
  const out: Record<string, unknown> = Object.create(null) as Record<string, unknown>;
  for (const k of Object.keys(v)) {
    const val = v[k];
    const kind = SAMPLING_KINDS.get(k);
    if (!kind) {
      bad(`unknown key at ${where}${PROTO_KEYS.includes(k) ? ' (prototype name)' : ''}`, JSON.stringify(k.slice(0, 40)));
      continue;
    }
    if (kind === 'stop') {
      if (!Array.isArray(val) || val.some((s) => typeof s !== 'string')) bad('stop not an array of strings');
      else if (val.length > MAX_STOP_STRINGS) bad(`more than ${MAX_STOP_STRINGS} stop strings`, String(val.length));
      else if (val.some((s: string) => s.length > MAX_STOP_CHARS)) bad(`a stop string over ${MAX_STOP_CHARS} characters`);
      else {
        if (val.some((s: string) => s === '' || LONE_SURROGATE.test(s))) unsure.push('odd stop string');
        out[k] = val;
      }
      continue;
    }
    if (kind === 'token-ids') {
      if (!Array.isArray(val) || val.length > MAX_STOP_STRINGS || val.some((t) => typeof t !== 'number' || !Number.isInteger(t) || t < 0)) bad(`stop_token_ids not an array of at most ${MAX_STOP_STRINGS} non-negative integers`);
      else out[k] = val;
      continue;
    }
    if (kind === 'boolean') {
      if (typeof val !== 'boolean') bad(`${k} not a boolean`, val === null ? 'null' : typeof val);
      else out[k] = val;
      continue;
    }
    if (typeof val !== 'number' || !Number.isFinite(val)) bad('sampling value not a finite number', `${k}: ${val === null ? 'null' : typeof val}`);
    else if (kind === 'integer' && !Number.isInteger(val)) bad('sampling value not an integer', `${k}: ${val}`);
    else if (k === 'max_tokens' && val < 1) bad('max_tokens below 1', String(val));
    else if (k === 'top_logprobs' && (val < 0 || val > MAX_TOP_LOGPROBS)) bad(`top_logprobs out of 0..${MAX_TOP_LOGPROBS}`, String(val));
    else out[k] = val;
  }
  return out;
}

/**
 * The engine's range checks (native/src/engine.cpp setSampling, on float32 values as there, and
 * src/engine/engine.ts): 'bad' when the merged sampling must be refused with WEFT_BAD_ARGUMENT.
 */
export function samplingRange(s: Record<string, unknown>): 'ok' | 'bad' | 'unsure' {
  const f = (k: string): number | undefined => (typeof s[k] === 'number' ? Math.fround(s[k] as number) : undefined);
  const n = (k: string): number | undefined => (typeof s[k] === 'number' ? (s[k] as number) : undefined);
  let t: number | undefined;
  if ((t = f('temperature')) !== undefined && !(t >= 0 && Number.isFinite(t))) return 'bad';
  if ((t = f('top_p')) !== undefined && !(t > 0 && t <= 1)) return 'bad';
  if ((t = f('min_p')) !== undefined && !(t >= 0 && t <= 1)) return 'bad';
  if ((t = f('repetition_penalty')) !== undefined && !(t >= Math.fround(0.01) && t <= 100)) return 'bad';
  if ((t = f('presence_penalty')) !== undefined && !(t >= -100 && t <= 100)) return 'bad';
  if ((t = f('frequency_penalty')) !== undefined && !(t >= -100 && t <= 100)) return 'bad';
  if ((t = n('top_k')) !== undefined && !(t >= 0 && t <= 2147483647)) return 'bad';
  if ((t = n('seed')) !== undefined && !(Number.isSafeInteger(t) && t >= 0)) return 'bad';
  if ((t = n('max_tokens')) !== undefined && !(t >= 1)) return 'bad';
  const ids = s['stop_token_ids'];
  if (Array.isArray(ids) && ids.some((id) => typeof id === 'number' && id > MAX_TOKEN_ID)) return 'bad';
  // a server may bound these further
  if ((t = n('max_tokens')) !== undefined && t > 1_000_000) return 'unsure';
  return 'ok';
}

/** `silence`: no answer (input.append, input.clear); an error may still come. */
export type AnswerKind = 'session.updated' | 'response.created' | 'cancel.done' | 'session.closed' | 'response.truncated' | 'session.resumed' | 'silence';
export interface Expectation {
  answers: Set<AnswerKind>;
  codes: Set<string>;
  /** The connection may be closed instead of answered (invalid UTF-8, over 4x the limit). */
  closeOk: boolean;
  /** The event_id every answer must echo (except WEFT_FRAME_TOO_LARGE and WEFT_RATE_LIMITED, sent before parsing). */
  echo?: string;
  /** Why the frame is invalid (its first problem), or undefined for a valid frame. */
  invalid?: string;
}

/**
 * The answers protocol v1 allows for a judged frame given the session's state: `running` when a
 * response may still run (the client has not seen its response.done), `defaults` the session's
 * sampling defaults as its last session.updated echoed them (undefined: not known), `typedUnsure`
 * when the typed message (input.append) holds what `content` may not (a lone surrogate).
 */
export function expectFor(j: Judgement, running: boolean, defaults: Record<string, unknown> | undefined, typedUnsure = false): Expectation {
  const e: Expectation = { answers: new Set(), codes: new Set(['WEFT_RATE_LIMITED']), closeOk: false };
  if (j.badUtf8) e.closeOk = true; // RFC 6455 8.1: a text frame that is not UTF-8 fails the connection (1007)
  if (j.overHard) e.closeOk = true;
  if (j.tooLarge) {
    e.codes.add('WEFT_FRAME_TOO_LARGE');
    e.invalid = 'over max_frame_bytes';
    return e;
  }
  e.echo = j.eventId;
  if (j.problems.length) {
    for (const p of j.problems) e.codes.add(p.code);
    // a frame with an unknown type cannot be checked further: either code is right
    if (e.codes.has('WEFT_UNKNOWN_TYPE')) e.codes.add('WEFT_BAD_FRAME');
    e.invalid = j.problems[0]!.rule;
    return e;
  }
  const unsure = j.unsure.length > 0 || (j.commit === true && typedUnsure);
  if (unsure) e.codes.add('WEFT_BAD_FRAME').add('WEFT_BAD_ARGUMENT');
  switch (j.type) {
    case 'session.update': {
      e.answers.add('session.updated');
      if (running) e.codes.add('WEFT_RESPONSE_IN_PROGRESS');
      // range checks are made at message.create today; a server may make them here too
      const mine = samplingRange(j.sampling ?? {});
      const merged = defaults ? samplingRange({ ...defaults, ...j.sampling }) : 'unsure';
      if (mine !== 'ok' || merged !== 'ok') e.codes.add('WEFT_BAD_ARGUMENT');
      break;
    }
    case 'message.create': {
      e.codes.add('WEFT_CONTEXT_OVERFLOW').add('WEFT_OVERLOADED').add('WEFT_KV_EXHAUSTED');
      if (running) e.codes.add('WEFT_RESPONSE_IN_PROGRESS');
      const effective = defaults ? { ...defaults, ...j.sampling } : undefined;
      const range = effective ? samplingRange(effective) : 'unsure';
      if (range !== 'ok') e.codes.add('WEFT_BAD_ARGUMENT');
      // a stop id outside the model's vocabulary (which the oracle does not know)
      const ids = effective?.['stop_token_ids'];
      if (!effective || (Array.isArray(ids) && ids.length > 0)) e.codes.add('WEFT_TOKEN_OUT_OF_RANGE');
      if (range !== 'bad') e.answers.add('response.created');
      else if (!e.invalid) e.invalid = 'sampling out of range';
      break;
    }
    case 'response.cancel':
      e.codes.add('WEFT_NO_RESPONSE');
      if (running) e.answers.add('cancel.done');
      break;
    case 'response.truncate':
      // the latest response's tokens of deltas 0..seq: NO_RESPONSE for none (or another response_id), BAD_ARGUMENT for a seq it has not
      e.answers.add('response.truncated');
      e.codes.add('WEFT_NO_RESPONSE').add('WEFT_BAD_ARGUMENT');
      if (running) e.codes.add('WEFT_RESPONSE_IN_PROGRESS');
      break;
    case 'input.append':
      // nothing on success; a message that would no longer fit is refused (and kept as it was)
      e.answers.add('silence');
      e.codes.add('WEFT_CONTEXT_OVERFLOW');
      break;
    case 'input.clear':
      e.answers.add('silence');
      break;
    case 'session.resume':
      // always session.resumed first; what follows it: afterResumed
      e.answers.add('session.resumed');
      break;
    case 'session.close':
      e.answers.add('session.closed');
      break;
  }
  return e;
}

/** Where the session's latest response stands, as session.resumed tells it (`response`). */
export interface ResumedResponse {
  response_id: string;
  status: 'in_progress' | 'done';
  next_seq: number;
}

/** What follows a session.resumed that answers a session.resume. */
export type AfterResumed = { kind: 'nothing' } | { kind: 'error'; code: string } | { kind: 'replay'; responseId: string; fromSeq: number };

/**
 * What the replay of a session.resume sends after session.resumed (docs/protocol.md, Resume):
 * `latest` is session.resumed's `response`, `delivered` whether this client got its response.done.
 * A response_id that is not the latest's is WEFT_REPLAY_GAP; without response_id a response whose
 * response.done was delivered is not replayed; a last_seq beyond what was sent is
 * WEFT_BAD_ARGUMENT; otherwise the deltas after last_seq and response.done (a WEFT_REPLAY_GAP with
 * the text may stand for deltas the window no longer holds).
 */
export function afterResumed(j: Judgement, latest: ResumedResponse | null, delivered: boolean): AfterResumed {
  if (!latest || (j.responseId !== undefined && j.responseId !== latest.response_id)) return j.responseId !== undefined ? { kind: 'error', code: 'WEFT_REPLAY_GAP' } : { kind: 'nothing' };
  if (j.responseId === undefined && delivered) return { kind: 'nothing' };
  const lastSeq = j.seq ?? -1;
  if (lastSeq >= latest.next_seq) return { kind: 'error', code: 'WEFT_BAD_ARGUMENT' };
  return { kind: 'replay', responseId: latest.response_id, fromSeq: lastSeq + 1 };
}

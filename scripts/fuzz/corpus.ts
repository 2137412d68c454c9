/**
 * The corpus the frames are made from: valid protocol frames (baseFrame), and the odd values,
 * keys, numbers and strings the mutations put into them.
 */
import { Obj, Raw, type J } from './json.js';
import type { Rng } from './rng.js';
import { PROTO_KEYS } from './schema.js';

export const JUNK_KEYS = ['', ' ', 'Type', 'TYPE', 'type ', ' type', 'type\u0000', 'event-id', 'eventId', 'event_id\u200b', 'max-tokens', 'maxTokens', 'topK', 'stopTokens', 'ignoreEos', 'ignore_eos', 'logprobs', 'stop_tokens', 'extra', 'x', 'session', 'content', 'sampling', 'system', 'stop', 'seed', 'truncate_at_seq', 'last_seq', 'seq', 'response_id', 'context_policy', 'commit', 'text', 'progress', 'rotate_resume_token', 'stop_token_ids', 'top_logprobs', '\ud800', '\u{1f4a5}', 'a'.repeat(300)];
export const ODD_NUMBERS = ['1e400', '-1e400', '-0', '0e0', '-0.0', '1E-400', '5e-324', '-5e-324', '1.7976931348623157e308', '9007199254740993', '-9007199254740993', '18446744073709551616', '1e21', '2147483647', '2147483648', '-2147483649', '4294967296', '0.1e1', '1.0', '100.0000001', '100.00001', '0.01', '0.009999999', '1e-7', '1e-46', '3.5e38', '-1', '0', '1', '16', '17', '123456789012345678901234567890', '0.' + '0'.repeat(400) + '1', '1' + '0'.repeat(400)];
export const BAD_NUMBERS = ['01', '+1', '.5', '1.', 'NaN', 'Infinity', '-Infinity', '0x10', '1_000', '--1', '1e', '-', '1e+', '\u0661'];
export const ODD_STRINGS = ['', ' ', '\ud800', '\udfff', '\udc00\ud800', 'a\ud83d', '\ud83dz', '\u0000', '\u0000\u0000\u0000', '\uffff', '\ufffe', '\ufeff', '\u2028\u2029', '\u202e\u2066', '\u00e9', 'e\u0301'.repeat(50), '\u{1f44d}\u{1f3fd}', '\u{10ffff}', '\ufdfa', '\u{1d54e}', '\\', '"', '</script>', '%s%n%x', '${x}', '{{ x }}', '{% raw %}', '{{ messages }}', '\r\n', '\t', 'null', 'undefined', '__proto__', 'constructor', '<|endoftext|>', '<s>', '</s>', 'user:', '\nassistant:', '\n'.repeat(100), 'Z\u0324\u0354\u0367\u0311a\u0356\u0308l\u036e\u0312g\u0317o\u0319\u0354'];
const PHRASES = ['Who made the heaven and the earth?', 'Tell me of Moses.', 'Amen.', 'And God said', 'Let there be light.', 'Who was the son of David?', 'In the beginning', 'hi', 'And what did he say unto them?'];
const STOPS = [' ', '.', 'the', 'And', '\n\n', ',', 'Lord'];
const SYSTEMS = ['', 'Be brief.', 'You are a preacher.', 'Answer in one word.'];
/** Stands for the session's latest response_id in a frame: the runner puts it in when it sends the frame (withLatest). */
export const LATEST_RESPONSE = 'resp_LATEST';
/** Stop token ids outside a small vocabulary, at the int32 limit and past it. */
const STOP_IDS_FAR = [100_000, 2147483647, 2147483648, 2 ** 53 - 1];
export const TYPE_VARIANTS = ['session.updated', 'Session.update', 'message.create ', 'message_create', 'message.Create', '', 'error', 'response.done', 'response.create', 'session.created', 'session.resumed', 'response.truncated', 'response.truncate ', 'session.resume\u0000', '__proto__', 'constructor', 'toString', 'hasOwnProperty', 'session.update\u0000', 'message.create\ud800', 'input.append ', 'input_append', 'input.Clear', 'input', 'm'.repeat(10000)];

export function longString(r: Rng): string {
  const n = r.pick([257, 1000, 4096, 65536, 200_000]);
  return r.pick(['x', 'word ', '\u00e9', '\u{1f44d}', 'ab\ud800']).repeat(Math.ceil(n / 2));
}

export function deepNest(r: Rng, log: string[]): Raw {
  const n = r.pick([64, 1000, 10_000, 100_000]);
  const kind = r.int(0, 4);
  log.push(`deep nesting: ${n} levels of ${['[', '[ unbalanced', '{"a":', '{"__proto__":', '[{}'][kind]}`);
  switch (kind) {
    case 0:
      return new Raw('['.repeat(n) + ']'.repeat(n));
    case 1:
      return new Raw('['.repeat(n));
    case 2:
      return new Raw('{"a":'.repeat(n) + '1' + '}'.repeat(n));
    case 3:
      return new Raw('{"__proto__":'.repeat(n) + '{}' + '}'.repeat(n));
    default:
      return new Raw('[{},'.repeat(n) + '0' + ']'.repeat(n));
  }
}

export function randomValue(r: Rng, log: string[]): J {
  const k = r.int(0, 19);
  switch (k) {
    case 0:
      return null;
    case 1:
      return r.chance(0.5);
    case 2:
      return r.pick([0, -1, 1, 1.5, 8, 1e308, -1e308, 2 ** 53]);
    case 3:
      return new Raw(r.pick(ODD_NUMBERS));
    case 4:
      return r.pick(ODD_STRINGS);
    case 5:
      return r.pick(PHRASES);
    case 6:
      return [];
    case 7:
      return new Obj();
    case 8:
      return [1, [2, [3, [4]]]];
    case 9:
      return new Obj([['a', new Obj([['b', new Obj([['c', 1]])]])]]);
    case 10:
      return new Obj([['__proto__', new Obj([['type', 'session.close']])]]);
    case 11:
      return new Obj([['constructor', new Obj([['prototype', new Obj([['polluted', true]])]])]]);
    case 12:
      return new Raw('{"__proto__":null,"toString":1,"valueOf":"x"}');
    case 13:
      return Array.from({ length: r.pick([17, 1000]) }, (_, i) => i);
    case 14:
      return new Obj([['type', 'message.create'], ['content', 'hi']]);
    case 15:
      return ['a', 1, null, new Obj()];
    case 16:
      return deepNest(r, log);
    case 17:
      return longString(r);
    case 18:
      return new Raw('"' + '\\ud800'.repeat(r.int(1, 4)) + '"');
    default:
      return new Obj([[r.pick(PROTO_KEYS), r.pick([1, 'x', true])]]);
  }
}

function genSampling(r: Rng, create: boolean): Obj {
  const o = new Obj();
  if (create || r.chance(0.7)) o.set('max_tokens', r.int(1, 8));
  if (r.chance(0.5)) o.set('temperature', r.pick([0, 0.5, 0.8, 1, 1.3]));
  if (r.chance(0.3)) o.set('top_p', r.pick([0.5, 0.9, 0.95, 1]));
  if (r.chance(0.3)) o.set('top_k', r.int(0, 50));
  if (r.chance(0.2)) o.set('min_p', r.pick([0, 0.05, 0.1]));
  if (r.chance(0.2)) o.set('repetition_penalty', r.pick([1, 1.1, 1.3]));
  if (r.chance(0.15)) o.set('presence_penalty', r.pick([0, 0.5, -0.5]));
  if (r.chance(0.15)) o.set('frequency_penalty', r.pick([0, 0.5, -0.5]));
  if (r.chance(0.4)) o.set('seed', r.int(0, 1_000_000));
  if (r.chance(0.3)) o.set('stop', Array.from({ length: r.int(0, 3) }, () => r.pick(STOPS)));
  // since v1.1: stop ids (mostly inside any vocabulary; rarely outside it, or past int32), log-probabilities
  if (r.chance(0.1)) o.set('stop_token_ids', Array.from({ length: r.int(0, 3) }, () => (r.chance(0.95) ? r.int(0, 255) : r.pick(STOP_IDS_FAR))));
  if (r.chance(0.1)) o.set('logprobs', r.chance(0.7));
  if (r.chance(0.08)) o.set('top_logprobs', r.int(0, 20));
  r.shuffle(o.entries);
  return o;
}

/** A valid client frame of a base type. */
export function baseFrame(r: Rng, type: string, eventId: string | undefined): Obj {
  const o = new Obj([['type', type]]);
  if (type === 'session.update') {
    const s = new Obj();
    if (r.chance(0.5)) s.set('system', r.pick(SYSTEMS));
    if (r.chance(0.8)) s.set('sampling', genSampling(r, false));
    o.set('session', s);
    if (r.chance(0.15)) s.set('context_policy', r.pick(['truncate', 'reject']));
    if (r.chance(0.1)) s.set('progress', r.chance(0.6));
    if (r.chance(0.08)) s.set('rotate_resume_token', r.chance(0.8));
  } else if (type === 'response.cancel') {
    if (r.chance(0.2)) o.set('truncate_at_seq', r.int(-1, 8));
  } else if (type === 'response.truncate' || type === 'session.resume') {
    // mostly within a short answer's deltas
    o.set(type === 'response.truncate' ? 'seq' : 'last_seq', r.weighted([[3, -1], [4, r.int(0, 2)], [2, r.int(3, 8)]]));
    if (r.chance(0.5)) o.set('response_id', r.pick([LATEST_RESPONSE, LATEST_RESPONSE, LATEST_RESPONSE, 'resp_1', 'resp_999999', '', 'x']));
  } else if (type === 'message.create') {
    // commit: the message typed with input.append
    if (r.chance(0.12)) o.set('commit', true);
    else o.set('content', r.chance(0.03) ? 'word '.repeat(r.pick([600, 4000])) : r.chance(0.05) ? r.pick(ODD_STRINGS) : r.pick(PHRASES));
    if (r.chance(0.97)) o.set('sampling', genSampling(r, true));
  } else if (type === 'input.append') {
    // mostly words; at times a text that cannot fit the context
    o.set('text', r.weighted<string>([[12, ' ' + r.pick(PHRASES)], [2, r.pick(ODD_STRINGS)], [1, 'word '.repeat(r.pick([100, 600, 4000]))]]));
  }
  if (eventId !== undefined) o.set('event_id', eventId);
  r.shuffle(o.entries);
  return o;
}


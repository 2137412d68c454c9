/**
 * The OpenAI request bodies: valid chat and completions requests (baseBody, with a small
 * max_tokens so that a 200 is cheap) and JSON-level mutations of them (mutateBody): wrong types
 * and out-of-range values for each known field, NaN-like strings, unknown and prototype-named
 * keys, duplicated and dropped keys, odd unicode, long strings and arrays, deep nesting, roles and
 * content parts weft does not take, stream / stream_options / logprobs / n combinations.
 */
import { BAD_NUMBERS, JUNK_KEYS, ODD_STRINGS, deepNest, randomValue } from './corpus.js';
import { Obj, Raw, brief, type J } from './json.js';
import type { Rng } from './rng.js';
import { PROTO_KEYS } from './schema.js';

export type Route = 'chat' | 'text';

const PHRASES = ['Who made the heaven and the earth?', 'Tell me of Moses.', 'Amen.', 'And God said', 'In the beginning', 'hi', 'Who was the son of David?'];
const SYSTEMS = ['', 'Be brief.', 'Answer in one word.'];
const STOPS = ['.', '\n', 'the', ' And', ','];

/** The fields each route knows (OpenAI's, and weft's extensions top_k, min_p, repetition_penalty, ignore_eos). */
export const ROUTE_FIELDS: Record<Route, readonly string[]> = {
  chat: ['model', 'messages', 'stream', 'stream_options', 'n', 'max_tokens', 'max_completion_tokens', 'temperature', 'top_p', 'presence_penalty', 'frequency_penalty', 'seed', 'stop', 'user', 'logprobs', 'top_logprobs', 'modalities', 'audio', 'tools', 'response_format', 'top_k', 'min_p', 'repetition_penalty', 'ignore_eos'],
  text: ['model', 'prompt', 'stream', 'stream_options', 'n', 'max_tokens', 'temperature', 'top_p', 'presence_penalty', 'frequency_penalty', 'seed', 'stop', 'user', 'logprobs', 'echo', 'suffix', 'best_of', 'modalities', 'audio', 'tools', 'response_format', 'top_k', 'min_p', 'repetition_penalty', 'ignore_eos'],
};
/** OpenAI fields weft does not implement: ignored or refused (WEFT_UNSUPPORTED), either is right. */
export const OTHER_OPENAI_FIELDS = ['logit_bias', 'tool_choice', 'parallel_tool_calls', 'store', 'metadata', 'service_tier', 'reasoning_effort', 'functions', 'function_call', 'prediction', 'web_search_options', 'verbosity'];

const msg = (role: J, content: J): Obj => new Obj([['role', role], ['content', content]]);
const textPart = (t: J): Obj => new Obj([['type', 'text'], ['text', t]]);

/** A valid request of `route` for `model`. */
export function baseBody(r: Rng, route: Route, model: string): Obj {
  const o = new Obj([['model', model]]);
  if (route === 'chat') {
    const msgs: J[] = [];
    if (r.chance(0.3)) msgs.push(msg(r.pick(['system', 'developer']), r.pick(SYSTEMS)));
    if (r.chance(0.2)) msgs.push(msg('user', r.pick(PHRASES)), msg('assistant', r.pick(PHRASES)));
    const last = r.pick(PHRASES);
    msgs.push(msg('user', r.chance(0.2) ? [textPart(last.slice(0, 3)), textPart(last.slice(3))] : last));
    o.set('messages', msgs);
    if (r.chance(0.85)) o.set(r.chance(0.7) ? 'max_tokens' : 'max_completion_tokens', r.int(1, 4));
    if (r.chance(0.2)) {
      o.set('logprobs', true);
      if (r.chance(0.7)) o.set('top_logprobs', r.int(0, 20));
    }
  } else {
    o.set('prompt', r.weighted<J>([[8, r.pick(PHRASES)], [1, [r.pick(PHRASES)]], [1, Array.from({ length: r.int(1, 6) }, () => r.int(1, 200))]]));
    if (r.chance(0.85)) o.set('max_tokens', r.int(1, 4));
    if (r.chance(0.2)) o.set('logprobs', r.int(0, 5));
    if (r.chance(0.1)) o.set('echo', false);
  }
  if (r.chance(0.45)) {
    o.set('stream', true);
    if (r.chance(0.5)) o.set('stream_options', new Obj([['include_usage', r.chance(0.7)]]));
  } else if (r.chance(0.2)) o.set('stream', false);
  if (r.chance(0.3)) o.set('temperature', r.pick([0, 0.7, 1, 2]));
  if (r.chance(0.2)) o.set('top_p', r.pick([0.5, 0.9, 1]));
  if (r.chance(0.3)) o.set('seed', r.int(0, 1_000_000));
  if (r.chance(0.1)) o.set('presence_penalty', r.pick([-2, 0, 0.5, 2]));
  if (r.chance(0.1)) o.set('frequency_penalty', r.pick([-2, 0, 0.5, 2]));
  if (r.chance(0.2)) o.set('stop', r.chance(0.5) ? r.pick(STOPS) : Array.from({ length: r.int(0, 4) }, () => r.pick(STOPS)));
  if (r.chance(0.1)) o.set('n', 1);
  if (r.chance(0.1)) o.set('user', 'fuzz-user');
  if (r.chance(0.05)) o.set('top_k', r.int(0, 40));
  r.shuffle(o.entries);
  return o;
}

/** Values of the wrong type (or NaN-like) for any field. */
const WRONG: J[] = ['1', 'NaN', 'Infinity', '-Infinity', '', 'true', 'null', true, false, null, [], [1], new Obj(), new Obj([['value', 1]]), new Raw('1e400'), new Raw('-1e400'), 0, -1, 1.5, 'default'];
/** Boundary and out-of-range values of the numeric fields (raw text where JSON can say what JS cannot). */
const EDGES: Record<string, J[]> = {
  temperature: [0, 2, 2.0000001, -0.0001, 1e308, new Raw('-0'), new Raw('5e-324'), 100, new Raw('2.0')],
  top_p: [0, 1, 1.0000001, -0.1, new Raw('5e-324'), 2, new Raw('1e-400')],
  presence_penalty: [-2, 2, -2.01, 2.01, 1e9, new Raw('-0')],
  frequency_penalty: [-2, 2, -2.01, 2.01, -1e9],
  n: [0, 1, 2, -1, 128, 129, 1.5, new Raw('1.0'), new Raw('1e0'), 2 ** 31],
  max_tokens: [0, 1, -1, 1.5, new Raw('1.0'), new Raw('2e0'), new Raw('1e400'), new Raw('-0'), 0.5],
  max_completion_tokens: [0, 1, -1, 2.5, new Raw('3.0'), new Raw('1e400')],
  seed: [0, -1, 2 ** 53 - 1, -(2 ** 53) + 1, new Raw('9007199254740993'), new Raw('-9223372036854775808'), 1.5, new Raw('1e400'), new Raw('18446744073709551615')],
  top_logprobs: [0, 20, 21, -1, 1.5, 5, new Raw('20.0')],
  logprobs: [0, 5, 6, -1, 1.5, 20, true, false],
  top_k: [0, -1, 1.5, 2 ** 31, 1],
  min_p: [0, 1, 1.1, -0.1],
  repetition_penalty: [0.01, 0.009, 10, 10.1, 0, 1],
  best_of: [1, 2, 0, null],
};
const ROLES: J[] = ['system', 'developer', 'user', 'assistant', 'tool', 'function', '', 'User', 'USER', ' user', 'bot', null, 1, [], new Obj(), 'user\u0000', '__proto__'];
const CONTENTS: J[] = [
  '', ' ', null, 1, true, new Obj(), [], [textPart('hi')], [textPart(1)], [new Obj([['type', 'text']])], [new Obj([['text', 'hi']])],
  [new Obj([['type', 'image_url'], ['image_url', new Obj([['url', 'http://x/a.png']])]])],
  [new Obj([['type', 'input_audio'], ['input_audio', new Obj([['data', ''], ['format', 'wav']])]])],
  [new Obj([['type', 'file'], ['file', new Obj()]])], [new Obj([['type', 'refusal'], ['refusal', 'no']])],
  [new Obj([['type', 'TEXT'], ['text', 'x']])], [new Obj([['type', 1]])], [new Obj([['type', null], ['text', 'x']])], ['hi'], [null], [[]],
  [textPart('a'), textPart('b')], [new Obj([['type', 'text'], ['text', 'a'], ['extra', 1]])], [textPart('a'), new Obj([['type', 'image_url']])],
];
const PROMPTS: J[] = ['', ' ', [], [''], ['a', 'b'], [1, 2, 3], [0], [-1], [2 ** 31], [1.5], ['1'], [null], [[1, 2]], [[1], [2]], [true], new Obj(), null, 1, true, [new Raw('1e400')], [new Raw('2.0')], [100_000], [2 ** 31 - 1]];
const MODELS = (m: string): J[] => [m.toUpperCase(), m + ' ', ' ' + m, '', 'gpt-4o', m + '\u0000', '../' + m, null, 1, [m], new Obj([['id', m]]), m.repeat(1000), m + '/', 'default\ud800'];
const UNICODE = [...ODD_STRINGS, '\u{1f4a9}'.repeat(100), 'abc\u202edef\u2066', 'a\u200b\u200c\u200db', 'A\u0000B', '\u{1f1fa}\u{1f1f8}\u{1f468}\u200d\u{1f469}\u200d\u{1f467}', '\u0645\u0631\u062d\u0628\u0627', '\u4f60\u597d\u4e16\u754c'];
const UNSUPPORTED: [string, J][] = [
  ['tools', [new Obj([['type', 'function'], ['function', new Obj([['name', 'f']])]])]],
  ['tools', []],
  ['tools', 'x'],
  ['audio', new Obj([['voice', 'alloy'], ['format', 'wav']])],
  ['modalities', ['text', 'audio']],
  ['modalities', ['text']],
  ['modalities', ['audio']],
  ['modalities', 'text'],
  ['modalities', []],
  ['response_format', new Obj([['type', 'json_object']])],
  ['response_format', new Obj([['type', 'text']])],
  ['response_format', 'text'],
  ['response_format', new Obj()],
  ['echo', true],
  ['echo', 'yes'],
  ['suffix', 'x'],
  ['suffix', 1],
  ['best_of', 2],
  ['tool_choice', 'auto'],
  ['logit_bias', new Obj([['50256', -100]])],
  ['parallel_tool_calls', true],
];

const MUTATIONS = [
  [10, 'retype'],
  [10, 'edge'],
  [4, 'nan'],
  [5, 'drop'],
  [4, 'dup'],
  [6, 'unknown'],
  [12, 'message'],
  [5, 'unicode'],
  [3, 'long'],
  [3, 'array'],
  [3, 'deep'],
  [6, 'stream'],
  [6, 'logprobs'],
  [4, 'n'],
  [4, 'model'],
  [6, 'unsupported'],
  [3, 'stop'],
  [4, 'body'],
] as const;

/** A chat message to mutate (or the prompt's place in a completions request). */
function someMessage(r: Rng, root: Obj): Obj | undefined {
  const m = root.get('messages');
  if (!Array.isArray(m)) return undefined;
  const objs = m.filter((x): x is Obj => x instanceof Obj);
  return objs.length ? r.pick(objs) : undefined;
}

/**
 * Applies one JSON-level mutation; returns the new root (a 'body' mutation may replace it with
 * anything, raw text included). `limit` (the server's body limit) sizes the long strings.
 */
export function mutateBody(r: Rng, route: Route, root: Obj, model: string, limit: number, log: string[]): J {
  const op = r.weighted(MUTATIONS);
  const field = () => r.pick(ROUTE_FIELDS[route]);
  const set = (k: string, v: J) => {
    log.push(`${k} := ${Array.isArray(v) && v.length > 16 ? `[${v.length} items: ${brief(v[0]!)}, ...]` : brief(v)}`);
    root.set(k, v);
    return root;
  };
  switch (op) {
    case 'retype':
      return set(field(), r.chance(0.7) ? r.pick(WRONG) : randomValue(r, log));
    case 'edge': {
      const k = r.pick(Object.keys(EDGES));
      return set(k, r.pick(EDGES[k]!));
    }
    case 'nan':
      return set(r.pick(['temperature', 'top_p', 'max_tokens', 'n', 'seed', 'presence_penalty', 'top_logprobs']), r.chance(0.6) ? r.pick(['NaN', 'Infinity', '-Infinity', 'nan', '1e400', '0x10', ' 1', '1 ']) : new Raw(r.pick(BAD_NUMBERS)));
    case 'drop': {
      if (!root.entries.length) break;
      const i = r.int(0, root.entries.length - 1);
      log.push(`drop ${root.entries[i]![0]}`);
      root.entries.splice(i, 1);
      return root;
    }
    case 'dup': {
      if (!root.entries.length) break;
      const [k] = r.pick(root.entries);
      const v = r.chance(0.5) ? r.pick(WRONG) : randomValue(r, log);
      const after = r.chance(0.5);
      log.push(`duplicate key ${k} (${brief(v)}) ${after ? 'after' : 'before'} it`);
      if (after) root.entries.push([k, v]);
      else root.entries.unshift([k, v]);
      return root;
    }
    case 'unknown': {
      const k = r.weighted<string>([[3, r.pick(JUNK_KEYS)], [3, r.pick(PROTO_KEYS)], [2, r.pick(OTHER_OPENAI_FIELDS)], [1, 'maxTokens'], [1, 'Model']]);
      const v = randomValue(r, log);
      log.push(`add key ${JSON.stringify(k.slice(0, 40))} = ${brief(v)}`);
      root.entries.splice(r.int(0, root.entries.length), 0, [k, v]);
      return root;
    }
    case 'message': {
      if (route === 'text') return set('prompt', r.pick(PROMPTS));
      const m = someMessage(r, root);
      const what = r.int(0, 9);
      if (!m || what === 0) return set('messages', r.pick<J>([[], new Obj(), 'hi', null, [null], ['hi'], [[]], [msg('user', 'a'), 7]]));
      if (what <= 2) {
        const role = r.pick(ROLES);
        log.push(`a message's role := ${brief(role)}`);
        m.set('role', role);
      } else if (what <= 5) {
        const c = r.pick(CONTENTS);
        log.push(`a message's content := ${brief(c)}`);
        m.set('content', c);
      } else if (what === 6) {
        const k = r.pick(['role', 'content']);
        log.push(`drop a message's ${k}`);
        m.entries = m.entries.filter(([x]) => x !== k);
      } else if (what === 7) {
        const extra = r.pick<[string, J]>([['name', 'bob'], ['name', 1], ['tool_calls', [new Obj([['id', 'c'], ['type', 'function']])]], ['tool_calls', []], ['tool_call_id', 'c'], ['__proto__', new Obj([['role', 'tool']])], ['refusal', null], ['audio', null]]);
        log.push(`a message gets ${extra[0]} = ${brief(extra[1])}`);
        m.entries.push(extra);
      } else {
        const msgs = root.get('messages') as J[];
        const add = r.pick<Obj>([msg('assistant', 'Amen.'), msg('tool', 'x'), msg('system', 'late system'), msg('user', 'again'), msg('function', 'f')]);
        log.push(`append a ${brief(add.get('role')!)} message`);
        msgs.push(add);
      }
      return root;
    }
    case 'unicode': {
      const s = r.pick(UNICODE);
      const m = route === 'chat' ? someMessage(r, root) : undefined;
      if (m && r.chance(0.7)) {
        log.push(`a message's content := ${brief(s)}`);
        m.set('content', r.chance(0.3) ? [textPart(s)] : s);
        return root;
      }
      return set(r.pick(route === 'chat' ? ['user', 'stop', 'model'] : ['prompt', 'prompt', 'user', 'stop']), s);
    }
    case 'long': {
      // long, and past the body limit (openai-gen.ts sizes some bodies to the limit exactly)
      const n = r.pick([1000, 20_000, Math.floor(limit / 2), limit + 1000]);
      const s = r.pick(['x', 'word ', '\u00e9', '\u{1f44d}']).repeat(Math.ceil(n / 2));
      const m = route === 'chat' ? someMessage(r, root) : undefined;
      if (m) {
        log.push(`a message's content := ${brief(s)}`);
        m.set('content', s);
        return root;
      }
      return set(route === 'text' ? 'prompt' : 'user', s);
    }
    case 'array': {
      const n = r.pick([5, 100, 2000, 8000]);
      if (route === 'chat' && r.chance(0.5)) return set('messages', Array.from({ length: n }, (_, i) => msg(i % 2 ? 'assistant' : 'user', 'a')).concat([msg('user', 'b')]));
      if (route === 'text' && r.chance(0.5)) return set('prompt', Array.from({ length: n }, () => r.int(1, 200)));
      return set(r.pick(['stop', 'modalities', 'tools']), Array.from({ length: n }, () => 'a'));
    }
    case 'deep': {
      const k = route === 'chat' ? r.pick(['messages', 'stop', 'stream_options', 'metadata']) : r.pick(['prompt', 'stop', 'stream_options', 'metadata']);
      log.push(`at ${k}:`);
      root.set(k, deepNest(r, log));
      return root;
    }
    case 'stream': {
      if (r.chance(0.5)) set('stream', r.pick<J>([true, false, null, 'true', 1, 0, []]));
      return set('stream_options', r.pick<J>([new Obj([['include_usage', true]]), new Obj([['include_usage', false]]), new Obj(), null, new Obj([['include_usage', 'yes']]), new Obj([['include_usage', null]]), [], 'x', true, new Obj([['include_usage', true], ['extra', 1]])]));
    }
    case 'logprobs':
      if (route === 'chat') {
        set('logprobs', r.pick<J>([true, true, false, null, 1, 'true']));
        if (r.chance(0.7)) set('top_logprobs', r.pick<J>([0, 5, 20, 21, -1, null, '5', 2.5]));
        return root;
      }
      if (r.chance(0.2)) set('top_logprobs', 2); // not a completions field: ignored
      return set('logprobs', r.pick<J>([0, 1, 5, 6, -1, true, null, '2', 2.5]));
    case 'n':
      return set('n', r.pick<J>([1, 2, 0, -1, 128, 1.5, '1', null, true, new Raw('1.0')]));
    case 'model':
      return set('model', r.pick(MODELS(model)));
    case 'unsupported': {
      const [k, v] = r.pick(UNSUPPORTED);
      return set(k, v);
    }
    case 'stop':
      return set('stop', r.pick<J>(['', [''], ['a', 'b', 'c', 'd'], ['a', 'b', 'c', 'd', 'e'], [1], [null], [], 'x'.repeat(2000), ['\ud800'], [['a']], new Obj()]));
    case 'body': {
      const v = r.pick<J>([[], null, 'x', 1, new Raw(''), new Raw('   '), new Raw('{'), new Raw('{}'), new Raw('{"model":'), new Raw('[{}]'), new Raw('{"model":"x",}'), new Raw("{'model':'x'}"), new Raw('{"temperature":NaN}'), new Raw('/*c*/{}'), new Raw('{}{}'), new Raw('{} x'), new Raw('\ufeff{}'), new Raw('"\\ud800"')]);
      log.push(`whole body := ${brief(v)}`);
      return v;
    }
  }
  log.push('add key constructor');
  root.entries.push(['constructor', 1]);
  return root;
}

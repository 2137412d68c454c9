/** Protocol v1 frame parsing: every bad frame becomes an error with its code (and event_id when known). */
import { expect, test } from 'vitest';
import { ProtocolError, parseClientFrame, toTurnSampling } from '../src/gateway/protocol.js';

const parse = (s: string | Buffer, bin = false) => parseClientFrame(s, bin, 1024);
const code = (r: unknown) => (r instanceof ProtocolError ? r.code : 'ok');

test('valid frames become typed events with their event_id', () => {
  expect(parse('{"type":"message.create","content":"hi","event_id":"e1","sampling":{"temperature":0.5,"top_k":4,"max_tokens":3,"stop":["x"]}}')).toEqual({
    type: 'message.create', content: 'hi', event_id: 'e1', sampling: { temperature: 0.5, top_k: 4, max_tokens: 3, stop: ['x'] },
  });
  expect(parse('{"type":"session.update","session":{"system":"be brief","sampling":{"seed":3}}}')).toEqual({ type: 'session.update', session: { system: 'be brief', sampling: { seed: 3 } } });
  expect(parse('{"type":"response.cancel"}')).toEqual({ type: 'response.cancel' });
  expect(parse('{"type":"session.close","event_id":"z"}')).toEqual({ type: 'session.close', event_id: 'z' });
  expect(toTurnSampling({ top_p: 0.9, repetition_penalty: 1.1, max_tokens: 5, stop: ['a'] })).toEqual({ sampling: { topP: 0.9, repetitionPenalty: 1.1 }, maxTokens: 5, stop: ['a'] });
});

test('bad frames get their codes', () => {
  expect(code(parse('not json'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse(Buffer.from('{"type":"session.close"}'), true))).toBe('WEFT_BAD_FRAME');
  expect(code(parse('[1,2]'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse('{"content":"x"}'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse('{"type":"nope"}'))).toBe('WEFT_UNKNOWN_TYPE');
  expect(code(parse('{"type":"message.create"}'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse('{"type":"message.create","content":5}'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse('{"type":"message.create","content":"a","sampling":{"temperature":"hot"}}'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse('{"type":"message.create","content":"a","sampling":{"top_k":1.5}}'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse('{"type":"message.create","content":"a","sampling":{"bogus":1}}'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse('{"type":"message.create","content":"a","sampling":{"stop":"x"}}'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse('{"type":"session.update"}'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse('{"type":"session.update","session":{"system":1}}'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse('{"type":"session.close","event_id":7}'))).toBe('WEFT_BAD_FRAME');
  expect(code(parse(JSON.stringify({ type: 'message.create', content: 'x'.repeat(2000) })))).toBe('WEFT_FRAME_TOO_LARGE');
  const e = parse('{"type":"message.create","content":5,"event_id":"q"}') as ProtocolError;
  expect(e.toEvent()).toEqual({ type: 'error', code: 'WEFT_BAD_FRAME', message: expect.any(String), event_id: 'q' });
});

test('a frame whose structure cannot be a protocol frame is refused before JSON.parse, at a fraction of its cost', () => {
  const big = (s: string) => parseClientFrame(s, false, 4 << 20);
  const cases: [string, RegExp][] = [
    ['['.repeat(1 << 20), /nests deeper than 8/],
    ['{"a":'.repeat(200_000), /nests deeper than 8/],
    ['[' + '1,'.repeat(500_000) + '1]', /more than 256 values/],
    [JSON.stringify({ type: 'message.create', content: 'x', sampling: { stop: Array(100_000).fill('ab') } }), /more than 256 values/],
  ];
  for (const [frame, why] of cases) {
    // against JSON.parse of the same bytes, measured alongside (robust to a loaded machine)
    const bytes = Buffer.from(frame);
    let parseMs = Infinity;
    for (let i = 0; i < 2; i++) {
      const t = performance.now();
      try {
        JSON.parse(frame);
      } catch {
        /* deep nesting may throw */
      }
      parseMs = Math.min(parseMs, performance.now() - t);
    }
    let oursMs = Infinity;
    let r: unknown;
    for (let i = 0; i < 2; i++) {
      const t = performance.now();
      r = parseClientFrame(bytes, false, 4 << 20);
      oursMs = Math.min(oursMs, performance.now() - t);
    }
    expect(oursMs, `${why}: ${oursMs.toFixed(2)} ms vs JSON.parse ${parseMs.toFixed(2)} ms`).toBeLessThan(parseMs / 3);
    expect(r).toBeInstanceOf(ProtocolError);
    expect((r as ProtocolError).code).toBe('WEFT_BAD_FRAME');
    expect((r as ProtocolError).message).toMatch(why);
  }
  // brackets, braces, quotes and backslashes inside strings are text, not structure
  const text = '[[[[{{{{ "quoted" \\ \\" ]]]] '.repeat(1000);
  expect(big(JSON.stringify({ type: 'message.create', content: text, event_id: '{[' }))).toEqual({ type: 'message.create', content: text, event_id: '{[' });
  expect(code(big('{"type":"message.create","content":"unterminated'))).toBe('WEFT_BAD_FRAME');
});

test('every object of a frame takes only its documented keys, prototype names included', () => {
  for (const f of [
    '{"type":"message.create","content":"a","extra":1}',
    '{"type":"message.create","content":"a","__proto__":{}}',
    '{"type":"session.update","session":{"constructor":"x"}}',
    '{"type":"session.update","session":{"sampling":{"valueOf":1}}}',
    '{"type":"message.create","content":"a","sampling":{"hasOwnProperty":1}}',
    '{"type":"response.cancel","x":null}',
    '{"type":"toString"}',
  ]) {
    expect(['WEFT_BAD_FRAME', 'WEFT_UNKNOWN_TYPE'], f).toContain(code(parse(f)));
  }
  expect(code(parseClientFrame(JSON.stringify({ type: 'message.create', content: 'a', sampling: { stop: ['x'.repeat(1025)] } }), false, 4096))).toBe('WEFT_BAD_FRAME');
});

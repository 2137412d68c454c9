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

/**
 * The fuzzer (scripts/fuzz/, issue 9: no single request may crash or stall the server): its
 * generator and oracle on their own, then a bounded, fixed-seed run against the built server
 * (dist/src/cli/main.js as a child process) over each transport.
 */
import { describe, expect, test } from 'vitest';
import { FrameGen, afterResumed, expectFor, formatReport, fuzz, genHttp, judge, samplingRange, type FrameItem } from '../scripts/fuzz/index.js';

const LIMIT = 1 << 20;
const frames = (seed: number, conn: number, n: number) => {
  const g = new FrameGen(seed, 'ws', conn, LIMIT);
  return Array.from({ length: n }, () => g.next());
};
const j = (frame: unknown) => judge(Buffer.from(typeof frame === 'string' ? frame : JSON.stringify(frame)), false, LIMIT);

describe('fuzzer: generator and oracle', () => {
  test('frames and requests are a function of the seed', () => {
    const a = frames(7, 3, 300);
    const b = frames(7, 3, 300);
    expect(a.map((x) => (x.kind === 'frame' ? x.data.toString('hex') : x.log.join()))).toEqual(b.map((x) => (x.kind === 'frame' ? x.data.toString('hex') : x.log.join())));
    expect(frames(8, 3, 50).map((x) => x.kind === 'frame' && x.data.toString('hex'))).not.toEqual(a.slice(0, 50).map((x) => x.kind === 'frame' && x.data.toString('hex')));
    expect(genHttp(7, 'ws', 100).map((r) => r.data.toString('hex'))).toEqual(genHttp(7, 'ws', 100).map((r) => r.data.toString('hex')));
  });

  test('the corpus mixes valid frames of every type with mutated ones', () => {
    const items = [0, 1, 2, 3].flatMap((c) => frames(11, c, 500)).filter((x): x is FrameItem => x.kind === 'frame');
    const judged = items.map((x) => judge(x.data, x.binary, LIMIT));
    const valid = judged.filter((x) => x.problems.length === 0 && !x.tooLarge);
    expect(valid.length / judged.length).toBeGreaterThan(0.2);
    expect(valid.length / judged.length).toBeLessThan(0.8);
    for (const t of ['session.update', 'message.create', 'input.append', 'input.clear', 'response.cancel', 'response.truncate', 'session.resume', 'session.close']) expect(valid.some((x) => x.type === t), t).toBe(true);
    expect(valid.some((x) => x.commit), 'message.create commit').toBe(true);
    expect(valid.some((x) => x.rotate), 'rotate_resume_token').toBe(true);
    for (const k of ['stop_token_ids', 'logprobs', 'top_logprobs']) expect(valid.some((x) => x.sampling?.[k] !== undefined), k).toBe(true);
    expect(items.some((x) => x.pipelined)).toBe(true);
    expect(items.some((x) => x.binary)).toBe(true);
    expect(items.some((x) => x.fragments > 1)).toBe(true);
    expect(judged.some((x) => x.badUtf8)).toBe(true);
    expect(judged.some((x) => x.problems.some((p) => p.rule.includes('prototype name')))).toBe(true);
  });

  test('the oracle reads docs/protocol.md (unknown keys anywhere are WEFT_BAD_FRAME)', () => {
    const codes = (frame: unknown, running = false) => [...expectFor(j(frame), running, {}).codes].filter((c) => c !== 'WEFT_RATE_LIMITED').sort();
    const answers = (frame: unknown, running = false) => [...expectFor(j(frame), running, {}).answers];
    expect(answers({ type: 'session.update', session: { sampling: { max_tokens: 3 } }, event_id: 'a' })).toEqual(['session.updated']);
    expect(answers({ type: 'message.create', content: 'hi', sampling: { max_tokens: 2, stop: ['.'] } })).toEqual(['response.created']);
    expect(codes({ type: 'response.cancel' })).toEqual(['WEFT_NO_RESPONSE']);
    expect(answers({ type: 'response.cancel', event_id: 'c' }, true)).toEqual(['cancel.done']);
    expect(answers({ type: 'session.close' })).toEqual(['session.closed']);
    for (const bad of [
      '{"type":"session.update","session":{"sampling":{"constructor":1}}}',
      '{"type":"session.update","session":{"sampling":{"__proto__":1}}}',
      '{"type":"session.update","session":{},"extra":1}',
      '{"type":"response.cancel","valueOf":1}',
      '{"type":"message.create","content":"a","sampling":{"temperature":1e400}}',
      '{"type":"message.create","content":"a","sampling":{"max_tokens":0}}',
      '{"type":"message.create","content":"a","sampling":{"stop":[1]}}',
      '{"type":"message.create","content":"a","event_id":null}',
      '[{"type":"session.close"}]',
      '{"type":"session.close"}{"type":"session.close"}',
    ]) {
      expect(codes(bad), bad).toEqual(['WEFT_BAD_FRAME']);
      expect(answers(bad), bad).toEqual([]);
    }
    expect(codes({ type: 'nope' })).toEqual(['WEFT_BAD_FRAME', 'WEFT_UNKNOWN_TYPE']);
    // protocol v1.1: context_policy, truncate_at_seq, response.truncate, session.resume
    expect(answers({ type: 'session.update', session: { context_policy: 'reject' } })).toEqual(['session.updated']);
    expect(codes({ type: 'session.update', session: { context_policy: 'drop' } })).toEqual(['WEFT_BAD_FRAME']);
    expect(answers({ type: 'response.cancel', truncate_at_seq: 3, event_id: 'c' }, true)).toEqual(['cancel.done']);
    expect(codes({ type: 'response.cancel', truncate_at_seq: -2 })).toEqual(['WEFT_BAD_FRAME']);
    expect(answers({ type: 'response.truncate', seq: 2 })).toEqual(['response.truncated']);
    expect(codes({ type: 'response.truncate' })).toEqual(['WEFT_BAD_FRAME']);
    expect(answers({ type: 'session.resume', last_seq: -1, response_id: 'resp_1' })).toEqual(['session.resumed']);
    expect(codes({ type: 'session.resume', last_seq: 1.5 })).toEqual(['WEFT_BAD_FRAME']);
    // what follows session.resumed: the replay, or its error
    const latest = { response_id: 'resp_7', status: 'done' as const, next_seq: 4 };
    const resume = (f: Record<string, unknown>, delivered = true, l: typeof latest | null = latest) => afterResumed(j({ type: 'session.resume', ...f }), l, delivered);
    expect(resume({ last_seq: -1 })).toEqual({ kind: 'nothing' });
    expect(resume({ last_seq: -1 }, true, null)).toEqual({ kind: 'nothing' });
    expect(resume({ last_seq: 1, response_id: 'resp_7' })).toEqual({ kind: 'replay', responseId: 'resp_7', fromSeq: 2 });
    expect(resume({ last_seq: -1 }, false)).toEqual({ kind: 'replay', responseId: 'resp_7', fromSeq: 0 });
    expect(resume({ last_seq: 4, response_id: 'resp_7' })).toEqual({ kind: 'error', code: 'WEFT_BAD_ARGUMENT' });
    expect(resume({ last_seq: 0, response_id: 'resp_6' })).toEqual({ kind: 'error', code: 'WEFT_REPLAY_GAP' });
    expect(resume({ last_seq: 0, response_id: 'resp_1' }, true, null)).toEqual({ kind: 'error', code: 'WEFT_REPLAY_GAP' });
    // typing-ahead: no answer (an error at most), commit instead of content
    expect(answers({ type: 'input.append', text: 'Who made', event_id: 'a' })).toEqual(['silence']);
    expect(codes({ type: 'input.append', text: 'Who made' })).toEqual(['WEFT_CONTEXT_OVERFLOW']);
    expect(codes({ type: 'input.append', text: 1 })).toEqual(['WEFT_BAD_FRAME']);
    expect(answers({ type: 'input.clear' })).toEqual(['silence']);
    expect(codes({ type: 'input.clear', text: '' })).toEqual(['WEFT_BAD_FRAME']);
    expect(answers({ type: 'message.create', commit: true, sampling: { max_tokens: 2 } })).toEqual(['response.created']);
    for (const bad of [{ commit: false }, { commit: 1 }, { commit: true, content: 'a' }, { commit: null }]) expect(codes({ type: 'message.create', ...bad }), JSON.stringify(bad)).toEqual(['WEFT_BAD_FRAME']);
    // session fields and sampling fields of v1.1
    expect(answers({ type: 'session.update', session: { progress: true, rotate_resume_token: true } })).toEqual(['session.updated']);
    expect(j({ type: 'session.update', session: { rotate_resume_token: true } }).rotate).toBe(true);
    for (const bad of [{ progress: 1 }, { rotate_resume_token: 'yes' }, { sampling: { logprobs: 1 } }, { sampling: { top_logprobs: 21 } }, { sampling: { top_logprobs: 1.5 } }, { sampling: { stop_token_ids: [-1] } }, { sampling: { stop_token_ids: Array.from({ length: 17 }, (_, i) => i) } }, { sampling: { stop_token_ids: ['1'] } }]) {
      expect(codes({ type: 'session.update', session: bad }), JSON.stringify(bad)).toEqual(['WEFT_BAD_FRAME']);
    }
    expect(answers({ type: 'message.create', content: 'a', sampling: { stop_token_ids: [2], logprobs: true, top_logprobs: 20 } })).toEqual(['response.created']);
    expect(codes({ type: 'message.create', content: 'a', sampling: { stop_token_ids: [2] } })).toContain('WEFT_TOKEN_OUT_OF_RANGE');
    expect(answers({ type: 'message.create', content: 'a', sampling: { stop_token_ids: [2 ** 31] } })).toEqual([]);
    // structure limits: refused before parsing, so no event_id can be echoed
    const deep = `{"type":"session.close","event_id":"d","x":${'['.repeat(9)}${']'.repeat(9)}}`;
    expect(codes(deep)).toEqual(['WEFT_BAD_FRAME']);
    expect(expectFor(j(deep), false, {}).echo).toBeUndefined();
    expect(expectFor(j({ type: 'session.close', event_id: 'd', x: 1 }), false, {}).echo).toBe('d');
    expect(judge(Buffer.from('{"type":"session.close"}'), true, LIMIT).problems[0]?.rule).toBe('binary frame');
    expect(expectFor(judge(Buffer.from([0x7b, 0xff, 0x7d]), false, LIMIT), false, {}).closeOk).toBe(true);
    expect(expectFor(judge(Buffer.alloc(LIMIT + 1, 0x20), false, LIMIT), false, {}).codes.has('WEFT_FRAME_TOO_LARGE')).toBe(true);
    // echo: the frame's valid event_id, none for an invalid one
    expect(expectFor(j({ type: 'nope', event_id: 'x' }), false, {}).echo).toBe('x');
    expect(expectFor(j({ type: 'nope', event_id: 'x'.repeat(257) }), false, {}).echo).toBeUndefined();
    // ranges are the engine's, on float32 values; out of range is WEFT_BAD_ARGUMENT at message.create
    expect(samplingRange({ temperature: -1e-50 })).toBe('ok');
    expect(samplingRange({ top_p: 1e-50 })).toBe('bad');
    expect(samplingRange({ top_k: 2 ** 31 })).toBe('bad');
    expect(samplingRange({ seed: 2 ** 53 })).toBe('bad');
    expect(codes({ type: 'message.create', content: 'a', sampling: { temperature: -1 } })).toContain('WEFT_BAD_ARGUMENT');
    expect(answers({ type: 'message.create', content: 'a', sampling: { temperature: -1 } })).toEqual([]);
    expect(expectFor(j({ type: 'message.create', content: 'a' }), false, { top_p: 2 }).answers.size).toBe(0);
  });
});

// The server under test is the built one: `npm test` compiles first (or run `npx tsc -p tsconfig.json`).
describe.each(['ws', 'uws'] as const)('fuzz over %s (seed 9)', (transport) => {
  test('every frame and every request gets a coded answer in time; the server never dies; /healthz stays 200', async () => {
    // uWebSockets.js leaves requests its parser rejects unanswered until its idle timeout (docs/protocol.md)
    const report = await fuzz({ seed: 9, transports: [transport], frames: 2000, http: 250, deadlineMs: 25_000, silentHttpOk: transport === 'uws' });
    const text = `\n${formatReport(report)}\n`;
    // one line per distinct failure; the message is the whole report (inputs, seeds, how to replay)
    expect(report.distinct.map((d) => `${d.count}x ${d.signature}`), text).toEqual([]);
    expect(report.stats[0]!.frames, text).toBeGreaterThan(500);
    expect(report.stats[0]!.http, text).toBeGreaterThan(100);
  }, 120_000);
});

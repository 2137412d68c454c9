/**
 * The fuzzer (scripts/fuzz/, issue 9: no single request may crash or stall the server): its
 * generators and oracles on their own (protocol v1 frames, and the OpenAI-compatible routes'
 * requests read against docs/openai.md), then a bounded, fixed-seed run against the built server
 * (dist/src/cli/main.js as a child process) over each transport: frames, raw HTTP, OpenAI requests.
 */
import { describe, expect, test } from 'vitest';
import { FrameGen, afterResumed, checkAnswer, expectFor, expectItem, expectOpenAI, formatReport, fuzz, genHttp, genOpenAI, judge, paramInRequest, parseAnswer, samplingRange, showRequest, type FrameItem, type OpenAIAnswer } from '../scripts/fuzz/index.js';

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

describe('fuzzer: OpenAI requests and their oracle (docs/openai.md)', () => {
  const g = { limit: 262144, model: 'default' };
  const CTX = 512;
  const json = (v: unknown) => Buffer.from(JSON.stringify(v));
  const chat = (extra: Record<string, unknown> = {}) => ({ model: 'default', messages: [{ role: 'user', content: 'hi' }], max_tokens: 2, ...extra });
  const post = (path: string, body: unknown, type: string | null = 'application/json') => expectOpenAI('POST', path, type ?? undefined, Buffer.isBuffer(body) ? body : json(body), g.limit, g.model, CTX);
  const c = (body: unknown) => post('/v1/chat/completions', body);
  const t = (body: unknown) => post('/v1/completions', body);
  /** The codes a request may get, but for the two any generation may meet under load. */
  const codes = (e: ReturnType<typeof c>) => [...e.codes].filter((x) => x !== 'WEFT_OVERLOADED' && x !== 'WEFT_KV_EXHAUSTED').sort();

  test('requests are a function of the seed and reach every kind of mutation', () => {
    const a = genOpenAI(7, 'ws', 400, g);
    expect(a.map((x) => showRequest(x, Infinity))).toEqual(genOpenAI(7, 'ws', 400, g).map((x) => showRequest(x, Infinity)));
    expect(genOpenAI(8, 'ws', 50, g).map((x) => showRequest(x))).not.toEqual(a.slice(0, 50).map((x) => showRequest(x)));
    const exps = a.map((x) => expectItem(x, g, CTX));
    const gens = exps.filter((e) => e.kind === 'chat' || e.kind === 'text');
    const valid = gens.filter((e) => e.ok);
    expect(valid.length / gens.length).toBeGreaterThan(0.25);
    expect(valid.length / gens.length).toBeLessThan(0.75);
    for (const k of ['chat', 'text', 'models', 'model'] as const) expect(exps.some((e) => e.ok && e.kind === k), k).toBe(true);
    for (const [what, ok] of [['stream', (e: (typeof exps)[0]) => e.stream], ['include_usage', (e: (typeof exps)[0]) => e.includeUsage], ['logprobs', (e: (typeof exps)[0]) => e.logprobs && e.topLogprobs > 0]] as const) expect(valid.some(ok), what).toBe(true);
    const all = new Set(exps.flatMap((e) => (e.ok ? [] : [...e.codes])));
    for (const code of ['WEFT_BAD_REQUEST', 'WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED', 'WEFT_MODEL_NOT_FOUND', 'WEFT_BODY_TOO_LARGE', 'WEFT_METHOD_NOT_ALLOWED', 'WEFT_NOT_FOUND', 'WEFT_TOKEN_OUT_OF_RANGE']) expect(all.has(code), code).toBe(true);
    expect(a.some((x) => x.body.length === g.limit), 'a body of exactly the limit').toBe(true);
    expect(a.some((x) => x.body.length > g.limit), 'a body over the limit').toBe(true);
    expect(a.some((x) => !x.headers.some(([k]) => k === 'Content-Type') && x.method === 'POST'), 'no Content-Type').toBe(true);
    expect(a.some((x) => x.pieces && x.via === 'agent'), 'chunked').toBe(true);
    for (const f of ['exact', 'short', 'extra', 'broken', 'pipelined'] as const) expect(a.some((x) => x.via === 'raw' && x.framing === f), f).toBe(true);
    for (const r of ['stall', 'abort', 'drop'] as const) expect(a.some((x) => x.reader === r), r).toBe(true);
    expect(a.some((x) => x.twin)).toBe(true);
  });

  test('the oracle reads docs/openai.md', () => {
    expect(c(chat()).ok).toBe(true);
    expect(codes(c(chat()))).toEqual([]);
    // null is a field not given; unknown fields and those weft ignores are ignored; the extensions
    for (const extra of [{ temperature: null, stop: null }, { logit_bias: { '1': 5 }, metadata: 'x', tool_choice: 'auto', constructor: 1, __proto__x: 2 }, { top_k: 0, min_p: 1, repetition_penalty: 10, ignore_eos: false }, { top_p: 0 }, { stop: ['a', 'b', 'c', 'd'] }, { n: 1, user: 'u' }, { stream: true, stream_options: { include_usage: true } }, { logprobs: true, top_logprobs: 20 }, { tools: [], modalities: ['text'], response_format: { type: 'text' } }]) {
      expect(c(chat(extra)).ok, JSON.stringify(extra)).toBe(true);
    }
    expect(c(chat({ messages: [{ role: 'developer', content: '' }, { role: 'user', content: [{ type: 'text', text: 'a' }, { type: 'text', text: 'b' }], name: 7 }] })).ok).toBe(true);
    const refused: [Record<string, unknown>, string[]][] = [
      [{ n: 2 }, ['WEFT_UNSUPPORTED']],
      [{ n: 0 }, ['WEFT_BAD_ARGUMENT']],
      [{ temperature: 2.0000001 }, ['WEFT_BAD_ARGUMENT']],
      [{ temperature: 'NaN' }, ['WEFT_BAD_ARGUMENT']],
      [{ max_tokens: 0 }, ['WEFT_BAD_ARGUMENT']],
      [{ stop: '' }, ['WEFT_BAD_ARGUMENT']],
      [{ stop: ['a', 'b', 'c', 'd', 'e'] }, ['WEFT_BAD_ARGUMENT']],
      [{ stream_options: { include_usage: true } }, ['WEFT_BAD_ARGUMENT']],
      [{ top_logprobs: 2 }, ['WEFT_BAD_ARGUMENT']],
      [{ model: 'gpt-4o' }, ['WEFT_MODEL_NOT_FOUND']],
      [{ model: 1 }, ['WEFT_BAD_ARGUMENT']],
      [{ audio: {} }, ['WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED']],
      [{ messages: [{ role: 'tool', content: 'x' }] }, ['WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED']],
      [{ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, ['WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED']],
      [{ messages: [{ role: 'user', content: 'a' }, { role: 'assistant', content: 'b' }] }, ['WEFT_UNSUPPORTED']],
      [{ messages: [] }, ['WEFT_BAD_ARGUMENT']],
      [{ tools: 'x' }, ['WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED']],
    ];
    for (const [extra, want] of refused) {
      const e = c(chat(extra));
      expect(e.ok, JSON.stringify(extra)).toBe(false);
      expect(codes(e), JSON.stringify(extra)).toEqual(want);
    }
    expect(t({ model: 'default', prompt: [1, 2, 3], logprobs: 5, echo: false }).ok).toBe(true);
    expect(codes(t({ model: 'default', prompt: ['a', 'b'] }))).toEqual(['WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED']);
    expect(codes(t({ model: 'default', prompt: 'a', logprobs: 6 }))).toEqual(['WEFT_BAD_ARGUMENT']);
    expect(codes(t({ model: 'default', prompt: 'a', echo: true }))).toEqual(['WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED']);
    expect(codes(t({ model: 'default', prompt: [-1] }))).toEqual(['WEFT_BAD_ARGUMENT', 'WEFT_TOKEN_OUT_OF_RANGE']);
    expect(t({ model: 'default', prompt: 'a', top_logprobs: 3, max_completion_tokens: 'x' }).ok, 'not completions fields: ignored').toBe(true);
    // the body: Content-Type, JSON, size
    expect(codes(post('/v1/chat/completions', chat(), 'text/plain'))).toEqual(['WEFT_BAD_REQUEST']);
    expect(codes(post('/v1/chat/completions', chat(), null))).toEqual(['WEFT_BAD_REQUEST']);
    expect(post('/v1/chat/completions', chat(), 'Application/JSON; charset=utf-8').ok).toBe(true);
    expect(codes(post('/v1/chat/completions', json(chat()).subarray(0, 20)))).toEqual(['WEFT_BAD_REQUEST']);
    expect(codes(post('/v1/chat/completions', []))).toEqual(['WEFT_BAD_REQUEST']);
    const big = json({ ...chat(), pad: 'a'.repeat(g.limit) });
    expect(codes(post('/v1/chat/completions', big))).toContain('WEFT_BODY_TOO_LARGE');
    expect(post('/v1/chat/completions', Buffer.concat([json(chat()), Buffer.alloc(g.limit - json(chat()).length, 0x20)])).ok, 'exactly the limit').toBe(true);
    // routes
    const route = (m: string, p: string) => expectOpenAI(m, p, undefined, Buffer.alloc(0), g.limit, g.model, CTX);
    expect(route('GET', '/v1/models')).toMatchObject({ ok: true, kind: 'models' });
    expect(route('HEAD', '/v1/models/default/')).toMatchObject({ ok: true, kind: 'model', head: true });
    expect(route('GET', '/v1/models?x=1')).toMatchObject({ ok: true, kind: 'models' });
    expect([...route('GET', '/v1/models/nope').codes]).toEqual(['WEFT_MODEL_NOT_FOUND']);
    expect([...route('GET', '/v1/chat/completions').codes]).toEqual(['WEFT_METHOD_NOT_ALLOWED']);
    expect([...route('POST', '/v1/models').codes]).toEqual(['WEFT_METHOD_NOT_ALLOWED']);
    expect([...route('POST', '/v1/embeddings').codes]).toEqual(['WEFT_NOT_FOUND']);
    expect(post('/v1/chat/completions/', chat()).ok, 'a trailing slash').toBe(true);
    // param: a field of the request (a required one may be missing)
    const body = { model: 'x', messages: [{ role: 'user', content: [{ type: 'text', text: 1 }] }], stream_options: { include_usage: 1 } };
    for (const p of ['model', 'messages[0].content[0].text', 'messages[0].content[0].type', 'stream_options.include_usage', 'prompt']) expect(paramInRequest(p, body, '/v1/chat/completions'), p).toBe(true);
    for (const p of ['include_usage', 'messages[1]', 'messages[0].content[1].type', 'temperature', 'messages.0', '']) expect(paramInRequest(p, body, '/v1/chat/completions'), p).toBe(false);
  });

  test('the oracle catches wrong answers', () => {
    const ok = c(chat());
    const answer = (status: number, body: unknown, headers: Record<string, string> = {}): OpenAIAnswer => ({ status, headers: { 'content-type': 'application/json', ...headers }, body: Buffer.from(typeof body === 'string' ? body : JSON.stringify(body)), complete: true });
    const usage = { prompt_tokens: 10, completion_tokens: 2, total_tokens: 12, prompt_tokens_details: { cached_tokens: 0 } };
    const completion = (over: Record<string, unknown> = {}, choice: Record<string, unknown> = {}) => ({ id: 'chatcmpl-1', object: 'chat.completion', created: 1, model: 'default', choices: [{ index: 0, message: { role: 'assistant', content: ' I am', refusal: null }, logprobs: null, finish_reason: 'length', ...choice }], usage, ...over });
    const kinds = (e: typeof ok, a: OpenAIAnswer) => checkAnswer(e, a, '/v1/chat/completions', 'default', 16).map((p) => `${p.kind}: ${p.rule}`);
    expect(kinds(ok, answer(200, completion()))).toEqual([]);
    expect(kinds(ok, answer(200, completion({ usage: { ...usage, total_tokens: 13 } })))).toEqual(['usage: total_tokens is not prompt_tokens + completion_tokens']);
    expect(kinds(ok, answer(200, completion({ usage: { ...usage, completion_tokens: 3, total_tokens: 13 } })))).toEqual(['usage: more completion tokens than max_tokens']);
    expect(kinds(ok, answer(200, completion({}, { finish_reason: 'tool_calls' })))[0]).toMatch(/^shape/);
    expect(kinds(ok, answer(200, completion({ object: 'text_completion' })))[0]).toMatch(/^shape/);
    expect(kinds(ok, answer(200, completion({}, { logprobs: { content: [] } })))).toEqual(['logprobs: logprobs that were not asked for']);
    const n2 = c(chat({ n: 2 }));
    const err = (code: string, param: string | null = 'n', type = 'invalid_request_error') => ({ error: { message: 'm', type, param, code } });
    expect(kinds(n2, answer(200, completion()))[0]).toMatch(/^accepted-invalid/);
    expect(kinds(n2, answer(400, err('WEFT_UNSUPPORTED')))).toEqual([]);
    expect(kinds(n2, answer(404, err('WEFT_UNSUPPORTED')))[0]).toMatch(/^status: WEFT_UNSUPPORTED with status 404/);
    expect(kinds(n2, answer(400, err('WEFT_UNSUPPORTED', 'n', 'server_error')))[0]).toMatch(/^shape: type server_error/);
    expect(kinds(n2, answer(400, err('WEFT_NOPE')))[0]).toMatch(/^uncoded/);
    expect(kinds(n2, answer(400, err('WEFT_UNSUPPORTED', 'include_usage')))[0]).toMatch(/^param/);
    expect(kinds(n2, answer(400, err('WEFT_BAD_REQUEST', null)))[0]).toMatch(/^wrong-code/);
    expect(kinds(n2, answer(400, '{"error":"n"}'))[0]).toMatch(/^shape/);
    expect(kinds(ok, answer(400, err('WEFT_BAD_ARGUMENT', null)))[0]).toMatch(/^rejected-valid/);
    expect(kinds(ok, answer(503, err('WEFT_OVERLOADED', null, 'server_error'), { 'retry-after': '1' }))).toEqual([]);
    expect(kinds(ok, answer(503, err('WEFT_OVERLOADED', null, 'server_error')))).toEqual(['shape: a 503 without Retry-After']);
    expect(kinds(ok, answer(500, err('WEFT_INTERNAL', null, 'server_error')))[0]).toMatch(/^rejected-valid/);
    // a stream: chunks of the right object, one finish_reason, the usage chunk last, then [DONE]
    const s = c(chat({ stream: true, stream_options: { include_usage: true } }));
    const chunk = (delta: unknown, finish: string | null, extra: Record<string, unknown> = {}) => ({ id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'default', choices: [{ index: 0, delta, logprobs: null, finish_reason: finish }], usage: null, ...extra });
    const sse = (...events: unknown[]) => ({ ...answer(200, events.map((e) => `data: ${typeof e === 'string' ? e : JSON.stringify(e)}\n\n`).join('')), headers: { 'content-type': 'text/event-stream; charset=utf-8' } });
    const usageChunk = { id: 'c1', object: 'chat.completion.chunk', created: 1, model: 'default', choices: [], usage };
    const good = [chunk({ role: 'assistant', content: '' }, null), chunk({ content: ' I' }, null), chunk({}, 'length'), usageChunk];
    expect(kinds(s, sse(...good, '[DONE]'))).toEqual([]);
    expect(kinds(s, sse(...good))).toEqual(['sse: a stream that does not end with data: [DONE]']);
    expect(kinds(s, sse(...good.slice(0, 3), '[DONE]'))).toEqual(['sse: a stream with include_usage and no usage chunk']);
    expect(kinds(s, sse(good[0], good[1], '[DONE]'))).toEqual(['sse: a stream with 0 finish_reason chunks', 'sse: a stream with include_usage and no usage chunk']);
    expect(kinds(s, sse(good[0], { ...good[1], id: 'c2' }, good[2], usageChunk, '[DONE]'))).toEqual(['sse: chunks of one stream with different ids']);
    expect(kinds(s, sse(good[0], err('WEFT_KV_EXHAUSTED', null, 'server_error'), '[DONE]'))).toEqual([]);
    expect(kinds(s, sse(good[0], err('WEFT_NOPE', null, 'server_error'), '[DONE]'))[0]).toMatch(/^uncoded/);
    expect(kinds(s, sse(good[0], err('WEFT_INTERNAL', null, 'server_error'), '[DONE]'))[0]).toMatch(/^sse: an error event WEFT_INTERNAL/);
    // what a raw socket reads: chunked bodies, 100 Continue skipped, no body after HEAD
    const wire = Buffer.from('HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\nHTTP/1.1 404 Not Found\r\nContent-Length: 2\r\n\r\n{}');
    const first = parseAnswer(wire, 0, false, false);
    expect(first !== null && first !== 'garbage' && [first.answer.status, first.answer.body.toString()]).toEqual([200, 'abc']);
    const second = first !== null && first !== 'garbage' ? parseAnswer(wire, first.end, true, false) : null;
    expect(second !== null && second !== 'garbage' && [second.answer.status, second.answer.body.length, wire.length - second.end]).toEqual([404, 0, 2]);
    expect(parseAnswer(Buffer.from('{"object":"list"}'), 0, false, false)).toBe('garbage');
  });
});

/** OpenAI requests per transport in the fixed-seed run (about 10 s more per transport on a loaded 2-core machine). */
const OPENAI_REQUESTS = 120;

// The server under test is the built one: `npm test` compiles first (or run `npx tsc -p tsconfig.json`).
describe.each(['ws', 'uws'] as const)('fuzz over %s (seed 9)', (transport) => {
  test('every frame and every request gets a coded answer in time; the server never dies; /healthz stays 200', async () => {
    // uWebSockets.js leaves requests its parser rejects unanswered until its idle timeout (docs/protocol.md)
    const report = await fuzz({ seed: 9, transports: [transport], frames: 2000, http: 250, openai: OPENAI_REQUESTS, deadlineMs: 35_000, silentHttpOk: transport === 'uws' });
    const text = `\n${formatReport(report)}\n`;
    // one line per distinct failure; the message is the whole report (inputs, seeds, how to replay)
    expect(report.distinct.map((d) => `${d.count}x ${d.signature}`), text).toEqual([]);
    const st = report.stats[0]!;
    expect(st.frames, text).toBeGreaterThan(500);
    expect(st.http, text).toBeGreaterThan(100);
    // the OpenAI routes: answered whole and streamed, and refused for each reason
    // (the deadline may cut the last batches on a loaded machine)
    expect(st.openai, text).toBeGreaterThan(OPENAI_REQUESTS / 2);
    expect(st.answers['openai 200'] ?? 0, text).toBeGreaterThan(st.openai / 5);
    for (const code of ['WEFT_BAD_REQUEST', 'WEFT_BAD_ARGUMENT', 'WEFT_BODY_TOO_LARGE', 'WEFT_METHOD_NOT_ALLOWED']) expect(Object.keys(st.answers).some((k) => k.startsWith('openai 4') && k.endsWith(code)), `${code}${text}`).toBe(true);
    expect(st.answers['openai: streamed = whole checked'] ?? 0, text).toBeGreaterThan(0);
  }, 150_000);
});


/**
 * The OpenAI-compatible HTTP front (docs/openai.md) driven by the real `openai` npm SDK over both
 * transports, on the real engine and the embedded default model: models, chat and completions
 * whole and streamed (streamed = non-streamed = the scheduler driven directly), logprobs, KV
 * reuse for stateless follow-ups (cached = cold), abort, and each error class the SDK maps.
 */
import { copyFileSync, existsSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { connect } from 'node:net';
import WebSocket from 'ws';
import { join } from 'node:path';
import OpenAI from 'openai';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { ApiKeys } from '../src/gateway/api-keys.js';
import { Gateway } from '../src/gateway/server.js';
import { TinyModels } from './helpers/models.js';
import { makeTls } from './helpers/tls.js';

let engine: Engine;
/** A tiny random model with the default model's tokenizer and a 16k context. */
let longEngine: Engine;
const models = new TinyModels();

beforeAll(async () => {
  const dir = join(import.meta.dirname, '..', 'models', 'default');
  engine = await Engine.load(dir, { threads: 2, contexts: 2, kvMemoryBytes: 64 << 20 });
  const long = await models.make('long', { vocab: engine.config.vocabSize, maxPos: 16384, hidden: 32, layers: 1, heads: 2, kvHeads: 1, ffn: 64 });
  for (const f of ['tokenizer.json', 'tokenizer_config.json']) if (existsSync(join(dir, f))) copyFileSync(join(dir, f), join(long, f));
  longEngine = await Engine.load(long, { threads: 1, kvMemoryBytes: 32 << 20 });
});
afterAll(() => {
  engine.dispose();
  longEngine.dispose();
  models.cleanup();
});

async function serve(opts: ConstructorParameters<typeof Gateway>[0] = {}): Promise<{ gw: Gateway; base: string; client: OpenAI }> {
  const gw = new Gateway({ port: 0, ...opts });
  gw.attach(engine);
  const { url } = await gw.listen();
  return { gw, base: url, client: new OpenAI({ apiKey: 'sk-none', baseURL: `${url}/v1`, maxRetries: 0 }) };
}

/** The greedy answer of the scheduler driven directly, for the same prompt tokens (a cold run). */
async function direct(gw: Gateway, prompt: number[], maxTokens: number, sampling = {}): Promise<string> {
  const tok = gw.format!.tokenizer;
  const req = gw.scheduler!.submit({ tokens: prompt, maxTokens, sampling, decoder: tok.createDecoder(), stopStrings: gw.format!.stopStrings });
  let text = '';
  for await (const ev of req) text += ev.text ?? '';
  return text;
}

const chatPrompt = (gw: Gateway, messages: { role: 'system' | 'user' | 'assistant'; content: string }[]) =>
  gw.format!.tokenizer.encode(gw.format!.render(messages, true), { addSpecialTokens: false });

const metric = async (base: string, name: string): Promise<number> => {
  const text = await (await fetch(`${base}/metrics`)).text();
  const m = new RegExp(`^${name.replace(/[{}"=]/g, (c) => `\\${c}`)} (\\S+)$`, 'm').exec(text);
  return m ? Number(m[1]) : NaN;
};

describe.each(['ws', 'uws'] as const)('OpenAI-compatible HTTP over %s', (transport) => {
  let gw: Gateway;
  let base: string;
  let client: OpenAI;
  let model: string;
  beforeAll(async () => {
    ({ gw, base, client } = await serve({ transport }));
    model = gw.modelName;
  });
  afterAll(() => gw.close());

  test('GET /v1/models lists the model; an unknown model is NotFoundError', async () => {
    const list = await client.models.list();
    expect(list.data.map((m) => m.id)).toEqual([model]);
    expect(list.data[0]).toMatchObject({ object: 'model', owned_by: 'weft' });
    expect((await client.models.retrieve(model)).id).toBe(model);
    const err = await client.models.retrieve('gpt-nope').catch((e: unknown) => e);
    expect(err).toBeInstanceOf(OpenAI.NotFoundError);
    const c = await client.chat.completions.create({ model: 'gpt-nope', messages: [{ role: 'user', content: 'hi' }] }).catch((e: unknown) => e);
    expect(c).toBeInstanceOf(OpenAI.NotFoundError);
    expect((c as InstanceType<typeof OpenAI.NotFoundError>).code).toBe('WEFT_MODEL_NOT_FOUND');
    expect((c as InstanceType<typeof OpenAI.NotFoundError>).param).toBe('model');
  });

  test('chat: streamed text = non-streamed text = the scheduler driven directly (temperature 0); usage; finish_reason', async () => {
    const messages = [
      { role: 'system' as const, content: 'You are terse.' },
      { role: 'user' as const, content: [{ type: 'text' as const, text: 'Tell me about ' }, { type: 'text' as const, text: 'the sea.' }] },
    ];
    const whole = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0 });
    expect(whole.object).toBe('chat.completion');
    expect(whole.id).toMatch(/^chatcmpl-/);
    expect(whole.choices).toHaveLength(1);
    expect(whole.choices[0]!.message.role).toBe('assistant');
    const want = await direct(gw, chatPrompt(gw, [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Tell me about the sea.' }]), 24);
    expect(whole.choices[0]!.message.content).toBe(want);
    expect(whole.usage!.prompt_tokens).toBe(chatPrompt(gw, [{ role: 'system', content: 'You are terse.' }, { role: 'user', content: 'Tell me about the sea.' }]).length);
    expect(whole.usage!.total_tokens).toBe(whole.usage!.prompt_tokens + whole.usage!.completion_tokens);
    expect(['stop', 'length']).toContain(whole.choices[0]!.finish_reason);
    if (whole.choices[0]!.finish_reason === 'length') expect(whole.usage!.completion_tokens).toBe(24);

    const stream = await client.chat.completions.create({ model, messages, max_tokens: 24, temperature: 0, stream: true, stream_options: { include_usage: true } });
    let text = '';
    const finishes: (string | null)[] = [];
    let usage: OpenAI.CompletionUsage | null | undefined;
    let first = true;
    for await (const chunk of stream) {
      expect(chunk.object).toBe('chat.completion.chunk');
      if (first) expect(chunk.choices[0]!.delta.role).toBe('assistant');
      first = false;
      if (chunk.usage) usage = chunk.usage;
      for (const c of chunk.choices) {
        text += c.delta.content ?? '';
        finishes.push(c.finish_reason);
      }
    }
    expect(text).toBe(whole.choices[0]!.message.content);
    expect(finishes.filter((f) => f !== null)).toEqual([whole.choices[0]!.finish_reason]);
    expect(usage).toMatchObject({ prompt_tokens: whole.usage!.prompt_tokens, completion_tokens: whole.usage!.completion_tokens });
  });

  test('completions: text, stream, stop strings', async () => {
    const whole = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 20, temperature: 0 });
    expect(whole.object).toBe('text_completion');
    const want = await direct(gw, gw.format!.tokenizer.encode('Once upon a time'), 20);
    // the direct run used the chat template's stop strings; without them the text can only be longer
    expect(whole.choices[0]!.text.startsWith(want) || want.startsWith(whole.choices[0]!.text)).toBe(true);
    let text = '';
    for await (const c of await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 20, temperature: 0, stream: true })) text += c.choices[0]?.text ?? '';
    expect(text).toBe(whole.choices[0]!.text);
    const word = whole.choices[0]!.text.trim().split(/\s+/)[1];
    if (word) {
      const cut = await client.completions.create({ model, prompt: 'Once upon a time', max_tokens: 20, temperature: 0, stop: [word] });
      expect(cut.choices[0]!.finish_reason).toBe('stop');
      expect(cut.choices[0]!.text).toBe(whole.choices[0]!.text.slice(0, whole.choices[0]!.text.indexOf(word)));
    }
  });

  test('logprobs and top_logprobs (chat and completions)', async () => {
    const r = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Count: one, two,' }], max_tokens: 6, temperature: 0, logprobs: true, top_logprobs: 3 });
    const content = r.choices[0]!.logprobs!.content!;
    expect(content.length).toBe(r.usage!.completion_tokens);
    for (const e of content) {
      expect(e.logprob).toBeLessThanOrEqual(0);
      expect(e.top_logprobs).toHaveLength(3);
      // greedy: the chosen token is the most likely one
      expect(e.logprob).toBeCloseTo(Math.max(...e.top_logprobs.map((t) => t.logprob)), 4);
      expect(Buffer.from(e.bytes!).toString('utf8')).toBe(e.token);
    }
    expect(content.map((e) => e.token).join('')).toBe(r.choices[0]!.message.content);
    const s = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Count: one, two,' }], max_tokens: 6, temperature: 0, logprobs: true, stream: true });
    const streamed: number[] = [];
    for await (const c of s) for (const e of c.choices[0]?.logprobs?.content ?? []) streamed.push(e.logprob);
    expect(streamed).toHaveLength(content.length);
    streamed.forEach((lp, i) => expect(lp).toBeCloseTo(content[i]!.logprob, 5));
    const t = await client.completions.create({ model, prompt: 'one, two,', max_tokens: 4, temperature: 0, logprobs: 2 });
    const lp = t.choices[0]!.logprobs!;
    expect(lp.tokens!.join('')).toBe(t.choices[0]!.text);
    expect(lp.token_logprobs).toHaveLength(lp.tokens!.length);
    expect(Object.keys(lp.top_logprobs![0]!).length).toBeGreaterThanOrEqual(1);
    expect(lp.text_offset![0]).toBe(0);
  });

  test('a follow-up reuses the earlier request KV (cached_tokens) and answers as a cold run does, greedy and seeded', async () => {
    const cold = await serve({ transport, prefixCacheEntries: 0 });
    try {
      for (const sampling of [{ temperature: 0 }, { temperature: 0.9, top_p: 0.95, seed: 1234 }]) {
        const first = [{ role: 'user' as const, content: `Tell me a story about a lighthouse ${sampling.temperature}.` }];
        // answers longer than their prompt: the follow-up sends this one back as text, re-tokenized
        const a = await client.chat.completions.create({ model, messages: first, max_tokens: 48, ignore_eos: true, ...sampling } as never);
        const follow = [...first, { role: 'assistant' as const, content: a.choices[0]!.message.content! }, { role: 'user' as const, content: 'And then what happened?' }];
        const b = await client.chat.completions.create({ model, messages: follow, max_tokens: 16, ...sampling });
        const prefix = chatPrompt(gw, first).length;
        expect(a.usage!.completion_tokens).toBeGreaterThan(prefix);
        expect(b.usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThanOrEqual(prefix);
        const coldB = await cold.client.chat.completions.create({ model, messages: follow, max_tokens: 16, ...sampling });
        expect(coldB.usage!.prompt_tokens_details!.cached_tokens).toBe(0);
        expect(b.choices[0]!.message.content).toBe(coldB.choices[0]!.message.content);
        // the same seeded request twice: the same answer (the second from cache)
        const again = await client.chat.completions.create({ model, messages: follow, max_tokens: 16, ...sampling });
        expect(again.choices[0]!.message.content).toBe(b.choices[0]!.message.content);
        expect(again.usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThan(0);
      }
    } finally {
      await cold.gw.close();
    }
  });

  test('abort through AbortController: the generated-token counter stops within a step', async () => {
    const ac = new AbortController();
    const before = await metric(base, 'weft_generated_tokens_total');
    const stream = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'Write a very long essay.' }], max_tokens: 2000, temperature: 0.8, seed: 1, stream: true }, { signal: ac.signal });
    let n = 0;
    await (async () => {
      for await (const _ of stream) if (++n === 5) ac.abort();
    })().catch(() => undefined);
    expect(n).toBeGreaterThanOrEqual(5);
    await new Promise((r) => setTimeout(r, 300));
    const stopped = await metric(base, 'weft_generated_tokens_total');
    await new Promise((r) => setTimeout(r, 500));
    expect(await metric(base, 'weft_generated_tokens_total')).toBe(stopped);
    expect(stopped - before).toBeLessThan(100);
    expect(gw.openai.busy).toBe(false);
  });

  test('errors: BadRequestError with the field, n > 1, roles and parts, malformed JSON, content type, 413, 404, 405', async () => {
    const bad = async (body: object) => client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], ...body } as never).catch((e: unknown) => e as InstanceType<typeof OpenAI.APIError>);
    let e = await bad({ temperature: 'hot' });
    expect(e).toBeInstanceOf(OpenAI.BadRequestError);
    expect(e).toMatchObject({ status: 400, code: 'WEFT_BAD_ARGUMENT', param: 'temperature', type: 'invalid_request_error' });
    e = await bad({ n: 2 });
    expect(e).toMatchObject({ status: 400, code: 'WEFT_UNSUPPORTED', param: 'n' });
    e = await bad({ messages: [{ role: 'tool', content: 'x', tool_call_id: 'a' }] });
    expect(e).toMatchObject({ status: 400, code: 'WEFT_UNSUPPORTED', param: 'messages[0].role' });
    e = await bad({ messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'http://x' } }] }] });
    expect(e).toMatchObject({ status: 400, code: 'WEFT_UNSUPPORTED', param: 'messages[0].content[0].type' });
    e = await bad({ max_tokens: 0 });
    expect(e).toMatchObject({ status: 400, param: 'max_tokens' });
    // unknown fields are ignored, as OpenAI does
    const ok = await client.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], max_tokens: 2, frobnicate: true } as never);
    expect(ok.choices).toHaveLength(1);

    const post = (body: string, type = 'application/json') => fetch(`${base}/v1/chat/completions`, { method: 'POST', headers: { 'content-type': type }, body });
    let r = await post('{"model": ');
    expect(r.status).toBe(400);
    expect((await r.json()).error).toMatchObject({ code: 'WEFT_BAD_REQUEST', type: 'invalid_request_error', param: null });
    r = await post(JSON.stringify({ model, messages: [{ role: 'user', content: 'x' }] }), 'text/plain');
    expect(r.status).toBe(400);
    expect((await r.json()).error.code).toBe('WEFT_BAD_REQUEST');
    r = await post('[1,2]');
    expect((await r.json()).error.code).toBe('WEFT_BAD_REQUEST');
    r = await post(JSON.stringify({ model, messages: [{ role: 'user', content: 'x'.repeat(5 << 20) }] }));
    expect(r.status).toBe(413);
    expect((await r.json()).error.code).toBe('WEFT_BODY_TOO_LARGE');
    r = await fetch(`${base}/v1/embeddings`, { method: 'POST', headers: { 'content-type': 'application/json' }, body: '{}' });
    expect(r.status).toBe(404);
    expect((await r.json()).error.code).toBe('WEFT_NOT_FOUND');
    r = await fetch(`${base}/v1/chat/completions`);
    expect(r.status).toBe(405);
    expect(r.headers.get('allow')).toBe('POST');
    expect((await r.json()).error.code).toBe('WEFT_METHOD_NOT_ALLOWED');
    // still serving
    expect((await client.models.list()).data).toHaveLength(1);
  });

  test('CORS: a browser origin the gateway allows gets its preflight and the headers; another gets none', async () => {
    const g = new Gateway({ transport, port: 0, allowedOrigins: ['https://app.example'] });
    g.attach(engine);
    const b = (await g.listen()).url;
    try {
      const pre = await fetch(`${b}/v1/chat/completions`, { method: 'OPTIONS', headers: { origin: 'https://app.example', 'access-control-request-method': 'POST', 'access-control-request-headers': 'authorization, content-type, x-stainless-os' } });
      expect(pre.status).toBe(204);
      expect(pre.headers.get('access-control-allow-origin')).toBe('https://app.example');
      expect(pre.headers.get('access-control-allow-headers')).toBe('authorization, content-type, x-stainless-os');
      const r = await fetch(`${b}/v1/models`, { headers: { origin: 'https://app.example' } });
      expect(r.headers.get('access-control-allow-origin')).toBe('https://app.example');
      const evil = await fetch(`${b}/v1/chat/completions`, { method: 'OPTIONS', headers: { origin: 'https://evil.example', 'access-control-request-method': 'POST' } });
      expect(evil.status).toBe(403);
      expect(evil.headers.get('access-control-allow-origin')).toBeNull();
      expect((await fetch(`${b}/v1/models`, { headers: { origin: 'https://evil.example' } })).headers.get('access-control-allow-origin')).toBeNull();
    } finally {
      await g.close();
    }
  });

  test('a client that opens a stream and never reads is paused, then cut off; others never notice', async () => {
    // a long context, so that one answer holds more bytes than the kernel's socket buffers (megabytes)
    const g = new Gateway({ transport, port: 0, heartbeatMs: 1500 });
    g.attach(longEngine);
    const b = (await g.listen()).url;
    const c = new OpenAI({ apiKey: 'sk-none', baseURL: `${b}/v1`, maxRetries: 0 });
    const model = g.modelName;
    try {
      const url = new URL(b);
      // ~3 KB per event (20 alternatives each) x 12,000 events: more than the socket buffers hold
      const body = JSON.stringify({ model, messages: [{ role: 'user', content: 'Write forever.' }], max_tokens: 12000, stream: true, temperature: 0.8, seed: 3, ignore_eos: true, logprobs: true, top_logprobs: 20 });
      const cutBefore = await metric(b, 'weft_errors_total{code="WEFT_RATE_LIMITED"}');
      const sock = connect(Number(url.port), url.hostname);
      sock.on('error', () => undefined);
      await new Promise((r) => sock.once('connect', r));
      sock.write(`POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: ${Buffer.byteLength(body)}\r\n\r\n${body}`);
      sock.pause(); // never reads
      const t0 = Date.now();
      const r = await c.chat.completions.create({ model, messages: [{ role: 'user', content: 'hello' }], max_tokens: 8 });
      expect(r.choices[0]!.message.content!.length).toBeGreaterThanOrEqual(0);
      expect(Date.now() - t0).toBeLessThan(5000);
      const end = Date.now() + 15_000;
      while (g.openai.busy && Date.now() < end) await new Promise((res) => setTimeout(res, 100));
      expect(g.openai.busy).toBe(false);
      // it was cut off (not finished): the stall counted, and far fewer than 1500 tokens were made for it
      expect(await metric(b, 'weft_errors_total{code="WEFT_RATE_LIMITED"}')).toBe((Number.isNaN(cutBefore) ? 0 : cutBefore) + 1);
      sock.destroy();
    } finally {
      await g.close();
    }
  });
});

describe.each(['ws', 'uws'] as const)('TLS over %s (--tls-cert/--tls-key): HTTPS, SSE and wss:// on one port', (transport) => {
  test('a streamed chat completion over HTTPS, and protocol v1 over wss://, trusting only the throwaway CA', async () => {
    const tls = makeTls();
    const gw = new Gateway({ transport, port: 0, tls: { certFile: tls.certFile, keyFile: tls.keyFile } });
    gw.attach(engine);
    const { port } = await gw.listen();
    try {
      const body = JSON.stringify({ model: gw.modelName, messages: [{ role: 'user', content: 'Hello there.' }], max_tokens: 12, temperature: 0, stream: true });
      const sse = await new Promise<{ status: number; text: string }>((resolve, reject) => {
        const req = httpsRequest({ host: '127.0.0.1', port, path: '/v1/chat/completions', method: 'POST', ca: tls.ca, headers: { 'content-type': 'application/json', 'content-length': Buffer.byteLength(body) } }, (res) => {
          let text = '';
          res.on('data', (d) => (text += d));
          res.on('end', () => resolve({ status: res.statusCode ?? 0, text }));
        });
        req.on('error', reject);
        req.end(body);
      });
      expect(sse.status).toBe(200);
      expect(sse.text.trimEnd().endsWith('data: [DONE]')).toBe(true);
      const streamed = sse.text.split('\n').filter((l) => l.startsWith('data: {')).map((l) => JSON.parse(l.slice(6)).choices[0]?.delta?.content ?? '').join('');
      const want = await direct(gw, chatPrompt(gw, [{ role: 'user', content: 'Hello there.' }]), 12);
      expect(streamed).toBe(want);
      // a client that does not trust the CA is refused by TLS itself
      await expect(fetch(`https://127.0.0.1:${port}/healthz`)).rejects.toThrow();
      const ws = new WebSocket(`wss://127.0.0.1:${port}/v1/ws`, { ca: tls.ca });
      const first = await new Promise<Record<string, unknown>>((resolve, reject) => {
        ws.once('message', (d) => resolve(JSON.parse(String(d))));
        ws.once('error', reject);
      });
      expect(first.type).toBe('session.created');
      ws.close();
    } finally {
      await gw.close();
    }
  });
});

describe('API keys on the HTTP front', () => {
  test("one key never reuses another key's KV (cached_tokens would tell what it sent)", async () => {
    const keys = new ApiKeys({ keys: [{ name: 'a', key: 'sk-aaaa-1234' }, { name: 'b', key: 'sk-bbbb-1234' }] });
    const { gw, base } = await serve({ apiKeys: keys });
    const mk = (key: string) => new OpenAI({ apiKey: key, baseURL: `${base}/v1`, maxRetries: 0 });
    try {
      const messages = [{ role: 'system' as const, content: 'You are a helpful assistant who answers in long, detailed paragraphs.' }, { role: 'user' as const, content: 'What is the capital of France?' }];
      await mk('sk-aaaa-1234').chat.completions.create({ model: gw.modelName, messages, max_tokens: 8 });
      const b = await mk('sk-bbbb-1234').chat.completions.create({ model: gw.modelName, messages, max_tokens: 8 });
      expect(b.usage!.prompt_tokens_details!.cached_tokens).toBe(0);
      const a = await mk('sk-aaaa-1234').chat.completions.create({ model: gw.modelName, messages, max_tokens: 8 });
      expect(a.usage!.prompt_tokens_details!.cached_tokens).toBeGreaterThan(0);
      expect(a.choices[0]!.message.content).toBe(b.choices[0]!.message.content);
    } finally {
      await gw.close();
    }
  });

  test('no key or a wrong key is AuthenticationError; a spent budget is RateLimitError with Retry-After; max_tokens is capped; concurrency', async () => {
    const keys = new ApiKeys({
      keys: [
        { name: 'small', key: 'sk-small-123', tokens_per_minute: 120, max_tokens: 5 },
        { name: 'one', key: 'sk-one-12345', max_concurrent: 1 },
      ],
    });
    const { gw, base } = await serve({ apiKeys: keys });
    const mk = (key: string) => new OpenAI({ apiKey: key, baseURL: `${base}/v1`, maxRetries: 0 });
    const model = gw.modelName;
    try {
      expect(await mk('sk-wrong-000').models.list().catch((e: unknown) => e)).toBeInstanceOf(OpenAI.AuthenticationError);
      // without a key even which routes exist is not told
      expect((await fetch(`${base}/v1/embeddings`)).status).toBe(401);
      const noKey = await fetch(`${base}/v1/models`);
      expect(noKey.status).toBe(401);
      expect((await noKey.json()).error).toMatchObject({ code: 'WEFT_UNAUTHORIZED', type: 'authentication_error' });
      expect((await fetch(`${base}/healthz`)).status).toBe(200);
      expect((await fetch(`${base}/metrics`)).status).toBe(401);
      expect((await fetch(`${base}/metrics`, { headers: { authorization: 'Bearer sk-one-12345' } })).status).toBe(200);

      const small = mk('sk-small-123');
      const r = await small.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 50, temperature: 0.7, seed: 9 });
      expect(r.usage!.completion_tokens).toBeLessThanOrEqual(5);
      const raw = await small.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi' }], max_tokens: 5 }).withResponse();
      expect(Number(raw.response.headers.get('x-ratelimit-limit-tokens'))).toBe(120);
      let limited: unknown = null;
      for (let i = 0; i < 20 && !limited; i++) {
        limited = await small.chat.completions.create({ model, messages: [{ role: 'user', content: 'hi there, how are you doing today?' }], max_tokens: 5 }).then(() => null, (e: unknown) => e);
      }
      expect(limited).toBeInstanceOf(OpenAI.RateLimitError);
      const rl = limited as InstanceType<typeof OpenAI.RateLimitError>;
      expect(rl.code).toBe('WEFT_KEY_BUDGET');
      expect(Number(rl.headers?.get('retry-after'))).toBeGreaterThanOrEqual(1);
      expect(Number(rl.headers?.get('x-ratelimit-limit-tokens'))).toBe(120);

      // max_concurrent 1: a second request while one streams is 429
      const one = mk('sk-one-12345');
      const s = await one.chat.completions.create({ model, messages: [{ role: 'user', content: 'Write a long essay.' }], max_tokens: 400, stream: true, temperature: 0.8, seed: 2 });
      const it = s[Symbol.asyncIterator]();
      await it.next();
      const second = await one.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], max_tokens: 2 }).catch((e: unknown) => e);
      expect(second).toBeInstanceOf(OpenAI.RateLimitError);
      expect((second as InstanceType<typeof OpenAI.RateLimitError>).code).toBe('WEFT_KEY_CONCURRENCY');
      s.controller.abort();
      await it.return?.();
      const end = Date.now() + 5000;
      while (gw.keys!.tenants[1]!.active > 0 && Date.now() < end) await new Promise((res) => setTimeout(res, 20));
      expect((await one.chat.completions.create({ model, messages: [{ role: 'user', content: 'x' }], max_tokens: 2 })).choices).toHaveLength(1);
    } finally {
      await gw.close();
    }
  });
});

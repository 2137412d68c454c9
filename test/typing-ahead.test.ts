/**
 * Typing-ahead prefill (issue 11, section 4): input.append streams the message being typed, the
 * server prefills what can no longer change, and message.create {commit: true} prefills only the
 * rest; the answer is the same either way, and an edit falls back to the common prefix.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';
import { Client } from './helpers/ws-client.js';

let engine: Engine;
beforeAll(async () => {
  engine = await Engine.load(join(import.meta.dirname, '..', 'models', 'default'), { threads: 1, contexts: 2, kvMemoryBytes: 64 << 20 });
});
afterAll(() => engine.dispose());

const MESSAGE = 'And it came to pass in those days, when the judges ruled, that there was a famine in the land. And a certain man of Bethlehemjudah went to sojourn in the country of Moab, he, and his wife, and his two sons. Tell me what became of them?';
const SAMPLING = { temperature: 0.8, top_k: 40, seed: 4, max_tokens: 24 };

describe.each(['ws', 'uws'] as const)('typing-ahead over %s', (transport) => {
  let gw: Gateway;
  let url: string;
  beforeAll(async () => {
    gw = new Gateway({ transport, port: 0 });
    gw.attach(engine);
    url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  });
  afterAll(() => gw.close());

  const until = async (cond: () => boolean, ms = 5000) => {
    const end = Date.now() + ms;
    while (!cond()) {
      if (Date.now() > end) throw new Error('condition not met');
      await new Promise((r) => setTimeout(r, 10));
    }
  };

  test('typed in pieces then committed: only the tail is prefilled, the answer equals a message sent whole', async () => {
    const plain = await Client.open(url);
    await plain.next((e) => e.type === 'session.created');
    const whole = await plain.turn(MESSAGE, SAMPLING);
    expect(whole.done.usage.cached_tokens).toBe(0);

    const c = await Client.open(url);
    const created = await c.next((e) => e.type === 'session.created');
    const session = [...gw.sessions].find((s) => s.id === created.session.id)!;
    const pieces = MESSAGE.match(/.{1,24}/gs)!;
    for (const p of pieces) {
      c.send({ type: 'input.append', text: p });
      await new Promise((r) => setTimeout(r, 5));
    }
    // the prefill catches up with the text typed so far, holding back the last word
    await until(() => session.cachedTokens > whole.done.usage.prompt_tokens - 20);
    c.send({ type: 'message.create', commit: true, sampling: SAMPLING, event_id: 'go' });
    const created2 = await c.next((e) => e.type === 'response.created' || e.type === 'error');
    expect(created2).toMatchObject({ type: 'response.created', event_id: 'go' });
    const deltas = [];
    let done;
    for (;;) {
      const e = await c.next((x) => x.response_id === created2.response_id);
      if (e.type === 'response.delta') deltas.push(e);
      else {
        done = e;
        break;
      }
    }
    expect(done.usage.prompt_tokens).toBe(whole.done.usage.prompt_tokens);
    expect(done.usage.cached_tokens).toBeGreaterThan(done.usage.prompt_tokens - 20);
    expect(deltas.map((d) => d.text).join('')).toBe(whole.text);
    expect(session.messages.at(-2)).toEqual({ role: 'user', content: MESSAGE });
    for (const x of [plain, c]) x.ws.close();
  });

  test('an edit cuts the KV back to the common prefix; input.clear starts over; a flood past the context is refused', async () => {
    const plain = await Client.open(url);
    await plain.next((e) => e.type === 'session.created');
    const edited = 'And it came to pass in those days that Naomi returned. Tell me what became of her?';
    const whole = await plain.turn(edited, SAMPLING);

    const c = await Client.open(url);
    const created = await c.next((e) => e.type === 'session.created');
    const session = [...gw.sessions].find((s) => s.id === created.session.id)!;
    c.send({ type: 'input.append', text: MESSAGE.slice(0, 120) });
    await until(() => session.cachedTokens > 10);
    // the user selects all and types something else
    c.send({ type: 'input.clear' });
    c.send({ type: 'input.append', text: edited });
    c.send({ type: 'message.create', commit: true, sampling: SAMPLING });
    const created2 = await c.next((e) => e.type === 'response.created');
    let text = '';
    for (;;) {
      const e = await c.next((x) => x.response_id === created2.response_id);
      if (e.type === 'response.delta') text += e.text;
      else break;
    }
    expect(text).toBe(whole.text);
    expect(session.messages.at(-2)).toEqual({ role: 'user', content: edited });

    c.send({ type: 'input.append', text: 'word '.repeat(6000), event_id: 'flood' });
    expect(await c.next((e) => e.event_id === 'flood')).toMatchObject({ type: 'error', code: 'WEFT_CONTEXT_OVERFLOW' });
    c.send({ type: 'message.create', commit: true, content: 'x', event_id: 'both' });
    expect(await c.next((e) => e.event_id === 'both')).toMatchObject({ type: 'error', code: 'WEFT_BAD_FRAME' });
    for (const x of [plain, c]) x.ws.close();
  });
});

test('a session closed, or swept by the KV lifecycle, while a typing-ahead prefill runs: nothing throws, nothing leaks', async () => {
  const gw = new Gateway({ port: 0, dropAfterMs: 1, parkAfterMs: 1 });
  gw.attach(engine);
  const url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  const before = engine.stats().sequences;
  try {
    for (let i = 0; i < 6; i++) {
      const c = await Client.open(url);
      await c.next((e) => e.type === 'session.created');
      c.send({ type: 'input.append', text: MESSAGE });
      await new Promise((r) => setTimeout(r, i * 7));
      c.send({ type: 'session.close' });
      await c.waitClosed();
    }
    await new Promise((r) => setTimeout(r, 300));
    expect(engine.stats().sequences).toBe(before);
  } finally {
    await gw.close();
  }
});

/**
 * Barge-in (issue 11, section 2): the model forgets what the user never saw. A cancel with
 * truncate_at_seq (or response.truncate after done) trims the answer and the KV to the tokens of
 * deltas 0..N; the next turn's cached_tokens covers the trimmed conversation and its answer
 * equals a fresh sequence prefilled with the same prompt.
 */
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';
import { replayPrompt } from './helpers/replay.js';
import { Client, type Ev } from './helpers/ws-client.js';

let engine: Engine;
beforeAll(async () => {
  engine = await Engine.load(join(import.meta.dirname, '..', 'models', 'default'), { threads: 1, contexts: 2, kvMemoryBytes: 64 << 20 });
});
afterAll(() => engine.dispose());

const SAMPLING = { temperature: 0.9, top_k: 40, seed: 21 };

describe.each(['ws', 'uws'] as const)('barge-in over %s', (transport) => {
  let gw: Gateway;
  let url: string;
  beforeAll(async () => {
    gw = new Gateway({ transport, port: 0, sessionSampling: { ignoreEos: true } });
    gw.attach(engine);
    gw.format = Object.assign(Object.create(Object.getPrototypeOf(gw.format)), gw.format, { stopStrings: [] });
    url = (await gw.listen()).url.replace('http', 'ws') + '/v1/ws';
  });
  afterAll(() => gw.close());

  const sessionOf = (c: Client) => [...gw.sessions].find((s) => s.id === (c.events[0] as Ev).session.id)!;

  test('cancel with truncate_at_seq, then a message at once: one barge-in, the KV trimmed to what was shown', async () => {
    const c = await Client.open(url);
    await c.next((e) => e.type === 'session.created');
    c.send({ type: 'message.create', content: 'Tell me of Moses.', sampling: { ...SAMPLING, max_tokens: 200 } });
    const id = (await c.next((e) => e.type === 'response.created')).response_id;
    const session = sessionOf(c);
    const firstTurn = session.currentTurn!;
    const shown: Ev[] = [];
    while (shown.length < 12) shown.push(await c.next((e) => e.type === 'response.delta'));
    const N = 7;
    // the user interrupts after seeing deltas 0..7: cancel, and the next message right away
    c.send({ type: 'response.cancel', truncate_at_seq: N, event_id: 'stop' });
    c.send({ type: 'message.create', content: 'Speak of Aaron.', sampling: { ...SAMPLING, max_tokens: 16 }, event_id: 'next' });
    const done = await c.next((e) => e.type === 'response.done' && e.response_id === id);
    expect(done).toMatchObject({ finish_reason: 'cancelled', event_id: 'stop', truncated_at_seq: N });
    const keptText = shown.slice(0, N + 1).map((d) => d.text).join('');
    expect(done.text).toBe(keptText);
    const created = await c.next((e) => e.type === 'response.created' || e.type === 'error');
    expect(created).toMatchObject({ type: 'response.created', event_id: 'next' });
    const second = session.currentTurn!;
    expect(second).not.toBe(firstTurn);
    const d2 = await c.next((e) => e.type === 'response.done' && e.response_id === created.response_id);
    // the transcript and the prompt hold the answer up to delta N only
    expect(session.messages[1]).toEqual({ role: 'assistant', content: keptText });
    expect(second.prompt.slice(0, firstTurn.prompt.length + N + 1)).toEqual([...firstTurn.prompt, ...firstTurn.request.generated.slice(0, N + 1)]);
    expect(engine.tokenizer!.decode(second.prompt.slice(firstTurn.prompt.length + N + 1) as number[])).toMatch(/^\nAnd one asked him, saying, Speak of Aaron\./);
    expect(d2.usage.cached_tokens).toBe(firstTurn.prompt.length + N + 1);
    const ref = await replayPrompt(gw.scheduler!, gw.format!, second.prompt, { temperature: 0.9, topK: 40, seed: 21, ignoreEos: true }, 16);
    expect(ref.tokens).toEqual(second.request.generated);
    c.ws.close();
  });

  test('response.truncate after done; a seq beyond the answer is a coded error and changes nothing', async () => {
    const c = await Client.open(url);
    await c.next((e) => e.type === 'session.created');
    const r = await c.turn('Who made the heaven and the earth?', { ...SAMPLING, max_tokens: 20 });
    const session = sessionOf(c);
    const before = session.messages.map((m) => ({ ...m }));
    c.send({ type: 'response.truncate', seq: 20, event_id: 'far' });
    expect(await c.next((e) => e.event_id === 'far')).toMatchObject({ type: 'error', code: 'WEFT_BAD_ARGUMENT' });
    c.send({ type: 'response.truncate', response_id: 'resp_nope', seq: 1, event_id: 'other' });
    expect(await c.next((e) => e.event_id === 'other')).toMatchObject({ type: 'error', code: 'WEFT_NO_RESPONSE' });
    expect(session.messages).toEqual(before);
    c.send({ type: 'response.truncate', response_id: r.created.response_id, seq: 4, event_id: 'cut' });
    const cut = await c.next((e) => e.event_id === 'cut');
    expect(cut).toMatchObject({ type: 'response.truncated', response_id: r.created.response_id, seq: 4, text: r.deltas.slice(0, 5).map((d) => d.text).join('') });
    const t1 = session.currentTurn!;
    const r2 = await c.turn('And then?', { ...SAMPLING, max_tokens: 8 });
    expect(r2.done.usage.cached_tokens).toBe(t1.prompt.length + 5);
    // -1 keeps nothing of the answer
    c.send({ type: 'response.truncate', seq: -1, event_id: 'none' });
    expect(await c.next((e) => e.event_id === 'none')).toMatchObject({ type: 'response.truncated', text: '' });
    expect(session.messages.at(-1)).toEqual({ role: 'assistant', content: '' });
    c.ws.close();
  });
});

/**
 * The OpenAI Realtime-compatible front (/v1/realtime, docs/realtime.md) driven by the unmodified
 * `openai` SDK (OpenAIRealtimeWS, which always connects with wss://) over both transports, served
 * with TLS from a throwaway CA: a multi-turn text conversation whose cached turns answer as a
 * fresh session does, cancel, truncate (transcript and KV), item delete and insertion, audio
 * events and bad frames, and API keys (401 and 429 at the handshake, the browser's subprotocol
 * key, max_tokens caps, a budget that ends a response).
 */
import { join } from 'node:path';
import OpenAI from 'openai';
import { OpenAIRealtimeWS } from 'openai/realtime/ws';
import type { RealtimeClientEvent } from 'openai/resources/realtime/realtime';
import WebSocket from 'ws';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { ApiKeys } from '../src/gateway/api-keys.js';
import type { RealtimeConnection } from '../src/gateway/realtime.js';
import { Gateway } from '../src/gateway/server.js';
import { Session } from '../src/session/session.js';
import { replayPrompt } from './helpers/replay.js';
import { makeTls, type TestTls } from './helpers/tls.js';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
type Ev = Record<string, any>;

let engine: Engine;
let tls: TestTls;

beforeAll(async () => {
  engine = await Engine.load(join(import.meta.dirname, '..', 'models', 'default'), { threads: 2, contexts: 2, kvMemoryBytes: 64 << 20 });
  tls = makeTls();
});
afterAll(() => {
  engine.dispose();
  tls.remove();
});

const INSTRUCTIONS = 'In the beginning God created the heaven and the earth.';
const Q1 = 'Who made the heaven and the earth?';
const Q2 = 'And what did he say unto them?';
const Q3 = 'Where is Moses?';

/** An OpenAIRealtimeWS with every server event kept in order, awaited by predicate. */
class Rt {
  readonly events: Ev[] = [];
  /** The SDK's 'error' emits (error events, and socket errors such as a refused handshake). */
  readonly errors: { message: string; error?: Ev }[] = [];
  closed = false;
  closeCode = 0;
  /** Events before it were taken by `next`. */
  private pos = 0;
  /** The pending `next`: looks at the events not taken yet. */
  private waiter: (() => void) | null = null;

  constructor(readonly rt: OpenAIRealtimeWS) {
    const ping = () => this.waiter?.();
    rt.on('event', (ev) => {
      this.events.push(ev as Ev);
      ping();
    });
    rt.on('error', (err) => {
      this.errors.push({ message: err.message, error: err.error as Ev | undefined });
      ping();
    });
    rt.socket.on('close', (code) => {
      this.closed = true;
      this.closeCode = code;
      ping();
    });
  }

  static async open(port: number, apiKey = 'sk-unused', model?: string): Promise<Rt> {
    const client = new OpenAI({ apiKey, baseURL: `https://127.0.0.1:${port}/v1` });
    const c = new Rt(new OpenAIRealtimeWS({ model: model ?? 'default', options: { ca: tls.ca } }, client));
    await new Promise<void>((res, rej) => {
      c.rt.socket.once('open', () => res());
      c.rt.socket.once('close', () => rej(new Error(c.errors.map((e) => e.message).join('; ') || 'closed')));
    });
    return c;
  }

  send(ev: RealtimeClientEvent): void {
    this.rt.send(ev);
  }

  /** Sends a frame the SDK's types would not let through. */
  raw(frame: unknown): void {
    this.rt.socket.send(typeof frame === 'string' || Buffer.isBuffer(frame) ? frame : JSON.stringify(frame));
  }

  /** The next event not taken yet that matches (the ones before it are taken too). */
  next(pred: (e: Ev) => boolean = () => true, timeoutMs = 20_000): Promise<Ev> {
    return new Promise((resolve, reject) => {
      const settle = (fn: () => void) => {
        this.waiter = null;
        clearTimeout(timer);
        fn();
      };
      const timer = setTimeout(() => settle(() => reject(new Error('timeout'))), timeoutMs);
      this.waiter = () => {
        const i = this.events.slice(this.pos).findIndex(pred);
        if (i >= 0) {
          this.pos += i + 1;
          return settle(() => resolve(this.events[this.pos - 1]!));
        }
        this.pos = this.events.length;
        if (this.closed) settle(() => reject(new Error(`closed (${this.closeCode})`)));
      };
      this.waiter();
    });
  }

  /** Every event up to and including the next response.done. */
  async untilDone(): Promise<Ev[]> {
    const out: Ev[] = [];
    for (;;) {
      const e = await this.next();
      out.push(e);
      if (e.type === 'response.done') return out;
    }
  }

  /** Adds a user message and answers it: its events, the streamed text and response.done's response. */
  async ask(text: string, response: Record<string, unknown> = {}): Promise<{ events: Ev[]; text: string; done: Ev; itemId: string; userItemId: string }> {
    this.send({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text }] } });
    const added = await this.next((e) => e.type === 'conversation.item.added');
    await this.next((e) => e.type === 'conversation.item.done');
    this.send({ type: 'response.create', response });
    const events = await this.untilDone();
    const deltas = events.filter((e) => e.type === 'response.output_text.delta');
    expect(added.item.content).toEqual([{ type: 'input_text', text }]);
    const itemId = events.find((e) => e.type === 'response.output_item.added')!.item.id;
    return { events, text: deltas.map((d) => d.delta).join(''), done: events.at(-1)!.response, itemId, userItemId: added.item.id };
  }

  close(): void {
    this.rt.close();
  }
}

/** The answers of a fresh protocol-level session given the same turns (greedy). */
async function freshAnswers(gw: Gateway, system: string | undefined, turns: (string | ((s: Session) => void))[], maxTokens = 40): Promise<{ texts: string[]; session: Session }> {
  const s = new Session(gw.scheduler!, { format: gw.format!, system, maxTokens });
  const texts: string[] = [];
  for (const t of turns) {
    if (typeof t !== 'string') {
      t(s);
      continue;
    }
    const turn = s.send(t);
    for await (const _ of turn);
    texts.push((await turn.done).text);
  }
  return { texts, session: s };
}

/** The realtime connection's session (the latest one opened). */
function sessionOf(gw: Gateway): Session {
  return ([...gw.realtime] as RealtimeConnection[]).at(-1)!.session!;
}

const GA_ORDER = ['response.created', 'response.output_item.added', 'conversation.item.added', 'response.content_part.added'];
const GA_END = ['response.output_text.done', 'response.content_part.done', 'response.output_item.done', 'conversation.item.done', 'response.done'];

describe.each(['ws', 'uws'] as const)('realtime over %s with TLS', (transport) => {
  let gw: Gateway;
  let port: number;

  beforeAll(async () => {
    gw = new Gateway({ transport, port: 0, tls: { certFile: tls.certFile, keyFile: tls.keyFile }, maxFrameBytes: 64 << 10 });
    gw.attach(engine);
    port = (await gw.listen()).port;
  });
  afterAll(() => gw.close());

  test('a multi-turn text conversation: the GA event order, deltas that make the text, cached tokens, answers equal to a fresh session', async () => {
    const c = await Rt.open(port);
    const created = await c.next();
    expect(created).toMatchObject({ type: 'session.created', event_id: expect.stringMatching(/^event_/), session: { type: 'realtime', object: 'realtime.session', model: 'default', output_modalities: ['text'], instructions: '' } });
    c.send({ type: 'session.update', session: { type: 'realtime', instructions: INSTRUCTIONS, output_modalities: ['text'], max_output_tokens: 40 } });
    expect(await c.next()).toMatchObject({ type: 'session.updated', session: { instructions: INSTRUCTIONS, max_output_tokens: 40 } });

    const r1 = await c.ask(Q1);
    const types = r1.events.map((e) => e.type);
    const numDeltas = types.filter((t) => t === 'response.output_text.delta').length;
    expect(numDeltas).toBeGreaterThan(0);
    expect(types).toEqual([...GA_ORDER, ...Array(numDeltas).fill('response.output_text.delta'), ...GA_END]);
    const byType = Object.fromEntries(r1.events.map((e) => [e.type, e]));
    const respId = byType['response.created'].response.id;
    expect(respId).toMatch(/^resp_/);
    expect(r1.itemId).toMatch(/^item_/);
    expect(byType['response.created'].response).toMatchObject({ object: 'realtime.response', status: 'in_progress', output: [] });
    for (const e of r1.events) expect(e.event_id).toMatch(/^event_/);
    expect(new Set(r1.events.map((e) => e.event_id)).size).toBe(r1.events.length);
    for (const e of r1.events.filter((x) => x.type.startsWith('response.') && x.type !== 'response.created' && x.type !== 'response.done')) expect(e.response_id).toBe(respId);
    expect(byType['response.output_text.done']).toMatchObject({ item_id: r1.itemId, output_index: 0, content_index: 0, text: r1.text });
    expect(byType['response.content_part.done'].part).toEqual({ type: 'text', text: r1.text });
    const item = { id: r1.itemId, object: 'realtime.item', type: 'message', role: 'assistant', content: [{ type: 'output_text', text: r1.text }] };
    expect(byType['response.output_item.done'].item).toMatchObject(item);
    expect(byType['conversation.item.done'].item).toMatchObject(item);
    expect(['completed', 'incomplete']).toContain(r1.done.status);
    expect(r1.done.output).toEqual([expect.objectContaining(item)]);
    const u1 = r1.done.usage;
    expect(u1).toMatchObject({ input_tokens: expect.any(Number), output_tokens: numDeltas > 0 ? expect.any(Number) : 0, input_token_details: { cached_tokens: 0 } });
    expect(u1.total_tokens).toBe(u1.input_tokens + u1.output_tokens);

    const r2 = await c.ask(Q2);
    // the whole conversation is reused: turn 1's prompt and answer (but its last token, sampled and never fed)
    expect(r2.done.usage.input_token_details.cached_tokens).toBe(u1.input_tokens + u1.output_tokens - 1);
    // the cached turn equals a fresh sequence prefilled with the same prompt, and a fresh session given the same turns
    const rtSession = sessionOf(gw);
    const ref = await replayPrompt(gw.scheduler!, gw.format!, rtSession.currentTurn!.prompt, {}, 40);
    expect(r2.text).toBe(ref.text);
    const fresh = await freshAnswers(gw, INSTRUCTIONS, [Q1, Q2]);
    expect(fresh.texts).toEqual([r1.text, r2.text]);
    await fresh.session.close();

    // the conversation as items
    c.send({ type: 'conversation.item.retrieve', item_id: r1.itemId });
    expect(await c.next()).toMatchObject({ type: 'conversation.item.retrieved', item: item });
    c.close();
  });

  test('cancel: status cancelled, then the next response works; one response at a time', async () => {
    const c = await Rt.open(port);
    await c.next((e) => e.type === 'session.created');
    c.send({ type: 'response.cancel', event_id: 'nothing' });
    expect(await c.next()).toMatchObject({ type: 'error', error: { type: 'invalid_request_error', code: 'WEFT_NO_RESPONSE', event_id: 'nothing' } });
    c.send({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Tell me of Moses.' }] } });
    c.send({ type: 'response.create', response: { max_output_tokens: 200 } });
    c.send({ type: 'response.create', event_id: 'busy' });
    c.send({ type: 'response.cancel', event_id: 'stop-it' });
    const events = await c.untilDone();
    expect(events.find((e) => e.type === 'error')).toMatchObject({ error: { code: 'WEFT_RESPONSE_IN_PROGRESS', event_id: 'busy' } });
    const done = events.at(-1)!.response;
    expect(done).toMatchObject({ status: 'cancelled', status_details: { type: 'cancelled', reason: 'client_cancelled' } });
    expect(done.usage.output_tokens).toBeLessThanOrEqual(1);
    expect(done.output[0]).toMatchObject({ role: 'assistant', status: 'incomplete' });
    // the cancelled answer stays in the conversation as what was generated; the next response works
    const r = await c.ask(Q1, { max_output_tokens: 20 });
    expect(['completed', 'incomplete']).toContain(r.done.status);
    expect(r.text.length).toBeGreaterThan(0);

    // barge-in: cancel, a new message and a response sent at once apply in that order
    c.send({ type: 'response.create', response: { max_output_tokens: 200 } });
    await c.next((e) => e.type === 'response.created');
    c.send({ type: 'response.cancel' });
    c.send({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: Q3 }] } });
    c.send({ type: 'response.create', response: { max_output_tokens: 10 } });
    const first = await c.untilDone();
    expect(first.at(-1)!.response.status).toBe('cancelled');
    const second = await c.untilDone();
    expect(second.filter((e) => e.type === 'error')).toEqual([]);
    expect(second.find((e) => e.type === 'conversation.item.added')!.item.role).toBe('user');
    expect(second.at(-1)!.response.status).not.toBe('cancelled');
    c.close();
  });

  test('truncate: the answer keeps what the client showed, in the transcript and the KV; the next answer equals a fresh session with that transcript', async () => {
    const c = await Rt.open(port);
    await c.next((e) => e.type === 'session.created');
    c.send({ type: 'session.update', session: { type: 'realtime', instructions: INSTRUCTIONS } });
    await c.next((e) => e.type === 'session.updated');
    const r1 = await c.ask(Q1, { max_output_tokens: 40 });
    const deltas = r1.events.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta as string);
    expect(deltas.length).toBeGreaterThan(2);
    // the client showed the first k deltas (one per token here: the model's text is ASCII)
    const k = Math.floor(deltas.length / 2);
    const shown = deltas.slice(0, k).join('');
    c.send({ type: 'conversation.item.truncate', item_id: r1.itemId, content_index: 0, audio_end_ms: [...shown].length });
    expect(await c.next()).toMatchObject({ type: 'conversation.item.truncated', item_id: r1.itemId, content_index: 0, text_end: [...shown].length });
    c.send({ type: 'conversation.item.retrieve', item_id: r1.itemId });
    expect((await c.next()).item.content).toEqual([{ type: 'output_text', text: shown }]);

    const r2 = await c.ask(Q2, { max_output_tokens: 40 });
    // the KV kept the prompt and the k tokens shown: only the new message was prefilled
    expect(r2.done.usage.input_token_details.cached_tokens).toBe(r1.done.usage.input_tokens + k);
    const fresh = await freshAnswers(gw, INSTRUCTIONS, [Q1, (s) => s.truncateLastAnswer(k), Q2]);
    expect(fresh.texts).toEqual([r1.text, r2.text]);
    expect(fresh.session.messages[2]).toEqual({ role: 'assistant', content: shown });
    await fresh.session.close();

    // an older item (not the latest answer) is cut by its text (text_end: weft's extension); the conversation renders again
    c.raw({ type: 'conversation.item.truncate', item_id: r1.itemId, content_index: 0, text_end: 3 });
    expect(await c.next()).toMatchObject({ type: 'conversation.item.truncated', text_end: 3 });
    const r3 = await c.ask(Q3, { max_output_tokens: 20 });
    const transcript = sessionOf(gw).messages.map((m) => m.content);
    expect(transcript).toEqual([INSTRUCTIONS, Q1, shown.slice(0, 3), Q2, r2.text, Q3, r3.text]);
    const ref = await replayPrompt(gw.scheduler!, gw.format!, sessionOf(gw).currentTurn!.prompt, {}, 20);
    expect(r3.text).toBe(ref.text);
    expect(sessionOf(gw).currentTurn!.prompt).toEqual(gw.format!.encode(sessionOf(gw).messages.slice(0, 6)));

    // errors: an unknown item, not an assistant item, beyond its text
    c.send({ type: 'conversation.item.truncate', item_id: 'nope', content_index: 0, audio_end_ms: 0 });
    expect(await c.next()).toMatchObject({ type: 'error', error: { code: 'WEFT_BAD_ARGUMENT', param: 'item_id' } });
    c.send({ type: 'conversation.item.truncate', item_id: r3.userItemId, content_index: 0, audio_end_ms: 0 });
    expect(await c.next()).toMatchObject({ type: 'error', error: { code: 'WEFT_BAD_ARGUMENT', param: 'item_id', message: expect.stringContaining('only assistant items') } });
    c.send({ type: 'conversation.item.truncate', item_id: r1.itemId, content_index: 0, audio_end_ms: 1000 });
    expect(await c.next()).toMatchObject({ type: 'error', error: { code: 'WEFT_BAD_ARGUMENT', param: 'text_end' } });
    c.close();
  });

  test('item delete and insertion: the KV is cut back to what still matches, and the answer is a fresh session’s', async () => {
    const c = await Rt.open(port);
    await c.next((e) => e.type === 'session.created');
    c.send({ type: 'session.update', session: { type: 'realtime', instructions: INSTRUCTIONS, max_output_tokens: 20 } });
    await c.next((e) => e.type === 'session.updated');
    const r1 = await c.ask(Q1);
    const r2 = await c.ask(Q2);
    // delete the first exchange: its question and its answer
    for (const id of [r1.userItemId, r1.itemId]) {
      c.send({ type: 'conversation.item.delete', item_id: id });
      expect(await c.next()).toMatchObject({ type: 'conversation.item.deleted', item_id: id });
    }
    c.send({ type: 'conversation.item.delete', item_id: r1.itemId, event_id: 'again' });
    expect(await c.next()).toMatchObject({ type: 'error', error: { code: 'WEFT_BAD_ARGUMENT', param: 'item_id', event_id: 'again' } });
    // a system item inserted at the start (root) and an assistant item prefilled after it
    c.send({ type: 'conversation.item.create', previous_item_id: 'root', item: { type: 'message', role: 'system', content: [{ type: 'input_text', text: 'And God said, Let there be light.' }] } });
    const sys = await c.next((e) => e.type === 'conversation.item.added');
    expect(sys.previous_item_id).toBeNull();
    await c.next((e) => e.type === 'conversation.item.done');
    const r3 = await c.ask(Q3);
    const s = sessionOf(gw);
    expect(s.messages.map((m) => m.content)).toEqual([INSTRUCTIONS, 'And God said, Let there be light.', Q2, r2.text, Q3, r3.text]);
    // the KV kept the longest prefix that still matches (the instructions), no more
    const cached = r3.done.usage.input_token_details.cached_tokens;
    const prefix = gw.format!.tokenizer.encode(gw.format!.render([{ role: 'system', content: INSTRUCTIONS }], false), { addSpecialTokens: false });
    expect(cached).toBeGreaterThanOrEqual(prefix.length - 1);
    expect(cached).toBeLessThan(r1.done.usage.input_tokens);
    // equals a fresh session given the same transcript as text
    const fresh = new Session(gw.scheduler!, { format: gw.format!, history: s.messages.slice(0, 4).map((m) => ({ ...m })), maxTokens: 20 });
    const t = fresh.send(Q3);
    for await (const _ of t);
    expect((await t.done).text).toBe(r3.text);
    await fresh.close();
    c.close();
  });

  test('audio events and bad frames: OpenAI-shaped errors with weft codes, and the session stays usable', async () => {
    const c = await Rt.open(port);
    await c.next((e) => e.type === 'session.created');
    const bad: [unknown, string, string | null][] = [
      ['not json', 'WEFT_BAD_FRAME', null],
      [Buffer.from('{"type":"response.create"}'), 'WEFT_BAD_FRAME', null],
      [{ type: 'input_audio_buffer.append', audio: 'AAAA', event_id: 'a1' }, 'WEFT_UNSUPPORTED', 'type'],
      [{ type: 'input_audio_buffer.commit' }, 'WEFT_UNSUPPORTED', 'type'],
      [{ type: 'output_audio_buffer.clear' }, 'WEFT_UNSUPPORTED', 'type'],
      [{ type: 'nope', event_id: 'u' }, 'WEFT_UNKNOWN_TYPE', 'type'],
      [{ event_id: 'x' }, 'WEFT_BAD_FRAME', 'type'],
      [{ type: 'session.update', session: { type: 'realtime', output_modalities: ['audio'] } }, 'WEFT_UNSUPPORTED', 'session.output_modalities'],
      [{ type: 'session.update', session: { type: 'realtime', temperature: 5 } }, 'WEFT_BAD_ARGUMENT', 'session.temperature'],
      [{ type: 'session.update', session: { type: 'realtime', tools: [{ type: 'function', name: 'f' }] } }, 'WEFT_UNSUPPORTED', 'session.tools'],
      [{ type: 'session.update', session: { type: 'realtime', colour: 'red' } }, 'WEFT_BAD_FRAME', 'session.colour'],
      [{ type: 'session.update', session: { type: 'transcription' } }, 'WEFT_UNSUPPORTED', 'session.type'],
      [{ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_audio', audio: 'AAAA' }] } }, 'WEFT_UNSUPPORTED', 'item.content[0].type'],
      [{ type: 'conversation.item.create', item: { type: 'function_call', name: 'f', arguments: '{}' } }, 'WEFT_BAD_FRAME', 'item.name'],
      [{ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: 'hi' } }, 'WEFT_BAD_FRAME', 'item.content'],
      [{ type: 'conversation.item.create', item: { type: 'message', role: 'tool', content: [] } }, 'WEFT_BAD_FRAME', 'item.role'],
      [{ type: 'conversation.item.create', previous_item_id: 'item_none', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'x' }] } }, 'WEFT_BAD_ARGUMENT', 'previous_item_id'],
      [{ type: 'response.create', response: { conversation: 'none' } }, 'WEFT_UNSUPPORTED', 'response.conversation'],
      [{ type: 'response.create', response: { instructions: 'Be brief.' } }, 'WEFT_UNSUPPORTED', 'response.instructions'],
      [{ type: 'response.create', response: { output_modalities: ['audio'] } }, 'WEFT_UNSUPPORTED', 'response.output_modalities'],
      [{ type: 'response.create', response: { max_output_tokens: 0 } }, 'WEFT_BAD_FRAME', 'response.max_output_tokens'],
      [{ type: 'response.create', extra: 1 }, 'WEFT_BAD_FRAME', 'extra'],
      [{ type: 'conversation.item.delete' }, 'WEFT_BAD_FRAME', 'item_id'],
      [{ type: 'response.create', event_id: 'x'.repeat(300) }, 'WEFT_BAD_FRAME', 'event_id'],
      [{ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'x'.repeat(70 << 10) }] } }, 'WEFT_FRAME_TOO_LARGE', null],
    ];
    for (const [frame, code, param] of bad) {
      c.raw(frame);
      const e = await c.next();
      const what = JSON.stringify(frame).slice(0, 100);
      expect(e, what).toMatchObject({ type: 'error', event_id: expect.stringMatching(/^event_/), error: { type: 'invalid_request_error', code, param, message: expect.any(String) } });
      const id = (frame as { event_id?: string }).event_id;
      expect(e.error.event_id, what).toBe(id !== undefined && id.length <= 256 ? id : null);
    }
    // the SDK reports error events through its 'error' emit, with OpenAI's fields
    expect(c.errors.find((x) => x.error?.code === 'WEFT_UNSUPPORTED')?.message).toMatch(/code=WEFT_UNSUPPORTED param=type/);
    const r = await c.ask(Q1, { max_output_tokens: 10, temperature: 0 } as Record<string, unknown>);
    expect(r.text.length).toBeGreaterThan(0);
    c.close();
  });

  test('context: exchanges the truncate policy drops are deleted items (never the message answered); truncation disabled refuses', async () => {
    const g = new Gateway({ transport, port: 0, tls: { certFile: tls.certFile, keyFile: tls.keyFile }, maxSessionTokens: 160 });
    g.attach(engine);
    const c = await Rt.open((await g.listen()).port);
    await c.next((e) => e.type === 'session.created');
    c.send({ type: 'session.update', session: { type: 'realtime', instructions: INSTRUCTIONS, max_output_tokens: 20 } });
    await c.next((e) => e.type === 'session.updated');
    const asked: { userItemId: string; itemId: string }[] = [];
    let deleted: Ev[] = [];
    for (let i = 0; i < 12 && deleted.length === 0; i++) {
      const r = await c.ask(`${Q1} And where was Moses when the LORD spake unto him, number ${i}?`);
      deleted = r.events.filter((e) => e.type === 'conversation.item.deleted');
      if (deleted.length > 0) {
        // dropped before the response starts: the oldest exchanges, in order
        expect(r.events.findIndex((e) => e.type === 'conversation.item.deleted')).toBeLessThan(r.events.findIndex((e) => e.type === 'response.created'));
        const oldest = asked.flatMap((a) => [a.userItemId, a.itemId]).slice(0, deleted.length);
        expect(deleted.map((e) => e.item_id)).toEqual(oldest);
        expect(r.done.status).not.toBe('failed');
        const s = sessionOf(g);
        expect(s.messages[0]!.content).toBe(INSTRUCTIONS);
        expect(s.messages.at(-2)!.content).toContain(`number ${i}?`);
      }
      asked.push(r);
    }
    expect(deleted.length).toBeGreaterThan(0);
    c.send({ type: 'conversation.item.retrieve', item_id: deleted[0]!.item_id });
    expect(await c.next()).toMatchObject({ type: 'error', error: { code: 'WEFT_BAD_ARGUMENT', param: 'item_id' } });
    // truncation disabled: a conversation that no longer fits is refused, and no response starts
    c.send({ type: 'session.update', session: { type: 'realtime', truncation: 'disabled' } });
    expect(await c.next()).toMatchObject({ type: 'session.updated', session: { truncation: 'disabled' } });
    let refused: Ev | null = null;
    for (let i = 0; i < 12 && !refused; i++) {
      c.send({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: `${Q2} ${'And it came to pass. '.repeat(3)}` }] } });
      await c.next((e) => e.type === 'conversation.item.done');
      c.send({ type: 'response.create', event_id: `r${i}` });
      const e = await c.next((x) => x.type === 'error' || x.type === 'response.done');
      if (e.type === 'error') refused = e;
    }
    expect(refused).toMatchObject({ error: { code: 'WEFT_CONTEXT_OVERFLOW', event_id: expect.stringMatching(/^r/) } });
    c.close();
    await g.close();
  });

  test('drain: an error event says so, new responses are refused with WEFT_DRAINING, a running one ends (failed, WEFT_DRAINING), the socket closes with 1001', async () => {
    const g = new Gateway({ transport, port: 0, tls: { certFile: tls.certFile, keyFile: tls.keyFile }, drainTimeoutMs: 300, sessionSampling: { ignoreEos: true } });
    g.attach(engine);
    // no end-of-turn stop string: the answer runs to max_output_tokens
    g.format = Object.assign(Object.create(Object.getPrototypeOf(g.format)), g.format, { stopStrings: [] });
    const c = await Rt.open((await g.listen()).port);
    await c.next((e) => e.type === 'session.created');
    c.send({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: 'Tell me of Moses.' }] } });
    c.send({ type: 'response.create', response: { max_output_tokens: 500 } });
    await c.next((e) => e.type === 'response.output_text.delta');
    const drained = g.drain();
    expect(await c.next((e) => e.type === 'error')).toMatchObject({ error: { type: 'server_error', code: 'WEFT_DRAINING', retry_after_ms: 300 } });
    c.send({ type: 'response.create', event_id: 'late' });
    expect(await c.next((e) => e.type === 'error')).toMatchObject({ error: { code: 'WEFT_DRAINING', event_id: 'late' } });
    const done = (await c.next((e) => e.type === 'response.done')).response;
    expect(done).toMatchObject({ status: 'failed', status_details: { type: 'failed', error: { code: 'WEFT_DRAINING' } } });
    expect(done.usage.output_tokens).toBeGreaterThan(0);
    expect(done.usage.output_tokens).toBeLessThan(500);
    await drained;
    await c.next(() => false).catch(() => undefined);
    expect(c.closeCode).toBe(1001);
  });

  test('an unknown model is refused with WEFT_MODEL_NOT_FOUND; the gateway counts realtime connections and sessions', async () => {
    const c = await Rt.open(port, 'sk-unused', 'gpt-realtime');
    expect(await c.next()).toMatchObject({ type: 'error', error: { code: 'WEFT_MODEL_NOT_FOUND' } });
    await c.next().catch(() => undefined);
    expect(c.closeCode).toBe(1008);
    const before = gw.sessions.size;
    const d = await Rt.open(port);
    await d.next((e) => e.type === 'session.created');
    expect(gw.sessions.size).toBe(before + 1);
    d.close();
    const end = Date.now() + 5000;
    while ((gw.sessions.size > before || gw.realtime.size > 0) && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    expect(gw.sessions.size).toBe(before);
    expect(gw.realtime.size).toBe(0);
  });
});

describe.each(['ws', 'uws'] as const)('realtime with API keys over %s', (transport) => {
  let gw: Gateway;
  let port: number;
  const keys = () =>
    new ApiKeys({
      keys: [
        { name: 'alice', key: 'sk-alice-12345', max_concurrent: 1 },
        { name: 'bob', key: 'sk-bob-12345', max_tokens: 5 },
        { name: 'carol', key: 'sk-carol-12345', tokens_per_minute: 60 },
      ],
    });

  beforeAll(async () => {
    gw = new Gateway({ transport, port: 0, tls: { certFile: tls.certFile, keyFile: tls.keyFile }, apiKeys: keys() });
    gw.attach(engine);
    port = (await gw.listen()).port;
  });
  afterAll(() => gw.close());

  /** The HTTP status of a refused handshake (ws's unexpected-response). */
  const refusedWith = (ws: WebSocket) =>
    new Promise<number>((res, rej) => {
      ws.once('unexpected-response', (req, r) => {
        res(r.statusCode ?? 0);
        req.destroy();
      });
      ws.once('open', () => rej(new Error('the handshake was accepted')));
      ws.on('error', () => undefined);
    });

  test('no key or a wrong key: 401 at the handshake; a key over max_concurrent: 429', async () => {
    const url = `wss://127.0.0.1:${port}/v1/realtime?model=default`;
    expect(await refusedWith(new WebSocket(url, { ca: tls.ca }))).toBe(401);
    const wrong = new OpenAIRealtimeWS({ model: 'default', options: { ca: tls.ca } }, new OpenAI({ apiKey: 'sk-wrong-12345', baseURL: `https://127.0.0.1:${port}/v1` }));
    const errors: string[] = [];
    wrong.on('error', (e) => errors.push(e.message));
    expect(await refusedWith(wrong.socket)).toBe(401);

    const a = await Rt.open(port, 'sk-alice-12345');
    const created = await a.next();
    expect(created).toMatchObject({ type: 'session.created', budget: { key: 'alice', max_concurrent: 1, concurrent: 1 } });
    expect(JSON.stringify(created)).not.toContain('sk-alice');
    const second = new OpenAIRealtimeWS({ model: 'default', options: { ca: tls.ca } }, new OpenAI({ apiKey: 'sk-alice-12345', baseURL: `https://127.0.0.1:${port}/v1` }));
    second.on('error', () => undefined);
    expect(await refusedWith(second.socket)).toBe(429);
    a.close();
    // the lease is given back at close
    const end = Date.now() + 5000;
    while (gw.keys!.tenants[0]!.active > 0 && Date.now() < end) await new Promise((r) => setTimeout(r, 20));
    expect(gw.keys!.tenants[0]!.active).toBe(0);
  });

  test("a browser's key in the subprotocol (realtime offered first) is accepted and the server answers realtime", async () => {
    const ws = new WebSocket(`wss://127.0.0.1:${port}/v1/realtime?model=default`, ['realtime', 'openai-insecure-api-key.sk-bob-12345'], { ca: tls.ca });
    const first = await new Promise<Ev>((res, rej) => {
      ws.once('message', (d) => res(JSON.parse(d.toString())));
      ws.once('error', rej);
    });
    expect(ws.protocol).toBe('realtime');
    expect(first).toMatchObject({ type: 'session.created', budget: { key: 'bob', max_tokens: 5 } });
    ws.close();
  });

  test("the key's max_tokens caps a response; a spent budget ends one as incomplete with WEFT_KEY_BUDGET, and the next is refused", async () => {
    const b = await Rt.open(port, 'sk-bob-12345');
    await b.next((e) => e.type === 'session.created');
    const capped = await b.ask('Tell me of Moses.', { max_output_tokens: 100 });
    expect(capped.done.usage.output_tokens).toBeLessThanOrEqual(5);
    b.close();

    const c = await Rt.open(port, 'sk-carol-12345');
    expect(await c.next()).toMatchObject({ type: 'session.created', budget: { key: 'carol', tokens_per_minute: 60, tokens_remaining: 60 } });
    // the prompt (about 20 tokens) and the answer's tokens are charged: the budget runs out mid-answer
    c.send({ type: 'session.update', session: { type: 'realtime', instructions: INSTRUCTIONS } });
    await c.next((e) => e.type === 'session.updated');
    const r = await c.ask('Tell me of Moses, and of Aaron his brother, and of all the land of Egypt.', { max_output_tokens: 200 });
    const input = r.done.usage.input_tokens;
    expect(input).toBeLessThan(50);
    expect(r.done).toMatchObject({ status: 'incomplete', status_details: { type: 'incomplete', reason: 'max_output_tokens', error: { code: 'WEFT_KEY_BUDGET' } } });
    expect(r.done.usage.output_tokens).toBeLessThanOrEqual(60 - input + 2);
    // no budget left for the next prompt: an error, and no response
    c.send({ type: 'conversation.item.create', item: { type: 'message', role: 'user', content: [{ type: 'input_text', text: Q2 }] } });
    await c.next((e) => e.type === 'conversation.item.done');
    c.send({ type: 'response.create', event_id: 'again' });
    const e = await c.next();
    expect(e).toMatchObject({ type: 'error', error: { type: 'rate_limit_error', code: 'WEFT_KEY_BUDGET', event_id: 'again', retry_after_ms: expect.any(Number) } });
    c.send({ type: 'session.update', session: { type: 'realtime' } });
    const upd = await c.next();
    expect(upd.type).toBe('session.updated');
    expect(upd.budget.tokens_remaining).toBeLessThan(5);
    c.close();
  });
});

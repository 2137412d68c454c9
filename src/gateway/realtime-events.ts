/**
 * The Realtime front's client events (docs/realtime.md): one frame in, a checked event out, or a
 * RealtimeError with weft's code and OpenAI's `param`. Text only: the audio events are answered
 * with WEFT_UNSUPPORTED. A field OpenAI defines that weft does not act on is ignored where
 * ignoring it changes nothing (audio settings, tracing), refused where it would (tools, audio
 * output, out-of-band responses); a field OpenAI does not define is WEFT_BAD_FRAME. The sampling
 * extensions are checked as the HTTP front checks them.
 */
import { WeftError, type WeftErrorCode } from '../errors.js';
import type { SamplingOptions } from '../engine/engine.js';
import type { ChatMessage } from '../session/chat-format.js';
import { chatParams, ParamError } from './openai-schema.js';
import { MAX_EVENT_ID, structureError } from './protocol.js';

/** A refused client event: weft's code, the field it is about, the client's event_id. */
export class RealtimeError extends ParamError {
  constructor(
    code: WeftErrorCode,
    message: string,
    param: string | null = null,
    readonly eventId?: string,
  ) {
    super(code, message, param);
  }
}

/** A message item's content part as the client gave it (echoed back in the item). */
export interface Part {
  type: 'input_text' | 'output_text';
  text: string;
}

/** A message item to add: its role and text, the client's id if any, its parts. */
export interface NewItem {
  id?: string;
  message: ChatMessage;
  parts: Part[];
}

/** Response settings: the session's (session.update) or one response's (response.create). */
export interface Settings {
  /** An integer, or 'inf' (the context's room). */
  maxOutputTokens?: number | 'inf';
  sampling?: SamplingOptions;
  stop?: string[];
}

export interface SessionPatch extends Settings {
  instructions?: string;
  contextPolicy?: 'truncate' | 'reject';
}

export interface ResponseParams extends Settings {
  metadata?: Record<string, string>;
}

export type RealtimeEvent = { event_id?: string } & (
  | { type: 'session.update'; session: SessionPatch }
  | { type: 'conversation.item.create'; item: NewItem; previous_item_id?: string }
  | { type: 'conversation.item.delete' | 'conversation.item.retrieve'; item_id: string }
  | { type: 'conversation.item.truncate'; item_id: string; content_index: number; audio_end_ms?: number; text_end: number }
  | { type: 'response.create'; response: ResponseParams }
  | { type: 'response.cancel'; response_id?: string }
);

/** Audio events of the GA set: a text-only front answers them with WEFT_UNSUPPORTED. */
const AUDIO_EVENTS = new Set(['input_audio_buffer.append', 'input_audio_buffer.clear', 'input_audio_buffer.commit', 'output_audio_buffer.clear', 'transcription_session.update']);

/** The fields of each event (besides type and event_id). */
const FIELDS: Record<RealtimeEvent['type'], readonly string[]> = {
  'session.update': ['session'],
  'conversation.item.create': ['item', 'previous_item_id'],
  'conversation.item.delete': ['item_id'],
  'conversation.item.retrieve': ['item_id'],
  'conversation.item.truncate': ['item_id', 'content_index', 'audio_end_ms', 'text_end'],
  'response.create': ['response'],
  'response.cancel': ['response_id'],
};

/** weft's sampling extensions, in session.update and response.create (checked as the HTTP front checks them). */
const SAMPLING_FIELDS = ['temperature', 'top_p', 'top_k', 'min_p', 'repetition_penalty', 'presence_penalty', 'frequency_penalty', 'seed', 'stop'];
/** OpenAI's fields weft takes without acting on them (they change nothing for text). */
const IGNORED_SESSION_FIELDS = ['audio', 'include', 'tracing', 'parallel_tool_calls', 'reasoning', 'tool_choice', 'model', 'type'];
const SESSION_FIELDS = ['instructions', 'output_modalities', 'max_output_tokens', 'truncation', 'tools', 'prompt', ...IGNORED_SESSION_FIELDS, ...SAMPLING_FIELDS];
const RESPONSE_FIELDS = ['conversation', 'input', 'instructions', 'output_modalities', 'max_output_tokens', 'metadata', 'tools', 'tool_choice', 'audio', 'prompt', 'parallel_tool_calls', 'reasoning', ...SAMPLING_FIELDS];
const ITEM_FIELDS = ['id', 'object', 'type', 'role', 'status', 'content'];

/** Longest item id a client may give. */
export const MAX_ITEM_ID = 64;

type Obj = Record<string, unknown>;
const isObject = (v: unknown): v is Obj => typeof v === 'object' && v !== null && !Array.isArray(v);
const has = (o: object, k: string) => Object.prototype.hasOwnProperty.call(o, k);
const quote = (k: string) => JSON.stringify(k.length > 64 ? k.slice(0, 64) + '…' : k);

/** Parses one client frame (`maxFrameBytes`: the gateway's limit). Throws nothing: a refused frame is a RealtimeError. */
export function parseRealtimeFrame(data: Buffer | string, isBinary: boolean, maxFrameBytes: number): RealtimeEvent | RealtimeError {
  const size = typeof data === 'string' ? Buffer.byteLength(data) : data.length;
  if (size > maxFrameBytes) return new RealtimeError('WEFT_FRAME_TOO_LARGE', `the frame has ${size} bytes; the limit is ${maxFrameBytes}`);
  if (isBinary) return new RealtimeError('WEFT_BAD_FRAME', 'binary frames are not accepted: send JSON text frames');
  const shape = structureError(typeof data === 'string' ? Buffer.from(data) : data);
  if (shape) return new RealtimeError('WEFT_BAD_FRAME', shape);
  let msg: unknown;
  try {
    msg = JSON.parse(data.toString());
  } catch {
    return new RealtimeError('WEFT_BAD_FRAME', 'the frame is not valid JSON');
  }
  if (!isObject(msg)) return new RealtimeError('WEFT_BAD_FRAME', 'a frame must be a JSON object');
  const id = msg.event_id;
  if (id !== undefined && (typeof id !== 'string' || id.length > MAX_EVENT_ID)) return new RealtimeError('WEFT_BAD_FRAME', `event_id must be a string of at most ${MAX_EVENT_ID} characters`, 'event_id');
  try {
    const ev = parseEvent(msg);
    if (id !== undefined) ev.event_id = id as string;
    return ev;
  } catch (err) {
    if (!(err instanceof ParamError)) throw err;
    return new RealtimeError(err.code, err.message, err.param, id as string | undefined);
  }
}

function frameError(message: string, param: string | null): RealtimeError {
  return new RealtimeError('WEFT_BAD_FRAME', message, param);
}

function unsupported(message: string, param: string | null): RealtimeError {
  return new RealtimeError('WEFT_UNSUPPORTED', message, param);
}

/** The first key of `o` not among `allowed`: WEFT_BAD_FRAME naming it. */
function checkFields(o: Obj, allowed: readonly string[], where: string): void {
  for (const k of Object.keys(o)) if (!allowed.includes(k)) throw frameError(`${where || 'the event'}: unknown field ${quote(k)}`, where ? `${where}.${k}` : k);
}

function str(o: Obj, k: string, where: string, max = Infinity): string {
  const v = o[k];
  if (typeof v !== 'string' || v.length > max) throw frameError(`${where}${k} must be a string${max < Infinity ? ` of at most ${max} characters` : ''}`, where + k);
  return v;
}

function count(o: Obj, k: string, where: string): number {
  const v = o[k];
  if (typeof v !== 'number' || !Number.isInteger(v) || v < 0) throw frameError(`${where}${k} must be an integer >= 0`, where + k);
  return v;
}

function parseEvent(msg: Obj): RealtimeEvent {
  const type = msg.type;
  if (typeof type !== 'string') throw frameError('a frame needs a type (a string)', 'type');
  if (AUDIO_EVENTS.has(type)) throw unsupported(`${type}: weft's Realtime front is text only (no audio input or output); send conversation.item.create with input_text parts`, 'type');
  if (!has(FIELDS, type)) throw new RealtimeError('WEFT_UNKNOWN_TYPE', `unknown event type ${quote(type)}`, 'type');
  const t = type as RealtimeEvent['type'];
  checkFields(msg, ['type', 'event_id', ...FIELDS[t]], '');
  switch (t) {
    case 'session.update':
      if (!isObject(msg.session)) throw frameError('session.update needs a session object', 'session');
      return { type: t, session: sessionPatch(msg.session) };
    case 'conversation.item.create': {
      if (!isObject(msg.item)) throw frameError('conversation.item.create needs an item object', 'item');
      const ev = { type: t, item: newItem(msg.item) };
      return has(msg, 'previous_item_id') && msg.previous_item_id !== null ? { ...ev, previous_item_id: str(msg, 'previous_item_id', '', MAX_ITEM_ID) } : ev;
    }
    case 'conversation.item.delete':
    case 'conversation.item.retrieve':
      return { type: t, item_id: str(msg, 'item_id', '', MAX_ITEM_ID) };
    case 'conversation.item.truncate': {
      // text has no audio: the position is the characters of the item's text the client showed
      // (`text_end`, a weft extension; without it `audio_end_ms` is read as that count)
      if (!has(msg, 'text_end') && !has(msg, 'audio_end_ms')) throw frameError('conversation.item.truncate needs text_end (characters shown) or audio_end_ms', 'text_end');
      const audioEnd = has(msg, 'audio_end_ms') ? count(msg, 'audio_end_ms', '') : undefined;
      const textEnd = has(msg, 'text_end') ? count(msg, 'text_end', '') : audioEnd!;
      return { type: t, item_id: str(msg, 'item_id', '', MAX_ITEM_ID), content_index: count(msg, 'content_index', ''), text_end: textEnd, ...(audioEnd === undefined ? {} : { audio_end_ms: audioEnd }) };
    }
    case 'response.create':
      if (msg.response !== undefined && !isObject(msg.response)) throw frameError('response must be an object', 'response');
      return { type: t, response: responseParams((msg.response as Obj | undefined) ?? {}) };
    case 'response.cancel':
      return msg.response_id === undefined ? { type: t } : { type: t, response_id: str(msg, 'response_id', '', MAX_EVENT_ID) };
  }
}

/** The settings both session.update and response.create take: output modalities, max_output_tokens, tools, prompt, sampling. */
function settings(o: Obj, where: string): Settings {
  const out: Settings = {};
  const mods = o.output_modalities;
  if (mods !== undefined && (!Array.isArray(mods) || mods.length !== 1 || mods[0] !== 'text')) {
    if (Array.isArray(mods) && mods.every((m) => m === 'text' || m === 'audio')) throw unsupported(`weft's Realtime front generates text only: ${where}output_modalities must be ["text"]`, `${where}output_modalities`);
    throw frameError(`${where}output_modalities must be ["text"]`, `${where}output_modalities`);
  }
  const max = o.max_output_tokens;
  if (max !== undefined) {
    if (max !== 'inf' && (typeof max !== 'number' || !Number.isInteger(max) || max < 1)) throw frameError(`${where}max_output_tokens must be an integer >= 1 or "inf"`, `${where}max_output_tokens`);
    out.maxOutputTokens = max as number | 'inf';
  }
  if (o.tools !== undefined && (!Array.isArray(o.tools) || o.tools.length > 0)) throw unsupported('weft does not call tools: tools must be empty', `${where}tools`);
  if (o.prompt !== undefined && o.prompt !== null) throw unsupported('prompt templates are not supported: send instructions', `${where}prompt`);
  const picked = SAMPLING_FIELDS.filter((k) => o[k] !== undefined);
  if (picked.length > 0) {
    try {
      const p = chatParams({ model: '-', messages: [{ role: 'user', content: '' }], ...Object.fromEntries(picked.map((k) => [k, o[k]])) });
      out.sampling = p.sampling;
      if (picked.includes('stop')) out.stop = p.stop;
    } catch (err) {
      const e = err as ParamError;
      throw new RealtimeError(e.code, e.message.replace(e.param ?? '\0', `${where}${e.param}`), `${where}${e.param}`);
    }
  }
  return out;
}

function sessionPatch(s: Obj): SessionPatch {
  checkFields(s, SESSION_FIELDS, 'session');
  if (s.type !== undefined && s.type !== 'realtime') {
    if (s.type === 'transcription') throw unsupported('weft has no transcription sessions (no audio input)', 'session.type');
    throw frameError('session.type must be "realtime"', 'session.type');
  }
  const patch: SessionPatch = settings(s, 'session.');
  if (s.instructions !== undefined) patch.instructions = str(s, 'instructions', 'session.');
  const tr = s.truncation;
  if (tr !== undefined) {
    // weft's context policies: drop the oldest exchanges (`auto`, also for a retention ratio) or refuse (`disabled`)
    if (tr === 'auto' || (isObject(tr) && tr.type === 'retention_ratio')) patch.contextPolicy = 'truncate';
    else if (tr === 'disabled') patch.contextPolicy = 'reject';
    else throw frameError('session.truncation must be "auto", "disabled" or a retention_ratio object', 'session.truncation');
  }
  return patch;
}

function responseParams(r: Obj): ResponseParams {
  checkFields(r, RESPONSE_FIELDS, 'response');
  if (r.conversation !== undefined && r.conversation !== 'auto') throw unsupported('out-of-band responses are not supported: response.conversation must be "auto"', 'response.conversation');
  if (r.input !== undefined) throw unsupported('response.input is not supported: a response answers the conversation (add items with conversation.item.create)', 'response.input');
  if (r.instructions !== undefined) throw unsupported('per-response instructions are not supported (they would change the cached prefix): set them with session.update', 'response.instructions');
  const params: ResponseParams = settings(r, 'response.');
  const md = r.metadata;
  if (md !== undefined && md !== null) {
    if (!isObject(md) || Object.keys(md).length > 16 || Object.entries(md).some(([k, v]) => k.length > 64 || typeof v !== 'string' || v.length > 512)) {
      throw frameError('response.metadata must be an object of at most 16 strings (keys of at most 64 characters, values of at most 512)', 'response.metadata');
    }
    params.metadata = md as Record<string, string>;
  }
  return params;
}

/** A message item of conversation.item.create: a system or user message of input_text parts, or an assistant message of output_text parts. */
function newItem(item: Obj): NewItem {
  checkFields(item, ITEM_FIELDS, 'item');
  const type = item.type ?? 'message';
  if (type !== 'message') {
    if (typeof type === 'string') throw unsupported(`items of type ${quote(type)} are not supported (weft does not call tools): only "message"`, 'item.type');
    throw frameError('item.type must be "message"', 'item.type');
  }
  const role = item.role;
  if (role !== 'user' && role !== 'system' && role !== 'assistant') throw frameError('item.role must be "user", "system" or "assistant"', 'item.role');
  if (!Array.isArray(item.content)) throw frameError('item.content must be an array of content parts', 'item.content');
  const want = role === 'assistant' ? 'output_text' : 'input_text';
  const parts = item.content.map((p: unknown, j): Part => {
    const where = `item.content[${j}]`;
    if (!isObject(p)) throw frameError(`${where} must be a content part object`, where);
    checkFields(p, ['type', 'text', 'audio', 'transcript', 'image_url', 'detail'], where);
    // `text` is the beta name of an assistant's output_text part
    const t = p.type === 'text' && role === 'assistant' ? 'output_text' : p.type;
    if (t !== want) {
      if (typeof t === 'string' && /audio|image/.test(t)) throw unsupported(`${where}: content parts of type ${quote(t)} are not supported (weft's Realtime front is text only)`, `${where}.type`);
      throw frameError(`${where}.type must be "${want}" for a ${role} message`, `${where}.type`);
    }
    return { type: want, text: str(p, 'text', `${where}.`) };
  });
  const out: NewItem = { message: { role, content: parts.map((p) => p.text).join('') }, parts };
  if (item.id !== undefined) out.id = str(item, 'id', 'item.', MAX_ITEM_ID);
  return out;
}

/** Characters as weft counts them in truncation (Unicode code points: Python's len(), JS's [...s].length). */
export function numChars(text: string): number {
  let n = 0;
  for (const _ of text) n++;
  return n;
}

/** The first `n` characters (code points) of `text`. */
export function firstChars(text: string, n: number): string {
  let end = 0;
  for (const c of text) {
    if (n-- <= 0) break;
    end += c.length;
  }
  return text.slice(0, end);
}

/** A WeftError as a RealtimeError (param and event_id kept when it is one). */
export function asRealtimeError(e: WeftError, eventId?: string): RealtimeError {
  if (e instanceof RealtimeError) return e.eventId !== undefined || eventId === undefined ? e : new RealtimeError(e.code, e.message, e.param, eventId);
  return new RealtimeError(e.code, e.message, e instanceof ParamError ? e.param : null, eventId);
}

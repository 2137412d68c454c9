/**
 * What docs/protocol.md allows in a client frame: the types, the fields of each (a frame has
 * exactly these, on every object in it), the sampling fields and their kinds, the structure limits.
 */

/** Each client event's fields, `type` and `event_id` included. */
export const FRAME_FIELDS = new Map<string, readonly string[]>([
  ['session.update', ['type', 'event_id', 'session']],
  ['message.create', ['type', 'event_id', 'content', 'commit', 'sampling']],
  ['input.append', ['type', 'event_id', 'text']],
  ['input.clear', ['type', 'event_id']],
  ['response.cancel', ['type', 'event_id', 'truncate_at_seq']],
  ['response.truncate', ['type', 'event_id', 'response_id', 'seq']],
  ['session.resume', ['type', 'event_id', 'response_id', 'last_seq']],
  ['session.close', ['type', 'event_id']],
]);
export const CLIENT_TYPES: readonly string[] = [...FRAME_FIELDS.keys()];

/** The fields of session.update's `session`. */
export const SESSION_FIELDS = ['system', 'sampling', 'context_policy', 'progress', 'rotate_resume_token'];

/** The fields of a `sampling` object and what each holds. */
export const SAMPLING_KINDS = new Map<string, 'number' | 'integer' | 'stop' | 'token-ids' | 'boolean'>([
  ['temperature', 'number'],
  ['top_p', 'number'],
  ['top_k', 'integer'],
  ['min_p', 'number'],
  ['repetition_penalty', 'number'],
  ['presence_penalty', 'number'],
  ['frequency_penalty', 'number'],
  ['seed', 'integer'],
  ['max_tokens', 'integer'],
  ['stop', 'stop'],
  ['stop_token_ids', 'token-ids'],
  ['logprobs', 'boolean'],
  ['top_logprobs', 'integer'],
]);
/** Most alternatives per delta (`top_logprobs`). */
export const MAX_TOP_LOGPROBS = 20;
/** The engine takes token ids as int32: a larger stop id is WEFT_BAD_ARGUMENT (a smaller one outside the vocabulary WEFT_TOKEN_OUT_OF_RANGE). */
export const MAX_TOKEN_ID = 2147483647;

/** Names of Object.prototype (and `then`): never fields, wherever they appear. */
export const PROTO_KEYS = ['__proto__', 'constructor', 'prototype', 'hasOwnProperty', 'valueOf', 'toString', 'toJSON', 'isPrototypeOf', 'propertyIsEnumerable', 'toLocaleString', '__defineGetter__', '__lookupGetter__', 'then'];

/** Deepest nesting and most values (`,` `:` and brackets outside strings) of a frame (docs/protocol.md, Size). */
export const MAX_FRAME_DEPTH = 8;
export const MAX_FRAME_VALUES = 256;
/** Most characters in one stop string, and most stop strings or stop token ids (docs/protocol.md, Sampling). */
export const MAX_STOP_CHARS = 1024;
export const MAX_STOP_STRINGS = 16;
/** Most characters in an event_id (and a response_id). */
export const MAX_EVENT_ID = 256;

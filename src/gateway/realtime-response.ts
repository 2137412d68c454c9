/**
 * One response of the Realtime front as OpenAI shapes it (the `realtime.response` object, its
 * status and usage), from weft's turn: how it ended (finish reason, a client's cancel, a spent key
 * budget, a shutdown) and what it used.
 */
import type * as RT from 'openai/resources/realtime/realtime';
import { WeftError, toWeftError } from '../errors.js';
import type { Turn, TurnDone } from '../session/session.js';
import { openaiError } from './openai-shapes.js';

/** One response: being prepared (its prompt tokenized: turn null), running, or ended. */
export interface Response {
  id: string;
  itemId: string;
  /** The response.create's event_id (an error before the response starts names it). */
  eventId: string | undefined;
  abort: AbortController;
  turn: Turn | null;
  maxOutputTokens: number | 'inf';
  metadata: Record<string, string> | null;
  /** The text streamed so far, its characters, and the characters after each generated token (truncation maps characters to tokens). */
  text: string;
  numChars: number;
  ends: number[];
  cancelled: boolean;
  shutdown: boolean;
  budgetSpent: boolean;
  lastDeltaAt: number;
  /** A delta event's JSON up to its text. */
  deltaPrefix: string;
}

export type Status = 'completed' | 'cancelled' | 'incomplete' | 'failed';

let nextResponseId = 1;

export function newResponse(itemId: string, eventId: string | undefined, maxOutputTokens: number | 'inf', metadata: Record<string, string> | null): Response {
  const id = `resp_${nextResponseId++}`;
  const deltaPrefix = `{"type":"response.output_text.delta","response_id":${JSON.stringify(id)},"item_id":${JSON.stringify(itemId)},"output_index":0,"content_index":0,"delta":`;
  return {
    id, itemId, eventId, abort: new AbortController(), turn: null, maxOutputTokens, metadata,
    text: '', numChars: 0, ends: [], cancelled: false, shutdown: false, budgetSpent: false, lastDeltaAt: 0, deltaPrefix,
  };
}

/**
 * A response's status and status_details from how its turn ended (`d`; null: it could not be
 * settled, `err`), and the error that failed it, if any.
 */
export function outcome(r: Response, d: TurnDone | null, err: unknown): { status: Status; details: RT.RealtimeResponseStatus | null; error?: WeftError } {
  const failed = (e: WeftError) => ({ status: 'failed' as const, details: { type: 'failed' as const, error: { type: openaiError(e).error.type, code: e.code } }, error: e });
  if (!d) return failed(toWeftError(err));
  if (d.finishReason === 'error' || d.error) return failed(new WeftError(d.error?.code ?? 'WEFT_INTERNAL', d.error?.message ?? 'the response failed'));
  if (d.finishReason === 'cancelled') {
    // a spent budget ends the answer as max_output_tokens does, naming the key's budget
    if (r.budgetSpent) return { status: 'incomplete', details: { type: 'incomplete', reason: 'max_output_tokens', error: { type: 'rate_limit_error', code: 'WEFT_KEY_BUDGET' } } };
    if (r.shutdown) return failed(new WeftError('WEFT_DRAINING', 'the server shut down before the response was complete'));
    return { status: 'cancelled', details: { type: 'cancelled', reason: 'client_cancelled' } };
  }
  if (d.finishReason === 'length') return { status: 'incomplete', details: { type: 'incomplete', reason: 'max_output_tokens' } };
  return { status: 'completed', details: null };
}

/** What a response used: from its done event, or as far as its request got. */
export function usage(r: Response, d: TurnDone | null): RT.RealtimeResponseUsage {
  const q = r.turn?.request;
  const input = d ? d.usage.prompt_tokens : (r.turn?.prompt.length ?? 0);
  const cached = d ? d.usage.cached_tokens : (q?.cachedAtStart ?? 0);
  const output = d ? d.usage.completion_tokens : (q?.generated.length ?? 0);
  return {
    total_tokens: input + output,
    input_tokens: input,
    output_tokens: output,
    input_token_details: { text_tokens: input, audio_tokens: 0, image_tokens: 0, cached_tokens: cached, cached_tokens_details: { text_tokens: cached, audio_tokens: 0, image_tokens: 0 } },
    output_token_details: { text_tokens: output, audio_tokens: 0 },
  };
}

/** The `realtime.response` object (`status_details` and `usage` are null until it ends, as OpenAI sends them). */
export function responseJson(r: Response, conversationId: string, status: Status | 'in_progress', details: RT.RealtimeResponseStatus | null, output: RT.ConversationItem[], u: RT.RealtimeResponseUsage | null): RT.RealtimeResponse {
  return {
    object: 'realtime.response',
    id: r.id,
    status,
    // the SDK's types have no null for these two
    status_details: details as RT.RealtimeResponseStatus,
    output,
    conversation_id: conversationId,
    output_modalities: ['text'],
    max_output_tokens: r.maxOutputTokens,
    metadata: r.metadata,
    usage: u as RT.RealtimeResponseUsage,
  };
}

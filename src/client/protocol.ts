/**
 * Protocol v1.1's events (docs/protocol.md) as types: the one file that both the server
 * (src/gateway/) and the SDK (src/client/) import, so they cannot drift. Types only: no code,
 * no imports (it is loaded by browsers).
 */

/** Sampling as it travels on the wire (snake case). */
export interface WireSampling {
  temperature?: number;
  top_p?: number;
  top_k?: number;
  min_p?: number;
  repetition_penalty?: number;
  presence_penalty?: number;
  frequency_penalty?: number;
  seed?: number;
  max_tokens?: number;
  stop?: string[];
  /** Extra token ids that end the answer (the model's EOS always does). */
  stop_token_ids?: number[];
  /** Per delta: the sampled token's id and log-probability (and `top_logprobs` alternatives). */
  logprobs?: boolean;
  top_logprobs?: number;
}

/** The fields of `session.update`'s session object. */
export interface SessionUpdate {
  system?: string;
  sampling?: WireSampling;
  /** What a message that does not fit the context does: drop the oldest turns (`truncate`) or `reject`. */
  context_policy?: 'truncate' | 'reject';
  /** A new resume token replaces the session's (the old one stops working). */
  rotate_resume_token?: boolean;
  /** response.progress events while a response runs. */
  progress?: boolean;
}

export type ClientEvent =
  | { type: 'session.update'; event_id?: string; session: SessionUpdate }
  | { type: 'message.create'; event_id?: string; content: string; commit?: boolean; sampling?: WireSampling }
  | { type: 'input.append'; event_id?: string; text: string }
  | { type: 'input.clear'; event_id?: string }
  | { type: 'response.cancel'; event_id?: string; truncate_at_seq?: number }
  | { type: 'response.truncate'; event_id?: string; response_id?: string; seq: number }
  | { type: 'session.resume'; event_id?: string; response_id?: string; last_seq: number }
  | { type: 'session.close'; event_id?: string };

export interface SessionInfo {
  id: string;
  model: string;
  limits: { max_context: number; max_frame_bytes: number; default_max_tokens: number };
}

/** The API key's limits and what it uses now, in session.created of a server run with --api-keys (null: no limit). */
export interface BudgetInfo {
  /** The key's name (never the key). */
  key: string;
  max_concurrent: number | null;
  /** Sessions and HTTP requests the key holds now, this one included. */
  concurrent: number;
  tokens_per_minute: number | null;
  tokens_remaining: number | null;
  /** Cap on any one answer's max_tokens. */
  max_tokens: number | null;
  /** The key's share of decode slots under load. */
  weight: number;
}

export interface Usage {
  prompt_tokens: number;
  cached_tokens: number;
  completion_tokens: number;
}

export interface Timing {
  queue_ms: number;
  ttft_ms: number;
  duration_ms: number;
}

/** `budget`: the API key's tokens per minute ran out during the answer (with `error` WEFT_KEY_BUDGET). */
export type FinishReason = 'stop' | 'length' | 'cancelled' | 'shutdown' | 'budget' | 'error';

export interface ResponseDoneEvent {
  type: 'response.done';
  response_id: string;
  finish_reason: FinishReason;
  usage?: Usage;
  timing?: Timing;
  truncated_turns?: number;
  kv?: { state: 'resident' | 'parked' | 'dropped'; tokens: number };
  error?: { code: string; message: string };
  truncated_at_seq?: number;
  text?: string;
  event_id?: string;
}

export interface ResponseStatus {
  response_id: string;
  status: 'in_progress' | 'done';
  next_seq: number;
}

export type ServerEvent =
  | { type: 'session.created'; session: SessionInfo; resume_token: string | null; budget?: BudgetInfo }
  | { type: 'session.resumed'; session: SessionInfo; resume_token?: string; response: ResponseStatus | null; event_id?: string }
  | { type: 'session.updated'; session: { id: string; system: string | null; sampling: WireSampling; effective_sampling: WireSampling; context_policy: 'truncate' | 'reject'; progress: boolean; kv: { state: string; tokens: number } }; resume_token?: string; event_id?: string }
  | { type: 'response.created'; response_id: string; event_id?: string }
  | { type: 'response.delta'; response_id: string; seq: number; text: string; token?: number; logprob?: number; top_logprobs?: { token: number; text: string; logprob: number }[] }
  | ResponseDoneEvent
  | { type: 'response.progress'; response_id: string; state: 'queued' | 'prefilling' | 'generating' | 'paused'; position?: number; ahead?: number; done?: number; total?: number; tokens?: number; reason?: string }
  | { type: 'response.truncated'; response_id: string; seq: number; text: string; event_id?: string }
  | { type: 'session.draining'; retry_after_ms: number; resume_url?: string }
  | { type: 'session.closed'; session: { id: string }; event_id?: string }
  | { type: 'error'; code: string; message: string; event_id?: string; retry_after_ms?: number; response_id?: string; text?: string; next_seq?: number };

/**
 * The options a session is created with and those each of its turns takes (a turn's own override
 * the session's defaults): sampling, limits, scheduling, and the context policy.
 */
import type { SamplingOptions } from '../engine/engine.js';
import type { ChatFormat, ChatMessage } from './chat-format.js';
import type { ContextPolicy } from './context-plan.js';

export interface TurnOptions {
  sampling?: SamplingOptions;
  maxTokens?: number;
  /** Stop strings (in addition to the chat template's turn terminator). */
  stop?: string[];
  /** Backpressure hook (see Scheduler SubmitOptions.isBlocked). */
  isBlocked?: () => boolean;
  /** The tenant (an API key's name) the turn is scheduled for, and its weight (see Scheduler SubmitOptions). */
  tenant?: string;
  weight?: number;
  /**
   * Called once the prompt is tokenized, right before the turn is submitted, with its number of
   * tokens and how many of them the KV already holds: a throw refuses the turn (a key's budget),
   * the transcript unchanged.
   */
  admit?: (numPromptTokens: number, numCachedTokens: number) => void;
}

export interface AsyncTurnOptions extends TurnOptions {
  /** Gives up on the message while it is being tokenized (WEFT_CANCELLED; the transcript is unchanged). */
  signal?: AbortSignal;
}

export interface SessionOptions extends TurnOptions {
  /** What a turn that does not fit the context does. Default `truncate`. */
  contextPolicy?: ContextPolicy;
  /** Most tokens the conversation may hold (prompt and answer), below the model's context. */
  maxContextTokens?: number;
  system?: string;
  /** Prior messages (a transcript to continue). */
  history?: ChatMessage[];
  /** Shared by sessions of the same engine and tokenizer; built once when omitted. */
  format?: ChatFormat;
}

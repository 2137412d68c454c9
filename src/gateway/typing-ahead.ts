/**
 * Typing-ahead for a protocol v1 session (input.append, input.clear, message.create with
 * `commit`): the message being typed grows, and what of it can no longer change is prefilled into
 * the session's KV while the user types. One prefill at a time, the newest input winning, and only
 * while the session is idle (a response that ends kicks the next one).
 */
import { toWeftError, type WeftErrorCode } from '../errors.js';
import type { Session } from '../session/session.js';
import type { Gateway } from './server.js';

export class TypingAhead {
  /** The message being typed. */
  private input = '';
  /** A prefill runs. */
  private running = false;
  /** The input changed while a prefill ran: another is due when it ends. */
  private due = false;

  constructor(
    private readonly gw: Gateway,
    private readonly session: Session,
    /** Whether a prefill may start now (no response runs or waits). */
    private readonly idle: () => boolean,
    /** Reports an error to the client. */
    private readonly error: (code: WeftErrorCode, message: string, eventId?: string) => void,
  ) {}

  /** The message grows; what can no longer change is prefilled while the user types. */
  append(text: string, eventId: string | undefined): void {
    const next = this.input + text;
    const tok = this.session.format.tokenizer;
    if (Buffer.byteLength(next) > this.gw.maxFrameBytes || tok.minTokens(next) >= this.gw.limits().max_context) {
      return this.error('WEFT_CONTEXT_OVERFLOW', 'the message being typed no longer fits (the context, or the frame size limit); it is kept as it was', eventId);
    }
    this.input = next;
    this.kick();
  }

  clear(): void {
    this.input = '';
  }

  /** The typed message, sent (message.create with commit): it is cleared. */
  take(): string {
    const text = this.input;
    this.input = '';
    return text;
  }

  /** Starts a typing-ahead prefill of the current input when the session is idle (one at a time; the newest input wins). */
  kick(): void {
    if (this.running) {
      this.due = true;
      return;
    }
    if (this.input === '' || !this.idle()) return;
    this.running = true;
    this.due = false;
    this.session.typeAhead(this.input).then(
      () => undefined,
      (err) => {
        const e = toWeftError(err);
        if (e.code !== 'WEFT_SEQUENCE_BUSY') this.error(e.code, `typing-ahead: ${e.message}`);
      },
    ).finally(() => {
      this.running = false;
      if (this.due) this.kick();
    });
  }
}

/**
 * Turn formatting with the model's chat template (the Jinja `chat_template` of
 * tokenizer_config.json or chat_template.jinja), rendered by @huggingface/jinja with the
 * variables Hugging Face passes: `messages`, `add_generation_prompt`, `bos_token`, `eos_token`.
 *
 * A model without a template gets the PLAIN_TEMPLATE: one line `role: content` per message and
 * `assistant:` as the generation prompt.
 *
 * Turn terminator: the text a template puts after an assistant message's content (found by
 * rendering a probe conversation). Its trimmed form (or the raw text when it is only whitespace,
 * e.g. "\n") is a default stop string, so that an answer ends where the template would end the
 * turn: the embedded default model's template ends a turn with a newline, so its chat answers
 * stop at the first newline as well as at EOS.
 */
import { Template } from '@huggingface/jinja';
import { WeftError } from '../errors.js';
import type { Tokenizer } from '../tokenizer/tokenizer.js';

export interface ChatMessage {
  role: 'system' | 'user' | 'assistant';
  content: string;
}

export const PLAIN_TEMPLATE =
  "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}" +
  "{% if add_generation_prompt %}{{ 'assistant:' }}{% endif %}";

export class ChatFormat {
  private readonly template: Template;
  private readonly vars: { bos_token: string; eos_token: string };
  /** Default stop strings derived from the template's turn terminator (may be empty). */
  readonly stopStrings: string[];

  constructor(readonly tokenizer: Tokenizer) {
    const source = tokenizer.chatTemplate ?? PLAIN_TEMPLATE;
    try {
      this.template = new Template(source);
    } catch (err) {
      throw new WeftError('WEFT_TOKENIZER', `the chat template does not parse: ${(err as Error).message}`, { cause: err });
    }
    const tokenText = (id: number | null | undefined) => (id === null || id === undefined ? '' : (tokenizer.idToToken(id) ?? ''));
    this.vars = { bos_token: tokenText(tokenizer.bosTokenId), eos_token: tokenText(tokenizer.eosTokenIds[0]) };
    this.stopStrings = this.probeTerminator();
  }

  render(messages: ChatMessage[], addGenerationPrompt: boolean): string {
    try {
      return this.template.render({ messages, add_generation_prompt: addGenerationPrompt, ...this.vars });
    } catch (err) {
      throw new WeftError('WEFT_TOKENIZER', `the chat template failed to render: ${(err as Error).message}`, { cause: err });
    }
  }

  /** The prompt token ids of a conversation ending in a generation prompt. */
  encode(messages: ChatMessage[]): number[] {
    return this.tokenizer.encode(this.render(messages, true), { addSpecialTokens: false });
  }

  private probeTerminator(): string[] {
    const marker = '\u2063weft\u2063';
    let text: string;
    try {
      text = this.render([{ role: 'user', content: 'u' }, { role: 'assistant', content: marker }, { role: 'user', content: 'v' }], false);
    } catch {
      return [];
    }
    const at = text.indexOf(marker);
    if (at < 0) return [];
    const after = text.slice(at + marker.length);
    // the terminator is what precedes the next user turn's content (rendered alone for comparison)
    let next: string;
    try {
      next = this.render([{ role: 'user', content: 'v' }], false);
    } catch {
      return [];
    }
    const vAt = next.indexOf('v');
    const nextPrefix = vAt >= 0 ? next.slice(0, vAt).replace(this.vars.bos_token, '') : '';
    let term = nextPrefix && after.includes(nextPrefix) ? after.slice(0, after.indexOf(nextPrefix)) : after;
    if (term.length === 0) return [];
    const trimmed = term.trim();
    term = trimmed.length > 0 ? trimmed : term;
    return [term];
  }
}

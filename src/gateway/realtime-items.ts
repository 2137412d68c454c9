/**
 * The Realtime front's conversation items over a Session's messages: each message is an item
 * (known by identity: Session.splice keeps the objects), with its id and the content parts the
 * client gave; the instructions are a system message first that is not an item. Creating,
 * deleting and truncating items edit the session's transcript; the session keeps the KV of what
 * still matches (the next response prefills the rest).
 */
import type * as RT from 'openai/resources/realtime/realtime';
import { toWeftError } from '../errors.js';
import type { ChatMessage } from '../session/chat-format.js';
import type { Session } from '../session/session.js';
import { firstChars, numChars, RealtimeError, type NewItem, type Part } from './realtime-events.js';

/** An item's identity and what the conversation's message does not hold. */
interface Item {
  id: string;
  /** The content parts as the client gave them (user and system items). */
  parts: Part[] | null;
  status: 'completed' | 'incomplete';
}

/** The latest answer, as generated: its item, and the characters of its text after each token (truncation maps characters to tokens). */
export interface Answer {
  itemId: string;
  ends: number[];
}

let nextItemId = 1;

export class RealtimeItems {
  private readonly items = new WeakMap<ChatMessage, Item>();
  /** The instructions' system message (the session's first message), if set. */
  private instructions: ChatMessage | null = null;
  /** The latest answer, while its tokens are the KV's (it can be truncated token by token). */
  private latest: Answer | null = null;

  constructor(private readonly session: Session) {}

  get instructionsText(): string {
    return this.instructions?.content ?? '';
  }

  /** The instructions are the session's first message, a system one ('' removes it). */
  setInstructions(text: string): void {
    if (text === this.instructionsText) return;
    const msg: ChatMessage = { role: 'system', content: text };
    this.session.splice(0, this.instructions ? 1 : 0, ...(text ? [msg] : []));
    this.instructions = text ? msg : null;
  }

  /** A new, unused item id. */
  newId(): string {
    let id: string;
    do id = `item_${nextItemId++}`;
    while (this.indexOf(id) >= 0);
    return id;
  }

  /** The item `id` as the client sees it (WEFT_BAD_ARGUMENT when there is none). */
  get(id: string): RT.ConversationItem {
    return this.json(this.session.messages[this.find(id)]!);
  }

  /** Adds a message item after `previous` (an item id; 'root': first; none: last). */
  create(item: NewItem, previous: string | undefined): { previous_item_id: string | null; item: RT.ConversationItem } {
    const s = this.session;
    if (item.id !== undefined && this.indexOf(item.id) >= 0) throw new RealtimeError('WEFT_BAD_ARGUMENT', `the conversation already has an item ${JSON.stringify(item.id)}`, 'item.id');
    const at = previous === undefined ? s.messages.length : previous === 'root' ? (this.instructions ? 1 : 0) : this.find(previous, 'previous_item_id') + 1;
    this.items.set(item.message, { id: item.id ?? this.newId(), parts: item.parts, status: 'completed' });
    s.splice(at, 0, item.message);
    return { previous_item_id: this.previousId(at), item: this.json(item.message) };
  }

  delete(id: string): void {
    const i = this.find(id);
    if (this.latest?.itemId === id) this.latest = null;
    this.session.splice(i, 1);
  }

  /**
   * An assistant item keeps its first `textEnd` characters (what the client showed); returns the
   * characters kept. The latest answer is cut at a token boundary, in the transcript and in the
   * KV (the tokens whose text was shown in full: Session.truncateLastAnswer); another item's
   * text is cut, and the next response renders the conversation again.
   */
  truncate(id: string, contentIndex: number, textEnd: number): number {
    const s = this.session;
    const i = this.find(id);
    const m = s.messages[i]!;
    if (m.role !== 'assistant') throw new RealtimeError('WEFT_BAD_ARGUMENT', `only assistant items can be truncated (${JSON.stringify(id)} is a ${m.role} message)`, 'item_id');
    if (contentIndex !== 0) throw new RealtimeError('WEFT_BAD_ARGUMENT', 'an assistant item has one content part: content_index must be 0', 'content_index');
    const total = numChars(m.content);
    if (textEnd > total) throw new RealtimeError('WEFT_BAD_ARGUMENT', `the item has ${total} characters; it cannot be truncated at ${textEnd}`, 'text_end');
    if (textEnd === total) return total; // all of it was shown
    const a = this.latest;
    if (a?.itemId === id) {
      let k = 0;
      while (k < a.ends.length && a.ends[k]! <= textEnd) k++;
      // a token whose text was held back (part of a character) showed only with the next one
      while (k > 0 && k < a.ends.length && a.ends[k - 1] === (k > 1 ? a.ends[k - 2] : 0)) k--;
      try {
        const kept = s.truncateLastAnswer(k);
        a.ends.length = k;
        return numChars(kept);
      } catch (err) {
        if (toWeftError(err).code !== 'WEFT_NO_RESPONSE') throw err; // its tokens are no longer the KV's
      }
    }
    const cut: ChatMessage = { role: 'assistant', content: firstChars(m.content, textEnd) };
    this.items.set(cut, this.itemOf(m));
    s.splice(i, 1, cut);
    if (a?.itemId === id) this.latest = null;
    return textEnd;
  }

  /** A response's answer joined the conversation (its last message): it becomes the response's item. */
  answered(answer: Answer, status: Item['status']): { previous_item_id: string | null; item: RT.ConversationItem } {
    const msgs = this.session.messages;
    this.items.set(msgs.at(-1)!, { id: answer.itemId, parts: null, status });
    this.latest = answer;
    return { previous_item_id: this.previousId(msgs.length - 1), item: this.json(msgs.at(-1)!) };
  }

  /** The item that a new answer will follow (the last one), or null. */
  lastId(): string | null {
    return this.previousId(this.session.messages.length);
  }

  /** The items of `before` (a copy of the session's messages) that are no longer in the conversation. */
  removedSince(before: readonly ChatMessage[]): string[] {
    const now = new Set(this.session.messages);
    return before.filter((m) => m !== this.instructions && !now.has(m)).map((m) => this.itemOf(m).id);
  }

  json(m: ChatMessage): RT.ConversationItem {
    const it = this.itemOf(m);
    const base = { id: it.id, object: 'realtime.item', type: 'message', status: it.status } as const;
    if (m.role === 'assistant') return { ...base, role: 'assistant', content: [{ type: 'output_text', text: m.content }] };
    const parts = it.parts && it.parts.map((p) => p.text).join('') === m.content ? it.parts : [{ type: 'input_text' as const, text: m.content }];
    return { ...base, role: m.role, content: parts.map((p) => ({ type: 'input_text', text: p.text })) };
  }

  /** The index in the session's messages of the item `id` (WEFT_BAD_ARGUMENT naming `param` when there is none). */
  private find(id: string, param = 'item_id'): number {
    const i = this.indexOf(id);
    if (i < 0) throw new RealtimeError('WEFT_BAD_ARGUMENT', `the conversation has no item ${JSON.stringify(id)}`, param);
    return i;
  }

  private indexOf(id: string): number {
    return this.session.messages.findIndex((m) => m !== this.instructions && this.itemOf(m).id === id);
  }

  private itemOf(m: ChatMessage): Item {
    let it = this.items.get(m);
    if (!it) {
      it = { id: `item_${nextItemId++}`, parts: null, status: 'completed' };
      this.items.set(m, it);
    }
    return it;
  }

  /** The id of the item before the message at `index` of the session's messages, or null. */
  private previousId(index: number): string | null {
    const prev = this.session.messages[index - 1];
    return prev && prev !== this.instructions ? this.itemOf(prev).id : null;
  }
}

/**
 * The frames of one WebSocket connection: valid frames from the corpus, mutated at the JSON level
 * (mutate.ts) and at the byte level (truncated, flipped, invalid UTF-8, binary, empty, over the
 * size limit, fragmented), some pipelined while a response runs, and reconnects (with or without
 * a resume token) in between.
 */
import { LATEST_RESPONSE, baseFrame } from './corpus.js';
import { Obj, ser, type J } from './json.js';
import { mutate } from './mutate.js';
import { judge } from './oracle.js';
import { Rng, seedOf } from './rng.js';

/** One item of a connection's stream: a frame to send, or a reconnect. */
export type WsItem = FrameItem | ReconnectItem;
export interface FrameItem {
  kind: 'frame';
  index: number;
  /** The frame's base type before mutation (for pipelining and the log). */
  base: string;
  data: Buffer;
  binary: boolean;
  /** > 1: sent as that many WebSocket fragments. */
  fragments: number;
  /** Sent while the previous message.create's response still runs (after its response.created). */
  pipelined: boolean;
  /** How it was made. */
  log: string[];
}
export interface ReconnectItem {
  kind: 'reconnect';
  index: number;
  how: 'close' | 'terminate' | 'close-4000';
  /** own: the resume token of the session just left; old: an earlier one; else a raw query value; null: none. */
  resume: 'own' | 'old' | string | null;
  /** More query parameters after the token (last_seq, response_id). */
  extra: string;
  log: string[];
}

const BAD_UTF8 = [[0xff], [0xc0, 0x80], [0x80], [0xe2, 0x82], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xf8, 0x88, 0x80, 0x80, 0x80], [0xc3]];

/**
 * The frames of one connection: a pure function of (seed, transport, connection, index) and the
 * server's max_frame_bytes (the limit that sizes the over-limit frames).
 */
export class FrameGen {
  private readonly r: Rng;
  private index = 0;
  private prevBase = '';

  constructor(
    readonly seed: number,
    readonly transport: string,
    readonly conn: number,
    readonly limit: number,
  ) {
    this.r = new Rng(seedOf(seed, transport, 'ws', conn));
  }

  next(): WsItem {
    const r = this.r;
    const index = this.index++;
    if (index > 0 && r.chance(0.025)) {
      this.prevBase = '';
      const how = r.pick(['close', 'terminate', 'close-4000'] as const);
      const resume = r.weighted<string | null>([
        [4, null],
        [5, 'own'],
        [1, 'old'],
        [2, r.pick(['%', '%zz', '%00', '__proto__', 'constructor', 'hasOwnProperty', '', 'x'.repeat(5000), '\u00e9', '../', 'a&resume=b', '#', ' '])],
      ]);
      const extra = resume !== null && r.chance(0.3) ? r.pick(['&last_seq=-1', '&last_seq=0', '&last_seq=3', '&last_seq=abc', '&last_seq=1e999', '&last_seq=-2', '&last_seq=99999999999', '&last_seq=', '&response_id=resp_1', '&response_id=', '&last_seq=0&last_seq=1']) : '';
      return { kind: 'reconnect', index, how, resume, extra, log: [`reconnect (${how}), resume ${resume === null ? 'none' : JSON.stringify(resume.slice(0, 20))}${extra}`] };
    }
    const log: string[] = [];
    // a frame sent while the previous message.create's response runs
    const pipelined = this.prevBase === 'message.create' && r.chance(0.5);
    const base = pipelined
      ? r.weighted<string>([[6, 'response.cancel'], [2, 'message.create'], [2, 'session.update'], [1, 'session.close'], [2, 'input.append']])
      : r.weighted<string>([[35, 'message.create'], [28, 'session.update'], [18, 'response.cancel'], [3, 'response.truncate'], [6, 'session.resume'], [4, 'session.close'], [8, 'input.append'], [3, 'input.clear']]);
    this.prevBase = base;
    const eventId = pipelined || r.chance(0.8) ? `e${this.conn}-${index}` : undefined;
    log.push(`${base}${eventId ? '' : ' (no event_id)'}${pipelined ? ', pipelined' : ''}`);
    let root: J = baseFrame(r, base, eventId);
    const nMut = r.weighted([[30, 0], [40, 1], [20, 2], [10, 3]] as const);
    for (let i = 0; i < nMut && root instanceof Obj; i++) root = mutate(r, root, log);
    if (pipelined && root instanceof Obj && root.get('event_id') !== eventId) root.set('event_id', eventId!); // answers to pipelined frames are told apart by event_id
    let data = Buffer.from(ser(root), 'utf8');
    let binary = false;
    let fragments = 1;
    // byte level
    if (r.chance(0.12)) {
      const op = r.weighted([[3, 'truncate'], [3, 'flip'], [3, 'bad-utf8'], [2, 'binary'], [1, 'empty'], [1, 'nul']] as const);
      switch (op) {
        case 'truncate': {
          const at = r.int(0, Math.max(0, data.length - 1));
          log.push(`bytes: truncated to ${at} of ${data.length}`);
          data = data.subarray(0, at);
          break;
        }
        case 'flip': {
          data = Buffer.from(data);
          const n = r.int(1, 4);
          for (let i = 0; i < n && data.length; i++) {
            const at = r.int(0, data.length - 1);
            data[at]! ^= 1 << r.int(0, 7);
          }
          log.push(`bytes: ${n} bit flips`);
          break;
        }
        case 'bad-utf8': {
          const seq = r.pick(BAD_UTF8);
          const at = r.int(0, data.length);
          log.push(`bytes: invalid UTF-8 ${Buffer.from(seq).toString('hex')} at ${at}`);
          data = Buffer.concat([data.subarray(0, at), Buffer.from(seq), data.subarray(at)]);
          break;
        }
        case 'binary':
          log.push('bytes: sent as a binary frame');
          binary = true;
          break;
        case 'empty':
          binary = r.chance(0.5);
          log.push(`bytes: empty ${binary ? 'binary' : 'text'} frame`);
          data = Buffer.alloc(0);
          break;
        case 'nul':
          log.push('bytes: trailing NUL');
          data = Buffer.concat([data, Buffer.from([0])]);
          break;
      }
    }
    // size
    if (r.chance(0.012)) {
      const hard = r.chance(0.25);
      const target = hard ? 4 * this.limit + r.int(1, 4096) : this.limit + r.int(1, this.limit);
      log.push(`size: padded to ${target} bytes (${hard ? 'over 4x' : 'over'} the ${this.limit}-byte limit)`);
      const text = data.toString('latin1');
      const cut = text.lastIndexOf('}');
      const pad = ' '.repeat(Math.max(0, target - data.length));
      data = cut > 0 ? Buffer.concat([data.subarray(0, cut), Buffer.from(pad), data.subarray(cut)]) : Buffer.concat([data, Buffer.from(pad)]);
    }
    if (data.length > 1 && r.chance(0.05)) {
      fragments = r.int(2, Math.min(6, data.length));
      log.push(`sent in ${fragments} fragments`);
    }
    return { kind: 'frame', index, base, data, binary, fragments, pipelined: pipelined && isPipelinable(data, binary, this.limit), log };
  }
}

/** The frame with LATEST_RESPONSE replaced by the session's latest response_id (the frame itself when it has none). */
export function withLatest(item: FrameItem, responseId: string): FrameItem {
  const marker = Buffer.from(LATEST_RESPONSE);
  const at = item.data.indexOf(marker);
  if (at < 0) return item;
  const data = Buffer.concat([item.data.subarray(0, at), Buffer.from(responseId), item.data.subarray(at + marker.length)]);
  return { ...item, data, log: [...item.log, `${LATEST_RESPONSE} := ${responseId}`] };
}

/** A pipelined frame must carry a valid event_id (its answers are told apart by it). */
function isPipelinable(data: Buffer, binary: boolean, limit: number): boolean {
  const j = judge(data, binary, limit);
  return j.eventId !== undefined && !j.tooLarge && !j.badUtf8;
}


/**
 * Incremental detokenizers: push(id) returns the text that is safe to emit now and never splits a
 * UTF-8 character (incomplete bytes are held back until the token that completes them arrives);
 * flush() returns whatever is still held (a truly incomplete tail decodes to U+FFFD, as a full decode
 * would).
 */
import { WeftError } from '../errors.js';
import { byteLevelTokenBytes } from './byte-level.js';

export interface StreamDecoder {
  /** Adds one token id; returns the text completed by it ('' while bytes are held back). */
  push(id: number): string;
  /** Returns the held-back text (if any) and resets the decoder for reuse. */
  flush(): string;
}

export interface StreamDecoderHost {
  readonly vocabSize: number;
  idToToken(id: number): string | undefined;
  isSpecialId(id: number): boolean;
  decode(ids: number[], opts?: { skipSpecialTokens?: boolean }): string;
}

function checkId(host: StreamDecoderHost, id: number): void {
  if (!Number.isInteger(id) || id < 0 || id >= host.vocabSize) {
    throw new WeftError('WEFT_TOKEN_OUT_OF_RANGE', `token id ${id} is not in [0, ${host.vocabSize})`);
  }
}

/**
 * Byte-level BPE (ByteLevel decoder): each token maps to raw bytes (a token holding characters outside
 * the byte table — e.g. an added token — contributes its UTF-8 bytes, as `tokenizers` does), and a
 * streaming WHATWG UTF-8 decoder emits exactly the complete characters. Skipped special tokens are
 * dropped without breaking the byte stream, like a full decode with skip_special_tokens.
 */
export class ByteLevelStreamDecoder implements StreamDecoder {
  private utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
  // the UTF-8 decoder may hold an incomplete character (false: it certainly holds none)
  private pending = false;
  private readonly cache: Map<number, TokenBytes>;
  private static readonly encoder = new TextEncoder();
  private static readonly strict = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });
  // one cache per tokenizer, shared by every stream of it
  private static readonly caches = new WeakMap<StreamDecoderHost, Map<number, TokenBytes>>();

  constructor(
    private readonly host: StreamDecoderHost,
    private readonly skipSpecialTokens: boolean,
  ) {
    let c = ByteLevelStreamDecoder.caches.get(host);
    if (!c) ByteLevelStreamDecoder.caches.set(host, (c = new Map()));
    this.cache = c;
  }

  push(id: number): string {
    checkId(this.host, id);
    if (this.skipSpecialTokens && this.host.isSpecialId(id)) return '';
    const t = this.bytesOf(id);
    if (t.bytes.length === 0) return '';
    // a token that is whole characters by itself, with nothing held: its text, without the decoder
    if (!this.pending && t.text !== undefined) return t.text;
    // else the streaming decoder (a held incomplete character ends at a whole-character token, so
    // after one nothing is held; after any other token something may be)
    this.pending = t.text === undefined;
    return this.utf8.decode(t.bytes, { stream: true });
  }

  flush(): string {
    const rest = this.pending ? this.utf8.decode() : '';
    this.utf8 = new TextDecoder('utf-8', { fatal: false, ignoreBOM: true });
    this.pending = false;
    return rest;
  }

  private bytesOf(id: number): TokenBytes {
    let t = this.cache.get(id);
    if (t) return t;
    const token = this.host.idToToken(id);
    // An id inside the range that names no token (a gap) decodes to nothing, as in `tokenizers`.
    const bytes = token === undefined ? new Uint8Array(0) : (byteLevelTokenBytes(token) ?? ByteLevelStreamDecoder.encoder.encode(token));
    let text: string | undefined;
    try {
      text = ByteLevelStreamDecoder.strict.decode(bytes); // whole, valid characters only
    } catch {
      text = undefined;
    }
    t = { bytes, text };
    if (this.cache.size < 1 << 18) this.cache.set(id, t);
    return t;
  }
}

/** A token's bytes, and its text when the bytes are whole UTF-8 characters by themselves. */
interface TokenBytes {
  bytes: Uint8Array;
  text?: string;
}

/**
 * Any other decoder (Metaspace, ByteFallback, WordPiece …): the usual prefix/read-offset scheme —
 * decode a short window of recent tokens with and without the new ones and emit the difference once
 * it does not end in U+FFFD (an incomplete byte-fallback sequence).
 */
export class WindowStreamDecoder implements StreamDecoder {
  private ids: number[] = [];
  private prefixOffset = 0;
  private readOffset = 0;

  constructor(
    private readonly host: StreamDecoderHost,
    private readonly skipSpecialTokens: boolean,
  ) {}

  push(id: number): string {
    checkId(this.host, id);
    this.ids.push(id);
    const opts = { skipSpecialTokens: this.skipSpecialTokens };
    const prefix = this.host.decode(this.ids.slice(this.prefixOffset, this.readOffset), opts);
    const full = this.host.decode(this.ids.slice(this.prefixOffset), opts);
    if (full.length > prefix.length && !full.endsWith('\uFFFD') && full.startsWith(prefix)) {
      const out = full.slice(prefix.length);
      this.prefixOffset = this.readOffset;
      this.readOffset = this.ids.length;
      if (this.prefixOffset > 64) {
        // keep the window small
        this.ids = this.ids.slice(this.prefixOffset);
        this.readOffset -= this.prefixOffset;
        this.prefixOffset = 0;
      }
      return out;
    }
    return '';
  }

  flush(): string {
    const opts = { skipSpecialTokens: this.skipSpecialTokens };
    const prefix = this.host.decode(this.ids.slice(this.prefixOffset, this.readOffset), opts);
    const full = this.host.decode(this.ids.slice(this.prefixOffset), opts);
    this.ids = [];
    this.prefixOffset = 0;
    this.readOffset = 0;
    return full.startsWith(prefix) ? full.slice(prefix.length) : full;
  }
}

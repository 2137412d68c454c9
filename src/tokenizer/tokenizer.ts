/**
 * weft's tokenizer: a model directory's `tokenizer.json` run by `@huggingface/tokenizers`
 * (tokenizers.js — pure JavaScript, no WebAssembly), which reads the Hugging Face format directly
 * (normalizer, pre-tokenizer regex, BPE vocab/merges, added/special tokens, post-processor, decoder).
 * docs/tokenizer.md compares it with js-tiktoken and records why it was kept.
 *
 * Around the library (the edges where it differs from the Rust `tokenizers`):
 *  - decode never applies `clean_up_tokenization_spaces` (a transformers-level rewrite, not part of
 *    `tokenizers`), accepts an empty id list, drops ids that name no token and rejects out-of-range ids,
 *    and keeps a U+FEFF that byte-fallback tokens spell (tokenizers.js' ByteFallback drops it);
 *  - tokenizer_config.json: bos/eos tokens, add_bos_token/add_eos_token, chat_template (plus
 *    chat_template.jinja and generation_config.json's eos_token_id when fromDir finds them);
 *  - encodeAsync runs texts above `asyncThresholdChars` in a worker thread (the event loop stays free);
 *  - createDecoder gives an incremental detokenizer that never splits a UTF-8 character.
 */
import { readFile, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';

import { Tokenizer as HFTokenizer } from '@huggingface/tokenizers';

import { WeftError } from '../errors.js';
import { EncodeWorker, type EncodeQueueLimits } from './encode-worker.js';
import { maxInputBytesPerToken } from './token-bound.js';
import { ByteLevelStreamDecoder, type StreamDecoder, type StreamDecoderHost, WindowStreamDecoder } from './stream-decoder.js';

export type { StreamDecoder } from './stream-decoder.js';

export interface EncodeOptions {
  /** Apply the tokenizer's post-processor (e.g. Llama-3's BOS) and add_bos_token/add_eos_token. Default true (as in `tokenizers`). */
  addSpecialTokens?: boolean;
  /** encodeAsync: gives up (WEFT_CANCELLED) when it fires; a text still queued for the worker is never encoded. */
  signal?: AbortSignal;
}

export interface DecodeOptions {
  /** Drop special added tokens from the text. Default false. */
  skipSpecialTokens?: boolean;
}

type TokenRef = string | { content?: unknown } | null | undefined;

/** The parts of tokenizer_config.json weft reads (others are passed to the library untouched). */
export interface TokenizerConfigJson {
  bos_token?: TokenRef;
  eos_token?: TokenRef;
  add_bos_token?: boolean;
  add_eos_token?: boolean;
  chat_template?: string | Array<{ name?: string; template?: string }> | null;
  [key: string]: unknown;
}

/** A tokenizer's pieces: tokenizer.json, tokenizer_config.json, the chat template and EOS ids found beside them. */
export interface TokenizerParts {
  json: object;
  config?: object;
  eosTokenIds?: number[];
  chatTemplate?: string | null;
  /** tokenizer.json's path, when it is a file (the encode worker reads it there). */
  jsonPath?: string;
}

export interface TokenizerExtras {
  /** Extra end-of-sequence ids (generation_config.json's eos_token_id). */
  eosTokenIds?: number[];
  /** A chat template found outside tokenizer_config.json (chat_template.jinja). */
  chatTemplate?: string | null;
  /** Where tokenizer.json came from (for messages and for the encode worker). */
  jsonPath?: string;
}

interface AddedTokenJson {
  id: number;
  content: string;
  special?: boolean;
}

/** Special-token names used as EOS when there is no tokenizer_config.json at all. */
const FALLBACK_EOS = ['<|endoftext|>', '</s>'];

function isObject(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function tokenContent(ref: TokenRef): string | null {
  if (typeof ref === 'string') return ref;
  if (isObject(ref) && typeof ref.content === 'string') return ref.content;
  return null;
}

/**
 * tokenizers.js' ByteFallback decoder turns byte tokens into text with a TextDecoder that drops a
 * leading U+FEFF (a byte order mark) from every run of byte tokens; `tokenizers` keeps it. Give
 * such decoders one that keeps it.
 */
function keepByteOrderMarks(decoder: unknown): void {
  // the library's decoders are callable objects (functions)
  if (typeof decoder !== 'function' && !isObject(decoder)) return;
  const d = decoder as { text_decoder?: unknown; decoders?: unknown };
  const td = d.text_decoder;
  if (td instanceof TextDecoder && !td.ignoreBOM) d.text_decoder = new TextDecoder(td.encoding, { fatal: td.fatal, ignoreBOM: true });
  if (Array.isArray(d.decoders)) d.decoders.forEach(keepByteOrderMarks);
}

async function readJsonFile(path: string, required: boolean): Promise<unknown | undefined> {
  let text: string;
  try {
    text = await readFile(path, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    if (!required && code === 'ENOENT') return undefined;
    throw new WeftError('WEFT_TOKENIZER', `${path}: cannot read (${code ?? String(err)})`, { cause: err });
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new WeftError('WEFT_TOKENIZER', `${path}: malformed JSON (${(err as Error).message})`, { cause: err });
  }
}

export class Tokenizer {
  /** Texts at least this long (UTF-16 units) are encoded by encodeAsync in a worker thread. */
  asyncThresholdChars = 8192;
  /** Bounds of the worker's queue (beyond them encodeAsync rejects with WEFT_OVERLOADED). */
  encodeQueueLimits: Partial<EncodeQueueLimits> = {};
  /**
   * Most bytes of input text one token can stand for, or null when this tokenizer gives no such
   * bound (src/tokenizer/token-bound.ts): a text of B bytes encodes to at least B / this tokens.
   */
  readonly maxInputBytesPerToken: number | null;

  readonly vocabSize: number;
  readonly bosTokenId: number | null;
  readonly eosTokenIds: number[];
  readonly chatTemplate: string | null;

  private readonly hf: HFTokenizer;
  private readonly config: TokenizerConfigJson;
  private readonly source: string;
  private readonly jsonPath: string | undefined;
  private readonly json: Record<string, unknown>;
  private readonly specialIds: Set<number>;
  private readonly byteLevel: boolean;
  private readonly addBos: boolean;
  private readonly addEos: boolean;
  private worker: EncodeWorker | null = null;

  /**
   * Loads DIR/tokenizer.json (+ tokenizer_config.json, chat_template.jinja, generation_config.json
   * when present). WEFT_MODEL_NOT_FOUND for a missing directory, WEFT_TOKENIZER (naming the file) for
   * a missing or malformed tokenizer file.
   */
  static async fromDir(dir: string): Promise<Tokenizer> {
    const p = await Tokenizer.readParts(dir);
    return Tokenizer.fromJSON(p.json, p.config, { jsonPath: p.jsonPath, chatTemplate: p.chatTemplate, eosTokenIds: p.eosTokenIds });
  }

  /** What fromDir reads, unbuilt (engine plans carry these pieces). */
  static async readParts(dir: string): Promise<TokenizerParts> {
    const root = resolve(dir);
    try {
      const st = await stat(root);
      if (!st.isDirectory()) throw new Error('not a directory');
    } catch (err) {
      throw new WeftError('WEFT_MODEL_NOT_FOUND', `model directory not found: ${root}`, { cause: err });
    }
    const jsonPath = join(root, 'tokenizer.json');
    const json = await readJsonFile(jsonPath, true);
    if (!isObject(json)) throw new WeftError('WEFT_TOKENIZER', `${jsonPath}: expected a JSON object`);
    const configPath = join(root, 'tokenizer_config.json');
    const config = await readJsonFile(configPath, false);
    if (config !== undefined && !isObject(config)) {
      throw new WeftError('WEFT_TOKENIZER', `${configPath}: expected a JSON object`);
    }
    let chatTemplate: string | null = null;
    try {
      chatTemplate = await readFile(join(root, 'chat_template.jinja'), 'utf8');
    } catch {
      // optional
    }
    let eosTokenIds: number[] | undefined;
    try {
      const gen = JSON.parse(await readFile(join(root, 'generation_config.json'), 'utf8')) as { eos_token_id?: unknown };
      const e = gen.eos_token_id;
      const list = Array.isArray(e) ? e : [e];
      eosTokenIds = list.filter((x): x is number => Number.isInteger(x));
    } catch {
      // optional; generation_config.json belongs to the model loader, only eos ids are taken here
    }
    return { json: json as object, config: config as object | undefined, jsonPath, chatTemplate, eosTokenIds };
  }

  /** Builds a tokenizer from a parsed tokenizer.json (and tokenizer_config.json). */
  static fromJSON(json: object, config?: object, extras: TokenizerExtras = {}): Tokenizer {
    return new Tokenizer(json, config, extras);
  }

  private constructor(json: object, config: object | undefined, extras: TokenizerExtras) {
    this.source = extras.jsonPath ?? 'tokenizer.json';
    this.jsonPath = extras.jsonPath;
    if (!isObject(json)) throw new WeftError('WEFT_TOKENIZER', `${this.source}: expected a JSON object`);
    if (!isObject(json.model)) throw new WeftError('WEFT_TOKENIZER', `${this.source}: no "model" object`);
    const modelType = json.model.type;
    if (modelType !== undefined && modelType !== 'BPE' && modelType !== 'WordPiece' && modelType !== 'Unigram') {
      throw new WeftError('WEFT_TOKENIZER', `${this.source}: unsupported model type ${JSON.stringify(modelType)}`);
    }
    if (json.added_tokens !== undefined && !Array.isArray(json.added_tokens)) {
      throw new WeftError('WEFT_TOKENIZER', `${this.source}: "added_tokens" is not an array`);
    }
    if (config !== undefined && config !== null && !isObject(config)) {
      throw new WeftError('WEFT_TOKENIZER', 'tokenizer_config.json: expected a JSON object');
    }
    // tokenizers.js requires these keys; `tokenizers` treats missing ones as null.
    const full: Record<string, unknown> = { normalizer: null, pre_tokenizer: null, post_processor: null, decoder: null, added_tokens: [], ...json };
    this.json = full;
    this.config = (config ?? {}) as TokenizerConfigJson;
    try {
      this.hf = new HFTokenizer(full, { ...this.config, clean_up_tokenization_spaces: false });
      keepByteOrderMarks(this.hf.decoder);
    } catch (err) {
      throw new WeftError('WEFT_TOKENIZER', `${this.source}: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
    const model = this.hf.model;
    if (!model || model.tokens_to_ids.size === 0) throw new WeftError('WEFT_TOKENIZER', `${this.source}: empty vocabulary`);

    const added = (full.added_tokens as AddedTokenJson[]).filter((t) => isObject(t) && Number.isInteger(t.id) && typeof t.content === 'string');
    this.specialIds = new Set(added.filter((t) => t.special).map((t) => t.id));
    let maxId = model.vocab.length - 1;
    for (const id of model.tokens_to_ids.values()) if (id > maxId) maxId = id;
    this.vocabSize = maxId + 1;

    const decoder = full.decoder;
    this.byteLevel = isObject(decoder) && decoder.type === 'ByteLevel';

    const cfgName = 'tokenizer_config.json';
    const resolveToken = (ref: TokenRef, what: string): number | null => {
      const content = tokenContent(ref);
      if (content === null) return null;
      const id = this.tokenId(content);
      if (id === undefined) throw new WeftError('WEFT_TOKENIZER', `${cfgName}: ${what} ${JSON.stringify(content)} is not in the vocabulary`);
      return id;
    };
    this.bosTokenId = resolveToken(this.config.bos_token, 'bos_token');
    const eos = new Set<number>();
    const eosId = resolveToken(this.config.eos_token, 'eos_token');
    if (eosId !== null) eos.add(eosId);
    for (const id of extras.eosTokenIds ?? []) if (id >= 0 && id < this.vocabSize) eos.add(id);
    if (eos.size === 0 && config === undefined) {
      for (const name of FALLBACK_EOS) {
        const id = this.tokenId(name);
        if (id !== undefined && this.specialIds.has(id)) eos.add(id);
      }
    }
    this.eosTokenIds = [...eos];
    this.maxInputBytesPerToken = maxInputBytesPerToken(full);
    this.addBos = this.config.add_bos_token === true && this.bosTokenId !== null;
    this.addEos = this.config.add_eos_token === true && eosId !== null;

    const tpl = this.config.chat_template;
    if (typeof tpl === 'string') this.chatTemplate = tpl;
    else if (Array.isArray(tpl)) {
      const named = tpl.find((t) => t?.name === 'default') ?? tpl[0];
      this.chatTemplate = typeof named?.template === 'string' ? named.template : null;
    } else this.chatTemplate = extras.chatTemplate ?? null;
  }

  /** The id of a vocabulary or added token string, e.g. tokenId('<|endoftext|>'). */
  tokenId(token: string): number | undefined {
    return this.hf.token_to_id(token);
  }

  /** The token string of an id (byte-level spelling for byte-level BPE), if any. */
  idToToken(id: number): string | undefined {
    return this.hf.id_to_token(id);
  }

  isSpecialId(id: number): boolean {
    return this.specialIds.has(id);
  }

  encode(text: string, opts: EncodeOptions = {}): number[] {
    if (typeof text !== 'string') throw new WeftError('WEFT_BAD_ARGUMENT', 'encode: text must be a string');
    const add = opts.addSpecialTokens ?? true;
    let ids: number[];
    try {
      ids = this.hf.encode(text, { add_special_tokens: add }).ids;
    } catch (err) {
      throw new WeftError('WEFT_TOKENIZER', `encode failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
    return add ? this.addConfiguredSpecials(ids) : ids;
  }

  /**
   * Like encode, but texts of `asyncThresholdChars` or more are encoded in a worker thread so the
   * event loop stays responsive. Results are identical to encode (same library, same tokenizer.json).
   */
  async encodeAsync(text: string, opts: EncodeOptions = {}): Promise<number[]> {
    if (typeof text !== 'string') throw new WeftError('WEFT_BAD_ARGUMENT', 'encodeAsync: text must be a string');
    if (text.length < this.asyncThresholdChars) return this.encode(text, opts);
    const add = opts.addSpecialTokens ?? true;
    const ids = await this.encodeWorker().encode(text, add, opts.signal);
    return add ? this.addConfiguredSpecials(ids) : ids;
  }

  /** Lower bound on the tokens `text` encodes to (without special tokens), from its byte count alone; 0 when there is no bound. */
  minTokens(text: string): number {
    return this.maxInputBytesPerToken === null ? 0 : Math.ceil(Buffer.byteLength(text) / this.maxInputBytesPerToken);
  }

  /** Texts waiting for or in the encode worker. */
  get encodeQueueLength(): number {
    return this.worker?.numPending ?? 0;
  }

  /** Starts the encode worker ahead of the first long prompt (optional). */
  async warmup(): Promise<void> {
    await this.encodeWorker().start();
  }

  private encodeWorker(): EncodeWorker {
    if (!this.worker) {
      const source = this.jsonPath ? { jsonPath: this.jsonPath, config: this.libConfig() } : { json: this.json, config: this.libConfig() };
      this.worker = new EncodeWorker(source, this.encodeQueueLimits);
    }
    return this.worker;
  }

  /** Stops the encode worker (if one was started). The tokenizer stays usable; a later encodeAsync restarts it. */
  async dispose(): Promise<void> {
    const w = this.worker;
    this.worker = null;
    if (w) await w.dispose();
  }

  decode(ids: number[], opts: DecodeOptions = {}): string {
    if (!Array.isArray(ids)) throw new WeftError('WEFT_BAD_ARGUMENT', 'decode: ids must be an array of token ids');
    const known: number[] = [];
    for (const id of ids) {
      if (!Number.isInteger(id) || id < 0 || id >= this.vocabSize) {
        throw new WeftError('WEFT_TOKEN_OUT_OF_RANGE', `token id ${id} is not in [0, ${this.vocabSize})`);
      }
      // An id inside the range that names no token (a gap in the vocabulary) decodes to nothing, as in `tokenizers`.
      if (this.hf.id_to_token(id) !== undefined) known.push(id);
    }
    if (known.length === 0) return '';
    try {
      return this.hf.decode(known, { skip_special_tokens: opts.skipSpecialTokens ?? false, clean_up_tokenization_spaces: false });
    } catch (err) {
      throw new WeftError('WEFT_TOKENIZER', `decode failed: ${(err as Error)?.message ?? String(err)}`, { cause: err });
    }
  }

  /** An incremental detokenizer for streaming generated tokens. */
  createDecoder(opts: DecodeOptions = {}): StreamDecoder {
    const skip = opts.skipSpecialTokens ?? false;
    const host: StreamDecoderHost = this;
    return this.byteLevel ? new ByteLevelStreamDecoder(host, skip) : new WindowStreamDecoder(host, skip);
  }

  private libConfig(): object {
    return { ...this.config, clean_up_tokenization_spaces: false };
  }

  /** add_bos_token / add_eos_token from tokenizer_config.json, when the post-processor did not already add them. */
  private addConfiguredSpecials(ids: number[]): number[] {
    if (this.addBos && ids[0] !== this.bosTokenId) ids.unshift(this.bosTokenId!);
    if (this.addEos) {
      const eos = this.tokenId(tokenContent(this.config.eos_token)!)!;
      if (ids[ids.length - 1] !== eos) ids.push(eos);
    }
    return ids;
  }
}

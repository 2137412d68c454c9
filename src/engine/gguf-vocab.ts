/**
 * The tokenizer part of a GGUF export: tokenizer.ggml.* as llama.cpp's converter writes it for a
 * byte-level BPE tokenizer.json (its _set_vocab_gpt2), padded to vocab_size.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import path from 'node:path';
import { WeftError } from '../errors.js';
import type { ModelConfig } from './config.js';
import { meta, type GgufMeta } from './gguf.js';

/** llama.cpp token types. */
const TOKEN_TYPE = { NORMAL: 1, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5 } as const;

export interface Vocab { tokens: string[]; types: number[]; merges: string[]; pre: string; bos: number | null; eos: number | null; addBos: boolean; addEos: boolean; chatTemplate: string | null }

/** The HF tokenizer.json originals of llama.cpp's pre-tokenizer types (a Split before ByteLevel). */
const PRE_BY_REGEX: Record<string, string> = {
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": 'llama-bpe',
  "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+": 'qwen2',
};

type Json = Record<string, unknown>;

/** tokenizer.ggml.pre for a byte-level tokenizer.json's pre-tokenizer. */
function preType(pre: unknown, file: string): string {
  const p = pre as Json | null;
  if (p?.type === 'ByteLevel' && p.use_regex !== false) return 'gpt-2';
  const parts = p?.type === 'Sequence' ? (p.pretokenizers as Json[]) : [];
  const split = parts.length === 2 && parts[0]?.type === 'Split' && parts[1]?.type === 'ByteLevel' ? (parts[0].pattern as Json | undefined)?.Regex : undefined;
  const name = typeof split === 'string' ? PRE_BY_REGEX[split] : undefined;
  if (!name) throw new WeftError('WEFT_TOKENIZER', `${file}: this pre-tokenizer has no llama.cpp pre type weft knows (${JSON.stringify(pre).slice(0, 200)})`);
  return name;
}

/** GPT-2 byte-level alphabet: byte -> printable character. */
function byteLevelAlphabet(): string[] {
  const table: string[] = new Array(256);
  let n = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || b >= 0xae;
    table[b] = String.fromCodePoint(printable ? b : 256 + n++);
  }
  return table;
}

/**
 * tokenizer.ggml.* from tokenizer.json (byte-level BPE) and tokenizer_config.json, padded with
 * "[PADn]" (UNUSED) up to vocab_size. Without tokenizer.json: the 256 byte tokens and pads (llama.cpp
 * needs a vocabulary even when token ids are fed directly).
 */
export async function readVocab(dir: string, c: ModelConfig): Promise<Vocab> {
  const tokens: (string | undefined)[] = new Array(c.vocabSize).fill(undefined);
  const types: number[] = new Array(c.vocabSize).fill(TOKEN_TYPE.NORMAL);
  const vocab: Vocab = { tokens: [], types, merges: [], pre: 'gpt-2', bos: c.bosTokenId, eos: c.eosTokenIds[0] ?? null, addBos: false, addEos: false, chatTemplate: null };
  const tjPath = path.join(dir, 'tokenizer.json');
  if (existsSync(tjPath)) {
    const tj = JSON.parse(await readFile(tjPath, 'utf8')) as Json & {
      model?: { type?: string; vocab?: Record<string, number>; merges?: (string | [string, string])[]; byte_fallback?: boolean };
      added_tokens?: { id: number; content: string; special?: boolean }[];
    };
    if (!tj.model?.vocab || (tj.model.type ?? 'BPE') !== 'BPE' || tj.model.byte_fallback) {
      throw new WeftError('WEFT_TOKENIZER', `${tjPath}: only byte-level BPE tokenizers are exported to GGUF`);
    }
    vocab.pre = preType(tj.pre_tokenizer, tjPath);
    const put = (id: number, tok: string, type: number): void => {
      if (!Number.isInteger(id) || id < 0 || id >= c.vocabSize) throw new WeftError('WEFT_TOKENIZER', `${tjPath}: token id ${id} is not below vocab_size ${c.vocabSize}`);
      tokens[id] = tok;
      types[id] = type;
    };
    for (const [tok, id] of Object.entries(tj.model.vocab)) put(id, tok, TOKEN_TYPE.NORMAL);
    for (const a of tj.added_tokens ?? []) put(a.id, a.content, a.special ? TOKEN_TYPE.CONTROL : TOKEN_TYPE.USER_DEFINED);
    vocab.merges = (tj.model.merges ?? []).map((m) => (typeof m === 'string' ? m : `${m[0]} ${m[1]}`));
    const eot = (tj.added_tokens ?? []).find((a) => a.content === '<|endoftext|>');
    vocab.bos ??= eot?.id ?? null;
    vocab.eos ??= eot?.id ?? null;
    const cfgPath = path.join(dir, 'tokenizer_config.json');
    const cfg = existsSync(cfgPath) ? (JSON.parse(await readFile(cfgPath, 'utf8')) as Json) : {};
    const bosText = vocab.bos === null ? null : tokens[vocab.bos];
    vocab.addBos = cfg.add_bos_token === true || (bosText !== undefined && bosText !== null && JSON.stringify(tj.post_processor ?? null).includes(JSON.stringify(bosText)));
    vocab.addEos = cfg.add_eos_token === true;
    vocab.chatTemplate = typeof cfg.chat_template === 'string' ? cfg.chat_template : null;
  } else {
    byteLevelAlphabet().forEach((ch, b) => b < c.vocabSize && (tokens[b] = ch));
  }
  vocab.tokens = tokens.map((t, i) => {
    if (t !== undefined) return t;
    types[i] = TOKEN_TYPE.UNUSED;
    return `[PAD${i}]`;
  });
  return vocab;
}

export function vocabMetadata(v: Vocab): Record<string, GgufMeta> {
  const m: Record<string, GgufMeta> = {
    'tokenizer.ggml.model': meta.str('gpt2'),
    'tokenizer.ggml.pre': meta.str(v.pre),
    'tokenizer.ggml.tokens': meta.strings(v.tokens),
    'tokenizer.ggml.token_type': meta.i32s(v.types),
    'tokenizer.ggml.merges': meta.strings(v.merges),
  };
  if (v.bos !== null) m['tokenizer.ggml.bos_token_id'] = meta.u32(v.bos);
  if (v.eos !== null) m['tokenizer.ggml.eos_token_id'] = meta.u32(v.eos);
  m['tokenizer.ggml.add_bos_token'] = meta.bool(v.addBos);
  m['tokenizer.ggml.add_eos_token'] = meta.bool(v.addEos);
  if (v.chatTemplate !== null) m['tokenizer.chat_template'] = meta.str(v.chatTemplate);
  return m;
}

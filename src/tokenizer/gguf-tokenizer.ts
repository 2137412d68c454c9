/**
 * A GGUF file's tokenizer (tokenizer.ggml.* metadata) as a Hugging Face tokenizer.json object,
 * built to tokenize exactly as llama.cpp does on the same file (src/llama-vocab.cpp):
 *
 *  - "gpt2": byte-level BPE. The pre-tokenizer is llama.cpp's list of split regexes for
 *    tokenizer.ggml.pre (each a Split that keeps matched and unmatched pieces, as llama.cpp's
 *    unicode_regex_split does), then the byte-to-unicode mapping; merges by rank; llama3-style
 *    types skip merges for words that are whole tokens (ignore_merges).
 *  - "llama": SentencePiece. llama.cpp merges, highest score first (leftmost on ties), any two
 *    adjacent symbols whose concatenation is a token; a symbol is a single character or a token.
 *    A BPE model reproduces that with one merge (a, b) for every split of every token into two
 *    such symbols, ranked by the token's score. Spaces become ▁, a ▁ is prepended to each run of
 *    text when add_space_prefix is on (llama.cpp prefixes every text fragment after a special
 *    token), and characters without a token fall back to <0xNN> byte tokens.
 *
 * Tokens of type CONTROL, USER_DEFINED and UNKNOWN become added tokens (split out of the text
 * before the model runs, as llama.cpp's special-token partition does with parse_special), as do
 * tokens llama.cpp treats as end-of-generation by their text.
 */
import { WeftError } from '../errors.js';
import type { GgufValue } from '../engine/gguf.js';
import { Tokenizer, type TokenizerConfigJson } from './tokenizer.js';

/** llama.cpp token types (tokenizer.ggml.token_type). */
export const GGUF_TOKEN_TYPE = { NORMAL: 1, UNKNOWN: 2, CONTROL: 3, USER_DEFINED: 4, UNUSED: 5, BYTE: 6 } as const;

/** Token texts llama.cpp treats as end of generation (and as control tokens whatever their type). */
const EOG_TEXTS = new Set([
  '<|eot_id|>', '<|im_end|>', '<|end|>', '<|return|>', '<|call|>', '<|flush|>', '<|calls|>', '<end_of_turn>', '<|endoftext|>',
  '</s>', '<|eom_id|>', '<EOT>', '_<EOT>', '[EOT]', '[EOS]', '<|end_of_text|>', '<end_of_utterance>', '<eos>', '<turn|>',
  '<|tool_response>', '<｜end▁of▁sentence｜>', '[e~[',
]);

// llama.cpp's split regexes (llama-vocab.cpp, llm_tokenizer_bpe), facts as they are there.
const GPT2_RE = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)";
const CONTRACTIONS = "(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])";
const LLAMA3_RE = `${CONTRACTIONS}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`;
const QWEN2_RE = `${CONTRACTIONS}|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+`;
const GPT4O_RE =
  `[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))*((?=[\\p{L}])([^A-Z]))+${CONTRACTIONS}?|` +
  `[^\\r\\n\\p{L}\\p{N}]?((?=[\\p{L}])([^a-z]))+((?=[\\p{L}])([^A-Z]))*${CONTRACTIONS}?|` +
  '\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n/]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+';

interface PreType { regexes: string[]; ignoreMerges?: boolean; addBos?: boolean }

const DEFAULT_PRE: PreType = { regexes: ['[\\p{P}\\$\\+<=>\\^~\\|]+', GPT2_RE, '\\p{N}+', '[0-9][0-9][0-9]'] };
const GPT2_PRE: PreType = { regexes: [GPT2_RE] };
const LLAMA3_PRE: PreType = { regexes: [LLAMA3_RE], ignoreMerges: true, addBos: true };
const QWEN2_PRE: PreType = { regexes: [QWEN2_RE] };
const SMOLLM_PRE: PreType = { regexes: ['\\p{N}', GPT2_RE] };
const GPT4O_PRE: PreType = { regexes: [GPT4O_RE] };

/** tokenizer.ggml.pre values weft knows, as llama.cpp maps them ("gpt2", which llama.cpp refuses, as "gpt-2"). */
const PRE_TYPES: Record<string, PreType> = {
  default: DEFAULT_PRE,
  'gpt-2': GPT2_PRE, gpt2: GPT2_PRE, 'phi-2': GPT2_PRE, 'roberta-bpe': GPT2_PRE, mpt: GPT2_PRE, olmo: GPT2_PRE,
  'llama-bpe': LLAMA3_PRE, llama3: LLAMA3_PRE, 'llama-v3': LLAMA3_PRE, falcon3: LLAMA3_PRE, pixtral: LLAMA3_PRE,
  qwen2: QWEN2_PRE, 'deepseek-r1-qwen': QWEN2_PRE, megrez: QWEN2_PRE, stablelm2: QWEN2_PRE,
  smollm: SMOLLM_PRE, starcoder: SMOLLM_PRE, refact: SMOLLM_PRE, 'command-r': SMOLLM_PRE, codeshell: SMOLLM_PRE,
  'gpt-4o': GPT4O_PRE, llama4: GPT4O_PRE,
};

export interface GgufTokenizerParts {
  /** A Hugging Face tokenizer.json object. */
  json: Record<string, unknown>;
  /** tokenizer_config.json-like: bos/eos tokens, add_bos_token, add_eos_token, chat_template. */
  config: TokenizerConfigJson;
  /** End-of-generation ids: eos, eot, eom and the tokens llama.cpp takes for end of generation. */
  eosTokenIds: number[];
}

interface Vocab {
  tokens: string[];
  types: number[];
  scores: number[] | null;
  ids: Map<string, number>;
}

function tokErr(source: string, msg: string): WeftError {
  return new WeftError('WEFT_TOKENIZER', `${source}: ${msg}`);
}

function readVocab(md: Map<string, GgufValue>, source: string): Vocab {
  const raw = md.get('tokenizer.ggml.tokens');
  if (!Array.isArray(raw) || raw.length === 0 || !raw.every((t) => typeof t === 'string')) {
    throw tokErr(source, 'tokenizer.ggml.tokens is missing or not a non-empty array of strings');
  }
  // llama.cpp renames empty tokens
  const tokens = (raw as string[]).map((t, i) => (t === '' ? `[EMPTY_${i}]` : t));
  const numberArray = (key: string): number[] | null => {
    const v = md.get(key);
    if (v === undefined) return null;
    if (!Array.isArray(v) || !v.every((x) => typeof x === 'number')) throw tokErr(source, `${key} is not an array of numbers`);
    if (v.length < tokens.length) throw tokErr(source, `${key} has ${v.length} entries for ${tokens.length} tokens`);
    return v as number[];
  };
  const types = numberArray('tokenizer.ggml.token_type') ?? tokens.map(() => GGUF_TOKEN_TYPE.NORMAL);
  const scores = numberArray('tokenizer.ggml.scores');
  const ids = new Map<string, number>();
  tokens.forEach((t, i) => {
    if (ids.has(t)) throw tokErr(source, `token ${JSON.stringify(t)} appears twice (ids ${ids.get(t)} and ${i})`);
    ids.set(t, i);
  });
  return { tokens, types, scores, ids };
}

/** Tokens split out of text before the model: control, user-defined, unknown, and EOG by text. */
function addedTokens(v: Vocab): { id: number; content: string; special: boolean }[] {
  const out: { id: number; content: string; special: boolean }[] = [];
  v.tokens.forEach((content, id) => {
    const type = v.types[id];
    const control = type === GGUF_TOKEN_TYPE.CONTROL || type === GGUF_TOKEN_TYPE.UNKNOWN || EOG_TEXTS.has(content);
    if (control || type === GGUF_TOKEN_TYPE.USER_DEFINED) out.push({ id, content, special: control });
  });
  return out;
}

function hfAddedToken(t: { id: number; content: string; special: boolean }): Record<string, unknown> {
  return { ...t, single_word: false, lstrip: false, rstrip: false, normalized: false };
}

function bpeModel(v: Vocab, merges: [string, string][], extra: Record<string, unknown>): Record<string, unknown> {
  return {
    type: 'BPE', dropout: null, unk_token: null, continuing_subword_prefix: null, end_of_word_suffix: null,
    fuse_unk: false, byte_fallback: false, ignore_merges: false, ...extra, vocab: Object.fromEntries(v.ids), merges,
  };
}

function gpt2Json(md: Map<string, GgufValue>, v: Vocab, pre: PreType, source: string): Record<string, unknown> {
  const raw = md.get('tokenizer.ggml.merges');
  if (!Array.isArray(raw) || !raw.every((m) => typeof m === 'string')) throw tokErr(source, 'tokenizer.ggml.merges is missing or not an array of strings');
  // llama.cpp splits a merge at the first space after its first byte
  const merges = (raw as string[]).map((m): [string, string] => {
    const at = m.indexOf(' ', 1);
    return at < 0 ? ['', ''] : [m.slice(0, at), m.slice(at + 1)];
  });
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: addedTokens(v).map(hfAddedToken),
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        ...pre.regexes.map((r) => ({ type: 'Split', pattern: { Regex: r }, behavior: 'Isolated', invert: false })),
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
      ],
    },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: false },
    model: bpeModel(v, merges, { ignore_merges: pre.ignoreMerges ?? false }),
  };
}

/**
 * The merges that make a BPE model merge as llama.cpp's SentencePiece tokenizer does: (a, b) for
 * every token t = a + b where a and b are each a single character or a token, ranked by t's
 * score (highest first; ties by id, then by the shorter left part).
 */
export function spmMerges(tokens: readonly string[], scores: readonly number[] | null): [string, string][] {
  const ids = new Map(tokens.map((t, i) => [t, i]));
  const isSymbol = (s: string): boolean => ids.has(s) || (s.length <= 2 && [...s].length === 1);
  const found: { a: string; b: string; score: number; id: number }[] = [];
  tokens.forEach((t, id) => {
    const chars = [...t];
    let left = '';
    for (let i = 1; i < chars.length; i++) {
      left += chars[i - 1];
      const right = t.slice(left.length);
      if (isSymbol(left) && isSymbol(right)) found.push({ a: left, b: right, score: scores?.[id] ?? 0, id });
    }
  });
  found.sort((x, y) => y.score - x.score || x.id - y.id || x.a.length - y.a.length);
  return found.map((m) => [m.a, m.b]);
}

function spmJson(v: Vocab, addSpacePrefix: boolean, unkId: number | null): Record<string, unknown> {
  const space = { type: 'Replace', pattern: { String: ' ' }, content: '▁' };
  return {
    version: '1.0', truncation: null, padding: null,
    added_tokens: addedTokens(v).map(hfAddedToken),
    normalizer: addSpacePrefix ? { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, space] } : space,
    pre_tokenizer: null,
    post_processor: null,
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        ...(addSpacePrefix ? [{ type: 'Strip', content: ' ', start: 1, stop: 0 }] : []),
      ],
    },
    model: bpeModel(v, spmMerges(v.tokens, v.scores), { byte_fallback: true, unk_token: unkId === null ? null : v.tokens[unkId] }),
  };
}

/** A token id from the metadata, or llama.cpp's default when absent; null when out of range. */
function specialId(md: Map<string, GgufValue>, key: string, fallback: number | null, n: number): number | null {
  const v = md.get(`tokenizer.ggml.${key}`);
  const id = typeof v === 'number' && Number.isInteger(v) && v >= 0 && v < n ? v : fallback;
  return id !== null && id < n ? id : null;
}

function flag(md: Map<string, GgufValue>, key: string, fallback: boolean): boolean {
  const v = md.get(`tokenizer.ggml.${key}`);
  return typeof v === 'boolean' ? v : fallback;
}

/**
 * The tokenizer of a GGUF file's metadata, in the form the tokenizer library loads. WEFT_TOKENIZER
 * (naming `source`) for a model type other than "gpt2" and "llama", an unknown pre-tokenizer, or
 * malformed vocabulary arrays.
 */
export function tokenizerFromGguf(metadata: Map<string, GgufValue>, source = 'GGUF metadata'): GgufTokenizerParts {
  const model = metadata.get('tokenizer.ggml.model');
  if (model !== 'gpt2' && model !== 'llama') {
    throw tokErr(source, `tokenizer.ggml.model ${JSON.stringify(model ?? null)} is not supported (supported: "gpt2" byte-level BPE, "llama" SentencePiece)`);
  }
  const v = readVocab(metadata, source);
  const n = v.tokens.length;
  let json: Record<string, unknown>;
  let bos: number | null;
  let eos: number | null;
  let addBos: boolean;
  if (model === 'gpt2') {
    const preName = metadata.get('tokenizer.ggml.pre') ?? 'default';
    const pre = typeof preName === 'string' ? PRE_TYPES[preName] : undefined;
    if (!pre) throw tokErr(source, `tokenizer.ggml.pre ${JSON.stringify(preName)} is not a pre-tokenizer weft knows (known: ${Object.keys(PRE_TYPES).join(', ')})`);
    json = gpt2Json(metadata, v, pre, source);
    bos = specialId(metadata, 'bos_token_id', 11, n);
    eos = specialId(metadata, 'eos_token_id', 11, n);
    addBos = flag(metadata, 'add_bos_token', pre.addBos ?? false);
  } else {
    const unk = specialId(metadata, 'unknown_token_id', 0, n);
    json = spmJson(v, flag(metadata, 'add_space_prefix', true), unk);
    bos = specialId(metadata, 'bos_token_id', 1, n);
    eos = specialId(metadata, 'eos_token_id', 2, n);
    addBos = flag(metadata, 'add_bos_token', true);
  }
  const eog = new Set<number>(eos === null ? [] : [eos]);
  for (const key of ['eot_token_id', 'eom_token_id']) {
    const id = specialId(metadata, key, null, n);
    if (id !== null) eog.add(id);
  }
  v.tokens.forEach((t, id) => EOG_TEXTS.has(t) && eog.add(id));
  const template = metadata.get('tokenizer.chat_template');
  const config: TokenizerConfigJson = {
    bos_token: bos === null ? null : v.tokens[bos],
    eos_token: eos === null ? null : v.tokens[eos],
    add_bos_token: addBos && bos !== null,
    add_eos_token: flag(metadata, 'add_eos_token', false) && eos !== null,
    clean_up_tokenization_spaces: false,
    ...(typeof template === 'string' ? { chat_template: template } : {}),
  };
  return { json, config, eosTokenIds: [...eog] };
}

/** tokenizerFromGguf, loaded: a Tokenizer for a GGUF file's metadata. */
export function loadGgufTokenizer(metadata: Map<string, GgufValue>, source = 'GGUF metadata'): Tokenizer {
  const parts = tokenizerFromGguf(metadata, source);
  return Tokenizer.fromJSON(parts.json, parts.config, { eosTokenIds: parts.eosTokenIds });
}

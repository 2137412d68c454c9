/**
 * src/tokenizer/gguf-tokenizer.ts: the tokenizer of a GGUF file's metadata must tokenize byte for
 * byte as llama.cpp does on the same file (node-llama-cpp's prebuilt CPU build, never downloaded
 * or built). Two vocabularies, each in a GGUF file with a tiny random llama model so llama.cpp
 * loads it: the default model's byte-level BPE ("gpt2", under several tokenizer.ggml.pre types),
 * and a SentencePiece vocabulary with scores and byte tokens learned here from a small corpus
 * ("llama"). Texts: test/fixtures/tokenizer/texts.json plus hard cases.
 */
import { readFileSync } from 'node:fs';
import { mkdtemp, rm } from 'node:fs/promises';
import os from 'node:os';
import path, { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import type { LlamaModel } from 'node-llama-cpp';
import { getCpuLlama, mulberry32 } from '../bench/llamacpp.js';
import { TRAINING_TEXT } from '../scripts/make-tiny-model.js';
import { encodeFloats } from '../src/engine/dtype.js';
import { meta as m, readGguf, writeGguf, type GgufMeta, type GgufTensorToWrite } from '../src/engine/gguf.js';
import { WeftError } from '../src/errors.js';
import { GGUF_TOKEN_TYPE, loadGgufTokenizer, spmMerges, tokenizerFromGguf } from '../src/tokenizer/gguf-tokenizer.js';
import type { Tokenizer } from '../src/tokenizer/tokenizer.js';

const HERE = import.meta.dirname;
const FIXTURE_TEXTS = (JSON.parse(readFileSync(join(HERE, 'fixtures', 'tokenizer', 'texts.json'), 'utf8')) as { texts: string[] }).texts;

const HARD_TEXTS = [
  '', ' ', '  ', '   x', 'x   ', '  two  spaces  ', '\n', '\n\n x\n', ' \n \n', '\r\n\r\n', 'a\tb\t\tc',
  '0', '12', '123', '1234', '12345678901', '3.14159 2,718 1e10 -7', '٣٤٥ ４５６',
  '😀', ' 😀', '😀😀😀', '👩‍👩‍👧‍👦', '🏳️‍🌈', '日本語', ' 日本語 ', '한국어', 'Ωμέγα',
  '\u0000\u0001\u001f\u007f', 'ǅ ǈ ǋ', '\u{10ffff}', 'x\u200dy', 'é vs é', "it's I'M we'Ve", "'''", '▁ already ▁▁ meta',
  'the the the the', 'thethethe', 'The lighthouse keeper woke before the gulls.',
];

let root = '';
beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'weft-gguf-tok-'));
});
afterAll(async () => {
  if (root) await rm(root, { recursive: true, force: true });
});

/** A tiny random f32 llama (1 layer, 32 wide) around a vocabulary, so that llama.cpp loads the file. */
async function writeTinyLlama(file: string, nVocab: number, tokenizer: Record<string, GgufMeta>): Promise<void> {
  const H = 32;
  const FF = 64;
  const rand = mulberry32(nVocab);
  const t = (name: string, shape: number[]): GgufTensorToWrite => ({
    name, type: 'F32', shape, data: encodeFloats(Array.from({ length: shape.reduce((a, b) => a * b, 1) }, () => rand() - 0.5), 'F32'),
  });
  const tensors = [
    t('token_embd.weight', [nVocab, H]), t('blk.0.attn_norm.weight', [H]), t('blk.0.attn_q.weight', [H, H]), t('blk.0.attn_k.weight', [H, H]),
    t('blk.0.attn_v.weight', [H, H]), t('blk.0.attn_output.weight', [H, H]), t('blk.0.ffn_norm.weight', [H]), t('blk.0.ffn_gate.weight', [FF, H]),
    t('blk.0.ffn_up.weight', [FF, H]), t('blk.0.ffn_down.weight', [H, FF]), t('output_norm.weight', [H]), t('output.weight', [nVocab, H]),
  ];
  const metadata: Record<string, GgufMeta> = {
    'general.architecture': m.str('llama'),
    'general.name': m.str('tokenizer-test'),
    'general.file_type': m.u32(0),
    'llama.context_length': m.u32(64),
    'llama.embedding_length': m.u32(H),
    'llama.block_count': m.u32(1),
    'llama.feed_forward_length': m.u32(FF),
    'llama.rope.dimension_count': m.u32(16),
    'llama.attention.head_count': m.u32(2),
    'llama.attention.head_count_kv': m.u32(2),
    'llama.attention.layer_norm_rms_epsilon': m.f32(1e-5),
    ...tokenizer,
  };
  await writeGguf(file, { metadata, tensors });
}

/** The default model's byte-level BPE as tokenizer.ggml.* metadata. */
function defaultModelVocab(): { meta: Record<string, GgufMeta>; n: number } {
  const tj = JSON.parse(readFileSync(join(HERE, '..', 'models', 'default', 'tokenizer.json'), 'utf8')) as {
    model: { vocab: Record<string, number>; merges: [string, string][] };
    added_tokens: { id: number; content: string; special: boolean }[];
  };
  const tokens: string[] = [];
  for (const [tok, id] of Object.entries(tj.model.vocab)) tokens[id] = tok;
  const types = tokens.map(() => GGUF_TOKEN_TYPE.NORMAL as number);
  for (const a of tj.added_tokens) types[a.id] = a.special ? GGUF_TOKEN_TYPE.CONTROL : GGUF_TOKEN_TYPE.USER_DEFINED;
  // One user-defined token on top, as added tokens in real files are.
  tokens.push('<|user_tag|>');
  types.push(GGUF_TOKEN_TYPE.USER_DEFINED);
  return {
    n: tokens.length,
    meta: {
      'tokenizer.ggml.model': m.str('gpt2'),
      'tokenizer.ggml.tokens': m.strings(tokens),
      'tokenizer.ggml.token_type': m.i32s(types),
      'tokenizer.ggml.merges': m.strings(tj.model.merges.map((m) => m.join(' '))),
      'tokenizer.ggml.bos_token_id': m.u32(0),
      'tokenizer.ggml.eos_token_id': m.u32(0),
      'tokenizer.chat_template': m.str('{% for m in messages %}{{ m.content }}{% endfor %}'),
    },
  };
}

/**
 * A SentencePiece-style vocabulary learned here: <unk>, <s>, </s>, the 256 byte tokens, BPE pieces
 * over ▁-joined words of a corpus (score: minus the merge step), then the corpus' single
 * characters except the rarest (so byte fallback is needed), a control and a user-defined token.
 */
function spmVocab(corpus: string, numMerges: number): { tokens: string[]; scores: number[]; types: number[] } {
  const words = new Map<string, number>();
  for (const w of corpus.split(/ +/)) if (w) words.set(`▁${w}`, (words.get(`▁${w}`) ?? 0) + 1);
  let seqs = [...words].map(([w, count]) => ({ syms: [...w], count }));
  const charCount = new Map<string, number>();
  for (const s of seqs) for (const c of s.syms) charCount.set(c, (charCount.get(c) ?? 0) + s.count);
  const pieces: string[] = [];
  for (let m = 0; m < numMerges; m++) {
    const pairs = new Map<string, number>();
    for (const s of seqs) for (let i = 0; i + 1 < s.syms.length; i++) {
      const k = `${s.syms[i]}\u0000${s.syms[i + 1]}`;
      pairs.set(k, (pairs.get(k) ?? 0) + s.count);
    }
    let best = '';
    let bestCount = 1;
    for (const [k, c] of pairs) if (c > bestCount || (c === bestCount && best !== '' && k < best)) [best, bestCount] = [k, c];
    if (!best) break;
    const [a, b] = best.split('\u0000');
    pieces.push(a + b);
    seqs = seqs.map((s) => {
      const out: string[] = [];
      for (let i = 0; i < s.syms.length; i++) {
        if (i + 1 < s.syms.length && s.syms[i] === a && s.syms[i + 1] === b) out.push(a + (s.syms[++i] as string));
        else out.push(s.syms[i]);
      }
      return { syms: out, count: s.count };
    });
  }
  const chars = [...charCount].filter(([, c]) => c > 1).sort((x, y) => y[1] - x[1] || (x[0] < y[0] ? -1 : 1)).map(([c]) => c);
  const tokens = ['<unk>', '<s>', '</s>'];
  const types: number[] = [GGUF_TOKEN_TYPE.UNKNOWN, GGUF_TOKEN_TYPE.CONTROL, GGUF_TOKEN_TYPE.CONTROL];
  const scores = [0, 0, 0];
  for (let b = 0; b < 256; b++) {
    tokens.push(`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`);
    types.push(GGUF_TOKEN_TYPE.BYTE);
    scores.push(0);
  }
  const seen = new Set(tokens);
  const add = (t: string, type: number, score: number): void => {
    if (seen.has(t)) return;
    seen.add(t);
    tokens.push(t);
    types.push(type);
    scores.push(score);
  };
  pieces.forEach((p, i) => add(p, GGUF_TOKEN_TYPE.NORMAL, -i));
  chars.forEach((c, i) => add(c, GGUF_TOKEN_TYPE.NORMAL, -numMerges - i));
  // Pieces of characters that have no token themselves: llama.cpp still merges them.
  add('😀😃', GGUF_TOKEN_TYPE.NORMAL, 5);
  add('▁日本', GGUF_TOKEN_TYPE.NORMAL, -3.5);
  add('<|im_end|>', GGUF_TOKEN_TYPE.CONTROL, 0);
  add('<|tag|>', GGUF_TOKEN_TYPE.USER_DEFINED, 0);
  return { tokens, scores, types };
}

function spmMeta(v: { tokens: string[]; scores: number[]; types: number[] }, extra: Record<string, GgufMeta> = {}): Record<string, GgufMeta> {
  return {
    'tokenizer.ggml.model': m.str('llama'),
    'tokenizer.ggml.tokens': m.strings(v.tokens),
    'tokenizer.ggml.scores': m.f32s(v.scores),
    'tokenizer.ggml.token_type': m.i32s(v.types),
    'tokenizer.ggml.bos_token_id': m.u32(1),
    'tokenizer.ggml.eos_token_id': m.u32(2),
    'tokenizer.ggml.unknown_token_id': m.u32(0),
    ...extra,
  };
}

async function loadLlamaCpp(file: string, vocabOnly: boolean): Promise<LlamaModel> {
  const llama = await getCpuLlama();
  return llama.loadModel({ modelPath: file, gpuLayers: 0, vocabOnly });
}

const SPECIAL_TEXTS = ['<|endoftext|>', 'a<|endoftext|>b', ' <|endoftext|> ', 'x<|user_tag|>y', '<s>hi</s>', ' <s> x', '<|im_end|>\n', 'a<|tag|>b<unk>c'];

/**
 * weft's ids must equal llama.cpp's (parsing special tokens, as weft does), with and without BOS;
 * a text that names no control token gets the same ids without special parsing, and decodes back.
 */
function compare(tok: Tokenizer, model: LlamaModel, texts: readonly string[], specials: readonly string[], lossless = (_text: string) => true): number {
  const controls = [...model.iterateAllTokens()].filter((t) => model.isSpecialToken(t)).map((t) => model.detokenize([t], true)).filter((s) => s.length > 0);
  let compared = 0;
  for (const text of [...texts, ...specials]) {
    const want = Array.from(model.tokenize(text, true), Number);
    expect(tok.encode(text, { addSpecialTokens: false }), JSON.stringify(text)).toEqual(want);
    const bos = model.tokens.bos;
    const withBos = model.tokens.shouldPrependBosToken && bos !== null && want[0] !== bos ? [Number(bos), ...want] : want;
    expect(tok.encode(text), `${JSON.stringify(text)} with BOS`).toEqual(withBos);
    if (!controls.some((c) => text.includes(c))) {
      // Without special parsing llama.cpp gives the same ids for text that names no special token.
      expect(Array.from(model.tokenize(text, false), Number), `${JSON.stringify(text)} parse_special=false`).toEqual(want);
      if (lossless(text)) expect(tok.decode(want), `decode ${JSON.stringify(text)}`).toBe(text);
    }
    compared++;
  }
  return compared;
}

describe('tokenizerFromGguf: gpt2 byte-level BPE, the same ids as llama.cpp', () => {
  const preTypes = ['gpt-2', 'llama-bpe', 'qwen2', 'smollm', 'gpt-4o', 'default'];
  for (const [i, pre] of preTypes.entries()) {
    it(`tokenizer.ggml.pre = "${pre}"`, async () => {
      const vocab = defaultModelVocab();
      const file = path.join(root, `gpt2-${pre}.gguf`);
      await writeTinyLlama(file, vocab.n, { ...vocab.meta, 'tokenizer.ggml.pre': m.str(pre) });
      const g = await readGguf(file);
      const tok = loadGgufTokenizer(g.metadata, file);
      // The first file is loaded whole (a model llama.cpp can run); the others' vocabulary only.
      const model = await loadLlamaCpp(file, i > 0);
      try {
        expect(compare(tok, model, [...FIXTURE_TEXTS, ...HARD_TEXTS], SPECIAL_TEXTS)).toBe(FIXTURE_TEXTS.length + HARD_TEXTS.length + SPECIAL_TEXTS.length);
        expect(tok.chatTemplate).toBe('{% for m in messages %}{{ m.content }}{% endfor %}');
        expect(tok.eosTokenIds).toEqual([0]);
        expect(tok.isSpecialId(0)).toBe(true);
        expect(tok.isSpecialId(vocab.n - 1)).toBe(false); // user-defined: split out, but not special
      } finally {
        await model.dispose();
      }
    }, 60_000);
  }
});

describe('tokenizerFromGguf: SentencePiece ("llama") with scores and byte fallback, the same ids as llama.cpp', () => {
  const corpus = [TRAINING_TEXT, ...FIXTURE_TEXTS.slice(0, 30)].join(' ').replace(/\s+/g, ' ');
  const vocab = spmVocab(corpus, 700);

  it('the learned vocabulary has byte tokens, merges from scores, and characters that need byte fallback', () => {
    expect(vocab.tokens.length).toBeGreaterThan(600);
    expect(vocab.tokens).toContain('<0x0A>');
    const merges = spmMerges(vocab.tokens, vocab.scores);
    // highest score first: the hand-made piece (5), then the first learned one (0)
    expect(merges.slice(0, 2).map((m) => m.join(''))).toEqual(['😀😃', vocab.tokens[259]]);
    expect(vocab.tokens.includes('😀')).toBe(false);
  });

  for (const addSpacePrefix of [true, false]) {
    it(`add_space_prefix = ${addSpacePrefix}`, async () => {
      const file = path.join(root, `spm-${addSpacePrefix}.gguf`);
      await writeTinyLlama(file, vocab.tokens.length, spmMeta(vocab, { 'tokenizer.ggml.add_space_prefix': m.bool(addSpacePrefix) }));
      const g = await readGguf(file);
      const tok = loadGgufTokenizer(g.metadata, file);
      const model = await loadLlamaCpp(file, !addSpacePrefix);
      try {
        // SentencePiece spells spaces ▁: a ▁ in the text decodes to a space
        compare(tok, model, [...FIXTURE_TEXTS, ...HARD_TEXTS, '😀😃 😃😀', '日本の日本'], SPECIAL_TEXTS, (text) => !text.includes('▁'));
        expect(tok.bosTokenId).toBe(1);
        expect(new Set(tok.eosTokenIds)).toEqual(new Set([2, vocab.tokens.indexOf('<|im_end|>')]));
        // byte fallback: a character without a token is its UTF-8 bytes
        expect(tok.encode('😀', { addSpecialTokens: false }).slice(-4)).toEqual([0xf0, 0x9f, 0x98, 0x80].map((b) => b + 3));
      } finally {
        await model.dispose();
      }
    }, 60_000);
  }
});

describe('tokenizerFromGguf: bad metadata', () => {
  const md = (o: Record<string, unknown>) => new Map(Object.entries(o)) as Map<string, never>;
  const fails = (m: Map<string, never>, re: RegExp) => {
    let err: unknown;
    try {
      tokenizerFromGguf(m, 'x.gguf');
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(WeftError);
    expect((err as WeftError).code).toBe('WEFT_TOKENIZER');
    expect((err as WeftError).message).toMatch(re);
  };
  it('names the fault', () => {
    fails(md({}), /x\.gguf: tokenizer.ggml.model null is not supported/);
    fails(md({ 'tokenizer.ggml.model': 'bert', 'tokenizer.ggml.tokens': ['a'] }), /tokenizer.ggml.model "bert" is not supported/);
    fails(md({ 'tokenizer.ggml.model': 'gpt2' }), /tokenizer.ggml.tokens is missing/);
    fails(md({ 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.tokens': ['a', 'b'], 'tokenizer.ggml.merges': [], 'tokenizer.ggml.pre': 'martian' }), /tokenizer.ggml.pre "martian" is not a pre-tokenizer weft knows/);
    fails(md({ 'tokenizer.ggml.model': 'gpt2', 'tokenizer.ggml.tokens': ['a', 'b'] }), /tokenizer.ggml.merges is missing/);
    fails(md({ 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': ['a', 'a'] }), /token "a" appears twice \(ids 0 and 1\)/);
    fails(md({ 'tokenizer.ggml.model': 'llama', 'tokenizer.ggml.tokens': ['a', 'b'], 'tokenizer.ggml.scores': [1] }), /tokenizer.ggml.scores has 1 entries for 2 tokens/);
  });
});

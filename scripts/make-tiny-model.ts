/**
 * Writes a deterministic random model as a Hugging Face directory: config.json,
 * model.safetensors (or 2 shards + index), tokenizer.json, tokenizer_config.json.
 *
 *   node dist/scripts/make-tiny-model.js --out DIR [--arch llama|mistral|qwen2] [--dtype f32|f16|bf16]
 *        [--seed 1] [--hidden 64] [--layers 2] [--heads 4] [--kv-heads 2] [--head-dim N] [--ffn 128]
 *        [--vocab 512] [--max-pos 256] [--tie true|false] [--rope-scaling none|llama3]
 *        [--rope-theta 10000] [--rms-eps 1e-5] [--init-scale 1] [--shards 1|2] [--preset bench100m]
 *
 * Same options + seed -> byte-identical files. Every tensor draws from its own PRNG stream
 * (seeded from the seed and the tensor name), so sharding does not change any value.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import path from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { encodeFloats } from '../src/engine/dtype.js';
import { writeSafetensorsLazy, type DType, type LazyTensorToWrite } from '../src/engine/safetensors.js';

export type TinyArch = 'llama' | 'mistral' | 'qwen2';
export type TinyDType = 'f32' | 'f16' | 'bf16';

export interface TinyModelOptions {
  arch?: TinyArch;
  dtype?: TinyDType;
  seed?: number;
  hidden?: number;
  layers?: number;
  heads?: number;
  kvHeads?: number;
  /** default hidden / heads */
  headDim?: number;
  ffn?: number;
  vocab?: number;
  maxPos?: number;
  tie?: boolean;
  /** 'llama3' turns on Llama-3 rope scaling (factor 8, low 1, high 4, original max pos = max(16, maxPos/4)) */
  ropeScaling?: 'llama3' | 'none' | boolean;
  ropeTheta?: number;
  rmsEps?: number;
  /** multiplies every random weight's std (default 1) */
  initScale?: number;
  shards?: 1 | 2;
}

export interface TinyModelResult {
  dir: string;
  config: Record<string, unknown>;
  files: string[];
  /** resolved options */
  options: Required<Omit<TinyModelOptions, 'ropeScaling'>> & { ropeScaling: 'llama3' | 'none' };
}

export const DEFAULTS = {
  arch: 'llama' as TinyArch,
  dtype: 'f32' as TinyDType,
  seed: 1,
  hidden: 64,
  layers: 2,
  heads: 4,
  kvHeads: 2,
  ffn: 128,
  vocab: 512,
  maxPos: 256,
  tie: false,
  ropeTheta: 10000,
  rmsEps: 1e-5,
  initScale: 1,
  shards: 1 as 1 | 2,
};

export const PRESETS: Record<string, TinyModelOptions> = {
  bench100m: {
    hidden: 768,
    layers: 12,
    heads: 12,
    kvHeads: 4,
    ffn: 2048,
    vocab: 50257,
    maxPos: 4096,
    dtype: 'f16',
    tie: true,
    ropeTheta: 500000,
  },
  // Llama-3.2-1B's dimensions (random weights; llama3 RoPE scaling left out)
  llama1b: {
    hidden: 2048,
    layers: 16,
    heads: 32,
    kvHeads: 8,
    ffn: 8192,
    vocab: 128256,
    maxPos: 8192,
    dtype: 'f16',
    tie: true,
    ropeTheta: 500000,
  },
};

export const SPECIAL_TOKEN = '<|endoftext|>';

// ---------------------------------------------------------------------------------------------
// PRNG: splitmix32 seeds a xoshiro128** stream; "normal-ish" = Irwin-Hall sum of 4 uniforms
// (pure IEEE arithmetic, so the bytes do not depend on the platform's Math.log/cos).

function splitmix32(state: { s: number }): number {
  state.s = (state.s + 0x9e3779b9) | 0;
  let z = state.s;
  z = Math.imul(z ^ (z >>> 16), 0x85ebca6b);
  z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35);
  return (z ^ (z >>> 16)) >>> 0;
}

function fnv1a(s: string): number {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193);
  }
  return h >>> 0;
}

export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;
  constructor(seed: number, stream = '') {
    const st = { s: (seed ^ fnv1a(stream)) | 0 };
    // mix the high part of large seeds in as well
    st.s = (st.s + Math.floor(seed / 4294967296)) | 0;
    this.a = splitmix32(st);
    this.b = splitmix32(st);
    this.c = splitmix32(st);
    this.d = splitmix32(st);
    if ((this.a | this.b | this.c | this.d) === 0) this.a = 1;
  }
  /** uniform u32 */
  nextU32(): number {
    const r = Math.imul(rotl(Math.imul(this.b, 5), 7), 9);
    const t = this.b << 9;
    this.c ^= this.a;
    this.d ^= this.b;
    this.b ^= this.c;
    this.a ^= this.d;
    this.c ^= t;
    this.d = rotl(this.d, 11);
    return r >>> 0;
  }
  /** uniform in [0, 1) */
  uniform(): number {
    return this.nextU32() / 4294967296;
  }
  /** approximately N(0, 1): (sum of 4 uniforms - 2) * sqrt(3) */
  normal(): number {
    return (this.uniform() + this.uniform() + this.uniform() + this.uniform() - 2) * 1.7320508075688772;
  }
}

function rotl(x: number, k: number): number {
  return (x << k) | (x >>> (32 - k));
}

// ---------------------------------------------------------------------------------------------
// Tokenizer: GPT-2 style byte-level BPE learned from a small built-in text.

/** GPT-2's bytes_to_unicode: the order of this array is the id order of the 256 byte tokens. */
export function bytesToUnicode(): { bytes: number[]; chars: string[] } {
  const bs: number[] = [];
  for (let b = 33; b <= 126; b++) bs.push(b);
  for (let b = 161; b <= 172; b++) bs.push(b);
  for (let b = 174; b <= 255; b++) bs.push(b);
  const cs = [...bs];
  let n = 0;
  for (let b = 0; b < 256; b++) {
    if (!bs.includes(b)) {
      bs.push(b);
      cs.push(256 + n);
      n++;
    }
  }
  return { bytes: bs, chars: cs.map((c) => String.fromCodePoint(c)) };
}

/** The GPT-2 pre-tokenizer pattern (as used by the ByteLevel pre-tokenizer with use_regex). */
export const GPT2_PATTERN = /'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+/gu;

/** Original text written for this generator; only used to learn BPE merges. */
export const TRAINING_TEXT = `The lighthouse keeper woke before the gulls, as he had done for thirty years. He climbed the
ninety-one steps, wiped the salt from the great lens, and wrote the weather in his book: wind from
the west, a light rain, the sea running high along the northern rocks. Nobody read the book any
more, but he kept it the way other people keep a garden, because the work was small and honest
and the days felt shorter when they were written down.

In the village below, the baker was already pulling bread from the oven. She sold the first loaves
to the fishermen, who paid in coins and stories. One of them said he had seen a whale near the
harbour mouth; another said it was only a log, and that the first man needed new glasses. They
argued about it until the boats were ready, and then they argued about the price of diesel, the
football results, and whether the new school teacher would stay through the winter.

The teacher, for her part, had no plans to leave. She liked the small classroom with its twelve
desks and its window that looked out over the water. On Monday she taught the children to count
in fives and tens. On Tuesday they measured the rain in a glass jar and drew a chart of it. On
Wednesday they wrote letters to a school in a city far away, asking what the children there could
see from their windows. The answers came back three weeks later: trains, towers, a river, a park
with a statue of a horse, and one drawing of a cat sitting on a very tall building.

Computers in the village were old but reliable. The post office kept a machine that printed
labels, and the library had two terminals where people checked the ferry times, read the news,
and sent messages to relatives in other countries. The librarian said that a good system should
be like a good bridge: you should not notice it until the day it is missing. She wrote her notes
in a small notebook, numbered 1, 2, 3 and so on, and she never lost one of them.

When the storm finally arrived in October, the lights stayed on. The keeper watched the waves
climb the rocks and fall back, climb and fall, and he wrote in his book that the night was long
but the lamp was steady. In the morning the children ran down to the beach to look for treasure.
They found rope, a green bottle, a wooden crate with foreign letters on it, and a starfish that
they carried back to the water, very carefully, one small step at a time.
`;

/** BPE training: returns merges (pairs of token strings) in rank order, as many as the text yields. */
export function learnMerges(text: string, maxNewTokens: number): [string, string][] {
  const { bytes, chars } = bytesToUnicode();
  const byteChar = new Array<string>(256);
  for (let i = 0; i < 256; i++) byteChar[bytes[i]] = chars[i];
  const enc = new TextEncoder();
  // pre-tokenize and map every word to its byte-level symbols
  const wordCounts = new Map<string, number>();
  for (const m of text.matchAll(GPT2_PATTERN)) {
    const w = Array.from(enc.encode(m[0]), (b) => byteChar[b]).join('');
    wordCounts.set(w, (wordCounts.get(w) ?? 0) + 1);
  }
  const words: { syms: string[]; count: number }[] = [...wordCounts.entries()]
    .sort((a, b) => (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0))
    .map(([w, count]) => ({ syms: Array.from(w), count }));
  const vocab = new Set<string>(chars);
  const merges: [string, string][] = [];
  let added = 0;
  while (added < maxNewTokens) {
    const counts = new Map<string, number>();
    for (const w of words) {
      for (let i = 0; i + 1 < w.syms.length; i++) {
        const k = w.syms[i] + ' ' + w.syms[i + 1];
        counts.set(k, (counts.get(k) ?? 0) + w.count);
      }
    }
    if (counts.size === 0) break;
    let best = '';
    let bestCount = -1;
    for (const [k, c] of counts) {
      if (c > bestCount || (c === bestCount && k < best)) {
        best = k;
        bestCount = c;
      }
    }
    const [a, b] = best.split(' ') as [string, string];
    const ab = a + b;
    merges.push([a, b]);
    if (!vocab.has(ab)) {
      vocab.add(ab);
      added++;
    }
    for (const w of words) {
      const s = w.syms;
      const out: string[] = [];
      for (let i = 0; i < s.length; i++) {
        if (i + 1 < s.length && s[i] === a && s[i + 1] === b) {
          out.push(ab);
          i++;
        } else out.push(s[i]);
      }
      w.syms = out;
    }
  }
  return merges;
}

export interface TokenizerFiles {
  tokenizerJson: Record<string, unknown>;
  tokenizerConfig: Record<string, unknown>;
  /** id of <|endoftext|> (= vocab - 1) */
  eosId: number;
}

/**
 * Builds tokenizer.json / tokenizer_config.json with exactly `vocabSize` tokens: 256 byte tokens,
 * learned merges (padded with synthetic "token + letter" merges when the text runs out), and
 * <|endoftext|> as the last id.
 */
export function buildTokenizer(vocabSize: number, maxLength: number): TokenizerFiles {
  if (!Number.isInteger(vocabSize) || vocabSize < 257) throw new Error(`vocab must be an integer >= 257, got ${vocabSize}`);
  const { chars } = bytesToUnicode();
  const target = vocabSize - 1 - 256; // new tokens from merges
  const merges = learnMerges(TRAINING_TEXT, target);
  const vocab = new Map<string, number>();
  chars.forEach((c, i) => vocab.set(c, i));
  for (const [a, b] of merges) if (!vocab.has(a + b)) vocab.set(a + b, vocab.size);
  // pad with synthetic merges: existing token + a frequent character, in id order
  const extra = 'etaoinshrdlucmfwypvbgkjqxzETAOINSHRDLUCMFWYPVBGKJQXZ0123456789'.split('');
  const space = chars[bytesToUnicode().bytes.indexOf(32)]; // 'Ġ'
  extra.push(space);
  let cursor = 0;
  while (vocab.size < 256 + target) {
    const base = [...vocab.keys()];
    let progressed = false;
    for (; cursor < base.length && vocab.size < 256 + target; cursor++) {
      const tok = base[cursor];
      for (const c of extra) {
        if (vocab.size >= 256 + target) break;
        const s = tok + c;
        if (!vocab.has(s)) {
          vocab.set(s, vocab.size);
          merges.push([tok, c]);
          progressed = true;
        }
      }
    }
    if (!progressed && cursor >= base.length) break;
  }
  if (vocab.size !== 256 + target) throw new Error(`tokenizer: could not reach ${256 + target} tokens`);
  const eosId = vocabSize - 1;
  vocab.set(SPECIAL_TOKEN, eosId);

  const byteLevel = { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true };
  const tokenizerJson = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: [
      { id: eosId, content: SPECIAL_TOKEN, single_word: false, lstrip: false, rstrip: false, normalized: false, special: true },
    ],
    normalizer: null,
    pre_tokenizer: byteLevel,
    post_processor: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: false, use_regex: true },
    decoder: { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: false,
      vocab: Object.fromEntries(vocab),
      merges: merges.map(([a, b]) => `${a} ${b}`),
    },
  };
  const tokenizerConfig = {
    add_bos_token: false,
    add_eos_token: false,
    add_prefix_space: false,
    added_tokens_decoder: {
      [String(eosId)]: { content: SPECIAL_TOKEN, lstrip: false, normalized: false, rstrip: false, single_word: false, special: true },
    },
    bos_token: SPECIAL_TOKEN,
    eos_token: SPECIAL_TOKEN,
    unk_token: SPECIAL_TOKEN,
    clean_up_tokenization_spaces: false,
    model_max_length: maxLength,
    tokenizer_class: 'PreTrainedTokenizerFast',
    chat_template:
      "{% for message in messages %}{{ message['role'] + ': ' + message['content'] + '\\n' }}{% endfor %}" +
      "{% if add_generation_prompt %}{{ 'assistant: ' }}{% endif %}",
  };
  return { tokenizerJson, tokenizerConfig, eosId };
}

// ---------------------------------------------------------------------------------------------
// Model

const TORCH_DTYPE: Record<TinyDType, string> = { f32: 'float32', f16: 'float16', bf16: 'bfloat16' };
const ST_DTYPE: Record<TinyDType, DType> = { f32: 'F32', f16: 'F16', bf16: 'BF16' };

function resolveOptions(opts: TinyModelOptions): TinyModelResult['options'] {
  const o = { ...DEFAULTS, ...stripUndefined(opts) } as TinyModelOptions & typeof DEFAULTS;
  const rs = opts.ropeScaling === true ? 'llama3' : opts.ropeScaling === false || opts.ropeScaling === undefined ? 'none' : opts.ropeScaling;
  const headDim = opts.headDim ?? o.hidden / o.heads;
  const r = { ...o, headDim, ropeScaling: rs } as TinyModelResult['options'];
  const ints: (keyof typeof r)[] = ['hidden', 'layers', 'heads', 'kvHeads', 'headDim', 'ffn', 'vocab', 'maxPos'];
  for (const k of ints) {
    const v = r[k];
    if (typeof v !== 'number' || !Number.isInteger(v) || v <= 0) throw new Error(`makeTinyModel: ${String(k)} must be a positive integer, got ${String(v)}`);
  }
  if (r.heads % r.kvHeads !== 0) throw new Error(`makeTinyModel: heads (${r.heads}) must be divisible by kvHeads (${r.kvHeads})`);
  if (r.headDim % 2 !== 0) throw new Error(`makeTinyModel: headDim (${r.headDim}) must be even`);
  if (r.vocab < 257) throw new Error(`makeTinyModel: vocab must be >= 257`);
  if (!['llama', 'mistral', 'qwen2'].includes(r.arch)) throw new Error(`makeTinyModel: unknown arch ${r.arch}`);
  if (!['f32', 'f16', 'bf16'].includes(r.dtype)) throw new Error(`makeTinyModel: unknown dtype ${r.dtype}`);
  if (r.ropeScaling !== 'none' && r.ropeScaling !== 'llama3') throw new Error(`makeTinyModel: ropeScaling must be llama3 or none`);
  if (r.ropeScaling === 'llama3' && r.arch !== 'llama') throw new Error('makeTinyModel: llama3 rope scaling needs arch llama');
  if (r.shards !== 1 && r.shards !== 2) throw new Error('makeTinyModel: shards must be 1 or 2');
  if (!Number.isSafeInteger(r.seed)) throw new Error('makeTinyModel: seed must be an integer');
  return r;
}

function stripUndefined<T extends object>(o: T): Partial<T> {
  return Object.fromEntries(Object.entries(o).filter(([, v]) => v !== undefined)) as Partial<T>;
}

/** The HF config.json for the resolved options. */
export function buildHfConfig(o: TinyModelResult['options'], eosId: number): Record<string, unknown> {
  const common: Record<string, unknown> = {
    vocab_size: o.vocab,
    hidden_size: o.hidden,
    intermediate_size: o.ffn,
    num_hidden_layers: o.layers,
    num_attention_heads: o.heads,
    num_key_value_heads: o.kvHeads,
    head_dim: o.headDim,
    hidden_act: 'silu',
    max_position_embeddings: o.maxPos,
    initializer_range: 0.02,
    rms_norm_eps: o.rmsEps,
    use_cache: true,
    rope_theta: o.ropeTheta,
    tie_word_embeddings: o.tie,
    attention_dropout: 0.0,
    bos_token_id: eosId,
    eos_token_id: eosId,
    torch_dtype: TORCH_DTYPE[o.dtype],
  };
  if (o.arch === 'llama') {
    return {
      architectures: ['LlamaForCausalLM'],
      model_type: 'llama',
      ...common,
      pretraining_tp: 1,
      attention_bias: false,
      mlp_bias: false,
      rope_scaling:
        o.ropeScaling === 'llama3'
          ? {
              rope_type: 'llama3',
              factor: 8.0,
              low_freq_factor: 1.0,
              high_freq_factor: 4.0,
              original_max_position_embeddings: Math.max(16, Math.floor(o.maxPos / 4)),
            }
          : null,
    };
  }
  if (o.arch === 'mistral') {
    return { architectures: ['MistralForCausalLM'], model_type: 'mistral', ...common, sliding_window: null };
  }
  return {
    architectures: ['Qwen2ForCausalLM'],
    model_type: 'qwen2',
    ...common,
    use_sliding_window: false,
    sliding_window: null,
    max_window_layers: o.layers,
    rope_scaling: null,
  };
}

interface Spec {
  name: string;
  shape: number[];
  /** 'matrix' ~ N(0, (scale/sqrt(fanIn))^2); 'norm' ~ 1 + 0.1 N; 'bias' ~ 0.5 N */
  kind: 'matrix' | 'norm' | 'bias';
}

function tensorSpecs(o: TinyModelResult['options']): Spec[] {
  const H = o.hidden;
  const q = o.heads * o.headDim;
  const kv = o.kvHeads * o.headDim;
  const specs: Spec[] = [{ name: 'model.embed_tokens.weight', shape: [o.vocab, H], kind: 'matrix' }];
  for (let i = 0; i < o.layers; i++) {
    const p = `model.layers.${i}.`;
    specs.push({ name: `${p}input_layernorm.weight`, shape: [H], kind: 'norm' });
    specs.push({ name: `${p}self_attn.q_proj.weight`, shape: [q, H], kind: 'matrix' });
    if (o.arch === 'qwen2') specs.push({ name: `${p}self_attn.q_proj.bias`, shape: [q], kind: 'bias' });
    specs.push({ name: `${p}self_attn.k_proj.weight`, shape: [kv, H], kind: 'matrix' });
    if (o.arch === 'qwen2') specs.push({ name: `${p}self_attn.k_proj.bias`, shape: [kv], kind: 'bias' });
    specs.push({ name: `${p}self_attn.v_proj.weight`, shape: [kv, H], kind: 'matrix' });
    if (o.arch === 'qwen2') specs.push({ name: `${p}self_attn.v_proj.bias`, shape: [kv], kind: 'bias' });
    specs.push({ name: `${p}self_attn.o_proj.weight`, shape: [H, q], kind: 'matrix' });
    specs.push({ name: `${p}post_attention_layernorm.weight`, shape: [H], kind: 'norm' });
    specs.push({ name: `${p}mlp.gate_proj.weight`, shape: [o.ffn, H], kind: 'matrix' });
    specs.push({ name: `${p}mlp.up_proj.weight`, shape: [o.ffn, H], kind: 'matrix' });
    specs.push({ name: `${p}mlp.down_proj.weight`, shape: [H, o.ffn], kind: 'matrix' });
  }
  specs.push({ name: 'model.norm.weight', shape: [H], kind: 'norm' });
  if (!o.tie) specs.push({ name: 'lm_head.weight', shape: [o.vocab, H], kind: 'matrix' });
  return specs;
}

function generate(spec: Spec, o: TinyModelResult['options']): Float32Array {
  const rng = new Rng(o.seed, spec.name);
  const n = spec.shape.reduce((a, b) => a * b, 1);
  const out = new Float32Array(n);
  if (spec.kind === 'norm') {
    for (let i = 0; i < n; i++) out[i] = 1 + 0.1 * o.initScale * rng.normal();
  } else if (spec.kind === 'bias') {
    for (let i = 0; i < n; i++) out[i] = 0.5 * o.initScale * rng.normal();
  } else {
    // matrices are [out, in]: std 1/sqrt(in) keeps activations O(1), so attention is not
    // uniform and logits are not flat (embeddings use the same rule with in = hidden)
    const std = o.initScale / Math.sqrt(spec.shape[1]);
    for (let i = 0; i < n; i++) out[i] = std * rng.normal();
  }
  return out;
}

/** Writes the model directory. Returns the resolved options, the HF config and the files written. */
export async function makeTinyModel(outDir: string, opts: TinyModelOptions = {}): Promise<TinyModelResult> {
  const o = resolveOptions(opts);
  await mkdir(outDir, { recursive: true });
  const tok = buildTokenizer(o.vocab, o.maxPos);
  const config = buildHfConfig(o, tok.eosId);
  const files: string[] = [];
  const writeJson = async (name: string, obj: unknown): Promise<void> => {
    await writeFile(path.join(outDir, name), JSON.stringify(obj, null, 2) + '\n');
    files.push(name);
  };
  await writeJson('config.json', config);

  const specs = tensorSpecs(o);
  const stDtype = ST_DTYPE[o.dtype];
  const lazy = (s: Spec): LazyTensorToWrite => ({
    name: s.name,
    dtype: stDtype,
    shape: s.shape,
    data: () => encodeFloats(generate(s, o), stDtype),
  });
  const meta = { format: 'pt' };
  if (o.shards === 1) {
    await writeSafetensorsLazy(path.join(outDir, 'model.safetensors'), specs.map(lazy), meta);
    files.push('model.safetensors');
  } else {
    // split by bytes into two roughly equal halves
    const sizes = specs.map((s) => s.shape.reduce((a, b) => a * b, 1));
    const total = sizes.reduce((a, b) => a + b, 0);
    let acc = 0;
    let cut = 1;
    for (let i = 0; i < specs.length - 1; i++) {
      acc += sizes[i];
      cut = i + 1;
      if (acc * 2 >= total) break;
    }
    const parts = [specs.slice(0, cut), specs.slice(cut)];
    const names = ['model-00001-of-00002.safetensors', 'model-00002-of-00002.safetensors'];
    const weightMap: Record<string, string> = {};
    let totalSize = 0;
    for (let k = 0; k < 2; k++) {
      totalSize += await writeSafetensorsLazy(path.join(outDir, names[k]), parts[k].map(lazy), meta);
      for (const s of parts[k]) weightMap[s.name] = names[k];
      files.push(names[k]);
    }
    await writeJson('model.safetensors.index.json', { metadata: { total_size: totalSize }, weight_map: weightMap });
  }
  await writeJson('tokenizer.json', tok.tokenizerJson);
  await writeJson('tokenizer_config.json', tok.tokenizerConfig);
  await writeJson('generation_config.json', {
    bos_token_id: tok.eosId,
    eos_token_id: tok.eosId,
  });
  return { dir: outDir, config, files, options: o };
}

// ---------------------------------------------------------------------------------------------
// CLI

const USAGE = `usage: node dist/scripts/make-tiny-model.js --out DIR [options]
  --preset bench100m        hidden 768, 12 layers, 12 heads, 4 KV heads, FFN 2048, vocab 50257, f16, tied
  --arch llama|mistral|qwen2  (default llama)
  --dtype f32|f16|bf16      (default f32)
  --seed N                  (default 1)
  --hidden N --layers N --heads N --kv-heads N --head-dim N --ffn N --vocab N --max-pos N
  --tie true|false          tie lm_head to the embeddings (default false)
  --rope-scaling none|llama3
  --rope-theta X --rms-eps X --init-scale X
  --shards 1|2              2 = two shards + model.safetensors.index.json`;

function num(v: string | undefined, flag: string): number | undefined {
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isFinite(n)) throw new Error(`${flag}: not a number: ${v}`);
  return n;
}

export function parseCliArgs(argv: string[]): { out: string; opts: TinyModelOptions } {
  const { values } = parseArgs({
    args: argv,
    options: {
      out: { type: 'string' },
      preset: { type: 'string' },
      arch: { type: 'string' },
      dtype: { type: 'string' },
      seed: { type: 'string' },
      hidden: { type: 'string' },
      layers: { type: 'string' },
      heads: { type: 'string' },
      'kv-heads': { type: 'string' },
      'head-dim': { type: 'string' },
      ffn: { type: 'string' },
      vocab: { type: 'string' },
      'max-pos': { type: 'string' },
      tie: { type: 'string' },
      'rope-scaling': { type: 'string' },
      'rope-theta': { type: 'string' },
      'rms-eps': { type: 'string' },
      'init-scale': { type: 'string' },
      shards: { type: 'string' },
      help: { type: 'boolean', short: 'h' },
    },
    strict: true,
  });
  if (values.help) {
    console.log(USAGE);
    process.exit(0);
  }
  if (!values.out) throw new Error('--out DIR is required\n' + USAGE);
  let base: TinyModelOptions = {};
  if (values.preset !== undefined) {
    const p = PRESETS[values.preset];
    if (!p) throw new Error(`unknown --preset ${values.preset} (known: ${Object.keys(PRESETS).join(', ')})`);
    base = { ...p };
  }
  const bool = (v: string | undefined, flag: string): boolean | undefined => {
    if (v === undefined) return undefined;
    if (v === 'true' || v === '1') return true;
    if (v === 'false' || v === '0') return false;
    throw new Error(`${flag}: expected true or false, got ${v}`);
  };
  const rs = values['rope-scaling'];
  if (rs !== undefined && rs !== 'none' && rs !== 'llama3') throw new Error(`--rope-scaling: expected none or llama3, got ${rs}`);
  const shards = num(values.shards, '--shards');
  const opts: TinyModelOptions = {
    ...base,
    ...stripUndefined({
      arch: values.arch as TinyArch | undefined,
      dtype: values.dtype as TinyDType | undefined,
      seed: num(values.seed, '--seed'),
      hidden: num(values.hidden, '--hidden'),
      layers: num(values.layers, '--layers'),
      heads: num(values.heads, '--heads'),
      kvHeads: num(values['kv-heads'], '--kv-heads'),
      headDim: num(values['head-dim'], '--head-dim'),
      ffn: num(values.ffn, '--ffn'),
      vocab: num(values.vocab, '--vocab'),
      maxPos: num(values['max-pos'], '--max-pos'),
      tie: bool(values.tie, '--tie'),
      ropeScaling: rs as 'llama3' | 'none' | undefined,
      ropeTheta: num(values['rope-theta'], '--rope-theta'),
      rmsEps: num(values['rms-eps'], '--rms-eps'),
      initScale: num(values['init-scale'], '--init-scale'),
      shards: shards as 1 | 2 | undefined,
    }),
  };
  return { out: values.out, opts };
}

async function main(): Promise<void> {
  const { out, opts } = parseCliArgs(process.argv.slice(2));
  const t0 = Date.now();
  const r = await makeTinyModel(out, opts);
  console.log(`wrote ${r.dir}: ${r.files.join(', ')} (${r.options.arch}, ${r.options.dtype}, seed ${r.options.seed}, ${Date.now() - t0} ms)`);
}

if (process.argv[1] && import.meta.url === pathToFileURL(path.resolve(process.argv[1])).href) {
  main().catch((e: unknown) => {
    console.error(e instanceof Error ? e.message : e);
    process.exit(1);
  });
}

/**
 * The GGUF twins of the transformers fixtures (test/fixtures/hf): each fixture exported by
 * gguf-export.ts as F32 and Q8_0, then
 *  (a) weft on the F32 twin gives weft's safetensors logits within 1e-4 (every position of the
 *      fixture's inputs, at its max_context) and the same greedy tokens; engine-hf.test.ts checks
 *      the safetensors side against transformers;
 *  (b) llama.cpp (node-llama-cpp's prebuilt CPU build, the llama.cpp whose source is bundled as
 *      node_modules/node-llama-cpp/llama/gitRelease.bundle) continues each input greedily as weft
 *      does on the same file, F32 and Q8_0.
 * The inputs (12 to 40 tokens) are longer than the fixtures' windows (6): the windows matter.
 *
 * llama.cpp's KV cache is f16 and its Q8_0 products round the activations to 8 bits: where weft's
 * top two logits are within TIE, llama.cpp may take the other one. The comparison then requires it
 * took weft's runner-up and stops there, the continuations having parted.
 *
 * What llama.cpp does not run as transformers does, from its source, and what is compared instead:
 *  - mistral_sw, qwen2_sw: its llama and qwen2 loaders (src/models/llama.cpp, qwen2.cpp) read no
 *    sliding window, so it runs these twins with full attention (weft reads the window keys its
 *    exporter writes). Compared: llama.cpp on the windowed twin = weft on the twin of the same
 *    checkpoint without a window; and weft's windowed logits differ from those (the windows matter).
 *  - phi3: it pads every context to a multiple of 256 (llama-context.cpp, GGML_PAD(n_ctx, 256)),
 *    past the fixture's original context of 32, so it always takes LongRoPE's long factors: compared
 *    with weft at a context of 128 (the short factors are (a)'s, at max_context 32). Its vocabulary
 *    loader also applies a Phi-3 token fix to any file whose general.name holds "phi3"
 *    (llama-vocab.cpp: token_to_id.at("</s>")), which throws on this byte-level vocabulary: the
 *    twins get another name.
 *  - gemma2: the fixture has attention_bias, o_proj's too; llama.cpp's Gemma 2 has no output bias
 *    and refuses the file (llama-model-loader: "wrong number of tensors"). Compared on the same
 *    checkpoint without biases.
 *  - gemma3: llama.cpp fixes the attention scale at head_dim^-0.5 (src/models/gemma3.cpp) and,
 *    without a sliding_window_pattern key, makes every 6th layer global; the fixture has
 *    query_pre_attn_scalar 24 (head_dim 16) and every 3rd layer global. Its converter writes
 *    neither; weft's exporter folds the scale into attn_q_norm and writes the pattern, and llama.cpp
 *    then runs the twin as transformers does.
 */
import { cpSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { greedyTokens } from '../bench/llamacpp.js';
import { readTensorBytes, readTensorF64 } from '../src/engine/dtype.js';
import { Engine } from '../src/engine/engine.js';
import { ggufTensorInfos, readGguf } from '../src/engine/gguf.js';
import { exportGguf } from '../src/engine/gguf-export.js';
import { ggufHfConfig } from '../src/engine/gguf-model.js';
import { readSafetensorsIndex, writeSafetensors } from '../src/engine/safetensors.js';
import { row } from './helpers/models.js';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'hf');
const TYPES = ['f32', 'q8_0'] as const;
type OutType = (typeof TYPES)[number];
/** weft's top-2 logit gap under which llama.cpp may pick the runner-up. */
const TIE = { f32: 0.005, q8_0: 0.02 } as const;
const GEN = 8;

interface Fixture {
  inputs: number[][];
  greedy: number[][];
  max_context?: number[];
}

type Json = Record<string, unknown>;

interface TwinCase {
  name: string;
  /** What the twin exercises (for the test names). */
  exercises: string;
  /** The checkpoint llama.cpp runs as weft does, where the fixture is not one (see the header). */
  llamaCppCheckpoint?: { config: (c: Json) => Json; dropTensor?: (name: string) => boolean; llamaCppRunsFixtureTwin: boolean };
  /** weft's context for the comparison with llama.cpp, where it must differ from the fixture's max_context. */
  llamaCppContext?: number;
}

const CASES: TwinCase[] = [
  { name: 'qwen3', exercises: 'attn_q_norm / attn_k_norm, head_dim 24 (key_length) on a 64-wide model, NEOX RoPE' },
  { name: 'gemma3', exercises: 'four norms stored w + 1, GeGLU, scaled embeddings, pattern-3 windows, local RoPE base, linear scaling on global layers, folded query scale, final soft-cap' },
  { name: 'phi3', exercises: 'fused attn_qkv and ffn_up (gate | up), partial rotary (12 of 16), LongRoPE factors and attn_factor, untied output', llamaCppContext: 128 },
  {
    name: 'mistral_sw', exercises: 'llama arch, permuted Q/K rows, a window on every layer (llama.attention.sliding_window)',
    llamaCppCheckpoint: { config: (c) => ({ ...c, sliding_window: null }), llamaCppRunsFixtureTwin: true },
  },
  {
    name: 'qwen2_sw', exercises: 'q/k/v biases, windows on layers from max_window_layers (qwen2.attention.sliding_window_pattern)',
    llamaCppCheckpoint: { config: (c) => ({ ...c, use_sliding_window: false }), llamaCppRunsFixtureTwin: true },
  },
  {
    name: 'gemma2', exercises: 'pattern-2 windows, attention and final soft-caps, q/k/v/o biases',
    llamaCppCheckpoint: {
      config: (c) => ({ ...c, attention_bias: false }), dropTensor: (n) => n.endsWith('_proj.bias'), llamaCppRunsFixtureTwin: false,
    },
  },
];

let root = '';
beforeAll(() => {
  root = mkdtempSync(join(tmpdir(), 'weft-gguf-twins-'));
});
const report: Record<string, { maxLogitDiff?: number; llamaCpp: string[] }> = {};
afterAll(() => {
  console.info('GGUF twins (max |logit| weft F32 twin vs safetensors; llama.cpp greedy agreement):', JSON.stringify(report, null, 1));
  if (root) rmSync(root, { recursive: true, force: true });
});

interface WeftRun {
  /** Prefill logits, every position. */
  logits: Float32Array;
  vocab: number;
  tokens: number[];
  /** Per greedy step: the runner-up and the top-2 logit gap. */
  runnerUp: number[];
  margins: number[];
}

/** weft's prefill logits and greedy continuation of each input (argmax of the logits, one engine). */
async function weftRuns(model: string, inputs: number[][], maxContext: (s: number) => number | undefined): Promise<WeftRun[]> {
  const out: WeftRun[] = [];
  for (let s = 0; s < inputs.length; s++) {
    const engine = await Engine.load(model, { threads: 2, kvDtype: 'f32', maxContext: maxContext(s) });
    try {
      const vocab = engine.config.vocabSize;
      const seq = engine.createSequence({ ignoreEos: true });
      const [r] = await engine.run([{ sequence: seq, tokens: inputs[s]!, logits: 'all' }]);
      const run: WeftRun = { logits: r!.logits!, vocab, tokens: [], runnerUp: [], margins: [] };
      let last = row(r!.logits!, vocab, inputs[s]!.length - 1);
      while (true) {
        const order = [...last.keys()].sort((a, b) => last[b]! - last[a]! || a - b);
        run.tokens.push(order[0]!);
        run.runnerUp.push(order[1]!);
        run.margins.push(last[order[0]!]! - last[order[1]!]!);
        if (run.tokens.length === GEN) break;
        const [d] = await engine.run([{ sequence: seq, tokens: [order[0]!], logits: 'last' }]);
        last = d!.logits!;
      }
      seq.free();
      out.push(run);
    } finally {
      engine.dispose();
    }
  }
  return out;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  let m = 0;
  for (let i = 0; i < a.length; i++) m = Math.max(m, Math.abs(a[i]! - b[i]!));
  return m;
}

/**
 * llama.cpp's greedy tokens against weft's: equal, or equal up to a step where weft's top two were
 * within `tie` and llama.cpp took the runner-up. Returns "n/n" or "k/n (tie at k, gap g)".
 */
function expectSameGreedy(w: WeftRun, llama: number[], tie: number, label: string): string {
  expect(llama, label).toHaveLength(w.tokens.length);
  const at = w.tokens.findIndex((t, i) => llama[i] !== t);
  if (at < 0) return `${w.tokens.length}/${w.tokens.length}`;
  const why = `${label}: step ${at}, llama.cpp ${llama.join(',')} weft ${w.tokens.join(',')} (gap ${w.margins[at]!.toFixed(4)})`;
  expect(w.margins[at], why).toBeLessThan(tie);
  expect(llama[at], why).toBe(w.runnerUp[at]);
  return `${at}/${w.tokens.length} (tie at ${at}, gap ${w.margins[at]!.toFixed(4)})`;
}

/** A copy of a fixture with its config.json edited and some tensors dropped. */
async function variantCheckpoint(name: string, config: (c: Json) => Json, dropTensor?: (name: string) => boolean): Promise<string> {
  const dir = join(root, `${name}-variant`);
  cpSync(join(FIXTURES, name), dir, { recursive: true });
  writeFileSync(join(dir, 'config.json'), JSON.stringify(config(JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as Json)));
  if (dropTensor) {
    const kept = [...(await readSafetensorsIndex(dir)).values()].filter((t) => !dropTensor(t.name));
    const tensors = await Promise.all(kept.map(async (t) => ({ name: t.name, dtype: t.dtype, shape: t.shape, data: await readTensorBytes(t) })));
    await writeSafetensors(join(dir, 'model.safetensors'), tensors);
  }
  return dir;
}

/** F32 and Q8_0 twins of a checkpoint (named so that llama.cpp's Phi-3 vocabulary fix stays off). */
async function twins(dir: string, stem: string): Promise<Record<OutType, string>> {
  const out = {} as Record<OutType, string>;
  for (const type of TYPES) {
    out[type] = join(root, `${stem}.${type}.gguf`);
    await exportGguf(dir, out[type], { type, name: 'weft fixture twin' });
  }
  return out;
}

describe.each(CASES)('$name twin: $exercises', (tc) => {
  const dir = join(FIXTURES, tc.name);
  const fx = JSON.parse(readFileSync(join(dir, 'logits.json'), 'utf8')) as Fixture;
  const fxContext = (s: number): number | undefined => fx.max_context?.[s];
  let twin: Record<OutType, string>;
  /** The checkpoint weft runs to compare with llama.cpp, its twins, and the twins llama.cpp runs. */
  let peerDir = dir;
  let peerTwin: Record<OutType, string>;
  let llamaTwin: Record<OutType, string>;
  beforeAll(async () => {
    twin = await twins(dir, tc.name);
    peerTwin = llamaTwin = twin;
    const v = tc.llamaCppCheckpoint;
    if (v) {
      peerDir = await variantCheckpoint(tc.name, v.config, v.dropTensor);
      peerTwin = await twins(peerDir, `${tc.name}-variant`);
      llamaTwin = v.llamaCppRunsFixtureTwin ? twin : peerTwin;
    }
    report[tc.name] = { llamaCpp: [] };
  });

  test('(a) weft on the F32 twin: the safetensors logits within 1e-4, the same greedy tokens', async () => {
    const st = await weftRuns(dir, fx.inputs, fxContext);
    const gg = await weftRuns(twin.f32, fx.inputs, fxContext);
    let worst = 0;
    for (let s = 0; s < fx.inputs.length; s++) {
      worst = Math.max(worst, maxAbsDiff(gg[s]!.logits, st[s]!.logits));
      expect(gg[s]!.tokens, `input ${s}`).toEqual(st[s]!.tokens);
      expect(st[s]!.tokens, `input ${s}: the fixture's greedy tokens`).toEqual(fx.greedy[s]);
    }
    expect(worst).toBeLessThan(1e-4);
    report[tc.name]!.maxLogitDiff = worst;
    if (peerDir !== dir) { // the checkpoint llama.cpp is compared on, the same way
      const pst = await weftRuns(peerDir, fx.inputs, fxContext);
      const pgg = await weftRuns(peerTwin.f32, fx.inputs, fxContext);
      for (let s = 0; s < fx.inputs.length; s++) {
        expect(maxAbsDiff(pgg[s]!.logits, pst[s]!.logits), `variant, input ${s}`).toBeLessThan(1e-4);
        expect(pgg[s]!.tokens).toEqual(pst[s]!.tokens);
      }
    }
  });

  test.each(TYPES)('(b) llama.cpp continues greedily as weft on the same %s twin', async (type) => {
    const ctx = (s: number): number | undefined => tc.llamaCppContext ?? fxContext(s);
    const weft = await weftRuns(peerTwin[type], fx.inputs, ctx);
    for (let s = 0; s < fx.inputs.length; s++) {
      const llama = await greedyTokens(llamaTwin[type], fx.inputs[s]!, GEN, { threads: 2 });
      report[tc.name]!.llamaCpp.push(`${type} input ${s}: ${expectSameGreedy(weft[s]!, llama, TIE[type], `${type} input ${s}`)}`);
    }
  });
});

describe('what llama.cpp does not run as transformers', () => {
  test.each(['mistral_sw', 'qwen2_sw'])('%s: the windows change the logits, and llama.cpp runs without them (the (b) comparison)', async (name) => {
    const fx = JSON.parse(readFileSync(join(FIXTURES, name, 'logits.json'), 'utf8')) as Fixture;
    const g = await readGguf(join(root, `${name}.f32.gguf`));
    const arch = g.metadata.get('general.architecture') as string;
    expect(g.metadata.get(`${arch}.attention.sliding_window`)).toBe(6);
    const windowed = await weftRuns(join(root, `${name}.f32.gguf`), fx.inputs, () => undefined);
    const full = await weftRuns(join(root, `${name}-variant.f32.gguf`), fx.inputs, () => undefined);
    for (let s = 0; s < fx.inputs.length; s++) expect(maxAbsDiff(windowed[s]!.logits, full[s]!.logits)).toBeGreaterThan(1e-2);
  });

  test('gemma2: llama.cpp refuses the twin of the fixture (o_proj bias)', async () => {
    const g = await readGguf(join(root, 'gemma2.f32.gguf'));
    expect(g.tensors.some((t) => t.name === 'blk.0.attn_output.bias')).toBe(true);
    await expect(greedyTokens(join(root, 'gemma2.f32.gguf'), [1, 2, 3], 1, { threads: 2 })).rejects.toThrow();
  });

  test('phi3: the short factors (context 32) and the long ones (llama.cpp\'s padded context) give other tokens', async () => {
    const fx = JSON.parse(readFileSync(join(FIXTURES, 'phi3', 'logits.json'), 'utf8')) as Fixture;
    const [short] = await weftRuns(join(root, 'phi3.f32.gguf'), [fx.inputs[0]!], () => 32);
    const [long] = await weftRuns(join(root, 'phi3.f32.gguf'), [fx.inputs[0]!], () => 128);
    expect(short!.tokens).toEqual(fx.greedy[0]);
    expect(long!.tokens).not.toEqual(short!.tokens);
  });

  test("Gemma files as llama.cpp's converter writes them (no pattern key) read as llama.cpp runs them", () => {
    const file = 'converted.gguf';
    const tensors = [{ name: 'token_embd.weight', file, dtype: 'F32' as const, shape: [320, 64], offset: 0, nbytes: 0 }];
    const md = (arch: string, layers: number, extra: [string, unknown][] = []) => new Map<string, unknown>([
      ['general.architecture', arch], [`${arch}.embedding_length`, 64], [`${arch}.block_count`, layers], [`${arch}.feed_forward_length`, 64],
      [`${arch}.attention.head_count`, 4], [`${arch}.attention.key_length`, 32], [`${arch}.context_length`, 128], ...extra,
    ]);
    const g3 = ggufHfConfig({ file, tensors, metadata: md('gemma3', 7, [['gemma3.attention.sliding_window', 512]]) }).json;
    expect(g3.layer_types).toEqual([...Array(5).fill('sliding_attention'), 'full_attention', 'sliding_attention']);
    expect(g3).toMatchObject({ query_pre_attn_scalar: 32, rope_local_base_freq: 10000, final_logit_softcapping: null });
    expect(ggufHfConfig({ file, tensors, metadata: md('gemma3', 62) }).json).toMatchObject({ query_pre_attn_scalar: 16, layer_types: Array(62).fill('full_attention') });
    const g2 = ggufHfConfig({ file, tensors, metadata: md('gemma2', 3) }).json;
    expect(g2).toMatchObject({ sliding_window: 4096, attn_logit_softcapping: 50, final_logit_softcapping: 30, layer_types: ['sliding_attention', 'full_attention', 'sliding_attention'] });
  });

  test('gemma3: the window pattern key and the query scale folded into attn_q_norm', async () => {
    const file = join(root, 'gemma3.f32.gguf');
    const g = await readGguf(file);
    expect(g.metadata.get('gemma3.attention.sliding_window_pattern')).toEqual([true, true, false, true]);
    expect(g.metadata.get('gemma3.rope.freq_base_swa')).toBe(10000);
    expect(g.metadata.get('gemma3.final_logit_softcapping')).toBe(4);
    const qNorm = await readTensorF64(ggufTensorInfos(g).get('blk.1.attn_q_norm.weight')!);
    const hf = await readTensorF64((await readSafetensorsIndex(join(FIXTURES, 'gemma3'))).get('model.layers.1.self_attn.q_norm.weight')!);
    hf.forEach((w, i) => expect(qNorm[i]).toBeCloseTo((1 + w) * Math.sqrt(16 / 24), 6));
  });
});

/**
 * GGUF files as models, and engine plans (src/engine/model-source.ts, gguf-model.ts, plan.ts,
 * prepare.ts). The embedded default model (a trained Llama, tied embeddings) is exported by weft's
 * GGUF module as F32, F16, Q8_0 and Q4_K_M; weft loads each file in place and is checked against
 * the safetensors original and against llama.cpp (node-llama-cpp) on the same file.
 */
import { copyFile, mkdir, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { existsSync, readdirSync } from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { greedyTokens } from '../bench/llamacpp.js';
import { makeTinyModel } from '../scripts/make-tiny-model.js';
import { Engine } from '../src/engine/engine.js';
import { exportGguf, type GgufOutType } from '../src/engine/gguf-export.js';
import { openModel } from '../src/engine/model-source.js';
import { native } from '../src/engine/native.js';
import { buildPlan, readPlan, sealPlanChecksum, writePlanTuning } from '../src/engine/plan.js';
import { autotune } from '../src/engine/tune.js';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';

const DEFAULT = path.resolve('models/default');
const PROMPT = [0, 412, 77, 1030, 9, 2222, 64, 301, 15, 880, 3001, 42];
const GEN = 16;

let root = '';
const files: Partial<Record<GgufOutType, string>> = {};
beforeAll(async () => {
  root = await mkdtemp(path.join(os.tmpdir(), 'weft-gguf-model-'));
  process.env.WEFT_CACHE_DIR = path.join(root, 'cache');
  for (const type of ['f32', 'f16', 'q8_0', 'q4_k_m'] as const) {
    files[type] = path.join(root, `default.${type}.gguf`);
    await exportGguf(DEFAULT, files[type]!, { type });
  }
}, 120_000);
afterAll(async () => {
  delete process.env.WEFT_CACHE_DIR;
  if (root) await rm(root, { recursive: true, force: true });
});

async function run(model: string, opts: Parameters<typeof Engine.load>[1] = {}): Promise<{ logits: Float32Array[]; greedy: number[]; engine: Engine; weightBytes: number }> {
  const engine = await Engine.load(model, { threads: 2, kvDtype: 'f32', ...opts });
  const s = engine.createSequence({ ignoreEos: true });
  const prompt = PROMPT.map((t) => t % engine.config.vocabSize);
  const [r] = await engine.run([{ sequence: s, tokens: prompt, logits: 'all', sample: true }]);
  const V = engine.config.vocabSize;
  const logits = Array.from({ length: PROMPT.length }, (_, i) => r!.logits!.slice(i * V, (i + 1) * V));
  const greedy = [r!.token!];
  while (greedy.length < GEN) {
    const [n] = await engine.run([{ sequence: s, tokens: [greedy[greedy.length - 1]!], sample: true }]);
    greedy.push(n!.token!);
  }
  s.free();
  return { logits, greedy, engine, weightBytes: engine.stats().weightBytes };
}

function maxAbsDiff(a: Float32Array[], b: Float32Array[]): number {
  let m = 0;
  a.forEach((row, i) => row.forEach((v, j) => (m = Math.max(m, Math.abs(v - b[i]![j]!)))));
  return m;
}

function argmax(row: Float32Array): number {
  let a = 0;
  for (let i = 1; i < row.length; i++) if (row[i]! > row[a]!) a = i;
  return a;
}

describe('GGUF files of the default model', () => {
  let ref: Awaited<ReturnType<typeof run>>;
  beforeAll(async () => {
    ref = await run(DEFAULT);
    ref.engine.dispose();
  });

  test('F32: the logits of the safetensors model within 1e-4 (llama.cpp\'s Q/K permutation undone by interleaved RoPE)', async () => {
    const g = await run(files.f32!);
    expect(g.engine.config.ropeInterleaved).toBe(true);
    expect(g.weightBytes).toBe(ref.weightBytes);
    g.engine.dispose();
    expect(maxAbsDiff(g.logits, ref.logits)).toBeLessThan(1e-4);
    expect(g.greedy).toEqual(ref.greedy);
  });

  test('F16: within f16 rounding of the f32 logits, same greedy tokens', async () => {
    const g = await run(files.f16!);
    g.engine.dispose();
    expect(maxAbsDiff(g.logits, ref.logits)).toBeLessThan(0.05);
    expect(g.greedy).toEqual(ref.greedy);
  });

  test('Q8_0: greedy tokens equal to llama.cpp on the same file, logits near the f32 ones, a quarter of the bytes', async () => {
    const g = await run(files.q8_0!);
    g.engine.dispose();
    expect(g.weightBytes / ref.weightBytes).toBeCloseTo(34 / 128, 2);
    const peer = await greedyTokens(files.q8_0!, PROMPT, GEN, { threads: 2 });
    expect(g.greedy).toEqual(peer);
    // Q8_0 weights and Q8_0 activations: small relative error, top-1 kept at every position
    expect(maxAbsDiff(g.logits, ref.logits)).toBeLessThan(0.25);
    g.logits.forEach((row, i) => expect(argmax(row), `position ${i}`).toBe(argmax(ref.logits[i]!)));
  }, 60_000);

  test('Q4_K_M: llama.cpp\'s mix of Q4_K and Q6_K loads; its greedy tokens follow llama.cpp and the logits stay close to f32', async () => {
    const g = await run(files.q4_k_m!);
    g.engine.dispose();
    const peer = await greedyTokens(files.q4_k_m!, PROMPT, GEN, { threads: 2 });
    // two engines on the same 4-bit weights; a near-tie may break differently after a few tokens
    let same = 0;
    while (same < GEN && g.greedy[same] === peer[same]) same++;
    expect(same).toBeGreaterThanOrEqual(8);
    let agree = 0;
    g.logits.forEach((row, i) => (agree += argmax(row) === argmax(ref.logits[i]!) ? 1 : 0));
    expect(agree).toBeGreaterThanOrEqual(PROMPT.length - 2);
  }, 60_000);

  test('the tokenizer and chat template come from the GGUF metadata: same ids and rendering as tokenizer.json', async () => {
    const hf = await Tokenizer.fromDir(DEFAULT);
    const g = await Engine.load(files.q8_0!, { threads: 1 });
    try {
      const texts = ['Hello there, how are you?', '  two  spaces\nand a newline', 'digits 12345 and ünïcödé ✓', ''];
      for (const t of texts) expect(g.tokenizer!.encode(t), t).toEqual(hf.encode(t));
      expect(hf.chatTemplate).toBeTruthy();
      expect(g.tokenizer!.chatTemplate).toBe(hf.chatTemplate);
      expect(g.tokenizer!.eosTokenIds).toEqual(expect.arrayContaining(hf.eosTokenIds));
    } finally {
      g.dispose();
      hf.dispose?.();
    }
  });

  test('a directory holding one .gguf loads it; two are an error naming them', async () => {
    const one = path.join(root, 'one');
    await mkdir(one);
    await copyFile(files.q8_0!, path.join(one, 'model.gguf'));
    expect((await openModel(one)).kind).toBe('gguf');
    await copyFile(files.f16!, path.join(one, 'other.gguf'));
    await expect(openModel(one)).rejects.toMatchObject({ code: 'WEFT_MODEL_FORMAT', message: expect.stringMatching(/2 GGUF files/) });
  });

  test('an unknown architecture and a truncated file are coded errors', async () => {
    const bytes = await readFile(files.f32!);
    const arch = Buffer.from('llama');
    const at = bytes.indexOf(Buffer.concat([Buffer.from('general.architecture'), Buffer.from([8, 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0])]));
    expect(at).toBeGreaterThan(0);
    const other = Buffer.from(bytes);
    Buffer.from('mamba').copy(other, at + 'general.architecture'.length + 12);
    expect(arch.length).toBe(5);
    const bad = path.join(root, 'mamba.gguf');
    await writeFile(bad, other);
    await expect(Engine.load(bad)).rejects.toMatchObject({ code: 'WEFT_UNSUPPORTED_ARCH', message: expect.stringMatching(/mamba/) });
    const cut = path.join(root, 'cut.gguf');
    await writeFile(cut, bytes.subarray(0, bytes.length - 1000));
    await expect(Engine.load(cut)).rejects.toMatchObject({ code: 'WEFT_MODEL_FORMAT' });
  });
});

/** Exports `dir` as an F32 GGUF file and checks weft gives the same logits (1e-4) and greedy tokens on both. */
async function f32TwinMatches(dir: string, name: string): Promise<Awaited<ReturnType<typeof run>>> {
  const gguf = path.join(root, `${name}.f32.gguf`);
  await exportGguf(dir, gguf, { type: 'f32' });
  const a = await run(dir);
  const b = await run(gguf);
  a.engine.dispose();
  b.engine.dispose();
  expect(maxAbsDiff(a.logits, b.logits)).toBeLessThan(1e-4);
  expect(b.greedy).toEqual(a.greedy);
  return b;
}

describe('Qwen2 GGUF (q/k/v biases, rotate_half RoPE kept as it is)', () => {
  test('F32 GGUF = the safetensors model', async () => {
    const dir = path.join(root, 'qwen2');
    await makeTinyModel(dir, { arch: 'qwen2', hidden: 64, layers: 2, heads: 4, kvHeads: 2, ffn: 128, vocab: 512, tie: true, seed: 3 });
    const b = await f32TwinMatches(dir, 'qwen2');
    expect(b.engine.config.architecture).toBe('qwen2');
    expect(b.engine.config.ropeInterleaved).toBe(false);
  });
});

describe('Llama 3 RoPE scaling from GGUF (llama.cpp\'s rope_freqs.weight divisors)', () => {
  test('F32 GGUF of the llama3_rope transformers fixture = the safetensors model', async () => {
    const dir = path.resolve('test/fixtures/hf/llama3_rope');
    const b = await f32TwinMatches(dir, 'llama3_rope');
    expect(b.engine.config.longRope?.shortFactor.some((f) => f !== 1)).toBe(true);
  });
});

describe('engine plans', () => {
  test('--quantize q8_0 builds a plan once into the cache, later loads map it; its logits are the Q8_0 GGUF\'s', async () => {
    const lines: string[] = [];
    const first = await run(DEFAULT, { quantize: 'q8_0', log: (l) => lines.push(l) });
    first.engine.dispose();
    expect(lines.join('\n')).toMatch(/building the q8_0 plan/);
    const cached = readdirSync(path.join(root, 'cache', 'plans'));
    // the plan, and the stamp that lets later loads skip hashing the unchanged file
    expect(cached.filter((f) => f.endsWith('.plan.gguf'))).toHaveLength(1);
    expect(cached.filter((f) => f.endsWith('.plan.gguf.verified'))).toHaveLength(1);
    lines.length = 0;
    const second = await run(DEFAULT, { quantize: 'q8_0', log: (l) => lines.push(l) });
    second.engine.dispose();
    expect(lines).toEqual([]);
    expect(second.logits).toEqual(first.logits);
    // the same quantizer on the same rows: the GGUF Q8_0 file gives the same logits (up to the
    // order of the dot products over permuted Q/K rows)
    const g = await run(files.q8_0!);
    g.engine.dispose();
    expect(maxAbsDiff(first.logits, g.logits)).toBeLessThan(1e-3);
    expect(first.greedy).toEqual(g.greedy);
  });

  test('a plan carries the tokenizer, and a corrupted plan fails its checksum (WEFT_MODEL_FORMAT)', async () => {
    const source = await openModel(DEFAULT);
    const out = path.join(root, 'default.q4k.plan.gguf');
    await buildPlan(source, { quantize: 'q4_k', out });
    // the layout the engine runs: q|k|v and gate|up fused, Q4_K matrices, the LM head (tied) in Q6_K
    const names = new Map((await readPlan(out)).tensors.map((t) => [t.name, t.dtype]));
    expect(names.get('model.layers.0.self_attn.qkv_proj.weight')).toBe('Q4_K');
    expect(names.get('model.layers.0.mlp.gate_up_proj.weight')).toBe('Q4_K');
    expect(names.has('model.layers.0.self_attn.q_proj.weight')).toBe(false);
    expect(names.get('model.embed_tokens.weight')).toBe('Q6_K');
    const p = await run(out);
    expect(p.engine.tokenizer!.encode('Hello there')).toEqual((await Tokenizer.fromDir(DEFAULT)).encode('Hello there'));
    p.engine.dispose();
    const bytes = await readFile(out);
    bytes[bytes.length - 100] ^= 0x10;
    const bad = path.join(root, 'corrupt.plan.gguf');
    await writeFile(bad, bytes);
    await expect(Engine.load(bad)).rejects.toMatchObject({ code: 'WEFT_MODEL_FORMAT', message: expect.stringMatching(/checksum/) });
  });

  test('weft build times the backend\'s kernel settings here; the plan carries the fastest per kind of step and runs with them', async () => {
    const source = await openModel(DEFAULT);
    const out = path.join(root, 'tuned.plan.gguf');
    await buildPlan(source, { quantize: 'q8_0', out });
    const candidates = native().tuningCandidates();
    expect(candidates.length).toBeGreaterThan(1);
    const tuning = (await autotune(out, source.config, { threads: 1, repeats: 1 }))!;
    expect(tuning.timings.map((t) => t.candidate)).toEqual(candidates);
    for (const t of tuning.timings) expect(t.decode1Ms).toBeGreaterThan(0);
    for (const kind of ['decode1', 'batch', 'prefill'] as const) expect(candidates).toContainEqual(tuning[kind]);
    await writePlanTuning(out, tuning);
    const plan = await readPlan(out); // the checksum was sealed again
    expect(plan.tuning).toMatchObject({ decode1: tuning.decode1, batch: tuning.batch, prefill: tuning.prefill });
    // no candidate changes an output's accumulation order: the same logits as the defaults
    const tuned = await run(out);
    const first = { decode1: candidates[0]!, batch: candidates[0]!, prefill: candidates[0]! };
    const plain = await run(out, { tuning: first });
    tuned.engine.dispose();
    plain.engine.dispose();
    expect(tuned.logits).toEqual(plain.logits);
  }, 60_000);

  test('a plan from another CPU is built again from its source, or refused when the source is gone', async () => {
    const dir = path.join(root, 'moved');
    await mkdir(dir);
    for (const f of readdirSync(DEFAULT)) await copyFile(path.join(DEFAULT, f), path.join(dir, f));
    const out = path.join(root, 'foreign.plan.gguf');
    await buildPlan(await openModel(dir), { quantize: 'q8_0', out });
    // another machine: same-length edit of the CPU's model name inside the identity, sealed again
    const bytes = await readFile(out);
    const plan = await readPlan(out);
    const name = Buffer.from(JSON.stringify(plan.identity.cpu.model).slice(1, -1));
    const at = bytes.indexOf(name);
    expect(at).toBeGreaterThan(0);
    bytes[at] = bytes[at] === 0x58 ? 0x59 : 0x58;
    await writeFile(out, bytes);
    await sealPlanChecksum(out);
    const lines: string[] = [];
    const e = await Engine.load(out, { threads: 1, log: (l) => lines.push(l) });
    e.dispose();
    expect(lines.join('\n')).toMatch(/built for another machine or version/);
    expect((await readPlan(out)).identity.cpu.model).toBe(plan.identity.cpu.model);
    // again, with its source gone
    await writeFile(out, bytes);
    await sealPlanChecksum(out);
    await rm(dir, { recursive: true });
    await expect(Engine.load(out)).rejects.toMatchObject({ code: 'WEFT_PLAN_MISMATCH', message: expect.stringMatching(/not there/) });
    expect(existsSync(out)).toBe(true);
  });
});

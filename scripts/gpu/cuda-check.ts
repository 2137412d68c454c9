/**
 * The CUDA backend's correctness suite, run on the GPU machine by `npm run test:cuda`
 * (scripts/gpu/test-cuda.sh builds first). Prints one line per check and a final verdict line:
 *   CUDA CHECK: PASS (n/n)   or   CUDA CHECK: FAIL (k of n failed: names)
 *
 * Tolerances: device weights and activations are f16/bf16 with f32 accumulation, KV f16, so
 * logits are compared as max |diff| / max |ref| ≤ 3e-2 against transformers (f64 reference where
 * the fixture has one) and ≤ 1e-2 between CUDA runs that differ only in batching or chunking.
 * Greedy tokens must be equal. Same shapes on two contexts must give bit-identical logits.
 *
 *   node dist/scripts/gpu/cuda-check.js [--quick]   (--quick: a subset, for compute-sanitizer)
 */
import { spawnSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bf16ToF32, encodeFloats, f32ToBf16, f32ToFp8e4m3, fp8e4m3ToF32, readTensorF32 } from '../../src/engine/dtype.js';
import { Engine, type SamplingOptions, type Sequence } from '../../src/engine/engine.js';
import { native } from '../../src/engine/native.js';
import { readSafetensorsHeader, writeSafetensors } from '../../src/engine/safetensors.js';
import { makeTinyModel } from '../make-tiny-model.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..', '..');
const HF = join(ROOT, 'test', 'fixtures', 'hf');
const quick = process.argv.includes('--quick');

interface Result { name: string; ok: boolean; detail: string }
const results: Result[] = [];
async function check(name: string, fn: () => Promise<string | void>): Promise<void> {
  const t0 = performance.now();
  try {
    const detail = (await fn()) ?? '';
    results.push({ name, ok: true, detail });
    console.log(`ok   ${name} ${detail} (${(performance.now() - t0).toFixed(0)} ms)`);
  } catch (e) {
    const err = e as Error & { code?: string };
    results.push({ name, ok: false, detail: `${err.code ?? ''} ${err.message}` });
    console.log(`FAIL ${name}: ${err.code ?? ''} ${err.message}`);
  }
}
function assert(cond: boolean, msg: string): asserts cond {
  if (!cond) throw new Error(msg);
}
function relErr(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let diff = 0, scale = 0;
  for (let i = 0; i < want.length; i++) {
    diff = Math.max(diff, Math.abs(got[i]! - want[i]!));
    scale = Math.max(scale, Math.abs(want[i]!));
  }
  return diff / scale;
}
const rowOf = (l: Float32Array, v: number, r: number) => l.subarray(r * v, (r + 1) * v);
function argmax(x: ArrayLike<number>): number {
  let b = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[b]!) b = i;
  return b;
}
const same = (a: number[], b: number[]) => a.length === b.length && a.every((x, i) => x === b[i]);
const lease = (index: number) => ({ index, release: () => {} });

/** Prefill then n decode steps on one context; returns the tokens and the first step's last logits. */
async function gen(engine: Engine, seq: Sequence, prompt: number[], n: number, context = 0) {
  const out: number[] = [];
  let next = prompt;
  let first: Float32Array | undefined;
  for (let i = 0; i < n; i++) {
    const [r] = await engine.step(lease(context), [{ sequence: seq, tokens: next, sample: true, logits: i === 0 ? 'last' : 'none' }]);
    if (i === 0) first = r!.logits!.slice();
    out.push(r!.token!);
    next = [r!.token!];
  }
  return { tokens: out, first: first! };
}

async function fixtures(): Promise<void> {
  for (const name of quick ? ['llama'] : ['llama', 'qwen2', 'llama3_rope', 'llama_bf16']) {
    await check(`transformers fixture ${name}`, async () => {
      const dir = join(HF, name);
      const fx = JSON.parse(readFileSync(join(dir, 'logits.json'), 'utf8')) as {
        inputs: number[][]; logits: number[][][]; logits_f64?: number[][][]; greedy: number[][]; greedy_f64?: number[][];
      };
      const want = fx.logits_f64 ?? fx.logits;
      const greedy = fx.greedy_f64 ?? fx.greedy;
      const engine = await Engine.load(dir, { backend: 'cuda', tokenizer: false });
      let worst = 0;
      try {
        const V = engine.config.vocabSize;
        for (let s = 0; s < fx.inputs.length; s++) {
          const seq = engine.createSequence({ ignoreEos: true });
          const [r] = await engine.run([{ sequence: seq, tokens: fx.inputs[s]!, logits: 'all' }]);
          for (let p = 0; p < fx.inputs[s]!.length; p++) worst = Math.max(worst, relErr(rowOf(r!.logits!, V, p), want[s]![p]!));
          const out = [argmax(rowOf(r!.logits!, V, fx.inputs[s]!.length - 1))];
          while (out.length < greedy[s]!.length) {
            const [d] = await engine.run([{ sequence: seq, tokens: [out.at(-1)!], sample: true }]);
            out.push(d!.token!);
          }
          assert(same(out, greedy[s]!), `input ${s}: greedy ${out.join(',')} != transformers ${greedy[s]!.join(',')}`);
          seq.free();
        }
      } finally {
        engine.dispose();
      }
      assert(worst <= 3e-2, `logits rel err ${worst.toExponential(2)} > 3e-2`);
      return `max rel err ${worst.toExponential(2)}`;
    });
  }
}

/** FP8 checkpoints (scripts/gpu/fp8_fixtures.py: torch's fp8 values, float64 reference of the
 * dequantized model) on the GPU: per-tensor and per-channel scales run as stored (FP8 on the
 * device); block scales are dequantized (bf16 on the device, exact) unless --quantize fp8. */
async function fp8Checkpoints(): Promise<void> {
  const { existsSync, readdirSync } = await import('node:fs');
  const names = existsSync(HF) ? readdirSync(HF).filter((n) => n.startsWith('fp8_') && existsSync(join(HF, n, 'logits.json'))) : [];
  if (names.length === 0) console.log('note no FP8 checkpoint fixtures in test/fixtures/hf (scripts/gpu/fp8_fixtures.py writes them)');
  for (const name of names) {
    await check(`FP8 checkpoint ${name} on cuda vs the float64 reference`, async () => {
      const dir = join(HF, name);
      const fx = JSON.parse(readFileSync(join(dir, 'logits.json'), 'utf8')) as { inputs: number[][]; logits: number[][][]; greedy: number[][] };
      const block = name.includes('block');
      const engine = await Engine.load(dir, { backend: 'cuda', tokenizer: false });
      const format = engine.stats().weightFormat;
      let worst = 0;
      try {
        const V = engine.config.vocabSize;
        assert(format === (block ? 'source' : 'fp8'), `weightFormat ${format}`);
        for (let s = 0; s < fx.inputs.length; s++) {
          const seq = engine.createSequence({ ignoreEos: true });
          const [r] = await engine.run([{ sequence: seq, tokens: fx.inputs[s]!, logits: 'all' }]);
          for (let p = 0; p < fx.inputs[s]!.length; p++) worst = Math.max(worst, relErr(rowOf(r!.logits!, V, p), fx.logits[s]![p]!));
          const out = [argmax(rowOf(r!.logits!, V, fx.inputs[s]!.length - 1))];
          while (out.length < fx.greedy[s]!.length) {
            const [d] = await engine.run([{ sequence: seq, tokens: [out.at(-1)!], sample: true }]);
            out.push(d!.token!);
          }
          // block scales: the dequantized weights are rounded to bf16 (the product of an fp8 value and
          // an f32 scale is not a bf16 number), so near-ties of this random model may flip later tokens
          const n = block ? 1 : fx.greedy[s]!.length;
          assert(same(out.slice(0, n), fx.greedy[s]!.slice(0, n)), `input ${s}: greedy ${out.join(',')} != reference ${fx.greedy[s]!.join(',')}`);
          seq.free();
        }
      } finally {
        engine.dispose();
      }
      assert(worst <= 3e-2, `logits rel err ${worst.toExponential(2)} > 3e-2`);
      return `max rel err ${worst.toExponential(2)} (${format} on the device)`;
    });
  }
}

async function cpuVsCuda(dir: string, label: string, prompt: number[], n: number): Promise<void> {
  await check(`cpu and cuda greedy agree (${label}, ${n} tokens)`, async () => {
    const outs: number[][] = [];
    for (const backend of ['cpu', 'cuda'] as const) {
      const engine = await Engine.load(dir, { backend, tokenizer: false, threads: 4 });
      try {
        const seq = engine.createSequence({ ignoreEos: true });
        outs.push((await gen(engine, seq, prompt, n)).tokens);
      } finally {
        engine.dispose();
      }
    }
    assert(same(outs[0]!, outs[1]!), `cpu ${outs[0]!.join(',')} != cuda ${outs[1]!.join(',')}`);
  });
}

async function invariance(dir: string): Promise<void> {
  const engine = await Engine.load(dir, { backend: 'cuda', tokenizer: false, contexts: 2, kvMemoryBytes: 64 << 20 });
  const V = engine.config.vocabSize;
  const PROMPT = [12, 200, 7, 91, 33, 480, 5, 18];
  const S: SamplingOptions = { temperature: 0.9, topP: 0.95, topK: 40, seed: 1234, ignoreEos: true };
  try {
    await check('same seed, same tokens; another seed differs', async () => {
      const a = await gen(engine, engine.createSequence(S), PROMPT, 24);
      const b = await gen(engine, engine.createSequence(S), PROMPT, 24);
      const c = await gen(engine, engine.createSequence({ ...S, seed: 99 }), PROMPT, 24);
      assert(same(a.tokens, b.tokens), 'same seed differs');
      assert(!same(a.tokens, c.tokens), 'another seed gave the same 24 tokens');
    });
    await check('sampler: top_k 1 and tiny top_p equal greedy', async () => {
      const g = await gen(engine, engine.createSequence({ ignoreEos: true }), PROMPT, 16);
      const k1 = await gen(engine, engine.createSequence({ temperature: 1, topK: 1, seed: 5, ignoreEos: true }), PROMPT, 16);
      const p0 = await gen(engine, engine.createSequence({ temperature: 1, topP: 1e-6, seed: 5, ignoreEos: true }), PROMPT, 16);
      assert(same(g.tokens, k1.tokens) && same(g.tokens, p0.tokens), 'top_k=1 / top_p→0 differ from greedy');
    });
    await check('sampler: repetition penalty changes greedy output and is reproducible', async () => {
      const g = await gen(engine, engine.createSequence({ ignoreEos: true }), PROMPT, 24);
      const r1 = await gen(engine, engine.createSequence({ repetitionPenalty: 5, presencePenalty: 1, ignoreEos: true }), PROMPT, 24);
      const r2 = await gen(engine, engine.createSequence({ repetitionPenalty: 5, presencePenalty: 1, ignoreEos: true }), PROMPT, 24);
      assert(same(r1.tokens, r2.tokens), 'penalized runs differ');
      assert(!same(g.tokens, r1.tokens), 'penalties changed nothing');
    });
    await check('batch invariance: alone vs in a batch of 16', async () => {
      const alone = await gen(engine, engine.createSequence({ ignoreEos: true }), PROMPT, 16);
      const seqs = Array.from({ length: 16 }, () => engine.createSequence({ ignoreEos: true }));
      const prompts = seqs.map((_, i) => (i === 5 ? PROMPT : PROMPT.map((t) => (t * (i + 3)) % V)));
      let results = await engine.step(lease(0), seqs.map((s, i) => ({ sequence: s, tokens: prompts[i]!, sample: true, logits: 'last' as const })));
      const err = relErr(results[5]!.logits!, alone.first);
      const toks: number[] = [results[5]!.token!];
      for (let i = 1; i < 16; i++) {
        results = await engine.step(lease(0), seqs.map((s, j) => ({ sequence: s, tokens: [results[j]!.token!], sample: true })));
        toks.push(results[5]!.token!);
      }
      assert(same(toks, alone.tokens), `batched ${toks.join(',')} != alone ${alone.tokens.join(',')}`);
      assert(err <= 1e-2, `logits rel err ${err}`);
      return `logits rel err ${err.toExponential(2)}`;
    });
    await check('context invariance: context 0 and 1 bit-identical', async () => {
      const a = await gen(engine, engine.createSequence(S), PROMPT, 16, 0);
      const b = await gen(engine, engine.createSequence(S), PROMPT, 16, 1);
      assert(same(a.tokens, b.tokens), 'tokens differ');
      assert(a.first.every((x, i) => x === b.first[i]), 'logits differ');
    });
    await check('concurrent steps on two contexts equal sequential', async () => {
      const seqA = engine.createSequence(S), seqB = engine.createSequence({ ...S, seed: 77 });
      const [ra, rb] = await Promise.all([gen(engine, seqA, PROMPT, 24, 0), gen(engine, seqB, PROMPT.slice(2), 24, 1)]);
      const sa = await gen(engine, engine.createSequence(S), PROMPT, 24, 0);
      const sb = await gen(engine, engine.createSequence({ ...S, seed: 77 }), PROMPT.slice(2), 24, 0);
      assert(same(ra.tokens, sa.tokens) && same(rb.tokens, sb.tokens), 'concurrent run differs');
    });
    await check('chunked prefill equals one-shot', async () => {
      const long = Array.from({ length: 150 }, (_, i) => (i * 37 + 11) % V);
      const one = engine.createSequence({ ignoreEos: true });
      const [r1] = await engine.run([{ sequence: one, tokens: long, logits: 'last' }]);
      const ch = engine.createSequence({ ignoreEos: true });
      await engine.run([{ sequence: ch, tokens: long.slice(0, 40) }]);
      await engine.run([{ sequence: ch, tokens: long.slice(40, 117) }]);
      const [r2] = await engine.run([{ sequence: ch, tokens: long.slice(117), logits: 'last' }]);
      const err = relErr(r2!.logits!, r1!.logits!);
      assert(err <= 1e-2, `rel err ${err}`);
      assert(argmax(r1!.logits!) === argmax(r2!.logits!), 'argmax differs');
      return `rel err ${err.toExponential(2)}`;
    });
    await check('cached follow-up turn equals full re-prefill', async () => {
      const turn2 = [44, 45, 46, 47];
      const a = engine.createSequence({ ignoreEos: true });
      const first = await gen(engine, a, PROMPT, 8);
      const follow = await gen(engine, a, [...turn2], 12);
      const b = engine.createSequence({ ignoreEos: true });
      // a's KV holds PROMPT and the first 7 sampled tokens (gen feeds each token back but the last)
      const full = await gen(engine, b, [...PROMPT, ...first.tokens.slice(0, 7), ...turn2], 12);
      assert(same(follow.tokens, full.tokens), `cached ${follow.tokens.join(',')} != re-prefill ${full.tokens.join(',')}`);
    });
    await check('park to host memory and restore keeps the continuation', async () => {
      const ref = await gen(engine, engine.createSequence(S), PROMPT, 20);
      const seq = engine.createSequence(S);
      const head = await gen(engine, seq, PROMPT, 10);
      await seq.park();
      // other work reuses the freed pages meanwhile
      const other = engine.createSequence({ ignoreEos: true });
      await gen(engine, other, Array.from({ length: 100 }, (_, i) => (i * 13) % V), 4);
      other.free();
      await seq.restore();
      const tail = await gen(engine, seq, [head.tokens.at(-1)!], 10);
      assert(same([...head.tokens, ...tail.tokens], ref.tokens), 'continuation changed');
    });
    await check('bad input: codes, and a bystander is untouched', async () => {
      const by = engine.createSequence({ ignoreEos: true });
      const before = await gen(engine, engine.createSequence({ ignoreEos: true }), PROMPT, 6);
      let code = '';
      try {
        await engine.run([{ sequence: engine.createSequence(), tokens: [V + 5] }]);
      } catch (e) {
        code = (e as { code: string }).code;
      }
      assert(code === 'WEFT_TOKEN_OUT_OF_RANGE', `got ${code}`);
      const after = await gen(engine, by, PROMPT, 6);
      assert(same(before.tokens, after.tokens), 'bystander changed');
    });
  } finally {
    engine.dispose();
  }
}

/** Long prompts through the tensor-core prefill attention (head dim 128, GQA 4): logits against
 * the CPU backend and against the CUDA-core kernel (WEFT_CUDA_NO_MMA), chunked against one-shot. */
async function prefillAttention(dir: string): Promise<void> {
  const prompt = Array.from({ length: 300 }, (_, i) => (i * 131 + 7) % 600);
  const lastLogits = async (backend: 'cpu' | 'cuda', chunks: number[]) => {
    const engine = await Engine.load(dir, { backend, tokenizer: false, threads: 4, maxBatchTokens: 512, maxLogitRows: 320 });
    try {
      const seq = engine.createSequence({ ignoreEos: true });
      let at = 0;
      let r;
      for (const n of chunks) {
        [r] = await engine.run([{ sequence: seq, tokens: prompt.slice(at, at + n), logits: 'all' }]);
        at += n;
      }
      return r!.logits!;
    } finally {
      engine.dispose();
    }
  };
  await check('tensor-core prefill attention: 300-token prompt vs CPU, vs the CUDA-core kernel, chunked vs one-shot', async () => {
    const V = 600;
    const cpu = await lastLogits('cpu', [300]);
    const mma = await lastLogits('cuda', [300]);
    process.env.WEFT_CUDA_NO_MMA = '1';
    const plain = await lastLogits('cuda', [300]);
    delete process.env.WEFT_CUDA_NO_MMA;
    const chunked = await lastLogits('cuda', [77, 223]);
    let eCpu = 0, ePlain = 0;
    for (let p = 0; p < 300; p++) {
      eCpu = Math.max(eCpu, relErr(rowOf(mma, V, p), rowOf(cpu, V, p)));
      ePlain = Math.max(ePlain, relErr(rowOf(mma, V, p), rowOf(plain, V, p)));
    }
    let eChunk = 0;
    for (let p = 0; p < 223; p++) eChunk = Math.max(eChunk, relErr(rowOf(chunked, V, p), rowOf(mma, V, 77 + p)));
    assert(eCpu <= 3e-2 && ePlain <= 3e-2 && eChunk <= 3e-2, `rel err vs cpu ${eCpu}, vs cuda-core ${ePlain}, chunked ${eChunk}`);
    return `rel err vs cpu ${eCpu.toExponential(2)}, vs cuda-core ${ePlain.toExponential(2)}, chunked ${eChunk.toExponential(2)}`;
  });
}

/** Rewrites a bf16 model's layer matrices so that every row is FP8 E4M3 values times a power of two
 * whose largest magnitude is 448 times it: quantizing such a row to FP8 with a per-row scale loses
 * nothing, so an fp8 engine must compute what the bf16 engine computes (to summation order). */
async function makeFp8Exact(dir: string): Promise<void> {
  const file = join(dir, 'model.safetensors');
  const infos = await readSafetensorsHeader(file);
  const out = [];
  for (const t of infos) {
    const v = await readTensorF32(t);
    if (/layers\.\d+\.(self_attn\.[qkvo]_proj|mlp\.(gate|up|down)_proj)\.weight$/.test(t.name)) {
      const K = t.shape[1]!;
      for (let r = 0; r < t.shape[0]!; r++) {
        const row = v.subarray(r * K, (r + 1) * K);
        let amax = 0, at = 0;
        row.forEach((x, i) => { if (Math.abs(x) > amax) { amax = Math.abs(x); at = i; } });
        // row scales differ from row to row (a wrong row's scale would show)
        const sc = 2 ** (Math.ceil(Math.log2(amax / 448)) + (r % 5));
        for (let i = 0; i < K; i++) row[i] = fp8e4m3ToF32(f32ToFp8e4m3(row[i]! / sc)) * sc;
        row[at] = Math.sign(row[at]! || 1) * 448 * sc;
        for (let i = 0; i < K; i++) assert(bf16ToF32(f32ToBf16(row[i]!)) === row[i], `${t.name}: ${row[i]} is not exact in bf16`);
      }
    }
    out.push({ name: t.name, dtype: t.dtype as string, shape: t.shape, data: encodeFloats(v, t.dtype as 'BF16') });
  }
  await writeSafetensors(file, out, { format: 'pt' });
}

/** FP8 weights: exact on an FP8-representable model (GEMV at 1..8 tokens, dequantize + cuBLAS
 * above), close on a random one, PDL on and off bit-identical. */
async function fp8Checks(tmp: string): Promise<void> {
  const exact = join(tmp, 'fp8exact');
  // FFN 4096: down_proj rows are 256 sixteen-byte FP8 vectors, past the GEMV's first batch of loads
  await makeTinyModel(exact, { arch: 'llama', dtype: 'bf16', seed: 31, layers: 2, vocab: 512, hidden: 256, heads: 4, kvHeads: 2, ffn: 4096 });
  await makeFp8Exact(exact);
  const prompt = Array.from({ length: 40 }, (_, i) => (i * 29 + 3) % 512);
  const run = async (dir: string, opts: { quantize?: 'fp8' }) => {
    const engine = await Engine.load(dir, { backend: 'cuda', tokenizer: false, maxBatchTokens: 512, ...opts });
    try {
      const seq = engine.createSequence({ ignoreEos: true });
      const [p] = await engine.run([{ sequence: seq, tokens: prompt, logits: 'all' }]);
      const g = await gen(engine, seq, [argmax(rowOf(p!.logits!, 512, prompt.length - 1))], 24);
      // a batch of 8 (the GEMV's widest) equals the sequence alone
      const seqs = Array.from({ length: 8 }, () => engine.createSequence({ ignoreEos: true }));
      let rs = await engine.step(lease(0), seqs.map((q, i) => ({ sequence: q, tokens: i === 3 ? prompt : prompt.slice(i), sample: true })));
      const batched = [rs[3]!.token!];
      for (let i = 1; i < 25; i++) {
        rs = await engine.step(lease(0), seqs.map((q, j) => ({ sequence: q, tokens: [rs[j]!.token!], sample: true })));
        batched.push(rs[3]!.token!);
      }
      return { prefill: p!.logits!, decode: g.first, tokens: [argmax(rowOf(p!.logits!, 512, prompt.length - 1)), ...g.tokens], batched, stats: engine.stats() };
    } finally {
      engine.dispose();
    }
  };
  await check('fp8: an FP8-representable model equals its bf16 run (prefill via cuBLAS, decode GEMV, batch of 8)', async () => {
    const b = await run(exact, {});
    const f = await run(exact, { quantize: 'fp8' });
    assert(f.stats.weightFormat === 'fp8', `weightFormat ${f.stats.weightFormat}`);
    assert(f.stats.deviceWeightBytes < b.stats.deviceWeightBytes, `fp8 device bytes ${f.stats.deviceWeightBytes} >= bf16 ${b.stats.deviceWeightBytes}`);
    let ePre = 0;
    for (let p = 0; p < prompt.length; p++) ePre = Math.max(ePre, relErr(rowOf(f.prefill, 512, p), rowOf(b.prefill, 512, p)));
    const eDec = relErr(f.decode, b.decode);
    assert(ePre <= 1e-5, `prefill logits rel err ${ePre}`);
    assert(eDec <= 1e-3, `decode logits rel err ${eDec}`);
    assert(same(f.tokens, b.tokens), `fp8 ${f.tokens.join(',')} != bf16 ${b.tokens.join(',')}`);
    assert(same(f.batched, f.tokens), `fp8 batch of 8 ${f.batched.join(',')} != alone ${f.tokens.join(',')}`);
    return `prefill rel err ${ePre.toExponential(2)}, decode ${eDec.toExponential(2)}, device bytes ${f.stats.deviceWeightBytes} vs ${b.stats.deviceWeightBytes}`;
  });
  const rnd = join(tmp, 'fp8rnd');
  await makeTinyModel(rnd, { arch: 'llama', dtype: 'bf16', seed: 32, layers: 2, vocab: 512, hidden: 256, heads: 4, kvHeads: 2, ffn: 512 });
  // E4M3 keeps 3 mantissa bits: a weight moves by up to 1/16 of itself; on random weights (whose
  // row maxima are outliers of a Gaussian) the logits' max |diff| / max |ref| measured 0.147
  await check('fp8: random bf16 weights quantized on the GPU stay close (logits within 25%, top-1 mostly kept)', async () => {
    const b = await run(rnd, {});
    const f = await run(rnd, { quantize: 'fp8' });
    let e = 0, agree = 0;
    for (let p = 0; p < prompt.length; p++) {
      e = Math.max(e, relErr(rowOf(f.prefill, 512, p), rowOf(b.prefill, 512, p)));
      if (argmax(rowOf(f.prefill, 512, p)) === argmax(rowOf(b.prefill, 512, p))) agree++;
    }
    assert(e <= 0.25 && agree >= prompt.length * 0.75, `prefill logits rel err ${e}, top-1 agreement ${agree}/${prompt.length}`);
    assert(same(f.batched, f.tokens), 'fp8 batch of 8 differs from alone');
    return `max rel err ${e.toExponential(2)}, top-1 agreement ${agree}/${prompt.length}`;
  });
  for (const quantize of [undefined, 'fp8'] as const) {
    await check(`programmatic dependent launch on and off: bit-identical logits and tokens (${quantize ?? 'bf16'})`, async () => {
      const off = await run(exact, { quantize });
      process.env.WEFT_CUDA_PDL = '1';
      let on;
      try {
        on = await run(exact, { quantize });
      } finally {
        delete process.env.WEFT_CUDA_PDL;
      }
      assert(on.stats.pdl && !off.stats.pdl, `pdl on ${on.stats.pdl}, off ${off.stats.pdl}`);
      assert(on.prefill.every((x, i) => x === off.prefill[i]) && on.decode.every((x, i) => x === off.decode[i]), 'logits differ');
      assert(same(on.tokens, off.tokens) && same(on.batched, off.batched), 'tokens differ');
    });
  }
}

const codeOf = async (p: Promise<unknown>): Promise<string> => {
  try {
    await p;
    return 'none';
  } catch (e) {
    return (e as { code?: string }).code ?? String(e);
  }
};

/** Injected device faults: a refused launch, a workspace that cannot grow, a stuck stream (the
 * watchdog), each with its code, the sequence as before and the other context serving. */
async function faults(dir: string): Promise<void> {
  process.env.WEFT_FAULT_INJECTION = '1';
  process.env.WEFT_CUDA_WATCHDOG_MS = '400';
  const engine = await Engine.load(dir, { backend: 'cuda', tokenizer: false, contexts: 2, kvMemoryBytes: 64 << 20 });
  delete process.env.WEFT_CUDA_WATCHDOG_MS;
  const PROMPT = [12, 200, 7, 91, 33, 480, 5, 18];
  try {
    const ref = await gen(engine, engine.createSequence({ ignoreEos: true }), PROMPT, 12);
    for (const [kind, want] of [['launch', 'WEFT_DEVICE_ERROR'], ['oom', 'WEFT_DEVICE_OUT_OF_MEMORY']] as const) {
      await check(`fault ${kind}: ${want}, the sequence as before, then it continues`, async () => {
        const seq = engine.createSequence({ ignoreEos: true, repetitionPenalty: kind === 'oom' ? 1.0001 : 1 });
        const head = await gen(engine, seq, PROMPT, 4);
        const before = seq.info();
        engine.native.injectFault(0, kind);
        const code = await codeOf(engine.step(lease(0), [{ sequence: seq, tokens: [head.tokens.at(-1)!], sample: true }]));
        assert(code === want, `got ${code}`);
        const after = seq.info();
        assert(after.numTokens === before.numTokens && after.numPages === before.numPages && !after.busy, `state ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
        const tail = await gen(engine, seq, [head.tokens.at(-1)!], 8, 0);
        if (kind === 'launch') assert(same([...head.tokens, ...tail.tokens], ref.tokens), 'continuation changed');
      });
    }
    await check('fault hang: the watchdog fails the step (WEFT_DEVICE_TIMEOUT), the other context keeps serving, the context returns once drained', async () => {
      const stuck = engine.createSequence({ ignoreEos: true });
      const head = await gen(engine, stuck, PROMPT, 4);
      const before = stuck.info();
      let other = engine.createSequence({ ignoreEos: true });
      let next = PROMPT, otherSteps = 0, stop = false;
      const loop = (async () => {
        while (!stop) {
          if (otherSteps % 100 === 99) {  // a fresh sequence before the context fills
            other.free();
            other = engine.createSequence({ ignoreEos: true });
            next = PROMPT;
          }
          const [r] = await engine.step(lease(1), [{ sequence: other, tokens: next, sample: true }]);
          next = [r!.token!];
          otherSteps++;
        }
      })();
      loop.catch(() => {});  // awaited below; an early failure must not end the process first
      engine.native.injectFault(0, 'hang');
      const t0 = performance.now();
      const code = await codeOf(engine.step(lease(0), [{ sequence: stuck, tokens: [head.tokens.at(-1)!], sample: true }]));
      const waited = performance.now() - t0;
      assert(code === 'WEFT_DEVICE_TIMEOUT', `got ${code}`);
      const during = otherSteps;
      assert(stuck.info().busy, 'the stuck step released its sequence while its work may still run');
      assert(!engine.native.contextReady(0), 'context 0 ready while stuck');
      assert((await codeOf(engine.step(lease(0), [{ sequence: engine.createSequence(), tokens: [1] }]))) === 'WEFT_CONTEXT_BUSY', 'a stuck context took a step');
      await new Promise((r) => setTimeout(r, 200));
      assert(otherSteps > during, 'context 1 stopped while context 0 was stuck');
      engine.native.releaseFault(0);
      const t1 = performance.now();
      while (!engine.native.contextReady(0)) {
        assert(performance.now() - t1 < 10000, 'context 0 did not drain');
        await new Promise((r) => setTimeout(r, 20));
      }
      stop = true;
      await loop;
      const after = stuck.info();
      assert(after.numTokens === before.numTokens && after.numPages === before.numPages && !after.busy, `state ${JSON.stringify(before)} -> ${JSON.stringify(after)}`);
      const tail = await gen(engine, stuck, [head.tokens.at(-1)!], 8, 0);
      assert(same([...head.tokens, ...tail.tokens], ref.tokens), 'continuation changed');
      return `timeout after ${waited.toFixed(0)} ms; context 1 took ${otherSteps} steps meanwhile`;
    });
    await check('fault hang through the context pool: the context is set aside, steps go to the other one', async () => {
      const a = engine.createSequence({ ignoreEos: true });
      engine.native.injectFault(0, 'hang');
      // the pool hands out context 0 first when both are free
      const code = await codeOf(engine.run([{ sequence: a, tokens: PROMPT, sample: true }]));
      assert(code === 'WEFT_DEVICE_TIMEOUT', `got ${code}`);
      assert(engine.contexts.numSetAside === 1, `set aside: ${engine.contexts.numSetAside}`);
      const b = engine.createSequence({ ignoreEos: true });
      for (let i = 0; i < 3; i++) await engine.run([{ sequence: b, tokens: i === 0 ? PROMPT : [5], sample: true }]);
      engine.native.releaseFault(0);
      const t1 = performance.now();
      while (engine.contexts.numSetAside > 0) {
        assert(performance.now() - t1 < 10000, 'context 0 did not come back');
        await new Promise((r) => setTimeout(r, 20));
      }
      assert(engine.contexts.numFree === 2, `free contexts ${engine.contexts.numFree}`);
    });
  } finally {
    engine.dispose();
    delete process.env.WEFT_FAULT_INJECTION;
  }
  await check('fault trap (a sticky device fault) in a child process: WEFT_DEVICE_LOST, every later step too, no crash', async () => {
    const r = spawnSync(process.execPath, [fileURLToPath(import.meta.url), '--child-trap', dir], { encoding: 'utf8', env: { ...process.env, WEFT_FAULT_INJECTION: '1' }, timeout: 120000 });
    const line = (r.stdout ?? '').split('\n').find((l) => l.startsWith('{')) ?? '';
    assert(r.status === 0 && r.signal === null, `child exit ${r.status} ${r.signal}: ${r.stderr?.slice(-500)}`);
    const o = JSON.parse(line) as { first: string; second: string; lost: boolean; other: string };
    assert(o.first === 'WEFT_DEVICE_LOST' && o.second === 'WEFT_DEVICE_LOST' && o.other === 'WEFT_DEVICE_LOST' && o.lost, line);
    return line;
  });
}

async function childTrap(dir: string): Promise<void> {
  const engine = await Engine.load(dir, { backend: 'cuda', tokenizer: false, contexts: 2, kvMemoryBytes: 64 << 20 });
  const seq = engine.createSequence({ ignoreEos: true });
  await engine.step(lease(0), [{ sequence: seq, tokens: [1, 2, 3], sample: true }]);
  engine.native.injectFault(0, 'trap');
  const first = await codeOf(engine.step(lease(0), [{ sequence: seq, tokens: [4], sample: true }]));
  const second = await codeOf(engine.step(lease(0), [{ sequence: seq, tokens: [4], sample: true }]));
  const other = await codeOf(engine.step(lease(1), [{ sequence: engine.createSequence(), tokens: [4], sample: true }]));
  const lost = engine.stats().deviceLost;
  engine.dispose();
  console.log(JSON.stringify({ first, second, other, lost }));
}

/** KV sizing with another process on the GPU: a child holds most of the memory; a load asking
 * for more KV than is free gets what is free (less the workspaces), never more. */
async function memorySizing(dir: string): Promise<void> {
  await check('KV pool sized from the memory other processes leave (never over-committed)', async () => {
    const { free, total } = native().cudaMemInfo();
    const hog = Math.floor(free - 6 * 2 ** 30);
    const child = (await import('node:child_process')).spawn(process.execPath, [fileURLToPath(import.meta.url), '--child-hog', dir, String(hog)], { stdio: ['pipe', 'pipe', 'inherit'] });
    try {
      await new Promise<void>((resolve, reject) => {
        let out = '';
        child.stdout!.on('data', (d) => { out += d; if (out.includes('holding')) resolve(); });
        child.on('exit', (c) => reject(new Error(`hog exited ${c}`)));
      });
      const left = native().cudaMemInfo().free;
      assert(left < 7 * 2 ** 30, `the child holds too little: ${left} free`);
      const engine = await Engine.load(dir, { backend: 'cuda', tokenizer: false, kvMemoryBytes: 100 * 2 ** 30 });
      const st = engine.stats();
      const kvBytes = st.kvPagesTotal * st.kvPageTokens * st.kvBytesPerToken;
      const after = native().cudaMemInfo().free;
      engine.dispose();
      assert(kvBytes < left && after > 256 * 2 ** 20, `KV ${kvBytes} of ${left} free, ${after} left after the load`);
      return `total ${(total / 2 ** 30).toFixed(1)} GiB, ${(left / 2 ** 30).toFixed(2)} GiB free beside the child, KV got ${(kvBytes / 2 ** 30).toFixed(2)} GiB, ${(after / 2 ** 20).toFixed(0)} MiB left`;
    } finally {
      child.kill('SIGTERM');
    }
  });
}

async function childHog(dir: string, bytes: number): Promise<void> {
  const engine = await Engine.load(dir, { backend: 'cuda', tokenizer: false, kvMemoryBytes: bytes });
  console.log(`holding ${engine.stats().kvPagesTotal} pages`);
  await new Promise((r) => setTimeout(r, 600000));
}

async function main(): Promise<void> {
  const at = process.argv.indexOf('--child-trap');
  if (at > 0) return childTrap(process.argv[at + 1]!);
  const hogAt = process.argv.indexOf('--child-hog');
  if (hogAt > 0) return childHog(process.argv[hogAt + 1]!, Number(process.argv[hogAt + 2]));
  const tmp = mkdtempSync(join(tmpdir(), 'weft-cuda-'));
  try {
    await fixtures();
    await fp8Checkpoints();
    await fp8Checks(tmp);
    const inv = join(tmp, 'inv');
    await makeTinyModel(inv, { arch: 'llama', dtype: 'f16', seed: 21, layers: 2, vocab: 512, hidden: 128, heads: 4, kvHeads: 2, ffn: 256 });
    await invariance(inv);
    const wide = join(tmp, 'wide');
    await makeTinyModel(wide, { arch: 'llama', dtype: 'bf16', seed: 9, layers: 2, vocab: 600, hidden: 512, heads: 4, kvHeads: 1, ffn: 512, maxPos: 1024 });
    await prefillAttention(wide);
    if (!quick) {
      // (not under compute-sanitizer: the injected faults are CUDA errors on purpose)
      await faults(inv);
      await memorySizing(inv);
      await cpuVsCuda(join(ROOT, 'models', 'default'), 'default model', [5, 60, 7, 91, 33, 120, 5, 18], 48);
      await cpuVsCuda(inv, 'tiny f16 llama', [12, 200, 7, 91, 33, 480, 5, 18], 48);
      const q = join(tmp, 'qwen');
      await makeTinyModel(q, { arch: 'qwen2', dtype: 'bf16', seed: 3, layers: 3, vocab: 700, hidden: 256, heads: 8, kvHeads: 2, headDim: 64, ffn: 512 });
      await cpuVsCuda(q, 'tiny bf16 qwen2 (biases, GQA 4)', [1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20], 48);
    }
  } finally {
    rmSync(tmp, { recursive: true, force: true });
  }
  const failed = results.filter((r) => !r.ok);
  console.log(failed.length === 0 ? `CUDA CHECK: PASS (${results.length}/${results.length})`
    : `CUDA CHECK: FAIL (${failed.length} of ${results.length} failed: ${failed.map((f) => f.name).join('; ')})`);
  process.exitCode = failed.length === 0 ? 0 : 1;
}

await main();

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
import { readFileSync } from 'node:fs';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Engine, type SamplingOptions, type Sequence } from '../../src/engine/engine.js';
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

async function main(): Promise<void> {
  const tmp = mkdtempSync(join(tmpdir(), 'weft-cuda-'));
  try {
    await fixtures();
    const inv = join(tmp, 'inv');
    await makeTinyModel(inv, { arch: 'llama', dtype: 'f16', seed: 21, layers: 2, vocab: 512, hidden: 128, heads: 4, kvHeads: 2, ffn: 256 });
    await invariance(inv);
    const wide = join(tmp, 'wide');
    await makeTinyModel(wide, { arch: 'llama', dtype: 'bf16', seed: 9, layers: 2, vocab: 600, hidden: 512, heads: 4, kvHeads: 1, ffn: 512, maxPos: 1024 });
    await prefillAttention(wide);
    if (!quick) {
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

/**
 * npm run bench:engine — weft's CPU engine against llama.cpp (node-llama-cpp's prebuilt CPU
 * build) on the same GGUF files, in the same run, plus the memory-bandwidth bound.
 *
 * Models (random weights, written by scripts/make-tiny-model.ts, then exported by weft's GGUF
 * module): bench100m (~100M parameters) and llama1b (Llama-3.2-1B's dimensions). Weight types:
 * f16, q8_0 and q4_k_m (llama.cpp's mix: Q4_K with Q6_K for the LM head and some attn_v/ffn_down).
 * Both engines load the same file. For each pair: prefill of a prompt, aggregate decode at each
 * concurrency, greedy tokens compared, the bound (weight bytes per step / read bandwidth).
 *
 *   npm run bench:engine -- [--models bench100m,llama1b] [--types f16,q8_0,q4_k_m] [--threads 2]
 *        [--sequences 1,4,16,64] [--prompt-tokens 512] [--decode-prompt-tokens 64] [--gen-tokens 32]
 *        [--repeats 3] [--skip-peer] [--dir DIR]
 * Both engines report the best of `repeats` timed runs per measure.
 * With --backend cuda: the GPU benchmark against transformers (bench/engine-cuda.ts).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseFlags } from '../src/cli/args.js';
import { benchEngine, kvBytesFor, type BenchResult } from '../src/engine/benchmark.js';
import { Engine } from '../src/engine/engine.js';
import { exportGguf, type GgufOutType } from '../src/engine/gguf-export.js';
import { loadAnyModelConfig } from '../src/engine/model-source.js';
import { native } from '../src/engine/native.js';
import { cpuIdentity } from '../src/engine/plan.js';
import { makeTinyModel, PRESETS } from '../scripts/make-tiny-model.js';

const f = parseFlags(process.argv.slice(2), {
  threads: 'number', sequences: 'list', 'prompt-tokens': 'number', 'decode-prompt-tokens': 'number', 'gen-tokens': 'number',
  'skip-peer': 'boolean', dir: 'string', repeats: 'number', backend: 'string', models: 'string', types: 'string',
  'skip-contexts': 'boolean', 'peer-eager': 'boolean',
});
if (f.backend === 'cuda') {
  await import('./engine-cuda.js'); // the GPU benchmark (its own flags and peer)
  process.exit(0);
}
const repeats = (f.repeats as number | undefined) ?? 3;
const threads = (f.threads as number | undefined) ?? 2;
const promptTokens = (f['prompt-tokens'] as number | undefined) ?? 512;
const decodePromptTokens = (f['decode-prompt-tokens'] as number | undefined) ?? 64;
const genTokens = (f['gen-tokens'] as number | undefined) ?? 32;
const models = ((f.models as string | undefined) ?? 'bench100m,llama1b').split(',').map((s) => s.trim());
const typesFlag = (f.types as string | undefined)?.split(',').map((s) => s.trim()) as GgufOutType[] | undefined;
const log = (s: string) => process.stderr.write(s + '\n');

const root = (f.dir as string | undefined) ?? join(tmpdir(), 'weft-bench');
mkdirSync(root, { recursive: true });

// the physical limit: read bandwidth with the engines' thread count. Shared machines drift, so it
// is measured at the start and after each weft run, and the highest figure (the tightest bound) kept.
let bw = native().measureBandwidth(1 << 30, threads);
const bwSeen: number[] = [bw.readBytesPerS];
const measureBw = () => {
  const b = native().measureBandwidth(1 << 30, threads);
  bwSeen.push(b.readBytesPerS);
  if (b.readBytesPerS > bw.readBytesPerS) bw = b;
};
log(`read bandwidth ${(bw.readBytesPerS / 1e9).toFixed(2)} GB/s with ${threads} threads`);

const best = (runs: BenchResult[][]) =>
  runs[0]!.map((r, i) => ({
    ...r,
    prefill_tokens_per_s: Math.max(...runs.map((x) => x[i]!.prefill_tokens_per_s)),
    decode_tokens_per_s: Math.max(...runs.map((x) => x[i]!.decode_tokens_per_s)),
    decode_step_ms: Math.min(...runs.map((x) => x[i]!.decode_step_ms)),
  }));
const repeat = async <T>(n: number, fn: () => Promise<T>) => {
  const out: T[] = [];
  for (let i = 0; i < n; i++) out.push(await fn());
  return out;
};

interface PairResult {
  model: string;
  type: GgufOutType;
  weightBytes: number;
  prefill: number;
  decode: { sequences: number; weft: number; peer?: number }[];
  peerPrefill?: number;
  greedy: { weft: number[]; peer: number[]; equal: number };
  boundTokS?: number;
}
const results: PairResult[] = [];

for (const model of models) {
  const preset = PRESETS[model];
  if (!preset) throw new Error(`unknown model ${model} (known: ${Object.keys(PRESETS).join(', ')})`);
  const modelDir = join(root, model);
  if (!existsSync(join(modelDir, 'config.json'))) {
    log(`writing the ${model} model to ${modelDir}`);
    await makeTinyModel(modelDir, preset);
  }
  const big = model !== 'bench100m';
  const types = typesFlag ?? (big ? (['q8_0', 'q4_k_m'] as GgufOutType[]) : (['f16', 'q8_0', 'q4_k_m'] as GgufOutType[]));
  const sequences = (f.sequences as number[] | undefined) ?? (big ? [1, 16] : [1, 4, 16, 64]);
  const maxSeq = Math.max(...sequences);
  for (const type of types) {
    const gguf = join(root, `${model}.${type}.gguf`);
    if (!existsSync(gguf)) {
      log(`exporting ${gguf}`);
      const t0 = performance.now();
      await exportGguf(modelDir, gguf, { type });
      log(`  ${((performance.now() - t0) / 1000).toFixed(1)} s`);
    }
    // weft on the GGUF file
    const engine = await Engine.load(gguf, {
      threads, maxBatchTokens: 512, maxBatchSequences: maxSeq, maxLogitRows: maxSeq, tokenizer: false,
      kvMemoryBytes: kvBytesFor(await loadAnyModelConfig(gguf), 2, maxSeq, Math.max(promptTokens, decodePromptTokens) + genTokens),
    });
    const config = engine.config;
    const stats = engine.stats();
    log(`weft ${model} ${type}: weights read per step ${(stats.weightBytes / 1e6).toFixed(1)} MB`);
    await benchEngine(engine, { sequences: [1], promptTokens: 32, genTokens: 4 }); // warm-up
    const [prefill] = best(await repeat(repeats, () => benchEngine(engine, { sequences: [1], promptTokens, genTokens: 1 })));
    const weftDecode = best(await repeat(repeats, () => benchEngine(engine, { sequences, promptTokens: decodePromptTokens, genTokens })));
    const checkPrompt = Array.from({ length: 16 }, (_, i) => (i * 7919 + 13) % config.vocabSize);
    const weftGreedy: number[] = [];
    {
      const s = engine.createSequence({ ignoreEos: true });
      let next = checkPrompt;
      for (let i = 0; i < 16; i++) {
        const [r] = await engine.run([{ sequence: s, tokens: next, sample: true }]);
        weftGreedy.push(r!.token!);
        next = [r!.token!];
      }
      s.free();
    }
    engine.dispose();
    measureBw();
    log(`weft prefill ${prefill!.prefill_tokens_per_s.toFixed(1)} tok/s; decode ${weftDecode.map((r) => `${r.sequences}: ${r.decode_tokens_per_s.toFixed(1)}`).join(', ')}`);

    let peer: Awaited<ReturnType<typeof import('./llamacpp.js').runLlamaCpp>> | undefined;
    let peerGreedy: number[] = [];
    if (!f['skip-peer']) {
      const { greedyTokens, runLlamaCpp } = await import('./llamacpp.js');
      peerGreedy = await greedyTokens(gguf, checkPrompt, 16, { threads });
      peer = await runLlamaCpp(gguf, { threads, promptTokens, genTokens, sequences, decodePromptTokens, repeats, log });
    }
    results.push({
      model, type, weightBytes: stats.weightBytes,
      prefill: prefill!.prefill_tokens_per_s,
      peerPrefill: peer?.prefillTokensPerS,
      decode: weftDecode.map((r) => ({ sequences: r.sequences, weft: r.decode_tokens_per_s, peer: peer?.decode.find((d) => d.sequences === r.sequences)?.tokensPerS })),
      greedy: { weft: weftGreedy, peer: peerGreedy, equal: peerGreedy.filter((t, i) => t === weftGreedy[i]).length },
    });
  }
}

// report
const fmt = (x: number | undefined, d = 1) => (x === undefined ? '—' : x.toFixed(d));
const ratio = (a: number, b: number | undefined) => (b ? `${(a / b).toFixed(2)}×` : '—');
const cpu = cpuIdentity();
console.log(`\nCPU: ${cpu.model} (${cpu.features.join(' ')}); ${threads} threads; weft SIMD ${native().simd}, quantized kernels ${native().quant.kernel}.`);
console.log(`Read bandwidth ${(bw.readBytesPerS / 1e9).toFixed(2)} GB/s (${threads} threads, 1 GiB, best of 5 passes; measured ${bwSeen.length} times: ${bwSeen.map((b) => (b / 1e9).toFixed(1)).join(', ')} GB/s, the highest kept).`);
console.log(`Decode runs: ${decodePromptTokens}-token prompts, ${genTokens} generated tokens per sequence; prefill: one ${promptTokens}-token prompt.`);
const rows: string[] = [];
rows.push('| model | weights | MB read / step | measure | weft | llama.cpp | weft / llama.cpp |');
rows.push('|---|---|---|---|---|---|---|');
for (const r of results) {
  const mb = (r.weightBytes / 1e6).toFixed(0);
  r.boundTokS = bw.readBytesPerS / r.weightBytes;
  rows.push(`| ${r.model} | ${r.type} | ${mb} | prefill tok/s (${promptTokens}) | ${fmt(r.prefill)} | ${fmt(r.peerPrefill)} | ${ratio(r.prefill, r.peerPrefill)} |`);
  for (const d of r.decode) rows.push(`| | | | decode tok/s ×${d.sequences} | ${fmt(d.weft)} | ${fmt(d.peer)} | ${ratio(d.weft, d.peer)} |`);
  const d1 = r.decode.find((d) => d.sequences === 1);
  rows.push(`| | | | decode ×1 vs bound ${fmt(r.boundTokS)} tok/s | ${d1 ? ((100 * d1.weft) / r.boundTokS).toFixed(0) + '%' : '—'} | ${d1?.peer ? ((100 * d1.peer) / r.boundTokS).toFixed(0) + '%' : '—'} | |`);
  rows.push(`| | | | greedy tokens equal (of 16) | ${r.greedy.peer.length ? r.greedy.equal : '—'} | | |`);
}
console.log('\n' + rows.join('\n'));
console.log('\n' + JSON.stringify({ cpu, threads, bandwidth: bw, bandwidthSeen: bwSeen, results }));

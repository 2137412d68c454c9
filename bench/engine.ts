/**
 * npm run bench:engine — weft's CPU engine against llama.cpp (node-llama-cpp's prebuilt CPU
 * build) on the same random ~100M-parameter f16 Llama, in the same run, plus the memory-bandwidth
 * bound. Prints a markdown table of absolute numbers and weft/llama.cpp ratios, and a JSON line.
 *
 *   npm run bench:engine -- [--threads 2] [--sequences 1,4,16,64] [--prompt-tokens 512]
 *                           [--decode-prompt-tokens 64] [--gen-tokens 32] [--repeats 3] [--skip-peer]
 * Both engines report the best of `repeats` timed runs per measure.
 * With --backend cuda: the GPU benchmark against transformers (bench/engine-cuda.ts).
 */
import { existsSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseFlags } from '../src/cli/args.js';
import { benchEngine, kvBytesFor, type BenchResult } from '../src/engine/benchmark.js';
import { Engine } from '../src/engine/engine.js';
import { native } from '../src/engine/native.js';
import { makeTinyModel, PRESETS } from '../scripts/make-tiny-model.js';
import { exportGguf } from './gguf.js';

const f = parseFlags(process.argv.slice(2), {
  threads: 'number', sequences: 'list', 'prompt-tokens': 'number', 'decode-prompt-tokens': 'number', 'gen-tokens': 'number',
  'skip-peer': 'boolean', dir: 'string', repeats: 'number', backend: 'string', models: 'string', 'skip-contexts': 'boolean',
  'peer-eager': 'boolean',
});
if (f.backend === 'cuda') {
  await import('./engine-cuda.js'); // the GPU benchmark (its own flags and peer)
  process.exit(0);
}
const repeats = (f.repeats as number | undefined) ?? 3;
const threads = (f.threads as number | undefined) ?? 2;
const sequences = (f.sequences as number[] | undefined) ?? [1, 4, 16, 64];
const promptTokens = (f['prompt-tokens'] as number | undefined) ?? 512;
const decodePromptTokens = (f['decode-prompt-tokens'] as number | undefined) ?? 64;
const genTokens = (f['gen-tokens'] as number | undefined) ?? 32;
const log = (s: string) => process.stderr.write(s + '\n');

const root = (f.dir as string | undefined) ?? join(tmpdir(), 'weft-bench');
const modelDir = join(root, 'bench100m');
const ggufPath = join(root, 'bench100m.f16.gguf');
mkdirSync(root, { recursive: true });
if (!existsSync(join(modelDir, 'config.json'))) {
  log(`writing the bench model to ${modelDir}`);
  await makeTinyModel(modelDir, PRESETS.bench100m);
}

// 1. the physical limit: read bandwidth with the engine's thread count. Shared machines drift, so it
// is measured before and after weft runs and the higher figure (the tighter bound) is kept.
const measureBw = () => native().measureBandwidth(1 << 30, threads);
const bwBefore = measureBw();
log(`read bandwidth ${(bwBefore.readBytesPerS / 1e9).toFixed(2)} GB/s with ${threads} threads`);

// 2. weft
const probe = await Engine.load(modelDir, { threads: 1, kvMemoryBytes: 1 << 22, maxBatchTokens: 1, tokenizer: false });
const config = probe.config;
probe.dispose();
const maxSeq = Math.max(...sequences);
const engine = await Engine.load(modelDir, {
  threads, maxBatchTokens: 512, maxBatchSequences: maxSeq, maxLogitRows: maxSeq, tokenizer: false,
  kvMemoryBytes: kvBytesFor(config, 2, maxSeq, Math.max(promptTokens, decodePromptTokens) + genTokens),
});
const stats = engine.stats();
log(`weft: ${native().simd}, weights read per step ${(stats.weightBytes / 1e6).toFixed(1)} MB, KV ${stats.kvBytesPerToken} B/token`);
await benchEngine(engine, { sequences: [1], promptTokens: 32, genTokens: 4 }); // warm-up
// best of `repeats` runs per measure, as the llama.cpp runner does
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
const weftRss = process.resourceUsage().maxRSS * 1024;
const bwAfter = measureBw();
const bw = bwAfter.readBytesPerS > bwBefore.readBytesPerS ? bwAfter : bwBefore;
log(`weft prefill ${prefill!.prefill_tokens_per_s.toFixed(1)} tok/s; decode ${weftDecode.map((r) => `${r.sequences}: ${r.decode_tokens_per_s.toFixed(1)}`).join(', ')}`);

// 3. llama.cpp on the same weights
let peer: Awaited<ReturnType<typeof import('./llamacpp.js').runLlamaCpp>> | undefined;
let peerGreedy: number[] = [];
if (!f['skip-peer']) {
  if (!existsSync(ggufPath)) {
    log(`exporting ${ggufPath}`);
    await exportGguf(modelDir, ggufPath, { dtype: 'f16' });
  }
  // loaded here so that --backend cuda runs without node-llama-cpp installed
  const { greedyTokens, runLlamaCpp } = await import('./llamacpp.js');
  peerGreedy = await greedyTokens(ggufPath, checkPrompt, 16, { threads });
  peer = await runLlamaCpp(ggufPath, { threads, promptTokens, genTokens, sequences, decodePromptTokens, repeats, log });
}

// 4. report
const boundTokS = bw.readBytesPerS / stats.weightBytes;
const fmt = (x: number | undefined, d = 1) => (x === undefined ? '—' : x.toFixed(d));
const ratio = (a: number, b: number | undefined) => (b ? `${(a / b).toFixed(2)}×` : '—');
const rows: string[] = [];
rows.push('| measure | weft | llama.cpp | weft / llama.cpp |');
rows.push('|---|---|---|---|');
rows.push(`| prefill tok/s (${promptTokens}-token prompt) | ${fmt(prefill!.prefill_tokens_per_s)} | ${fmt(peer?.prefillTokensPerS)} | ${ratio(prefill!.prefill_tokens_per_s, peer?.prefillTokensPerS)} |`);
for (const r of weftDecode) {
  const p = peer?.decode.find((d) => d.sequences === r.sequences)?.tokensPerS;
  rows.push(`| decode tok/s, ${r.sequences} sequence${r.sequences > 1 ? 's (aggregate)' : ''} | ${fmt(r.decode_tokens_per_s)} | ${fmt(p)} | ${ratio(r.decode_tokens_per_s, p)} |`);
}
const d1 = weftDecode.find((r) => r.sequences === 1);
rows.push(`| bandwidth bound, decode at 1 sequence (tok/s) | ${fmt(boundTokS)} | | weft at ${d1 ? ((100 * d1.decode_tokens_per_s) / boundTokS).toFixed(0) : '—'}% of the bound |`);
rows.push(`| KV bytes per token | ${stats.kvBytesPerToken} (${stats.kvDtype}) | ${2 * config.numLayers * config.numKvHeads * config.headDim * 2} (f16) | |`);
rows.push(`| peak RSS (process, MB) | ${fmt(weftRss / 1e6, 0)} | ${fmt(peer?.peakRssBytes !== undefined ? peer.peakRssBytes / 1e6 : undefined, 0)} (cumulative) | |`);
const same = peerGreedy.length ? peerGreedy.filter((t, i) => t === weftGreedy[i]).length : 0;
console.log(`\nModel: random Llama f16, hidden ${config.hiddenSize}, ${config.numLayers} layers, ${config.numHeads}/${config.numKvHeads} heads, FFN ${config.intermediateSize}, vocab ${config.vocabSize}; ${threads} threads; weft SIMD ${native().simd}.`);
console.log(`Read bandwidth ${(bw.readBytesPerS / 1e9).toFixed(2)} GB/s (${threads} threads, 1 GiB, best of 5 passes; ${(bwBefore.readBytesPerS / 1e9).toFixed(2)} before and ${(bwAfter.readBytesPerS / 1e9).toFixed(2)} after weft's runs, the higher kept); weights read per decode step ${(stats.weightBytes / 1e6).toFixed(1)} MB.`);
console.log(`Decode runs: ${decodePromptTokens}-token prompts, ${genTokens} generated tokens per sequence.`);
if (peer) console.log(`GGUF export check: ${same}/16 greedy tokens equal between weft and llama.cpp (weft ${weftGreedy.join(',')}; llama.cpp ${peerGreedy.join(',')}). llama.cpp settings: ${JSON.stringify(peer.settings)}`);
console.log('\n' + rows.join('\n'));
console.log('\n' + JSON.stringify({ bandwidth: bw, prefill, decode: weftDecode, peer, greedyMatch: same, kvBytesPerToken: stats.kvBytesPerToken, weightBytes: stats.weightBytes, weftPeakRss: weftRss }));

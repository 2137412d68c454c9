/**
 * npm run bench:engine -- --backend cuda — weft's CUDA backend against Hugging Face transformers
 * (scripts/gpu/hf_bench.py: bf16, static cache, compiled where it works) on the same random bf16
 * weights in the shapes of Llama-3.2-1B and Llama-3-8B (scripts/gpu/make_bench_model.py), plus the
 * physical limit (device-to-device copy bandwidth) and the execution-context experiments:
 * N contexts on N streams vs one, and decode inter-token latency while another context prefills
 * a 4k-token prompt. Then FP8 weights (`quantize: 'fp8'`, --no-fp8 leaves them out): the same model
 * loaded with fp8, measured the same way and reported as fp8 / bf16, with its bandwidth use computed
 * from the bytes an fp8 step reads. And programmatic dependent launch (--no-pdl-compare leaves it
 * out): decode at 1 sequence with PDL on and off (an engine loaded with WEFT_CUDA_PDL=1), for
 * bf16 and fp8.
 *
 *   npm run bench:engine -- --backend cuda [--models llama1b,llama8b] [--sequences 1,8,64,256]
 *       [--prompt-tokens 512] [--gen-tokens 256] [--dir /tmp/weft-bench] [--skip-peer]
 *       [--skip-contexts] [--peer-eager] [--no-fp8] [--no-pdl-compare]
 * Prints a markdown table per model and one JSON line with everything; exits 1 when an fp8 or PDL
 * measurement failed (its error is in the tables and the JSON).
 */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseFlags } from '../src/cli/args.js';
import { benchEngine, kvBytesFor, type BenchResult } from '../src/engine/benchmark.js';
import { loadModelConfig, type ModelConfig } from '../src/engine/config.js';
import { Engine, type EngineOptions, type Sequence } from '../src/engine/engine.js';
import { native } from '../src/engine/native.js';

const ROOT = join(dirname(fileURLToPath(import.meta.url)), '..', '..');
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16'; // 4 contexts step concurrently
const f = parseFlags(process.argv.slice(2), {
  backend: 'string', models: 'string', sequences: 'list', 'prompt-tokens': 'number', 'gen-tokens': 'number', dir: 'string',
  'skip-peer': 'boolean', 'skip-contexts': 'boolean', 'peer-eager': 'boolean',
  fp8: 'boolean', 'no-fp8': 'boolean', 'pdl-compare': 'boolean', 'no-pdl-compare': 'boolean',
});
const fp8On = !f['no-fp8'] && f.fp8 !== false;
const pdlCompare = !f['no-pdl-compare'] && f['pdl-compare'] !== false;
if (pdlCompare && process.env.WEFT_CUDA_PDL !== undefined) {
  throw new Error('WEFT_CUDA_PDL is set, so every engine would run with PDL and --pdl-compare has nothing to compare: unset it, or pass --no-pdl-compare');
}
const models = ((f.models as string | undefined) ?? 'llama1b,llama8b').split(',');
const sequences = (f.sequences as number[] | undefined) ?? [1, 8, 64, 256];
const promptTokens = (f['prompt-tokens'] as number | undefined) ?? 512;
const genTokens = (f['gen-tokens'] as number | undefined) ?? 256;
const root = (f.dir as string | undefined) ?? join(tmpdir(), 'weft-bench');
const log = (s: string) => process.stderr.write(s + '\n');
const lease = (index: number) => ({ index, release: () => {} });
const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor((p / 100) * s.length))]!;
};
const tokens = (n: number, vocab: number, seed: number) => Array.from({ length: n }, (_, i) => (i * 7919 + seed * 104729) % vocab);
const errors: string[] = [];
const fail = (what: string, err: unknown) => {
  const msg = `${what}: ${(err as Error)?.message ?? String(err)}`;
  errors.push(msg);
  log(`ERROR ${msg}`);
  return msg;
};

interface PeerResult { sequences: number; ttft_ms: number; prefill_tokens_per_s: number; decode_tokens_per_s: number; decode_step_ms: number }

async function prefillAll(engine: Engine, seqs: Sequence[], prompt: (i: number) => number[], context: number): Promise<number[]> {
  const next: number[] = [];
  for (let i = 0; i < seqs.length; i++) {
    const [r] = await engine.step(lease(context), [{ sequence: seqs[i]!, tokens: prompt(i), sample: true }]);
    next.push(r!.token!);
  }
  return next;
}

/** Time to first token: one prompt of `promptTokens`, prefill and the first sampled token (best of 5). */
async function timeToFirstToken(engine: Engine): Promise<number> {
  const ttfts: number[] = [];
  for (let i = 0; i < 5; i++) {
    const s = engine.createSequence({ ignoreEos: true });
    const t = performance.now();
    await engine.run([{ sequence: s, tokens: tokens(promptTokens, engine.config.vocabSize, i + 1), sample: true }]);
    ttfts.push(performance.now() - t);
    s.free();
  }
  return Math.min(...ttfts);
}

/** Decode tokens/s of one sequence (prompt `promptTokens`, `genTokens` steps). */
async function decode1(engine: Engine): Promise<number> {
  const [r] = await benchEngine(engine, { sequences: [1], promptTokens, genTokens });
  return r!.decode_tokens_per_s;
}

/**
 * Decode at 1 sequence with PDL off (`off`: the default) and on (an engine `load` makes with
 * WEFT_CUDA_PDL=1, which the native side reads when it creates the contexts), alternating, best of
 * 3 each.
 */
async function comparePdl(off: Engine, load: () => Promise<Engine>): Promise<{ on: number; off: number }> {
  process.env.WEFT_CUDA_PDL = '1';
  let on: Engine;
  try {
    on = await load();
  } finally {
    delete process.env.WEFT_CUDA_PDL;
  }
  try {
    await benchEngine(on, { sequences: [1], promptTokens: 64, genTokens: 8 }); // warm-up
    const best = { on: 0, off: 0 };
    for (let round = 0; round < 3; round++) {
      best.on = Math.max(best.on, await decode1(on));
      best.off = Math.max(best.off, await decode1(off));
    }
    return best;
  } finally {
    on.dispose();
  }
}

/**
 * Weight bytes one decode step reads: the layers' matrices (q, k, v, o, gate, up, down) as bf16, or
 * as fp8 (1 byte a weight + an f32 scale per output row); the norms and the LM head bf16 either way.
 */
function stepWeightBytes(c: ModelConfig, fp8: boolean): number {
  const q = c.numHeads * c.headDim, kv = c.numKvHeads * c.headDim, h = c.hiddenSize, ff = c.intermediateSize;
  const weights = h * (q + 2 * kv) + q * h + 2 * h * ff + ff * h;
  const rows = q + 2 * kv + h + 2 * ff + h;
  const matrices = fp8 ? weights + 4 * rows : 2 * weights;
  return c.numLayers * (matrices + 2 * 2 * h) + 2 * h + 2 * c.vocabSize * h;
}

/** Decode `steps` steps of `seqs` on one context; returns each step's duration (ms). */
async function decodeLoop(engine: Engine, seqs: Sequence[], next: number[], steps: number, context: number): Promise<number[]> {
  const times: number[] = [];
  for (let s = 0; s < steps; s++) {
    const t0 = performance.now();
    const rs = await engine.step(lease(context), seqs.map((q, i) => ({ sequence: q, tokens: [next[i]!], sample: true })));
    times.push(performance.now() - t0);
    rs.forEach((r, i) => (next[i] = r.token!));
  }
  return times;
}

const report: Record<string, unknown> = {};
const tables: string[] = [];
const copyBw = native().cudaCopyBandwidth(2 ** 30);
log(`device copy bandwidth ${(copyBw / 1e12).toFixed(3)} TB/s (1 GiB device-to-device, read + write)`);

for (const shape of models) {
  const dir = join(root, shape);
  if (!existsSync(join(dir, 'model.safetensors.index.json'))) {
    log(`writing ${dir}`);
    const r = spawnSync('python3', [join(ROOT, 'scripts', 'gpu', 'make_bench_model.py'), '--shape', shape, '--out', dir], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error(`make_bench_model.py failed (${r.status})`);
  }
  const config = await loadModelConfig(dir);
  const maxSeq = Math.max(...sequences);
  const contexts = 4;
  const options: EngineOptions = {
    backend: 'cuda', contexts, maxBatchTokens: 4096, maxBatchSequences: maxSeq, maxLogitRows: maxSeq, tokenizer: false,
    kvMemoryBytes: kvBytesFor(config, 2, maxSeq + 72, promptTokens + genTokens) + kvBytesFor(config, 2, 1, 4096 + 64),
  };
  // the PDL-off engines: the same but for a KV pool sized for decode1 (the pool's size does not change a step)
  const pdlOffOptions: EngineOptions = { ...options, kvMemoryBytes: kvBytesFor(config, 2, 8, promptTokens + genTokens + 64) };
  const t0 = performance.now();
  const engine = await Engine.load(dir, options);
  const loadS = (performance.now() - t0) / 1000;
  const stats = engine.stats();
  log(`${shape}: loaded in ${loadS.toFixed(1)} s on ${stats.device}; weights per step ${(stats.weightBytes / 1e9).toFixed(2)} GB (bf16 layers + LM head computed: ${(stepWeightBytes(config, false) / 1e9).toFixed(2)} GB); KV ${stats.kvBytesPerToken} B/token, ${stats.kvPagesTotal} pages`);
  await benchEngine(engine, { sequences: [1, 8], promptTokens: 64, genTokens: 8 }); // warm-up

  const ttft = await timeToFirstToken(engine);
  const weft = await benchEngine(engine, { sequences, promptTokens, genTokens });
  log(`${shape} weft: ttft ${ttft.toFixed(2)} ms; ` + weft.map((r) => `${r.sequences}: prefill ${r.prefill_tokens_per_s.toFixed(0)}, decode ${r.decode_tokens_per_s.toFixed(0)} tok/s`).join('; '));

  // the seed's claims: N contexts vs one, and decode ITL under a concurrent 4k prefill
  let ctxRows: string[] = [];
  const ctxJson: Record<string, unknown> = {};
  if (!f['skip-contexts']) {
    const steps = 64;
    for (const total of [16, 64]) {
      const line: string[] = [];
      for (const n of [1, 2, 4]) {
        const groups = Array.from({ length: n }, () => Array.from({ length: total / n }, () => engine.createSequence({ ignoreEos: true })));
        const nexts = await Promise.all(groups.map((g, c) => prefillAll(engine, g, (i) => tokens(128, config.vocabSize, c * 100 + i), c)));
        const t = performance.now();
        await Promise.all(groups.map((g, c) => decodeLoop(engine, g, nexts[c]!, steps, c)));
        const tokS = (total * steps) / ((performance.now() - t) / 1000);
        groups.flat().forEach((s) => s.free());
        line.push(tokS.toFixed(0));
        ctxJson[`decode_${total}_on_${n}_contexts`] = tokS;
      }
      ctxRows.push(`| ${total} sequences, decode tok/s on 1 / 2 / 4 contexts | ${line.join(' / ')} | ${(Number(line[1]) / Number(line[0])).toFixed(2)}× / ${(Number(line[2]) / Number(line[0])).toFixed(2)}× |`);
    }
    // 64 sequences decoding on context 0; context 1 prefills 4096-token prompts meanwhile
    const dec = Array.from({ length: 64 }, () => engine.createSequence({ ignoreEos: true }));
    const next = await prefillAll(engine, dec, (i) => tokens(promptTokens, config.vocabSize, 500 + i), 0);
    const alone = await decodeLoop(engine, dec, next, 64, 0);
    let prefilling = true;
    let prefills = 0;
    const bg = (async () => {
      while (prefilling) {
        const s = engine.createSequence({ ignoreEos: true });
        await engine.step(lease(1), [{ sequence: s, tokens: tokens(4096, config.vocabSize, 900 + prefills), sample: true }]);
        s.free();
        prefills++;
      }
    })();
    const withPrefill = await decodeLoop(engine, dec, next, 64, 0);
    prefilling = false;
    await bg;
    dec.forEach((s) => s.free());
    const p50a = pct(alone, 50), p99a = pct(alone, 99), p50b = pct(withPrefill, 50), p99b = pct(withPrefill, 99);
    ctxRows.push(`| 64 decoding: ITL p50 / p99 ms alone | ${p50a.toFixed(2)} / ${p99a.toFixed(2)} | |`);
    ctxRows.push(`| 64 decoding: ITL p50 / p99 ms while another context prefills 4096-token prompts (${prefills} ran) | ${p50b.toFixed(2)} / ${p99b.toFixed(2)} | p99 ×${(p99b / p99a).toFixed(2)} |`);
    Object.assign(ctxJson, { itl_alone: { p50: p50a, p99: p99a }, itl_with_prefill: { p50: p50b, p99: p99b, prefills } });
  }
  const pdl: Record<string, { on: number; off: number } | { error: string }> = {};
  if (pdlCompare) {
    try {
      pdl.bf16 = await comparePdl(engine, () => Engine.load(dir, pdlOffOptions));
    } catch (err) {
      pdl.bf16 = { error: fail(`${shape} bf16 PDL on/off`, err) };
    }
  }
  engine.dispose();

  // the same model with fp8 weights, measured the same way
  let fp8: { loadS: number; ttft: number; weft: BenchResult[]; weightBytes: number; stepBytes: number } | { error: string } | undefined;
  if (fp8On) {
    let e8: Engine | undefined;
    try {
      const t = performance.now();
      e8 = await Engine.load(dir, { ...options, quantize: 'fp8' });
      const load8 = (performance.now() - t) / 1000;
      const s8 = e8.stats();
      log(`${shape} fp8: loaded in ${load8.toFixed(1)} s; the device holds ${(s8.deviceWeightBytes / 1e9).toFixed(2)} GB of weights (embeddings included), a step reads ${(stepWeightBytes(config, true) / 1e9).toFixed(2)} GB`);
      await benchEngine(e8, { sequences: [1, 8], promptTokens: 64, genTokens: 8 }); // warm-up
      const ttft8 = await timeToFirstToken(e8);
      const weft8 = await benchEngine(e8, { sequences, promptTokens, genTokens });
      log(`${shape} weft fp8: ttft ${ttft8.toFixed(2)} ms; ` + weft8.map((r) => `${r.sequences}: prefill ${r.prefill_tokens_per_s.toFixed(0)}, decode ${r.decode_tokens_per_s.toFixed(0)} tok/s`).join('; '));
      fp8 = { loadS: load8, ttft: ttft8, weft: weft8, weightBytes: s8.deviceWeightBytes, stepBytes: stepWeightBytes(config, true) };
      if (pdlCompare) {
        try {
          pdl.fp8 = await comparePdl(e8, () => Engine.load(dir, { ...pdlOffOptions, quantize: 'fp8' }));
        } catch (err) {
          pdl.fp8 = { error: fail(`${shape} fp8 PDL on/off`, err) };
        }
      }
    } catch (err) {
      fp8 = { error: fail(`${shape} fp8`, err) };
    } finally {
      e8?.dispose();
    }
  }

  let peer: { transformers: string; torch: string; compiled: boolean; results: PeerResult[] } | undefined;
  if (!f['skip-peer']) {
    const args = [join(ROOT, 'scripts', 'gpu', 'hf_bench.py'), '--model', dir, '--sequences', sequences.join(','),
      '--prompt-tokens', String(promptTokens), '--gen-tokens', String(genTokens)];
    if (f['peer-eager']) args.push('--eager');
    const r = spawnSync('python3', args, { encoding: 'utf8', stdio: ['ignore', 'pipe', 'inherit'], maxBuffer: 1 << 26 });
    const lines = (r.stdout ?? '').trim().split('\n');
    lines.filter((l) => l.includes('progress') || l.includes('warning')).forEach((l) => log(`transformers: ${l}`));
    const last = lines.at(-1) ?? '';
    if (r.status === 0 && last.startsWith('{"transformers"')) peer = JSON.parse(last);
    else log(`transformers run failed (status ${r.status}): ${last.slice(0, 400)}`);
  }

  // report
  const kvRead1 = stats.kvBytesPerToken * (promptTokens + genTokens / 2);
  const d1 = weft.find((r) => r.sequences === 1);
  const p1 = peer?.results.find((r) => r.sequences === 1);
  const mbu = (stepMs: number | undefined) => (stepMs ? (stats.weightBytes + kvRead1) / ((stepMs / 1000) * copyBw) : undefined);
  const fmt = (x: number | undefined, d = 0) => (x === undefined ? '—' : x.toFixed(d));
  const ratio = (a: number | undefined, b: number | undefined) => (a && b ? `${(a / b).toFixed(2)}×` : '—');
  const rows = ['| measure | weft (CUDA) | transformers | weft / transformers |', '|---|---|---|---|'];
  rows.push(`| time to first token, 1 × ${promptTokens}-token prompt (ms) | ${fmt(ttft, 2)} | ${fmt(p1?.ttft_ms, 2)} | ${ratio(p1?.ttft_ms, ttft)} faster |`);
  for (const r of weft) {
    const p = peer?.results.find((x) => x.sequences === r.sequences);
    rows.push(`| prefill tok/s, ${r.sequences} × ${promptTokens} | ${fmt(r.prefill_tokens_per_s)} | ${fmt(p?.prefill_tokens_per_s)} | ${ratio(r.prefill_tokens_per_s, p?.prefill_tokens_per_s)} |`);
  }
  for (const r of weft) {
    const p = peer?.results.find((x) => x.sequences === r.sequences);
    rows.push(`| decode tok/s, ${r.sequences} sequence${r.sequences > 1 ? 's' : ''} (step ms: ${r.decode_step_ms.toFixed(2)} / ${fmt(p?.decode_step_ms, 2)}) | ${fmt(r.decode_tokens_per_s)} | ${fmt(p?.decode_tokens_per_s)} | ${ratio(r.decode_tokens_per_s, p?.decode_tokens_per_s)} |`);
  }
  const mw = mbu(d1?.decode_step_ms), mp = mbu(p1?.decode_step_ms);
  rows.push(`| bandwidth utilisation at 1 sequence (weights ${(stats.weightBytes / 1e9).toFixed(2)} GB + KV ${(kvRead1 / 1e6).toFixed(1)} MB per step ÷ step time × ${(copyBw / 1e12).toFixed(2)} TB/s) | ${mw ? (100 * mw).toFixed(1) + '%' : '—'} | ${mp ? (100 * mp).toFixed(1) + '%' : '—'} | |`);
  if (ctxRows.length) {
    rows.push('', '| execution contexts (weft) | value | ratio |', '|---|---|---|', ...ctxRows);
  }
  let mbu8: number | undefined;
  if (fp8 && 'error' in fp8) rows.push('', `FP8 weights: FAILED: ${fp8.error}`);
  else if (fp8) {
    // speed-up: bf16 time / fp8 time (for tok/s rows: fp8 tok/s / bf16 tok/s)
    const d8 = fp8.weft.find((r) => r.sequences === 1);
    mbu8 = d8 ? (fp8.stepBytes + kvRead1) / ((d8.decode_step_ms / 1000) * copyBw) : undefined;
    rows.push('', '| FP8 E4M3 weights (`quantize: \'fp8\'`) | weft fp8 | weft bf16 | fp8 speed-up |', '|---|---|---|---|');
    rows.push(`| time to first token, 1 × ${promptTokens}-token prompt (ms) | ${fmt(fp8.ttft, 2)} | ${fmt(ttft, 2)} | ${ratio(ttft, fp8.ttft)} |`);
    for (const r of fp8.weft) {
      const b = weft.find((x) => x.sequences === r.sequences);
      rows.push(`| prefill tok/s, ${r.sequences} × ${promptTokens} | ${fmt(r.prefill_tokens_per_s)} | ${fmt(b?.prefill_tokens_per_s)} | ${ratio(r.prefill_tokens_per_s, b?.prefill_tokens_per_s)} |`);
    }
    for (const r of fp8.weft) {
      const b = weft.find((x) => x.sequences === r.sequences);
      const goal = shape === 'llama8b' && r.sequences === 1 && b ? ` (goal ≥ 1.70×: ${r.decode_tokens_per_s / b.decode_tokens_per_s >= 1.7 ? 'met' : 'NOT met'})` : '';
      rows.push(`| decode tok/s, ${r.sequences} sequence${r.sequences > 1 ? 's' : ''} (step ms: ${r.decode_step_ms.toFixed(2)} / ${fmt(b?.decode_step_ms, 2)}) | ${fmt(r.decode_tokens_per_s)} | ${fmt(b?.decode_tokens_per_s)} | ${ratio(r.decode_tokens_per_s, b?.decode_tokens_per_s)}${goal} |`);
    }
    rows.push(`| bandwidth utilisation at 1 sequence (fp8: weights ${(fp8.stepBytes / 1e9).toFixed(2)} GB computed — matrices 1 B/weight + f32 row scales, LM head and norms bf16; the device holds ${(fp8.weightBytes / 1e9).toFixed(2)} GB with the embeddings — + KV ${(kvRead1 / 1e6).toFixed(1)} MB per step ÷ step time × ${(copyBw / 1e12).toFixed(2)} TB/s) | ${mbu8 ? (100 * mbu8).toFixed(1) + '%' : '—'} | ${mw ? (100 * mw).toFixed(1) + '%' : '—'} | |`);
    rows.push(`| load (s) | ${fmt(fp8.loadS, 1)} | ${fmt(loadS, 1)} | |`);
  }
  if (Object.keys(pdl).length) {
    rows.push('', `| programmatic dependent launch: decode tok/s at 1 sequence (best of 3) | PDL on (WEFT_CUDA_PDL=1) | PDL off (default) | on / off |`, '|---|---|---|---|');
    for (const [kind, r] of Object.entries(pdl)) {
      rows.push('error' in r ? `| ${kind} | FAILED: ${r.error} | | |` : `| ${kind} | ${fmt(r.on)} | ${fmt(r.off)} | ${ratio(r.on, r.off)} |`);
    }
  }
  const head = `### ${shape}: hidden ${config.hiddenSize}, ${config.numLayers} layers, ${config.numHeads}/${config.numKvHeads} heads, FFN ${config.intermediateSize}, vocab ${config.vocabSize}, bf16; ${stats.device}; load ${loadS.toFixed(1)} s` +
    (peer ? `; transformers ${peer.transformers}, torch ${peer.torch}, ${peer.compiled ? 'compiled (static cache)' : 'eager (static cache)'}` : '');
  tables.push(head + '\n\n' + rows.join('\n'));
  report[shape] = {
    ttft, weft, peer, mbu: { weft: mw, peer: mp }, contexts: ctxJson, weightBytes: stats.weightBytes, kvBytesPerToken: stats.kvBytesPerToken,
    fp8: fp8 && !('error' in fp8) ? { ...fp8, mbu: mbu8 } : fp8, pdl,
  };
}

console.log(`\nDevice copy bandwidth ${(copyBw / 1e12).toFixed(3)} TB/s. Prompts ${promptTokens} tokens, ${genTokens} generated per sequence (greedy, EOS ignored).\n`);
console.log(tables.join('\n\n'));
if (errors.length) console.log('\nERRORS:\n' + errors.map((m) => `- ${m}`).join('\n'));
console.log('\n' + JSON.stringify({ copyBandwidth: copyBw, promptTokens, genTokens, ...report, errors }));
if (errors.length) process.exitCode = 1;

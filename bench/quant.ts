/**
 * Single-row GEMV throughput of the quantized CPU kernels (native quant.matmul, T = 1) against the
 * machine's read bandwidth (native measureBandwidth): bytes of weights streamed per second.
 *
 * Each of `threads` worker_threads multiplies its half (third, ...) of the rows of a
 * [rows, cols] matrix, over and over, for `seconds`; the figure is all weight bytes read / time,
 * the best of `runs` rounds (each round measures the bandwidth and every type in turn, so a
 * neighbour's load on a shared machine hits them alike).
 * Two settings: one matrix (it may sit in the last-level cache, as one layer's matrix does not in
 * a real model) and `copies` distinct matrices in turn (128+ MiB, streamed from DRAM as in decode).
 * With --batch T1,T2,..: the batched GEMM instead (prefill and batched decode), one thread, one
 * matrix in cache: integer operations per second (2 per multiply-add) for T rows of X at a time,
 * the activation quantization included, timed in CPU time (best of `runs`) so that a neighbour's
 * load on a shared machine counts less.
 *
 *   node dist/bench/quant.js [--rows 2048] [--cols 8192] [--threads 2] [--seconds 0.5] [--runs 5] [--types Q8_0,Q4_K,F16] [--dram-only]
 *   node dist/bench/quant.js --batch 16,128,512 [--rows 2048] [--cols 768] [--runs 5] [--types ...]
 */
import { Worker, isMainThread, parentPort, workerData } from 'node:worker_threads';
import { native, type NativeQuantType } from '../src/engine/native.js';

interface Job { type: NativeQuantType; mats: SharedArrayBuffer[]; rows: number; cols: number; n0: number; n1: number; seconds: number }

function workerMain(job: Job): void {
  const q = native().quant;
  const x = new Float32Array(job.cols).map((_, i) => Math.sin(i));
  const mats = job.mats.map((b) => new Uint8Array(b));
  const rowBytes = q.rowBytes(job.type, job.cols);
  q.matmul(job.type, mats[0]!, job.rows, job.cols, x, 1, false, job.n0, job.n1);  // warm-up
  let bytes = 0, calls = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < job.seconds * 1000) {
    for (const w of mats) {
      q.matmul(job.type, w, job.rows, job.cols, x, 1, false, job.n0, job.n1);
      bytes += (job.n1 - job.n0) * rowBytes;
      calls++;
    }
  }
  parentPort!.postMessage({ bytes, seconds: (performance.now() - t0) / 1000, calls });
}

function arg(name: string, fallback: string): string {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 ? process.argv[i + 1]! : fallback;
}

async function run(type: NativeQuantType, mats: SharedArrayBuffer[], rows: number, cols: number, threads: number, seconds: number) {
  const results = await Promise.all(
    Array.from({ length: threads }, (_, i) => {
      const job: Job = { type, mats, rows, cols, n0: Math.floor((rows * i) / threads), n1: Math.floor((rows * (i + 1)) / threads), seconds };
      const w = new Worker(new URL(import.meta.url), { workerData: job });
      return new Promise<{ bytes: number; seconds: number; calls: number }>((resolve, reject) => {
        w.once('message', (m) => { resolve(m); void w.terminate(); });
        w.once('error', reject);
      });
    }),
  );
  const bytes = results.reduce((s, r) => s + r.bytes, 0);
  const secs = Math.max(...results.map((r) => r.seconds));
  return { bytesPerS: bytes / secs };
}

function batched(batch: number[], types: NativeQuantType[], runs: number): void {
  const q = native().quant;
  const rows = Number(arg('rows', '2048')), cols = Number(arg('cols', '768'));
  const values = new Float32Array(rows * cols).map((_, i) => Math.sin(i * 0.37) * 0.02);
  console.log(`quant kernel ${q.kernel}, 1 thread, ${rows}x${cols}, best of ${runs} (CPU time)`);
  for (const type of types) {
    const w = q.quantize(type, values);
    const line = batch.map((T) => {
      const x = new Float32Array(T * cols).map((_, i) => Math.cos(i * 0.11));
      const iters = Math.max(1, Math.round(4e8 / (T * rows * cols)));
      q.matmul(type, w, rows, cols, x, T, false);
      let best = Infinity;
      for (let r = 0; r < runs; r++) {
        const t0 = process.cpuUsage();
        for (let i = 0; i < iters; i++) q.matmul(type, w, rows, cols, x, T, false);
        const u = process.cpuUsage(t0);
        best = Math.min(best, (u.user + u.system) / 1e6 / iters);
      }
      return `T=${T} ${((2 * T * rows * cols) / best / 1e9).toFixed(1)} GOP/s`;
    });
    console.log(`${type.padEnd(5)} ${line.join('  ')}`);
  }
}

async function main(): Promise<void> {
  if (process.argv.includes('--batch')) {
    const types = arg('types', 'Q8_0,Q4_K,Q6_K,Q4_0,Q5_K,F16').split(',') as NativeQuantType[];
    return batched(arg('batch', '16,128,512').split(',').map(Number), types, Number(arg('runs', '5')));
  }
  const rows = Number(arg('rows', '2048')), cols = Number(arg('cols', '8192'));
  const threads = Number(arg('threads', '2')), seconds = Number(arg('seconds', '0.5')), runs = Number(arg('runs', '5'));
  const types = arg('types', 'Q8_0,Q4_K,Q4_0,Q5_K,Q6_K,F16').split(',') as NativeQuantType[];
  const addon = native();
  const values = new Float32Array(rows * cols).map((_, i) => Math.sin(i * 0.37) * 0.02);
  const sets = types.map((type) => {
    const enc = addon.quant.quantize(type, values);
    const copies = Math.max(1, Math.ceil((160 << 20) / enc.length));
    const mats = Array.from({ length: copies }, () => {
      const b = new SharedArrayBuffer(enc.length);
      new Uint8Array(b).set(enc);
      return b;
    });
    return { type, bytes: enc.length, mats, one: 0, many: 0 };
  });
  let bw = 0;
  for (let r = 0; r < runs; r++) {
    bw = Math.max(bw, addon.measureBandwidth(512 << 20, threads).readBytesPerS);
    for (const s of sets) {
      if (!process.argv.includes('--dram-only')) s.one = Math.max(s.one, (await run(s.type, s.mats.slice(0, 1), rows, cols, threads, seconds)).bytesPerS);
      s.many = Math.max(s.many, (await run(s.type, s.mats, rows, cols, threads, seconds)).bytesPerS);
    }
  }
  console.log(`quant kernel ${addon.quant.kernel}, ${threads} threads, ${rows}x${cols}, best of ${runs}; read bandwidth ${(bw / 1e9).toFixed(2)} GB/s`);
  const fmt = (v: number) => `${(v / 1e9).toFixed(2)} GB/s (${((100 * v) / bw).toFixed(0)}%)`;
  for (const s of sets)
    console.log(`${s.type.padEnd(5)} ${(s.bytes / 2 ** 20).toFixed(1)} MiB: one matrix ${fmt(s.one)}, ${s.mats.length} matrices in turn ${fmt(s.many)}`);
}

if (isMainThread) await main();
else workerMain(workerData as Job);

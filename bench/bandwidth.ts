/**
 * Memory bandwidth, measured from JS with large Buffer copies (memcpy underneath).
 *
 * Convention: a copy of N bytes counts 2N bytes of traffic (N read + N written), so
 * `copyBytesPerS` = 2N / t. `readBytesPerS` = N / t is the read side alone, which is the figure
 * to use as the decode bound (decode streams the weights: reads dominate). Buffers are 256 MiB by
 * default, far beyond any cache; each figure is the best of several runs after a warm-up that
 * faults all pages in.
 *
 * With `threads: 2` (or more), that many worker_threads each copy a disjoint slice of one pair of
 * SharedArrayBuffers at the same time (released together by an Atomics barrier); the time is the
 * slowest worker's, so the figure is the aggregate bandwidth of all threads.
 */
import { Worker } from 'node:worker_threads';

export interface BandwidthResult {
  threads: number;
  bytes: number;
  runs: number;
  /** Best time of one full copy, seconds. */
  bestSeconds: number;
  /** (read + write) bytes / s. */
  copyBytesPerS: number;
  /** Read bytes / s (= copyBytesPerS / 2). */
  readBytesPerS: number;
}

export interface BandwidthOptions {
  /** Total bytes copied per run (default 256 MiB). */
  bytes?: number;
  /** Timed runs; the best is kept (default 7). */
  runs?: number;
}

function result(threads: number, bytes: number, runs: number, best: number): BandwidthResult {
  return { threads, bytes, runs, bestSeconds: best, copyBytesPerS: (2 * bytes) / best, readBytesPerS: bytes / best };
}

/** Single-thread copy bandwidth (main thread, `Buffer.copy`). */
export function measureCopyBandwidth(opts: BandwidthOptions = {}): BandwidthResult {
  const bytes = opts.bytes ?? 256 * 1024 * 1024;
  const runs = opts.runs ?? 7;
  const src = Buffer.allocUnsafe(bytes);
  const dst = Buffer.allocUnsafe(bytes);
  src.fill(1);
  dst.fill(2);
  src.copy(dst); // warm-up
  let best = Infinity;
  for (let r = 0; r < runs; r++) {
    const t0 = process.hrtime.bigint();
    src.copy(dst);
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    best = Math.min(best, dt);
  }
  if (dst[bytes - 1] !== 1) throw new Error('copy check failed');
  return result(1, bytes, runs, best);
}

// Worker body (plain JS, evaluated with `eval: true`): copies its slice once per round, after the
// barrier releases it, and reports the seconds it took.
const WORKER_SRC = `
const { parentPort, workerData } = require('node:worker_threads');
const { src, dst, ctl, start, end, index } = workerData;
const s = Buffer.from(src, start, end - start);
const d = Buffer.from(dst, start, end - start);
const c = new Int32Array(ctl);
s.fill(1); d.fill(2); s.copy(d);
let round = 0;
function loop() {
  for (;;) {
    Atomics.add(c, 1, 1); Atomics.notify(c, 1);          // ready for the next round
    Atomics.wait(c, 0, round);                           // wait until the main thread bumps the round
    round = Atomics.load(c, 0);
    if (round < 0) break;
    const t0 = process.hrtime.bigint();
    s.copy(d);
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    parentPort.postMessage({ index, round, dt });
  }
}
loop();
`;

/** Aggregate copy bandwidth of `threads` worker_threads copying disjoint slices concurrently. */
export async function measureParallelCopyBandwidth(threads: number, opts: BandwidthOptions = {}): Promise<BandwidthResult> {
  const bytes = opts.bytes ?? 256 * 1024 * 1024;
  const runs = opts.runs ?? 7;
  const src = new SharedArrayBuffer(bytes);
  const dst = new SharedArrayBuffer(bytes);
  // ctl[0]: round number (-1 = stop); ctl[1]: workers ready count.
  const ctl = new SharedArrayBuffer(8);
  const c = new Int32Array(ctl);
  const slice = Math.floor(bytes / threads / 4096) * 4096;
  const workers: Worker[] = [];
  const results = new Map<number, number[]>();
  let pending: { round: number; resolve: () => void } | null = null;
  for (let i = 0; i < threads; i++) {
    const start = i * slice;
    const end = i === threads - 1 ? bytes : start + slice;
    const w = new Worker(WORKER_SRC, { eval: true, workerData: { src, dst, ctl, start, end, index: i } });
    w.on('message', (m: { index: number; round: number; dt: number }) => {
      const arr = results.get(m.round) ?? [];
      arr.push(m.dt);
      results.set(m.round, arr);
      if (pending && m.round === pending.round && arr.length === threads) pending.resolve();
    });
    workers.push(w);
  }
  const waitReady = async (n: number) => {
    while (Atomics.load(c, 1) < n) await new Promise((r) => setTimeout(r, 1));
  };
  let best = Infinity;
  try {
    for (let round = 1; round <= runs + 1; round++) {
      await waitReady(threads * round);
      const done = new Promise<void>((resolve) => (pending = { round, resolve }));
      const t0 = process.hrtime.bigint();
      Atomics.store(c, 0, round);
      Atomics.notify(c, 0);
      await done;
      const wall = Number(process.hrtime.bigint() - t0) / 1e9;
      const slowest = Math.max(...(results.get(round) ?? [wall]));
      // Round 1 is the warm-up. The slowest worker's own copy time excludes message latency.
      if (round > 1) best = Math.min(best, slowest);
    }
  } finally {
    await waitReady(threads * (runs + 2));
    Atomics.store(c, 0, -1);
    Atomics.notify(c, 0);
    await Promise.all(workers.map((w) => w.terminate()));
  }
  return result(threads, bytes, runs, best);
}

/** Both measurements; the bound for the engine's 2 threads is the larger read bandwidth. */
export async function measureBandwidth(opts: BandwidthOptions & { threads?: number } = {}): Promise<{
  single: BandwidthResult;
  parallel: BandwidthResult | null;
  bestReadBytesPerS: number;
}> {
  const single = measureCopyBandwidth(opts);
  const t = opts.threads ?? 2;
  const parallel = t > 1 ? await measureParallelCopyBandwidth(t, opts) : null;
  return { single, parallel, bestReadBytesPerS: Math.max(single.readBytesPerS, parallel?.readBytesPerS ?? 0) };
}

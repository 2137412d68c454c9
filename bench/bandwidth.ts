/**
 * Memory bandwidth, measured from JS with large Buffer operations (libc memcpy / memcmp underneath).
 *
 * Two measurements, both on 256 MiB buffers by default (far beyond any cache), each the best of
 * several runs after a warm-up that faults all pages in:
 *  - copy (`src.copy(dst)`, memcpy). Convention: a copy of N bytes counts 2N bytes of traffic
 *    (N read + N written): `copyBytesPerS` = 2N / t, and `readBytesPerS` = N / t is its read side.
 *    (glibc's memcpy switches to non-temporal stores at this size: no hidden read-for-ownership.)
 *  - read (`a.equals(b)` on two equal buffers, memcmp): reads 2N bytes and writes nothing, so
 *    `readBytesPerS` = 2N / t and `copyBytesPerS` is 0. Decode streams the weights (pure reads),
 *    so this is the figure for the decode bound; a copy's read side is about half of it here.
 *
 * With `threads: 2` (or more), that many worker_threads each copy (or compare) a disjoint slice of one pair of
 * SharedArrayBuffers at the same time (released together by an Atomics barrier); the time is the
 * slowest worker's, so the figure is the aggregate bandwidth of all threads.
 */
import { Worker } from 'node:worker_threads';

export interface BandwidthResult {
  kind: 'copy' | 'read';
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

function result(kind: 'copy' | 'read', threads: number, bytes: number, runs: number, best: number): BandwidthResult {
  return kind === 'copy'
    ? { kind, threads, bytes, runs, bestSeconds: best, copyBytesPerS: (2 * bytes) / best, readBytesPerS: bytes / best }
    : { kind, threads, bytes, runs, bestSeconds: best, copyBytesPerS: 0, readBytesPerS: (2 * bytes) / best };
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
  return result('copy', 1, bytes, runs, best);
}

/** Single-thread read bandwidth (main thread, memcmp of two equal buffers of `bytes` each). */
export function measureReadBandwidth(opts: BandwidthOptions = {}): BandwidthResult {
  const bytes = opts.bytes ?? 256 * 1024 * 1024;
  const runs = opts.runs ?? 7;
  const a = Buffer.alloc(bytes, 7);
  const b = Buffer.alloc(bytes, 7);
  if (!a.equals(b)) throw new Error('read check failed'); // warm-up
  let best = Infinity;
  for (let r = 0; r < runs; r++) {
    const t0 = process.hrtime.bigint();
    const eq = a.equals(b);
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    if (!eq) throw new Error('read check failed');
    best = Math.min(best, dt);
  }
  return result('read', 1, bytes, runs, best);
}

// Worker body (plain JS, evaluated with `eval: true`): copies its slice once per round, after the
// barrier releases it, and reports the seconds it took.
const WORKER_SRC = `
const { parentPort, workerData } = require('node:worker_threads');
const { src, dst, ctl, start, end, index, kind } = workerData;
const s = Buffer.from(src, start, end - start);
const d = Buffer.from(dst, start, end - start);
const c = new Int32Array(ctl);
s.fill(1); d.fill(kind === 'copy' ? 2 : 1); s.copy(d);
let round = 0;
function loop() {
  for (;;) {
    Atomics.add(c, 1, 1); Atomics.notify(c, 1);          // ready for the next round
    Atomics.wait(c, 0, round);                           // wait until the main thread bumps the round
    round = Atomics.load(c, 0);
    if (round < 0) break;
    const t0 = process.hrtime.bigint();
    const ok = kind === 'copy' ? s.copy(d) > 0 : s.equals(d);
    const dt = Number(process.hrtime.bigint() - t0) / 1e9;
    if (!ok) throw new Error('bandwidth worker check failed');
    parentPort.postMessage({ index, round, dt });
  }
}
loop();
`;

/**
 * Aggregate bandwidth of `threads` worker_threads working on disjoint slices concurrently:
 * 'copy' (memcpy src -> dst) or 'read' (memcmp of src and an equal dst).
 */
export async function measureParallelBandwidth(kind: 'copy' | 'read', threads: number, opts: BandwidthOptions = {}): Promise<BandwidthResult> {
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
    const w = new Worker(WORKER_SRC, { eval: true, workerData: { src, dst, ctl, start, end, index: i, kind } });
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
  return result(kind, threads, bytes, runs, best);
}

/**
 * All measurements: copy and read, on the main thread and with `threads` (default 2) workers.
 * The bound for the engine's 2 threads is `bestReadBytesPerS`, the highest read figure.
 */
export async function measureBandwidth(opts: BandwidthOptions & { threads?: number } = {}): Promise<{
  copy: BandwidthResult;
  read: BandwidthResult;
  parallelCopy: BandwidthResult | null;
  parallelRead: BandwidthResult | null;
  bestReadBytesPerS: number;
}> {
  const copy = measureCopyBandwidth(opts);
  const read = measureReadBandwidth(opts);
  const t = opts.threads ?? 2;
  const parallelCopy = t > 1 ? await measureParallelBandwidth('copy', t, opts) : null;
  const parallelRead = t > 1 ? await measureParallelBandwidth('read', t, opts) : null;
  const bestReadBytesPerS = Math.max(...[copy, read, parallelCopy, parallelRead].map((r) => r?.readBytesPerS ?? 0));
  return { copy, read, parallelCopy, parallelRead, bestReadBytesPerS };
}

// CLI: node dist/bench/bandwidth.js [--threads 2]
if (process.argv[1] && import.meta.url === (await import('node:url')).pathToFileURL(process.argv[1]).href) {
  const i = process.argv.indexOf('--threads');
  const threads = i > 0 ? Number(process.argv[i + 1]) : 2;
  const r = await measureBandwidth({ threads });
  for (const x of [r.copy, r.read, r.parallelCopy, r.parallelRead]) {
    if (!x) continue;
    console.log(
      `${x.kind} x${x.threads}: read ${(x.readBytesPerS / 1e9).toFixed(2)} GB/s` +
        (x.kind === 'copy' ? `, read+write ${(x.copyBytesPerS / 1e9).toFixed(2)} GB/s` : '') +
        ` (best of ${x.runs}, ${x.bytes / 2 ** 20} MiB)`,
    );
  }
  console.log(`bound: ${(r.bestReadBytesPerS / 1e9).toFixed(2)} GB/s read`);
}

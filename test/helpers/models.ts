/** Tiny random models for tests, generated once per test file into a temp directory. */
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { makeTinyModel, type TinyModelOptions } from '../../scripts/make-tiny-model.js';
import { Engine } from '../../src/engine/engine.js';

export class TinyModels {
  readonly root = mkdtempSync(join(tmpdir(), 'weft-test-'));

  async make(name: string, opts: TinyModelOptions = {}): Promise<string> {
    const dir = join(this.root, name);
    await makeTinyModel(dir, opts);
    return dir;
  }

  cleanup(): void {
    rmSync(this.root, { recursive: true, force: true });
  }
}

/** Largest |a - b| over the row divided by the largest |b|: the tolerance measure of the tests. */
export function maxRelError(got: ArrayLike<number>, want: ArrayLike<number>): number {
  let diff = 0;
  let scale = 0;
  for (let i = 0; i < want.length; i++) {
    diff = Math.max(diff, Math.abs(got[i]! - want[i]!));
    scale = Math.max(scale, Math.abs(want[i]!));
  }
  return diff / scale;
}

export function row(logits: Float32Array, vocab: number, r: number): Float32Array {
  return logits.subarray(r * vocab, (r + 1) * vocab);
}

export function argmax(x: ArrayLike<number>): number {
  let best = 0;
  for (let i = 1; i < x.length; i++) if (x[i]! > x[best]!) best = i;
  return best;
}

/** Logits of every position of `tokens` on a fresh CPU engine (2 threads, f32 KV) of the model in `dir`. */
export async function cpuLogits(dir: string, tokens: number[]): Promise<Float32Array> {
  const engine = await Engine.load(dir, { backend: 'cpu', threads: 2, kvDtype: 'f32', tokenizer: false });
  try {
    const [r] = await engine.run([{ sequence: engine.createSequence(), tokens, logits: 'all' }]);
    return r!.logits!;
  } finally {
    engine.dispose();
  }
}

/**
 * The random bench models of the CUDA benches (scripts/gpu/make_bench_model.py: bf16 weights in
 * the shapes of Llama-3.2-1B and Llama-3-8B, in /tmp/weft-bench/<shape>), made on first use and
 * given a tokenizer, which the gateway needs (chat template, streamed text) and the weights alone
 * lack: scripts/make-tiny-model.ts' byte-level BPE with exactly the model's vocabulary size, so
 * that every id a random model samples decodes to text, and a plain chat template.
 */
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { buildTokenizer } from '../scripts/make-tiny-model.js';

export const BENCH_SHAPES = ['llama1b', 'llama8b'];

/** The directory of `model`: a shape name (made under `root` when missing) or a directory. */
export function benchModelDir(model: string, root: string, log: (s: string) => void): string {
  if (!BENCH_SHAPES.includes(model)) return model;
  const dir = join(root, model);
  if (!existsSync(join(dir, 'model.safetensors.index.json'))) {
    log(`writing ${dir}`);
    const script = join(import.meta.dirname, '..', '..', 'scripts', 'gpu', 'make_bench_model.py');
    const r = spawnSync('python3', [script, '--shape', model, '--out', dir], { stdio: 'inherit' });
    if (r.status !== 0) throw new Error(`make_bench_model.py failed (${r.status})`);
  }
  return dir;
}

/**
 * Writes tokenizer.json and tokenizer_config.json into a bench model's directory (config.json
 * with `weft_bench_shape`) that has none; any other directory is left as it is. True when written.
 */
export function ensureBenchTokenizer(dir: string): boolean {
  if (existsSync(join(dir, 'tokenizer.json'))) return false;
  const config = JSON.parse(readFileSync(join(dir, 'config.json'), 'utf8')) as { vocab_size?: number; weft_bench_shape?: string; max_position_embeddings?: number };
  if (!config.weft_bench_shape || !config.vocab_size) return false;
  const tok = buildTokenizer(config.vocab_size, config.max_position_embeddings ?? 8192);
  writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(tok.tokenizerConfig, null, 1) + '\n');
  writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(tok.tokenizerJson) + '\n');
  return true;
}

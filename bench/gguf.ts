/**
 * GGUF export for the llama.cpp peer (bench/llamacpp.ts): a thin CLI over src/engine/gguf-export.ts.
 *
 *   node dist/bench/gguf.js HF_DIR OUT.gguf [--type f32|f16|q8_0|q4_0|q4_k_m|q5_k_m]
 */
import { exportGguf as exportModel, type ExportGgufResult, type GgufOutType } from '../src/engine/gguf-export.js';

export { GGUF_FILE_TYPE, ggufTensorType, type ExportGgufResult, type GgufOutType } from '../src/engine/gguf-export.js';

/** exportGguf with the bench's option name (`dtype`) accepted beside `type`. */
export function exportGguf(hfDir: string, outPath: string, opts: { dtype?: GgufOutType; type?: GgufOutType } = {}): Promise<ExportGgufResult> {
  return exportModel(hfDir, outPath, { type: opts.type ?? opts.dtype });
}

async function main(argv: string[]): Promise<void> {
  const { parseArgs } = await import('node:util');
  const { values, positionals } = parseArgs({ args: argv, allowPositionals: true, options: { type: { type: 'string', default: 'f16' } } });
  if (positionals.length !== 2) throw new Error('usage: gguf.js HF_DIR OUT.gguf [--type f32|f16|q8_0|q4_0|q4_k_m|q5_k_m]');
  const res = await exportGguf(positionals[0], positionals[1], { type: values.type as GgufOutType });
  console.log(JSON.stringify({ path: res.path, bytes: res.bytes, tensors: res.tensorCount, types: Object.fromEntries(res.tensorTypes) }, null, 2));
}

if (process.argv[1] && import.meta.url === (await import('node:url')).pathToFileURL(process.argv[1]).href) {
  main(process.argv.slice(2)).catch((e: unknown) => {
    console.error(e);
    process.exit(1);
  });
}

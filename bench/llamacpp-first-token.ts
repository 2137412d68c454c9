/**
 * One llama.cpp start for bench/cold-start.ts: loads a GGUF file with node-llama-cpp's prebuilt
 * CPU build, evaluates a 4-token prompt and prints its first greedy token, then exits.
 *   node dist/bench/llamacpp-first-token.js FILE.gguf THREADS
 */
import type { Token } from 'node-llama-cpp';
import { getCpuLlama } from './llamacpp.js';

const [file, threads] = process.argv.slice(2);
const llama = await getCpuLlama();
const model = await llama.loadModel({ modelPath: file!, gpuLayers: 0, useMmap: true });
const ctx = await model.createContext({ contextSize: 64, threads: Number(threads ?? 2) });
const seq = ctx.getSequence();
for await (const t of seq.evaluate([1, 2, 3, 4] as Token[], { temperature: 0 })) {
  process.stdout.write(`token ${t}\n`);
  break;
}
process.exit(0);

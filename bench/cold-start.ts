/**
 * npm run bench:cold-start — process start to first token, from raw weights and from an engine
 * plan, with llama.cpp (node-llama-cpp) starting on the same GGUF file in the same run as the peer.
 *
 * Each row spawns a fresh process (`weft generate --max-tokens 1`, or a node-llama-cpp script) and
 * times it from spawn to the first token on stdout; best of --repeats (the files are in the page
 * cache after the first run: these are warm-cache starts, the case of a restart).
 *
 *   npm run bench:cold-start -- [--model llama1b|bench100m] [--threads 2] [--repeats 3] [--dir DIR]
 */
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseFlags } from '../src/cli/args.js';
import { exportGguf } from '../src/engine/gguf-export.js';
import { cpuIdentity } from '../src/engine/plan.js';
import { makeTinyModel, PRESETS } from '../scripts/make-tiny-model.js';

const f = parseFlags(process.argv.slice(2), { model: 'string', threads: 'number', repeats: 'number', dir: 'string' });
const model = (f.model as string | undefined) ?? 'llama1b';
const threads = (f.threads as number | undefined) ?? 2;
const repeats = (f.repeats as number | undefined) ?? 3;
const root = (f.dir as string | undefined) ?? join(tmpdir(), 'weft-bench');
const log = (s: string) => process.stderr.write(s + '\n');
const here = dirname(fileURLToPath(import.meta.url));
const cli = join(here, '..', 'src', 'cli', 'main.js');

mkdirSync(root, { recursive: true });
const modelDir = join(root, model);
if (!existsSync(join(modelDir, 'config.json'))) {
  log(`writing the ${model} model to ${modelDir}`);
  await makeTinyModel(modelDir, PRESETS[model]!);
}
const gguf = join(root, `${model}.q4_k_m.gguf`);
if (!existsSync(gguf)) await exportGguf(modelDir, gguf, { type: 'q4_k_m' });
const cache = join(root, `cold-start-cache-${process.pid}`);

/** Spawns a process and resolves with the ms until a line matching `ready` appears on stdout. */
function timeToLine(cmd: string, args: string[], ready: RegExp, env: NodeJS.ProcessEnv = {}): Promise<number> {
  return new Promise((resolve, reject) => {
    const t0 = performance.now();
    const p = spawn(cmd, args, { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    let done = false;
    p.stdout.on('data', (d: Buffer) => {
      out += d.toString();
      if (!done && ready.test(out)) {
        done = true;
        resolve(performance.now() - t0);
      }
    });
    p.stderr.on('data', (d: Buffer) => (err += d.toString()));
    p.on('exit', (code) => {
      if (!done) reject(new Error(`${cmd} ${args.join(' ')} exited ${code} before its first token: ${err.slice(-500)}`));
    });
  });
}

const weft = (modelPath: string, extra: string[] = []) =>
  timeToLine(process.execPath, [cli, 'generate', '--model', modelPath, '--prompt-ids', '1,2,3,4', '--max-tokens', '1', '--json', '--threads', String(threads), ...extra], /"tokens"/, { WEFT_CACHE_DIR: cache });

const peer = () => timeToLine(process.execPath, [join(here, 'llamacpp-first-token.js'), gguf, String(threads)], /token /);

const best = async (fn: () => Promise<number>) => {
  const times: number[] = [];
  for (let i = 0; i < repeats; i++) times.push(await fn());
  return { best: Math.min(...times), all: times };
};

const rows: { what: string; ms: number; all: number[] }[] = [];
const add = (what: string, r: { best: number; all: number[] }) => {
  rows.push({ what, ms: r.best, all: r.all });
  log(`${what}: ${r.all.map((t) => t.toFixed(0)).join(', ')} ms`);
};
add(`weft, ${model} f16 safetensors (raw weights)`, await best(() => weft(modelDir)));
rmSync(cache, { recursive: true, force: true });
const build = await weft(modelDir, ['--quantize', 'q4_k']);
rows.push({ what: `weft, ${model} --quantize q4_k, no plan yet (quantizes and writes the plan)`, ms: build, all: [build] });
log(`first --quantize start (builds the plan): ${build.toFixed(0)} ms`);
add(`weft, ${model} --quantize q4_k, plan in the cache (mapped)`, await best(() => weft(modelDir, ['--quantize', 'q4_k'])));
add(`weft, ${model} Q4_K_M GGUF`, await best(() => weft(gguf)));
add(`llama.cpp (node-llama-cpp), ${model} Q4_K_M GGUF`, await best(peer));
rmSync(cache, { recursive: true, force: true });

const cpu = cpuIdentity();
console.log(`\nCPU: ${cpu.model} (${cpu.features.join(' ')}); ${threads} threads; process start to first token, best of ${repeats} (page cache warm).`);
console.log('\n| start | ms |\n|---|---|');
for (const r of rows) console.log(`| ${r.what} | ${r.ms.toFixed(0)} |`);
console.log('\n' + JSON.stringify({ cpu, threads, model, rows }));

/**
 * `weft build --model PATH [--quantize q8_0|q4_k] [--out PLAN] [--threads N] [--no-tune] [--json]`:
 * writes the engine plan of a model for this machine (src/engine/plan.ts). Without --out the plan
 * goes where `weft serve --quantize` looks for it (the plan cache), so a build ahead of time makes
 * the first start fast.
 */
import { WeftError } from '../errors.js';
import { openModel } from '../engine/model-source.js';
import { autotune } from '../engine/tune.js';
import { buildPlan, modelFingerprint, planCachePath, writePlanTuning, PLAN_QUANTIZE, type PlanQuantize } from '../engine/plan.js';
import { parseFlags } from './args.js';

export async function buildCommand(argv: string[]): Promise<void> {
  const f = parseFlags(argv, { model: 'string', quantize: 'string', out: 'string', threads: 'number', tune: 'boolean', 'no-tune': 'boolean', json: 'boolean' });
  if (typeof f.model !== 'string') throw new WeftError('WEFT_BAD_ARGUMENT', 'weft build needs --model PATH');
  const quantize = f.quantize as PlanQuantize | undefined;
  if (quantize !== undefined && !PLAN_QUANTIZE.includes(quantize)) {
    throw new WeftError('WEFT_BAD_ARGUMENT', `--quantize must be one of ${PLAN_QUANTIZE.join(', ')} (got ${String(quantize)})`);
  }
  const threads = f.threads as number | undefined;
  if (threads !== undefined && (!Number.isInteger(threads) || threads < 1)) throw new WeftError('WEFT_BAD_ARGUMENT', `--threads must be a positive integer (got ${threads})`);
  const log = (l: string) => process.stderr.write(l + '\n');
  const source = await openModel(f.model);
  if (source.kind === 'plan') throw new WeftError('WEFT_BAD_ARGUMENT', `${source.path} is already a plan: build from its source model ${source.plan!.identity.source.path}`);
  const out = (f.out as string | undefined) ?? planCachePath(source, await modelFingerprint(source), quantize ?? 'none');
  const built = await buildPlan(source, { quantize, out, log });
  const tuning = f['no-tune'] ? undefined : await autotune(built.path, source.config, { threads, log });
  if (tuning) await writePlanTuning(built.path, tuning);
  const summary = { plan: built.path, bytes: built.bytes, seconds: built.seconds, quantize: quantize ?? 'none', tuning: tuning ?? null };
  if (f.json) process.stdout.write(JSON.stringify(summary) + '\n');
  else process.stdout.write(`weft build: ${built.path} (${(built.bytes / 1e6).toFixed(1)} MB, ${built.seconds.toFixed(1)} s)\n`);
}

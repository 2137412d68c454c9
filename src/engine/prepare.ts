/**
 * The model a load runs: the one named, or the engine plan for it. `--quantize T` runs a plan:
 * from the cache when one was built for this model, quantization, CPU and weft version, else
 * built now and cached (docs/models.md). A plan file named directly that was built for another
 * CPU or version is built again from its source model (in place), or refused when the source is
 * gone (WEFT_PLAN_MISMATCH).
 */
import { existsSync } from 'node:fs';
import { WeftError, toWeftError } from '../errors.js';
import { openModel, type ModelSource } from './model-source.js';
import { buildPlan, modelFingerprint, planCachePath, type PlanQuantize } from './plan.js';

export interface PrepareOptions {
  quantize?: PlanQuantize;
  /** Progress lines (plan builds). */
  log?: (line: string) => void;
}

/** Opens `modelPath` (building or rebuilding a plan where needed). Throws WeftError. */
export async function prepareModel(modelPath: string, opts: PrepareOptions = {}): Promise<ModelSource> {
  const log = opts.log ?? (() => {});
  let source = await openModel(modelPath);
  if (source.stale) {
    const { path: from } = source.plan!.identity.source;
    const quantize = source.plan!.identity.quantize;
    if (!existsSync(from)) {
      throw new WeftError('WEFT_PLAN_MISMATCH', `${modelPath}: this plan cannot run here (${source.stale}) and its source model ${from} is not there to build it again`);
    }
    log(`weft: ${modelPath} was built for another machine or version (${source.stale}); building it again from ${from}`);
    await buildPlan(await openModel(from), { quantize: quantize === 'none' ? undefined : quantize, out: source.path, log });
    source = await openModel(source.path);
  }
  if (!opts.quantize) return source;
  if (source.kind === 'plan') {
    if (source.plan!.identity.quantize === opts.quantize) return source;
    throw new WeftError('WEFT_BAD_ARGUMENT', `${modelPath} is a plan quantized as ${source.plan!.identity.quantize}; build one for ${opts.quantize} from its source model ${source.plan!.identity.source.path}`);
  }
  const cached = planCachePath(source, await modelFingerprint(source), opts.quantize);
  if (existsSync(cached)) {
    try {
      const plan = await openModel(cached);
      if (!plan.stale) return plan;
      log(`weft: the cached plan ${cached} was built for another machine or version (${plan.stale}); building it again`);
    } catch (err) {
      log(`weft: the cached plan ${cached} cannot be used (${toWeftError(err).message}); building it again`);
    }
  }
  log(`weft: building the ${opts.quantize} plan of ${source.path} into ${cached}`);
  const built = await buildPlan(source, { quantize: opts.quantize, out: cached, log });
  log(`weft: plan built in ${built.seconds.toFixed(1)} s (${(built.bytes / 1e6).toFixed(0)} MB)`);
  return openModel(cached);
}

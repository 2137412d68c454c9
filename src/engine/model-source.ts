/**
 * Where a model comes from: a Hugging Face directory (config.json + safetensors + tokenizer.json),
 * a GGUF file, a directory holding exactly one GGUF file, or an engine plan (`weft build`, a GGUF
 * file of weft's own). Whatever the kind, the result is a normalized ModelConfig and the tensors
 * under Hugging Face names, each pointing into its file, plus how to get the tokenizer.
 */
import { readdir, readFile, stat } from 'node:fs/promises';
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { WeftError } from '../errors.js';
import { tokenizerFromGguf } from '../tokenizer/gguf-tokenizer.js';
import { Tokenizer, type TokenizerParts } from '../tokenizer/tokenizer.js';
import { parseModelConfig, type ModelConfig } from './config.js';
import { ggufTensorInfos, readGguf, type GgufFile } from './gguf.js';
import { ggufHfConfig, ggufHfTensors } from './gguf-model.js';
import { planMismatch, readPlan, PLAN_ARCHITECTURE, type LoadedPlan } from './plan.js';
import { readSafetensorsIndex, type TensorInfo } from './safetensors.js';
import { readTensorF64 } from './dtype.js';

/** What a loader knows beyond config.json (GGUF conventions). */
export interface ModelExtras {
  /** RoPE rotates interleaved pairs (2i, 2i+1): llama-arch GGUF files' permuted Q/K rows. */
  ropeInterleaved?: boolean;
  /** Norm weights already hold Gemma's +1. */
  normsIncludeOne?: boolean;
}

export interface ModelSource {
  kind: 'safetensors' | 'gguf' | 'plan';
  /** The directory (safetensors) or the .gguf file. */
  path: string;
  config: ModelConfig;
  tensors: Map<string, TensorInfo>;
  /** The Hugging Face config.json (real or derived from GGUF metadata) and the loader's extras. */
  hfConfig: Record<string, unknown>;
  extras: ModelExtras;
  /** Whether a tokenizer comes with the model. */
  hasTokenizer: boolean;
  /** The tokenizer's pieces (undefined when the model has none). */
  tokenizer(): Promise<TokenizerParts | undefined>;
  /** For plans: what the plan says of itself. */
  plan?: LoadedPlan;
  /** For plans built for another CPU or weft version: what differs (prepareModel rebuilds or refuses it). */
  stale?: string;
}

function applyExtras(config: ModelConfig, extras: ModelExtras): ModelConfig {
  if (extras.ropeInterleaved) config.ropeInterleaved = true;
  if (extras.normsIncludeOne) config.normOffset = 0;
  return config;
}

async function readConfigJson(file: string): Promise<unknown> {
  let text: string;
  try {
    text = await readFile(file, 'utf8');
  } catch (e) {
    throw new WeftError('WEFT_MODEL_NOT_FOUND', `${file} is missing or unreadable`, { cause: e });
  }
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new WeftError('WEFT_MODEL_FORMAT', `${file}: invalid JSON (${(e as Error).message})`, { cause: e });
  }
}

/** The GGUF file `p` names: itself, or the one .gguf file in a directory without config.json. */
async function ggufFileOf(p: string): Promise<string | null> {
  let st;
  try {
    st = await stat(p);
  } catch (e) {
    throw new WeftError('WEFT_MODEL_NOT_FOUND', `model path ${p} does not exist or is unreadable`, { cause: e });
  }
  if (st.isFile()) {
    if (!p.toLowerCase().endsWith('.gguf')) throw new WeftError('WEFT_MODEL_FORMAT', `model file ${p} is not a .gguf file (a Hugging Face model is a directory)`);
    return p;
  }
  if (!st.isDirectory()) throw new WeftError('WEFT_MODEL_NOT_FOUND', `model path ${p} is neither a file nor a directory`);
  if (existsSync(join(p, 'config.json'))) return null;
  const ggufs = (await readdir(p)).filter((f) => f.toLowerCase().endsWith('.gguf')).sort();
  if (ggufs.length === 0) return null; // loadModelConfig reports the missing config.json
  if (ggufs.length > 1) {
    throw new WeftError('WEFT_MODEL_FORMAT', `${p} holds ${ggufs.length} GGUF files (${ggufs.slice(0, 4).join(', ')}): name the one to load`);
  }
  return join(p, ggufs[0]!);
}

async function openSafetensors(dir: string): Promise<ModelSource> {
  const hfConfig = await readConfigJson(join(dir, 'config.json'));
  const config = parseModelConfig(hfConfig, join(dir, 'config.json'));
  const tensors = await readSafetensorsIndex(dir);
  const hasTokenizer = existsSync(join(dir, 'tokenizer.json'));
  return {
    kind: 'safetensors', path: dir, config, tensors, hfConfig: hfConfig as Record<string, unknown>, extras: {}, hasTokenizer,
    tokenizer: async () => (hasTokenizer ? Tokenizer.readParts(dir) : undefined),
  };
}

async function openGguf(file: string): Promise<ModelSource> {
  const g = await readGguf(file);
  if (g.metadata.get('general.architecture') === PLAN_ARCHITECTURE) return openPlan(file, g);
  const input = { file, metadata: g.metadata as Map<string, unknown>, tensors: [...ggufTensorInfos(g).values()] };
  const hf = ggufHfConfig(input);
  if (hf.ropeFactorTensors) {
    // per-frequency divisors, as LongRoPE's factors (Llama 3's rope_freqs: the same set at every length)
    const infos = ggufTensorInfos(g);
    const read = async (name: string) => {
      const t = infos.get(name);
      if (!t) throw new WeftError('WEFT_TENSOR_MISSING', `${file}: tensor "${name}" is missing`);
      return [...(await readTensorF64(t))];
    };
    hf.json.rope_scaling = {
      rope_type: 'longrope', short_factor: await read(hf.ropeFactorTensors.short), long_factor: await read(hf.ropeFactorTensors.long),
      attention_factor: hf.ropeFactorTensors.attentionFactor,
    };
  }
  const extras: ModelExtras = { ropeInterleaved: hf.ropeInterleaved, normsIncludeOne: hf.normsIncludeOne };
  const config = applyExtras(parseModelConfig(hf.json, file), extras);
  const hasTokenizer = g.metadata.has('tokenizer.ggml.model');
  return {
    kind: 'gguf', path: file, config, tensors: ggufHfTensors(input), hfConfig: hf.json, extras, hasTokenizer,
    tokenizer: async () => {
      if (!hasTokenizer) return undefined;
      const t = tokenizerFromGguf(g.metadata, file);
      return { json: t.json, config: t.config, eosTokenIds: t.eosTokenIds, chatTemplate: (t.config as { chat_template?: string }).chat_template ?? null };
    },
  };
}

async function openPlan(file: string, g: GgufFile): Promise<ModelSource> {
  const plan = await readPlan(file, g);
  const extras = plan.extras as ModelExtras;
  const config = applyExtras(parseModelConfig(plan.hfConfig, file), extras);
  const tensors = new Map(plan.tensors.map((t) => [t.name, t]));
  return {
    kind: 'plan', path: file, config, tensors, hfConfig: plan.hfConfig, extras, hasTokenizer: plan.tokenizer !== undefined, plan,
    stale: planMismatch(plan.identity) ?? undefined,
    tokenizer: async () => plan.tokenizer,
  };
}

/** Opens a model's metadata and tensor index (no weights are read). Throws WeftError. */
export async function openModel(modelPath: string): Promise<ModelSource> {
  const p = resolve(modelPath);
  const gguf = await ggufFileOf(p);
  return gguf === null ? openSafetensors(p) : openGguf(gguf);
}

/** A model's normalized config, from any kind of model (for the CLI's checks). */
export async function loadAnyModelConfig(modelPath: string): Promise<ModelConfig> {
  return (await openModel(modelPath)).config;
}

/**
 * Engine plans (`weft build`): the TensorRT idea on the CPU. A model is turned once, offline, into
 * the file the engine runs: weights quantized when asked (Q8_0, or Q4_K with Q6_K for the LM head),
 * in the layout the kernels read, with kernel settings chosen by timing them on this machine. A
 * plan is a GGUF file (weft's own metadata under `weft.plan.*`) that loads by memory-mapping it:
 * nothing is converted at start.
 *
 * A plan records what it was built for: weft's version, the CPU (model name and the instruction
 * set features the kernels use) and the source model's fingerprint. A plan that does not match
 * this machine is never used as it is: weft builds it again from its source model, or, when the
 * source is gone, refuses it (WEFT_PLAN_MISMATCH). A plan whose bytes changed since it was written
 * fails its checksum (WEFT_MODEL_FORMAT).
 *
 * The automatic cache (docs/models.md): `weft serve --quantize T` looks for a plan under
 * $WEFT_CACHE_DIR/plans (default $XDG_CACHE_HOME/weft/plans, else ~/.cache/weft/plans), keyed by
 * the source fingerprint, the quantization, the CPU and weft's version, and builds it on a miss.
 */
import { createHash } from 'node:crypto';
import { existsSync, readFileSync } from 'node:fs';
import { mkdir, open, readFile, rename, rm, stat, writeFile } from 'node:fs/promises';
import { cpus, homedir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WeftError } from '../errors.js';
import { ggufTensorInfos, meta as gmeta, readGguf, writeGguf, type GgufMeta, type GgufFile, type GgufTensorToWrite, type GgufValue } from './gguf.js';
import type { ModelSource } from './model-source.js';
import type { TokenizerParts } from '../tokenizer/tokenizer.js';
import { native, type NativeQuantType } from './native.js';
import type { TensorDType, TensorInfo } from './safetensors.js';
import { readTensorBytes } from './dtype.js';

export const PLAN_FORMAT = 1;
export const PLAN_ARCHITECTURE = 'weft-plan';
export type PlanQuantize = 'q8_0' | 'q4_k';
export const PLAN_QUANTIZE: readonly PlanQuantize[] = ['q8_0', 'q4_k'];

/** The instruction-set features weft's kernels choose between (x86 names from /proc/cpuinfo). */
const KERNEL_FEATURES = ['avx', 'avx2', 'fma', 'f16c', 'avx512f', 'avx512bw', 'avx512vl', 'avx512_vnni', 'avx_vnni', 'avx512_bf16', 'amx_tile', 'amx_int8', 'amx_bf16'];

export interface CpuIdentity {
  model: string;
  features: string[];
}

/** This machine's CPU: its model name and which of the kernels' features it has. */
export function cpuIdentity(): CpuIdentity {
  let flags: string[] = [];
  try {
    const info = readFileSync('/proc/cpuinfo', 'utf8');
    const line = /^flags\s*:(.*)$/m.exec(info);
    if (line) flags = line[1]!.trim().split(/\s+/);
  } catch {
    // not Linux: the compiled-in SIMD level stands for the features
  }
  const have = new Set(flags);
  const features = KERNEL_FEATURES.filter((f) => have.has(f));
  if (features.length === 0) features.push(`simd:${native().simd}`);
  return { model: cpus()[0]?.model.trim() ?? 'unknown', features };
}

let cachedVersion: string | undefined;
/** weft's version (package.json), part of every plan's identity. */
export function weftVersion(): string {
  if (cachedVersion) return cachedVersion;
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    const p = join(dir, 'package.json');
    if (existsSync(p)) {
      const pkg = JSON.parse(readFileSync(p, 'utf8')) as { name?: string; version?: string };
      if (pkg.name === 'weft' && pkg.version) return (cachedVersion = pkg.version);
    }
    dir = dirname(dir);
  }
  return (cachedVersion = '0.0.0');
}

/**
 * A model's fingerprint: sha256 over each weight file's size, its first and last MiB and the
 * model's config. Reading every byte of a multi-GB model at each start would cost more than the
 * plan saves; the header and both ends change with any re-export or re-quantization.
 */
export async function modelFingerprint(source: ModelSource): Promise<string> {
  const h = createHash('sha256');
  h.update(JSON.stringify(source.config));
  const files = [...new Set([...source.tensors.values()].map((t) => t.file))].sort();
  const chunk = 1 << 20;
  for (const f of files) {
    const fh = await open(f, 'r');
    try {
      const { size } = await fh.stat();
      h.update(`${basename(f)}:${size}`);
      const buf = Buffer.alloc(Math.min(chunk, size));
      await fh.read(buf, 0, buf.length, 0);
      h.update(buf);
      if (size > chunk) {
        const tail = Buffer.alloc(Math.min(chunk, size - chunk));
        await fh.read(tail, 0, tail.length, size - tail.length);
        h.update(tail);
      }
    } finally {
      await fh.close();
    }
  }
  return h.digest('hex');
}

/** Where plans are cached. */
export function planCacheDir(): string {
  if (process.env.WEFT_CACHE_DIR) return join(process.env.WEFT_CACHE_DIR, 'plans');
  const base = process.env.XDG_CACHE_HOME || join(homedir(), '.cache');
  return join(base, 'weft', 'plans');
}

export interface PlanIdentity {
  format: number;
  version: string;
  cpu: CpuIdentity;
  source: { path: string; kind: ModelSource['kind']; fingerprint: string };
  quantize: PlanQuantize | 'none';
}

/** The cache file for a model, quantization and this machine. */
export function planCachePath(source: ModelSource, fingerprint: string, quantize: PlanQuantize | 'none'): string {
  const cpu = cpuIdentity();
  const key = createHash('sha256').update(JSON.stringify([PLAN_FORMAT, weftVersion(), cpu, fingerprint, quantize])).digest('hex').slice(0, 20);
  const name = basename(source.path).replace(/\.gguf$/i, '').replace(/[^A-Za-z0-9_.-]/g, '_');
  return join(planCacheDir(), `${name}.${quantize}.${key}.plan.gguf`);
}

/** Why a plan cannot be used on this machine (null: it can). */
export function planMismatch(id: PlanIdentity): string | null {
  if (id.format !== PLAN_FORMAT) return `plan format ${id.format}, this weft reads ${PLAN_FORMAT}`;
  if (id.version !== weftVersion()) return `built by weft ${id.version}, this is ${weftVersion()}`;
  const cpu = cpuIdentity();
  if (id.cpu.model !== cpu.model || id.cpu.features.join(' ') !== cpu.features.join(' ')) {
    return `built on "${id.cpu.model}" (${id.cpu.features.join(' ')}), this CPU is "${cpu.model}" (${cpu.features.join(' ')})`;
  }
  return null;
}

function outputType(hfName: string, t: TensorInfo, quantize: PlanQuantize | 'none', lmHeadName: string): TensorDType {
  if (t.shape.length !== 2) return 'F32';
  if (quantize === 'none') return t.dtype;
  const cols = t.shape[1]!;
  if (quantize === 'q8_0') return cols % 32 === 0 ? 'Q8_0' : t.dtype;
  // q4_k: Q4_K matrices, the LM head in Q6_K (the tensor most sensitive to quantization, as in
  // llama.cpp's Q4_K_M); a row that is not a whole number of 256-blocks falls back to Q8_0
  if (cols % 256 !== 0) return cols % 32 === 0 ? 'Q8_0' : t.dtype;
  return hfName === lmHeadName ? 'Q6_K' : 'Q4_K';
}

/** A tensor's values as f32 (converted or dequantized natively). */
async function tensorF32(t: TensorInfo): Promise<Float32Array> {
  const bytes = await readTensorBytes(t);
  return native().quant.dequantize(t.dtype as NativeQuantType, bytes, t.shape.reduce((a, b) => a * b, 1));
}

/**
 * The layout the engine runs: each layer's q, k and v projections as one matrix (rows q|k|v,
 * `self_attn.qkv_proj.weight`) and gate and up as one (`mlp.gate_up_proj.weight`), as Phi-3 has them;
 * weights.ts takes the parts as row ranges of it. Parts of different types stay apart.
 */
function fuseProjections(byName: Map<string, GgufTensorToWrite>): GgufTensorToWrite[] {
  const fuse = (parts: string[], fused: string) => {
    const ts = parts.map((n) => byName.get(n));
    if (ts.some((t) => !t) || new Set(ts.map((t) => t!.type)).size !== 1 || new Set(ts.map((t) => t!.shape[1])).size !== 1) return;
    const list = ts as GgufTensorToWrite[];
    byName.set(fused, {
      name: fused,
      type: list[0]!.type,
      shape: [list.reduce((a, t) => a + t.shape[0]!, 0), list[0]!.shape[1]!],
      data: async () => {
        const chunks: Uint8Array[] = [];
        for (const t of list) chunks.push(typeof t.data === 'function' ? await t.data() : t.data);
        return Buffer.concat(chunks);
      },
    });
    for (const n of parts) byName.delete(n);
  };
  for (const name of [...byName.keys()]) {
    const attn = /^(.*\.layers\.\d+\.self_attn\.)q_proj\.weight$/.exec(name);
    if (attn) fuse(['q', 'k', 'v'].map((x) => `${attn[1]}${x}_proj.weight`), `${attn[1]}qkv_proj.weight`);
    const mlp = /^(.*\.layers\.\d+\.mlp\.)gate_proj\.weight$/.exec(name);
    if (mlp) fuse([`${mlp[1]}gate_proj.weight`, `${mlp[1]}up_proj.weight`], `${mlp[1]}gate_up_proj.weight`);
  }
  return [...byName.values()];
}

export interface BuildPlanOptions {
  quantize?: PlanQuantize;
  out: string;
  /** Progress lines. */
  log?: (line: string) => void;
  tuning?: Record<string, unknown>;
}

/** Writes a plan for `source` to opts.out (atomically: a temporary file renamed). */
export async function buildPlan(source: ModelSource, opts: BuildPlanOptions): Promise<{ path: string; bytes: number; seconds: number }> {
  const t0 = performance.now();
  const log = opts.log ?? (() => {});
  const quantize = opts.quantize ?? 'none';
  if (source.config.fp8) {
    throw new WeftError('WEFT_UNSUPPORTED_DTYPE', `${source.path} is an FP8 checkpoint: weft runs it as it is (FP8 on cuda, dequantized to f32 on the cpu), not through an engine plan`);
  }
  const fingerprint = await modelFingerprint(source);
  const identity: PlanIdentity = { format: PLAN_FORMAT, version: weftVersion(), cpu: cpuIdentity(), source: { path: source.path, kind: source.kind, fingerprint }, quantize };
  const lmHeadName = source.tensors.has('lm_head.weight') ? 'lm_head.weight' : 'model.embed_tokens.weight';
  const planned = new Map<string, GgufTensorToWrite>();
  for (const [name, t] of source.tensors) {
    if (name.startsWith('rope_')) continue; // GGUF RoPE factors: already in the config
    const type = outputType(name, t, quantize, lmHeadName);
    planned.set(name, {
      name,
      type,
      shape: t.shape,
      data: async () => {
        if (type === t.dtype) return readTensorBytes(t);
        const values = await tensorF32(t);
        if (type === 'F32') return new Uint8Array(values.buffer, values.byteOffset, values.byteLength);
        return native().quant.quantize(type as NativeQuantType, values);
      },
    });
  }
  const tensors = fuseProjections(planned);
  const metadata = new Map<string, GgufMeta>([
    ['general.architecture', gmeta.str(PLAN_ARCHITECTURE)],
    ['general.name', gmeta.str(basename(source.path))],
    ['weft.plan.identity', gmeta.str(JSON.stringify(identity))],
    ['weft.plan.hf_config', gmeta.str(JSON.stringify(source.hfConfig))],
    ['weft.plan.extras', gmeta.str(JSON.stringify(source.extras))],
    ['weft.plan.tuning', gmeta.str(padded(JSON.stringify(opts.tuning ?? {}), TUNING_BYTES))],
    [CHECKSUM_KEY, gmeta.str(CHECKSUM_PENDING)],
  ]);
  const tokenizer = await source.tokenizer();
  if (tokenizer) {
    const { jsonPath: _path, ...parts } = tokenizer;
    metadata.set('weft.plan.tokenizer', gmeta.str(JSON.stringify(parts)));
  }
  const out = resolve(opts.out);
  await mkdir(dirname(out), { recursive: true });
  const tmp = `${out}.${process.pid}.tmp`;
  try {
    log(`weft build: writing ${tensors.length} tensors (${quantize}) to ${out}`);
    await writeGguf(tmp, { metadata, tensors });
    await sealPlanChecksum(tmp);
    await rename(tmp, out);
    await rename(`${tmp}.verified`, `${out}.verified`).catch(() => undefined);
  } catch (e) {
    await rm(tmp, { force: true });
    throw e;
  }
  const { size } = await stat(out);
  return { path: out, bytes: size, seconds: (performance.now() - t0) / 1000 };
}

// The tuning is timed on the plan once written, then written into its reserved space; the checksum
// (sha256 of the whole file with the checksum's own bytes read as '0') is sealed last.
const TUNING_BYTES = 4096;
const CHECKSUM_KEY = 'weft.plan.checksum';
const CHECKSUM_PENDING = '0'.repeat(64);

function padded(text: string, bytes: number): string {
  const n = Buffer.byteLength(text);
  if (n > bytes) throw new WeftError('WEFT_INTERNAL', `plan tuning is ${n} bytes, more than the ${bytes} reserved`);
  return text + ' '.repeat(bytes - n);
}

/** Where a string metadata value lies in a GGUF header (key, u32 type 8, u64 length, bytes). */
async function stringValueAt(file: string, key: string): Promise<{ offset: number; length: number }> {
  const fh = await open(file, 'r');
  try {
    const head = Buffer.alloc(Math.min((await fh.stat()).size, 1 << 20));
    await fh.read(head, 0, head.length, 0);
    const k = Buffer.from(key);
    let i = head.indexOf(k);
    while (i >= 8) {
      const lenOk = head.readBigUInt64LE(i - 8) === BigInt(k.length);
      const at = i + k.length;
      if (lenOk && at + 12 <= head.length && head.readUInt32LE(at) === 8) {
        const length = Number(head.readBigUInt64LE(at + 4));
        return { offset: at + 12, length };
      }
      i = head.indexOf(k, i + 1);
    }
    throw new WeftError('WEFT_MODEL_FORMAT', `${file}: plan metadata "${key}" is missing`);
  } finally {
    await fh.close();
  }
}

/** sha256 of the file with [skip.offset, skip.offset + skip.length) read as ASCII '0'. */
async function fileDigest(file: string, skip: { offset: number; length: number }): Promise<string> {
  const h = createHash('sha256');
  const fh = await open(file, 'r');
  try {
    const size = (await fh.stat()).size;
    const buf = Buffer.alloc(Math.min(size, 8 << 20));
    for (let pos = 0; pos < size; ) {
      const { bytesRead } = await fh.read(buf, 0, Math.min(buf.length, size - pos), pos);
      if (bytesRead === 0) break;
      const a = Math.max(skip.offset - pos, 0), b = Math.min(skip.offset + skip.length - pos, bytesRead);
      if (a < b) buf.fill(0x30, a, b);
      h.update(buf.subarray(0, bytesRead));
      pos += bytesRead;
    }
  } finally {
    await fh.close();
  }
  return h.digest('hex');
}

async function patch(file: string, offset: number, bytes: Buffer): Promise<void> {
  const fh = await open(file, 'r+');
  try {
    await fh.write(bytes, 0, bytes.length, offset);
  } finally {
    await fh.close();
  }
}

/** Seals a plan's checksum over its bytes as they are (for tools that edit plan metadata). */
export async function sealPlanChecksum(file: string): Promise<void> {
  const at = await stringValueAt(file, CHECKSUM_KEY);
  const digest = await fileDigest(file, at);
  await patch(file, at.offset, Buffer.from(digest));
  await writeStamp(file, digest);
}

// Hashing a whole plan at every start would cost as much as the plan saves (~1 s a GB): once a
// plan's bytes were checked, a stamp beside it (PLAN.verified: its size, mtime, inode and digest)
// lets later loads of the unchanged file skip the hash. A file rewritten since has another mtime
// (and size or inode) and is hashed again.
interface VerifiedStamp { size: number; mtimeMs: number; ino: number; sha256: string }

async function stampOf(file: string, sha256: string): Promise<VerifiedStamp> {
  const st = await stat(file);
  return { size: st.size, mtimeMs: st.mtimeMs, ino: st.ino, sha256 };
}

async function writeStamp(file: string, sha256: string): Promise<void> {
  try {
    await writeFile(`${file}.verified`, JSON.stringify(await stampOf(file, sha256)));
  } catch {
    // a read-only directory: every load hashes the plan
  }
}

async function stampHolds(file: string, stored: string): Promise<boolean> {
  try {
    const stamp = JSON.parse(await readFile(`${file}.verified`, 'utf8')) as VerifiedStamp;
    const now = await stampOf(file, stored);
    return stamp.size === now.size && stamp.mtimeMs === now.mtimeMs && stamp.ino === now.ino && stamp.sha256 === stored;
  } catch {
    return false;
  }
}

async function verifyChecksum(file: string): Promise<void> {
  const at = await stringValueAt(file, CHECKSUM_KEY);
  if (at.length !== 64) throw new WeftError('WEFT_MODEL_FORMAT', `${file}: plan checksum has ${at.length} bytes, not 64`);
  const fh = await open(file, 'r');
  const stored = Buffer.alloc(64);
  try {
    await fh.read(stored, 0, 64, at.offset);
  } finally {
    await fh.close();
  }
  if (await stampHolds(file, stored.toString('latin1'))) return;
  const actual = await fileDigest(file, at);
  if (stored.toString('latin1') !== actual) {
    throw new WeftError('WEFT_MODEL_FORMAT', `${file}: the plan's checksum does not match its bytes (stored ${stored.toString('latin1').slice(0, 16)}…, computed ${actual.slice(0, 16)}…): the file was corrupted or changed after weft build`);
  }
  await writeStamp(file, actual);
}

/** Writes the tuning timed on a plan into it, and seals its checksum again. */
export async function writePlanTuning(file: string, tuning: object): Promise<void> {
  const at = await stringValueAt(file, 'weft.plan.tuning');
  await patch(file, at.offset, Buffer.from(padded(JSON.stringify(tuning), at.length)));
  await sealPlanChecksum(file);
}

export interface LoadedPlan {
  identity: PlanIdentity;
  hfConfig: Record<string, unknown>;
  extras: Record<string, unknown>;
  tuning: Record<string, unknown>;
  tokenizer?: TokenizerParts;
  tensors: TensorInfo[];
}

function planJson(file: string, metadata: Map<string, GgufValue>, key: string): Record<string, unknown> {
  const v = metadata.get(key);
  if (typeof v !== 'string') throw new WeftError('WEFT_MODEL_FORMAT', `${file}: plan metadata "${key}" is missing`);
  try {
    const o = JSON.parse(v) as unknown;
    if (typeof o !== 'object' || o === null || Array.isArray(o)) throw new Error('not an object');
    return o as Record<string, unknown>;
  } catch (e) {
    throw new WeftError('WEFT_MODEL_FORMAT', `${file}: plan metadata "${key}" is not a JSON object (${(e as Error).message})`);
  }
}

/** Reads and checks a plan (checksum, identity fields); mismatch is checked by the caller. */
export async function readPlan(file: string, parsed?: GgufFile): Promise<LoadedPlan> {
  const g = parsed ?? (await readGguf(file));
  if (g.metadata.get('general.architecture') !== PLAN_ARCHITECTURE) throw new WeftError('WEFT_MODEL_FORMAT', `${file} is a GGUF model, not a weft plan`);
  const identity = planJson(file, g.metadata, 'weft.plan.identity') as unknown as PlanIdentity;
  if (typeof identity.format !== 'number' || typeof identity.version !== 'string' || typeof identity.cpu?.model !== 'string' || !Array.isArray(identity.cpu?.features) || typeof identity.source?.fingerprint !== 'string') {
    throw new WeftError('WEFT_MODEL_FORMAT', `${file}: plan identity is incomplete`);
  }
  await verifyChecksum(file);
  const tok = g.metadata.get('weft.plan.tokenizer');
  return {
    identity,
    hfConfig: planJson(file, g.metadata, 'weft.plan.hf_config'),
    extras: planJson(file, g.metadata, 'weft.plan.extras'),
    tuning: planJson(file, g.metadata, 'weft.plan.tuning'),
    tokenizer: typeof tok === 'string' ? (JSON.parse(tok) as TokenizerParts) : undefined,
    tensors: [...ggufTensorInfos(g).values()],
  };
}

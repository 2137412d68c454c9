/**
 * The command line's options: a small, strict flag parser (`--name value`, `--flag`; unknown flags
 * are errors), byte sizes, and `weft serve`'s options read from flags and WEFT_* environment
 * variables into the engine's and the gateway's options.
 */
import { existsSync, readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { createSecureContext } from 'node:tls';
import { fileURLToPath } from 'node:url';
import { loadAnyModelConfig } from '../engine/model-source.js';
import type { EngineOptions, SamplingOptions } from '../engine/engine.js';
import type { GatewayOptions } from '../gateway/server.js';
import { WeftError } from '../errors.js';

export type FlagSpec = Record<string, 'string' | 'number' | 'boolean' | 'list'>;
export type Flags = Record<string, string | number | boolean | number[] | undefined>;

export function parseFlags(argv: string[], spec: FlagSpec): Flags {
  const out: Flags = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) throw new WeftError('WEFT_BAD_ARGUMENT', `unexpected argument ${arg}`);
    const [name, inline] = arg.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    const kind = spec[name];
    if (!kind) throw new WeftError('WEFT_BAD_ARGUMENT', `unknown option --${name}`);
    if (kind === 'boolean') {
      out[name] = inline === undefined ? true : inline !== 'false';
      continue;
    }
    const value = inline ?? argv[++i];
    if (value === undefined) throw new WeftError('WEFT_BAD_ARGUMENT', `--${name} needs a value`);
    if (kind === 'string') out[name] = value;
    else if (kind === 'number') {
      const n = Number(value);
      if (value.trim() === '' || !Number.isFinite(n)) throw new WeftError('WEFT_BAD_ARGUMENT', `--${name} must be a number (got ${value})`);
      out[name] = n;
    } else {
      const list = value.split(',').map((s) => Number(s.trim()));
      if (list.some((n) => !Number.isInteger(n))) throw new WeftError('WEFT_BAD_ARGUMENT', `--${name} must be a comma-separated list of integers (got ${value})`);
      out[name] = list;
    }
  }
  return out;
}

/** A byte size: `268435456`, `256MiB`, `1.5GiB`, `512k`, `64MB` (K/M/G and KiB/MiB/GiB are powers of 1024). */
export function parseSize(value: string, name: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$/i.exec(value);
  if (!m) throw new WeftError('WEFT_BAD_ARGUMENT', `${name} must be a size such as 256MiB (got ${value})`);
  const unit = (m[2] ?? 'b').toLowerCase()[0]!;
  const mult = unit === 'k' ? 1024 : unit === 'm' ? 1024 ** 2 : unit === 'g' ? 1024 ** 3 : 1;
  const n = Math.floor(Number(m[1]) * mult);
  if (n <= 0) throw new WeftError('WEFT_BAD_ARGUMENT', `${name} must be positive (got ${value})`);
  return n;
}

/**
 * How a `weft serve` option's value is read: `string`; `int`, an integer >= 0 (where 0 means
 * something: a port picked by the system, a limit turned off); `count`, an integer >= 1; `size`,
 * a byte size (parseSize).
 */
export type OptionKind = 'string' | 'int' | 'count' | 'size';

/** The environment variable of a `weft serve` option: `--max-queue`: WEFT_MAX_QUEUE. */
const envName = (name: string) => 'WEFT_' + name.toUpperCase().replace(/-/g, '_');

/** How an error names an option: `--max-queue`, or `WEFT_MAX_QUEUE (--max-queue)` where the value came from the environment. */
export const optionLabel = (f: Flags, name: string) => (f[name] === undefined ? `${envName(name)} (--${name})` : `--${name}`);

/** A `weft serve` option: the flag, else its WEFT_* environment variable. */
export function flagOrEnv(f: Flags, name: string, kind: OptionKind, env: NodeJS.ProcessEnv = process.env): string | number | undefined {
  const fromEnv = env[envName(name)];
  const v = f[name] ?? (fromEnv === undefined || fromEnv === '' ? undefined : fromEnv);
  if (v === undefined) return undefined;
  const label = optionLabel(f, name);
  if (kind === 'string') return String(v);
  if (kind === 'size') return typeof v === 'number' ? v : parseSize(String(v), label);
  const n = String(v).trim() === '' ? NaN : Number(v);
  const min = kind === 'count' ? 1 : 0;
  if (!Number.isInteger(n) || n < min) {
    throw new WeftError('WEFT_BAD_ARGUMENT', `${label} must be ${min === 1 ? 'a positive integer' : 'a non-negative integer'} (got ${String(v)})`);
  }
  return n;
}

/** One of a few words, or an error naming the option (`label`). */
export function oneOf<T extends string>(v: string | undefined, label: string, allowed: readonly T[]): T | undefined {
  if (v === undefined || (allowed as readonly string[]).includes(v)) return v as T | undefined;
  throw new WeftError('WEFT_BAD_ARGUMENT', `${label} must be ${allowed.join(' or ')} (got ${v})`);
}

/** The protocol's sampling names (docs/protocol.md, "Sampling") and the engine's. */
const SAMPLING_FIELDS = {
  temperature: 'temperature', top_p: 'topP', top_k: 'topK', min_p: 'minP', repetition_penalty: 'repetitionPenalty',
  presence_penalty: 'presencePenalty', frequency_penalty: 'frequencyPenalty', seed: 'seed',
} as const;

/**
 * `--sampling '{"temperature": 0.7, "top_p": 0.9}'`: the server's sampling defaults as a JSON object
 * with the protocol's field names. Types are checked here; ranges by the engine once it is loaded.
 */
export function parseSamplingJson(text: string, name: string): SamplingOptions {
  const bad = (msg: string) => new WeftError('WEFT_BAD_ARGUMENT', `${name} ${msg}`);
  let v: unknown;
  try {
    v = JSON.parse(text);
  } catch {
    throw bad(`must be a JSON object such as {"temperature": 0.7} (got ${text})`);
  }
  if (typeof v !== 'object' || v === null || Array.isArray(v)) throw bad(`must be a JSON object such as {"temperature": 0.7} (got ${text})`);
  const out: SamplingOptions = {};
  for (const [k, val] of Object.entries(v)) {
    if (!Object.prototype.hasOwnProperty.call(SAMPLING_FIELDS, k)) {
      const hint = k === 'max_tokens' ? ' (--max-tokens sets the default max_tokens)' : '';
      throw bad(`has an unknown field ${JSON.stringify(k)}${hint}; it takes ${Object.keys(SAMPLING_FIELDS).join(', ')}`);
    }
    if (typeof val !== 'number' || !Number.isFinite(val)) throw bad(`field ${k} must be a finite number (got ${JSON.stringify(val)})`);
    if ((k === 'top_k' || k === 'seed') && (!Number.isInteger(val) || val < 0)) throw bad(`field ${k} must be a non-negative integer (got ${val})`);
    out[SAMPLING_FIELDS[k as keyof typeof SAMPLING_FIELDS]] = val;
  }
  return out;
}

/** The embedded model (models/default), the default of --model. */
export function defaultModel(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, 'models', 'default');
    if (existsSync(join(candidate, 'config.json'))) return candidate;
    dir = dirname(dir);
  }
  throw new WeftError('WEFT_BAD_ARGUMENT', '--model DIR is required (no embedded default model was found)');
}

/** `weft serve`'s options, each a flag and a WEFT_* environment variable (the flag wins), and how its value is read. */
export const SERVE_OPTIONS: Record<string, OptionKind> = {
  model: 'string', port: 'int', host: 'string', transport: 'string', 'allowed-origins': 'string',
  'tls-cert': 'string', 'tls-key': 'string', 'api-keys': 'string', 'instance-id': 'string', 'trusted-proxies': 'string', redis: 'string',
  // the engine
  backend: 'string', 'cuda-device': 'int', contexts: 'count', threads: 'count', 'kv-memory': 'size', 'kv-page-tokens': 'count', 'kv-dtype': 'string',
  quantize: 'string', 'max-context': 'count', 'max-batch-tokens': 'count', 'max-batch-sequences': 'count', 'max-logit-rows': 'count',
  // the scheduler
  'max-active': 'count', 'max-queue': 'int', 'max-buffered-events': 'count',
  // sessions and answers
  'max-sessions': 'count', 'max-tokens': 'count', sampling: 'string', 'context-policy': 'string', 'max-session-tokens': 'count',
  'resume-ttl': 'int', 'max-detached-sessions': 'count', 'max-detached-per-client': 'count', 'replay-bytes': 'size',
  'park-after': 'int', 'drop-after': 'int', 'parked-memory': 'size', 'state-dir': 'string', 'prefix-cache-entries': 'int', 'prefix-cache-tokens': 'count',
  // what clients may send, and how much the server holds for them
  'max-frame-bytes': 'size', 'max-body-bytes': 'size', 'max-frames-per-second': 'count', 'max-bytes-per-second': 'size',
  'max-bytes-per-second-per-client': 'size', 'max-buffered-bytes': 'size', 'backpressure-bytes': 'size', heartbeat: 'int',
  // shutting down
  'drain-timeout': 'int', 'drain-target': 'string',
};

/** A file named by a flag, read now so that a wrong path is an error before anything listens. */
function readFlagFile(file: string, flag: string): Buffer {
  try {
    return readFileSync(file);
  } catch (err) {
    const e = err as NodeJS.ErrnoException;
    const why = e.code === 'ENOENT' ? 'no such file' : e.code === 'EACCES' ? 'permission denied' : e.code === 'EISDIR' ? 'a directory' : e.message;
    throw new WeftError('WEFT_BAD_ARGUMENT', `${flag} ${file} cannot be read: ${why}`);
  }
}

/** --tls-cert and --tls-key: both or neither, readable, and a certificate with its key. */
function tlsOption(certFile: string | undefined, keyFile: string | undefined): GatewayOptions['tls'] {
  if (certFile === undefined && keyFile === undefined) return undefined;
  if (certFile === undefined || keyFile === undefined) throw new WeftError('WEFT_BAD_ARGUMENT', '--tls-cert FILE and --tls-key FILE go together: give both or neither');
  const cert = readFlagFile(certFile, '--tls-cert');
  const key = readFlagFile(keyFile, '--tls-key');
  try {
    createSecureContext({ cert, key });
  } catch (err) {
    throw new WeftError('WEFT_BAD_ARGUMENT', `--tls-cert ${certFile} and --tls-key ${keyFile} are not a PEM certificate and its private key (${(err as Error).message})`);
  }
  return { certFile, keyFile };
}

/**
 * `weft serve`'s flags and environment read into the engine's and the gateway's options. Every bad
 * value is WEFT_BAD_ARGUMENT naming its flag, before anything listens (sampling ranges excepted: the
 * engine checks them once it is loaded).
 */
export async function readServeOptions(argv: string[], env: NodeJS.ProcessEnv = process.env): Promise<{ model: string; engine: EngineOptions; gateway: GatewayOptions }> {
  const f = parseFlags(argv, Object.fromEntries(Object.keys(SERVE_OPTIONS).map((k) => [k, 'string' as const])));
  const opt = (k: string) => flagOrEnv(f, k, SERVE_OPTIONS[k]!, env);
  const str = (k: string) => opt(k) as string | undefined;
  const n = (k: string) => opt(k) as number | undefined;
  const word = <T extends string>(k: string, allowed: readonly T[]) => oneOf(str(k), optionLabel(f, k), allowed);
  const ms = (k: string) => ((t) => (t === undefined ? undefined : t * 1000))(n(k));
  const port = n('port') ?? 8080;
  if (port > 65535) throw new WeftError('WEFT_BAD_ARGUMENT', `--port must be at most 65535 (got ${port})`);
  const model = str('model') ?? defaultModel();
  // a model that is not there is an error before anything listens
  const config = await loadAnyModelConfig(model);
  const maxContext = n('max-context');
  if (maxContext !== undefined && maxContext > config.maxPositionEmbeddings) {
    throw new WeftError('WEFT_BAD_ARGUMENT', `--max-context ${maxContext} is more than the model's context (max_position_embeddings ${config.maxPositionEmbeddings})`);
  }
  const apiKeys = str('api-keys');
  if (apiKeys !== undefined) readFlagFile(apiKeys, '--api-keys');
  const sampling = str('sampling');
  const engine: EngineOptions = {
    backend: word('backend', ['cpu', 'cuda'] as const), cudaDevice: n('cuda-device'), contexts: n('contexts'), threads: n('threads'),
    kvMemoryBytes: n('kv-memory'), kvPageTokens: n('kv-page-tokens'), kvDtype: word('kv-dtype', ['f32', 'f16'] as const),
    quantize: word('quantize', ['q8_0', 'q4_k', 'fp8'] as const),
    maxContext, maxBatchTokens: n('max-batch-tokens'), maxBatchSequences: n('max-batch-sequences'), maxLogitRows: n('max-logit-rows'),
  };
  const gateway: GatewayOptions = {
    host: str('host') ?? '127.0.0.1',
    port,
    transport: word('transport', ['ws', 'uws'] as const),
    allowedOrigins: str('allowed-origins')?.split(',').map((o) => o.trim()).filter((o) => o !== ''),
    tls: tlsOption(str('tls-cert'), str('tls-key')),
    apiKeys,
    scheduler: { maxActive: n('max-active'), maxQueue: n('max-queue'), maxBufferedEvents: n('max-buffered-events') },
    maxSessions: n('max-sessions'),
    defaultMaxTokens: n('max-tokens'),
    sessionSampling: sampling === undefined ? undefined : parseSamplingJson(sampling, optionLabel(f, 'sampling')),
    contextPolicy: word('context-policy', ['truncate', 'reject'] as const),
    maxSessionTokens: n('max-session-tokens'),
    resumeTtlMs: ms('resume-ttl'),
    maxDetachedSessions: n('max-detached-sessions'),
    maxDetachedPerClient: n('max-detached-per-client'),
    replayBytes: n('replay-bytes'),
    parkAfterMs: ms('park-after'),
    dropAfterMs: ms('drop-after'),
    parkedMemoryBytes: n('parked-memory'),
    stateDir: str('state-dir'),
    prefixCacheEntries: n('prefix-cache-entries'),
    prefixCacheTokens: n('prefix-cache-tokens'),
    maxFrameBytes: n('max-frame-bytes'),
    maxBodyBytes: n('max-body-bytes'),
    maxFramesPerSecond: n('max-frames-per-second'),
    maxBytesPerSecond: n('max-bytes-per-second'),
    maxBytesPerSecondPerClient: n('max-bytes-per-second-per-client'),
    maxBufferedBytes: n('max-buffered-bytes'),
    backpressureBytes: n('backpressure-bytes'),
    heartbeatMs: ms('heartbeat'),
    drainTimeoutMs: ms('drain-timeout'),
    drainTarget: str('drain-target'),
    instanceId: str('instance-id'),
    redis: str('redis'),
    trustedProxies: str('trusted-proxies')?.split(',').map((a) => a.trim()).filter((a) => a !== ''),
  };
  return { model, engine, gateway };
}

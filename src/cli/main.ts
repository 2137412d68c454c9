#!/usr/bin/env node
/**
 * weft's command line: `weft serve`, `weft generate`, `weft bench`. Errors print `error CODE: message` on
 * stderr (and an {"error": {...}} object on stdout with --json) and exit with status 1.
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { WeftError, toWeftError } from '../errors.js';
import { benchEngine, kvBytesFor } from '../engine/benchmark.js';
import { loadModelConfig } from '../engine/config.js';
import { Engine, defaultBackend, type BackendName } from '../engine/engine.js';
import { generate } from '../engine/generate.js';
import { isLoopback } from '../gateway/origin.js';
import { Gateway } from '../gateway/server.js';
import { parseFlags, parseSize, type Flags } from './args.js';

// Engine steps wait for their GPU work (or CPU threads) on libuv worker threads: leave room for
// every context plus the file system (libuv reads this when its pool first starts, after imports).
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16';

const HELP = `weft: a WebSocket-native LLM gateway with its own inference engine

usage:
  weft serve    [--model DIR] [--port 8080] [--host 127.0.0.1] [--backend cpu|cuda] [--contexts N] [--threads N]
                [--kv-memory SIZE] [--max-sessions N] [--max-tokens N] [--max-frame-bytes N]
                [--resume-ttl SECONDS] [--transport ws|uws] [--allowed-origins LIST]
                [--max-frames-per-second N] [--max-bytes-per-second SIZE] [--max-bytes-per-second-per-client SIZE]
                [--max-buffered-bytes SIZE]
                [--max-detached-sessions N] [--max-detached-per-client N] [--drain-timeout SECONDS]
                [--context-policy truncate|reject] [--replay-bytes SIZE] [--heartbeat SECONDS]
                [--park-after SECONDS] [--drop-after SECONDS] [--parked-memory SIZE] [--max-session-tokens N]
                [--state-dir DIR] [--drain-target URL]
  weft generate [--model DIR] (--prompt TEXT | --prompt-ids 1,2,3) [--max-tokens N]
                [--temperature T] [--top-p P] [--top-k K] [--min-p P] [--seed S]
                [--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F]
                [--logprobs N] [--backend cpu|cuda] [--threads N] [--json]
  weft bench    [--model DIR] [--sequences 1,4,16,64] [--prompt-tokens N] [--gen-tokens N]
                [--backend cpu|cuda] [--threads N] [--json]

--model defaults to the embedded model (models/default) when it is present.
--backend defaults to cuda when weft was built with CUDA and a GPU is visible, else cpu
(WEFT_BACKEND sets the default).

weft serve: HTTP and WebSocket on one port: protocol v1 at ws://HOST:PORT/v1/ws
(docs/protocol.md), GET /healthz, /readyz, /metrics. Every option has an environment
equivalent, the flag winning: WEFT_MODEL, WEFT_PORT, WEFT_HOST, WEFT_CONTEXTS, WEFT_THREADS,
WEFT_BACKEND, WEFT_KV_MEMORY (a size: 256MiB, 1GiB, bytes), WEFT_MAX_SESSIONS (connected
sessions), WEFT_MAX_TOKENS, WEFT_MAX_FRAME_BYTES, WEFT_RESUME_TTL (seconds a disconnected session
waits for a resume; default 60, 0 disables resume), WEFT_TRANSPORT (ws, the default: node:http +
ws; or uws: uWebSockets.js), WEFT_ALLOWED_ORIGINS (comma-separated browser origins allowed to
open a WebSocket besides the server's own; * allows any; clients that send no Origin are always
allowed), WEFT_MAX_FRAMES_PER_SECOND (per connection, default 100), WEFT_MAX_BYTES_PER_SECOND
(per connection, default 1MiB), WEFT_MAX_BYTES_PER_SECOND_PER_CLIENT (all connections of one
client address together, default 4MiB), WEFT_MAX_BUFFERED_BYTES (unread answers after which a client
that keeps sending is disconnected, default 16MiB), WEFT_MAX_DETACHED_SESSIONS (sessions waiting
for a resume, default --max-sessions), WEFT_MAX_DETACHED_PER_CLIENT (per client address,
default 16), WEFT_DRAIN_TIMEOUT (seconds SIGTERM lets running answers finish, default 10),
WEFT_CONTEXT_POLICY (truncate: a chat that outgrows the context drops its oldest turns, the
default; reject: WEFT_CONTEXT_OVERFLOW), WEFT_REPLAY_BYTES (latest deltas of an answer kept for a
reconnect; a disconnected answer pauses when they fill up; default 256KiB), WEFT_HEARTBEAT
(seconds between server pings; a connection silent past the next one is closed; default 30,
0 disables), WEFT_PARK_AFTER and WEFT_DROP_AFTER (seconds after which an idle session's KV is
parked in host memory, or dropped to its tokens and prefilled again on the next turn; default
never), WEFT_PARKED_MEMORY (most parked KV; beyond it the least recently active parked sessions
are dropped), WEFT_MAX_SESSION_TOKENS (most tokens one conversation may hold), WEFT_STATE_DIR
(sessions are saved there at the end of every turn and at drain; a restarted weft resumes them
with their resume tokens until the resume TTL runs out), WEFT_DRAIN_TARGET (another instance's
ws:// URL that draining clients are told to resume on, in session.draining).

Exposure: weft serve listens on 127.0.0.1 by default, reachable from this machine only. It has
no API keys and no TLS yet: on any other --host (0.0.0.0, a LAN address) anyone who can reach
the port can use the model and read nothing but their own sessions, in clear text. Put it
behind a reverse proxy that terminates TLS and authenticates (NGINX, a VPN) before exposing it;
weft warns at start when --host is not a loopback address.
`;


function defaultModel(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 5; i++) {
    const candidate = join(dir, 'models', 'default');
    if (existsSync(join(candidate, 'config.json'))) return candidate;
    dir = dirname(dir);
  }
  throw new WeftError('WEFT_BAD_ARGUMENT', '--model DIR is required (no embedded default model was found)');
}

const num = (f: Flags, k: string) => f[k] as number | undefined;

function backendFlag(v: unknown): BackendName | undefined {
  if (v === undefined) return undefined;
  if (v !== 'cpu' && v !== 'cuda') throw new WeftError('WEFT_BAD_ARGUMENT', `--backend must be cpu or cuda (got ${String(v)})`);
  return v;
}

async function cmdGenerate(argv: string[]): Promise<void> {
  const f = parseFlags(argv, {
    model: 'string', prompt: 'string', 'prompt-ids': 'list', 'max-tokens': 'number', temperature: 'number', 'top-p': 'number',
    'top-k': 'number', 'min-p': 'number', seed: 'number', 'repetition-penalty': 'number', 'presence-penalty': 'number',
    'frequency-penalty': 'number', logprobs: 'number', threads: 'number', json: 'boolean', backend: 'string',
  });
  if ((f.prompt === undefined) === (f['prompt-ids'] === undefined)) throw new WeftError('WEFT_BAD_ARGUMENT', 'give exactly one of --prompt TEXT or --prompt-ids 1,2,3');
  const engine = await Engine.load((f.model as string | undefined) ?? defaultModel(), {
    backend: backendFlag(f.backend), threads: num(f, 'threads'), maxBatchSequences: 1, maxLogitRows: 1,
  });
  try {
    const tok = engine.tokenizer;
    let prompt: number[];
    if (f.prompt !== undefined) {
      if (!tok) throw new WeftError('WEFT_TOKENIZER', `${engine.dir} has no tokenizer.json: use --prompt-ids`);
      prompt = await tok.encodeAsync(f.prompt as string);
    } else {
      prompt = f['prompt-ids'] as number[];
    }
    const decoder = tok?.createDecoder();
    const result = await generate(engine, prompt, {
      maxTokens: num(f, 'max-tokens') ?? 64,
      temperature: num(f, 'temperature'), topP: num(f, 'top-p'), topK: num(f, 'top-k'), minP: num(f, 'min-p'), seed: num(f, 'seed'),
      repetitionPenalty: num(f, 'repetition-penalty'), presencePenalty: num(f, 'presence-penalty'), frequencyPenalty: num(f, 'frequency-penalty'),
      logprobs: num(f, 'logprobs'),
      onToken: f.json || !decoder ? undefined : (t) => process.stdout.write(decoder.push(t)),
    });
    const text = tok ? tok.decode(result.tokens, { skipSpecialTokens: true }) : '';
    if (f.json) {
      const out: Record<string, unknown> = { tokens: result.tokens, text };
      if (f.logprobs) out.logprobs = result.logprobs;
      out.finish_reason = result.finishReason;
      out.timing = { prefill_tokens_per_s: result.timing.prefillTokensPerS, decode_tokens_per_s: result.timing.decodeTokensPerS };
      process.stdout.write(JSON.stringify(out) + '\n');
    } else {
      if (decoder) process.stdout.write(decoder.flush() + '\n');
      else process.stdout.write(result.tokens.join(' ') + '\n');
      process.stderr.write(
        `[${result.tokens.length} tokens, ${result.finishReason}; prefill ${result.timing.prefillTokensPerS.toFixed(1)} tok/s, decode ${result.timing.decodeTokensPerS.toFixed(1)} tok/s]\n`,
      );
    }
  } finally {
    engine.dispose();
  }
}

async function cmdBench(argv: string[]): Promise<void> {
  const f = parseFlags(argv, { model: 'string', sequences: 'list', 'prompt-tokens': 'number', 'gen-tokens': 'number', threads: 'number', json: 'boolean', backend: 'string' });
  const backend = backendFlag(f.backend);
  const sequences = (f.sequences as number[] | undefined) ?? [1, 4, 16, 64];
  const promptTokens = num(f, 'prompt-tokens') ?? 128;
  const genTokens = num(f, 'gen-tokens') ?? 32;
  if (sequences.some((n) => n < 1) || promptTokens < 1 || genTokens < 1) throw new WeftError('WEFT_BAD_ARGUMENT', 'sequences, prompt and gen tokens must be positive');
  const maxSeq = Math.max(...sequences);
  const dir = (f.model as string | undefined) ?? defaultModel();
  const config = await loadModelConfig(dir);
  const resolved = backend ?? defaultBackend();
  const kvElt = resolved === 'cpu' ? 4 : 2; // an upper bound on the CPU (f32 or f16 KV; pages are committed on first use)
  const engine = await Engine.load(dir, {
    backend: resolved,
    threads: num(f, 'threads'),
    maxBatchTokens: Math.max(512, maxSeq),
    maxBatchSequences: maxSeq,
    maxLogitRows: maxSeq,
    kvMemoryBytes: kvBytesFor(config, kvElt, maxSeq, promptTokens + genTokens),
    tokenizer: false,
  });
  try {
    const results = await benchEngine(engine, { sequences, promptTokens, genTokens });
    if (f.json) {
      process.stdout.write(JSON.stringify({ results: results.map(({ sequences: s, prefill_tokens_per_s, decode_tokens_per_s }) => ({ sequences: s, prefill_tokens_per_s, decode_tokens_per_s })) }) + '\n');
    } else {
      for (const r of results)
        process.stdout.write(`sequences ${r.sequences}: prefill ${r.prefill_tokens_per_s.toFixed(1)} tok/s, decode ${r.decode_tokens_per_s.toFixed(1)} tok/s (${r.decode_step_ms.toFixed(2)} ms/step)\n`);
    }
  } finally {
    engine.dispose();
  }
}

/** serve's options: the flag, else the WEFT_* environment variable. */
function serveOption(f: Flags, name: string, kind: 'string' | 'int' | 'size'): string | number | undefined {
  const env = process.env['WEFT_' + name.toUpperCase().replace(/-/g, '_')];
  const v = f[name] ?? (env === undefined || env === '' ? undefined : env);
  if (v === undefined) return undefined;
  if (kind === 'string') return String(v);
  if (kind === 'size') return typeof v === 'number' ? v : parseSize(String(v), `--${name}`);
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new WeftError('WEFT_BAD_ARGUMENT', `--${name} must be a non-negative integer (got ${String(v)})`);
  return n;
}

async function cmdServe(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(HELP);
    return;
  }
  const f = parseFlags(argv, {
    model: 'string', port: 'string', host: 'string', backend: 'string', contexts: 'string', threads: 'string', 'kv-memory': 'string',
    'max-sessions': 'string', 'max-tokens': 'string', 'max-frame-bytes': 'string', 'resume-ttl': 'string', transport: 'string',
    'allowed-origins': 'string', 'max-frames-per-second': 'string', 'max-bytes-per-second': 'string', 'max-bytes-per-second-per-client': 'string', 'max-buffered-bytes': 'string',
    'max-detached-sessions': 'string', 'max-detached-per-client': 'string', 'drain-timeout': 'string', 'context-policy': 'string',
    'replay-bytes': 'string', heartbeat: 'string', 'park-after': 'string', 'drop-after': 'string', 'parked-memory': 'string',
    'max-session-tokens': 'string', 'state-dir': 'string', 'drain-target': 'string',
  });
  const int = (k: string) => serveOption(f, k, 'int') as number | undefined;
  const port = int('port') ?? 8080;
  if (port > 65535) throw new WeftError('WEFT_BAD_ARGUMENT', `--port must be at most 65535 (got ${port})`);
  const model = (serveOption(f, 'model', 'string') as string | undefined) ?? defaultModel();
  // a model that is not there is an error before anything listens
  await loadModelConfig(model);
  const engineOptions = { backend: backendFlag(serveOption(f, 'backend', 'string')), contexts: int('contexts'), threads: int('threads'), kvMemoryBytes: serveOption(f, 'kv-memory', 'size') as number | undefined };
  const seconds = (k: string) => ((t) => (t === undefined ? undefined : t * 1000))(int(k));
  const origins = serveOption(f, 'allowed-origins', 'string') as string | undefined;
  const host = (serveOption(f, 'host', 'string') as string | undefined) ?? '127.0.0.1';
  const gw = new Gateway({
    host,
    port,
    maxSessions: int('max-sessions'),
    defaultMaxTokens: int('max-tokens'),
    maxFrameBytes: int('max-frame-bytes'),
    transport: serveOption(f, 'transport', 'string') as 'ws' | 'uws' | undefined,
    resumeTtlMs: seconds('resume-ttl'),
    allowedOrigins: origins?.split(',').map((o) => o.trim()).filter((o) => o !== ''),
    maxFramesPerSecond: int('max-frames-per-second'),
    maxBytesPerSecond: serveOption(f, 'max-bytes-per-second', 'size') as number | undefined,
    maxBytesPerSecondPerClient: serveOption(f, 'max-bytes-per-second-per-client', 'size') as number | undefined,
    maxBufferedBytes: serveOption(f, 'max-buffered-bytes', 'size') as number | undefined,
    maxDetachedSessions: int('max-detached-sessions'),
    maxDetachedPerClient: int('max-detached-per-client'),
    drainTimeoutMs: seconds('drain-timeout'),
    contextPolicy: serveOption(f, 'context-policy', 'string') as 'truncate' | 'reject' | undefined,
    replayBytes: serveOption(f, 'replay-bytes', 'size') as number | undefined,
    heartbeatMs: seconds('heartbeat'),
    parkAfterMs: seconds('park-after'),
    dropAfterMs: seconds('drop-after'),
    parkedMemoryBytes: serveOption(f, 'parked-memory', 'size') as number | undefined,
    maxSessionTokens: int('max-session-tokens'),
    stateDir: serveOption(f, 'state-dir', 'string') as string | undefined,
    drainTarget: serveOption(f, 'drain-target', 'string') as string | undefined,
  });
  const { url } = await gw.listen();
  if (!isLoopback(host)) {
    process.stderr.write(`weft: warning: listening on ${host}, not a loopback address: weft has no API keys or TLS yet, so anyone who can reach this port can use it (weft serve --help, "Exposure")\n`);
  }
  process.stdout.write(`weft listening on ${url} (WebSocket ${url.replace(/^http/, 'ws')}/v1/ws); loading ${model}\n`);
  let engine: Engine | null = null;
  let stopping: Promise<void> | null = null;
  // SIGTERM/SIGINT drain (answers finish, then 1001); a second signal closes at once
  const stop = (): Promise<void> => {
    if (stopping) {
      void gw.close();
      return stopping;
    }
    process.stdout.write(`weft draining: no new sessions; running answers get ${gw.drainTimeoutMs / 1000} s\n`);
    stopping = gw.drain().finally(() => engine?.dispose());
    return stopping;
  };
  const stopped = new Promise<void>((resolve) => {
    const onSignal = () => void stop().then(resolve, resolve);
    process.on('SIGINT', onSignal);
    process.on('SIGTERM', onSignal);
  });
  try {
    engine = await Engine.load(model, engineOptions);
  } catch (err) {
    await gw.close();
    throw err;
  }
  if (stopping) {
    engine.dispose();
    return;
  }
  gw.attach(engine);
  const restored = await gw.loadState();
  process.stdout.write(`weft ready: model ${gw.modelName}${gw.store ? `; ${restored} saved sessions resumable from ${gw.store.dir}` : ''}\n`);
  await stopped;
}

async function main(argv: string[]): Promise<void> {
  const [cmd, ...rest] = argv;
  if (!cmd || cmd === '--help' || cmd === '-h' || cmd === 'help') {
    process.stdout.write(HELP);
    return;
  }
  if (cmd === 'serve') return cmdServe(rest);
  if (cmd === 'generate') return cmdGenerate(rest);
  if (cmd === 'bench') return cmdBench(rest);
  throw new WeftError('WEFT_BAD_ARGUMENT', `unknown command ${cmd} (try weft --help)`);
}

main(process.argv.slice(2)).then(
  () => process.exit(0),
  (err) => {
    const e = toWeftError(err);
    if (process.argv.includes('--json')) process.stdout.write(JSON.stringify({ error: { code: e.code, message: e.message } }) + '\n');
    process.stderr.write(`error ${e.code}: ${e.message}\n`);
    process.exit(1);
  },
);

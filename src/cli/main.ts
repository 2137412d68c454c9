#!/usr/bin/env node
/**
 * weft's command line: `weft serve`, `weft generate`, `weft bench`. Errors print `error CODE: message` on
 * stderr (and an {"error": {...}} object on stdout with --json) and exit with status 1.
 */
import { WeftError, toWeftError } from '../errors.js';
import { benchEngine, kvBytesFor } from '../engine/benchmark.js';
import { loadAnyModelConfig } from '../engine/model-source.js';
import { buildCommand } from './build.js';
import { Engine, ENGINE_QUANTIZE, defaultBackend, type BackendName, type EngineQuantize, type SamplingOptions } from '../engine/engine.js';
import { generate } from '../engine/generate.js';
import { isLoopback } from '../gateway/origin.js';
import { Gateway } from '../gateway/server.js';
import { nginxConfCommand } from '../cluster/nginx-conf.js';
import { defaultModel, parseFlags, readServeOptions, type Flags } from './args.js';

// Engine steps wait for their GPU work (or CPU threads) on libuv worker threads: leave room for
// every context plus the file system (libuv reads this when its pool first starts, after imports).
if (!process.env.UV_THREADPOOL_SIZE) process.env.UV_THREADPOOL_SIZE = '16';

const HELP = `weft: a WebSocket-native LLM gateway with its own inference engine

usage:
  weft serve    [--model PATH] [--port 8080] [--host 127.0.0.1] [--tls-cert FILE --tls-key FILE] [--api-keys FILE]
                [--backend cpu|cuda] [--contexts N] [--threads N] [--kv-memory SIZE] [--max-context N] ...
                (every serve option below)
  weft generate [--model PATH] [--quantize q8_0|q4_k|fp8] (--prompt TEXT | --prompt-ids 1,2,3) [--max-tokens N]
                [--temperature T] [--top-p P] [--top-k K] [--min-p P] [--seed S]
                [--repetition-penalty R] [--presence-penalty P] [--frequency-penalty F]
                [--logprobs N] [--backend cpu|cuda] [--threads N] [--json]
  weft bench    [--model PATH] [--quantize q8_0|q4_k|fp8] [--sequences 1,4,16,64] [--prompt-tokens N] [--gen-tokens N]
                [--backend cpu|cuda] [--threads N] [--json]
  weft build    --model PATH [--quantize q8_0|q4_k] [--out PLAN] [--threads N] [--no-tune] [--json]: the engine
                plan of a model for this machine (weights quantized and laid out for the kernels, kernel
                settings timed here); --out defaults to the plan cache that --quantize uses (docs/models.md)
  weft nginx-conf --instance ID=HOST:PORT ... [--listen 80] [--server-name NAME] [--max-body-bytes SIZE]
                [--tls-cert FILE --tls-key FILE] [--connect-timeout S] [--stream-timeout S] [--fail-timeout S]
                [--access-log PATH|off]: prints NGINX's configuration for several instances (deploy/nginx/weft.conf)

--model is a Hugging Face directory (config.json, safetensors, tokenizer.json), a GGUF file (or a
directory holding one) or an engine plan (weft build); it defaults to the embedded model
(models/default) when it is present. Architectures, GGUF types and plans: docs/models.md.
--backend defaults to cuda when weft was built with CUDA and a GPU is visible, else cpu
(WEFT_BACKEND sets the default).

weft serve: HTTP and WebSocket on one port: protocol v1 at ws://HOST:PORT/v1/ws
(docs/protocol.md); the OpenAI-compatible routes GET /v1/models, POST /v1/chat/completions and
POST /v1/completions, streamed or not (docs/openai.md); OpenAI's Realtime API, text only, at
ws://HOST:PORT/v1/realtime (docs/realtime.md); the chat page at /; GET /healthz, /readyz,
/metrics. Every option has an environment equivalent, WEFT_ and its name in capitals
(--max-queue: WEFT_MAX_QUEUE), the flag winning.
SIZE is bytes or 256KiB, 64MiB, 1GiB; N is an integer; SECONDS whole seconds.

  where and who:
  --model PATH                the model: a directory, a GGUF file or a plan (default: the embedded model)
  --port N                    default 8080; 0 picks a free port
  --host ADDRESS              default 127.0.0.1 (see "Exposure")
  --transport ws|uws          ws (node:http + ws, the default) or uws (uWebSockets.js)
  --allowed-origins LIST      comma-separated browser origins allowed to open a WebSocket besides the
                              server's own; * allows any; clients that send no Origin are always allowed
  --tls-cert FILE, --tls-key FILE
                              PEM certificate chain and its private key, both or neither: HTTPS and
                              wss:// on the same port (default: plain HTTP)
  --api-keys FILE             a JSON file of API keys, each with a name, the key (or its sha256) and
                              limits (max_concurrent, tokens_per_minute, max_tokens, weight): every route
                              but /healthz and /readyz then needs one (default: open to anyone who
                              reaches the port)
  several instances:
  --redis URL                 shared state for several instances: docs/scale-out.md (redis:// or
                              rediss://; default: none, one instance)
  --instance-id ID            this instance's id: resume tokens begin with it, so that the proxy in
                              front routes a resume to the instance that holds the session (letters,
                              digits, _ and -, at most 64; default: the hostname and the port)
  --trusted-proxies LIST      comma-separated addresses or CIDR ranges of reverse proxies in front of
                              weft: for their connections the client's address (per-address limits)
                              is the last X-Forwarded-For address that is not one of them (default:
                              none: the peer's address)
  the engine:
  --backend cpu|cuda          see above
  --cuda-device N             the GPU's ordinal (default 0)
  --contexts N                execution contexts: steps that run at the same time (default 1)
  --threads N                 threads per context on the CPU (default: the cores divided among contexts)
  --kv-memory SIZE            the KV pool (default 256MiB; on CUDA at most what device memory leaves)
  --kv-page-tokens N          tokens per KV page (default 16)
  --kv-dtype f32|f16          KV element type (default f32 for f32 checkpoints on the CPU, else f16)
  --quantize q8_0|q4_k|fp8    run the weights quantized (Q8_0; or Q4_K with a Q6_K LM head): the plan is
                              built once and cached (weft build; default: the model's own types);
                              fp8 (cuda): FP8 E4M3 matrices with per-row scales, quantized on the GPU at load
  --max-context N             context length, at most the model's max_position_embeddings (the default)
  --max-batch-tokens N        tokens in one step: decode tokens + prefill chunks (default 512)
  --max-batch-sequences N     sequences in one step (default 64)
  --max-logit-rows N          rows of logits one step may sample from (default --max-batch-sequences)
  the scheduler:
  --max-active N              answers holding KV and scheduled at once (default: batch sequences x contexts)
  --max-queue N               answers waiting for admission beyond those; more get WEFT_OVERLOADED
                              (default 256; 0: none wait)
  --max-buffered-events N     unread events after which an answer is skipped until read (default 64)
  sessions and answers:
  --max-sessions N            connected sessions (default 1024)
  --max-tokens N              max_tokens of a message that sets none (default 256)
  --sampling JSON             the server's sampling defaults, with the protocol's names, e.g.
                              '{"temperature": 0.7, "top_p": 0.9}' (fields: temperature, top_p, top_k,
                              min_p, repetition_penalty, presence_penalty, frequency_penalty, seed); a
                              client's sampling overrides them field by field (default: greedy)
  --context-policy truncate|reject
                              a chat that outgrows the context drops its oldest turns (truncate, the
                              default) or is refused (reject: WEFT_CONTEXT_OVERFLOW)
  --max-session-tokens N      most tokens one conversation may hold (default: the context)
  --resume-ttl SECONDS        how long a disconnected session waits for a resume (default 60; 0 disables)
  --max-detached-sessions N   sessions waiting for a resume (default --max-sessions)
  --max-detached-per-client N per client address (default 16)
  --replay-bytes SIZE         latest deltas of an answer kept for a reconnect; a disconnected answer
                              pauses when they fill up (default 256KiB)
  --park-after SECONDS, --drop-after SECONDS
                              an idle session's KV is parked in host memory, or dropped to its tokens
                              and prefilled again on the next turn (default never; 0: never)
  --parked-memory SIZE        most parked KV; beyond it the least recently active parked sessions are
                              dropped (default: no limit)
  --state-dir DIR             sessions are saved there at the end of every turn and at drain; a
                              restarted weft resumes them until the resume TTL runs out
  --prefix-cache-entries N    finished HTTP requests kept for KV reuse by a follow-up whose prompt
                              extends one (default 64; 0 disables)
  --prefix-cache-tokens N     most tokens of KV those entries hold together (default 65536)
  what clients may send, and what the server holds for them:
  --max-frame-bytes SIZE      largest client frame (default 1MiB)
  --max-body-bytes SIZE       largest HTTP request body; over it: 413 (default 4MiB)
  --max-frames-per-second N   per connection (default 100)
  --max-bytes-per-second SIZE per connection (default 1MiB)
  --max-bytes-per-second-per-client SIZE
                              all connections of one client address together (default 4MiB)
  --max-buffered-bytes SIZE   unread answers after which a client that keeps sending is disconnected
                              (default 16MiB)
  --backpressure-bytes SIZE   a session with more than this unsent on its socket is skipped by the
                              scheduler until it drains (default 256KiB)
  --heartbeat SECONDS         between server pings; a connection silent past the next one is closed
                              (default 30; 0 disables)
  shutting down (SIGTERM):
  --drain-timeout SECONDS     how long running answers may finish (default 10)
  --drain-target URL          another instance's ws:// or wss:// URL that draining clients are told to
                              resume on (in session.draining)

Exposure: weft serve listens on 127.0.0.1 by default, reachable from this machine only. Without
--api-keys it is open: anyone who can reach the port can use the model (and read nothing but
their own sessions); it says so at start. Without --tls-cert and --tls-key traffic is in clear
text. On any other --host (0.0.0.0, a LAN address) give it --api-keys and TLS, or put it behind a
reverse proxy that terminates TLS and authenticates (NGINX, a VPN); weft warns at start about
each one that is missing when --host is not a loopback address.
`;

const num = (f: Flags, k: string) => f[k] as number | undefined;

function quantizeFlag(v: unknown): EngineQuantize | undefined {
  if (v === undefined) return undefined;
  if (!ENGINE_QUANTIZE.includes(v as EngineQuantize)) throw new WeftError('WEFT_BAD_ARGUMENT', `--quantize must be one of ${ENGINE_QUANTIZE.join(', ')} (got ${String(v)})`);
  return v as EngineQuantize;
}

function backendFlag(v: unknown): BackendName | undefined {
  if (v === undefined) return undefined;
  if (v !== 'cpu' && v !== 'cuda') throw new WeftError('WEFT_BAD_ARGUMENT', `--backend must be cpu or cuda (got ${String(v)})`);
  return v;
}

async function cmdGenerate(argv: string[]): Promise<void> {
  const f = parseFlags(argv, {
    model: 'string', prompt: 'string', 'prompt-ids': 'list', 'max-tokens': 'number', temperature: 'number', 'top-p': 'number',
    'top-k': 'number', 'min-p': 'number', seed: 'number', 'repetition-penalty': 'number', 'presence-penalty': 'number',
    'frequency-penalty': 'number', logprobs: 'number', threads: 'number', json: 'boolean', backend: 'string', quantize: 'string',
  });
  if ((f.prompt === undefined) === (f['prompt-ids'] === undefined)) throw new WeftError('WEFT_BAD_ARGUMENT', 'give exactly one of --prompt TEXT or --prompt-ids 1,2,3');
  const engine = await Engine.load((f.model as string | undefined) ?? defaultModel(), {
    backend: backendFlag(f.backend), threads: num(f, 'threads'), maxBatchSequences: 1, maxLogitRows: 1,
    quantize: quantizeFlag(f.quantize), log: (l) => process.stderr.write(l + '\n'),
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
  const f = parseFlags(argv, { model: 'string', sequences: 'list', 'prompt-tokens': 'number', 'gen-tokens': 'number', threads: 'number', json: 'boolean', backend: 'string', quantize: 'string' });
  const backend = backendFlag(f.backend);
  const sequences = (f.sequences as number[] | undefined) ?? [1, 4, 16, 64];
  const promptTokens = num(f, 'prompt-tokens') ?? 128;
  const genTokens = num(f, 'gen-tokens') ?? 32;
  if (sequences.some((n) => n < 1) || promptTokens < 1 || genTokens < 1) throw new WeftError('WEFT_BAD_ARGUMENT', 'sequences, prompt and gen tokens must be positive');
  const maxSeq = Math.max(...sequences);
  const dir = (f.model as string | undefined) ?? defaultModel();
  const config = await loadAnyModelConfig(dir);
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
    quantize: quantizeFlag(f.quantize),
    log: (l) => process.stderr.write(l + '\n'),
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

/** The server's sampling defaults, checked against the engine's ranges once it is loaded. */
function checkSampling(engine: Engine, sampling: SamplingOptions | undefined): void {
  if (!sampling) return;
  try {
    engine.createSequence(sampling).free();
  } catch (err) {
    throw new WeftError('WEFT_BAD_ARGUMENT', `--sampling: ${(err as Error).message}`);
  }
}

async function cmdServe(argv: string[]): Promise<void> {
  if (argv.includes('--help') || argv.includes('-h')) {
    process.stdout.write(HELP);
    return;
  }
  const { model, engine: engineOptions, gateway: options } = await readServeOptions(argv);
  const gw = new Gateway(options);
  const listening = await gw.listen();
  const host = listening.host;
  // TLS: https:// and wss:// (whatever scheme the gateway reports)
  const url = options.tls ? listening.url.replace(/^http:/, 'https:') : listening.url;
  process.stdout.write(`weft listening on ${url} (WebSocket ${url.replace(/^http/, 'ws')}/v1/ws); loading ${model}\n`);
  if (!options.apiKeys) process.stdout.write('weft open: no API keys (anyone who can reach this port can use it; --api-keys FILE requires them)\n');
  if (!isLoopback(host)) {
    const where = `listening on ${host}, not a loopback address,`;
    if (!options.apiKeys) process.stderr.write(`weft: warning: ${where} without --api-keys: anyone who can reach this port can use the model (weft serve --help, "Exposure")\n`);
    if (!options.tls) process.stderr.write(`weft: warning: ${where} without TLS: prompts, answers and keys cross the network in clear text (--tls-cert, --tls-key; weft serve --help, "Exposure")\n`);
  }
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
    engine = await Engine.load(model, { ...engineOptions, log: (l) => process.stdout.write(l + '\n') });
    checkSampling(engine, options.sessionSampling);
  } catch (err) {
    engine?.dispose();
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
  if (cmd === 'build') return buildCommand(rest);
  if (cmd === 'nginx-conf') return void process.stdout.write(nginxConfCommand(rest));
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

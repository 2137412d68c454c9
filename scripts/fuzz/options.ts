/** The fuzzer's settings, and those of the server it starts. */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface FuzzOptions {
  seed: number;
  /** WebSocket frames per transport. */
  frames: number;
  /** HTTP requests per transport. */
  http: number;
  /** Requests to the OpenAI-compatible routes per transport (openai-run.ts). */
  openai: number;
  transports: ('ws' | 'uws')[];
  /** WebSocket connections per transport. */
  connections: number;
  /** HTTP sockets at once. */
  httpConcurrency: number;
  /** OpenAI requests at once (keep-alive connections). */
  openaiConcurrency: number;
  /** How long a frame may wait for its answer. */
  answerTimeoutMs: number;
  /** How long a response may take from response.created to response.done. */
  responseTimeoutMs: number;
  /** How long an HTTP request may wait for its status line. */
  httpTimeoutMs: number;
  /** How long /healthz may take. */
  healthTimeoutMs: number;
  /** The server's start (to `weft ready`). */
  startTimeoutMs: number;
  /**
   * Per transport: stop sending new frames once 70% of this has passed since the transport's
   * server started, and new HTTP requests once all of it has; 0: no deadline.
   */
  deadlineMs: number;
  /** Restarts of a dead server per transport before the transport is given up. */
  maxRestarts: number;
  /** Path of the CLI (default: dist/src/cli/main.js of this repository). */
  cli: string;
  /** More environment for the server (WEFT_*). */
  env: Record<string, string>;
  /** Failures kept per signature (all are counted). */
  maxPerSignature: number;
  /** Progress lines (default: none). */
  log: (line: string) => void;
  /**
   * An HTTP request that gets neither a status line nor a close in time is a note, not a failure.
   * Without it this holds over uws for the requests its parser rejects (what is not plainRequest):
   * uWebSockets.js leaves them unanswered and closes them at its idle timeout (docs/protocol.md).
   */
  silentHttpOk: boolean;
}

export function repoRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let i = 0; i < 6; i++) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    dir = dirname(dir);
  }
  return process.cwd();
}

export const DEFAULTS: FuzzOptions = {
  seed: 1,
  frames: 3000,
  http: 300,
  openai: 600,
  transports: ['ws', 'uws'],
  connections: 8,
  httpConcurrency: 16,
  openaiConcurrency: 6,
  answerTimeoutMs: 10_000,
  responseTimeoutMs: 60_000,
  httpTimeoutMs: 5_000,
  healthTimeoutMs: 10_000,
  startTimeoutMs: 60_000,
  deadlineMs: 0,
  maxRestarts: 6,
  cli: '',
  env: {},
  maxPerSignature: 5,
  log: () => undefined,
  silentHttpOk: false,
};

/** Settings of the fuzzed server: rate limits out of the way, short answers, short resume TTL, a small body limit (cheap bodies past it). */
export const SERVER_ENV: Record<string, string> = {
  WEFT_MAX_FRAMES_PER_SECOND: '1000000',
  WEFT_MAX_BYTES_PER_SECOND: '1000000000',
  WEFT_MAX_BYTES_PER_SECOND_PER_CLIENT: '1000000000',
  WEFT_MAX_TOKENS: '16',
  WEFT_MAX_BODY_BYTES: '262144',
  WEFT_RESUME_TTL: '5',
  WEFT_CONTEXTS: '2',
  WEFT_THREADS: '1',
};

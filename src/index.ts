/**
 * `weft`: the server side as a library — the engine, the scheduler, sessions, the gateway and
 * `serve`, the error catalog and the protocol's types. (`weft/client` is the SDK.)
 */
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Engine, type EngineOptions } from './engine/engine.js';
import { Gateway, type GatewayOptions } from './gateway/server.js';

export { Engine, Sequence, defaultBackend } from './engine/engine.js';
export type { BackendName, EngineOptions, SamplingOptions, StepEntry, StepResult } from './engine/engine.js';
export { Scheduler, ScheduledRequest } from './scheduler/scheduler.js';
export type { SchedulerOptions, SubmitOptions, RequestEvent, FinishReason } from './scheduler/scheduler.js';
export { Session, SessionState, Turn } from './session/session.js';
export type { SessionOptions, TurnOptions, TurnDone, TurnEvent } from './session/session.js';
export { ChatFormat, type ChatMessage } from './session/chat-format.js';
export { Gateway, type GatewayOptions } from './gateway/server.js';
export { ERRORS, WeftError, isWeftErrorCode, toWeftError, type WeftErrorCode } from './errors.js';
export { Tokenizer } from './tokenizer/tokenizer.js';
export type * from './client/protocol.js';

/** The embedded default model (models/default of the package). */
export function defaultModelDir(): string {
  const dir = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'models', 'default');
  if (!existsSync(join(dir, 'config.json'))) throw new Error(`the embedded default model is missing (${dir})`);
  return dir;
}

export interface ServeOptions extends GatewayOptions {
  /** A model directory; default the embedded default model. */
  model?: string;
  engine?: EngineOptions;
}

/** Loads a model and serves it: protocol v1 at `${url}/v1/ws` (ws: URL), /healthz, /readyz, /metrics. */
export async function serve(opts: ServeOptions = {}): Promise<{ url: string; wsUrl: string; gateway: Gateway; engine: Engine; close(): Promise<void> }> {
  const engine = await Engine.load(opts.model ?? defaultModelDir(), opts.engine);
  const gateway = new Gateway(opts);
  try {
    gateway.attach(engine);
    await gateway.loadState();
    const { url } = await gateway.listen();
    return {
      url,
      wsUrl: url.replace(/^http/, 'ws') + '/v1/ws',
      gateway,
      engine,
      async close() {
        await gateway.close();
        engine.dispose();
      },
    };
  } catch (err) {
    await gateway.close();
    engine.dispose();
    throw err;
  }
}

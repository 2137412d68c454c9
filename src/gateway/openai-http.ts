/**
 * The OpenAI-compatible HTTP front (docs/openai.md), on the port and scheduler the WebSocket
 * fronts use: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` and
 * `POST /v1/completions`, whole or streamed as server-sent events.
 *
 * This file routes, authenticates and checks a request, then hands it to an OpenAIJob
 * (src/gateway/openai-job.ts), which runs it on the scheduler, interleaved step by step with every
 * session's, and answers it. The response shapes are in openai-shapes.ts, the whole replies
 * (errors, CORS) in openai-reply.ts, and KV reuse for stateless clients (a request extending an
 * earlier one's prompt + answer starts from its KV) in openai-kv-reuse.ts.
 */
import { WeftError } from '../errors.js';
import { PrefixCache } from '../session/prefix-cache.js';
import { presentedKey, type Tenant } from './api-keys.js';
import type { HttpExchange } from './http-exchange.js';
import { OpenAIJob, type JobFront } from './openai-job.js';
import { replyError, replyJson, replyPreflight } from './openai-reply.js';
import { chatParams, parseBody, ParamError, textParams } from './openai-schema.js';
import type { Kind } from './openai-shapes.js';
import type { Gateway } from './server.js';

export class OpenAIHttp {
  private readonly jobs = new Set<OpenAIJob>();
  private cache: PrefixCache | null = null;
  /** How long a stream may wait for a client that does not read before it is cancelled (ms). */
  readonly stallTimeoutMs: number;
  /** What this front's jobs use of it. */
  private readonly front: JobFront;

  constructor(private readonly gw: Gateway) {
    this.stallTimeoutMs = gw.heartbeatMs > 0 ? gw.heartbeatMs : 30_000;
    this.front = { gw, stallTimeoutMs: this.stallTimeoutMs, prefixCache: () => this.prefixCacheFor(), ended: (job) => this.jobs.delete(job) };
  }

  /** Requests being answered (a drain waits for them). */
  get busy(): boolean {
    return this.jobs.size > 0;
  }

  /** The prefix cache's counters (metrics, tests); null before the model is loaded or with the cache off. */
  get prefixCache(): PrefixCache | null {
    return this.prefixCacheFor();
  }

  private prefixCacheFor(): PrefixCache | null {
    const entries = this.gw.options.prefixCacheEntries ?? 64;
    if (!this.cache && this.gw.scheduler && entries > 0) {
      this.cache = new PrefixCache(this.gw.scheduler, { maxEntries: entries, maxTokens: this.gw.options.prefixCacheTokens ?? 65536 });
    }
    return this.cache;
  }

  /** The drain's time is up: running requests end now. */
  cancelForShutdown(): void {
    for (const j of this.jobs) j.cancelForShutdown();
  }

  /** Frees the cached sequences (the gateway closes). */
  close(): void {
    this.cache?.clear();
  }

  /** A request under /v1/ (other than the WebSocket paths). Never throws. */
  handle(ex: HttpExchange): void {
    let tenant: Tenant | null = null;
    let release: (() => void) | null = null;
    const fail = (err: unknown) => {
      release?.();
      replyError(this.gw, ex, err);
    };
    try {
      // a browser's CORS preflight (from an origin --allowed-origins lists): no key, no body
      if (ex.method === 'OPTIONS' && ex.header('access-control-request-method')) return replyPreflight(this.gw, ex);
      // the key first: without one, even which routes exist is not told
      if (this.gw.keys) {
        tenant = this.gw.keys.authenticate(presentedKey(ex.header('authorization')));
        if (!tenant) throw new WeftError('WEFT_UNAUTHORIZED', 'a valid API key is required: Authorization: Bearer KEY');
      }
      const route = this.route(ex);
      if (route === 'models') return this.models(ex, null);
      if (typeof route === 'object') return this.models(ex, route.model);
      if (!this.gw.scheduler || !this.gw.format || !this.gw.engine) throw new WeftError('WEFT_NOT_READY', 'the model is still loading; retry when GET /readyz is 200');
      if (this.gw.draining) throw new WeftError('WEFT_DRAINING', 'the server is shutting down; retry on another instance');
      if (tenant) release = tenant.acquire();
      const kind = route;
      ex.body(this.gw.maxBodyBytes).then(
        (raw) => {
          try {
            const body = parseBody(raw, ex.header('content-type'));
            const params = kind === 'chat' ? chatParams(body) : textParams(body, this.gw.engine!.config.vocabSize);
            if (params.model !== this.gw.modelName) throw new ParamError('WEFT_MODEL_NOT_FOUND', `the model ${JSON.stringify(params.model)} does not exist (this server has ${JSON.stringify(this.gw.modelName)}: GET /v1/models)`, 'model');
            const job = new OpenAIJob(this.front, ex, kind, params, tenant, release);
            this.jobs.add(job);
            job.start().catch((err: unknown) => job.fail(err));
          } catch (err) {
            fail(err);
          }
        },
        fail,
      );
    } catch (err) {
      fail(err);
    }
  }

  private route(ex: HttpExchange): 'models' | { model: string } | Kind {
    const p = ex.path.replace(/\/+$/, '');
    const allow = (method: string) => {
      if (ex.method !== method && !(method === 'GET' && ex.method === 'HEAD')) {
        throw Object.assign(new WeftError('WEFT_METHOD_NOT_ALLOWED', `${ex.method} ${p} is not allowed (use ${method})`), { allow: method === 'GET' ? 'GET, HEAD' : method });
      }
    };
    if (p === '/v1/models') return allow('GET'), 'models';
    if (p.startsWith('/v1/models/')) return allow('GET'), { model: decodeURIComponentSafe(p.slice('/v1/models/'.length)) };
    if (p === '/v1/chat/completions') return allow('POST'), 'chat';
    if (p === '/v1/completions') return allow('POST'), 'text';
    throw new WeftError('WEFT_NOT_FOUND', `no route ${ex.method} ${p.slice(0, 200)} (weft serves /v1/models, /v1/chat/completions, /v1/completions, /v1/realtime and /v1/ws)`);
  }

  private models(ex: HttpExchange, id: string | null): void {
    const model = { id: this.gw.modelName, object: 'model', created: Math.floor(this.gw.startedAt / 1000), owned_by: 'weft' };
    if (id === null) return replyJson(this.gw, ex, 200, { object: 'list', data: this.gw.modelName ? [model] : [] });
    if (id !== this.gw.modelName) throw new ParamError('WEFT_MODEL_NOT_FOUND', `the model ${JSON.stringify(id.slice(0, 200))} does not exist`, 'model');
    replyJson(this.gw, ex, 200, model);
  }
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

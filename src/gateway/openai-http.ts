/**
 * The OpenAI-compatible HTTP front (docs/openai.md), on the port and scheduler the WebSocket
 * fronts use: `GET /v1/models`, `GET /v1/models/{id}`, `POST /v1/chat/completions` and
 * `POST /v1/completions`, whole or streamed as server-sent events.
 *
 * Each request runs on the scheduler, interleaved step by step with every session's. A client
 * that disconnects (or aborts) cancels its request: the scheduler stops it within one step. A
 * stream whose client does not read is paused (the scheduler skips it while its bytes wait) and,
 * past the stall timeout, cancelled and closed.
 *
 * KV reuse for stateless clients: a request's sequence is taken from the prefix cache
 * (src/session/prefix-cache.ts) when an earlier request's prompt + answer is a prefix of its
 * prompt, and handed back to it at the end; `usage.prompt_tokens_details.cached_tokens` says how
 * many prompt tokens were not computed again. The answer is the same as a cold run's.
 */
import { randomBytes } from 'node:crypto';
import { WeftError, toWeftError, type WeftErrorCode } from '../errors.js';
import type { SamplingOptions, Sequence } from '../engine/engine.js';
import type { DoneEvent, ScheduledRequest, TokenEvent } from '../scheduler/scheduler.js';
import { PrefixCache } from '../session/prefix-cache.js';
import { presentedKey, type Tenant } from './api-keys.js';
import type { HttpExchange } from './http-exchange.js';
import { chatParams, parseBody, ParamError, textParams, type CompletionParams } from './openai-schema.js';
import type { Gateway } from './server.js';

/** OpenAI's error `type` for an HTTP status. */
function errorType(status: number): string {
  if (status === 401) return 'authentication_error';
  if (status === 403) return 'permission_error';
  if (status === 429) return 'rate_limit_error';
  if (status >= 500) return 'server_error';
  return 'invalid_request_error';
}

/** OpenAI's error body for a weft error (weft's code in `code`). */
export function openaiError(e: WeftError, param: string | null = null): { error: { message: string; type: string; param: string | null; code: WeftErrorCode } } {
  return { error: { message: e.message, type: errorType(e.status), param, code: e.code } };
}

const JSON_TYPE = { 'content-type': 'application/json' };
const SSE_HEADERS = { 'content-type': 'text/event-stream; charset=utf-8', 'cache-control': 'no-cache', 'x-accel-buffering': 'no' };

type Kind = 'chat' | 'text';

/** One request being answered. */
interface Job {
  ex: HttpExchange;
  kind: Kind;
  id: string;
  created: number;
  params: CompletionParams;
  request: ScheduledRequest | null;
  tenant: Tenant | null;
  text: string;
  /** Chat logprobs entries, or the completions API's columns. */
  logprobs: { token: string; logprob: number; bytes: number[]; top_logprobs: { token: string; logprob: number; bytes: number[] }[] }[];
  /** Ended by a drain. */
  shutdown: boolean;
  /** Ended because the key's budget ran out. */
  budgetSpent: boolean;
  stallTimer: NodeJS.Timeout | null;
  corked: boolean;
  /** Gives back the key's concurrency lease. */
  release: (() => void) | null;
}

export class OpenAIHttp {
  private readonly jobs = new Set<Job>();
  private cache: PrefixCache | null = null;
  /** How long a stream may wait for a client that does not read before it is cancelled (ms). */
  readonly stallTimeoutMs: number;

  constructor(private readonly gw: Gateway) {
    this.stallTimeoutMs = gw.heartbeatMs > 0 ? gw.heartbeatMs : 30_000;
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
    if (!this.cache && this.gw.scheduler && entries > 0) this.cache = new PrefixCache(this.gw.scheduler, { maxEntries: entries });
    return this.cache;
  }

  /** The drain's time is up: running requests end now. */
  cancelForShutdown(): void {
    for (const j of this.jobs) {
      j.shutdown = true;
      j.request?.cancel();
    }
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
      this.fail(ex, err);
    };
    try {
      // a browser's CORS preflight (from an origin --allowed-origins lists): no key, no body
      if (ex.method === 'OPTIONS' && ex.header('access-control-request-method')) return this.preflight(ex);
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
            const job: Job = {
              ex, kind, params, tenant,
              id: `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('base64url')}`,
              created: Math.floor(Date.now() / 1000),
              request: null, text: '', logprobs: [], shutdown: false, budgetSpent: false, stallTimer: null, corked: false, release,
            };
            this.jobs.add(job);
            this.start(job, body).catch((err: unknown) => this.failJob(job, err));
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
    if (id === null) return this.json(ex, 200, { object: 'list', data: this.gw.modelName ? [model] : [] });
    if (id !== this.gw.modelName) throw new ParamError('WEFT_MODEL_NOT_FOUND', `the model ${JSON.stringify(id.slice(0, 200))} does not exist`, 'model');
    this.json(ex, 200, model);
  }

  private json(ex: HttpExchange, status: number, body: unknown, headers: Record<string, string> = {}): void {
    this.gw.metrics.httpRequests.inc({ status: String(status) });
    ex.respond(status, { ...headers, ...this.cors(ex), ...JSON_TYPE }, JSON.stringify(body));
  }

  /**
   * CORS for browsers calling the API from another origin: only origins the gateway allows
   * (--allowed-origins; `*`: any). The server's own origin needs none.
   */
  private cors(ex: HttpExchange): Record<string, string> {
    const origin = ex.header('origin');
    if (!origin || !this.gw.origins.allows(origin)) return {};
    return { 'access-control-allow-origin': origin, vary: 'Origin', 'access-control-expose-headers': 'retry-after, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens' };
  }

  private preflight(ex: HttpExchange): void {
    const cors = this.cors(ex);
    if (!cors['access-control-allow-origin']) return this.fail(ex, new WeftError('WEFT_ORIGIN_REFUSED', 'this origin may not call the API here (weft serve --allowed-origins)'));
    const headers = ex.header('access-control-request-headers');
    this.gw.metrics.httpRequests.inc({ status: '204' });
    ex.respond(204, {
      ...cors,
      'access-control-allow-methods': 'GET, POST, OPTIONS',
      // the openai SDK sends its x-stainless-* headers besides authorization and content-type
      'access-control-allow-headers': headers && /^[\w\-, ]{1,2000}$/.test(headers) ? headers : 'authorization, content-type',
      'access-control-max-age': '600',
    }, '');
  }

  /** An error before a response started: OpenAI's error body with the status of its code. */
  private fail(ex: HttpExchange, err: unknown): void {
    const e = toWeftError(err);
    this.gw.metrics.errors.inc({ code: e.code });
    const headers: Record<string, string> = {};
    const wait = (err as { retryAfterMs?: number })?.retryAfterMs;
    if (e.status === 429 || e.status === 503) headers['retry-after'] = String(Math.max(1, Math.ceil((wait ?? 1000) / 1000)));
    if (e.status === 401) headers['www-authenticate'] = 'Bearer';
    const allowed = (err as { allow?: string })?.allow;
    if (allowed) headers.allow = allowed;
    if (e.code === 'WEFT_KEY_BUDGET' && this.tenantOf(ex)) Object.assign(headers, this.budgetHeaders(this.tenantOf(ex)));
    this.json(ex, e.status, openaiError(e, err instanceof ParamError ? err.param : null), headers);
  }

  /** The tenant of a request's key (for the rate-limit headers of its refusal). */
  private tenantOf(ex: HttpExchange): Tenant | null {
    return this.gw.keys?.authenticate(presentedKey(ex.header('authorization'))) ?? null;
  }

  /** Tokenizes, budgets and submits a checked request; its events are answered by `listen`. */
  private async start(job: Job, body: Record<string, unknown>): Promise<void> {
    const gw = this.gw;
    const scheduler = gw.scheduler!;
    const format = gw.format!;
    const tok = format.tokenizer;
    const p = job.params;
    const maxContext = scheduler.engine.stats().maxContext;
    const abort = new AbortController();
    job.ex.onAbort(() => {
      abort.abort();
      job.request?.cancel();
    });
    let prompt: number[];
    let stops = p.stop;
    if (job.kind === 'chat') {
      const text = format.render((p as ReturnType<typeof chatParams>).messages, true);
      if (tok.minTokens(text) >= maxContext) throw new ParamError('WEFT_CONTEXT_OVERFLOW', `the messages do not fit the context of ${maxContext} tokens`, 'messages');
      prompt = await tok.encodeAsync(text, { addSpecialTokens: false, signal: abort.signal });
      // ignore_eos (an extension) also lets the answer run past the template's end-of-turn text
      stops = p.sampling.ignoreEos ? p.stop : [...format.stopStrings, ...p.stop];
    } else {
      const pr = (p as ReturnType<typeof textParams>).prompt;
      if (typeof pr === 'string' && tok.minTokens(pr) >= maxContext) throw new ParamError('WEFT_CONTEXT_OVERFLOW', `the prompt does not fit the context of ${maxContext} tokens`, 'prompt');
      prompt = typeof pr === 'string' ? await tok.encodeAsync(pr, { signal: abort.signal }) : pr;
    }
    if (job.ex.aborted) return this.endJob(job);
    if (prompt.length === 0) throw new ParamError('WEFT_BAD_ARGUMENT', 'the prompt encodes to no tokens', job.kind === 'chat' ? 'messages' : 'prompt');
    if (prompt.length >= maxContext) throw new ParamError('WEFT_CONTEXT_OVERFLOW', `the prompt (${prompt.length} tokens) does not fit the context of ${maxContext} tokens`, job.kind === 'chat' ? 'messages' : 'prompt');
    let maxTokens = Math.min(p.maxTokens ?? gw.defaultMaxTokens, maxContext - prompt.length);
    if (job.tenant) maxTokens = job.tenant.capMaxTokens(maxTokens);
    const sampling: SamplingOptions = { ...gw.options.sessionSampling, ...p.sampling };
    if (p.logprobs) sampling.logprobs = Math.max(1, p.topLogprobs);
    else delete sampling.logprobs;
    void body;

    // the KV of an earlier request whose tokens this prompt extends
    const cache = this.prefixCacheFor();
    const owner = job.tenant?.name ?? '';
    const hit = cache?.take(prompt, owner) ?? null;
    const cached = hit?.cached ?? 0;
    try {
      job.tenant?.checkBudget(prompt.length - cached);
    } catch (err) {
      if (hit) cache!.put(hit.sequence, prompt.slice(0, cached), owner);
      throw err;
    }
    let seq: Sequence | null = hit?.sequence ?? (cache ? scheduler.engine.createSequence(sampling) : null);
    const free = (s: Sequence) => {
      scheduler.forget(s);
      try {
        s.free();
      } catch {
        /* already gone */
      }
    };
    const giveBack = (fed: number[] | null) => {
      if (!seq) return;
      const s = seq;
      seq = null;
      if (!fed || !cache) return free(s);
      const kv = [...prompt.slice(0, cached), ...fed];
      // a follow-up sends the answer back as text, whose tokens need not be the ones generated: the
      // entry keeps what a follow-up's prompt will begin with (the conversation rendered with the
      // answer), so that the follow-up extends it instead of missing it
      void this.followUpTokens(job).then(
        (next) => {
          let n = 0;
          if (next) while (n < kv.length && n < next.length && kv[n] === next[n]) n++;
          else n = kv.length;
          if (n === 0) return free(s);
          try {
            if (n < kv.length) s.truncate(n);
            cache.put(s, kv.slice(0, n), owner);
          } catch {
            free(s);
          }
        },
        () => cache.put(s, kv, owner),
      );
    };
    let request: ScheduledRequest;
    try {
      request = scheduler.submit({
        tokens: prompt.slice(cached),
        ...(seq ? { sequence: seq } : {}),
        sampling,
        maxTokens,
        decoder: tok.createDecoder(),
        stopStrings: stops,
        isBlocked: () => !job.ex.writable,
        signal: abort.signal,
        ...(job.tenant ? { tenant: job.tenant.name, weight: job.tenant.limits.weight } : {}),
      });
    } catch (err) {
      giveBack(null);
      throw err;
    }
    job.request = request;
    job.tenant?.charge(prompt.length - cached);
    if (p.stream) {
      job.ex.startStream(200, { ...SSE_HEADERS, ...this.budgetHeaders(job.tenant), ...this.cors(job.ex) });
      gw.metrics.httpRequests.inc({ status: '200' });
      if (job.kind === 'chat') this.sse(job, this.chunk(job, { role: 'assistant', content: '' }, null));
    }
    request.listen((ev) => {
      if (ev.type === 'token') return this.onToken(job, ev);
      this.onDone(job, ev, prompt.length); // first: the answer's whole text is known then
      giveBack(ev.finishReason === 'error' ? null : request.fed);
    });
  }

  private onToken(job: Job, ev: TokenEvent): void {
    this.gw.metrics.generatedTokens.inc();
    if (job.tenant && !job.tenant.charge(1) && !job.budgetSpent) {
      job.budgetSpent = true;
      job.request?.cancel();
    }
    const text = ev.text ?? '';
    if (job.params.logprobs && ev.logprob !== undefined) this.addLogprob(job, ev);
    job.text += text;
    if (!job.params.stream) return;
    if (text === '' && !(job.params.logprobs && ev.logprob !== undefined)) return;
    const lp = job.params.logprobs ? this.logprobsOf(job, job.logprobs.slice(-1), job.text.length - text.length) : null;
    this.sse(job, job.kind === 'chat' ? this.chunk(job, { content: text }, null, lp) : this.textChunk(job, text, null, lp));
  }

  private onDone(job: Job, ev: DoneEvent, promptTokens: number): void {
    const tail = ev.text ?? '';
    job.text += tail;
    const usage = {
      prompt_tokens: promptTokens,
      completion_tokens: ev.usage.completionTokens,
      total_tokens: promptTokens + ev.usage.completionTokens,
      prompt_tokens_details: { cached_tokens: ev.usage.cachedTokens },
    };
    this.gw.metrics.promptTokens.inc(promptTokens);
    this.gw.metrics.cachedTokens.inc(ev.usage.cachedTokens);
    if (ev.timing.ttftMs > 0) this.gw.metrics.ttft.observe(ev.timing.ttftMs / 1000);
    let error: WeftError | null = null;
    if (ev.finishReason === 'error') error = new WeftError(ev.error?.code ?? 'WEFT_INTERNAL', ev.error?.message ?? 'the request failed');
    else if (ev.finishReason === 'cancelled' && job.shutdown) error = new WeftError('WEFT_DRAINING', 'the server shut down before the answer was complete');
    else if (ev.finishReason === 'cancelled' && !job.budgetSpent) return this.endJob(job); // the client went away
    const finish = ev.finishReason === 'stop' ? 'stop' : 'length'; // a spent budget ends the answer like max_tokens
    if (!job.params.stream) {
      if (error) return this.failJob(job, error);
      const lp = job.params.logprobs ? this.logprobsOf(job, job.logprobs, 0) : null;
      const choice =
        job.kind === 'chat'
          ? { index: 0, message: { role: 'assistant', content: job.text, refusal: null }, logprobs: lp, finish_reason: finish }
          : { index: 0, text: job.text, logprobs: lp, finish_reason: finish };
      this.json(job.ex, 200, { id: job.id, object: job.kind === 'chat' ? 'chat.completion' : 'text_completion', created: job.created, model: this.gw.modelName, system_fingerprint: this.fingerprint(), choices: [choice], usage }, this.budgetHeaders(job.tenant));
      return this.endJob(job);
    }
    if (error) {
      this.gw.metrics.errors.inc({ code: error.code });
      this.sse(job, openaiError(error));
    } else {
      if (tail !== '' && job.kind === 'chat') this.sse(job, this.chunk(job, { content: tail }, null));
      if (tail !== '' && job.kind === 'text') this.sse(job, this.textChunk(job, tail, null, null));
      this.sse(job, job.kind === 'chat' ? this.chunk(job, {}, finish) : this.textChunk(job, '', finish, null));
      if (job.params.includeUsage) this.sse(job, { id: job.id, object: job.kind === 'chat' ? 'chat.completion.chunk' : 'text_completion', created: job.created, model: this.gw.modelName, system_fingerprint: this.fingerprint(), choices: [], usage });
    }
    this.writeSse(job, 'data: [DONE]\n\n');
    job.ex.end();
    this.endJob(job);
  }

  /** The tokens a follow-up's prompt begins with: the conversation (or prompt) with this answer as the client will send it back. */
  private async followUpTokens(job: Job): Promise<number[] | null> {
    const format = this.gw.format;
    if (!format) return null;
    const tok = format.tokenizer;
    if (job.kind === 'chat') {
      const messages = [...(job.params as ReturnType<typeof chatParams>).messages, { role: 'assistant' as const, content: job.text }];
      return tok.encodeAsync(format.render(messages, false), { addSpecialTokens: false });
    }
    const pr = (job.params as ReturnType<typeof textParams>).prompt;
    return typeof pr === 'string' ? tok.encodeAsync(pr + job.text) : null;
  }

  /** OpenAI's rate-limit headers for a key with a tokens-per-minute budget. */
  private budgetHeaders(tenant: Tenant | null): Record<string, string> {
    const tpm = tenant?.limits.tokensPerMinute;
    if (!tenant || tpm === null || tpm === undefined) return {};
    return {
      'x-ratelimit-limit-tokens': String(tpm),
      'x-ratelimit-remaining-tokens': String(tenant.remaining()),
      'x-ratelimit-reset-tokens': `${(tenant.retryAfterMs(tpm) / 1000).toFixed(3)}s`,
    };
  }

  private fingerprint(): string {
    return `weft_${this.gw.modelName}`;
  }

  private chunk(job: Job, delta: Record<string, unknown>, finish: string | null, logprobs: unknown = null): object {
    return {
      id: job.id, object: 'chat.completion.chunk', created: job.created, model: this.gw.modelName, system_fingerprint: this.fingerprint(),
      choices: [{ index: 0, delta, logprobs, finish_reason: finish }],
      ...(job.params.includeUsage ? { usage: null } : {}),
    };
  }

  private textChunk(job: Job, text: string, finish: string | null, logprobs: unknown): object {
    return {
      id: job.id, object: 'text_completion', created: job.created, model: this.gw.modelName, system_fingerprint: this.fingerprint(),
      choices: [{ index: 0, text, logprobs, finish_reason: finish }],
      ...(job.params.includeUsage ? { usage: null } : {}),
    };
  }

  private tokenText(id: number): { token: string; bytes: number[] } {
    const token = this.gw.format!.tokenizer.decode([id]);
    return { token, bytes: [...Buffer.from(token, 'utf8')] };
  }

  private addLogprob(job: Job, ev: TokenEvent): void {
    const top = job.params.topLogprobs > 0 ? (ev.top ?? []).slice(0, job.params.topLogprobs).map((t) => ({ ...this.tokenText(t.token), logprob: t.logprob })) : [];
    job.logprobs.push({ ...this.tokenText(ev.token), logprob: ev.logprob!, top_logprobs: top });
  }

  /** The logprobs object of a choice or chunk: chat's `content` list, or the completions API's columns. */
  private logprobsOf(job: Job, entries: Job['logprobs'], offset: number): unknown {
    if (job.kind === 'chat') return { content: entries, refusal: null };
    const offsets: number[] = [];
    let at = offset;
    for (const e of entries) {
      offsets.push(at);
      at += e.token.length;
    }
    return {
      tokens: entries.map((e) => e.token),
      token_logprobs: entries.map((e) => e.logprob),
      top_logprobs: entries.map((e) => Object.fromEntries(e.top_logprobs.map((t) => [t.token, t.logprob]))),
      text_offset: offsets,
    };
  }

  private sse(job: Job, obj: unknown): void {
    this.writeSse(job, `data: ${JSON.stringify(obj)}\n\n`);
  }

  /** Writes an SSE event, corked with the rest of the step's frames; a client that stops reading past the stall timeout is cut off. */
  private writeSse(job: Job, text: string): void {
    const ex = job.ex;
    if (ex.aborted) return;
    if (!job.corked && this.gw.scheduler?.delivering) {
      job.corked = true;
      ex.cork();
      this.gw.corked.push({
        uncork: () => {
          job.corked = false;
          ex.uncork();
        },
      });
    }
    if (!ex.write(text) && !job.stallTimer) {
      job.stallTimer = setTimeout(() => {
        job.stallTimer = null;
        if (ex.writable) return;
        this.gw.metrics.errors.inc({ code: 'WEFT_RATE_LIMITED' });
        job.request?.cancel();
        ex.destroy();
        this.endJob(job);
      }, this.stallTimeoutMs);
      job.stallTimer.unref();
      ex.onWritable(() => {
        if (job.stallTimer) clearTimeout(job.stallTimer);
        job.stallTimer = null;
        this.gw.scheduler?.wake();
      });
    }
  }

  /** An error after the request was taken: a 4xx/5xx body before a stream started, an error event in one. */
  private failJob(job: Job, err: unknown): void {
    if (job.request && job.request.state !== 'done') job.request.cancel();
    if (job.params.stream && job.request) {
      const e = toWeftError(err);
      this.gw.metrics.errors.inc({ code: e.code });
      this.sse(job, openaiError(e));
      this.writeSse(job, 'data: [DONE]\n\n');
      job.ex.end();
    } else {
      this.fail(job.ex, err);
    }
    this.endJob(job);
  }

  private endJob(job: Job): void {
    job.release?.();
    job.release = null;
    if (job.stallTimer) clearTimeout(job.stallTimer);
    job.stallTimer = null;
    this.jobs.delete(job);
  }
}

function decodeURIComponentSafe(s: string): string {
  try {
    return decodeURIComponent(s);
  } catch {
    return s;
  }
}

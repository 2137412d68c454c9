/**
 * One request the OpenAI front (src/gateway/openai-http.ts) took, answered: tokenized, budgeted
 * and submitted to the scheduler (on a prefix-cache sequence when one fits), then its events
 * written back as one JSON body or as server-sent events.
 *
 * A client that disconnects (or aborts) cancels its request: the scheduler stops it within one
 * step. A stream whose client does not read is paused (the scheduler skips it while its bytes
 * wait) and, past the stall timeout, cancelled and closed.
 */
import { randomBytes } from 'node:crypto';
import { WeftError, toWeftError } from '../errors.js';
import type { SamplingOptions } from '../engine/engine.js';
import type { DoneEvent, ScheduledRequest, TokenEvent } from '../scheduler/scheduler.js';
import type { PrefixCache } from '../session/prefix-cache.js';
import type { Tenant } from './api-keys.js';
import type { HttpExchange } from './http-exchange.js';
import { followUpTokens, KvReuse } from './openai-kv-reuse.js';
import { corsHeaders, replyError, replyJson } from './openai-reply.js';
import { ParamError, type ChatParams, type TextParams } from './openai-schema.js';
import {
  budgetHeaders, chatChunk, completion, finishChunk, logprobEntry, logprobsOf, openaiError, SSE_HEADERS, textDelta, usageChunk, usageOf,
  type AnswerMeta, type Kind, type LogprobEntry,
} from './openai-shapes.js';
import type { Gateway } from './server.js';

/** What a job needs from the front that took it. */
export interface JobFront {
  readonly gw: Gateway;
  /** How long a stream may wait for a client that does not read before it is cancelled (ms). */
  readonly stallTimeoutMs: number;
  /** The prefix cache (null before the model is loaded or with the cache off). */
  prefixCache(): PrefixCache | null;
  /** The job ended: a drain no longer waits for it. */
  ended(job: OpenAIJob): void;
}

export class OpenAIJob {
  readonly meta: AnswerMeta;
  private request: ScheduledRequest | null = null;
  /** The answer so far. */
  private text = '';
  /** Chat logprobs entries (the completions API's columns are built from them). */
  private readonly logprobs: LogprobEntry[] = [];
  /** Ended by a drain. */
  private shutdown = false;
  /** Ended because the key's budget ran out. */
  private budgetSpent = false;
  /** Cut off: the client stopped reading past the stall timeout. */
  private cutOff = false;
  private stallTimer: NodeJS.Timeout | null = null;
  private corked = false;

  constructor(
    private readonly front: JobFront,
    private readonly ex: HttpExchange,
    kind: Kind,
    private readonly params: ChatParams | TextParams,
    private readonly tenant: Tenant | null,
    /** Gives back the key's concurrency lease. */
    private release: (() => void) | null,
  ) {
    this.meta = {
      kind,
      id: `${kind === 'chat' ? 'chatcmpl' : 'cmpl'}-${randomBytes(12).toString('base64url')}`,
      created: Math.floor(Date.now() / 1000),
      model: front.gw.modelName,
      includeUsage: params.includeUsage,
    };
  }

  private get gw(): Gateway {
    return this.front.gw;
  }

  /** The drain's time is up: the request ends now. */
  cancelForShutdown(): void {
    this.shutdown = true;
    this.request?.cancel();
  }

  /** Tokenizes, budgets and submits the checked request; its events are answered as they come. */
  async start(): Promise<void> {
    const gw = this.gw;
    const scheduler = gw.scheduler!;
    const format = gw.format!;
    const tok = format.tokenizer;
    const p = this.params;
    const kind = this.meta.kind;
    const maxContext = scheduler.engine.stats().maxContext;
    const abort = new AbortController();
    this.ex.onAbort(() => {
      abort.abort();
      this.request?.cancel();
    });
    let prompt: number[];
    let stops = p.stop;
    if (kind === 'chat') {
      const text = format.render((p as ChatParams).messages, true);
      if (tok.minTokens(text) >= maxContext) throw new ParamError('WEFT_CONTEXT_OVERFLOW', `the messages do not fit the context of ${maxContext} tokens`, 'messages');
      prompt = await tok.encodeAsync(text, { addSpecialTokens: false, signal: abort.signal });
      // ignore_eos (an extension) also lets the answer run past the template's end-of-turn text
      stops = p.sampling.ignoreEos ? p.stop : [...format.stopStrings, ...p.stop];
    } else {
      const pr = (p as TextParams).prompt;
      if (typeof pr === 'string' && tok.minTokens(pr) >= maxContext) throw new ParamError('WEFT_CONTEXT_OVERFLOW', `the prompt does not fit the context of ${maxContext} tokens`, 'prompt');
      prompt = typeof pr === 'string' ? await tok.encodeAsync(pr, { signal: abort.signal }) : pr;
    }
    if (this.ex.aborted) return this.end();
    if (prompt.length === 0) throw new ParamError('WEFT_BAD_ARGUMENT', 'the prompt encodes to no tokens', kind === 'chat' ? 'messages' : 'prompt');
    if (prompt.length >= maxContext) throw new ParamError('WEFT_CONTEXT_OVERFLOW', `the prompt (${prompt.length} tokens) does not fit the context of ${maxContext} tokens`, kind === 'chat' ? 'messages' : 'prompt');
    let maxTokens = Math.min(p.maxTokens ?? gw.defaultMaxTokens, maxContext - prompt.length);
    if (this.tenant) maxTokens = this.tenant.capMaxTokens(maxTokens);
    const sampling: SamplingOptions = { ...gw.options.sessionSampling, ...p.sampling };
    if (p.logprobs) sampling.logprobs = Math.max(1, p.topLogprobs);
    else delete sampling.logprobs;

    // the KV of an earlier request whose tokens this prompt extends
    const kv = new KvReuse(scheduler, this.front.prefixCache(), prompt, this.tenant?.name ?? '');
    const cached = kv.cached;
    try {
      this.tenant?.checkBudget(prompt.length - cached);
    } catch (err) {
      kv.putBack();
      throw err;
    }
    const seq = kv.open(sampling);
    const followUp = () => followUpTokens(this.gw.format, kind, p, this.text);
    let request: ScheduledRequest;
    try {
      request = scheduler.submit({
        tokens: prompt.slice(cached),
        ...(seq ? { sequence: seq } : {}),
        sampling,
        maxTokens,
        decoder: tok.createDecoder(),
        stopStrings: stops,
        isBlocked: () => !this.ex.writable,
        signal: abort.signal,
        ...(this.tenant ? { tenant: this.tenant.name, weight: this.tenant.limits.weight } : {}),
      });
    } catch (err) {
      kv.giveBack(null, followUp);
      throw err;
    }
    this.request = request;
    this.tenant?.charge(prompt.length - cached);
    if (p.stream) {
      this.ex.startStream(200, { ...SSE_HEADERS, ...budgetHeaders(this.tenant), ...corsHeaders(gw, this.ex) });
      gw.metrics.httpRequests.inc({ status: '200' });
      if (kind === 'chat') this.sse(chatChunk(this.meta, { role: 'assistant', content: '' }, null));
    }
    request.listen((ev) => {
      if (ev.type === 'token') return this.onToken(ev);
      try {
        this.onDone(ev, prompt.length); // first: the answer's whole text is known then
      } finally {
        // whatever happened answering, the sequence goes back (or is freed) and the job ends
        kv.giveBack(ev.finishReason === 'error' ? null : request.fed, followUp);
        this.end();
      }
    });
  }

  private onToken(ev: TokenEvent): void {
    const p = this.params;
    this.gw.metrics.generatedTokens.inc();
    if (this.tenant && !this.tenant.charge(1) && !this.budgetSpent) {
      this.budgetSpent = true;
      this.request?.cancel();
    }
    const text = ev.text ?? '';
    if (p.logprobs && ev.logprob !== undefined) this.logprobs.push(logprobEntry(this.gw.format!.tokenizer, ev, p.topLogprobs));
    this.text += text;
    if (!p.stream) return;
    if (text === '' && !(p.logprobs && ev.logprob !== undefined)) return;
    const lp = p.logprobs ? logprobsOf(this.meta.kind, this.logprobs.slice(-1), this.text.length - text.length) : null;
    this.sse(textDelta(this.meta, text, lp));
  }

  private onDone(ev: DoneEvent, promptTokens: number): void {
    const tail = ev.text ?? '';
    this.text += tail;
    const usage = usageOf(promptTokens, ev);
    this.gw.metrics.promptTokens.inc(promptTokens);
    this.gw.metrics.cachedTokens.inc(ev.usage.cachedTokens);
    if (ev.timing.ttftMs > 0) this.gw.metrics.ttft.observe(ev.timing.ttftMs / 1000);
    let error: WeftError | null = null;
    if (ev.finishReason === 'error') error = new WeftError(ev.error?.code ?? 'WEFT_INTERNAL', ev.error?.message ?? 'the request failed');
    else if (ev.finishReason === 'cancelled' && this.shutdown) error = new WeftError('WEFT_DRAINING', 'the server shut down before the answer was complete');
    else if (ev.finishReason === 'cancelled' && !this.budgetSpent) {
      if (this.ex.aborted || this.cutOff) return this.end(); // the client went away, or stopped reading
      // cancelled by something else (the scheduler closing, a listener that failed): said, never a silent end
      error = new WeftError('WEFT_INTERNAL', 'the server cancelled the request before its answer was complete');
    }
    const finish = ev.finishReason === 'stop' ? 'stop' : 'length'; // a spent budget ends the answer like max_tokens
    if (!this.params.stream) {
      if (error) return this.fail(error);
      const lp = this.params.logprobs ? logprobsOf(this.meta.kind, this.logprobs, 0) : null;
      replyJson(this.gw, this.ex, 200, completion(this.meta, this.text, lp, finish, usage), budgetHeaders(this.tenant));
      return this.end();
    }
    if (error) {
      this.gw.metrics.errors.inc({ code: error.code });
      this.sse(openaiError(error));
    } else {
      if (tail !== '') this.sse(textDelta(this.meta, tail));
      this.sse(finishChunk(this.meta, finish));
      if (this.params.includeUsage) this.sse(usageChunk(this.meta, usage));
    }
    this.writeSse('data: [DONE]\n\n');
    this.ex.end();
    this.end();
  }

  private sse(obj: unknown): void {
    this.writeSse(`data: ${JSON.stringify(obj)}\n\n`);
  }

  /** Writes an SSE event, corked with the rest of the step's frames; a client that stops reading past the stall timeout is cut off. */
  private writeSse(text: string): void {
    const ex = this.ex;
    if (ex.aborted) return;
    if (!this.corked && this.gw.scheduler?.delivering) {
      this.corked = true;
      ex.cork();
      this.gw.corked.push({
        uncork: () => {
          this.corked = false;
          ex.uncork();
        },
      });
    }
    if (!ex.write(text) && !this.stallTimer) {
      this.stallTimer = setTimeout(() => {
        this.stallTimer = null;
        if (ex.writable) return;
        this.gw.metrics.errors.inc({ code: 'WEFT_RATE_LIMITED' });
        this.cutOff = true;
        this.request?.cancel();
        ex.destroy();
        this.end();
      }, this.front.stallTimeoutMs);
      this.stallTimer.unref();
      ex.onWritable(() => {
        if (this.stallTimer) clearTimeout(this.stallTimer);
        this.stallTimer = null;
        this.gw.scheduler?.wake();
      });
    }
  }

  /** An error after the request was taken: a 4xx/5xx body before a stream started, an error event in one. */
  fail(err: unknown): void {
    if (this.request && this.request.state !== 'done') this.request.cancel();
    if (this.params.stream && this.request) {
      const e = toWeftError(err);
      this.gw.metrics.errors.inc({ code: e.code });
      this.sse(openaiError(e));
      this.writeSse('data: [DONE]\n\n');
      this.ex.end();
    } else {
      replyError(this.gw, this.ex, err);
    }
    this.end();
  }

  private end(): void {
    this.release?.();
    this.release = null;
    if (this.stallTimer) clearTimeout(this.stallTimer);
    this.stallTimer = null;
    this.front.ended(this);
  }
}

/**
 * A lazily started worker thread that runs `@huggingface/tokenizers` encode for long texts, so a long
 * prompt never blocks the gateway's event loop. The worker builds its own copy of the tokenizer from
 * the same tokenizer.json (read from disk when the path is known, else structured-cloned once) and the
 * same library (its CommonJS build; the same source as the ESM build used on the main thread).
 *
 * The worker source is an eval'd CommonJS string, so it works unchanged from src/ (vitest) and dist/.
 */
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';

import { WeftError } from '../errors.js';

const WORKER_SOURCE = `
'use strict';
const { parentPort, workerData } = require('node:worker_threads');
const fs = require('node:fs');
const { Tokenizer } = require(workerData.libPath);
let json = workerData.json;
if (json == null) json = JSON.parse(fs.readFileSync(workerData.jsonPath, 'utf8'));
const tok = new Tokenizer(json, workerData.config || {});
json = null;
parentPort.on('message', (msg) => {
  try {
    const ids = tok.encode(msg.text, { add_special_tokens: msg.addSpecialTokens }).ids;
    const out = Int32Array.from(ids);
    parentPort.postMessage({ id: msg.id, ids: out }, [out.buffer]);
  } catch (err) {
    parentPort.postMessage({ id: msg.id, error: String((err && err.message) || err) });
  }
});
parentPort.postMessage({ ready: true });
`;

export interface EncodeWorkerSource {
  /** Absolute path of tokenizer.json (preferred: the worker reads it itself). */
  jsonPath?: string;
  /** The parsed tokenizer.json, when there is no path (cloned into the worker once). */
  json?: object;
  /** tokenizer_config.json contents passed to the library constructor. */
  config: object;
}

interface Pending {
  id: number;
  text: string;
  addSpecialTokens: boolean;
  resolve: (ids: number[]) => void;
  reject: (err: unknown) => void;
  signal?: AbortSignal;
  onAbort?: () => void;
}

/** Bounds of the encode queue (texts waiting for the worker, the one it encodes included). */
export interface EncodeQueueLimits {
  /** Most texts waiting. Default 256. */
  maxTexts: number;
  /** Most UTF-16 units waiting, all texts together. Default 64 Mi. */
  maxChars: number;
}

let libPathCache: string | null = null;
function libPath(): string {
  if (!libPathCache) libPathCache = createRequire(import.meta.url).resolve('@huggingface/tokenizers');
  return libPathCache;
}

/**
 * The worker and its queue. Texts are posted to the worker one at a time from a queue kept here,
 * so that a request whose caller gave up (its AbortSignal fired) leaves the queue without being
 * encoded, and the queue is bounded: beyond `limits`, encode rejects with WEFT_OVERLOADED.
 */
export class EncodeWorker {
  private worker: Worker | null = null;
  private ready: Promise<void> | null = null;
  /** Waiting texts, oldest first. */
  private readonly queue: Pending[] = [];
  /** The text the worker is encoding. */
  private current: Pending | null = null;
  private queuedChars = 0;
  private nextId = 1;
  private disposed = false;
  readonly limits: EncodeQueueLimits;

  constructor(
    private readonly source: EncodeWorkerSource,
    limits: Partial<EncodeQueueLimits> = {},
  ) {
    this.limits = { maxTexts: limits.maxTexts ?? 256, maxChars: limits.maxChars ?? 64 * 2 ** 20 };
  }

  /** Texts waiting or being encoded. */
  get numPending(): number {
    return this.queue.length + (this.current ? 1 : 0);
  }

  /** Starts the worker (if not yet) and resolves once its tokenizer is built. */
  start(): Promise<void> {
    if (this.disposed) return Promise.reject(new WeftError('WEFT_DISPOSED', 'tokenizer worker was disposed'));
    if (this.ready) return this.ready;
    const worker = new Worker(WORKER_SOURCE, {
      eval: true,
      workerData: {
        libPath: libPath(),
        jsonPath: this.source.jsonPath,
        json: this.source.jsonPath ? undefined : this.source.json,
        config: this.source.config,
      },
    });
    this.worker = worker;
    this.ready = new Promise<void>((resolve, reject) => {
      const onReady = (msg: { ready?: boolean }): void => {
        if (msg.ready) {
          worker.off('message', onReady);
          worker.on('message', (m) => this.onMessage(m));
          resolve();
        }
      };
      worker.on('message', onReady);
      // only the current worker's end fails the queue (an old one's exit may come after a new one started)
      worker.once('error', (err) => {
        reject(err);
        if (this.worker === worker) this.fail(err);
      });
      worker.once('exit', (code) => {
        const err = new WeftError('WEFT_INTERNAL', `tokenizer worker exited (code ${code})`);
        reject(err);
        if (this.worker === worker) this.fail(err);
      });
    });
    this.ready.catch(() => {});
    this.updateRef();
    return this.ready;
  }

  /**
   * Encodes `text` in the worker. WEFT_OVERLOADED when the queue is full, WEFT_CANCELLED when
   * `signal` fires first (a text not yet posted is never encoded).
   */
  encode(text: string, addSpecialTokens: boolean, signal?: AbortSignal): Promise<number[]> {
    if (this.disposed) return Promise.reject(new WeftError('WEFT_DISPOSED', 'tokenizer worker was disposed'));
    if (signal?.aborted) return Promise.reject(new WeftError('WEFT_CANCELLED', 'the encode was cancelled'));
    if (this.numPending >= this.limits.maxTexts || (this.queuedChars > 0 && this.queuedChars + text.length > this.limits.maxChars)) {
      return Promise.reject(new WeftError('WEFT_OVERLOADED', `the tokenizer queue is full (${this.numPending} texts, ${this.queuedChars} characters waiting); retry later`));
    }
    return new Promise<number[]>((resolve, reject) => {
      const p: Pending = { id: this.nextId++, text, addSpecialTokens, resolve, reject, signal };
      if (signal) {
        p.onAbort = () => this.abort(p);
        signal.addEventListener('abort', p.onAbort, { once: true });
      }
      this.queue.push(p);
      this.queuedChars += text.length;
      this.pump();
    });
  }

  /** Posts the next waiting text when the worker is idle (starting it first if needed). */
  private pump(): void {
    if (this.current || this.queue.length === 0) return;
    let started: Promise<void>;
    try {
      started = this.start();
    } catch (err) {
      return this.fail(err);
    }
    this.updateRef();
    started.then(() => {
      if (this.current || this.queue.length === 0 || !this.worker) return;
      const p = this.queue.shift()!;
      this.current = p;
      this.worker.postMessage({ id: p.id, text: p.text, addSpecialTokens: p.addSpecialTokens });
    }, () => undefined); // a worker that failed to start has already failed the queue
  }

  /** A caller gave up: a waiting text leaves the queue; the one being encoded is dropped when it returns. */
  private abort(p: Pending): void {
    const i = this.queue.indexOf(p);
    if (i >= 0) {
      this.queue.splice(i, 1);
      this.queuedChars -= p.text.length;
    } else if (this.current !== p) return;
    p.resolve = () => undefined;
    p.reject(new WeftError('WEFT_CANCELLED', 'the encode was cancelled'));
    p.reject = () => undefined;
    this.updateRef();
  }

  private settle(p: Pending): void {
    this.queuedChars -= p.text.length;
    if (p.signal && p.onAbort) p.signal.removeEventListener('abort', p.onAbort);
  }

  async dispose(): Promise<void> {
    this.disposed = true;
    const w = this.worker;
    this.fail(new WeftError('WEFT_DISPOSED', 'tokenizer was disposed'));
    if (w) await w.terminate();
  }

  private onMessage(msg: { id: number; ids?: Int32Array; error?: string }): void {
    const p = this.current;
    if (!p || p.id !== msg.id) return;
    this.current = null;
    this.settle(p);
    if (msg.error !== undefined) p.reject(new WeftError('WEFT_TOKENIZER', `encode failed in worker: ${msg.error}`));
    else p.resolve(Array.from(msg.ids!));
    this.pump();
    this.updateRef();
  }

  /** Rejects everything in flight and forgets the worker; the next call starts a fresh one. */
  private fail(err: unknown): void {
    const w = this.worker;
    this.worker = null;
    this.ready = null;
    const all = this.current ? [this.current, ...this.queue] : [...this.queue];
    this.current = null;
    this.queue.length = 0;
    for (const p of all) {
      this.settle(p);
      p.reject(err);
    }
    this.queuedChars = 0;
    if (w) w.terminate().catch(() => {});
  }

  /** Keep the process alive only while requests are in flight. */
  private updateRef(): void {
    if (!this.worker) return;
    if (this.numPending > 0) this.worker.ref();
    else this.worker.unref();
  }
}

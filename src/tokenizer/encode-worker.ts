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
  resolve: (ids: number[]) => void;
  reject: (err: unknown) => void;
}

let libPathCache: string | null = null;
function libPath(): string {
  if (!libPathCache) libPathCache = createRequire(import.meta.url).resolve('@huggingface/tokenizers');
  return libPathCache;
}

export class EncodeWorker {
  private worker: Worker | null = null;
  private ready: Promise<void> | null = null;
  private readonly pending = new Map<number, Pending>();
  private nextId = 1;
  private disposed = false;

  constructor(private readonly source: EncodeWorkerSource) {}

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
      worker.once('error', (err) => {
        reject(err);
        this.fail(err);
      });
      worker.once('exit', (code) => {
        const err = new WeftError('WEFT_INTERNAL', `tokenizer worker exited (code ${code})`);
        reject(err);
        this.fail(err);
      });
    });
    this.ready.catch(() => {});
    this.updateRef();
    return this.ready;
  }

  encode(text: string, addSpecialTokens: boolean): Promise<number[]> {
    const id = this.nextId++;
    // Registered before the worker starts so that it stays ref'd (the process waits for us).
    const result = new Promise<number[]>((resolve, reject) => this.pending.set(id, { resolve, reject }));
    const rejectThis = (err: unknown): void => {
      const p = this.pending.get(id);
      if (!p) return;
      this.pending.delete(id);
      this.updateRef();
      p.reject(err);
    };
    let started: Promise<void>;
    try {
      started = this.start();
    } catch (err) {
      rejectThis(err);
      return result;
    }
    this.updateRef();
    started.then(() => {
      if (!this.worker) return rejectThis(new WeftError('WEFT_INTERNAL', 'tokenizer worker is not running'));
      this.worker.postMessage({ id, text, addSpecialTokens });
    }, rejectThis);
    return result;
  }

  async dispose(): Promise<void> {
    this.disposed = true;
    const w = this.worker;
    this.fail(new WeftError('WEFT_DISPOSED', 'tokenizer was disposed'));
    if (w) await w.terminate();
  }

  private onMessage(msg: { id: number; ids?: Int32Array; error?: string }): void {
    const p = this.pending.get(msg.id);
    if (!p) return;
    this.pending.delete(msg.id);
    this.updateRef();
    if (msg.error !== undefined) p.reject(new WeftError('WEFT_TOKENIZER', `encode failed in worker: ${msg.error}`));
    else p.resolve(Array.from(msg.ids!));
  }

  /** Rejects everything in flight and forgets the worker; the next call starts a fresh one. */
  private fail(err: unknown): void {
    const w = this.worker;
    this.worker = null;
    this.ready = null;
    for (const p of this.pending.values()) p.reject(err);
    this.pending.clear();
    if (w) w.terminate().catch(() => {});
  }

  /** Keep the process alive only while requests are in flight. */
  private updateRef(): void {
    if (!this.worker) return;
    if (this.pending.size > 0) this.worker.ref();
    else this.worker.unref();
  }
}

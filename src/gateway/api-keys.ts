/**
 * API keys (`--api-keys FILE`, env WEFT_API_KEYS): who may use the gateway, and how much.
 *
 * The file is JSON: `{"keys": [{...}, ...], "metrics_key": "..."}` (or the array alone). A key:
 *
 *   { "name": "team-a",                 // labels logs and metrics (the key itself never appears)
 *     "key": "sk-...",                   // or "sha256": "<64 hex digits>" of the key
 *     "max_concurrent": 8,               // WebSocket sessions + HTTP requests at once (default: no limit)
 *     "tokens_per_minute": 100000,       // prompt + completion tokens (default: no limit)
 *     "max_tokens": 1024,                // cap on any one answer's max_tokens (default: none)
 *     "weight": 1 }                      // the tenant's share of decode slots under load (default 1)
 *
 * Keys are compared by their SHA-256 in constant time (timingSafeEqual over every entry, so the
 * time does not depend on which one matches or how much of one does).
 *
 * Budgets: tokens per minute are a token bucket (capacity = the per-minute budget, refilled
 * continuously): prompt tokens are charged when an answer starts, each generated token as it is
 * produced; when the bucket is empty the answer ends early and new ones are refused with the time
 * until the bucket holds what they need (`retryAfterMs`). Concurrency is a count of leases.
 */
import { createHash, timingSafeEqual } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { WeftError } from '../errors.js';
import type { TokenInfo, TurnDone, TurnListener } from '../session/turn.js';

export interface KeyLimits {
  /** Most WebSocket sessions and HTTP requests at once; null: no limit. */
  maxConcurrent: number | null;
  /** Prompt + completion tokens per minute; null: no limit. */
  tokensPerMinute: number | null;
  /** Cap on one answer's max_tokens; null: none. */
  maxTokens: number | null;
  /** Share of decode slots when the batch is full (relative to other keys' weights). */
  weight: number;
}

/** What a session.created (or an HTTP caller) is told of its key's budget: the wire type the SDK shares. */
export type { BudgetInfo } from '../client/protocol.js';
import type { BudgetInfo } from '../client/protocol.js';

/** A tokens-per-minute bucket shared by instances (src/cluster/redis-state.ts); null: it cannot say now. */
export interface SharedBudget {
  takeTokens(key: string, perMinute: number, n: number, need?: number): Promise<{ ok: boolean; left: number; waitMs: number } | null>;
  /** Changes this instance's lease count by `delta`; the total over live instances (null: it cannot say now). */
  lease(key: string, max: number | null, delta: 1 | -1): Promise<{ ok: boolean; total: number } | null>;
}

/** One key's tenant: its limits and what it is using now. */
export class Tenant {
  /** Leases held (sessions and requests). */
  active = 0;
  /** Observer of every charge (metrics). */
  onCharge: ((n: number) => void) | null = null;
  /** The budget shared with other instances (Redis), when there are several. */
  private shared: SharedBudget | null = null;
  /** Charges not yet sent to the shared budget. */
  private unsent = 0;
  private flushing = false;
  private tokens: number;
  private updatedAt: number;

  constructor(
    readonly name: string,
    readonly limits: KeyLimits,
    private readonly now: () => number = () => performance.now(),
  ) {
    this.tokens = limits.tokensPerMinute ?? Infinity;
    this.updatedAt = now();
  }

  private refill(): void {
    const tpm = this.limits.tokensPerMinute;
    if (tpm === null) return;
    const t = this.now();
    this.tokens = Math.min(tpm, this.tokens + ((t - this.updatedAt) * tpm) / 60_000);
    this.updatedAt = t;
  }

  /**
   * Shares the budget with other instances: every charge is also sent to the shared bucket (in
   * batches, one atomic script each), and its answer (what every instance has spent) becomes this
   * instance's bucket level. Decisions stay local and synchronous, one round trip behind the others.
   */
  share(shared: SharedBudget): void {
    this.shared = shared;
  }

  private flushShared(): void {
    const tpm = this.limits.tokensPerMinute;
    if (!this.shared || tpm === null || this.flushing || this.unsent === 0) return;
    this.flushing = true;
    const n = this.unsent;
    this.unsent = 0;
    void this.shared.takeTokens(this.name, tpm, n).then((r) => {
      this.flushing = false;
      if (r) {
        this.refill();
        // the shared level, less what this instance charged since the batch left
        this.tokens = r.left - this.unsent;
      } else {
        this.unsent += n; // Redis down: sent again with the next batch
      }
      if (this.unsent > 0) setTimeout(() => this.flushShared(), 50).unref();
    });
  }

  /** Tokens the budget holds now (whole tokens); null without a tokens-per-minute limit. */
  remaining(): number | null {
    if (this.limits.tokensPerMinute === null) return null;
    this.refill();
    return Math.max(0, Math.floor(this.tokens));
  }

  /** ms until the budget holds `n` tokens (0: now). Over the whole budget: the time to refill it all. */
  retryAfterMs(n = 1): number {
    const tpm = this.limits.tokensPerMinute;
    if (tpm === null) return 0;
    this.refill();
    const need = Math.min(n, tpm) - this.tokens;
    return need <= 0 ? 0 : Math.ceil((need * 60_000) / tpm);
  }

  /** Takes `n` tokens from the budget (it may go below zero: an answer's last token is never refused). False when it is now spent. */
  charge(n: number): boolean {
    this.onCharge?.(n);
    if (this.limits.tokensPerMinute === null) return true;
    this.refill();
    this.tokens -= n;
    if (this.shared && n > 0) {
      this.unsent += n;
      this.flushShared();
    }
    return this.tokens >= 1;
  }

  /** Whether an answer whose prompt has `promptTokens` may start now: WEFT_KEY_BUDGET with the wait when not. */
  checkBudget(promptTokens: number): void {
    const left = this.remaining();
    if (left === null || left >= Math.min(promptTokens + 1, this.limits.tokensPerMinute!)) return;
    const wait = this.retryAfterMs(promptTokens + 1);
    throw Object.assign(new WeftError('WEFT_KEY_BUDGET', `the API key "${this.name}" has spent its ${this.limits.tokensPerMinute} tokens per minute (${left} left; this needs ${promptTokens + 1}); retry in ${Math.ceil(wait / 1000)} s`), { retryAfterMs: wait });
  }

  /** An answer's max_tokens under the key's cap. */
  capMaxTokens(maxTokens: number): number {
    return this.limits.maxTokens === null ? maxTokens : Math.min(maxTokens, this.limits.maxTokens);
  }

  /**
   * Takes a concurrency lease (a session or a request); the returned function gives it back (once,
   * however often called). WEFT_KEY_CONCURRENCY when the key holds its maximum.
   */
  acquire(): () => void {
    const max = this.limits.maxConcurrent;
    // with several instances: what all of them hold, as of the last shared count (one round trip behind)
    const held = Math.max(this.active, this.active + this.othersActive);
    if (max !== null && held >= max) {
      throw Object.assign(new WeftError('WEFT_KEY_CONCURRENCY', `the API key "${this.name}" holds its maximum of ${max} concurrent sessions and requests${this.shared ? ' (on all instances)' : ''}`), { retryAfterMs: 1000 });
    }
    this.active++;
    this.shareLease(1);
    let holding = true;
    return () => {
      if (!holding) return;
      holding = false;
      this.active--;
      this.shareLease(-1);
    };
  }

  /** Leases other instances hold (from the shared count). */
  private othersActive = 0;

  private shareLease(delta: 1 | -1): void {
    if (!this.shared || this.limits.maxConcurrent === null) return;
    void this.shared.lease(this.name, null, delta).then((r) => {
      if (r) this.othersActive = Math.max(0, r.total - this.active);
    });
  }

  budget(): BudgetInfo {
    return {
      key: this.name,
      max_concurrent: this.limits.maxConcurrent,
      concurrent: this.active,
      tokens_per_minute: this.limits.tokensPerMinute,
      tokens_remaining: this.remaining(),
      max_tokens: this.limits.maxTokens,
      weight: this.limits.weight,
    };
  }
}

function sha256(text: string): Buffer {
  return createHash('sha256').update(text, 'utf8').digest();
}

const KEY_FIELDS = new Set(['name', 'key', 'sha256', 'max_concurrent', 'tokens_per_minute', 'max_tokens', 'weight']);

export class ApiKeys {
  private readonly hashes: Buffer[] = [];
  readonly tenants: Tenant[] = [];
  /** SHA-256 of the key GET /metrics also takes (besides any API key); null: API keys only. */
  private readonly metricsHash: Buffer | null;

  /** Parses the keys file's JSON text; `source` names it in errors. */
  constructor(json: unknown, source = 'the API keys', now?: () => number) {
    const bad = (why: string) => new WeftError('WEFT_BAD_ARGUMENT', `${source}: ${why}`);
    const doc = Array.isArray(json) ? { keys: json } : json;
    if (typeof doc !== 'object' || doc === null) throw bad('must be a JSON object {"keys": [...]} or an array of keys');
    const { keys, metrics_key: metricsKey, ...rest } = doc as Record<string, unknown>;
    const extra = Object.keys(rest);
    if (extra.length > 0) throw bad(`unknown field ${JSON.stringify(extra[0])} (expected "keys" and "metrics_key")`);
    if (!Array.isArray(keys) || keys.length === 0) throw bad('"keys" must be a non-empty array');
    if (metricsKey !== undefined && (typeof metricsKey !== 'string' || metricsKey.length < 8)) throw bad('"metrics_key" must be a string of at least 8 characters');
    this.metricsHash = typeof metricsKey === 'string' ? sha256(metricsKey) : null;
    const names = new Set<string>();
    keys.forEach((k: unknown, i) => {
      const where = `keys[${i}]`;
      if (typeof k !== 'object' || k === null || Array.isArray(k)) throw bad(`${where} must be an object`);
      const e = k as Record<string, unknown>;
      for (const f of Object.keys(e)) if (!KEY_FIELDS.has(f)) throw bad(`${where}: unknown field ${JSON.stringify(f)}`);
      if (typeof e.name !== 'string' || !/^[\w.@-]{1,64}$/.test(e.name)) throw bad(`${where}.name must be 1-64 characters of letters, digits, _ . @ -`);
      if (names.has(e.name)) throw bad(`${where}.name ${JSON.stringify(e.name)} is used twice`);
      names.add(e.name);
      let hash: Buffer;
      if (typeof e.key === 'string' && e.sha256 === undefined) {
        if (e.key.length < 8) throw bad(`${where}.key must be at least 8 characters`);
        hash = sha256(e.key);
      } else if (typeof e.sha256 === 'string' && e.key === undefined) {
        if (!/^[0-9a-fA-F]{64}$/.test(e.sha256)) throw bad(`${where}.sha256 must be 64 hex digits`);
        hash = Buffer.from(e.sha256, 'hex');
      } else {
        throw bad(`${where} needs exactly one of "key" or "sha256"`);
      }
      if (this.hashes.some((h) => h.equals(hash))) throw bad(`${where}: the same key is listed twice`);
      const limit = (f: string, min: number): number | null => {
        const v = e[f];
        if (v === undefined || v === null) return null;
        if (typeof v !== 'number' || !Number.isInteger(v) || v < min) throw bad(`${where}.${f} must be an integer >= ${min}`);
        return v;
      };
      const weight = e.weight ?? 1;
      if (typeof weight !== 'number' || !Number.isFinite(weight) || weight <= 0 || weight > 1000) throw bad(`${where}.weight must be a number in (0, 1000]`);
      this.hashes.push(hash);
      this.tenants.push(
        new Tenant(e.name, { maxConcurrent: limit('max_concurrent', 1), tokensPerMinute: limit('tokens_per_minute', 1), maxTokens: limit('max_tokens', 1), weight }, now),
      );
    });
  }

  /** Reads a keys file (WEFT_BAD_ARGUMENT naming it when it cannot be read or parsed). */
  static load(file: string): ApiKeys {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (err) {
      throw new WeftError('WEFT_BAD_ARGUMENT', `--api-keys ${file}: cannot read it (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, { cause: err });
    }
    let json: unknown;
    try {
      json = JSON.parse(text);
    } catch (err) {
      throw new WeftError('WEFT_BAD_ARGUMENT', `--api-keys ${file}: not JSON (${(err as Error).message})`, { cause: err });
    }
    return new ApiKeys(json, `--api-keys ${file}`);
  }

  /** The tenant of a key, or null (no key, or one not in the file). Constant time in the key's content. */
  authenticate(key: string | undefined | null): Tenant | null {
    if (typeof key !== 'string' || key.length === 0 || key.length > 4096) return null;
    const h = sha256(key);
    let found = -1;
    // every entry is compared, whatever matched: the time does not say which key (or how much of one) matched
    for (let i = 0; i < this.hashes.length; i++) if (timingSafeEqual(h, this.hashes[i]!) && found < 0) found = i;
    return found < 0 ? null : this.tenants[found]!;
  }

  /** Whether `key` may read GET /metrics: the metrics key, or any API key. */
  allowsMetrics(key: string | undefined | null): boolean {
    if (typeof key === 'string' && this.metricsHash && key.length <= 4096 && timingSafeEqual(sha256(key), this.metricsHash)) return true;
    return this.authenticate(key) !== null;
  }
}

/** The WebSocket subprotocol prefix browsers use to send a key (OpenAI's browser client does). */
export const KEY_PROTOCOL_PREFIX = 'openai-insecure-api-key.';

/** Splits a Sec-WebSocket-Protocol header into its entries. */
export function parseProtocols(header: string | undefined): string[] {
  if (!header) return [];
  return header
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '');
}

/**
 * The key a request presents: `Authorization: Bearer KEY`, else (WebSocket handshakes from
 * browsers, which cannot set headers) a `openai-insecure-api-key.KEY` subprotocol entry.
 */
export function presentedKey(authorization: string | undefined, protocols: string[] = []): string | undefined {
  if (authorization) {
    const m = /^\s*Bearer\s+(\S+)\s*$/i.exec(authorization);
    return m ? m[1] : undefined;
  }
  const p = protocols.find((x) => x.startsWith(KEY_PROTOCOL_PREFIX));
  return p ? p.slice(KEY_PROTOCOL_PREFIX.length) : undefined;
}

/**
 * The subprotocol the server answers with (a browser fails a handshake whose answer names none of
 * those it offered, and Chrome one that names none when some were offered): the first entry
 * that is not a key, else the first (only a key was offered: it goes back to the client that sent
 * it, nowhere else). OpenAI's browser client offers `realtime` first.
 */
export function chooseProtocol(protocols: string[]): string | undefined {
  return protocols.find((p) => !p.startsWith(KEY_PROTOCOL_PREFIX)) ?? protocols[0];
}

/**
 * A turn listener that charges each generated token to the tenant's budget before passing it on;
 * when the budget is spent, `onSpent` is called once (the front cancels the answer and reports why).
 */
export function budgetTap(listener: TurnListener, tenant: Tenant, onSpent: () => void): TurnListener {
  let spent = false;
  return {
    delta(seq: number, text: string, token?: TokenInfo) {
      if (token && token.token >= 0 && !tenant.charge(1) && !spent) {
        spent = true;
        onSpent();
      }
      listener.delta(seq, text, token);
    },
    done: (ev: TurnDone) => listener.done(ev),
    fail: (err: unknown) => listener.fail(err),
  };
}

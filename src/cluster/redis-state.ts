/**
 * Shared state of several weft instances in Redis (`--redis URL`, docs/scale-out.md).
 *
 * Keys (prefix `weft:`):
 *   inst:<id>          "1" while instance <id> lives (set every heartbeat, expires after `instanceTtlMs`)
 *   sess:<tokenHash>   the session record (JSON: transcript, sampling, system, key, the answer running now)
 *   own:<tokenHash>    the instance that serves the session
 *   prog:<tokenHash>   the running answer's progress (response id, next seq, text so far), flushed every few 100 ms
 *   tpm:<keyName>      an API key's tokens-per-minute bucket (hash: tokens, at)
 *   conc:<keyName>     an API key's leases per instance (hash: instance id → count)
 *
 * Ownership: a session is served by one instance at a time. Every write of a session's record is
 * fenced (a script writes only while `own:` names this instance), and an instance takes a session
 * over (`claim`) only when its owner is this instance, absent, or no longer alive (its `inst:` key
 * expired): two instances can never both win, and an owner that lost a session (it was presumed
 * dead) learns it at its next write.
 *
 * Redis down: every call fails fast (no offline queue) and is reported, never thrown at the
 * caller's request path; records written while it was down are written again when it returns.
 */
import { Redis } from 'ioredis';
import { WeftError } from '../errors.js';
import type { SessionRecord } from '../session/state-store.js';

/** A session record as weft keeps it in Redis: the state dir's record, the answer running, the writer. */
export interface ClusterRecord extends SessionRecord {
  /** The answer running when the record was written: enough to run it again, token for token. */
  pending?: PendingAnswer | null;
  /** The instance that wrote the record. */
  owner?: string;
  /** The last answer that ended: for a client that did not get its end before its instance died. */
  last?: LastAnswer | null;
}

/** An answer that ended: its id, whole text, seq of its next delta, and its response.done frame. */
export interface LastAnswer {
  response_id: string;
  text: string;
  next_seq: number;
  done: Record<string, unknown>;
}

/** A running answer: its message and its sampling (with the seed it runs with). */
export interface PendingAnswer {
  response_id: string;
  content: string;
  sampling: Record<string, unknown>;
}

/** How far a running answer got (flushed every few hundred ms). */
export interface Progress {
  response_id: string;
  next_seq: number;
  text: string;
}

/** A claim: won (and from whom), lost to a live owner, or about a session Redis does not hold (`unknown`). */
export type ClaimResult = { ok: true; previous: string | null } | { ok: false; owner: string; unknown?: undefined } | { ok: false; unknown: true; owner?: undefined };

const CLAIM = `
if redis.call('EXISTS', KEYS[2]) == 0 then return {2, ''} end
local o = redis.call('GET', KEYS[1])
if (not o) or o == ARGV[1] or redis.call('EXISTS', 'weft:inst:' .. o) == 0 then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return {1, o or ''}
end
return {0, o}`;

const UNCLAIM = `
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0`;

/** After a takeover under a new token: the old record goes, its owner key stays (naming the new owner) so that a presumed-dead old owner's next write is refused. */
const RETIRE = `
local o = redis.call('GET', KEYS[1])
if o ~= ARGV[1] then return 0 end
redis.call('PEXPIRE', KEYS[1], ARGV[2])
redis.call('DEL', KEYS[2], KEYS[3])
return 1`;

/** Keeps the records of sessions this instance serves from expiring while they are connected (only those it owns). */
const TOUCH = `
local n = 0
for i = 1, #KEYS, 2 do
  if redis.call('GET', KEYS[i]) == ARGV[1] then
    redis.call('PEXPIRE', KEYS[i], ARGV[2])
    redis.call('PEXPIRE', KEYS[i + 1], ARGV[2])
    n = n + 1
  end
end
return n`;

const FENCED_SET = `
local o = redis.call('GET', KEYS[1])
if o and o ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[3])
redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[3])
return 1`;

const FENCED_DEL = `
local o = redis.call('GET', KEYS[1])
if o and o ~= ARGV[1] then return 0 end
redis.call('DEL', KEYS[1], KEYS[2], KEYS[3])
return 1`;

/** Token bucket: KEYS[1] tpm hash; ARGV: capacity, (unused), tokens to take, min needed (0: always take). Redis's clock, not the instances' (which may disagree). Returns {ok, left, waitMs}. */
const TAKE_TOKENS = `
local cap = tonumber(ARGV[1])
local t0 = redis.call('TIME')
local now = tonumber(t0[1]) * 1000 + math.floor(tonumber(t0[2]) / 1000)
local n = tonumber(ARGV[3])
local need = tonumber(ARGV[4])
local t = redis.call('HMGET', KEYS[1], 'tokens', 'at')
local tokens = tonumber(t[1]) or cap
local at = tonumber(t[2]) or now
tokens = math.min(cap, tokens + (now - at) * cap / 60000)
if need > 0 and tokens < need then
  redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
  redis.call('PEXPIRE', KEYS[1], 120000)
  return {0, math.floor(tokens), math.ceil((need - tokens) * 60000 / cap)}
end
tokens = tokens - n
redis.call('HSET', KEYS[1], 'tokens', tostring(tokens), 'at', tostring(now))
redis.call('PEXPIRE', KEYS[1], 120000)
return {1, math.floor(math.max(0, tokens)), 0}`;

/** Concurrency: KEYS[1] conc hash; ARGV: instance, max (0: none), delta. Counts only live instances. Returns {ok, total}. */
const LEASE = `
local total = 0
local f = redis.call('HGETALL', KEYS[1])
for i = 1, #f, 2 do
  if f[i] == ARGV[1] or redis.call('EXISTS', 'weft:inst:' .. f[i]) == 1 then total = total + tonumber(f[i + 1]) else redis.call('HDEL', KEYS[1], f[i]) end
end
local delta = tonumber(ARGV[3])
local max = tonumber(ARGV[2])
if delta > 0 and max > 0 and total + delta > max then return {0, total} end
local mine = redis.call('HINCRBY', KEYS[1], ARGV[1], delta)
if mine <= 0 then redis.call('HDEL', KEYS[1], ARGV[1]) end
redis.call('PEXPIRE', KEYS[1], 86400000)
return {1, total + delta}`;

export interface ClusterOptions {
  /** How often the instance says it lives (ms). Default 250. */
  heartbeatMs?: number;
  /** How long after its last heartbeat an instance counts as dead (ms). Default 1000. */
  instanceTtlMs?: number;
  /** Where operators read what went wrong (Redis unreachable, a record that does not parse, a lost session). */
  log?: (line: string) => void;
}

export class ClusterState {
  readonly redis: Redis;
  private heartbeat: NodeJS.Timeout | null = null;
  /** Whether the last Redis call succeeded. */
  up = false;
  /** Redis calls made (metrics: operations per turn). */
  ops = 0;
  /** Calls that failed since start. */
  failures = 0;
  private readonly heartbeatMs: number;
  /** How long after its last heartbeat an instance counts as dead (ms). */
  readonly instanceTtlMs: number;
  private readonly log: (line: string) => void;
  /** Records that could not be written while Redis was down, written again when it is back (by token hash). */
  private readonly dirty = new Map<string, { write: () => Promise<number>; onLost?: () => void }>();
  private closed = false;
  private wasReady = false;
  /** Called when Redis is back after an outage (the gateway writes its sessions again). */
  onReconnect: (() => void) | null = null;

  constructor(
    url: string,
    readonly instanceId: string,
    opts: ClusterOptions = {},
  ) {
    if (!/^rediss?:\/\//.test(url)) throw new WeftError('WEFT_BAD_ARGUMENT', `--redis must be a redis:// or rediss:// URL (got ${JSON.stringify(url.slice(0, 100))})`);
    this.heartbeatMs = opts.heartbeatMs ?? 250;
    this.instanceTtlMs = opts.instanceTtlMs ?? 1000;
    this.log = opts.log ?? ((line) => process.stderr.write(`weft: ${line}\n`));
    this.redis = new Redis(url, {
      // a request never waits for a Redis that is down: calls fail at once and are retried by their owner
      enableOfflineQueue: false,
      maxRetriesPerRequest: 1,
      connectTimeout: 2000,
      commandTimeout: 1000,
      lazyConnect: true,
      retryStrategy: (n) => Math.min(1000, 50 * n),
    });
    this.redis.on('error', () => undefined); // reported through `up` and the log below
    this.redis.on('ready', () => {
      const again = this.wasReady;
      this.wasReady = true;
      if (!this.up) this.log(`redis: connected (${url.replace(/\/\/[^@]*@/, '//***@')})`);
      this.up = true;
      void this.beat()
        .then(() => this.rewriteDirty())
        .then(() => {
          // a Redis that comes back may have lost what it held: the owner writes its sessions again
          if (again) this.onReconnect?.();
        });
    });
    this.redis.on('end', () => this.setDown('connection ended'));
    this.redis.on('close', () => this.setDown('connection closed'));
  }

  /** Connects (without waiting for Redis: weft serves its own sessions while Redis is down) and starts the heartbeat. */
  /** Connects to Redis (without the heartbeat: an instance says it lives once it can serve, `beginHeartbeat`). */
  connect(): void {
    if (this.connecting) return;
    this.connecting = true;
    this.redis.connect().catch((err: Error) => this.setDown(err.message));
  }

  private connecting = false;

  /** Starts saying this instance lives (every heartbeatMs): others no longer take its sessions over. */
  beginHeartbeat(): void {
    this.connect();
    if (this.heartbeat || this.leaving) return;
    this.heartbeat = setInterval(() => void this.beat(), this.heartbeatMs);
    this.heartbeat.unref();
    void this.beat();
  }

  /** connect, then the heartbeat. */
  start(): void {
    this.beginHeartbeat();
  }

  private setDown(why: string): void {
    if (this.up && !this.closed) this.log(`redis: unavailable (${why}); serving this instance's sessions, writing through again when it is back`);
    this.up = false;
  }

  /** Runs a Redis call; a failure marks Redis down and resolves `fallback`. */
  private async call<T>(what: string, fn: () => Promise<T>, fallback: T): Promise<T> {
    this.ops++;
    try {
      const v = await fn();
      if (!this.up && this.redis.status === 'ready') this.up = true;
      return v;
    } catch (err) {
      this.failures++;
      if (this.up) this.setDown(`${what}: ${(err as Error).message}`);
      return fallback;
    }
  }

  private async beat(): Promise<void> {
    if (this.closed || this.leaving || !this.heartbeat || this.redis.status !== 'ready') return;
    await this.call('heartbeat', () => this.redis.set(`weft:inst:${this.instanceId}`, '1', 'PX', this.instanceTtlMs), null);
  }

  /** Whether instance `id` has beaten within its TTL (false when Redis cannot say). */
  async isAlive(id: string): Promise<boolean> {
    return (await this.call('isAlive', () => this.redis.exists(`weft:inst:${id}`), 0)) === 1;
  }

  /**
   * Writes a session's record (and makes this instance its owner when it has none), fenced: false
   * when another instance owns it now (this one lost it) or Redis is down (the record is written
   * again when it is back).
   */
  async save(record: ClusterRecord, ttlMs: number, onLost?: () => void): Promise<'saved' | 'lost' | 'down'> {
    const h = record.token_hash;
    const write = () =>
      this.redis.eval(FENCED_SET, 2, `weft:own:${h}`, `weft:sess:${h}`, this.instanceId, JSON.stringify({ ...record, owner: this.instanceId }), String(Math.max(1000, Math.round(ttlMs)))) as Promise<number>;
    const r = await this.call('save', write, -1);
    if (r === -1) {
      this.dirty.set(h, { write, onLost });
      return 'down';
    }
    this.dirty.delete(h);
    if (r === 0) {
      this.log(`session ${record.session_id}: another instance owns it now; this one stops serving it`);
      return 'lost';
    }
    return 'saved';
  }

  /** Deletes a session's record (it ended), fenced like save. */
  async remove(tokenHash: string): Promise<void> {
    this.dirty.delete(tokenHash);
    await this.call('remove', () => this.redis.eval(FENCED_DEL, 3, `weft:own:${tokenHash}`, `weft:sess:${tokenHash}`, `weft:prog:${tokenHash}`, this.instanceId) as Promise<number>, 0);
  }

  /** A session's record, or null (none, expired, Redis down, or a record that does not parse: logged). */
  async load(tokenHash: string): Promise<ClusterRecord | null> {
    const raw = await this.call('load', () => this.redis.get(`weft:sess:${tokenHash}`), null);
    if (raw === null) return null;
    try {
      const v = JSON.parse(raw) as ClusterRecord;
      if (v?.weft_session !== 1 || v.token_hash !== tokenHash) throw new Error('not a weft session record of this token');
      return v;
    } catch (err) {
      this.log(`redis: the record weft:sess:${tokenHash.slice(0, 12)}… does not parse (${(err as Error).message}); the session cannot be resumed`);
      return null;
    }
  }

  /** Takes a session over: this instance becomes its owner unless a live other instance owns it. */
  async claim(tokenHash: string, ttlMs: number): Promise<ClaimResult | null> {
    const r = await this.call('claim', () => this.redis.eval(CLAIM, 2, `weft:own:${tokenHash}`, `weft:sess:${tokenHash}`, this.instanceId, String(Math.max(1000, Math.round(ttlMs)))) as Promise<[number, string]>, null);
    if (!r) return null;
    if (r[0] === 2) return { ok: false, unknown: true };
    return r[0] === 1 ? { ok: true, previous: r[1] === '' ? null : r[1] } : { ok: false, owner: r[1] };
  }

  /** Gives a claim back (this instance took it but does not serve the session): its owner key goes if it names this instance. */
  async unclaim(tokenHash: string): Promise<void> {
    await this.call('unclaim', () => this.redis.eval(UNCLAIM, 1, `weft:own:${tokenHash}`, this.instanceId) as Promise<number>, 0);
  }

  /** Retires a session's old record after a takeover under a new token (its owner key stays, naming this instance, for `ttlMs`). */
  async retire(tokenHash: string, ttlMs: number): Promise<void> {
    this.dirty.delete(tokenHash);
    await this.call('retire', () => this.redis.eval(RETIRE, 3, `weft:own:${tokenHash}`, `weft:sess:${tokenHash}`, `weft:prog:${tokenHash}`, this.instanceId, String(Math.max(1000, Math.round(ttlMs)))) as Promise<number>, 0);
  }

  /** Extends the records of these sessions (their token hashes) that this instance owns by `ttlMs`. */
  async touch(tokenHashes: string[], ttlMs: number): Promise<void> {
    for (let i = 0; i < tokenHashes.length; i += 500) {
      const keys = tokenHashes.slice(i, i + 500).flatMap((h) => [`weft:own:${h}`, `weft:sess:${h}`]);
      await this.call('touch', () => this.redis.eval(TOUCH, keys.length, ...keys, this.instanceId, String(Math.max(1000, Math.round(ttlMs)))) as Promise<number>, 0);
    }
  }

  /** Who owns a session now (null: nobody, or Redis cannot say). */
  async owner(tokenHash: string): Promise<string | null> {
    return this.call('owner', () => this.redis.get(`weft:own:${tokenHash}`), null);
  }

  /** Flushes a running answer's progress (best effort). */
  async progress(tokenHash: string, p: Progress, ttlMs: number): Promise<void> {
    await this.call('progress', () => this.redis.set(`weft:prog:${tokenHash}`, JSON.stringify(p), 'PX', Math.max(1000, Math.round(ttlMs))), null);
  }

  async loadProgress(tokenHash: string): Promise<Progress | null> {
    const raw = await this.call('loadProgress', () => this.redis.get(`weft:prog:${tokenHash}`), null);
    if (!raw) return null;
    try {
      return JSON.parse(raw) as Progress;
    } catch {
      return null;
    }
  }

  /**
   * Takes `n` tokens from a key's tokens-per-minute bucket shared by every instance; with `need`
   * > 0 only when the bucket holds `need` (else nothing is taken and the wait is returned). Null
   * when Redis cannot say (the caller falls back to its own bucket).
   */
  async takeTokens(key: string, perMinute: number, n: number, need = 0): Promise<{ ok: boolean; left: number; waitMs: number } | null> {
    const r = await this.call('takeTokens', () => this.redis.eval(TAKE_TOKENS, 1, `weft:tpm:${key}`, String(perMinute), String(Date.now()), String(n), String(need)) as Promise<[number, number, number]>, null);
    return r ? { ok: r[0] === 1, left: r[1], waitMs: r[2] } : null;
  }

  /** Changes a key's lease count on this instance by `delta` (+1 refused past `max` over all live instances). Null when Redis cannot say. */
  async lease(key: string, max: number | null, delta: 1 | -1): Promise<{ ok: boolean; total: number } | null> {
    const r = await this.call('lease', () => this.redis.eval(LEASE, 1, `weft:conc:${key}`, this.instanceId, String(max ?? 0), String(delta)) as Promise<[number, number]>, null);
    return r ? { ok: r[0] === 1, total: r[1] } : null;
  }

  private async rewriteDirty(): Promise<void> {
    const pending = [...this.dirty.entries()];
    if (pending.length === 0) return;
    let n = 0;
    for (const [h, d] of pending) {
      const r = await this.call('rewrite', d.write, -1);
      if (r === -1) return; // down again
      this.dirty.delete(h);
      if (r === 0) {
        // taken over while Redis was unreachable from here: this instance no longer serves it
        this.log(`redis: a session was taken over by another instance while Redis was unreachable; this one stops serving it`);
        d.onLost?.();
        continue;
      }
      n++;
    }
    this.log(`redis: wrote ${n} session records again that were saved while it was down`);
  }

  /** Records waiting to be written again. */
  get numDirty(): number {
    return this.dirty.size;
  }

  /** Stops saying this instance lives (a drain handing its sessions over): others may claim them at once. */
  async leave(): Promise<void> {
    if (this.heartbeat) clearInterval(this.heartbeat);
    this.heartbeat = null;
    this.leaving = true;
    await this.call('leave', () => this.redis.del(`weft:inst:${this.instanceId}`), 0);
  }

  private leaving = false;

  async close(): Promise<void> {
    this.closed = true;
    if (this.heartbeat) clearInterval(this.heartbeat);
    if (this.redis.status === 'ready') await this.call('close', () => this.redis.del(`weft:inst:${this.instanceId}`), 0);
    this.redis.disconnect();
  }
}

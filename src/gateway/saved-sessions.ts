/**
 * Sessions saved beyond this process: in the state dir (src/session/state-store.ts), for a
 * restarted weft to resume them, and in Redis (src/cluster/redis-state.ts), for another instance
 * to take them over; and made live again from either record. The Gateway's persist, revive,
 * restoreSession, forgetSaved, loadState and hasSaved are these.
 */
import type { ConversationData } from '../session/conversation.js';
import { Session } from '../session/session.js';
import { hashToken, type SessionRecord, type StateStore } from '../session/state-store.js';
import type { LastAnswer, PendingAnswer } from '../cluster/redis-state.js';
import type { Tenant } from './api-keys.js';
import type { Gateway } from './server.js';
import { SessionRunner } from './session-runner.js';

export class SavedSessions {
  /** Sessions read from the state dir, by token hash, until resumed or expired. */
  private restorable = new Map<string, SessionRecord>();

  /** `store`: the state dir's (null: none). Redis is the gateway's cluster state, once it listens. */
  constructor(
    private readonly gw: Gateway,
    private readonly store: StateStore | null,
  ) {}

  /** Reads the sessions saved in the state dir (after attach): they can be resumed with their tokens. Returns how many. */
  async load(): Promise<number> {
    if (!this.store || !this.gw.engine) return 0;
    this.restorable = await this.store.load(this.gw.engine.config.vocabSize);
    return this.restorable.size;
  }

  /** Whether the state dir holds a session for this token that `key` (an API key's name, null without keys) may resume. */
  has(token: string, key: string | null): boolean {
    const r = this.restorable.get(hashToken(token));
    return r !== undefined && (r.key ?? null) === key;
  }

  /** A session saved in the state dir for this resume token, made live again (its KV is rebuilt by the next turn), or undefined. */
  restore(token: string, tenant: Tenant | null): SessionRunner | undefined {
    const hash = hashToken(token);
    const r = this.restorable.get(hash);
    if (!r || !this.gw.scheduler || !this.gw.format) return undefined;
    if ((r.key ?? null) !== (tenant?.name ?? null)) return undefined; // another key's session: unknown to this one
    this.restorable.delete(hash);
    if (r.expires_at <= Date.now()) {
      void this.store?.remove(hash);
      return undefined;
    }
    return this.revive(token, r, tenant);
  }

  /** A session made live from its record (the state dir's, or another instance's in Redis). */
  revive(token: string, r: SessionRecord, tenant: Tenant | null): SessionRunner {
    const gw = this.gw;
    const session = new Session(gw.scheduler!, {
      format: gw.format!,
      maxTokens: gw.defaultMaxTokens,
      sampling: gw.options.sessionSampling,
      contextPolicy: r.context_policy,
      maxContextTokens: gw.options.maxSessionTokens,
    });
    session.conversation.restore(r.conversation);
    const runner = new SessionRunner(gw, session);
    runner.sampling = r.sampling;
    runner.system = r.system ?? undefined;
    runner.resumeToken = token;
    runner.tenant = tenant;
    gw.sessions.add(session);
    gw.metrics.sessionsActive.set(gw.sessions.size);
    return runner;
  }

  /**
   * Saves a session: to the state dir, and to Redis (with the answer running now, `pending`, and
   * the conversation as it was before it, so that another instance can run it again). No-op
   * without either, or without a resume token. A Redis write refused because another instance
   * owns the session now ends it here.
   */
  async persist(runner: SessionRunner, running?: { pending: PendingAnswer; conversation: ConversationData }, last?: LastAnswer): Promise<void> {
    const token = runner.resumeToken;
    const cluster = this.gw.cluster;
    if ((!this.store && !cluster) || !token) return;
    const record: SessionRecord = {
      weft_session: 1,
      session_id: runner.session.id,
      token_hash: hashToken(token),
      expires_at: Date.now() + this.gw.resumeTtlMs,
      system: runner.system ?? null,
      sampling: { ...runner.sampling },
      context_policy: runner.session.contextPolicy,
      conversation: running?.conversation ?? runner.session.conversation.toJSON(),
      key: runner.tenant?.name ?? null,
    };
    const saved = this.store && !running ? this.store.save(record) : Promise.resolve();
    if (cluster) {
      const r = await cluster.save({ ...record, pending: running?.pending ?? null, last: last ?? runner.lastAnswer ?? null }, this.gw.resumeTtlMs);
      if (r === 'lost') runner.lost();
    }
    await saved;
  }

  /** Forgets a saved session (it ended, or its token was rotated). */
  forget(token: string | null): void {
    if (this.store && token) void this.store.remove(hashToken(token));
    if (this.gw.cluster && token) void this.gw.cluster.remove(hashToken(token));
  }
}

/**
 * Takeover: a protocol v1 client presents the resume token of a session that another instance
 * served (it died, or the proxy sent the client here), and this instance resumes it from the
 * state the instances share in Redis (src/cluster/redis-state.ts, docs/scale-out.md).
 */
import type { WeftErrorCode } from '../errors.js';
import { hashToken } from '../session/state-store.js';
import type { Tenant } from './api-keys.js';
import type { Gateway } from './server.js';
import type { SessionRunner } from './session-runner.js';

/** What a takeover drives of the protocol v1 connection whose client presented the resume token. */
export interface TakeoverClient {
  /** Whether the socket is gone: the takeover stops where it is. */
  closed(): boolean;
  /** The API key's tenant (null: no API keys): only a session of the same key is taken over. */
  readonly tenant: Tenant | null;
  /** The last delta the client got, and the response it belongs to (from the URL). */
  readonly lastSeq: number | undefined;
  readonly responseId: string | undefined;
  /** Makes the revived session the connection's, under its new resume token. */
  adopt(runner: SessionRunner, token: string): void;
  /** A new session instead (`unknown`: the client is told first that its token is unknown). */
  startFresh(unknown: boolean): void;
  /** Refuses the connection with this error (1013). */
  refuse(code: WeftErrorCode, message: string): void;
  send(ev: object): void;
  sendText(text: string): void;
  /** Closes the socket with 1013 WEFT_SESSION_ELSEWHERE and ends the connection. */
  closeElsewhere(): void;
}

/**
 * Takes over a session another instance served: claims it (an owner that is alive is waited for
 * up to its heartbeat TTL: a killed instance is dead by then; one still alive keeps it:
 * WEFT_SESSION_ELSEWHERE), reads its record, makes it live here under a new resume token naming
 * this instance, and runs again the answer that was running, sending the client the deltas after
 * its last_seq. The connection holds the frames that come meanwhile.
 */
export async function takeOverSession(gw: Gateway, token: string, client: TakeoverClient): Promise<string | null> {
  const cluster = gw.cluster!;
  const hash = hashToken(token);
  const outcome = (o: string) => gw.metrics.takeovers?.inc({ outcome: o });
  const deadline = performance.now() + cluster.instanceTtlMs + 1000;
  let claim = await cluster.claim(hash, gw.resumeTtlMs);
  while (claim && !claim.ok && !claim.unknown && performance.now() < deadline && !client.closed()) {
    await new Promise((r) => setTimeout(r, 100));
    claim = await cluster.claim(hash, gw.resumeTtlMs);
  }
  if (client.closed()) return null;
  const named = token.includes('.') ? token.slice(0, Math.min(64, token.indexOf('.'))) : '?';
  if (!claim) {
    // Redis cannot say now: the token may well be good; the client retries (it is not told it is unknown)
    outcome('refused');
    client.refuse('WEFT_NOT_READY', 'the state shared by the instances cannot be read now (Redis); retry shortly: the session is not lost');
    return null;
  }
  if (!claim.ok && claim.unknown) {
    gw.log(`a resume token naming instance ${JSON.stringify(named)} is unknown to the shared state (forged, expired or ended; hash ${hash.slice(0, 12)}…)`);
    client.startFresh(true);
    return null;
  }
  if (!claim.ok) {
    outcome('refused');
    gw.metrics.errors.inc({ code: 'WEFT_SESSION_ELSEWHERE' });
    client.send({ type: 'error', code: 'WEFT_SESSION_ELSEWHERE', message: `the session is served by instance ${claim.owner}, which is alive; reconnect through the proxy`, instance: claim.owner });
    client.closeElsewhere();
    return null;
  }
  const record = await cluster.load(hash);
  if (client.closed()) {
    await cluster.unclaim(hash);
    return null;
  }
  const tenant = client.tenant;
  if (!record || record.expires_at <= Date.now() || (record.key ?? null) !== (tenant?.name ?? null)) {
    if (record && (record.key ?? null) !== (tenant?.name ?? null)) gw.log(`a resume token of key ${JSON.stringify(record.key)} was presented with ${tenant ? `key ${JSON.stringify(tenant.name)}` : 'no key'}: refused as unknown`);
    // the claim is given back: the session stays its key's to resume anywhere
    await cluster.unclaim(hash);
    client.startFresh(true);
    return null;
  }
  if (gw.numLiveSessions >= gw.maxSessions) {
    await cluster.unclaim(hash);
    client.refuse('WEFT_TOO_MANY_SESSIONS', `the gateway serves its maximum of ${gw.maxSessions} connected sessions; the session stays resumable`);
    return null;
  }
  // the session lives here now, under a token that names this instance (the proxy routes its next resume here)
  const fresh = gw.newResumeToken();
  const runner = gw.revive(fresh, record, tenant);
  client.adopt(runner, fresh);
  const pending = record.pending ?? null;
  const last = record.last ?? null;
  runner.lastAnswer = last;
  const progress = pending ? await cluster.loadProgress(hash) : null;
  // written under the new token before the old one goes: a death now loses nothing
  await gw.persist(runner, pending ? { pending, conversation: record.conversation } : undefined);
  // the old record goes; its owner key stays, naming this instance: a presumed-dead old owner's next write is refused
  await cluster.retire(hash, gw.resumeTtlMs);
  gw.log(`session ${record.session_id}: taken over from ${claim?.previous ?? 'nobody'}${pending ? `; answer ${pending.response_id} runs again from its start` : ''}`);
  outcome(pending ? 'regenerated' : 'resumed');
  const lastSeq = client.lastSeq ?? -1;
  client.send({
    type: 'session.resumed',
    session: { id: runner.session.id, model: gw.modelName, limits: gw.limits() },
    resume_token: fresh,
    response: pending ? { response_id: pending.response_id, status: 'in_progress', next_seq: (client.responseId === pending.response_id ? lastSeq : -1) + 1 } : last ? { response_id: last.response_id, status: 'done', next_seq: last.next_seq } : null,
  });
  if (pending) {
    runner.regenerate(pending, lastSeq, client.responseId, progress);
    return fresh;
  }
  if (last && client.responseId === last.response_id && lastSeq + 1 <= last.next_seq) {
    // the answer ended on the lost instance after the client's last delta: its text if deltas are missing, then its end
    if (lastSeq + 1 < last.next_seq) {
      gw.metrics.errors.inc({ code: 'WEFT_REPLAY_GAP' });
      client.send({ type: 'error', code: 'WEFT_REPLAY_GAP', message: 'the instance that ran this answer is gone; its whole text follows', response_id: last.response_id, text: last.text, next_seq: last.next_seq });
    }
    client.sendText(JSON.stringify(last.done));
  }
  return fresh;
}

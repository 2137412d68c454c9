/**
 * A session runner's side in a cluster of instances (src/cluster, docs/scale-out.md). While this
 * instance owns the session, another one may have to run its answer again if this one dies: the
 * answer gets a seed, its pending record goes to Redis before it starts, and its progress while it
 * runs. On the instance that took the session over, the answer run again skips the deltas the
 * client has and is checked against that progress. And this instance may lose the session to
 * another (a fenced write refused): its answer stops there. (The connection's side of a takeover,
 * reviving the session from Redis, is takeover.ts.)
 */
import { randomInt } from 'node:crypto';
import type { Progress } from '../cluster/redis-state.js';
import type { ResponseLog, ResponseSink } from '../session/response-log.js';
import { hashToken } from '../session/state-store.js';
import type { WireSampling } from './protocol.js';
import type { Gateway } from './server.js';
import type { SessionRunner } from './session-runner.js';

/** An answer run again after a takeover (SessionRunner.regenerate). */
export interface Rerun {
  /** The answer's response_id, as the lost instance announced it. */
  id: string;
  /** The deltas through this seq are not sent (the client has them); -1: all are. */
  skipThrough: number;
  /** Whether the client gets response.created (it did not know the answer). */
  announce: boolean;
  /** What the lost instance had sent, to check the run against (null: nothing flushed). */
  expect: Progress | null;
}

export class RunnerCluster {
  /** This instance lost the session to another. */
  private wasLost = false;

  constructor(
    private readonly gw: Gateway,
    private readonly runner: SessionRunner,
    /** Sends an event to the runner's connection, if any. */
    private readonly send: (ev: object) => void,
  ) {}

  /**
   * Before an answer starts (with a cluster): an answer another instance may have to run again
   * token for token gets its seed now (in `wire`), and the conversation as it stands with what to
   * run again goes to Redis for whoever takes over.
   */
  beforeStart(id: string, content: string, wire: WireSampling): Promise<void> | null {
    if (!this.gw.cluster) return null;
    if (wire.seed === undefined) wire.seed = randomInt(2 ** 47);
    if (!this.runner.resumeToken) return null;
    // at most Redis's command timeout (1 s); a Redis that is down does not hold the answer
    return this.gw.persist(this.runner, { pending: { response_id: id, content, sampling: { ...wire } }, conversation: this.runner.session.conversation.toJSON() }).catch(() => undefined);
  }

  /** An answer started: while it runs, its progress goes to Redis every 250 ms (a new owner checks its run again against it). */
  started(id: string, log: ResponseLog): void {
    const cluster = this.gw.cluster;
    if (!cluster || !this.runner.resumeToken) return;
    const hash = hashToken(this.runner.resumeToken);
    let sent = -1;
    const timer = setInterval(() => {
      if (log.result || this.wasLost) return clearInterval(timer);
      if (log.nextSeq === sent) return;
      sent = log.nextSeq;
      void cluster.progress(hash, { response_id: id, next_seq: log.nextSeq, text: log.text }, this.gw.resumeTtlMs);
    }, 250);
    timer.unref();
  }

  /**
   * The sink of an answer run again: the deltas the client already has are not sent twice, and the
   * run is checked against the progress the lost instance flushed (another backend or build may
   * sample other tokens: then the client is sent the text as it is now, never a silent divergence).
   */
  rerunSink(rerun: Rerun, log: ResponseLog, sink: ResponseSink): ResponseSink {
    const { skipThrough: skip, expect } = rerun;
    if (skip < 0 && !expect) return sink;
    return {
      ...sink,
      delta: (seq, frame) => {
        if (seq > skip) sink.delta(seq, frame);
        if (expect && seq === expect.next_seq - 1 && log.text !== expect.text) this.diverged(rerun.id, log, expect);
      },
    };
  }

  /** An answer run again differs from what the lost instance had sent: the client gets the text as it is now (WEFT_REPLAY_GAP). */
  private diverged(id: string, log: ResponseLog, expect: Progress): void {
    this.gw.log(`session ${this.runner.session.id}: answer ${id} run again differs from what the lost instance sent by seq ${expect.next_seq - 1} (another backend or build?); the client gets the whole text so far`);
    this.gw.metrics.errors.inc({ code: 'WEFT_REPLAY_GAP' });
    this.send({ type: 'error', code: 'WEFT_REPLAY_GAP', message: 'the answer run again on this instance differs from what the lost one had sent; its whole text so far follows', response_id: id, text: log.text, next_seq: log.nextSeq });
  }

  /** This instance lost the session to another (a fenced write was refused): its answer stops here, and the client is sent to the owner. */
  lost(): void {
    if (this.wasLost) return;
    this.wasLost = true;
    this.gw.metrics.errors.inc({ code: 'WEFT_SESSION_ELSEWHERE' });
    this.runner.cancelAll();
    this.runner.onLost?.();
  }
}

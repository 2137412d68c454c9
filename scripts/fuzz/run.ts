/** The state of one transport's run, and what happens when its server dies. */
import type { FrameItem } from './frames.js';
import { SERVER_ENV, type FuzzOptions } from './options.js';
import { showFrame, type Failure } from './report.js';
import { ServerProc, httpGet } from './server.js';
import { sleep } from './util.js';

/** A size or count from the environment (`262144`, `256k`, `4MiB`), or `otherwise`. */
function sizeOf(v: string | undefined, otherwise: number): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*([kmg])?i?b?\s*$/i.exec(v ?? '');
  if (!m) return otherwise;
  return Math.floor(Number(m[1]) * 1024 ** ' kmg'.indexOf((m[2] ?? ' ').toLowerCase()));
}

/** Something sent to the server, kept to be blamed (and replayed) if the server dies. */
export interface Suspect {
  what: string;
  sentAt: number;
  /** When its answer (or close) came; undefined while in flight. */
  doneAt?: number;
  input: string;
  replay: (port: number) => Promise<unknown>;
  /** A second try when `replay` alone does not reproduce it (a frame with the frames before it on its connection). */
  replayWith?: { what: string; first: number; replay: (port: number) => Promise<FrameItem | void> };
  conn?: number;
  index?: number;
  log?: string[];
}

/**
 * One transport's run: its server, what was sent and answered, failures and notes; a crash is
 * triaged here (restart, replay the suspects alone to name the culprit).
 */
export class Run {
  readonly failures: Failure[] = [];
  private readonly bySig = new Map<string, number>();
  readonly notes = new Set<string>();
  server: ServerProc;
  /** Resolves when the server is up again after a crash. */
  ready: Promise<void> = Promise.resolve();
  restarts = 0;
  gaveUp = false;
  phase: 'ws' | 'http' | 'openai' = 'ws';
  frames = 0;
  responses = 0;
  readonly answers: Record<string, number> = {};
  /** Frames left unanswered, by kind (valid type, or the invalid frame's rule). */
  readonly unanswered = new Map<string, number>();
  /** The slowest answers that need no model work (errors, session.updated), and the slowest /healthz. */
  readonly slow: { ms: number; what: string }[] = [];
  slowestHealth = 0;
  slowAnswer(ms: number, what: string): void {
    if (ms < 250) return;
    this.slow.push({ ms, what });
    this.slow.sort((a, b) => b.ms - a.ms);
    this.slow.length = Math.min(this.slow.length, 3);
  }
  count(what: string): void {
    this.answers[what] = (this.answers[what] ?? 0) + 1;
  }
  httpSent = 0;
  openaiSent = 0;
  /** Watches that outlive their phase (an unanswered request kept open to see when the server closes it). */
  readonly watching: Promise<void>[] = [];
  stoppedByDeadline = false;
  /** What was sent lately (for the blame when the server dies). */
  readonly recent: Suspect[] = [];
  /** Bumped by every crash: work begun before it belongs to a dead server. */
  epoch = 0;
  private crashSeen = new Set<string>();
  limit = 1 << 20;
  maxContext = 512;
  /** The server's HTTP body limit and default max_tokens (from its environment). */
  readonly bodyLimit: number;
  defaultMaxTokens: number;

  constructor(
    readonly o: FuzzOptions,
    readonly transport: 'ws' | 'uws',
    readonly startedAt: number,
    private readonly sigCounts: Map<string, number>,
  ) {
    const env: NodeJS.ProcessEnv = { ...process.env, ...SERVER_ENV, ...o.env };
    delete env['WEFT_PORT'];
    delete env['WEFT_TRANSPORT'];
    delete env['WEFT_HOST'];
    this.bodyLimit = sizeOf(env['WEFT_MAX_BODY_BYTES'], 4 << 20);
    this.defaultMaxTokens = sizeOf(env['WEFT_MAX_TOKENS'], 256);
    this.server = new ServerProc(o.cli, transport, env, o.startTimeoutMs);
    this.server.onCrash = (code, signal, stderr) => this.crashed(code, signal, stderr);
  }

  get port(): number {
    return this.server.port;
  }

  overDeadline(): boolean {
    // with an OpenAI phase after them, the frames and the raw requests leave it 30% of the time
    const share = this.o.openai > 0 ? { ws: 0.6, http: 0.7, openai: 1 } : { ws: 0.7, http: 1, openai: 1 };
    const budget = share[this.phase] * this.o.deadlineMs;
    if (this.o.deadlineMs > 0 && performance.now() - this.startedAt > budget) {
      this.stoppedByDeadline = true;
      return true;
    }
    return false;
  }

  fail(f: Omit<Failure, 'seed' | 'transport'>): void {
    const sig = (f.signature = `${this.transport} ${f.signature}`);
    const n = (this.sigCounts.get(sig) ?? 0) + 1;
    this.sigCounts.set(sig, n);
    this.bySig.set(sig, (this.bySig.get(sig) ?? 0) + 1);
    if (n <= this.o.maxPerSignature) this.failures.push({ seed: this.o.seed, transport: this.transport, ...f });
    if (n === 1) this.o.log(`FAIL ${this.transport}: ${sig}: ${f.detail.split('\n')[0]}`);
  }

  note(s: string): void {
    this.notes.add(s);
  }

  remember(s: Suspect): void {
    this.recent.push(s);
    if (this.recent.length > 48) this.recent.shift();
  }

  /** The server died without being asked: blame what was in flight, restart, replay the suspects alone. */
  private crashed(code: number | null, signal: NodeJS.Signals | null, stderr: string): void {
    if (this.triaging) return;
    this.epoch++;
    const errLine = /^((?:[A-Z]\w*)?(?:Error|Exception)\b.*)$/m.exec(stderr)?.[1] ?? /FATAL ERROR.*|Segmentation fault.*|Aborted.*/.exec(stderr)?.[0] ?? `exit code ${code}, signal ${signal}`;
    // where it was thrown: the first stack frame outside node's own code
    const errAt = stderr.indexOf(errLine);
    const frame = errAt >= 0 ? /^\s+at (?!.*\(node:)(?!node:)(.*)$/m.exec(stderr.slice(errAt))?.[1] : undefined;
    const where = frame ? ` at ${frame.replace(/\(?(file:\/\/)?[^()\s]*\/([^/()\s]+?):\d+:\d+\)?/, '($2)')}` : '';
    const sigLine = (errLine.slice(0, 120) + where).replace(/\d+/g, 'N');
    // in flight, or answered (or cut off by the dying server) within the last 1.5 s. Replayed first:
    // those whose input the stderr quotes (node prints `input: '//'`), then those cut off by the
    // death (their close came with it), then the newest
    const now = performance.now();
    const quoted = [...stderr.matchAll(/^\s+\w+: '(.{1,200})',?$/gm)].map((m) => m[1]!);
    const rank = (s: Suspect) => (quoted.some((q) => s.input.includes(q.replace(/\\/g, '\\\\'))) ? 2 : 0) + (s.doneAt === undefined || s.doneAt > now - 250 ? 1 : 0);
    const suspects = this.recent
      .filter((s) => s.doneAt === undefined || s.doneAt > now - 1500)
      .sort((a, b) => rank(b) - rank(a) || b.sentAt - a.sentAt)
      .slice(0, 24);
    const signature = `server:crash: ${sigLine}`;
    const first = !this.crashSeen.has(signature);
    this.crashSeen.add(signature);
    const detail = `the server exited (code ${code}, signal ${signal}) during the ${this.phase} phase\nstderr: ${stderr.slice(-1500)}\nin flight or just answered: ${suspects.length ? suspects.map((s) => `${s.what}: ${s.input.slice(0, 200)}`).join('\n  ') : 'nothing'}`;
    this.ready = (async () => {
      this.triaging = true;
      let culprit: Suspect | undefined;
      let culpritHow = '';
      if (this.restarts >= this.o.maxRestarts) {
        this.gaveUp = true;
      } else {
        this.restarts++;
        try {
          await this.server.start();
          // replay each suspect alone (only the first time this crash is seen)
          if (first) {
            const tries: { s: Suspect; how: string; replay: (port: number) => Promise<FrameItem | void> }[] = suspects.map((s) => ({ s, how: 'alone', replay: async (port) => void (await s.replay(port)) }));
            for (const s of suspects) if (s.replayWith) tries.push({ s, how: s.replayWith.what, replay: s.replayWith.replay });
            for (const t of tries) {
              if (!this.server.alive) break;
              const last = await t.replay(this.port).catch(() => undefined);
              await Promise.race([this.server.exited, sleep(500)]);
              if (!this.server.alive) {
                culprit = t.s;
                culpritHow = t.how;
                if (last && last.index !== t.s.index) {
                  // the connection died earlier in the sequence: that frame is the one
                  culprit = { ...t.s, what: `frame ${this.transport}:${t.s.conn}:${last.index}`, index: last.index, input: showFrame(last.data, last.binary), log: last.log };
                  culpritHow = `after the frames before it on its connection, from frame ${this.transport}:${t.s.conn}:${t.s.replayWith?.first ?? '?'}`;
                }
                this.restarts++;
                await this.server.start();
                break;
              }
            }
          }
        } catch (err) {
          this.gaveUp = true;
          this.note(`${this.transport}: the server could not be restarted: ${(err as Error).message.slice(0, 300)}`);
        }
      }
      this.triaging = false;
      this.fail({
        phase: 'server',
        kind: 'crash',
        signature,
        detail: culprit ? `${detail}\nreproduced by ${culprit.what} (${culpritHow}) on a fresh server` : first ? `${detail}\nno suspect reproduced it on a fresh server` : detail,
        input: culprit?.input,
        conn: culprit?.conn,
        index: culprit?.index,
        log: culprit?.log,
      });
    })();
  }
  /** Restarting and replaying suspects: a death then is the replay's, not the run's. */
  private triaging = false;

  /** After an unexpected close or timeout: did the server of `epoch` die? (waits a little for the exit) */
  async lost(epoch: number): Promise<boolean> {
    if (this.epoch !== epoch || !this.server.alive) return true;
    await Promise.race([this.server.exited, sleep(1000)]);
    return this.epoch !== epoch || !this.server.alive;
  }

  async health(when: string): Promise<void> {
    if (!this.server.alive) return;
    const epoch = this.epoch;
    const t = performance.now();
    const r = await httpGet(this.port, '/healthz', this.o.healthTimeoutMs);
    this.slowestHealth = Math.max(this.slowestHealth, performance.now() - t);
    if ('error' in r || r.status !== 200) {
      if (await this.lost(epoch)) return; // the server died meanwhile: that is a crash, reported as one
      this.fail({ phase: 'server', kind: 'health', signature: `server:health: /healthz ${'error' in r ? 'no answer' : `status ${r.status}`}`, detail: `/healthz ${when}: ${'error' in r ? r.error : `status ${r.status} ${r.body.slice(0, 100)}`}` });
    }
  }
}

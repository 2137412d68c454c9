/**
 * Sessions on disk (`--state-dir`), so that a restarted weft takes its conversations back: one
 * file per session, named by the SHA-256 of its resume token (the token itself is never written),
 * holding the transcript, every token, the system prompt, sampling, context policy and an expiry.
 * A write goes to a temporary file that is then renamed over the old one: a crash or a full disk
 * never leaves a half file, and the previous state stays valid. A file that does not parse, is
 * not weft's, or has expired is skipped (and logged with a code), never a crash.
 */
import { createHash } from 'node:crypto';
import { mkdir, readdir, readFile, rename, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import type { ConversationData } from './conversation.js';

export interface SessionRecord {
  weft_session: 1;
  session_id: string;
  token_hash: string;
  /** Epoch ms after which the record is deleted instead of resumed. */
  expires_at: number;
  system: string | null;
  /** The protocol front's sampling settings (its wire form). */
  sampling: Record<string, unknown>;
  context_policy: 'truncate' | 'reject';
  conversation: ConversationData;
  /** The name of the API key that owns the session (absent or null: no API keys). Only that key may resume it. */
  key?: string | null;
}

export const hashToken = (token: string) => createHash('sha256').update(token).digest('hex');

const isObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);
const NAME = /^[0-9a-f]{64}\.json$/;

/** Why `v` is not a session record this weft can take (null: it is one). `vocabSize` bounds token ids. */
export function recordError(v: unknown, vocabSize: number): string | null {
  if (!isObject(v) || v.weft_session !== 1) return 'not a weft session record (version 1)';
  if (typeof v.session_id !== 'string' || typeof v.token_hash !== 'string' || !/^[0-9a-f]{64}$/.test(v.token_hash)) return 'session_id or token_hash missing';
  if (typeof v.expires_at !== 'number') return 'expires_at missing';
  if (v.system !== null && typeof v.system !== 'string') return 'system is not a string';
  if (!isObject(v.sampling)) return 'sampling is not an object';
  if (v.context_policy !== 'truncate' && v.context_policy !== 'reject') return 'context_policy is not truncate or reject';
  if (v.key !== undefined && v.key !== null && typeof v.key !== 'string') return 'key is not a string';
  const c = v.conversation;
  if (!isObject(c) || !Array.isArray(c.messages)) return 'conversation.messages missing';
  for (const m of c.messages) {
    if (!isObject(m) || !['system', 'user', 'assistant'].includes(m.role as string) || typeof m.content !== 'string') return 'a message is malformed';
  }
  if (c.tokens !== null && (!Array.isArray(c.tokens) || c.tokens.some((t) => !Number.isInteger(t) || t < 0 || t >= vocabSize))) return 'conversation.tokens are not token ids of this model';
  if (!Number.isInteger(c.answerStart) || typeof c.lastGenerated !== 'string') return 'conversation.answerStart or lastGenerated missing';
  return null;
}

export class StateStore {
  /** Writes in flight per file: the next waits for the previous, so the last write wins. */
  private readonly writing = new Map<string, Promise<void>>();

  constructor(
    readonly dir: string,
    private readonly log: (line: string) => void,
  ) {}

  /** Every valid, unexpired record (by token hash); the others are logged and skipped, expired ones deleted. */
  async load(vocabSize: number, now = Date.now()): Promise<Map<string, SessionRecord>> {
    await mkdir(this.dir, { recursive: true });
    const out = new Map<string, SessionRecord>();
    for (const name of await readdir(this.dir)) {
      const path = join(this.dir, name);
      if (name.endsWith('.tmp')) {
        await rm(path, { force: true }).catch(() => this.log(`WEFT_STATE_CORRUPT: ${path}: cannot remove an unfinished write (skipped)`));
        continue;
      }
      if (!NAME.test(name)) {
        this.log(`WEFT_STATE_CORRUPT: ${path}: not a session file (skipped)`);
        continue;
      }
      let record: unknown;
      try {
        record = JSON.parse(await readFile(path, 'utf8'));
      } catch (err) {
        this.log(`WEFT_STATE_CORRUPT: ${path}: ${(err as Error).message} (skipped)`);
        continue;
      }
      const why = recordError(record, vocabSize);
      if (why || (record as SessionRecord).token_hash + '.json' !== name) {
        this.log(`WEFT_STATE_CORRUPT: ${path}: ${why ?? 'its name is not its token hash'} (skipped)`);
        continue;
      }
      const r = record as SessionRecord;
      if (r.expires_at <= now) {
        await rm(path, { force: true });
        continue;
      }
      out.set(r.token_hash, r);
    }
    return out;
  }

  /** Writes a record (temporary file, then rename). Failures are logged; the old file stays. */
  save(record: SessionRecord): Promise<void> {
    const path = join(this.dir, record.token_hash + '.json');
    const text = JSON.stringify(record);
    const prev = this.writing.get(path) ?? Promise.resolve();
    const next = prev.then(async () => {
      const tmp = `${path}.${process.pid}.tmp`;
      try {
        await writeFile(tmp, text);
        await rename(tmp, path);
      } catch (err) {
        this.log(`WEFT_STATE_WRITE: ${path}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}; the previous state stays`);
        await rm(tmp, { force: true }).catch(() => undefined);
      }
    });
    this.writing.set(path, next);
    void next.finally(() => {
      if (this.writing.get(path) === next) this.writing.delete(path);
    });
    return next;
  }

  remove(tokenHash: string): Promise<void> {
    const path = join(this.dir, tokenHash + '.json');
    const prev = this.writing.get(path) ?? Promise.resolve();
    const next = prev.then(() => rm(path, { force: true })).catch(() => undefined);
    this.writing.set(path, next);
    return next;
  }

  /** Resolves when every write so far has landed. */
  async flush(): Promise<void> {
    await Promise.all([...this.writing.values()]);
  }
}

/**
 * Drain and restart without losing a conversation (issue 11, section 5): a real `weft serve` with
 * --state-dir gets SIGTERM mid-answer, then kill -9; each time a new process resumes the session,
 * and its answers equal those of a server that never stopped (greedy, same conversation).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, beforeAll, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';
import { StateStore, hashToken } from '../src/session/state-store.js';
import { Client } from './helpers/ws-client.js';

const CLI = 'dist/src/cli/main.js';
const dir = mkdtempSync(join(tmpdir(), 'weft-state-'));
let engine: Engine;
let ref: Gateway;
let refUrl: string;
beforeAll(async () => {
  engine = await Engine.load(join(import.meta.dirname, '..', 'models', 'default'), { threads: 1, contexts: 1, kvMemoryBytes: 32 << 20 });
  ref = new Gateway({ port: 0 });
  ref.attach(engine);
  refUrl = (await ref.listen()).url.replace('http', 'ws') + '/v1/ws';
});
afterAll(async () => {
  await ref.close();
  engine.dispose();
  rmSync(dir, { recursive: true, force: true });
});

interface Server {
  child: ChildProcess;
  url: string;
  out: () => string;
  err: () => string;
  exited: Promise<number | null>;
}

async function serve(stateDir: string): Promise<Server> {
  const child = spawn(process.execPath, [CLI, 'serve', '--port', '0', '--threads', '1', '--state-dir', stateDir, '--drain-timeout', '10'], { env: { ...process.env, WEFT_KV_MEMORY: '32MiB' } });
  let out = '';
  let err = '';
  child.stdout!.on('data', (d) => (out += d));
  child.stderr!.on('data', (d) => (err += d));
  const exited = new Promise<number | null>((r) => child.on('exit', (code) => r(code)));
  const deadline = Date.now() + 20_000;
  while (!out.includes('weft ready') && Date.now() < deadline) await new Promise((r) => setTimeout(r, 50));
  const url = /http:\/\/[^ ]+/.exec(out)![0].replace('http', 'ws') + '/v1/ws';
  return { child, url, out: () => out, err: () => err, exited };
}

const GREEDY = { temperature: 0, max_tokens: 48 };

test('SIGTERM mid-answer, restart, resume: the next answers equal a server that never stopped; kill -9 keeps the finished turns', async () => {
  const r = await Client.open(refUrl);
  await r.next((e) => e.type === 'session.created');
  let a = await serve(dir);
  let c = await Client.open(a.url);
  const created = await c.next((e) => e.type === 'session.created');
  const token = created.resume_token as string;

  const t1 = await c.turn('Who made the heaven and the earth?', GREEDY);
  expect(t1.text).toBe((await r.turn('Who made the heaven and the earth?', GREEDY)).text);

  // SIGTERM while the second answer streams: the drain lets it finish, then 1001
  c.send({ type: 'message.create', content: 'Tell me of Moses.', sampling: GREEDY });
  const id = (await c.next((e) => e.type === 'response.created')).response_id;
  let text2 = (await c.next((e) => e.type === 'response.delta')).text;
  a.child.kill('SIGTERM');
  for (;;) {
    const e = await c.next((x) => x.response_id === id);
    if (e.type === 'response.delta') text2 += e.text;
    else {
      expect(e.type).toBe('response.done');
      break;
    }
  }
  await c.waitClosed();
  expect(c.closeCode).toBe(1001);
  expect(await a.exited).toBe(0);
  expect(text2).toBe((await r.turn('Tell me of Moses.', GREEDY)).text);
  expect(readdirSync(dir)).toEqual([hashToken(token) + '.json']);
  expect(readFileSync(join(dir, hashToken(token) + '.json'), 'utf8')).not.toContain(token); // the token itself is never written

  // a corrupt file, a foreign one and a record of another model are skipped with a code, not a crash
  writeFileSync(join(dir, 'notes.txt'), 'hello');
  writeFileSync(join(dir, 'a'.repeat(64) + '.json'), '{"weft_session": 1, "truncated');
  const foreign = JSON.parse(readFileSync(join(dir, hashToken(token) + '.json'), 'utf8'));
  foreign.token_hash = 'b'.repeat(64);
  foreign.conversation.tokens = [999_999_999];
  writeFileSync(join(dir, 'b'.repeat(64) + '.json'), JSON.stringify(foreign));

  a = await serve(dir);
  expect(a.out()).toContain('1 saved sessions resumable');
  expect(a.err().match(/WEFT_STATE_CORRUPT/g)?.length).toBe(3);
  c = await Client.open(`${a.url}?resume=${encodeURIComponent(token)}`);
  expect(await c.next()).toMatchObject({ type: 'session.resumed', session: { id: created.session.id }, response: null });
  const t3 = await c.turn('And what did he say unto them?', GREEDY);
  expect(t3.done.usage.cached_tokens).toBe(0); // the KV is rebuilt from the saved tokens
  expect(t3.text).toBe((await r.turn('And what did he say unto them?', GREEDY)).text);

  // kill -9 in the middle of the fourth answer: the session as of the third survives
  c.send({ type: 'message.create', content: 'Speak of Aaron.', sampling: GREEDY });
  await c.next((e) => e.type === 'response.created');
  a.child.kill('SIGKILL');
  await a.exited;
  a = await serve(dir);
  c = await Client.open(`${a.url}?resume=${encodeURIComponent(token)}`);
  expect(await c.next()).toMatchObject({ type: 'session.resumed', session: { id: created.session.id } });
  const t5 = await c.turn('Who was the son of David?', GREEDY);
  expect(t5.text).toBe((await r.turn('Who was the son of David?', GREEDY)).text);

  // session.close forgets the saved session
  c.send({ type: 'session.close' });
  await c.waitClosed();
  await new Promise((res) => setTimeout(res, 200));
  expect(readdirSync(dir).filter((f) => f.startsWith(hashToken(token)))).toEqual([]);
  a.child.kill('SIGTERM');
  await a.exited;
  r.ws.close();
}, 120_000);

test('a write that fails (a full disk) leaves the previous state valid and is logged', async () => {
  const d = mkdtempSync(join(tmpdir(), 'weft-state-'));
  const lines: string[] = [];
  const store = new StateStore(d, (l) => lines.push(l));
  const rec = (system: string) => ({
    weft_session: 1 as const, session_id: 's', token_hash: 'c'.repeat(64), expires_at: Date.now() + 60_000, system, sampling: {}, context_policy: 'truncate' as const,
    conversation: { messages: [], tokens: null, answerStart: 0, lastGenerated: '' },
  });
  await store.save(rec('first'));
  // the temporary file's path is taken by a directory: the write fails as on a full disk
  mkdirSync(join(d, 'c'.repeat(64) + `.json.${process.pid}.tmp`));
  await store.save(rec('second'));
  expect(lines.join('\n')).toMatch(/WEFT_STATE_WRITE: .* the previous state stays/);
  const loaded = await new StateStore(d, () => undefined).load(1000);
  expect(loaded.get('c'.repeat(64))?.system).toBe('first');
  rmSync(d, { recursive: true, force: true });
});

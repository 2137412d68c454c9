/**
 * The chat page (`GET /`, public/): its files over HTTP on both transports (an allow-list read at
 * startup, the CSP header, no path that reaches the disk), then the page itself in a real browser
 * (Debian's chromium, headless, driven by puppeteer-core) against an in-process gateway on the
 * embedded default model: a streamed answer with its stats, multi-turn with a system prompt, Stop
 * (button and Escape), a server error shown with its code, a reconnect mid-answer, the API-key
 * field. Screenshots go to test-output/.
 *
 * chromium: installed with apt-get when missing and running as root (CI); otherwise this part is
 * skipped with the reason (CHROMIUM_PATH points at another binary).
 */
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { request, type IncomingMessage } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import puppeteer, { type Browser, type Page } from 'puppeteer-core';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';
import { ApiKeys } from '../src/gateway/api-keys.js';
import { PAGE_CSP, StaticFiles } from '../src/gateway/static.js';

const ROOT = join(import.meta.dirname, '..');
const OUT = join(ROOT, 'test-output');

/** A raw HTTP request: the target is sent exactly as given (fetch would resolve `..`). */
function raw(port: number, path: string, method = 'GET'): Promise<{ status: number; headers: IncomingMessage['headers']; body: string }> {
  return new Promise((resolve, reject) => {
    const req = request({ host: '127.0.0.1', port, path, method }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body }));
    });
    req.on('error', reject);
    req.end();
  });
}

describe('the chat page files', () => {
  test('an allow-list made at startup: plain names of known types, nothing added later, nothing above the directories', () => {
    const dir = mkdtempSync(join(tmpdir(), 'weft-static-'));
    try {
      const pub = join(dir, 'public');
      const cli = join(dir, 'client');
      mkdirSync(join(pub, 'sub'), { recursive: true });
      mkdirSync(cli);
      writeFileSync(join(pub, 'index.html'), '<!doctype html>');
      writeFileSync(join(pub, 'app.js'), '1');
      writeFileSync(join(pub, '.env'), 'SECRET=1');
      writeFileSync(join(pub, 'notes.md'), '# no');
      writeFileSync(join(pub, 'sub', 'x.js'), '2');
      writeFileSync(join(cli, 'index.js'), '3');
      writeFileSync(join(cli, 'index.js.map'), '{}');
      writeFileSync(join(cli, 'index.d.ts'), 'export {}');
      writeFileSync(join(dir, 'outside.js'), 'secret');
      symlinkSync(join(dir, 'outside.js'), join(pub, 'link.js'));
      const s = new StaticFiles({ publicDir: pub, clientDir: cli });
      expect(s.paths.sort()).toEqual(['/', '/app.js', '/client/index.js', '/index.html']);
      expect(s.get('/')).toMatchObject({ status: 200, type: 'text/html; charset=utf-8', body: '<!doctype html>', headers: { 'content-security-policy': PAGE_CSP } });
      expect(s.get('/client/index.js')).toMatchObject({ type: 'text/javascript; charset=utf-8', body: '3' });
      expect(s.get('/app.js')!.headers['content-security-policy']).toBeUndefined();
      writeFileSync(join(pub, 'late.js'), '4');
      for (const p of ['/late.js', '/link.js', '/.env', '/sub/x.js', '/notes.md', '/client/index.js.map', '/client/../app.js', '/./app.js', '//app.js', '/APP.JS']) expect(s.get(p), p).toBeUndefined();
      const none = new StaticFiles({ publicDir: join(dir, 'nope'), clientDir: join(dir, 'nope2') });
      expect(none.paths).toEqual([]);
      expect(none.missing).toHaveLength(2);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  test.each(['ws', 'uws'] as const)('served over %s: types, the CSP, HEAD, and 404 for everything else', async (transport) => {
    expect(existsSync(join(ROOT, 'dist/src/client/index.js')), 'the SDK browser build is missing: run npx tsc -p tsconfig.json').toBe(true);
    const gw = new Gateway({ transport, port: 0 });
    const { port } = await gw.listen();
    try {
      const page = await raw(port, '/');
      expect(page.status).toBe(200);
      expect(page.headers['content-type']).toBe('text/html; charset=utf-8');
      expect(page.headers['content-security-policy']).toBe("default-src 'self'; connect-src 'self' ws: wss:");
      expect(page.headers['x-content-type-options']).toBe('nosniff');
      expect(page.body).toContain('<script type="module" src="/app.js"></script>');
      expect((await raw(port, '/index.html')).body).toBe(page.body);
      for (const [path, type] of [['/app.js', 'text/javascript'], ['/style.css', 'text/css'], ['/client/index.js', 'text/javascript'], ['/client/client.js', 'text/javascript'], ['/client/protocol.js', 'text/javascript']]) {
        const r = await raw(port, path!);
        expect(r.status, path).toBe(200);
        expect(r.headers['content-type'], path).toBe(`${type}; charset=utf-8`);
        expect(r.body.length, path).toBeGreaterThan(0);
      }
      expect((await raw(port, '/client/index.js')).body).toContain("from './client.js'");
      const head = await raw(port, '/', 'HEAD');
      expect(head.status).toBe(200);
      expect(head.headers['content-security-policy']).toBe(PAGE_CSP);
      expect(head.body).toBe('');
      expect((await raw(port, '/', 'POST')).status).toBe(405);
      // the gateway's own routes keep precedence
      expect((await raw(port, '/healthz')).body).toBe('ok\n');
      expect((await raw(port, '/v1/ws')).status).toBe(426);
      for (const p of ['/../package.json', '/client/../app.js', '/%2e%2e/package.json', '/client/%2e%2e/%2e%2e/package.json', '/public/index.html', '/client/', '/client', '/client/index.js.map', '/client/index.d.ts', '/client/..%2fserver.js', '/src/gateway/server.ts', '/package.json', '/app.js/', '/.git/config', '/\\app.js']) {
        const r = await raw(port, p);
        expect(r.status, p).toBe(404);
        expect(r.body, p).toBe('not found\n');
      }
    } finally {
      await gw.close();
    }
  });
});

/** chromium's path: CHROMIUM_PATH, or Debian's (installed with apt-get when missing and root). */
function chromium(): { path: string } | { skip: string } {
  const find = () => [process.env.CHROMIUM_PATH, '/usr/bin/chromium', '/usr/bin/chromium-browser'].find((p): p is string => !!p && existsSync(p));
  const found = find();
  if (found) return { path: found };
  if (process.getuid?.() !== 0 || !existsSync('/usr/bin/apt-get')) {
    return { skip: 'chromium is not installed and this is not root on Debian to install it (apt-get install -y chromium, or set CHROMIUM_PATH)' };
  }
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'chromium'], { env, encoding: 'utf8', timeout: 600_000 });
  let r = install();
  if (r.status !== 0) {
    spawnSync('apt-get', ['update'], { env, encoding: 'utf8', timeout: 300_000 });
    r = install();
  }
  const path = find();
  if (r.status !== 0 || !path) throw new Error(`apt-get install chromium failed (${r.status}): ${(r.stderr || r.stdout || '').slice(-2000)}`);
  return { path };
}

const browserPath = chromium();
const skipReason = 'skip' in browserPath ? browserPath.skip : '';
if (skipReason) console.warn(`test/page.test.ts: the browser tests are skipped: ${skipReason}`);

describe.skipIf(skipReason !== '')(`the chat page in chromium${skipReason ? ` (skipped: ${skipReason})` : ''}`, () => {
  let engine: Engine;
  let gw: Gateway;
  let base: string;
  let browser: Browser | undefined;
  let page: Page;
  /** What went wrong in the page: uncaught errors, console errors (a CSP violation is one). */
  const pageErrors: string[] = [];
  const upgrades: string[] = [];

  beforeAll(async () => {
    if (!existsSync(join(ROOT, 'dist/src/client/index.js'))) throw new Error('the SDK browser build is missing: run npx tsc -p tsconfig.json (npm test does)');
    mkdirSync(OUT, { recursive: true });
    engine = await Engine.load(join(ROOT, 'models', 'default'), { threads: 2, contexts: 2, kvMemoryBytes: 64 << 20 });
    // answers run to max_tokens (EOS ignored, no template stop string): long ones to stop, exact counts to check
    gw = new Gateway({ port: 0, sessionSampling: { ignoreEos: true } });
    gw.attach(engine);
    gw.format = Object.assign(Object.create(Object.getPrototypeOf(gw.format)), gw.format, { stopStrings: [] });
    base = (await gw.listen()).url;
    (gw as unknown as { transport: { http: import('node:http').Server } }).transport.http.on('upgrade', (req: IncomingMessage) => upgrades.push(req.url ?? ''));
    // --no-sandbox: CI runs as root, where chromium's sandbox cannot start
    browser = await puppeteer.launch({ executablePath: (browserPath as { path: string }).path, headless: true, args: ['--no-sandbox', '--disable-dev-shm-usage', '--disable-gpu'] });
    page = await browser.newPage();
    page.on('pageerror', (e) => pageErrors.push(`pageerror: ${(e as Error).message ?? String(e)}`));
    page.on('console', (m) => {
      if (m.type() === 'error') pageErrors.push(`console: ${m.text()}`);
    });
    await page.setViewport({ width: 1000, height: 900 });
    await page.goto(base + '/');
    await waitFor(() => document.getElementById('status')!.dataset.state === 'ready');
  });
  afterAll(async () => {
    await browser?.close();
    await gw?.close();
    engine?.dispose();
  });

  const waitFor = (fn: (arg: number) => boolean, arg = 0) => page.waitForFunction(fn, { timeout: 20_000, polling: 25 }, arg);
  const lastAnswer = () => page.$$eval('.msg.assistant', (els) => {
    const el = els[els.length - 1]!;
    return { text: el.querySelector('.text')!.textContent!, stats: el.querySelector('.stats')!.textContent!, finish: (el as HTMLElement).dataset.finish ?? '' };
  });
  const answers = () => page.$$eval('.msg.assistant', (els) => els.length);
  const setField = async (sel: string, value: string) => {
    await page.$eval(sel, (el) => ((el as HTMLInputElement).value = ''));
    if (value) await page.type(sel, value);
  };
  const waitAnswer = (n: number) => waitFor((k: number) => {
    const els = document.querySelectorAll<HTMLElement>('.msg.assistant');
    return els.length === k && !!els[k - 1]!.dataset.finish;
  }, n);
  /** What the person sees: the viewport, scrolled to the latest message (the header and composer are sticky). */
  const screenshot = async (name: string) => {
    await page.evaluate(() => window.scrollTo(0, document.documentElement.scrollHeight));
    await page.screenshot({ path: join(OUT, name) });
  };
  /** The one session the page has on the server. */
  const serverSession = () => {
    const live = [...gw.connections].map((c) => c.runner?.session).filter((s) => s !== undefined);
    expect(live).toHaveLength(1);
    return live[0]!;
  };

  test('a message streams into the answer area (Enter sends, Shift+Enter is a newline), then the stats; a second turn with a system prompt', async () => {
    // accessible: every field labelled, a form with a submit button, a live answer area
    expect(await page.$$eval('input, textarea', (els) => els.filter((e) => (e as HTMLInputElement).labels?.length === 0).map((e) => e.id))).toEqual([]);
    expect(await page.$eval('#chat-form button[type=submit]', (b) => b.textContent)).toBe('Send');
    expect(await page.$eval('#log', (e) => e.getAttribute('aria-live'))).toBe('polite');
    expect(await page.$eval('#status', (e) => e.textContent)).toBe('connected · default');

    await page.click('#settings summary');
    await setField('#max-tokens', '40');
    // the answer area's growth, sampled at every DOM change
    await page.evaluate(() => {
      const w = window as unknown as { growth: [number, number, boolean][] };
      w.growth = [];
      new MutationObserver(() => {
        const els = document.querySelectorAll('.msg.assistant');
        const last = els[els.length - 1];
        if (last) w.growth.push([performance.now(), last.querySelector('.text')!.textContent!.length, !!(last as HTMLElement).dataset.finish]);
      }).observe(document.getElementById('log')!, { subtree: true, childList: true, characterData: true, attributes: true });
    });
    await page.type('#message', 'Who made the heaven and the earth?');
    await page.keyboard.down('Shift');
    await page.keyboard.press('Enter');
    await page.keyboard.up('Shift');
    await page.type('#message', 'Tell me.');
    await page.keyboard.press('Enter');
    await waitAnswer(1);
    const user = await page.$eval('.msg.user .text', (e) => e.textContent);
    expect(user).toBe('Who made the heaven and the earth?\nTell me.');
    const a1 = await lastAnswer();
    expect(a1.finish).toBe('length');
    expect(a1.stats).toMatch(/^TTFT \d+ ms · \d+\.\d tok\/s · 40 tokens · max tokens reached$/);
    expect(a1.text.length).toBeGreaterThan(20);
    // streamed: the text grew in several steps, over time, before the answer was done
    const growth = await page.evaluate(() => (window as unknown as { growth: [number, number, boolean][] }).growth);
    const streaming = growth.filter(([, len, done]) => len > 0 && !done);
    const lengths = [...new Set(streaming.map(([, len]) => len))];
    expect(lengths.length).toBeGreaterThanOrEqual(5);
    expect(lengths).toEqual([...lengths].sort((a, b) => a - b));
    expect(streaming[streaming.length - 1]![0] - streaming[0]![0]).toBeGreaterThan(20);
    expect(await page.$eval('#message', (e) => (e as HTMLTextAreaElement).value)).toBe('');
    expect(await page.$eval('#error', (e) => (e as HTMLElement).hidden)).toBe(true);

    // turn two, with a system prompt (applied with session.update before the message)
    await setField('#system', 'You are a scribe.');
    await setField('#max-tokens', '12');
    await page.type('#message', 'And what did he say unto them?');
    await page.click('#send');
    await waitAnswer(2);
    expect((await lastAnswer()).stats).toMatch(/· 12 tokens · max tokens reached$/);
    const conv = serverSession().conversation;
    expect(conv.system).toBe('You are a scribe.');
    expect(conv.messages.filter((m) => m.role !== 'system').map((m) => m.role)).toEqual(['user', 'assistant', 'user', 'assistant']);
    expect(conv.messages.filter((m) => m.role === 'assistant').map((m) => m.content.trimStart())).toEqual(await page.$$eval('.msg.assistant .text', (els) => els.map((e) => e.textContent)));
  });

  test('Stop (and Escape) ends a long answer: it stops growing and says so', async () => {
    await setField('#max-tokens', '400');
    const n = await answers();
    await page.type('#message', 'Tell me of Moses.');
    await page.keyboard.press('Enter');
    await waitFor((k: number) => {
      const els = document.querySelectorAll('.msg.assistant');
      return els.length === k && els[k - 1]!.querySelector('.text')!.textContent!.length > 30;
    }, n + 1);
    expect(await page.$eval('#stop', (b) => (b as HTMLButtonElement).disabled)).toBe(false);
    expect(await page.$eval('#send', (b) => (b as HTMLButtonElement).disabled)).toBe(true);
    await page.click('#stop');
    await waitAnswer(n + 1);
    const stopped = await lastAnswer();
    expect(stopped.finish).toBe('cancelled');
    const tokens = Number(/· (\d+) tokens · stopped$/.exec(stopped.stats)?.[1]);
    expect(tokens).toBeGreaterThan(0);
    expect(tokens).toBeLessThan(300);
    await new Promise((r) => setTimeout(r, 400));
    expect((await lastAnswer()).text).toBe(stopped.text);
    expect(await page.$eval('#stop', (b) => (b as HTMLButtonElement).disabled)).toBe(true);
    expect(await page.$eval('#send', (b) => (b as HTMLButtonElement).disabled)).toBe(false);

    // Escape in the message field stops too
    await page.type('#message', 'Tell me of Aaron.');
    await page.keyboard.press('Enter');
    await waitFor((k: number) => (document.querySelectorAll('.msg.assistant')[k - 1]?.querySelector('.text')?.textContent?.length ?? 0) > 10, n + 2);
    await page.keyboard.press('Escape');
    await waitAnswer(n + 2);
    expect((await lastAnswer()).finish).toBe('cancelled');
    expect(await page.$eval('#error', (e) => (e as HTMLElement).hidden)).toBe(true);
  });

  test("the server's error is shown with its code; the message is kept to send again", async () => {
    await setField('#max-tokens', '16');
    await setField('#temperature', '-1');
    const n = await answers();
    await page.type('#message', 'Who was the son of David?');
    await page.keyboard.press('Enter');
    await waitFor(() => !document.getElementById('error')!.hidden);
    const error = await page.$eval('#error', (e) => ({ text: e.textContent!, code: (e as HTMLElement).dataset.code, role: e.getAttribute('role') }));
    expect(error.code).toBe('WEFT_BAD_ARGUMENT');
    expect(error.role).toBe('alert');
    expect(error.text).toMatch(/^WEFT_BAD_ARGUMENT: .*temperature/);
    await waitAnswer(n + 1);
    expect((await lastAnswer()).stats).toBe('failed: WEFT_BAD_ARGUMENT');
    expect(await page.$$eval('.msg.user', (els) => els[els.length - 1]!.classList.contains('unsent'))).toBe(true);
    expect(await page.$eval('#message', (e) => (e as HTMLTextAreaElement).value)).toBe('Who was the son of David?');
    await screenshot('page.png');

    // fixed: the same message goes through and the error line goes away
    await setField('#temperature', '');
    await page.focus('#message');
    await page.keyboard.press('Enter');
    await waitAnswer(n + 2);
    expect((await lastAnswer()).finish).toBe('length');
    expect(await page.$eval('#error', (e) => (e as HTMLElement).hidden)).toBe(true);
  });

  test('a connection cut mid-answer: "reconnecting…", then the answer goes on to its end (resume)', async () => {
    await setField('#max-tokens', '96');
    await page.evaluate(() => {
      const w = window as unknown as { statuses: string[] };
      w.statuses = [];
      const el = document.getElementById('status')!;
      new MutationObserver(() => w.statuses.push(el.textContent!)).observe(el, { childList: true, characterData: true, subtree: true });
    });
    const n = await answers();
    await page.type('#message', 'Tell me of Joseph.');
    await page.keyboard.press('Enter');
    await waitFor((k: number) => (document.querySelectorAll('.msg.assistant')[k - 1]?.querySelector('.text')?.textContent?.length ?? 0) > 10, n + 1);
    const before = (await lastAnswer()).text;
    // a TCP cut: the server drops the socket without a close frame
    for (const ws of (gw as unknown as { transport: { wss: { clients: Set<{ terminate(): void }> } } }).transport.wss.clients) ws.terminate();
    await waitAnswer(n + 1);
    const statuses = await page.evaluate(() => (window as unknown as { statuses: string[] }).statuses);
    expect(statuses.some((s) => s.startsWith('reconnecting…'))).toBe(true);
    expect(statuses[statuses.length - 1]).toBe('connected · default');
    const a = await lastAnswer();
    expect(a.finish).toBe('length');
    expect(a.stats).toMatch(/· 96 tokens · max tokens reached$/);
    expect(a.text.startsWith(before)).toBe(true);
    // the page shows exactly the server's answer, and the conversation is the same session's
    const conv = serverSession().conversation;
    expect(a.text).toBe(conv.messages[conv.messages.length - 1]!.content.trimStart());
    expect(upgrades.filter((u) => u.includes('resume=')).length).toBeGreaterThan(0);
    expect(await page.$eval('#error', (e) => (e as HTMLElement).hidden)).toBe(true);
  });

  test('a server with API keys: the key field appears, a wrong key is said so, the right one goes in the WebSocket subprotocol', async () => {
    const keyed = new Gateway({ port: 0, apiKeys: new ApiKeys({ keys: [{ name: 'page', key: 'k-page-123' }] }) });
    keyed.attach(engine);
    const url = (await keyed.listen()).url;
    const protocols: string[] = [];
    (keyed as unknown as { transport: { http: import('node:http').Server } }).transport.http.on('upgrade', (req: IncomingMessage) => protocols.push(String(req.headers['sec-websocket-protocol'] ?? '')));
    const errorsBefore = pageErrors.length;
    try {
      await page.goto(url + '/');
      await waitFor(() => document.getElementById('status')!.dataset.state === 'needs-key');
      expect(await page.$eval('#key-form', (e) => (e as HTMLElement).hidden)).toBe(false);
      expect(await page.$eval('#send', (b) => (b as HTMLButtonElement).disabled)).toBe(true);
      expect(await page.evaluate(() => document.activeElement?.id)).toBe('api-key');
      expect(protocols).toEqual(['']);
      await page.type('#api-key', 'k-wrong-00');
      await page.keyboard.press('Enter');
      await waitFor(() => document.getElementById('status')!.dataset.state === 'needs-key' && !document.getElementById('error')!.hidden);
      expect(await page.$eval('#error', (e) => e.textContent)).toContain('WEFT_UNAUTHORIZED');
      await page.type('#api-key', 'k-page-123');
      await page.keyboard.press('Enter');
      await waitFor(() => document.getElementById('status')!.dataset.state === 'ready');
      expect(protocols[protocols.length - 1]).toBe('openai-insecure-api-key.k-page-123');
      expect(keyed.keys!.tenants[0]!.active).toBe(1);
      expect(await page.$eval('#key-form', (e) => (e as HTMLElement).hidden)).toBe(true);
    } finally {
      // the refused upgrades and the 401 of the key probe are the browser's console errors of this test, not the page's
      pageErrors.splice(errorsBefore);
      await page.goto(base + '/');
      await waitFor(() => document.getElementById('status')!.dataset.state === 'ready');
      pageErrors.splice(errorsBefore);
      await keyed.close();
    }
  });

  test('readable on a phone, and nothing went wrong in the page (no uncaught error, no CSP violation)', async () => {
    await page.setViewport({ width: 390, height: 844, isMobile: true, hasTouch: true });
    await page.click('#settings summary');
    await setField('#max-tokens', '48');
    await page.type('#message', 'Who made the heaven and the earth?');
    await page.keyboard.press('Enter');
    await waitAnswer(1);
    expect(await page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth)).toBe(true);
    await screenshot('page-phone.png');
    expect(pageErrors).toEqual([]);
  });
});

/**
 * deploy/nginx/ (src/cluster/nginx-conf.ts, issue 15 section 1): the generated configuration, the
 * shipped copies of it, and a real NGINX (Debian's `nginx` package; installed with apt-get here
 * when missing and we are root) on loopback in front of three weft gateways in this process:
 * least-connections balancing, a resume routed to the instance its token names and falling over
 * when that one is down, SSE through the proxy, the body limit, API keys and TLS.
 */
import { execFile, spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { request as httpsRequest } from 'node:https';
import { connect, createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { delimiter, join } from 'node:path';
import { promisify } from 'node:util';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import WebSocket from 'ws';
import { nginxConf, nginxConfCommand, type NginxInstance } from '../src/cluster/nginx-conf.js';
import { Nginx } from './helpers/nginx.js';
import { Engine } from '../src/engine/engine.js';
import { ApiKeys } from '../src/gateway/api-keys.js';
import { Gateway } from '../src/gateway/server.js';
import { makeTls, type TestTls } from './helpers/tls.js';
import { Client, type Ev } from './helpers/ws-client.js';

const ROOT = join(import.meta.dirname, '..');
const instances = (host: (i: number) => string): NginxInstance[] => [0, 1, 2].map((i) => ({ id: `weft-${i}`, address: `${host(i)}:8080` }));
/** The StatefulSet's pods behind their per-pod Services (deploy/k8s/weft.yaml). */
const K8S = instances((i) => `weft-${i}.default.svc.cluster.local`);
/** The compose services (deploy/compose/docker-compose.yml). */
const COMPOSE = instances((i) => `weft-${i}`);
const regenerate = (list: NginxInstance[], file: string) => `node dist/src/cli/main.js nginx-conf ${list.map((i) => `--instance ${i.id}=${i.address}`).join(' ')} > ${file}`;

/** The block scalar `KEY: |` of a YAML file, de-indented (enough YAML for one ConfigMap entry). */
function yamlBlock(text: string, key: string): string {
  const lines = text.split('\n');
  const start = lines.findIndex((l) => l.trimEnd() === `${key}: |` || l.trim() === `${key}: |`);
  if (start < 0) throw new Error(`no "${key}: |" block`);
  const indent = /^ */.exec(lines[start + 1]!)![0].length;
  const body: string[] = [];
  for (const l of lines.slice(start + 1)) {
    if (l.trim() !== '' && /^ */.exec(l)![0].length < indent) break;
    body.push(l.slice(indent));
  }
  return body.join('\n').replace(/\n*$/, '\n');
}

describe('the generated configuration', () => {
  test('deploy/nginx/weft.conf, the k8s ConfigMap and deploy/compose/nginx.conf are the generator\'s output', () => {
    const k8s = nginxConf({ instances: K8S });
    expect(readFileSync(join(ROOT, 'deploy/nginx/weft.conf'), 'utf8'), `regenerate: ${regenerate(K8S, 'deploy/nginx/weft.conf')}`).toBe(k8s);
    expect(yamlBlock(readFileSync(join(ROOT, 'deploy/k8s/nginx.yaml'), 'utf8'), 'weft.conf'), 'deploy/k8s/nginx.yaml: the ConfigMap holds deploy/nginx/weft.conf, indented by 4').toBe(k8s);
    expect(readFileSync(join(ROOT, 'deploy/compose/nginx.conf'), 'utf8'), `regenerate: ${regenerate(COMPOSE, 'deploy/compose/nginx.conf')}`).toBe(nginxConf({ instances: COMPOSE }));
    // the manifests name the same instances and ports as the conf
    const sts = readFileSync(join(ROOT, 'deploy/k8s/weft.yaml'), 'utf8');
    expect(sts).toMatch(/replicas: 3\n/);
    for (const i of K8S) expect(sts, `a Service for ${i.id}`).toContain(`statefulset.kubernetes.io/pod-name: ${i.id} }`);
    expect(sts).toContain('fieldPath: metadata.name');
    const compose = readFileSync(join(ROOT, 'deploy/compose/docker-compose.yml'), 'utf8');
    for (const i of COMPOSE) expect(compose, `compose service ${i.id}`).toContain(`  ${i.id}:\n    <<: *weft\n    environment: { <<: *weft-env, WEFT_INSTANCE_ID: ${i.id} }`);
  });

  test('the rule: a map from the token prefix to one backup upstream per instance, a least_conn pool', () => {
    const conf = nginxConf({ instances: [{ id: 'a', address: '10.0.0.1:8080' }, { id: 'A', address: '10.0.0.2:8080' }], maxBodyBytes: 1 << 20, listen: 8443, tls: { cert: '/c.pem', key: '/k.pem' } });
    // ids are case-sensitive (map strings and upstream names are not): regexes and numbered upstreams
    expect(conf).toContain('    ~^a\\. weft_instance_0;\n    ~^A\\. weft_instance_1;\n');
    expect(conf).toMatch(/upstream weft_instance_1 \{\n {4}zone weft_instance_1 64k;\n {4}least_conn;\n {4}server 10\.0\.0\.2:8080 max_fails=1 fail_timeout=10s; {2}# A\n {4}server 10\.0\.0\.1:8080 max_fails=1 fail_timeout=10s backup; {2}# a\n\}/);
    expect(conf).toMatch(/upstream weft_pool \{\n {4}zone weft_pool 64k;\n {4}least_conn;\n/);
    expect(conf).toContain('listen 8443 ssl;');
    expect(conf).toContain('client_max_body_size 1m;');
    expect(conf).toContain('proxy_next_upstream error timeout http_503;');
    expect(conf).not.toMatch(/proxy_next_upstream [^;]*non_idempotent/);
    expect(conf).not.toMatch(/\$request\b|\$request_uri|\$args/); // no resume token in the access log
  });

  test('weft nginx-conf: the same output; bad instances, addresses, listen values and paths are refused', async () => {
    const argv = ['--instance', 'w1=127.0.0.1:9001', '--instance=w2=[::1]:9002,w3=h3.local:9003', '--listen', '127.0.0.1:8080', '--max-body-bytes', '2MiB'];
    const want = nginxConf({ instances: [{ id: 'w1', address: '127.0.0.1:9001' }, { id: 'w2', address: '[::1]:9002' }, { id: 'w3', address: 'h3.local:9003' }], listen: '127.0.0.1:8080', maxBodyBytes: 2 << 20 });
    expect(nginxConfCommand(argv).replace(/#.*\n/g, '')).toBe(want.replace(/#.*\n/g, ''));
    const { stdout } = await promisify(execFile)(process.execPath, [join(ROOT, 'dist/src/cli/main.js'), 'nginx-conf', ...K8S.flatMap((i) => ['--instance', `${i.id}=${i.address}`])]);
    expect(stdout).toBe(nginxConf({ instances: K8S }));

    const refused: [NginxConfOptions, RegExp][] = [
      [{ instances: [] }, /at least one instance/],
      [{ instances: [{ id: 'a.b', address: 'h:1' }] }, /instance id "a\.b" must be/],
      [{ instances: [{ id: 'x'.repeat(65), address: 'h:1' }] }, /must be 1-64/],
      [{ instances: [{ id: 'a', address: 'h' }] }, /HOST:PORT/],
      [{ instances: [{ id: 'a', address: 'h:1; }' }] }, /HOST:PORT/],
      [{ instances: [{ id: 'a', address: 'h:70000' }] }, /not between 1 and 65535/],
      [{ instances: [{ id: 'a', address: 'h:1' }, { id: 'a', address: 'h:2' }] }, /given twice/],
      [{ instances: [{ id: 'a', address: 'h:1' }, { id: 'b', address: 'H:1' }] }, /given twice/],
      [{ instances: [{ id: 'a', address: 'h:1' }], listen: '80;' }, /listen/],
      [{ instances: [{ id: 'a', address: 'h:1' }], serverName: 'a;b' }, /server name/],
      [{ instances: [{ id: 'a', address: 'h:1' }], maxBodyBytes: 0 }, /maxBodyBytes/],
      [{ instances: [{ id: 'a', address: 'h:1' }], tls: { cert: '/a b.pem', key: '/k' } }, /tls\.cert/],
      [{ instances: [{ id: 'a', address: 'h:1' }], accessLog: '$x' }, /accessLog/],
      [{ instances: [{ id: 'a', address: 'h:1' }], connectTimeoutS: 0.5 }, /connectTimeoutS/],
    ];
    for (const [o, re] of refused) expect(() => nginxConf(o), JSON.stringify(o)).toThrow(re);
    expect(() => nginxConfCommand(['--instance', 'nope'])).toThrow(/ID=HOST:PORT/);
    expect(() => nginxConfCommand(['--instance', 'a=h:1', '--tls-cert', '/c'])).toThrow(/go together/);
    expect(() => nginxConfCommand(['--instance', 'a=h:1', '--max-body-bytes', 'lots'])).toThrow(/--max-body-bytes/);
  });
});

const LIMIT = 1 << 20;
const instanceOf = (token: string) => token.slice(0, token.indexOf('.'));

describe('NGINX in front of three weft instances', () => {
  let engine: Engine;
  const gws = new Map<string, Gateway>();
  let proxy: Nginx;
  let wsUrl = '';
  /** Resume tokens of sessions left detached (waiting for a resume), by instance. */
  const detached = new Map<string, string[]>();

  beforeAll(async () => {
    engine = await Engine.load(join(ROOT, 'models', 'default'), { threads: 1, contexts: 3, kvMemoryBytes: 64 << 20 });
    const list: NginxInstance[] = [];
    for (const id of ['w1', 'w2', 'w3']) {
      const gw = new Gateway({ port: 0, instanceId: id, maxBodyBytes: LIMIT });
      gw.attach(engine);
      const { url } = await gw.listen();
      gws.set(id, gw);
      list.push({ id, address: new URL(url).host });
    }
    proxy = await Nginx.start({ instances: list, maxBodyBytes: LIMIT });
    wsUrl = proxy.url.replace('http', 'ws') + '/v1/ws';
  });

  afterAll(async () => {
    await proxy?.stop();
    for (const gw of gws.values()) await gw.close();
    engine?.dispose();
  });

  const created = async (c: Client) => (await c.next((e) => e.type === 'session.created' || e.type === 'error')) as Ev;
  const closeAndDetach = async (c: Client, token: string) => {
    c.ws.close();
    await c.waitClosed();
    const gw = gws.get(instanceOf(token))!;
    const end = Date.now() + 5000;
    while (!gw.hasDetached(token)) {
      if (Date.now() > end) throw new Error(`${token}: not detached`);
      await new Promise((r) => setTimeout(r, 10));
    }
  };

  test('new sessions are spread over the instances by least connections', async () => {
    const clients: Client[] = [];
    const count = new Map<string, number>();
    for (let i = 0; i < 9; i++) {
      const c = await Client.open(wsUrl);
      const ev = await created(c);
      expect(ev.type, JSON.stringify(ev)).toBe('session.created');
      const id = instanceOf(ev.resume_token as string);
      count.set(id, (count.get(id) ?? 0) + 1);
      clients.push(c);
    }
    // every session held open: least_conn gives each instance one in turn
    expect(Object.fromEntries(count)).toEqual({ w1: 3, w2: 3, w3: 3 });
    for (const [id, gw] of gws) expect(gw.numLiveSessions, id).toBe(3);
    for (const c of clients) {
      const token = (c.events.find((e) => e.type === 'session.created')!.resume_token) as string;
      await closeAndDetach(c, token);
      detached.set(instanceOf(token), [...(detached.get(instanceOf(token)) ?? []), token]);
    }
  });

  test('a resume reaches the instance its token names, every time, for each instance', async () => {
    for (const [id, tokens] of detached) {
      const token = tokens[0]!;
      let sessionId: string | undefined;
      for (let round = 0; round < 3; round++) {
        const c = await Client.open(`${wsUrl}?resume=${encodeURIComponent(token)}&last_seq=-1`);
        const ev = await c.next((e) => e.type === 'session.resumed' || e.type === 'error');
        expect(ev, `${id} round ${round}`).toMatchObject({ type: 'session.resumed', resume_token: token });
        sessionId ??= ev.session.id as string;
        expect(ev.session.id).toBe(sessionId);
        await closeAndDetach(c, token);
      }
    }
    // the access log names the upstream a resume took, never the token
    const log = proxy.accessLog();
    expect(log).toMatch(/"GET \/v1\/ws" 101 .* upstream=weft_instance_\d/);
    expect(log).not.toContain('resume=');
    for (const tokens of detached.values()) expect(log).not.toContain(tokens[0]!.split('.')[1]);
  });

  test('an SSE stream through NGINX arrives incrementally', async () => {
    const t0 = performance.now();
    const r = await fetch(proxy.url + '/v1/chat/completions', {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ model: 'default', messages: [{ role: 'user', content: 'Tell me a long story.' }], stream: true, max_tokens: 160, ignore_eos: true, temperature: 0 }),
    });
    expect(r.status).toBe(200);
    expect(r.headers.get('content-type')).toMatch(/^text\/event-stream/);
    const reads: { at: number; events: number }[] = [];
    const reader = r.body!.getReader();
    const dec = new TextDecoder();
    let text = '';
    for (;;) {
      const { done, value } = await reader.read();
      if (done) break;
      const chunk = dec.decode(value, { stream: true });
      text += chunk;
      reads.push({ at: performance.now() - t0, events: (chunk.match(/^data: /gm) ?? []).length });
    }
    expect(text.trimEnd().endsWith('data: [DONE]')).toBe(true);
    const first = reads.find((x) => x.events > 0)!;
    const last = reads[reads.length - 1]!;
    // many reads, the first long before the last (a buffering proxy delivers one lump at the end)
    expect(reads.filter((x) => x.events > 0).length, JSON.stringify(reads.slice(0, 5))).toBeGreaterThan(10);
    expect(last.at - first.at, `first event at ${first.at.toFixed(0)} ms, the end at ${last.at.toFixed(0)} ms`).toBeGreaterThan(Math.max(50, last.at / 3));
  });

  test('a body under the limit passes; one over it gets 413 with weft\'s error body', async () => {
    const body = (n: number) => {
      const base = { model: 'default', messages: [{ role: 'user', content: 'Hi' }], max_tokens: 1, user: '' };
      const pad = n - JSON.stringify(base).length;
      return JSON.stringify({ ...base, user: 'x'.repeat(pad) });
    };
    const post = (b: string) => fetch(proxy.url + '/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' }, body: b });
    const under = await post(body(LIMIT - 16));
    expect(under.status, await under.clone().text()).toBe(200);
    expect(((await under.json()) as { object: string }).object).toBe('chat.completion');
    const over = await post(body(LIMIT + 16));
    expect(over.status).toBe(413);
    expect(over.headers.get('content-type')).toMatch(/^application\/json/);
    expect(((await over.json()) as { error: { code: string } }).error.code).toBe('WEFT_BODY_TOO_LARGE');
  });

  test('a resume falls over to a live instance when the one its token names is down', async () => {
    const token = detached.get('w2')![1]!;
    await gws.get('w2')!.close();
    for (const t of [token, detached.get('w2')![2]!]) {
      // the first finds w2 refusing connections, the second finds it marked down
      const c = await Client.open(`${wsUrl}?resume=${encodeURIComponent(t)}`);
      // without shared state the live instance does not know the session: a fresh one follows
      expect(await c.next((e) => e.type === 'error')).toMatchObject({ code: 'WEFT_RESUME_UNKNOWN' });
      const ev = await c.next((e) => e.type === 'session.created');
      expect(['w1', 'w3']).toContain(instanceOf(ev.resume_token as string));
      c.ws.close();
    }
    // and new sessions keep working on the other two
    for (let i = 0; i < 4; i++) {
      const c = await Client.open(wsUrl);
      const ev = await created(c);
      expect(ev.type).toBe('session.created');
      expect(['w1', 'w3']).toContain(instanceOf(ev.resume_token as string));
      c.ws.close();
    }
  });
});

describe('NGINX with TLS in front of a weft instance with API keys', () => {
  let engine: Engine;
  let gw: Gateway;
  let proxy: Nginx;
  let tls: TestTls;
  const KEY = 'sk-test-123';

  beforeAll(async () => {
    tls = makeTls();
    engine = await Engine.load(join(ROOT, 'models', 'default'), { threads: 1, contexts: 1, kvMemoryBytes: 16 << 20 });
    gw = new Gateway({ port: 0, instanceId: 'wk', apiKeys: new ApiKeys({ keys: [{ name: 'k', key: KEY }] }) });
    gw.attach(engine);
    const { url } = await gw.listen();
    proxy = await Nginx.start({ instances: [{ id: 'wk', address: new URL(url).host }], tls: { cert: tls.certFile, key: tls.keyFile } });
  });

  afterAll(async () => {
    await proxy?.stop();
    await gw?.close();
    engine?.dispose();
    tls?.remove();
  });

  const get = (path: string, headers: Record<string, string> = {}) =>
    new Promise<number>((res, rej) => {
      httpsRequest(`https://127.0.0.1:${proxy.port}${path}`, { ca: tls.ca, headers }, (r) => {
        r.resume();
        res(r.statusCode!);
      }).on('error', rej).end();
    });
  /** The status of a WebSocket handshake through the proxy (101 when it opened). */
  const handshake = (protocols: string[], headers: Record<string, string> = {}) =>
    new Promise<{ status: number; protocol?: string; first?: Ev }>((res, rej) => {
      const ws = new WebSocket(`wss://127.0.0.1:${proxy.port}/v1/ws`, protocols, { ca: tls.ca, headers });
      ws.once('unexpected-response', (_req, r) => {
        res({ status: r.statusCode! });
        ws.terminate();
      });
      ws.once('open', () => ws.once('message', (d) => {
        res({ status: 101, protocol: ws.protocol, first: JSON.parse(d.toString()) as Ev });
        ws.close();
      }));
      ws.once('error', (e) => (e.message.includes('Unexpected server response') ? undefined : rej(e)));
    });

  test('Authorization and the key subprotocol pass through: 401 without a key, 101 with one', async () => {
    expect(await get('/healthz')).toBe(200);
    expect(await get('/v1/models')).toBe(401);
    expect(await get('/v1/models', { authorization: 'Bearer sk-wrong' })).toBe(401);
    expect(await get('/v1/models', { authorization: `Bearer ${KEY}` })).toBe(200);

    expect((await handshake([])).status).toBe(401);
    expect((await handshake([`openai-insecure-api-key.sk-wrong`])).status).toBe(401);
    // as the SDK and the chat page send it (the server answers the entry it was offered)
    const bySubprotocol = await handshake([`openai-insecure-api-key.${KEY}`]);
    expect(bySubprotocol).toMatchObject({ status: 101, protocol: `openai-insecure-api-key.${KEY}`, first: { type: 'session.created' } });
    expect(instanceOf(bySubprotocol.first!.resume_token as string)).toBe('wk');
    const byHeader = await handshake([], { authorization: `Bearer ${KEY}` });
    expect(byHeader).toMatchObject({ status: 101, first: { type: 'session.created' } });
  });
});

// only where NGINX cannot be installed (not root, or no apt-get) do its tests not run; say so

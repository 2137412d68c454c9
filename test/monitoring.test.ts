/**
 * deploy/: the Prometheus scrape config and the Grafana dashboard, against a real Prometheus
 * (Debian's `prometheus` package; installed with apt-get here when missing and we are root) that
 * scrapes a real weft gateway in this process under a short load. Every panel query of
 * deploy/grafana/weft.json must return at least one series.
 */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join } from 'node:path';
import { freePort } from './helpers/system.js';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine } from '../src/engine/engine.js';
import { Gateway } from '../src/gateway/server.js';
import { Client } from './helpers/ws-client.js';

const ROOT = join(import.meta.dirname, '..');
const PROM_CONFIG = join(ROOT, 'deploy', 'prometheus', 'prometheus.yml');
const DASHBOARD = join(ROOT, 'deploy', 'grafana', 'weft.json');

// ---- the dashboard --------------------------------------------------------------------------

interface Target { refId?: string; expr?: string; datasource?: { type?: string; uid?: string } }
interface Panel {
  id?: number; type?: string; title?: string;
  gridPos?: { h: number; w: number; x: number; y: number };
  datasource?: { type?: string; uid?: string };
  targets?: Target[]; panels?: Panel[];
}
interface Variable { name: string; type: string; query?: unknown; allValue?: string; includeAll?: boolean }
interface Dashboard { title?: string; uid?: string; schemaVersion?: number; panels?: Panel[]; templating?: { list?: Variable[] } }

const dashboard = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as Dashboard;
/** Every panel (rows' nested panels included), rows themselves left out. */
const allPanels = (dashboard.panels ?? []).flatMap((p) => (p.type === 'row' ? (p.panels ?? []) : [p]));
const queries = allPanels.flatMap((p) => (p.targets ?? []).map((t) => ({ panel: p.title ?? '?', refId: t.refId ?? '?', expr: t.expr ?? '' })));

/** Grafana's built-in interval variables, and the values this test gives them. */
const BUILTINS: Record<string, string> = { __rate_interval: '15s', __interval: '5s', __range: '1m' };
const VAR_REF = /\$\{(\w+)(?::\w+)?\}|\[\[(\w+)(?::\w+)?\]\]|\$(\w+)/g;

/** A panel expression as Grafana would send it with every variable at its "All" value (a .* regex). */
function toPromQL(expr: string): string {
  const vars = new Map((dashboard.templating?.list ?? []).map((v) => [v.name, v]));
  return expr.replace(VAR_REF, (_m, a: string | undefined, b: string | undefined, c: string | undefined) => {
    const name = (a ?? b ?? c)!;
    if (name in BUILTINS) return BUILTINS[name]!;
    const v = vars.get(name);
    if (!v) throw new Error(`${expr}: variable $${name} is not defined in templating.list`);
    if (!v.includeAll || v.allValue !== '.*') throw new Error(`variable $${name} should include All with allValue ".*"`);
    return '.*';
  });
}

describe('deploy/grafana/weft.json', () => {
  test('an importable Grafana dashboard: a Prometheus datasource variable, panels with targets, a layout', () => {
    expect(typeof dashboard.title).toBe('string');
    expect(dashboard.uid).toMatch(/^[\w-]{1,40}$/);
    expect(typeof dashboard.schemaVersion).toBe('number');
    const vars = dashboard.templating?.list ?? [];
    const ds = vars.find((v) => v.type === 'datasource');
    expect(ds, 'a datasource variable').toMatchObject({ query: 'prometheus' });
    for (const v of vars.filter((x) => x.type === 'query')) expect(v, v.name).toMatchObject({ datasource: { type: 'prometheus', uid: `\${${ds!.name}}` } });

    expect(allPanels.length).toBeGreaterThan(10);
    const ids = new Set<number>();
    const cells = new Set<string>();
    for (const p of dashboard.panels ?? []) {
      const where = p.title ?? JSON.stringify(p).slice(0, 60);
      expect(typeof p.id, where).toBe('number');
      expect(ids.has(p.id!), `${where}: duplicate panel id ${p.id}`).toBe(false);
      ids.add(p.id!);
      const g = p.gridPos!;
      expect(g, `${where}: gridPos`).toMatchObject({ h: expect.any(Number), w: expect.any(Number), x: expect.any(Number), y: expect.any(Number) });
      expect(g.x + g.w, `${where}: wider than the grid`).toBeLessThanOrEqual(24);
      for (let y = g.y; y < g.y + g.h; y++) {
        for (let x = g.x; x < g.x + g.w; x++) {
          expect(cells.has(`${x},${y}`), `${where}: overlaps another panel at ${x},${y}`).toBe(false);
          cells.add(`${x},${y}`);
        }
      }
      if (p.type === 'row') continue;
      expect(['timeseries', 'stat', 'gauge', 'bargauge', 'table', 'heatmap'], where).toContain(p.type);
      expect(p.title, 'every panel has a title').toBeTruthy();
      expect(p.datasource, where).toEqual({ type: 'prometheus', uid: `\${${ds!.name}}` });
      expect(p.targets?.length, `${where}: targets`).toBeGreaterThan(0);
      const refIds = p.targets!.map((t) => t.refId);
      expect(new Set(refIds).size, `${where}: refIds unique`).toBe(refIds.length);
      for (const t of p.targets!) {
        expect(t.expr, `${where} ${t.refId}`).toBeTruthy();
        expect(t.datasource, `${where} ${t.refId}`).toEqual(p.datasource);
        expect(toPromQL(t.expr!), `${where} ${t.refId}: unsubstituted variable`).not.toContain('$');
      }
    }
  });

  test('the panels cover what issue 12 asks for', () => {
    const all = queries.map((q) => q.expr).join('\n');
    const want = [
      /histogram_quantile\(0\.5, .*rate\(weft_time_to_first_token_seconds_bucket/,
      /histogram_quantile\(0\.99, .*rate\(weft_time_to_first_token_seconds_bucket/,
      /histogram_quantile\(0\.5, .*rate\(weft_inter_token_latency_seconds_bucket/,
      /histogram_quantile\(0\.99, .*rate\(weft_inter_token_latency_seconds_bucket/,
      /rate\(weft_generated_tokens_total/,
      /sum by \(state\) \(weft_sessions_state/,
      /weft_sessions_queued/,
      /weft_kv_pages_used/,
      /weft_kv_pages_total/,
      /weft_contexts_busy/,
      /histogram_quantile\(0\.5, .*rate\(weft_step_duration_seconds_bucket/,
      /histogram_quantile\(0\.99, .*rate\(weft_step_duration_seconds_bucket/,
      /weft_batch_sequences/,
      /sum by \(code\) \(rate\(weft_errors_total/,
      /weft_open_connections/,
      /weft_sessions_detached/,
      /sum by \(state\) \(weft_sessions_kv\{/,
    ];
    for (const re of want) expect(all, String(re)).toMatch(re);
  });
});

// ---- Prometheus -----------------------------------------------------------------------------

function onPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const p = join(dir, name);
    if (dir && existsSync(p)) return p;
  }
  return null;
}

/** The prometheus binary: $PROMETHEUS_BIN, PATH, /usr/bin; else apt-get installs it when we are root. */
function findPrometheus(): { bin: string | null; why: string } {
  const found = () => process.env.PROMETHEUS_BIN ?? onPath('prometheus') ?? (existsSync('/usr/bin/prometheus') ? '/usr/bin/prometheus' : null);
  let bin = found();
  if (bin) return { bin, why: '' };
  if (process.getuid?.() !== 0 || !onPath('apt-get')) return { bin: null, why: 'the prometheus binary is not on PATH and apt-get cannot install it here (not root, or no apt-get)' };
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => spawnSync('apt-get', ['install', '-y', '--no-install-recommends', 'prometheus'], { env, stdio: 'ignore', timeout: 300_000 }).status === 0;
  if (!install()) {
    spawnSync('apt-get', ['update'], { env, stdio: 'ignore', timeout: 300_000 });
    install();
  }
  bin = found();
  // where it could be installed (root with apt-get, as in CI) and was not, the test fails: no silent skip
  if (!bin) throw new Error('the prometheus binary is not on PATH and `apt-get install -y prometheus` failed');
  return { bin, why: '' };
}

const prom = findPrometheus();
const promtool = prom.bin ? join(dirname(prom.bin), 'promtool') : null;


/** deploy/prometheus/prometheus.yml with its target replaced by `target` and every interval 1 s. */
function testConfig(target: string): string {
  const src = readFileSync(PROM_CONFIG, 'utf8');
  const first = /(targets:\s*\n\s*-\s*)[^\s#]+/;
  if (!first.test(src)) throw new Error(`${PROM_CONFIG}: no "targets:" list with a first HOST:PORT entry to replace`);
  let out = src.replace(first, `$1${target}`);
  out = out.replace(/^(\s*scrape_interval:\s*)\S+/gm, '$11s').replace(/^(\s*scrape_timeout:\s*)\S+/gm, '$11s');
  if (!/job_name:\s*['"]?weft['"]?/.test(out)) throw new Error(`${PROM_CONFIG}: no job_name weft`);
  return out;
}

interface Series { metric: Record<string, string>; value: [number, string] }

describe.skipIf(!prom.bin)('Prometheus scraping weft, every dashboard query', () => {
  let engine: Engine;
  let gw: Gateway;
  let dir: string;
  let promProc: ChildProcess | null = null;
  let promPid = 0;
  let promLog = '';
  let promUrl = '';
  let weftUrl = '';

  async function query(expr: string, time?: number): Promise<Series[]> {
    const u = new URL('/api/v1/query', promUrl);
    u.searchParams.set('query', expr);
    if (time !== undefined) u.searchParams.set('time', String(time));
    const r = await fetch(u);
    const body = (await r.json()) as { status: string; error?: string; data?: { resultType: string; result: Series[] } };
    if (body.status !== 'success') throw new Error(`${expr}: ${body.error ?? r.status}`);
    if (body.data!.resultType !== 'vector') throw new Error(`${expr}: resultType ${body.data!.resultType}`);
    return body.data!.result;
  }
  const until = async (what: string, cond: () => Promise<boolean>, ms = 20_000) => {
    const end = Date.now() + ms;
    for (;;) {
      if (promProc?.exitCode != null) throw new Error(`prometheus exited (${promProc.exitCode}):\n${promLog.slice(-3000)}`);
      if (await cond().catch(() => false)) return;
      if (Date.now() > end) throw new Error(`timed out waiting for ${what}; prometheus log:\n${promLog.slice(-3000)}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  };

  beforeAll(async () => {
    engine = await Engine.load(join(ROOT, 'models', 'default'), { threads: 2, contexts: 2, kvMemoryBytes: 64 << 20 });
    gw = new Gateway({ port: 0 });
    gw.attach(engine);
    weftUrl = (await gw.listen()).url;

    dir = mkdtempSync(join(tmpdir(), 'weft-prometheus-'));
    const config = join(dir, 'prometheus.yml');
    writeFileSync(config, testConfig(new URL(weftUrl).host));
    const port = await freePort();
    promUrl = `http://127.0.0.1:${port}`;
    // A watchdog shell owns prometheus: when this process goes away in any way (even SIGKILL) its
    // stdin reaches EOF and the shell stops prometheus; afterAll closes stdin the same way.
    const args = [`--config.file=${config}`, `--storage.tsdb.path=${join(dir, 'data')}`, `--web.listen-address=127.0.0.1:${port}`, '--log.level=warn'];
    promProc = spawn('sh', ['-c', '"$0" "$@" </dev/null & p=$!; echo $p; trap \'kill $p\' TERM; cat >/dev/null; kill $p 2>/dev/null; wait $p', prom.bin!, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    promProc.stdout!.on('data', (d: Buffer) => {
      if (!promPid) promPid = Number.parseInt(d.toString(), 10);
    });
    promProc.stderr!.on('data', (d: Buffer) => (promLog += d.toString()));
    await until('prometheus /-/ready', async () => (await fetch(promUrl + '/-/ready')).ok);
    await until('a first scrape of weft (up == 1)', async () => (await query('up{job="weft"} == 1')).length === 1);
  });

  afterAll(async () => {
    if (promProc && promProc.exitCode === null) {
      const exited = new Promise<void>((r) => promProc!.once('exit', () => r()));
      promProc.stdin!.end();
      const timer = setTimeout(() => {
        if (promPid) try { process.kill(promPid, 'SIGKILL'); } catch { /* gone */ }
        promProc!.kill('SIGKILL');
      }, 5000);
      await exited;
      clearTimeout(timer);
    }
    if (promPid) expect(() => process.kill(promPid, 0), 'prometheus still running').toThrow();
    await gw?.close();
    engine?.dispose();
    if (dir) rmSync(dir, { recursive: true, force: true });
  });

  test('the scrape config passes promtool', () => {
    if (!promtool || !existsSync(promtool)) return;
    const r = spawnSync(promtool, ['check', 'config', PROM_CONFIG], { encoding: 'utf8' });
    expect(r.status, r.stdout + r.stderr).toBe(0);
  });

  test('every panel query returns series after a short load', async () => {
    // The load: three sessions streaming two turns each at once, one unknown event (an error by
    // code), one session whose socket goes away (held for a resume).
    const wsUrl = weftUrl.replace('http', 'ws') + '/v1/ws';
    const clients = await Promise.all([0, 1, 2].map(() => Client.open(wsUrl)));
    for (const c of clients) await c.next((e) => e.type === 'session.created');
    clients[0]!.send({ type: 'no.such.event', event_id: 'bad' });
    expect(await clients[0]!.next((e) => e.type === 'error')).toMatchObject({ code: 'WEFT_UNKNOWN_TYPE' });
    const gone = await Client.open(wsUrl);
    await gone.next((e) => e.type === 'session.created');
    gone.ws.terminate();
    await gone.waitClosed();
    const sampling = { temperature: 0.8, top_k: 40, seed: 3, max_tokens: 48 };
    await Promise.all(clients.map(async (c, i) => {
      for (const content of [`Who made the heaven and the earth? (${i})`, 'And what did he say unto them?']) {
        const r = await c.turn(content, sampling);
        expect(r.deltas.length).toBeGreaterThan(0);
      }
    }));
    const loadEnd = Date.now() / 1000;

    // weft_sessions_state: every session is idle now (the detached one included).
    const text = await (await fetch(weftUrl + '/metrics')).text();
    const idle = /^weft_sessions_state\{state="idle"\} (\S+)$/m.exec(text);
    expect(idle, 'weft_sessions_state{state="idle"} in /metrics').not.toBeNull();
    expect(Number(idle![1]), 'weft_sessions_state{state="idle"} counts the gateway\'s sessions').toBe(gw.sessions.size);

    // Every weft_ metric a panel names is one weft exports (histograms by their family name).
    const exported = new Set([...text.matchAll(/^# TYPE (\w+) /gm)].map((m) => m[1]!));
    for (const q of queries) {
      for (const [name] of q.expr.matchAll(/\bweft_\w+/g)) {
        const family = name.replace(/_(bucket|sum|count)$/, '');
        expect(exported.has(name) || exported.has(family), `${q.panel} ${q.refId}: ${name} is not exported by weft`).toBe(true);
      }
    }

    // Prometheus has scraped at least twice after the load.
    await until('two scrapes after the load', async () => {
      const r = await query('timestamp(up{job="weft"})');
      return r.length === 1 && Number(r[0]!.value[1]) > loadEnd + 1.5;
    });
    expect(Number((await query('count_over_time(up{job="weft"}[1m])'))[0]!.value[1])).toBeGreaterThanOrEqual(3);

    // The variables' label_values(METRIC{...}, LABEL) queries, as Grafana runs them (the series API).
    for (const v of (dashboard.templating?.list ?? []).filter((x) => x.type === 'query')) {
      const def = (v as { definition?: string }).definition ?? '';
      const m = /^label_values\((.+),\s*(\w+)\)$/.exec(def);
      expect(m, `variable ${v.name}: label_values(METRIC, LABEL)`).not.toBeNull();
      const u = new URL(`/api/v1/label/${m![2]}/values`, promUrl);
      u.searchParams.set('match[]', toPromQL(m![1]!));
      const values = ((await (await fetch(u)).json()) as { data: string[] }).data;
      expect(values, `variable ${v.name}`).toContain(m![2] === 'job' ? 'weft' : new URL(weftUrl).host);
    }

    const at = Date.now() / 1000;
    const results = new Map<string, Series[]>();
    for (const q of queries) {
      const expr = toPromQL(q.expr);
      const series = await query(expr, at);
      results.set(`${q.panel}/${q.refId}`, series);
      expect(series.length, `${q.panel} ${q.refId}: no series for ${expr}`).toBeGreaterThan(0);
    }
    const one = (panel: string, refId = 'A') => results.get(`${panel}/${refId}`)!;
    const num = (s: Series[]) => Number(s[0]!.value[1]);
    // The load is visible where it must be.
    for (const p of ['Time to first token (p50 / p99)', 'Inter-token latency (p50 / p99)', 'Step time (p50 / p99)']) {
      for (const ref of ['A', 'B']) expect(num(one(p, ref)), `${p} ${ref}`).toBeGreaterThan(0);
    }
    expect(num(one('Generated tokens/s')), 'generated tokens/s').toBeGreaterThan(0);
    expect(num(one('Batch size (sequences per step)')), 'mean batch size').toBeGreaterThanOrEqual(1);
    const unknownType = one('Errors by code').find((s) => s.metric.code === 'WEFT_UNKNOWN_TYPE');
    expect(Number(unknownType?.value[1]), 'rate of WEFT_UNKNOWN_TYPE errors').toBeGreaterThan(0);
    expect(num(one('Sessions waiting for resume')), 'the terminated session').toBe(1);
    expect(num(one('KV pages (used / total)', 'B'))).toBeGreaterThan(0);
    expect(one('Sessions by state').map((s) => s.metric.state).sort()).toEqual(['generating', 'idle', 'prefilling', 'preparing', 'queued']);
    expect(one('Sessions by KV state').map((s) => s.metric.state).sort()).toEqual(['dropped', 'parked', 'resident']);

    for (const c of clients) c.ws.close();
  });
});

// only where Prometheus cannot be installed (not root, or no apt-get) do its tests not run; say so
if (!prom.bin) console.warn(`monitoring.test.ts: the Prometheus tests did not run: ${prom.why}`);

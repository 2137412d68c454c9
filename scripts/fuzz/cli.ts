/** The fuzzer's command line: `node dist/scripts/fuzz/cli.js --help`. */
import { randomInt } from 'node:crypto';
import { pathToFileURL } from 'node:url';
import { FrameGen, type WsItem } from './frames.js';
import { fuzz } from './index.js';
import { openaiItem } from './openai-gen.js';
import { withHost } from './http-gen.js';
import { requestBytes } from './openai-run.js';
import { DEFAULTS, type FuzzOptions } from './options.js';
import { formatReport, type FuzzReport } from './report.js';

const USAGE = `usage: node dist/scripts/fuzz/cli.js [options]
  --seed N            the seed (default 1; with --minutes, the first round's, then random ones)
  --frames N          WebSocket frames per transport (default 3000)
  --http N            HTTP requests per transport (default 300)
  --openai N          requests to the OpenAI-compatible routes per transport (default 600)
  --transport T       ws, uws or both (default both)
  --connections N     WebSocket connections per transport (default 8)
  --timeout MS        how long a frame or request may wait for its answer (default 10000)
  --minutes M         keep running rounds with random seeds for M minutes
  --json              print the report(s) as JSON
  --silent-http-ok    an HTTP request left unanswered is a note, not a failure (over uws, one its
                      parser rejects always is: docs/protocol.md)
  --max-restarts N    restarts of a dead server per transport before giving it up (default 6)
  --print-frame T:C:I print frame I of connection C over transport T for --seed (and --limit BYTES, default 1048576)
  --print-request T:I write OpenAI request I over transport T for --seed as bytes (--body-limit BYTES,
                      default 262144, and --model ID, default "default", as the run had them; --port N,
                      default 8080, for its Host): node dist/scripts/fuzz/cli.js --print-request ws:26
                      --port 8080 | curl's --data-binary, or nc 127.0.0.1 8080
exit status: 0 when nothing failed, 1 otherwise.`;

/** Writes to stdout and waits until it is handed over (process.exit would cut a pipe short). */
const out = (text: string | Buffer) => new Promise<void>((r) => process.stdout.write(text, () => r()));

export async function cli(argv: string[]): Promise<number> {
  const flags = new Map<string, string>();
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '--help' || a === '-h') {
      await out(USAGE + '\n');
      return 0;
    }
    if (a === '--json' || a === '--silent-http-ok') {
      flags.set(a.slice(2), '1');
      continue;
    }
    if (!a.startsWith('--') || i + 1 >= argv.length) {
      process.stderr.write(`bad argument ${a}\n${USAGE}\n`);
      return 2;
    }
    flags.set(a.slice(2), argv[++i]!);
  }
  const num = (k: string, d: number) => {
    const v = flags.get(k);
    if (v === undefined) return d;
    const n = Number(v);
    if (!Number.isFinite(n) || n < 0) throw new Error(`--${k} must be a non-negative number`);
    return n;
  };
  const seed = num('seed', 1) >>> 0;
  const pr = flags.get('print-request');
  if (pr) {
    const [t, i] = pr.split(':');
    const it = openaiItem(seed, t ?? 'ws', Number(i), { limit: num('body-limit', 262144), model: flags.get('model') ?? 'default' });
    process.stderr.write(`${it.label}: ${it.log.join('; ')}${it.via === 'raw' ? ` [raw, ${it.framing}]` : ''}${it.reader !== 'read' ? ` [reader ${it.reader}]` : ''}\n`);
    await out(withHost(requestBytes(it), num('port', 8080)));
    return 0;
  }
  const pf = flags.get('print-frame');
  if (pf) {
    const [t, c, i] = pf.split(':');
    const gen = new FrameGen(seed, t ?? 'ws', Number(c), num('limit', 1 << 20));
    let item: WsItem = gen.next();
    while (item.index < Number(i)) item = gen.next();
    if (item.kind === 'reconnect') await out(item.log.join('; ') + '\n');
    else {
      process.stderr.write(`${item.log.join('; ')}${item.binary ? ' [binary]' : ''}${item.fragments > 1 ? ` [${item.fragments} fragments]` : ''}\n`);
      await out(Buffer.concat([item.data, Buffer.from('\n')]));
    }
    return 0;
  }
  const t = flags.get('transport') ?? 'both';
  if (!['ws', 'uws', 'both'].includes(t)) throw new Error('--transport must be ws, uws or both');
  const base: Partial<FuzzOptions> = {
    frames: num('frames', DEFAULTS.frames),
    http: num('http', DEFAULTS.http),
    openai: num('openai', DEFAULTS.openai),
    transports: t === 'both' ? ['ws', 'uws'] : [t as 'ws' | 'uws'],
    connections: Math.max(1, num('connections', DEFAULTS.connections)),
    answerTimeoutMs: num('timeout', DEFAULTS.answerTimeoutMs),
    httpTimeoutMs: num('timeout', DEFAULTS.httpTimeoutMs),
    silentHttpOk: flags.has('silent-http-ok'),
    maxRestarts: num('max-restarts', DEFAULTS.maxRestarts),
    log: flags.has('json') ? () => undefined : (line) => process.stderr.write(line + '\n'),
  };
  const minutes = num('minutes', 0);
  const end = performance.now() + minutes * 60_000;
  const reports: FuzzReport[] = [];
  let round = 0;
  do {
    const s = round === 0 && flags.has('seed') ? seed : round === 0 && minutes === 0 ? seed : randomInt(0, 2 ** 32 - 1);
    const left = minutes > 0 ? Math.max(10_000, (end - performance.now()) / base.transports!.length) : 0;
    if (minutes > 0) process.stderr.write(`round ${round + 1}: seed ${s}\n`);
    const rep = await fuzz({ ...base, seed: s, deadlineMs: left });
    reports.push(rep);
    if (!flags.has('json')) await out(formatReport(rep) + '\n');
    if (!rep.ok) process.stderr.write(`FAILED: seed ${s} (rerun: node dist/scripts/fuzz/cli.js --seed ${s} --frames ${base.frames} --http ${base.http} --openai ${base.openai} --transport ${t})\n`);
    round++;
  } while (minutes > 0 && performance.now() < end);
  if (flags.has('json')) await out(JSON.stringify(reports.length === 1 ? reports[0] : reports, null, 2) + '\n');
  const failed = reports.filter((r) => !r.ok);
  if (minutes > 0) await out(`${reports.length} round(s); failing seeds: ${failed.map((r) => r.seed).join(', ') || 'none'}\n`);
  return failed.length ? 1 : 0;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  cli(process.argv.slice(2)).then(
    (code) => process.exit(code),
    (err) => {
      process.stderr.write(`fuzz: ${(err as Error).stack ?? err}\n`);
      process.exit(2);
    },
  );
}

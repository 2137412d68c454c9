/** The server under test, as a child process; and a plain GET to it. */
import { spawn, type ChildProcess } from 'node:child_process';
import { request as httpRequest } from 'node:http';

/**
 * The server under test as a child process (`node CLI serve --port 0 --transport T`): started,
 * watched (an exit it was not asked for is a crash: onCrash), stopped.
 */
export class ServerProc {
  child: ChildProcess | null = null;
  port = 0;
  alive = false;
  /** Set before a deliberate stop: the exit is not a crash. */
  stopping = false;
  private out = '';
  private err = '';
  exited: Promise<{ code: number | null; signal: NodeJS.Signals | null }> = Promise.resolve({ code: null, signal: null });
  onCrash: (code: number | null, signal: NodeJS.Signals | null, stderr: string) => void = () => undefined;
  /** stderr lines that came while the server was up (not a crash). */
  stderrSeen: string[] = [];

  constructor(
    private readonly cli: string,
    private readonly transport: string,
    private readonly env: NodeJS.ProcessEnv,
    private readonly startTimeoutMs: number,
  ) {}

  get stderrTail(): string {
    return this.err;
  }

  async start(): Promise<void> {
    this.out = '';
    this.err = '';
    this.stderrSeen = [];
    this.stopping = false;
    const child = spawn(process.execPath, [this.cli, 'serve', '--port', '0', '--transport', this.transport], { env: this.env, stdio: ['ignore', 'pipe', 'pipe'] });
    this.child = child;
    this.alive = true;
    let ready = false;
    this.exited = new Promise((res) => {
      child.once('exit', (code, signal) => {
        this.alive = false;
        res({ code, signal });
        if (!this.stopping && ready) this.onCrash(code, signal, this.stderrTail);
      });
    });
    child.stderr!.setEncoding('utf8');
    child.stderr!.on('data', (d: string) => {
      this.err = (this.err + d).slice(-300_000);
      if (ready && this.stderrSeen.length < 20) this.stderrSeen.push(...d.split('\n').filter(Boolean).slice(0, 20 - this.stderrSeen.length));
    });
    child.stdout!.setEncoding('utf8');
    await new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        child.kill('SIGKILL');
        reject(new Error(`the server did not get ready within ${this.startTimeoutMs} ms: ${this.out.slice(-500)} ${this.err.slice(-500)}`));
      }, this.startTimeoutMs);
      child.stdout!.on('data', (d: string) => {
        if (ready) return;
        this.out += d;
        const m = /weft listening on http:\/\/[^\s]*:(\d+)/.exec(this.out);
        if (m) this.port = Number(m[1]);
        if (this.port && /weft ready/.test(this.out)) {
          ready = true;
          clearTimeout(timer);
          resolve();
        }
      });
      void this.exited.then(({ code, signal }) => {
        if (ready) return;
        clearTimeout(timer);
        reject(new Error(`the server exited before it was ready (code ${code}, signal ${signal}): ${this.err.slice(-1500)}`));
      });
    });
  }

  /** SIGTERM, then SIGKILL after 10 s. Returns how it ended. */
  async stop(): Promise<{ code: number | null; signal: NodeJS.Signals | null; forced: boolean }> {
    if (!this.child || !this.alive) return { ...(await this.exited), forced: false };
    this.stopping = true;
    this.child.kill('SIGTERM');
    const t = setTimeout(() => this.child?.kill('SIGKILL'), 15_000);
    const r = await this.exited;
    clearTimeout(t);
    return { ...r, forced: r.signal === 'SIGKILL' };
  }
}

/** GET over node:http (no agent): the status, or an error string. */
export function httpGet(port: number, path: string, timeoutMs: number): Promise<{ status: number; body: string } | { error: string }> {
  return new Promise((resolve) => {
    const req = httpRequest({ host: '127.0.0.1', port, path, agent: false, timeout: timeoutMs }, (res) => {
      let body = '';
      res.setEncoding('utf8');
      res.on('data', (d: string) => (body += d));
      res.on('end', () => resolve({ status: res.statusCode ?? 0, body }));
      res.on('error', (e) => resolve({ error: e.message }));
    });
    req.on('timeout', () => {
      req.destroy();
      resolve({ error: `no answer within ${timeoutMs} ms` });
    });
    req.on('error', (e) => resolve({ error: e.message }));
    req.end();
  });
}

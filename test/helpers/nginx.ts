/** A real NGINX (Debian's; installed with apt-get when missing and we are root) running a generated configuration on a free loopback port. */
import { spawn, spawnSync, type ChildProcess } from 'node:child_process';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { connect } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nginxStandaloneConf, type NginxConfOptions } from '../../src/cluster/nginx-conf.js';
import { freePort, requireProgram } from './system.js';

const NGINX_BIN = process.env.NGINX_BIN ?? requireProgram('nginx', 'nginx-light');


/** Whether something accepts TCP connections on this loopback port. */
const accepts = (port: number) =>
  new Promise<boolean>((res) => {
    const s = connect(port, '127.0.0.1', () => {
      s.end();
      res(true);
    }).on('error', () => res(false));
  });

/** A running NGINX: `nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'`, owned by a watchdog shell. */
export class Nginx {
  private log = '';
  private pid = 0;
  private constructor(readonly dir: string, readonly port: number, private readonly proc: ChildProcess) {
    proc.stdout!.on('data', (d: Buffer) => {
      if (!this.pid) this.pid = Number.parseInt(d.toString(), 10);
    });
    proc.stderr!.on('data', (d: Buffer) => (this.log += d.toString()));
  }

  static async start(o: Omit<NginxConfOptions, 'listen'>): Promise<Nginx> {
    const dir = mkdtempSync(join(tmpdir(), 'weft-nginx-'));
    chmodSync(dir, 0o755); // run as root, NGINX's workers are `nobody`: they write the temp dirs in here
    const port = await freePort();
    const conf = join(dir, 'nginx.conf');
    writeFileSync(conf, nginxStandaloneConf({ ...o, listen: `127.0.0.1:${port}` }));
    const check = spawnSync(NGINX_BIN, ['-e', 'stderr', '-p', dir, '-c', conf, '-t'], { encoding: 'utf8' });
    if (check.status !== 0) {
      const text = readFileSync(conf, 'utf8');
      rmSync(dir, { recursive: true, force: true });
      throw new Error(`nginx -t refused the generated conf:\n${check.stderr}\n${text}`);
    }
    // When this process goes away in any way its stdin reaches EOF and the shell stops NGINX.
    const args = ['-e', 'stderr', '-p', dir, '-c', conf, '-g', 'daemon off;'];
    const proc = spawn('sh', ['-c', '"$0" "$@" </dev/null & p=$!; echo $p; trap \'kill $p\' TERM; cat >/dev/null; kill $p 2>/dev/null; wait $p', NGINX_BIN, ...args], { stdio: ['pipe', 'pipe', 'pipe'] });
    const n = new Nginx(dir, port, proc);
    const end = Date.now() + 10_000;
    for (;;) {
      let failed: string | null = null;
      if (proc.exitCode !== null) failed = `nginx exited (${proc.exitCode})`;
      else if (await accepts(port)) return n;
      else if (Date.now() > end) failed = `nginx did not answer on ${port}`;
      if (failed) {
        const log = n.log;
        await n.stop();
        throw new Error(`${failed}:\n${log}`);
      }
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  /** The access log (weft_log: no query strings). */
  accessLog(): string {
    return readFileSync(join(this.dir, 'access.log'), 'utf8');
  }

  async stop(): Promise<void> {
    if (this.proc.exitCode === null) {
      const exited = new Promise<void>((r) => this.proc.once('exit', () => r()));
      this.proc.stdin!.end();
      const timer = setTimeout(() => {
        if (this.pid) try { process.kill(this.pid, 'SIGKILL'); } catch { /* gone */ }
        this.proc.kill('SIGKILL');
      }, 5000);
      await exited;
      clearTimeout(timer);
    }
    if (this.pid) {
      let alive = true;
      try {
        process.kill(this.pid, 0);
      } catch {
        alive = false;
      }
      if (alive) throw new Error('nginx still running');
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}


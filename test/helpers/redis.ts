/** A real redis-server (Debian's) on a free loopback port, owned by the test: stopped, killed, restarted at will. */
import { spawn, type ChildProcess } from 'node:child_process';
import { connect } from 'node:net';
import { freePort, requireProgram } from './system.js';

export class RedisServer {
  private proc: ChildProcess | null = null;
  log = '';
  private constructor(
    private readonly bin: string,
    readonly port: number,
  ) {}

  get url(): string {
    return `redis://127.0.0.1:${this.port}`;
  }

  static async start(): Promise<RedisServer> {
    const r = new RedisServer(requireProgram('redis-server', 'redis-server'), await freePort());
    await r.run();
    return r;
  }

  /** Starts it (again, on the same port): nothing persisted, in memory only. */
  async run(): Promise<void> {
    this.proc = spawn(this.bin, ['--port', String(this.port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--protected-mode', 'no', '--enable-debug-command', 'yes'], { stdio: ['ignore', 'pipe', 'pipe'] });
    this.proc.stdout!.on('data', (d) => (this.log = (this.log + d).slice(-20_000)));
    this.proc.stderr!.on('data', (d) => (this.log = (this.log + d).slice(-20_000)));
    const end = Date.now() + 10_000;
    for (;;) {
      if (await this.ping()) return;
      if (this.proc.exitCode !== null || Date.now() > end) throw new Error(`redis-server did not start:\n${this.log}`);
      await new Promise((r) => setTimeout(r, 50));
    }
  }

  private ping(): Promise<boolean> {
    return new Promise((resolve) => {
      const s = connect(this.port, '127.0.0.1');
      s.once('error', () => resolve(false));
      s.once('connect', () => s.write('PING\r\n'));
      s.once('data', (d) => {
        resolve(String(d).startsWith('+PONG'));
        s.destroy();
      });
    });
  }

  /** Stops it (SIGKILL: Redis gone at once). */
  async stop(): Promise<void> {
    const p = this.proc;
    this.proc = null;
    if (!p || p.exitCode !== null) return;
    await new Promise<void>((r) => {
      p.once('exit', () => r());
      p.kill('SIGKILL');
    });
  }
}

/** A `weft serve` child process (the real CLI from dist/), on a port of the test's choosing, killed or drained at will. */
import { spawn, type ChildProcess } from 'node:child_process';
import { join } from 'node:path';
import { freePort } from './system.js';

const CLI = join(import.meta.dirname, '..', '..', 'dist', 'src', 'cli', 'main.js');

export class WeftProcess {
  out = '';
  err = '';
  private child: ChildProcess | null = null;
  private exited: Promise<number | null> = Promise.resolve(null);

  private constructor(
    readonly port: number,
    private readonly args: string[],
    private readonly env: Record<string, string>,
  ) {}

  get url(): string {
    return `http://127.0.0.1:${this.port}`;
  }

  get wsUrl(): string {
    return `ws://127.0.0.1:${this.port}/v1/ws`;
  }

  /** Sends a signal (SIGSTOP freezes it: its heartbeat stops as a dead instance's does; SIGCONT thaws it). */
  signal(sig: NodeJS.Signals): void {
    this.child?.kill(sig);
  }

  get alive(): boolean {
    return this.child !== null && this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Starts `weft serve --port P ARGS` (one thread, 32 MiB of KV unless set) and waits until it is ready. */
  static async start(args: string[], env: Record<string, string> = {}, port?: number): Promise<WeftProcess> {
    const p = new WeftProcess(port ?? (await freePort()), args, env);
    await p.run();
    return p;
  }

  /** Starts it (again, on the same port and with the same arguments). */
  async run(): Promise<void> {
    this.out = '';
    this.err = '';
    const child = (this.child = spawn(process.execPath, [CLI, 'serve', '--port', String(this.port), '--threads', '1', ...this.args], {
      env: { ...process.env, WEFT_KV_MEMORY: '32MiB', ...this.env },
      stdio: ['ignore', 'pipe', 'pipe'],
    }));
    child.stdout!.on('data', (d) => (this.out = (this.out + d).slice(-50_000)));
    child.stderr!.on('data', (d) => (this.err = (this.err + d).slice(-50_000)));
    this.exited = new Promise((r) => child.on('exit', (code) => r(code)));
    const deadline = Date.now() + 30_000;
    while (!this.out.includes('weft ready') && child.exitCode === null && Date.now() < deadline) await new Promise((r) => setTimeout(r, 25));
    if (!this.out.includes('weft ready')) {
      child.kill('SIGKILL');
      throw new Error(`weft serve did not get ready:\n${this.out}\n${this.err}`);
    }
  }

  /** SIGKILL: the process is gone at once, nothing saved, nothing said. */
  async kill(): Promise<void> {
    if (!this.alive) return;
    this.child!.kill('SIGKILL');
    await this.exited;
  }

  /** SIGTERM: a drain (answers finish, then 1001); resolves with the exit code. */
  async stop(): Promise<number | null> {
    if (!this.alive) return this.exited;
    this.child!.kill('SIGTERM');
    return this.exited;
  }
}

/** Debian programs the tests start for real (Redis, NGINX, ...), and free loopback ports. */
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createServer } from 'node:net';
import { delimiter, join } from 'node:path';

export function onPath(name: string): string | null {
  for (const dir of (process.env.PATH ?? '').split(delimiter)) {
    const p = join(dir, name);
    if (dir && existsSync(p)) return p;
  }
  for (const dir of ['/usr/sbin', '/usr/bin', '/sbin']) if (existsSync(join(dir, name))) return join(dir, name);
  return null;
}

/**
 * A program the test needs: on PATH, else installed with apt-get (Debian package `pkg`) when we
 * are root. Where it could be installed (root with apt-get, as in CI) and was not, this throws:
 * the test fails, it does not skip.
 */
export function requireProgram(name: string, pkg: string): string {
  const found = onPath(name);
  if (found) return found;
  if (process.getuid?.() !== 0 || !onPath('apt-get')) throw new Error(`${name} is not installed and apt-get cannot install it here (not root): apt-get install ${pkg}`);
  const env = { ...process.env, DEBIAN_FRONTEND: 'noninteractive' };
  const install = () => spawnSync('apt-get', ['install', '-y', '--no-install-recommends', pkg], { env, stdio: 'ignore', timeout: 300_000 }).status === 0;
  if (!install()) {
    spawnSync('apt-get', ['update'], { env, stdio: 'ignore', timeout: 300_000 });
    install();
  }
  const bin = onPath(name);
  if (!bin) throw new Error(`${name} is not installed and \`apt-get install -y ${pkg}\` failed`);
  return bin;
}

/** A loopback port free now. */
export function freePort(): Promise<number> {
  return new Promise((res, rej) => {
    const s = createServer();
    s.once('error', rej);
    s.listen(0, '127.0.0.1', () => {
      const { port } = s.address() as { port: number };
      s.close(() => res(port));
    });
  });
}

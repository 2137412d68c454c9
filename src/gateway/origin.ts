/**
 * Which browser origins may open a WebSocket (cross-site WebSocket hijacking: a page on any site
 * can open `ws://127.0.0.1:8080`, and the browser sends the page's `Origin`; the WebSocket same-origin
 * policy does not exist, so the server must check).
 *
 * Allowed: a request without `Origin` (non-browser clients send none), the server's own origins
 * (http/https on the port it listens on, with the host it listens on; for a loopback address also
 * `localhost`, `127.0.0.1` and `[::1]`; for a wildcard address every address of this machine), and
 * the origins given to `--allowed-origins` (`*` allows every origin). Everything else, `Origin: null`
 * included, is refused at the upgrade with 403. The Host header is not trusted (DNS rebinding).
 */
import { networkInterfaces } from 'node:os';
import { WeftError } from '../errors.js';

/** `scheme://host:port` in the one spelling used for comparison, or null when it is not an http(s) origin. */
export function normalizeOrigin(origin: string): string | null {
  try {
    const u = new URL(origin);
    if (u.protocol !== 'http:' && u.protocol !== 'https:') return null;
    return u.origin;
  } catch {
    return null;
  }
}

/** Whether a host name or address is this machine's loopback. */
export const isLoopback = (h: string) => h === 'localhost' || h === '::1' || /^127\.\d+\.\d+\.\d+$/.test(h);
const isWildcard = (h: string) => h === '0.0.0.0' || h === '::' || h === '';

export class OriginPolicy {
  private readonly listed = new Set<string>();
  private readonly any: boolean;
  private readonly own = new Set<string>();

  /** `allowed`: extra origins (`*`: all); validated here. */
  constructor(allowed: readonly string[] = []) {
    this.any = allowed.includes('*');
    for (const o of allowed) {
      if (o === '*') continue;
      const n = normalizeOrigin(o);
      if (!n) throw new WeftError('WEFT_BAD_ARGUMENT', `allowed origin ${JSON.stringify(o)} is not an http(s) origin such as https://chat.example.com`);
      this.listed.add(n);
    }
  }

  /** Learns the server's own origins once it listens on `host:port`. */
  bind(host: string, port: number): void {
    const hosts = new Set<string>([host]);
    if (isLoopback(host) || isWildcard(host)) for (const h of ['localhost', '127.0.0.1', '::1']) hosts.add(h);
    if (isWildcard(host)) {
      for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) hosts.add(a.address.split('%', 1)[0]!);
    }
    for (const h of hosts) {
      if (isWildcard(h)) continue;
      const name = h.includes(':') ? `[${h}]` : h;
      for (const scheme of ['http', 'https']) {
        const n = normalizeOrigin(`${scheme}://${name}:${port}`);
        if (n) this.own.add(n);
      }
    }
  }

  /** Whether a WebSocket upgrade with this Origin header (undefined: none) may proceed. */
  allows(origin: string | undefined): boolean {
    if (origin === undefined || origin === '') return true;
    if (this.any) return true;
    const n = normalizeOrigin(origin);
    return n !== null && (this.own.has(n) || this.listed.has(n));
  }
}

/**
 * The reverse proxies in front of weft (NGINX, `trustedProxies`) and the client address they
 * imply: for a connection from one, the client is the last address of X-Forwarded-For that is not
 * a trusted proxy. Per-address limits (bytes, sessions held for resume) count that address.
 */
import { BlockList, isIP } from 'node:net';
import { WeftError } from '../errors.js';

export class TrustedProxies {
  private constructor(private readonly list: BlockList) {}

  /** The proxies of these entries (addresses or CIDR ranges); null for none. WEFT_BAD_ARGUMENT names an entry that is neither. */
  static from(entries: string[] | undefined): TrustedProxies | null {
    if (!entries || entries.length === 0) return null;
    const list = new BlockList();
    for (const raw of entries) {
      const e = raw.trim();
      const [addr, bits] = e.split('/', 2) as [string, string | undefined];
      const family = isIP(addr);
      const prefix = bits === undefined ? undefined : Number(bits);
      if (family === 0 || (bits !== undefined && (!/^\d{1,3}$/.test(bits) || prefix! > (family === 4 ? 32 : 128)))) {
        throw new WeftError('WEFT_BAD_ARGUMENT', `trustedProxies: ${JSON.stringify(e)} is not an IP address or a CIDR range (such as 10.0.0.0/8)`);
      }
      const type = family === 4 ? 'ipv4' : 'ipv6';
      if (prefix === undefined) list.addAddress(addr, type);
      else list.addSubnet(addr, prefix, type);
    }
    return new TrustedProxies(list);
  }

  /** The client's address: the peer's, or behind a trusted proxy the last untrusted X-Forwarded-For entry. */
  clientAddress(peer: string, forwardedFor: string | undefined): string {
    if (!forwardedFor || !this.trusts(peer)) return peer;
    const hops = forwardedFor.split(',').map((h) => h.trim()).filter((h) => h !== '');
    for (let i = hops.length - 1; i >= 0; i--) {
      const h = hops[i]!;
      if (isIP(h) === 0) return peer; // not an address: the header was not written by a proxy we trust
      if (!this.trusts(h)) return h;
    }
    return hops[0] ?? peer;
  }

  /** Whether an address is a trusted proxy's (an IPv4-mapped IPv6 address as its IPv4 one). */
  private trusts(address: string): boolean {
    const a = address.startsWith('::ffff:') && isIP(address.slice(7)) === 4 ? address.slice(7) : address;
    const family = isIP(a);
    return family !== 0 && this.list.check(a, family === 4 ? 'ipv4' : 'ipv6');
  }
}

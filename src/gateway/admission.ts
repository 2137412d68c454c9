/**
 * WebSocket upgrade admission: whether an upgrade is taken, decided before any WebSocket exists
 * (both transports ask, through `Gateway.admitUpgrade`), and which front's connection it opens:
 * protocol v1 at /v1/ws, the Realtime front at /v1/realtime.
 */
import { chooseProtocol, presentedKey, type Tenant } from './api-keys.js';
import { ADDRESS_RATE_LIMITED, ORIGIN_REFUSED, resumeParams } from './http-request.js';
import type { Gateway } from './server.js';
import type { FrontConnection, TransportSocket } from './socket-link.js';
import { WS_PATH, REALTIME_PATH } from './transport-ws.js';

/** What a transport reads of a WebSocket upgrade request, for `Gateway.admitUpgrade`. */
export interface UpgradeRequest {
  path: string;
  query: string;
  origin: string | undefined;
  authorization: string | undefined;
  /** The Sec-WebSocket-Protocol entries. */
  protocols: string[];
  remoteAddress: string;
}

/** An upgrade refused with an HTTP answer, or accepted with the subprotocol to answer and the connection to open. */
export type UpgradeDecision =
  | { refuse: { status: number; body: string; headers?: Record<string, string> } }
  | { accept: { protocol: string | undefined; open: (sock: TransportSocket) => FrontConnection } };

/**
 * Whether a WebSocket upgrade is taken: the path, the Origin, the client address's byte budget,
 * and with API keys the key (401) and its concurrency (429).
 */
export function admitUpgrade(gw: Gateway, u: UpgradeRequest): UpgradeDecision {
  const refuse = (status: number, body: string, retryAfterMs?: number): UpgradeDecision => ({
    refuse: { status, body, headers: retryAfterMs === undefined ? undefined : { 'retry-after': String(Math.max(1, Math.ceil(retryAfterMs / 1000))) } },
  });
  if (u.path !== WS_PATH && u.path !== REALTIME_PATH) return refuse(404, 'not found\n');
  if (!gw.origins.allows(u.origin)) return refuse(403, ORIGIN_REFUSED);
  const wait = gw.addressLimiter.refusesFor(u.remoteAddress);
  if (wait > 0) return refuse(429, ADDRESS_RATE_LIMITED, wait);
  // behind a proxy with other instances, a draining one answers 503 before the upgrade: the proxy tries the next
  if (gw.draining && gw.cluster) return refuse(503, 'WEFT_DRAINING: this instance is shutting down; another one takes its sessions over\n', 1000);
  // and one still loading its model (a restart) too: it does not say it lives before it can serve
  if (!gw.scheduler && gw.cluster) return refuse(503, 'WEFT_NOT_READY: this instance is loading its model\n', 1000);
  let tenant: Tenant | null = null;
  if (gw.keys) {
    tenant = gw.keys.authenticate(presentedKey(u.authorization, u.protocols));
    if (!tenant) return refuse(401, 'WEFT_UNAUTHORIZED: a valid API key is required (Authorization: Bearer KEY, or the WebSocket subprotocol openai-insecure-api-key.KEY)\n');
    const max = tenant.limits.maxConcurrent;
    if (max !== null && tenant.active >= max) return refuse(429, `WEFT_KEY_CONCURRENCY: the API key "${tenant.name}" holds its maximum of ${max} concurrent sessions and requests\n`, 1000);
  }
  const protocol = chooseProtocol(u.protocols);
  if (u.path === REALTIME_PATH) {
    return { accept: { protocol, open: (sock) => gw.connectRealtime(sock, u.query, tenant) } };
  }
  return { accept: { protocol, open: (sock) => gw.connect(sock, resumeParams(u.query), tenant) } };
}

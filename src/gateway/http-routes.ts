/**
 * The plain HTTP routes of both transports: the probes, /metrics, a GET on a WebSocket path, the
 * chat page's files, and the dispatch of the OpenAI-compatible routes (src/gateway/openai-http.ts).
 */
import { presentedKey } from './api-keys.js';
import type { HttpExchange } from './http-exchange.js';
import type { Gateway } from './server.js';
import { StaticFiles } from './static.js';
import { WS_PATH, REALTIME_PATH } from './transport-ws.js';

export class HttpRoutes {
  /** The chat page and the SDK's browser build (src/gateway/static.ts), read once at startup. */
  private readonly statics = new StaticFiles();

  /** `closing`: whether the gateway is closing (/readyz answers 503 then, as while it drains). */
  constructor(
    private readonly gw: Gateway,
    private readonly closing: () => boolean,
  ) {
    for (const dir of this.statics.missing) gw.log(`the chat page (GET /) is incomplete: ${dir} is missing`);
  }

  /**
   * Every plain HTTP request of both transports: `/healthz` and `/readyz` (always open), `/metrics`
   * (with API keys: any key, or the file's metrics_key), the OpenAI-compatible routes under `/v1/`
   * (src/gateway/openai-http.ts), and the chat page's static files (public: they hold no data,
   * and the WebSocket they open needs a key).
   */
  handle(ex: HttpExchange): void {
    const text = (status: number, body: string, type = 'text/plain; charset=utf-8', headers: Record<string, string> = {}) =>
      ex.respond(status, { ...headers, 'content-type': type }, ex.method === 'HEAD' ? '' : body);
    const gw = this.gw;
    const path = ex.path;
    if (path.startsWith('/v1/') && path !== WS_PATH && path !== REALTIME_PATH) return gw.openai.handle(ex);
    if (ex.method !== 'GET' && ex.method !== 'HEAD') return text(405, 'method not allowed\n');
    if (path === '/healthz') return text(200, 'ok\n');
    if (path === '/readyz') {
      if (this.closing() || gw.draining) return text(503, 'draining\n');
      if (!gw.scheduler) return text(503, 'loading\n');
      // a sticky GPU fault: every step fails (WEFT_DEVICE_LOST) until the process restarts
      if (gw.engine?.deviceLost) return text(503, 'device lost: restart the process\n');
      // Redis down: this instance still serves its own sessions (ready), and says what it cannot do
      const redis = gw.cluster ? (gw.cluster.up ? 'redis: up\n' : 'redis: down (serving this instance\'s sessions; no takeover, no shared budgets)\n') : '';
      return text(200, `ready\n${redis}`);
    }
    if (path === '/metrics') {
      if (gw.keys && !gw.keys.allowsMetrics(presentedKey(ex.header('authorization')))) {
        return text(401, 'WEFT_UNAUTHORIZED: /metrics needs an API key or the metrics key (Authorization: Bearer KEY)\n', undefined, { 'www-authenticate': 'Bearer' });
      }
      gw.metrics.registry.metrics().then(
        (body) => text(200, body, gw.metrics.registry.contentType),
        (err: unknown) => text(500, `${(err as Error).message}\n`),
      );
      return;
    }
    if (path === WS_PATH || path === REALTIME_PATH) {
      // with API keys a plain GET says whether the key would pass (a browser sees a refused upgrade only as a close)
      if (gw.keys && !gw.keys.authenticate(presentedKey(ex.header('authorization')))) return text(401, 'WEFT_UNAUTHORIZED: a valid API key is required\n', undefined, { 'www-authenticate': 'Bearer' });
      return text(426, 'upgrade to WebSocket\n');
    }
    const file = this.statics.get(path);
    if (file) return ex.respond(file.status, { ...file.headers, 'content-type': file.type }, ex.method === 'HEAD' ? '' : file.body);
    return text(404, 'not found\n');
  }
}

/**
 * The OpenAI front's whole (not streamed) HTTP replies: a JSON body (counted, with CORS), an
 * error before a response started (OpenAI's body with the status of its code and the headers the
 * status calls for), and CORS for browsers calling the API from another origin, preflight included.
 */
import { WeftError, toWeftError } from '../errors.js';
import { presentedKey, type Tenant } from './api-keys.js';
import type { HttpExchange } from './http-exchange.js';
import { ParamError } from './openai-schema.js';
import { budgetHeaders, JSON_TYPE, openaiError } from './openai-shapes.js';
import type { Gateway } from './server.js';

export function replyJson(gw: Gateway, ex: HttpExchange, status: number, body: unknown, headers: Record<string, string> = {}): void {
  gw.metrics.httpRequests.inc({ status: String(status) });
  ex.respond(status, { ...headers, ...corsHeaders(gw, ex), ...JSON_TYPE }, JSON.stringify(body));
}

/**
 * CORS for browsers calling the API from another origin: only origins the gateway allows
 * (--allowed-origins; `*`: any). The server's own origin needs none.
 */
export function corsHeaders(gw: Gateway, ex: HttpExchange): Record<string, string> {
  const origin = ex.header('origin');
  if (!origin || !gw.origins.allows(origin)) return {};
  return { 'access-control-allow-origin': origin, vary: 'Origin', 'access-control-expose-headers': 'retry-after, x-ratelimit-limit-tokens, x-ratelimit-remaining-tokens, x-ratelimit-reset-tokens' };
}

/** A browser's CORS preflight: 204 with what it may send, or 403 for an origin not allowed. */
export function replyPreflight(gw: Gateway, ex: HttpExchange): void {
  const cors = corsHeaders(gw, ex);
  if (!cors['access-control-allow-origin']) return replyError(gw, ex, new WeftError('WEFT_ORIGIN_REFUSED', 'this origin may not call the API here (weft serve --allowed-origins)'));
  const headers = ex.header('access-control-request-headers');
  gw.metrics.httpRequests.inc({ status: '204' });
  ex.respond(204, {
    ...cors,
    'access-control-allow-methods': 'GET, POST, OPTIONS',
    // the openai SDK sends its x-stainless-* headers besides authorization and content-type
    'access-control-allow-headers': headers && /^[\w\-, ]{1,2000}$/.test(headers) ? headers : 'authorization, content-type',
    'access-control-max-age': '600',
  }, '');
}

/** An error before a response started: OpenAI's error body with the status of its code. */
export function replyError(gw: Gateway, ex: HttpExchange, err: unknown): void {
  const e = toWeftError(err);
  gw.metrics.errors.inc({ code: e.code });
  const headers: Record<string, string> = {};
  const wait = (err as { retryAfterMs?: number })?.retryAfterMs;
  if (e.status === 429 || e.status === 503) headers['retry-after'] = String(Math.max(1, Math.ceil((wait ?? 1000) / 1000)));
  if (e.status === 401) headers['www-authenticate'] = 'Bearer';
  const allowed = (err as { allow?: string })?.allow;
  if (allowed) headers.allow = allowed;
  if (e.code === 'WEFT_KEY_BUDGET' && tenantOf(gw, ex)) Object.assign(headers, budgetHeaders(tenantOf(gw, ex)));
  replyJson(gw, ex, e.status, openaiError(e, err instanceof ParamError ? err.param : null), headers);
}

/** The tenant of a request's key (for the rate-limit headers of its refusal). */
function tenantOf(gw: Gateway, ex: HttpExchange): Tenant | null {
  return gw.keys?.authenticate(presentedKey(ex.header('authorization'))) ?? null;
}

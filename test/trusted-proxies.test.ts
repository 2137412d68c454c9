/**
 * Behind a reverse proxy (deploy/nginx) every client arrives from the proxy's address: with
 * --trusted-proxies the client's address (per-address limits, the pool of sessions held for
 * resume) is read from X-Forwarded-For, and only from proxies that are trusted.
 */
import { expect, test } from 'vitest';
import WebSocket from 'ws';
import { Gateway } from '../src/gateway/server.js';

test('the client address: the peer, or behind a trusted proxy the last untrusted X-Forwarded-For hop', () => {
  const gw = new Gateway({ port: 0, trustedProxies: ['127.0.0.1', '10.0.0.0/8', '::1'] });
  expect(gw.clientAddress('203.0.113.9', '198.51.100.1')).toBe('203.0.113.9'); // an untrusted peer's header is ignored
  expect(gw.clientAddress('127.0.0.1', '198.51.100.1')).toBe('198.51.100.1');
  expect(gw.clientAddress('::ffff:127.0.0.1', '198.51.100.1')).toBe('198.51.100.1');
  expect(gw.clientAddress('::1', '2001:db8::5')).toBe('2001:db8::5');
  // a client that sends its own X-Forwarded-For cannot hide behind it: the proxy appends the real one
  expect(gw.clientAddress('127.0.0.1', '1.2.3.4, 198.51.100.1')).toBe('198.51.100.1');
  // a chain of trusted proxies is skipped
  expect(gw.clientAddress('127.0.0.1', '198.51.100.1, 10.1.2.3, 10.9.9.9')).toBe('198.51.100.1');
  expect(gw.clientAddress('127.0.0.1', undefined)).toBe('127.0.0.1');
  expect(gw.clientAddress('127.0.0.1', 'garbage')).toBe('127.0.0.1');
  expect(gw.clientAddress('127.0.0.1', '10.0.0.1, 10.0.0.2')).toBe('10.0.0.1');
  const open = new Gateway({ port: 0 });
  expect(open.clientAddress('127.0.0.1', '198.51.100.1')).toBe('127.0.0.1');
  for (const bad of ['localhost', '10.0.0.0/33', '1.2.3.4/x', '']) {
    expect(() => new Gateway({ port: 0, trustedProxies: [bad] }), bad).toThrow(expect.objectContaining({ code: 'WEFT_BAD_ARGUMENT' }));
  }
});

test.each(['ws', 'uws'] as const)('per-address upgrade refusals follow the forwarded address (%s)', async (transport) => {
  const gw = new Gateway({ transport, port: 0, trustedProxies: ['127.0.0.1'], maxFrameBytes: 1024, maxBytesPerSecondPerClient: 1024 });
  const { url } = await gw.listen();
  try {
    // spend 203.0.113.1's byte budget as the address limiter sees it
    for (let i = 0; i < 4; i++) gw.addressLimiter.admit('203.0.113.1', 1024);
    const up = (xff: string) =>
      new Promise<number>((resolve) => {
        const ws = new WebSocket(url.replace('http', 'ws') + '/v1/ws', { headers: { 'x-forwarded-for': xff } });
        ws.on('unexpected-response', (_req, res) => {
          resolve(res.statusCode ?? 0);
          ws.terminate();
        });
        ws.on('open', () => {
          resolve(101);
          ws.close();
        });
        ws.on('error', () => resolve(0));
      });
    expect(await up('203.0.113.1')).toBe(429);
    // another client behind the same proxy is not refused
    expect(await up('203.0.113.2')).toBe(101);
  } finally {
    await gw.close();
  }
});

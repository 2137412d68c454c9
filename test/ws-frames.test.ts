/**
 * The ws transport writes a step's frames for a socket as one buffer of ready-made frames
 * (encodeTextFrames): those bytes must be what a WebSocket client reads, message by message, for
 * every length class (7-bit, 16-bit and 64-bit lengths) and multi-byte UTF-8.
 */
import { describe, expect, it } from 'vitest';
import { Receiver } from 'ws';
import { encodeTextFrames } from '../src/gateway/transport-ws.js';

function receive(buf: Buffer): Promise<string[]> {
  return new Promise((resolve, reject) => {
    // a client's receiver: the server's frames are unmasked
    const r = new Receiver({ isServer: false });
    const got: string[] = [];
    r.on('message', (data: Buffer, isBinary: boolean) => {
      expect(isBinary).toBe(false);
      got.push(data.toString('utf8'));
    });
    r.on('error', reject);
    r.write(buf, () => resolve(got));
  });
}

describe('encodeTextFrames', () => {
  it('frames that the ws package reads back, every length class, UTF-8 included', async () => {
    const texts = ['', 'a', 'x'.repeat(125), 'y'.repeat(126), 'é€😀'.repeat(40), 'z'.repeat(65535), 'w'.repeat(65536), '{"type":"token","text":"naïve"}'.repeat(3000)];
    const buf = encodeTextFrames(texts);
    expect(await receive(buf)).toEqual(texts);
  });

  it('split anywhere across writes, the frames still read back in order', async () => {
    const texts = Array.from({ length: 50 }, (_, i) => `{"seq":${i},"text":"${'ü'.repeat(i * 7)}"}`);
    const buf = encodeTextFrames(texts);
    const r = new Receiver({ isServer: false });
    const got: string[] = [];
    r.on('message', (d: Buffer) => got.push(d.toString('utf8')));
    for (let at = 0; at < buf.length; at += 13) r.write(buf.subarray(at, at + 13), () => {});
    await new Promise((res) => setImmediate(res));
    expect(got).toEqual(texts);
  });
});

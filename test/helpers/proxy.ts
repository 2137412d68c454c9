/** A TCP proxy for tests that lose the network. */
import { createServer, connect, type Server, type Socket } from 'node:net';

export /** A loopback TCP proxy whose open connections can be cut at once. */
class CuttingProxy {
  private readonly pairs = new Set<[Socket, Socket]>();
  private server!: Server;
  port = 0;

  static async start(target: number): Promise<CuttingProxy> {
    const p = new CuttingProxy();
    p.server = createServer((client) => {
      const upstream = connect(target, '127.0.0.1');
      const pair: [Socket, Socket] = [client, upstream];
      p.pairs.add(pair);
      client.pipe(upstream).pipe(client);
      const drop = () => {
        p.pairs.delete(pair);
        client.destroy();
        upstream.destroy();
      };
      client.on('error', drop).on('close', drop);
      upstream.on('error', drop).on('close', drop);
    });
    await new Promise<void>((r) => p.server.listen(0, '127.0.0.1', () => r()));
    p.port = (p.server.address() as { port: number }).port;
    return p;
  }

  /** Cuts every connection (both sides see the TCP connection reset). */
  cut(): void {
    for (const [a, b] of this.pairs) {
      a.resetAndDestroy();
      b.resetAndDestroy();
    }
    this.pairs.clear();
  }

  close(): Promise<void> {
    this.cut();
    return new Promise((r) => this.server.close(() => r()));
  }
}

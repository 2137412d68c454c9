/** A protocol v1 test client over the ws package: every event kept, awaited by predicate. */
import WebSocket from 'ws';

// eslint-disable-next-line @typescript-eslint/no-explicit-any
export type Ev = Record<string, any>;

export class Client {
  readonly events: Ev[] = [];
  private waiters: (() => void)[] = [];
  closed = false;
  closeCode = 0;
  private constructor(readonly ws: WebSocket) {
    ws.on('message', (d) => {
      this.events.push(JSON.parse(d.toString()));
      for (const w of this.waiters.splice(0)) w();
    });
    ws.on('close', (code) => {
      this.closed = true;
      this.closeCode = code;
      for (const w of this.waiters.splice(0)) w();
    });
  }
  static async open(url: string, opts?: WebSocket.ClientOptions): Promise<Client> {
    const ws = new WebSocket(url, opts);
    const c = new Client(ws);
    await new Promise<void>((res, rej) => {
      ws.once('open', () => res());
      ws.once('error', rej);
    });
    ws.on('error', () => undefined); // a close the server forces (1008, 1009) is seen as the close event
    return c;
  }
  send(ev: unknown): void {
    this.ws.send(typeof ev === 'string' ? ev : JSON.stringify(ev));
  }
  private pos = 0;
  /** The next event (after those already taken) that matches. */
  async next(pred: (e: Ev) => boolean = () => true, timeoutMs = 20_000): Promise<Ev> {
    const deadline = Date.now() + timeoutMs;
    for (;;) {
      while (this.pos < this.events.length) {
        const e = this.events[this.pos++]!;
        if (pred(e)) return e;
      }
      if (this.closed) throw new Error('closed');
      if (Date.now() > deadline) throw new Error('timeout');
      await new Promise<void>((r) => {
        this.waiters.push(r);
        setTimeout(r, 100);
      });
    }
  }
  async waitClosed(): Promise<void> {
    while (!this.closed) await new Promise<void>((r) => this.waiters.push(r));
  }
  /** Sends a message and collects the response to its done event. */
  async turn(content: string, sampling?: object): Promise<{ created: Ev; deltas: Ev[]; done: Ev; text: string }> {
    this.send({ type: 'message.create', content, sampling, event_id: `m-${content.length}` });
    const created = await this.next((e) => e.type === 'response.created');
    const deltas: Ev[] = [];
    for (;;) {
      const e = await this.next((x) => x.response_id === created.response_id);
      if (e.type === 'response.delta') deltas.push(e);
      else if (e.type === 'response.done') return { created, deltas, done: e, text: deltas.map((d) => d.text).join('') };
    }
  }
}

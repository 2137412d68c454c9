/**
 * The transport side of the WebSocket fronts (protocol v1's Connection, the Realtime front's
 * RealtimeConnection): what a transport gives a connection (TransportSocket) and asks of it
 * (FrontConnection), the check every front makes when its socket opens (openFront), and the
 * socket's link (SocketLink: corking per step, rate limits, unread answers, backpressure) that
 * every frame goes through, shared by the fronts through LinkedFront.
 */
import { toWeftError, type WeftErrorCode } from '../errors.js';
import { ConnectionRateLimiter } from './rate-limit.js';
import type { Gateway } from './server.js';

/**
 * What a transport gives a connection. The transport calls `Connection.onDrain()` whenever
 * queued bytes have been written out (after a send that had to wait, at the latest).
 */
export interface TransportSocket {
  /** Sends one text frame. */
  send(text: string): void;
  /** Holds the frames sent until `uncork()`, which writes them out together. */
  cork(): void;
  uncork(): void;
  /** Bytes queued and not yet written out. */
  readonly bufferedAmount: number;
  close(code?: number, reason?: string): void;
  /**
   * Stops reading the client's frames for `ms` (TCP then pushes back on the client). Optional:
   * uWebSockets.js' WebSocket cannot pause reading; there a client that keeps sending over its
   * limit is disconnected instead.
   */
  pauseReading?(ms: number): void;
  /** The client's IP address as the transport saw it ('' when unknown). */
  readonly remoteAddress: string;
}

/**
 * A WebSocket front's connection as the gateway and the transports see it: protocol v1's
 * Connection (/v1/ws) and the Realtime front's (/v1/realtime, src/gateway/realtime.ts).
 */
export interface FrontConnection {
  /** Called by the transport once the WebSocket is open. Never throws. */
  open(): void;
  /** Called by the transport for every frame. Never throws. */
  onMessage(data: Buffer | string, isBinary: boolean): void;
  /** Called by the transport when the socket is gone (`end`: the session is ended, not kept). */
  onClose(end?: boolean): void;
  /** Called by the transport when queued bytes were written out. */
  onDrain(): void;
  /** Writes out the frames corked during a step's delivery. */
  uncork(): void;
  /** Whether a response is running or being prepared (a drain waits for it). */
  readonly busy: boolean;
  /** The server drains: tell the client how long it has (and where to go next). */
  notifyDraining(retryAfterMs: number, resumeUrl: string | undefined): void;
  /** The drain's time is up: a running response ends now. */
  cancelForShutdown(): void;
  /** Closes the socket for shutdown (1001). */
  closeForShutdown(): void;
}

/**
 * Opens a front's connection: refused (`refuse`) while the model loads or the server drains, or
 * when `start` throws (a key over its concurrency); else `start` makes its session.
 */
export function openFront(gw: Gateway, start: () => void, refuse: (code: WeftErrorCode, message: string) => void): void {
  try {
    if (!gw.scheduler || !gw.format) return refuse('WEFT_NOT_READY', 'the model is still loading; retry when GET /readyz is 200');
    if (gw.draining) return refuse('WEFT_DRAINING', 'the server is shutting down; connect to another instance or retry later');
    start();
  } catch (err) {
    const e = toWeftError(err);
    refuse(e.code, e.message);
  }
}

/** What a SocketLink needs of its front's connection. */
export interface LinkOwner {
  /** Sends the front's error event for a frame that was refused (the link counts it in the metrics). */
  sendError(code: WeftErrorCode, message: string, retryAfterMs?: number): void;
  /** The link closes the socket (1008): the connection ends. */
  onClose(): void;
}

/**
 * A front connection's socket, whatever the protocol: frames sent while the scheduler delivers a
 * step's events are corked and written out together when the delivery ends (one write per socket
 * per step); received frames are checked before they are parsed (the connection's and the client
 * address's rate limits, and a client that does not read its answers); and the socket's buffered
 * bytes pause the connection's responses (backpressure) until they drain.
 */
export class SocketLink {
  private readonly limiter: ConnectionRateLimiter;
  private pausedUntil = 0;
  /** Frames, and their bytes, dropped by the rate limiter since the last one taken. */
  private numDropped = 0;
  private droppedBytes = 0;
  private wasBlocked = false;
  private corked = false;

  constructor(
    private readonly gw: Gateway,
    private readonly sock: TransportSocket,
    private readonly owner: LinkOwner,
  ) {
    this.limiter = new ConnectionRateLimiter(gw.rateLimits);
  }

  /**
   * Whether a received frame may be parsed. When not, the client was told; a client that sends
   * while it does not read, or keeps sending over its limit, is disconnected.
   */
  admit(data: Buffer | string): boolean {
    if (this.sock.bufferedAmount > this.gw.maxBufferedBytes) {
      // it sends while it does not read what it is sent: the answers would pile up here without bound
      this.refuse('WEFT_RATE_LIMITED', `the client does not read its answers (${this.sock.bufferedAmount} bytes waiting for it); the connection is closed`);
      this.disconnect();
      return false;
    }
    const size = typeof data === 'string' ? Buffer.byteLength(data) : data.length;
    const wait = this.limiter.admit(size) || this.gw.addressLimiter.admit(this.sock.remoteAddress, size);
    if (wait > 0) {
      this.rateLimited(wait, size);
      return false;
    }
    this.numDropped = 0;
    this.droppedBytes = 0;
    return true;
  }

  /** A frame over the connection's rate: answered without being parsed, and the socket is not read until the budget is back. */
  private rateLimited(waitMs: number, size: number): void {
    this.droppedBytes += size;
    // a transport that cannot pause reading would read (and unmask) everything the client sends:
    // close at once; else close when it keeps sending without heeding retry_after_ms
    const close = !this.sock.pauseReading || ++this.numDropped > this.gw.rateLimits.frameBurst || this.droppedBytes > this.gw.rateLimits.byteBurst;
    const what = close ? 'the frame was dropped and the connection is closed' : 'the frame was dropped';
    this.refuse('WEFT_RATE_LIMITED', `too many frames or bytes per second from this connection or client address; ${what}`, waitMs);
    if (close) return this.disconnect();
    const now = performance.now();
    if (this.sock.pauseReading && now + waitMs > this.pausedUntil) {
      this.pausedUntil = now + waitMs;
      this.sock.pauseReading(waitMs);
    }
  }

  private refuse(code: WeftErrorCode, message: string, retryAfterMs?: number): void {
    this.gw.metrics.errors.inc({ code });
    this.owner.sendError(code, message, retryAfterMs);
  }

  private disconnect(): void {
    this.owner.onClose();
    this.sock.close(1008, 'WEFT_RATE_LIMITED');
  }

  /** Sends one frame, corked while the scheduler delivers a step's events (`uncork`, called by the gateway, writes them out). */
  send(text: string): void {
    if (!this.corked && this.gw.scheduler?.delivering) {
      this.corked = true;
      this.sock.cork();
      this.gw.corked.push(this);
    }
    this.sock.send(text);
  }

  /** Writes out the frames corked during a step's delivery. */
  uncork(): void {
    if (!this.corked) return;
    this.corked = false;
    this.sock.uncork();
  }

  /** The responses' backpressure hook: true while the socket holds more than the threshold. */
  blocked(): boolean {
    return (this.wasBlocked = this.sock.bufferedAmount > this.gw.backpressureBytes);
  }

  /** Queued bytes were written out: a response paused by backpressure resumes. */
  onDrain(): void {
    if (this.wasBlocked && this.sock.bufferedAmount <= this.gw.backpressureBytes) {
      this.wasBlocked = false;
      this.gw.scheduler?.wake();
    }
  }
}

/**
 * What the WebSocket fronts share: their socket's link (SocketLink), through which every frame
 * goes while the connection is open, and the transport's calls that only the link serves.
 */
export abstract class LinkedFront implements LinkOwner {
  protected closed = false;
  protected readonly link: SocketLink;

  constructor(
    protected readonly gw: Gateway,
    protected readonly sock: TransportSocket,
  ) {
    this.link = new SocketLink(gw, sock, this);
  }

  /** The front's error event for a frame the link refused. */
  abstract sendError(code: WeftErrorCode, message: string, retryAfterMs?: number): void;
  abstract onClose(end?: boolean): void;

  /** Sends one frame while the connection is open (corked per step: SocketLink). */
  protected sendText(text: string): void {
    if (!this.closed) this.link.send(text);
  }

  /** Writes out the frames corked during a step's delivery. */
  uncork(): void {
    this.link.uncork();
  }

  /** Called by the transport when queued bytes were written out: a blocked response resumes. */
  onDrain(): void {
    this.link.onDrain();
  }
}

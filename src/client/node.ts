/**
 * `weft/client` in Node: the SDK with the `ws` package as its WebSocket (it can pause reading, so a
 * consumer that stops reading pushes back on the server).
 */
import WebSocket from 'ws';
import { WeftClient, type WebSocketConstructor } from './client.js';

export { WeftClient, WeftError, WeftResponse } from './client.js';
export type { ClientNotice, ConnectOptions, ResponseDone, SendOptions, WebSocketConstructor, WebSocketLike } from './client.js';
export type * from './protocol.js';

WeftClient.defaultWebSocket = WebSocket as unknown as WebSocketConstructor;

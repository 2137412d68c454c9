/**
 * `weft/client` in browsers (and any runtime with a global WebSocket): the SDK, no Node import.
 * In Node 20 use `weft/client` too: its `node` condition adds the `ws` package (./node.ts).
 */
export { WeftClient, WeftError, WeftResponse } from './client.js';
export type { ClientNotice, ConnectOptions, ResponseDone, SendOptions, WebSocketConstructor, WebSocketLike } from './client.js';
export type * from './protocol.js';

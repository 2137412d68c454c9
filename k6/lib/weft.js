// weft protocol v1.1 for k6 (k6/websockets): the steps of docs/protocol.md that a chat client
// takes, shared by k6/chat.js and k6/ramp.js.
//
//   connect   open ws://.../v1/ws and wait for session.created
//   turn      message.create, then response.created, response.delta (seq 0, 1, 2, ...), and
//             one response.done for that response_id
//   close     session.close, then session.closed and the server's close (1000)
//   chat      one session: connect, TURNS turns, close (a VU iteration)
//
// Metrics (see k6/README.md): weft_ttft, weft_itl (Trends, ms), weft_tokens (Counter: deltas
// received), weft_errors (Counter, tag `code`: the server's error code, or CLIENT_* for what
// the client saw: CLIENT_CONNECT_FAILED, CLIENT_CLOSED, CLIENT_TIMEOUT, CLIENT_BAD_FRAME).
// Protocol checks go to k6's `checks` metric.
import { check } from 'k6';
import { Counter, Trend } from 'k6/metrics';
import { clearTimeout, setTimeout } from 'k6/timers';
import { WebSocket } from 'k6/websockets';

export const ttft = new Trend('weft_ttft', true);
export const itl = new Trend('weft_itl', true);
export const tokens = new Counter('weft_tokens');
export const errors = new Counter('weft_errors');

/** The messages a session sends, turn after turn (the same list as bench/k6-chat.ts). */
export const PROMPTS = [
  'Who was the son of David, and what did he say unto the people?',
  'Tell me of the garden eastward in Eden.',
  'What did Moses say unto Pharaoh?',
  'Sing a psalm of the shepherd and his sheep.',
  'And what came to pass after these things?',
  'Who built the ark, and how long did the waters prevail upon the earth?',
];

/** @param {number} i the i-th prompt (modulo their number) */
export function prompt(i) {
  return /** @type {string} */ (PROMPTS[i % PROMPTS.length]);
}

/**
 * @typedef {Object} Settings
 * @property {string} url
 * @property {number} turns       message.create per session (VU iteration)
 * @property {number} maxTokens   sampling.max_tokens
 * @property {number} temperature sampling.temperature
 * @property {number | undefined} seed sampling.seed (none when SEED is not set)
 * @property {number} thinkMs     pause between a response.done and the next message.create
 * @property {number} timeoutMs   longest wait for session.created, a response or session.closed
 */

/** @param {string} name */
function envString(name) {
  const v = __ENV[name];
  return v === undefined || v === '' ? undefined : v;
}

/**
 * A number from __ENV, or `fallback` when unset; anything else than a number is an error
 * (thrown in the init context: k6 stops before the test starts).
 * @param {string} name
 * @param {number} fallback
 * @param {{integer?: boolean, min?: number}} [rule]
 */
export function envNumber(name, fallback, rule) {
  const v = envString(name);
  if (v === undefined) return fallback;
  const n = Number(v);
  const min = rule && rule.min !== undefined ? rule.min : 0;
  if (!Number.isFinite(n) || n < min || (rule && rule.integer && !Number.isInteger(n))) {
    throw new Error(`${name} must be ${rule && rule.integer ? 'an integer' : 'a number'} >= ${min} (got ${v})`);
  }
  return n;
}

/** @param {string} name @param {string} fallback */
export function env(name, fallback) {
  const v = envString(name);
  return v === undefined ? fallback : v;
}

/** The scenario's settings, from __ENV (k6 run -e NAME=value, or the environment). @returns {Settings} */
export function settings() {
  const seed = envString('SEED');
  return {
    url: env('URL', 'ws://127.0.0.1:8080/v1/ws'),
    turns: envNumber('TURNS', 3, { integer: true, min: 1 }),
    maxTokens: envNumber('MAX_TOKENS', 64, { integer: true, min: 1 }),
    temperature: envNumber('TEMPERATURE', 0.8),
    seed: seed === undefined ? undefined : envNumber('SEED', 0, { integer: true }),
    thinkMs: envNumber('THINK_MS', 0),
    timeoutMs: envNumber('TIMEOUT_MS', 60000, { min: 1 }),
  };
}

/**
 * A server event, as far as these scripts read it.
 * @typedef {Object} ServerEvent
 * @property {string} type
 * @property {string} [event_id]
 * @property {string} [response_id]
 * @property {number} [seq]
 * @property {string} [code]
 * @property {string} [message]
 * @property {string} [finish_reason]
 * @property {{code: string, message: string}} [error]
 * @property {{prompt_tokens: number, cached_tokens: number, completion_tokens: number}} [usage]
 */

/**
 * One session's connection.
 * @typedef {Object} Conn
 * @property {WebSocket} ws
 * @property {Record<string, string>} tags       added to every metric sample
 * @property {((ev: ServerEvent, at: number) => void) | null} onEvent  the step that waits
 * @property {(() => void) | null} onClose
 * @property {boolean} opened     the WebSocket handshake succeeded
 * @property {boolean} closed
 * @property {number} frames        server events received
 * @property {Set<string>} done     response ids whose response.done came
 * @property {number} afterDone     frames of a response that came after its response.done
 * @property {number} events        event_ids used
 */

/**
 * Whether the socket is open: from the open and close events, not from `ws.readyState` (a
 * number in recent k6, a wrapped Go value that is never === 1 in older ones; and k6 has no
 * `WebSocket.OPEN`).
 * @param {Conn} conn
 */
function isOpen(conn) {
  return conn.opened && !conn.closed;
}

/**
 * Count an error by its code.
 * @param {Conn} conn
 * @param {string} code
 */
function countError(conn, code) {
  errors.add(1, Object.assign({ code }, conn.tags));
}

/**
 * Wait for something on a connection: `step` gets every server event (with the time it was
 * read, in ms) and calls `end` with the result. A close or `timeoutMs` without the result
 * ends the wait with CLIENT_CLOSED (CLIENT_CONNECT_FAILED before the handshake succeeded) or
 * CLIENT_TIMEOUT, counted in weft_errors.
 * @template T
 * @param {Conn} conn
 * @param {number} timeoutMs
 * @param {(code: string) => T} failed  the result when the wait fails
 * @param {(ev: ServerEvent, at: number, end: (result: T) => void) => void} step
 * @returns {Promise<T>}
 */
function waitFor(conn, timeoutMs, failed, step) {
  return new Promise((resolve) => {
    /** @param {T} result */
    const end = (result) => {
      clearTimeout(timer);
      conn.onEvent = null;
      conn.onClose = null;
      resolve(result);
    };
    /** @param {string} code */
    const fail = (code) => {
      countError(conn, code);
      end(failed(code));
    };
    const closed = () => fail(conn.opened ? 'CLIENT_CLOSED' : 'CLIENT_CONNECT_FAILED');
    const timer = setTimeout(() => fail('CLIENT_TIMEOUT'), timeoutMs);
    if (conn.closed) return closed();
    conn.onClose = closed;
    conn.onEvent = (ev, at) => step(ev, at, end);
  });
}

/**
 * Open a session: resolves with the connection once session.created came, or null (the error
 * is counted in weft_errors).
 * @param {string} url
 * @param {Record<string, string>} tags
 * @param {number} timeoutMs
 * @returns {Promise<Conn | null>}
 */
export function connect(url, tags, timeoutMs) {
  const ws = new WebSocket(url, null, { tags });
  /** @type {Conn} */
  const conn = { ws, tags, onEvent: null, onClose: null, opened: false, closed: false, frames: 0, done: new Set(), afterDone: 0, events: 0 };
  ws.addEventListener('open', () => {
    conn.opened = true;
  });
  ws.addEventListener('message', (e) => {
    if (!('data' in e)) return;
    conn.frames++;
    // the time the frame was read off the socket (ms, fractional), before it waited for the JS loop
    const at = e.timestamp > 0 ? e.timestamp : Date.now();
    /** @type {ServerEvent} */
    let ev;
    try {
      ev = JSON.parse(String(e.data));
    } catch (_) {
      countError(conn, 'CLIENT_BAD_FRAME');
      return;
    }
    if (ev.type === 'error') countError(conn, String(ev.code));
    if (ev.response_id !== undefined && conn.done.has(ev.response_id)) conn.afterDone++;
    if (conn.onEvent) conn.onEvent(ev, at);
  });
  // a failed handshake or an abnormal close: k6 calls the error listeners, then the close
  // listeners, and the close ends whatever waited (counted once, there)
  ws.addEventListener('error', (e) => {
    if ('error' in e && __ENV.DEBUG) console.warn(`weft: ${e.error}`);
  });
  ws.addEventListener('close', () => {
    conn.closed = true;
    if (conn.onClose) conn.onClose();
  });
  /** @returns {Conn | null} */
  const failed = () => {
    if (isOpen(conn)) ws.close(); // (one still connecting ends when its handshake does)
    return null;
  };
  return waitFor(conn, timeoutMs, failed, (ev, _at, end) => {
    if (ev.type === 'session.created') {
      check(ev, { 'session.created is the first event': () => conn.frames === 1 }, tags);
      return end(conn);
    }
    // an error instead (WEFT_TOO_MANY_SESSIONS, WEFT_NOT_READY, WEFT_DRAINING): counted
    // already; the server closes the connection
    if (ev.type === 'error') end(failed());
  });
}

/**
 * @typedef {Object} TurnResult
 * @property {string} code            '' when the response ended with response.done, else the error code
 * @property {string} finishReason
 * @property {number} deltas          response.delta frames received
 * @property {boolean} inOrder        seq counted 0, 1, 2, ... without gaps
 */

/**
 * One turn: message.create, then wait for its response.done. Records weft_ttft (send to the
 * first delta), weft_itl (between deltas), weft_tokens and checks the stream.
 * @param {Conn} conn
 * @param {string} content
 * @param {{max_tokens?: number, temperature?: number, seed?: number}} sampling
 * @param {number} timeoutMs
 * @returns {Promise<TurnResult>}
 */
export function turn(conn, content, sampling, timeoutMs) {
  const eventId = `t${++conn.events}`;
  /** @type {string | undefined} */
  let responseId;
  let next = 0;
  let inOrder = true;
  let count = 0;
  let last = 0;
  const sent = Date.now();
  const tags = conn.tags;
  /** @param {string} code @returns {TurnResult} */
  const failed = (code) => {
    if (count > 0) tokens.add(count, tags);
    return { code, finishReason: '', deltas: count, inOrder };
  };
  const result = waitFor(conn, timeoutMs, failed, (ev, at, end) => {
    if (ev.type === 'response.created' && ev.event_id === eventId) {
      responseId = ev.response_id;
      return;
    }
    if (ev.type === 'error' && ev.event_id === eventId) return end(failed(String(ev.code)));
    if (responseId === undefined || ev.response_id !== responseId) return;
    if (ev.type === 'response.delta') {
      if (ev.seq !== next) inOrder = false;
      next = (ev.seq === undefined ? next : ev.seq) + 1;
      if (count === 0) ttft.add(at - sent, tags);
      else itl.add(at - last, tags);
      last = at;
      count++;
    } else if (ev.type === 'response.done') {
      conn.done.add(responseId);
      tokens.add(count, tags);
      const code = ev.finish_reason === 'error' ? (ev.error ? ev.error.code : 'WEFT_INTERNAL') : '';
      if (code) countError(conn, code);
      const usage = ev.usage;
      check(ev, {
        'seq counts from 0 without gaps': () => inOrder,
        'one response.delta per completion token': () => usage !== undefined && usage.completion_tokens === count,
      }, tags);
      end({ code, finishReason: String(ev.finish_reason), deltas: count, inOrder });
    }
  });
  if (isOpen(conn)) conn.ws.send(JSON.stringify({ type: 'message.create', content, sampling, event_id: eventId }));
  return result;
}

/**
 * End the session: session.close, session.closed, the server's close. Checks that no response
 * sent anything after its response.done (each response ends with exactly one response.done).
 * @param {Conn} conn
 * @param {number} timeoutMs
 * @returns {Promise<boolean>} whether session.closed came
 */
export async function close(conn, timeoutMs) {
  let ok = false;
  if (isOpen(conn)) {
    const eventId = `c${++conn.events}`;
    const closed = waitFor(conn, timeoutMs, () => false, (ev, _at, end) => {
      if (ev.type === 'session.closed' && ev.event_id === eventId) end(true);
    });
    conn.ws.send(JSON.stringify({ type: 'session.close', event_id: eventId }));
    ok = await closed;
  }
  // the server closes the socket after session.closed; wait for that (a VU's iteration ends
  // once its sockets are closed), else close it here
  if (!conn.closed) {
    await new Promise((resolve) => {
      const timer = setTimeout(() => {
        conn.onClose = null;
        resolve(undefined);
      }, 2000);
      conn.onClose = () => {
        clearTimeout(timer);
        resolve(undefined);
      };
    });
  }
  if (!conn.closed) conn.ws.close();
  check(conn, { 'each response ends with exactly one response.done': (c) => c.afterDone === 0 }, conn.tags);
  return ok;
}

/** @param {number} ms @returns {Promise<void>} */
export function sleepMs(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/**
 * One VU iteration: a session of `s.turns` turns, the prompts taken in turn from PROMPTS
 * (starting at a place that depends on the VU and the iteration), then session.close.
 * @param {Settings} s
 * @param {number} vu     __VU
 * @param {number} iter   __ITER
 * @param {() => Record<string, string>} [tagsNow]  tags for the samples of the next turn
 */
export async function chat(s, vu, iter, tagsNow) {
  const tags = tagsNow ? tagsNow() : {};
  const conn = await connect(s.url, tags, s.timeoutMs);
  if (!conn) {
    await sleepMs(1000); // do not hammer a server that refuses sessions
    return;
  }
  /** @type {{max_tokens: number, temperature: number, seed?: number}} */
  const sampling = { max_tokens: s.maxTokens, temperature: s.temperature };
  if (s.seed !== undefined) sampling.seed = s.seed;
  for (let t = 0; t < s.turns; t++) {
    if (tagsNow) conn.tags = tagsNow();
    const r = await turn(conn, prompt(vu + iter + t), sampling, s.timeoutMs);
    if (r.code === 'CLIENT_CLOSED' || r.code === 'CLIENT_TIMEOUT') break;
    if (s.thinkMs > 0 && t + 1 < s.turns) await sleepMs(s.thinkMs);
  }
  await close(conn, s.timeoutMs);
}

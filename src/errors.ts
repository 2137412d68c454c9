/**
 * The one catalog of weft error codes. Native code, the engine wrapper, the CLI and the gateway
 * all raise errors from this table; docs/errors.md documents every entry (a test keeps them in
 * step). `status` is the HTTP-style status a gateway maps the error to; `retryable` says whether
 * the same request may succeed later without change.
 */
export const ERRORS = {
  WEFT_MODEL_NOT_FOUND: { status: 404, retryable: false, summary: 'A model path (directory or file) is missing or unreadable.' },
  WEFT_MODEL_FORMAT: { status: 422, retryable: false, summary: 'config.json, a safetensors, GGUF or plan file is malformed, truncated, corrupted or inconsistent.' },
  WEFT_UNSUPPORTED_ARCH: { status: 422, retryable: false, summary: 'The model architecture (config.json "architectures"/"model_type", GGUF general.architecture) or one of its features is not supported.' },
  WEFT_UNSUPPORTED_DTYPE: { status: 422, retryable: false, summary: 'A tensor type other than F32, F16, BF16, Q8_0, Q4_0, Q4_K, Q5_K or Q6_K.' },
  WEFT_PLAN_MISMATCH: { status: 422, retryable: false, summary: 'An engine plan was built for another CPU, weft version or model, and its source model is not there to build it again.' },
  WEFT_TENSOR_MISSING: { status: 422, retryable: false, summary: 'A tensor the architecture needs is not in the checkpoint.' },
  WEFT_TENSOR_SHAPE: { status: 422, retryable: false, summary: 'A tensor has a shape that does not match config.json.' },
  WEFT_TOKENIZER: { status: 422, retryable: false, summary: 'tokenizer.json is missing, malformed or of an unsupported kind.' },
  WEFT_BAD_ARGUMENT: { status: 400, retryable: false, summary: 'An argument is missing, of the wrong type or out of range (NaN, negative, ...).' },
  WEFT_TOKEN_OUT_OF_RANGE: { status: 400, retryable: false, summary: 'A token id is negative or not below the vocabulary size.' },
  WEFT_CONTEXT_OVERFLOW: { status: 400, retryable: false, summary: 'The sequence would grow past the model context length (max_position_embeddings or the configured limit).' },
  WEFT_BATCH_TOO_LARGE: { status: 400, retryable: false, summary: 'A step holds more tokens or sequences than an execution context was sized for.' },
  WEFT_KV_EXHAUSTED: { status: 503, retryable: true, summary: 'The paged KV pool has no free pages; free or park sequences and retry.' },
  WEFT_SEQUENCE_NOT_FOUND: { status: 404, retryable: false, summary: 'The sequence id is unknown or was freed.' },
  WEFT_SEQUENCE_PARKED: { status: 409, retryable: true, summary: 'The sequence is parked in host memory; restore it before stepping it.' },
  WEFT_SEQUENCE_BUSY: { status: 409, retryable: true, summary: 'The sequence is already part of a step in flight.' },
  WEFT_CONTEXT_BUSY: { status: 409, retryable: true, summary: 'The execution context is already running a step (lease one from the pool).' },
  WEFT_CANCELLED: { status: 499, retryable: false, summary: 'The operation was cancelled by its caller.' },
  WEFT_DISPOSED: { status: 410, retryable: false, summary: 'The engine (or context) was disposed.' },
  WEFT_OVERLOADED: { status: 503, retryable: true, summary: 'The scheduler admission queue is full (gateway only); retry later.' },
  WEFT_BAD_FRAME: { status: 400, retryable: false, summary: 'A gateway frame is not JSON text, not an object, or has a missing or mistyped field (gateway only).' },
  WEFT_UNKNOWN_TYPE: { status: 400, retryable: false, summary: 'A gateway frame has a type the protocol does not define (gateway only).' },
  WEFT_FRAME_TOO_LARGE: { status: 413, retryable: false, summary: 'A gateway frame is larger than the frame size limit (gateway only).' },
  WEFT_RESPONSE_IN_PROGRESS: { status: 409, retryable: true, summary: 'message.create or session.update while a response is running in the session (gateway only).' },
  WEFT_NO_RESPONSE: { status: 409, retryable: false, summary: 'response.cancel while no response is running (gateway only).' },
  WEFT_TOO_MANY_SESSIONS: { status: 503, retryable: true, summary: 'The gateway holds its maximum number of sessions (gateway only).' },
  WEFT_RESUME_UNKNOWN: { status: 404, retryable: false, summary: 'A resume token that is unknown or whose TTL ran out; a new session follows (gateway only).' },
  WEFT_RATE_LIMITED: { status: 429, retryable: true, summary: 'A connection sent frames or bytes faster than its per-connection limits, or did not read its answers (gateway only).' },
  WEFT_ORIGIN_REFUSED: { status: 403, retryable: false, summary: 'A WebSocket upgrade from a browser origin that is not allowed (gateway only).' },
  WEFT_DRAINING: { status: 503, retryable: true, summary: 'The server is shutting down: no new connections or responses (gateway only).' },
  WEFT_LISTEN_FAILED: { status: 500, retryable: false, summary: 'The server cannot listen on its host and port (in use, no permission, not an address of this machine).' },
  WEFT_SESSION_CONNECTED: { status: 409, retryable: true, summary: 'A resume token whose session is connected on another socket; retry once that one has closed (gateway only).' },
  WEFT_REPLAY_GAP: { status: 410, retryable: false, summary: 'A resume asked for deltas the replay buffer no longer holds (or of another response); the text so far is sent instead (gateway only).' },
  WEFT_TIMEOUT: { status: 504, retryable: true, summary: 'The server did not answer in time (the client SDK).' },
  WEFT_CONNECTION_LOST: { status: 503, retryable: true, summary: 'The connection was lost and could not be resumed (the client SDK).' },
  WEFT_UNAUTHORIZED: { status: 401, retryable: false, summary: 'A request or WebSocket handshake without a valid API key (gateway only, with --api-keys).' },
  WEFT_KEY_CONCURRENCY: { status: 429, retryable: true, summary: 'The API key already holds its maximum of concurrent sessions and requests (gateway only).' },
  WEFT_KEY_BUDGET: { status: 429, retryable: true, summary: "The API key's tokens-per-minute budget is spent; retry after the time given (gateway only)." },
  WEFT_BAD_REQUEST: { status: 400, retryable: false, summary: 'An HTTP request body that is not JSON, or of the wrong content type (gateway only).' },
  WEFT_BODY_TOO_LARGE: { status: 413, retryable: false, summary: 'An HTTP request body over the size limit (gateway only).' },
  WEFT_NOT_FOUND: { status: 404, retryable: false, summary: 'An HTTP route that does not exist (gateway only).' },
  WEFT_METHOD_NOT_ALLOWED: { status: 405, retryable: false, summary: 'An HTTP method a route does not take (gateway only).' },
  WEFT_UNSUPPORTED: { status: 400, retryable: false, summary: 'A valid request for something weft does not do: n > 1, audio, a role or content part it does not support (gateway only).' },
  WEFT_SESSION_ELSEWHERE: { status: 409, retryable: true, summary: 'The session is served by another live instance (several instances share state in Redis); reconnect through the proxy (gateway only).' },
  WEFT_NOT_READY: { status: 503, retryable: true, summary: 'The model is still loading (gateway only).' },
  WEFT_BACKEND_UNAVAILABLE: { status: 501, retryable: false, summary: 'The requested backend (cuda) was not built or no GPU is present.' },
  WEFT_DEVICE_OUT_OF_MEMORY: { status: 507, retryable: true, summary: 'GPU memory ran out (weights, KV pages or a step workspace); the step changed nothing.' },
  WEFT_DEVICE_ERROR: { status: 500, retryable: false, summary: 'A CUDA or cuBLAS call failed (launch failure, device fault); the message names the call.' },
  WEFT_DEVICE_TIMEOUT: { status: 503, retryable: true, summary: "A step's GPU work did not finish within the watchdog time; its context is set aside until its stream drains, other contexts keep serving." },
  WEFT_DEVICE_LOST: { status: 503, retryable: false, summary: 'The GPU context is unusable (a kernel fault, a lost device); every step fails until the process restarts.' },
  WEFT_INTERNAL: { status: 500, retryable: false, summary: 'An unexpected internal failure; the message says where.' },
} as const;

export type WeftErrorCode = keyof typeof ERRORS;

export class WeftError extends Error {
  readonly code: WeftErrorCode;
  constructor(code: WeftErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'WeftError';
    this.code = code;
  }
  get status(): number {
    return ERRORS[this.code].status;
  }
}

export function isWeftErrorCode(code: unknown): code is WeftErrorCode {
  return typeof code === 'string' && Object.prototype.hasOwnProperty.call(ERRORS, code);
}

/** Turns anything thrown (a native Error with `.code`, a WeftError, a plain Error) into a WeftError. */
export function toWeftError(err: unknown): WeftError {
  if (err instanceof WeftError) return err;
  const e = err as { code?: unknown; message?: unknown };
  const message = typeof e?.message === 'string' ? e.message : String(err);
  if (isWeftErrorCode(e?.code)) return new WeftError(e.code, message, { cause: err });
  return new WeftError('WEFT_INTERNAL', message, { cause: err });
}

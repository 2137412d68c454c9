/**
 * weft's own seeded fuzzer (issue 9: no single request may crash or stall the server): `fuzz()`.
 *
 * It starts the server as a child process (server.ts: `node dist/src/cli/main.js serve --port 0
 * --transport T`, settings through WEFT_* environment variables only: SERVER_ENV in options.ts,
 * rate limits out of the way) so that a crash is the child's exit, then:
 *
 * - WebSocket part (ws-run.ts): several connections per transport, each sending frames one at a
 *   time (frames.ts) made by a seeded PRNG (rng.ts) from a corpus of valid protocol v1.1 frames
 *   (corpus.ts) mutated at the JSON level (mutate.ts, on the model of json.ts: dropped, duplicated
 *   and renamed keys, wrong types, nested objects where scalars belong, prototype-named keys at
 *   every level, odd numbers written as text, long strings, lone surrogates, deep nesting) and at
 *   the byte level (truncation, flips, invalid UTF-8, binary, empty and fragmented frames, frames
 *   over the limit and over 4x the limit); some frames go while a response runs (cancels mostly),
 *   some connections drop and resume. Every frame must get a coded answer within a timeout: an
 *   `error` whose code starts with `WEFT_` or the protocol's answer to that frame (response.created
 *   then response.done, with gapless deltas, for a message.create; session.resumed then the replay
 *   for a session.resume; nothing for input.append and input.clear, which a ping's pong confirms).
 *   An oracle (oracle.ts on schema.ts, from docs/protocol.md: strict fields, structure limits, the
 *   engine's ranges on float32 values) also checks that it is the right answer (ws-answer.ts):
 *   valid frames accepted, invalid ones rejected, the event_id echoed (not for frames refused
 *   before parsing), the session's state followed (ws-session.ts: sampling defaults, a rotated
 *   resume token, the latest response).
 * - HTTP part (http-gen.ts, http-run.ts): raw TCP sockets writing mutated HTTP/1.1 requests (odd
 *   targets, methods, versions, headers, WebSocket upgrades with bad keys or origins, truncated and
 *   pipelined requests, raw WebSocket frames after an upgrade). Each complete request gets a status
 *   line or a closed socket within a timeout; over uws a request its parser rejects (one that is
 *   not plainRequest) may go unanswered until its idle timeout closes it (docs/protocol.md), and
 *   `silentHttpOk` lets every request go unanswered.
 * - OpenAI part (openai-body.ts, openai-gen.ts, openai-wire.ts, openai-run.ts): requests to the
 *   OpenAI-compatible routes, valid chat and completions bodies (a small max_tokens: a 200 is
 *   cheap) mutated at the JSON level (wrong types and out-of-range values of each known field,
 *   NaN-like strings, unknown fields, unicode, long strings and arrays near and past the body
 *   limit, deep nesting, roles and content parts weft does not take, stream / stream_options /
 *   logprobs / n combinations) and at the byte level (truncated, not UTF-8, Content-Type wrong or
 *   missing, chunked, a body on a GET, wrong methods and paths), sent over a keep-alive agent or,
 *   where the framing is the mutation (Content-Length lies, hand-made chunked bodies, pipelining,
 *   HTTP/1.0, Expect), raw sockets; some streams are read late or dropped. The oracle
 *   (openai-judge.ts, openai-answer.ts) says from the request alone whether a 200 is right and
 *   which weft codes are, and checks the answer: a well-formed completion or SSE stream ending in
 *   `data: [DONE]`, or OpenAI's error body with a catalog code, its status, the type of that
 *   status and a `param` that names a field of the request. After each batch the server must
 *   still answer /healthz and a valid chat completion.
 *
 * Throughout, /healthz must answer 200. Failures are collected into a report (report.ts: seed,
 * frame or request, what happened, grouped by signature); a dead server is restarted and the
 * frames and requests in flight when it died are replayed on a fresh one (run.ts), alone and then
 * (a frame) after the frames before it on its connection, to name the one that kills it. Notes
 * list what looked odd without breaking the invariant (slow answers, close codes, what an
 * unanswered socket did).
 *
 * Frames depend only on (seed, transport, connection, index) and max_frame_bytes, never on the
 * server's answers (but for `resp_LATEST`, which stands for the latest response_id when sent):
 * `--print-frame T:C:I` prints a frame again from its coordinates in a report. OpenAI requests
 * depend on (seed, transport, index), the body limit and the model's id: `--print-request T:I`.
 *
 * CLI (cli.ts, `--help`): node dist/scripts/fuzz/cli.js [--seed N] [--frames N] [--http N]
 *      [--openai N] [--transport ws|uws|both] [--minutes M] [--connections N] [--timeout MS]
 *      [--json] [--silent-http-ok] [--max-restarts N] [--print-frame T:C:I] [--print-request T:I]
 */
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { genHttp } from './http-gen.js';
import { httpPhase } from './http-run.js';
import { openaiPhase } from './openai-run.js';
import { DEFAULTS, repoRoot, type FuzzOptions } from './options.js';
import type { Failure, FuzzReport, TransportStats } from './report.js';
import { Run } from './run.js';
import { httpGet } from './server.js';
import { sleep } from './util.js';
import { WsClient } from './ws-client.js';
import { WsWorker } from './ws-run.js';

export { FrameGen, type FrameItem, type ReconnectItem, type WsItem } from './frames.js';
export { genHttp, type HttpItem } from './http-gen.js';
export { checkAnswer, errorType, type OpenAIAnswer, type Problem } from './openai-answer.js';
export { genOpenAI, openaiItem, type OpenAIGenOptions, type OpenAIItem } from './openai-gen.js';
export { expectOpenAI, paramInRequest, type OpenAIExpectation } from './openai-judge.js';
export { expectItem, requestBytes, showRequest } from './openai-run.js';
export { parseAnswer } from './openai-wire.js';
export { Obj, Raw, ser, type J } from './json.js';
export { afterResumed, expectFor, judge, overStructureLimits, samplingRange, type AfterResumed, type AnswerKind, type Expectation, type Judgement, type ResumedResponse } from './oracle.js';
export { DEFAULTS, SERVER_ENV, type FuzzOptions } from './options.js';
export { formatReport, showFrame, type Failure, type FuzzReport, type TransportStats } from './report.js';
export { Rng, seedOf } from './rng.js';
export { CLIENT_TYPES, MAX_FRAME_DEPTH, MAX_FRAME_VALUES, MAX_STOP_CHARS, PROTO_KEYS } from './schema.js';

async function runTransport(o: FuzzOptions, transport: 'ws' | 'uws', sigCounts: Map<string, number>, notes: Set<string>): Promise<{ stats: TransportStats; failures: Failure[] }> {
  const t0 = performance.now();
  const run = new Run(o, transport, t0, sigCounts);
  try {
    await run.server.start();
  } catch (err) {
    run.fail({ phase: 'server', kind: 'start', signature: `server:start: the ${transport} server did not start`, detail: (err as Error).message });
    return { stats: { transport, frames: 0, responses: 0, http: 0, openai: 0, durationMs: performance.now() - t0, restarts: 0, stoppedByDeadline: false, answers: {} }, failures: run.failures };
  }
  o.log(`${transport}: server on port ${run.port}`);
  // the frame limit sizes the generated frames: read it once
  try {
    const probe = await WsClient.open(`ws://127.0.0.1:${run.port}/v1/ws`, o.answerTimeoutMs);
    const e = await probe.next(performance.now() + o.answerTimeoutMs);
    if (e.kind === 'message') {
      const m = JSON.parse(e.text) as { session?: { limits?: { max_frame_bytes?: number; max_context?: number; default_max_tokens?: number } } };
      if (typeof m.session?.limits?.max_frame_bytes === 'number') run.limit = m.session.limits.max_frame_bytes;
      if (typeof m.session?.limits?.max_context === 'number') run.maxContext = m.session.limits.max_context;
      if (typeof m.session?.limits?.default_max_tokens === 'number') run.defaultMaxTokens = m.session.limits.default_max_tokens;
    }
    probe.ws.close(1000);
  } catch (err) {
    run.note(`${transport}: the first connection failed: ${(err as Error).message}`);
  }
  // /healthz all along
  let pinging = true;
  let wakePinger: () => void = () => undefined;
  const pinger = (async () => {
    while (pinging) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, 2000);
        wakePinger = () => {
          clearTimeout(t);
          r();
        };
      });
      if (!pinging) break;
      await run.ready;
      if (run.server.alive && !run.gaveUp) await run.health('during the run');
    }
  })();

  run.phase = 'ws';
  const budget = { left: o.frames };
  await Promise.all(Array.from({ length: o.connections }, (_, i) => new WsWorker(run, i, budget).work()));
  await run.ready;
  await run.health('after the WebSocket frames');
  const took = () => `${((performance.now() - t0) / 1000).toFixed(1)} s`;
  o.log(`${transport}: frames done at ${took()}`);

  run.phase = 'http';
  if (run.gaveUp && !run.server.alive) {
    // the frames wore the restarts out: one more start for the requests
    try {
      await run.server.start();
      run.gaveUp = false;
    } catch {
      /* stays given up */
    }
  }
  await httpPhase(run, genHttp(o.seed, transport, o.http));
  await run.ready;
  await run.health('after the HTTP requests');
  o.log(`${transport}: HTTP requests done at ${took()}`);

  run.phase = 'openai';
  await openaiPhase(run, o.openai);
  await run.ready;
  pinging = false;
  wakePinger();
  await pinger;
  await run.health('after the OpenAI requests');
  o.log(`${transport}: OpenAI requests done at ${took()}`);
  await Promise.all(run.watching);

  // leaks: every connection of this run is closed now
  if (run.server.alive) {
    await sleep(500);
    const m = await httpGet(run.port, '/metrics', o.healthTimeoutMs);
    if ('status' in m && m.status === 200) {
      const open = /^weft_open_connections\s+(\S+)/m.exec(m.body);
      if (open && Number(open[1]) > 0) run.note(`${transport}: /metrics says ${open[1]} open connection(s) after every client closed`);
    }
  }
  for (const s of run.slow) run.note(`${transport}: a slow answer: ${s.ms.toFixed(0)} ms, ${s.what}`);
  if (run.slowestHealth > 250) run.note(`${transport}: the slowest /healthz took ${run.slowestHealth.toFixed(0)} ms`);
  if (run.server.alive) for (const line of run.server.stderrSeen) run.note(`${transport}: server stderr: ${line.slice(0, 200)}`);
  if (run.server.alive) {
    const st = await run.server.stop();
    if (st.forced) run.note(`${transport}: the server did not exit within 15 s of SIGTERM (killed)`);
    else if (st.code !== 0) run.note(`${transport}: the server exited with code ${st.code} (signal ${st.signal}) on SIGTERM`);
  }
  if (run.gaveUp) run.note(`${transport}: gave up after ${run.restarts} restart(s)`);
  for (const n of run.notes) notes.add(n);
  return {
    stats: { transport, frames: run.frames, responses: run.responses, http: run.httpSent, openai: run.openaiSent, durationMs: performance.now() - t0, restarts: run.restarts, stoppedByDeadline: run.stoppedByDeadline, answers: run.answers },
    failures: run.failures,
  };
}

/** Runs the fuzzer: a server per transport, frames, then HTTP requests. Never throws for what the server does. */
export async function fuzz(opts: Partial<FuzzOptions> = {}): Promise<FuzzReport> {
  const o: FuzzOptions = { ...DEFAULTS, ...opts };
  if (!o.cli) o.cli = join(repoRoot(), 'dist', 'src', 'cli', 'main.js');
  if (!existsSync(o.cli)) throw new Error(`${o.cli} is missing: build first (npx tsc -p tsconfig.json)`);
  const sigCounts = new Map<string, number>();
  const notes = new Set<string>();
  const stats: TransportStats[] = [];
  const failures: Failure[] = [];
  for (const t of o.transports) {
    const r = await runTransport(o, t, sigCounts, notes);
    stats.push(r.stats);
    failures.push(...r.failures);
  }
  const distinct: FuzzReport['distinct'] = [];
  for (const f of failures) {
    if (!distinct.some((d) => d.signature === f.signature)) distinct.push({ signature: f.signature, count: sigCounts.get(f.signature) ?? 1, first: f });
  }
  return { seed: o.seed, ok: failures.length === 0, stats, failures, distinct, notes: [...notes] };
}

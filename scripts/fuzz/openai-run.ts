/**
 * The OpenAI phase: the generated requests (openai-gen.ts) in batches, a few at a time over a
 * keep-alive agent or raw sockets (openai-wire.ts), each answer checked by the oracle
 * (openai-judge.ts, openai-answer.ts); after each batch the server must still serve (/healthz and
 * one valid chat completion). Keep-alive is watched too: an answer that leaves bytes the next
 * answer on its connection cannot be read past, or a connection dropped when reused soon after an
 * answer that kept it open, is blamed on the request before it on that connection.
 */
import { Agent } from 'node:http';
import { HOST } from './http-gen.js';
import { checkAnswer, summary, type OpenAIAnswer, type Problem } from './openai-answer.js';
import { genOpenAI, type OpenAIGenOptions, type OpenAIItem } from './openai-gen.js';
import { expectOpenAI, type OpenAIExpectation } from './openai-judge.js';
import { sendAgent, sendRaw, type Waits } from './openai-wire.js';
import { showBytes } from './report.js';
import type { Run, Suspect } from './run.js';
import { httpGet } from './server.js';

/** Requests between two checks that the server still serves. */
const BATCH = 25;
/** A keep-alive connection reset within this long of its last answer is not its idle timeout. */
const IDLE_RACE_MS = 1000;

/** An item as the bytes of its request (HOST stands for the server's address; a chunked body as one chunk). */
export function requestBytes(it: OpenAIItem): Buffer {
  if (it.raw) return it.raw;
  const length = it.pieces ? 'Transfer-Encoding: chunked' : it.body.length || it.method === 'POST' ? `Content-Length: ${it.body.length}` : null;
  const head = [`${it.method.toUpperCase()} ${it.target} HTTP/1.1`, `Host: ${HOST}`, ...it.headers.map(([k, v]) => `${k}: ${v}`), ...(length ? [length] : []), '', ''].join('\r\n');
  const body = it.pieces ? Buffer.concat([Buffer.from(`${it.body.length.toString(16)}\r\n`), it.body, Buffer.from('\r\n0\r\n\r\n')]) : it.body;
  return Buffer.concat([Buffer.from(head, 'latin1'), body]);
}

/** An item's request for the report: a JS string literal of latin1 characters. */
export function showRequest(it: OpenAIItem, max = 600): string {
  return showBytes(requestBytes(it), max) + (it.pieces ? ` (the body sent in ${it.pieces.length} chunk(s))` : '');
}

/** What the answer to an item may be (two Content-Types: either transport's pick is right). */
export function expectItem(it: OpenAIItem, g: OpenAIGenOptions, maxContext: number): OpenAIExpectation {
  const types = it.headers.filter(([k]) => k.toLowerCase() === 'content-type').map(([, v]) => v);
  const one = (ct: string | undefined) => expectOpenAI(it.method.toUpperCase(), it.target, ct, it.body, g.limit, g.model, maxContext);
  const [first, ...more] = types.length ? types.map(one) : [one(undefined)];
  for (const e of more) {
    first!.ok ||= e.ok;
    for (const c of e.codes) first!.codes.add(c);
    if (first!.ok) first!.invalid = undefined;
  }
  return first!;
}

const send = (port: number, agent: Agent | false, it: OpenAIItem, w: Waits) => (it.via === 'raw' ? sendRaw(port, it, w) : sendAgent(port, agent, it, w));

/** The served model's id (from GET /v1/models), or 'default'. */
async function modelId(run: Run): Promise<string> {
  const r = await httpGet(run.port, '/v1/models', run.o.healthTimeoutMs);
  try {
    if ('status' in r && r.status === 200) return (JSON.parse(r.body) as { data: { id: string }[] }).data[0]!.id;
  } catch {
    /* the default below */
  }
  run.note(`${run.transport}: GET /v1/models did not name a model (${'status' in r ? r.status : r.error})`);
  return 'default';
}

export async function openaiPhase(run: Run, n: number): Promise<void> {
  if (n <= 0 || run.gaveUp) return;
  const g: OpenAIGenOptions = { limit: run.bodyLimit, model: await modelId(run) };
  const items = genOpenAI(run.o.seed, run.transport, n, g);
  const agent = new Agent({ keepAlive: true, maxSockets: run.o.openaiConcurrency });
  const waits: Waits = { statusMs: run.o.answerTimeoutMs, bodyMs: run.o.responseTimeoutMs, maybeMs: 600 };
  const serving = valid(g);
  for (let from = 0; from < items.length; from += BATCH) {
    if (run.gaveUp || run.overDeadline()) break;
    await run.ready;
    const batch = items.slice(from, from + BATCH);
    let next = 0;
    const worker = async () => {
      while (next < batch.length && !run.gaveUp && !run.overDeadline()) {
        await run.ready;
        await one(run, agent, batch[next++]!, g, waits);
      }
    };
    await Promise.all(Array.from({ length: run.o.openaiConcurrency }, worker));
    await run.ready;
    await stillServing(run, serving, g, waits, `after OpenAI requests #${from}..#${from + batch.length - 1}`);
  }
  agent.destroy();
}

/** The request that shows the server still serves: a valid chat completion of 2 tokens. */
function valid(g: OpenAIGenOptions): OpenAIItem {
  const body = Buffer.from(JSON.stringify({ model: g.model, messages: [{ role: 'user', content: 'Who made the heaven and the earth?' }], max_tokens: 2 }));
  return { index: -1, method: 'POST', target: '/v1/chat/completions', headers: [['Content-Type', 'application/json']], body, via: 'agent', framing: 'exact', reader: 'read', stallMs: 0, label: 'a valid chat completion', log: [] };
}

async function stillServing(run: Run, it: OpenAIItem, g: OpenAIGenOptions, w: Waits, when: string): Promise<void> {
  if (!run.server.alive || run.gaveUp) return;
  const epoch = run.epoch;
  await run.health(when);
  const o = await sendAgent(run.port, false, it, w);
  if (o.kind === 'answer' && o.answer.status === 200 && checkAnswer(expectItem(it, g, run.maxContext), o.answer, it.target, g.model, run.defaultMaxTokens).length === 0) return;
  if (await run.lost(epoch)) return;
  const what = o.kind === 'answer' ? `${o.answer.status} ${o.answer.body.toString('utf8').slice(0, 200)}` : o.kind === 'error' ? o.message : o.kind;
  run.fail({ phase: 'openai', kind: 'serving', signature: `openai:serving: a valid chat completion ${o.kind === 'answer' ? `answered ${o.answer.status}` : o.kind}`, detail: `${when}: ${what}` });
}

async function one(run: Run, agent: Agent, it: OpenAIItem, g: OpenAIGenOptions, w: Waits): Promise<void> {
  const epoch = run.epoch;
  run.openaiSent++;
  const suspect: Suspect = {
    what: `OpenAI request #${it.index} (${it.label})`,
    sentAt: performance.now(),
    input: showRequest(it, 300),
    index: it.index,
    log: it.log,
    replay: (port) => send(port, false, { ...it, reader: 'read' }, { statusMs: 2000, bodyMs: 5000, maybeMs: 500 }),
  };
  run.remember(suspect);
  let o = await send(run.port, agent, it, w);
  if (o.kind === 'error' && o.reused && o.code === 'ECONNRESET') {
    // a keep-alive connection closed by the server as it was reused: its idle timeout (seconds) may
    // race the reuse; soon after an answer that kept the connection open it is the server's fault
    if ((o.idleMs ?? Infinity) < IDLE_RACE_MS) {
      run.fail({ phase: 'openai', kind: 'keep-alive', signature: `openai:keep-alive: a keep-alive connection dropped when reused soon after the answer to a ${o.before?.split(' ', 1)[0] ?? '?'}`, detail: `${it.label}: ${o.message} ${o.idleMs?.toFixed(0)} ms after the answer to the request before it on this connection: ${o.before}`, index: it.index, input: showRequest(it), log: it.log });
    }
    run.count('openai: keep-alive reset, sent again');
    o = await send(run.port, agent, it, w);
  }
  suspect.doneAt = performance.now();
  // a refusal needs no model work: it should be quick
  if (o.kind === 'answer' && o.answer.status !== 200 && it.stallMs === 0) run.slowAnswer(suspect.doneAt - suspect.sentAt, `OpenAI request #${it.index} (${it.label}): ${o.answer.status}`);
  const fail = (p: Problem) =>
    run.fail({ phase: 'openai', kind: p.kind, signature: `openai:${p.kind}: ${p.rule}`, detail: `${it.label}: ${p.detail}`, index: it.index, input: showRequest(it), log: it.log });
  if ((o.kind === 'error' || o.kind === 'timeout' || o.kind === 'closed') && (await run.lost(epoch))) return;
  const maybe = it.framing === 'short' || it.framing === 'broken' || it.mayRefuse !== undefined;
  const exp = it.framing === 'short' ? anyError(expectItem(it, g, run.maxContext), false) : it.framing === 'broken' ? anyError(expectItem(it, g, run.maxContext), true) : expectItem(it, g, run.maxContext);
  switch (o.kind) {
    case 'dropped':
      run.count('openai: dropped by the client');
      return;
    case 'timeout':
      run.count(`openai: no ${o.what} in time`);
      if (maybe) return;
      return fail({ kind: 'no-answer', rule: o.what === 'status' ? 'no status line in time' : 'no end of the answer in time', detail: `nothing ${o.what === 'status' ? `within ${w.statusMs} ms` : `complete within ${w.bodyMs} ms (${o.bytes} bytes came)`}` });
    case 'closed':
      run.count('openai: closed without an answer');
      if (maybe) return;
      if (run.transport === 'uws' && it.framing === 'pipelined' && it.method === 'POST') {
        // uWebSockets.js closes a connection that sends a request while an answer is still being made
        run.note(`uws: a request pipelined behind a POST closed the connection: neither was answered (uWebSockets.js pipelines synchronous answers only)`);
        return;
      }
      return fail({ kind: 'closed', rule: o.partial ? 'the connection closed in the middle of an answer' : 'the connection closed without an answer', detail: showBytes(o.bytes, 200) });
    case 'garbage':
      return fail({ kind: 'garbage', rule: 'bytes that are not an HTTP/1.x answer', detail: showBytes(o.bytes, 200) });
    case 'error': {
      run.count(`openai: socket ${o.code || 'error'}`);
      if (/^HPE_/.test(o.code) && o.reused && it.method !== 'HEAD') {
        // bytes left over from the answer before it on this connection (a HEAD answered with a body...)
        return fail({ kind: 'keep-alive', rule: `an answer on a reused keep-alive connection is not HTTP (${o.code}${o.before?.startsWith('HEAD') ? ', after a HEAD' : ''})`, detail: `${o.message}; the request before it on this connection: ${o.before ?? 'unknown'}` });
      }
      if (maybe || /ECONNRESET|EPIPE/.test(o.code)) return;
      return fail({ kind: 'socket', rule: `socket error ${o.code}${it.method === 'HEAD' ? ' (HEAD)' : ''}`, detail: o.message });
    }
  }
  const a: OpenAIAnswer = o.answer;
  const code = a.status === 200 ? '' : ` ${it.method === 'HEAD' ? '(HEAD)' : codeOf(a)}`;
  run.count(`openai ${a.status}${code}`);
  // keep-alive kept? (a request whose body the server did not read may close its connection)
  if (!it.body.length && it.framing === 'exact' && !/HTTP\/1\.0/.test(it.raw?.subarray(0, 200).toString('latin1') ?? '') && /close/i.test(String(a.headers['connection'] ?? ''))) {
    run.count(`openai: Connection: close after a ${a.status} to a bodyless request`);
  }
  if (it.framing === 'extra' && a.status === 400 && !/json/.test(String(a.headers['content-type'] ?? ''))) {
    // the parser refused the bytes after the request before the gateway answered it: the request's own answer is lost
    run.count('openai: the bytes after a short Content-Length refused before the request was answered');
    return;
  }
  if (maybe && (a.status < 200 || !a.body.length)) return; // the transport's own refusal
  if (maybe && !/^application\/json/.test(String(a.headers['content-type'] ?? ''))) return;
  const problems = checkAnswer(exp, a, it.target, g.model, run.defaultMaxTokens);
  for (const p of problems) fail(p);
  if (it.twin && a.status === 200 && a.complete && exp.stream && problems.length === 0) await twin(run, it, exp, a, g, w, fail);
  if (o.trailing?.length) fail({ kind: 'framing', rule: `bytes after the answer (${a.status}${it.method === 'HEAD' ? ' to HEAD' : ''})`, detail: showBytes(o.trailing, 200) });
  else if (it.framing === 'pipelined') {
    if (o.next === undefined) run.count('openai: a pipelined request not answered (Connection: close)');
    else if (o.next === null) fail({ kind: 'pipelined', rule: 'no answer to a request pipelined after it, on a connection kept alive', detail: 'GET /v1/models pipelined' });
    else if (o.next.status !== 200) fail({ kind: 'pipelined', rule: `a GET /v1/models pipelined after it answered ${o.next.status}`, detail: o.next.body.toString('utf8').slice(0, 200) });
  }
}

/**
 * Streamed = whole (docs/openai.md): a 200 stream that is greedy (no temperature above 0) or
 * seeded is sent again with `stream: false`; the text, finish_reason and completion tokens must
 * be the same (the second run also takes the first one's KV from the prefix cache).
 */
async function twin(run: Run, it: OpenAIItem, exp: OpenAIExpectation, a: OpenAIAnswer, g: OpenAIGenOptions, w: Waits, fail: (p: Problem) => void): Promise<void> {
  const b = exp.body as Record<string, unknown>;
  const sampled = typeof b.temperature === 'number' && b.temperature > 0;
  if (sampled && !Number.isSafeInteger(b.seed)) return;
  const whole: Record<string, unknown> = { ...b, stream: false };
  delete whole.stream_options;
  const body = Buffer.from(JSON.stringify(whole));
  const it2: OpenAIItem = { ...it, via: 'agent', raw: undefined, pieces: undefined, body, framing: 'exact', reader: 'read', stallMs: 0, mayRefuse: undefined, method: 'POST', twin: false, label: `${it.label} again, whole` };
  const o = await sendAgent(run.port, false, it2, w);
  if (o.kind !== 'answer' || o.answer.status !== 200) return; // a crash or a refusal under load is not this check's to judge
  run.count('openai: streamed = whole checked');
  const s1 = summary(exp, a);
  const s2 = summary({ ...exp, stream: false }, o.answer);
  if (!s1 || !s2) return;
  if (s1.text !== s2.text || s1.finish !== s2.finish || (s1.completionTokens !== undefined && s1.completionTokens !== s2.completionTokens)) {
    fail({ kind: 'stream-whole', rule: 'the streamed answer differs from the whole one', detail: `streamed ${JSON.stringify(s1)}, whole ${JSON.stringify(s2)}${sampled ? ` (seed ${String(b.seed)})` : ' (greedy)'}` });
  }
}

/**
 * The expectation of a request whose body never completes (no 200), or whose framing leaves the
 * body the server read unknown (`ok`: a 200 may be right): any client error of the gateway's.
 */
function anyError(e: OpenAIExpectation, ok: boolean): OpenAIExpectation {
  const codes = ['WEFT_BAD_REQUEST', 'WEFT_BAD_ARGUMENT', 'WEFT_UNSUPPORTED', 'WEFT_TOKEN_OUT_OF_RANGE', 'WEFT_CONTEXT_OVERFLOW', 'WEFT_MODEL_NOT_FOUND', 'WEFT_CANCELLED', 'WEFT_BODY_TOO_LARGE'];
  return { ...e, ok, invalid: ok ? undefined : 'a body that never completed', codes: new Set([...e.codes, ...codes]) };
}

function codeOf(a: OpenAIAnswer): string {
  try {
    return String((JSON.parse(a.body.toString('utf8')) as { error?: { code?: unknown } }).error?.code ?? '?');
  } catch {
    return '(not JSON: the transport\'s own answer)';
  }
}

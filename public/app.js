// weft's chat page: multi-turn chat over protocol v1 through the client SDK's browser build
// (served by the gateway at /client/). No build step, no framework: this file runs as it is.
import { WeftClient, WeftError } from '/client/index.js';

/** The SDK's reconnect (with the resume token) after a lost connection. */
const RECONNECT = { attempts: 8, minDelayMs: 100, maxDelayMs: 5000 };
/** How long a (re)connect waits for the server's first event. */
const TIMEOUT_MS = 10_000;

const $ = (id) => document.getElementById(id);
const ui = {
  status: $('status'),
  error: $('error'),
  log: $('log'),
  form: $('chat-form'),
  message: $('message'),
  send: $('send'),
  stop: $('stop'),
  system: $('system'),
  temperature: $('temperature'),
  maxTokens: $('max-tokens'),
  keyForm: $('key-form'),
  apiKey: $('api-key'),
};

const wsUrl = new URL('/v1/ws', location.href);
wsUrl.protocol = location.protocol === 'https:' ? 'wss:' : 'ws:';

/** @type {WeftClient | null} */
let client = null;
/** Bumped for every new client: notices from an abandoned one are ignored. */
let generation = 0;
/** connecting | ready | reconnecting | lost | needs-key */
let state = 'connecting';
/**
 * The API key of a server run with --api-keys ('' until one is asked for). Browsers cannot set
 * headers on a WebSocket: the page passes it to WeftClient.connect as `apiKey`, and the SDK sends
 * it at every (re)connect as the subprotocol entry `openai-insecure-api-key.KEY`. The key field
 * appears when the server answers WEFT_UNAUTHORIZED (or HTTP 401).
 */
let apiKey = '';
/** The answer streaming now: { response, stopRequested }. */
let current = null;
/** The system prompt the server's session has (a new session has none). */
let applied = { session: '', system: '' };
/** The timer that declares the connection lost after the SDK's last reconnect attempt. */
let givenUp;

// --- status, errors, notes -------------------------------------------------------------------

function setState(next, detail = '') {
  state = next;
  ui.status.dataset.state = next;
  const model = client?.session?.model;
  ui.status.textContent =
    next === 'ready' ? `connected${model ? ` · ${model}` : ''}` :
    next === 'connecting' ? 'connecting…' :
    next === 'reconnecting' ? `reconnecting…${detail}` :
    next === 'needs-key' ? 'an API key is needed' :
    'disconnected: Send starts a new conversation';
  ui.keyForm.hidden = next !== 'needs-key';
  refreshButtons();
}

function refreshButtons() {
  ui.send.disabled = current !== null || state === 'connecting' || state === 'reconnecting' || state === 'needs-key';
  ui.stop.disabled = current === null;
}

/** Shows an error the way the server (or the SDK) reported it: its code and message. */
function showError(err) {
  const code = err instanceof WeftError || (err && typeof err.code === 'string') ? err.code : err?.name ?? 'Error';
  const message = err?.message ?? String(err);
  ui.error.textContent = '';
  const c = document.createElement('code');
  c.textContent = code;
  ui.error.append(c, `: ${message}`);
  ui.error.dataset.code = code;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.hidden = true;
  ui.error.textContent = '';
  delete ui.error.dataset.code;
}

/** A line in the conversation that is not a message (a new session, a server restart). */
function note(text) {
  const li = document.createElement('li');
  li.className = 'note';
  li.textContent = text;
  ui.log.append(li);
  scrollDown(true);
}

function scrollDown(force = false) {
  const el = document.scrollingElement ?? document.documentElement;
  // follow the answer unless the reader scrolled up
  if (force || el.scrollHeight - el.scrollTop - el.clientHeight < 120) el.scrollTop = el.scrollHeight;
}

// --- connection ----------------------------------------------------------------------------

async function connect() {
  const gen = ++generation;
  clearTimeout(givenUp);
  setState('connecting');
  try {
    const c = await WeftClient.connect(wsUrl.href, {
      ...(apiKey ? { apiKey } : {}),
      reconnect: RECONNECT,
      timeoutMs: TIMEOUT_MS,
      onEvent: (ev) => {
        if (gen === generation) onNotice(ev);
      },
    });
    if (gen !== generation) return void c.close();
    client = c;
    applied = { session: c.session.id, system: '' };
    setState('ready');
  } catch (err) {
    if (gen !== generation) return;
    client = null;
    if (await unauthorized(err)) return needKey();
    setState('lost');
    showError(err);
  }
}

/** Whether a failed connect means "an API key is needed": the server's code, or HTTP 401 on the WebSocket path. */
async function unauthorized(err) {
  if (err?.code === 'WEFT_UNAUTHORIZED') return true;
  if (err?.code !== 'WEFT_CONNECTION_LOST') return false;
  // a refused upgrade reaches a browser WebSocket as a bare close: ask over HTTP why (with the key,
  // so that a key refused for another reason, such as its concurrency, is not taken for a wrong one)
  try {
    const headers = apiKey ? { authorization: `Bearer ${apiKey}` } : {};
    const res = await fetch(new URL('/v1/ws', location.href), { cache: 'no-store', headers });
    return res.status === 401;
  } catch {
    return false;
  }
}

function needKey() {
  setState('needs-key');
  ui.apiKey.value = '';
  if (apiKey) showError(new WeftError('WEFT_UNAUTHORIZED', 'the server did not accept this API key'));
  ui.apiKey.focus();
}

/** What the SDK reports besides answers: reconnects, a draining server, frames it ignored. */
function onNotice(ev) {
  switch (ev.type) {
    case 'reconnecting':
      setState('reconnecting', ` (attempt ${ev.attempt} of ${RECONNECT.attempts})`);
      if (ev.attempt >= RECONNECT.attempts) {
        // the SDK says nothing more when its last attempt fails: give up after that attempt's time
        clearTimeout(givenUp);
        givenUp = setTimeout(() => {
          if (state === 'reconnecting') lose(new WeftError('WEFT_CONNECTION_LOST', `the connection was lost and ${RECONNECT.attempts} reconnects failed`));
        }, ev.delayMs + TIMEOUT_MS + 1000);
      }
      return;
    case 'reconnected': {
      clearTimeout(givenUp);
      const id = client?.session.id;
      if (id && id !== applied.session) {
        note('The server no longer had this conversation: a new one started.');
        applied = { session: id, system: '' };
      }
      setState('ready');
      // a stop pressed while the connection was down could not reach the server: send it now
      if (current?.stopRequested) current.response.cancel();
      return;
    }
    case 'draining':
      note('The server is restarting: the conversation continues when it is back.');
      return;
    case 'ignored':
      console.warn('weft: ignored a frame from the server:', ev.reason, ev.data);
      return;
    default:
      return;
  }
}

/** The connection is gone for good: the next Send opens a new session. */
function lose(err) {
  const old = client;
  client = null;
  generation++;
  clearTimeout(givenUp);
  setState('lost');
  showError(err);
  if (old) void old.close().catch(() => undefined);
}

// --- chat ----------------------------------------------------------------------------------

function addMessage(role, text) {
  const li = document.createElement('li');
  li.className = `msg ${role}`;
  const who = document.createElement('span');
  who.className = 'who';
  who.textContent = role === 'user' ? 'You' : 'Assistant';
  const body = document.createElement('div');
  body.className = 'text';
  body.textContent = text;
  li.append(who, body);
  ui.log.append(li);
  scrollDown(true);
  return li;
}

function samplingFromForm() {
  const s = {};
  const t = ui.temperature.value.trim();
  if (t !== '') s.temperature = Number(t);
  const m = ui.maxTokens.value.trim();
  if (m !== '') s.max_tokens = Number(m);
  return s;
}

const FINISH = { stop: 'done', length: 'max tokens reached', cancelled: 'stopped', shutdown: 'ended by the server', error: 'error' };

/** TTFT and decode speed from the server's timing (ms since the message arrived) and usage. */
function statsText(d) {
  const parts = [];
  const n = d.usage?.completion_tokens;
  const t = d.timing;
  if (t && n > 0) {
    parts.push(`TTFT ${Math.round(t.ttft_ms)} ms`);
    // tokens after the first over the time after the first
    const decodeMs = t.duration_ms - t.ttft_ms;
    const rate = n > 1 && decodeMs > 0 ? ((n - 1) * 1000) / decodeMs : (n * 1000) / Math.max(1, t.duration_ms);
    parts.push(`${rate.toFixed(1)} tok/s`);
  }
  if (n !== undefined) parts.push(`${n} token${n === 1 ? '' : 's'}`);
  parts.push(FINISH[d.finishReason] ?? d.finishReason);
  return parts.join(' · ');
}

async function submit() {
  const text = ui.message.value;
  if (current || text.trim() === '') return;
  if (state === 'needs-key') return void ui.apiKey.focus();
  if (state === 'connecting' || state === 'reconnecting') return;
  clearError();
  if (!client) {
    if (ui.log.querySelector('.msg')) note('New conversation.');
    await connect();
    if (!client) return;
  }
  const c = client;
  const sampling = samplingFromForm();
  const system = ui.system.value;
  const userLi = addMessage('user', text);
  ui.message.value = '';
  const answerLi = addMessage('assistant', '');
  answerLi.classList.add('streaming');
  const body = answerLi.querySelector('.text');
  const stats = document.createElement('p');
  stats.className = 'stats';
  stats.textContent = 'waiting…';
  answerLi.append(stats);
  ui.log.setAttribute('aria-busy', 'true');
  current = { response: null, stopRequested: false };
  refreshButtons();
  let response = null;
  try {
    if (system !== applied.system || applied.session !== c.session.id) {
      await c.update({ system });
      applied = { session: c.session.id, system };
    }
    if (current.stopRequested) {
      // stopped before the message went out: nothing was asked
      userLi.classList.add('unsent');
      stats.textContent = 'stopped before sending';
      answerLi.dataset.finish = 'cancelled';
      if (ui.message.value === '') ui.message.value = text;
      return;
    }
    response = c.send(text, Object.keys(sampling).length > 0 ? { sampling } : {});
    current.response = response;
    let streamed = '';
    let shown = '';
    for await (const chunk of response) {
      if (streamed === '') stats.textContent = 'answering…';
      streamed += chunk;
      // the model's answer usually starts with a space: not shown
      const visible = shown === '' ? chunk.trimStart() : chunk;
      shown += visible;
      if (visible !== '') body.append(visible);
      scrollDown();
    }
    const done = await response.done;
    // the server's text is the answer (after a barge-in or a replay gap the two could differ)
    if (done.text !== streamed) body.textContent = done.text.trimStart();
    stats.textContent = statsText(done);
    answerLi.dataset.finish = done.finishReason;
  } catch (err) {
    answerLi.classList.add('failed');
    answerLi.dataset.finish = 'error';
    stats.textContent = `failed: ${err?.code ?? err?.name ?? 'Error'}`;
    if (!response?.id && body.textContent === '') {
      // refused before the server started an answer: the message is not in the conversation
      userLi.classList.add('unsent');
      if (ui.message.value === '') ui.message.value = text;
    }
    showError(err);
    if (err?.code === 'WEFT_CONNECTION_LOST' && c === client) lose(err);
    else if (err?.code === 'WEFT_UNAUTHORIZED' && c === client) {
      client = null;
      generation++;
      needKey();
    }
  } finally {
    answerLi.classList.remove('streaming');
    ui.log.setAttribute('aria-busy', 'false');
    current = null;
    refreshButtons();
    scrollDown();
  }
}

function stop() {
  if (!current) return;
  current.stopRequested = true;
  current.response?.cancel();
  ui.stop.disabled = true;
}

ui.form.addEventListener('submit', (e) => {
  e.preventDefault();
  void submit();
});

ui.message.addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
    e.preventDefault();
    if (!current) ui.form.requestSubmit();
  } else if (e.key === 'Escape' && current) {
    e.preventDefault();
    stop();
  }
});

ui.stop.addEventListener('click', () => {
  stop();
  ui.message.focus();
});

ui.keyForm.addEventListener('submit', (e) => {
  e.preventDefault();
  apiKey = ui.apiKey.value.trim();
  if (!apiKey) return;
  clearError();
  void connect();
});

// leaving the page ends the session (its KV is freed now rather than when the resume TTL runs out)
addEventListener('pagehide', () => {
  const old = client;
  client = null;
  generation++;
  void old?.close().catch(() => undefined);
});
// back from the back/forward cache: a new session
addEventListener('pageshow', (e) => {
  if (e.persisted && !client) void connect();
});

void connect();

#!/usr/bin/env node
// A terminal chat over weft's SDK: `node examples/chat-cli.mjs [--api-key KEY] [ws://127.0.0.1:8080/v1/ws]`
// (start the server with `npm start`). Each line you type is a message; the answer streams back.
// Ctrl+C while an answer streams stops it; Ctrl+C at the prompt (or Ctrl+D) quits.
// A server run with --api-keys needs a key: --api-key KEY, or the environment's WEFT_API_KEY.
import { createInterface } from 'node:readline/promises';
import { parseArgs } from 'node:util';
import { WeftClient, WeftError } from 'weft/client';

let args;
try {
  args = parseArgs({ options: { 'api-key': { type: 'string' } }, allowPositionals: true });
} catch (err) {
  console.error(`${err.message}\nusage: node examples/chat-cli.mjs [--api-key KEY] [ws://HOST:PORT/v1/ws]`);
  process.exit(2);
}
const url = args.positionals[0] ?? 'ws://127.0.0.1:8080/v1/ws';
const apiKey = args.values['api-key'] ?? (process.env.WEFT_API_KEY || undefined);
let client;
try {
  client = await WeftClient.connect(url, {
    apiKey,
    onEvent: (e) => {
      if (e.type === 'reconnecting') process.stderr.write(`\n[reconnecting, attempt ${e.attempt}]\n`);
      if (e.type === 'draining') process.stderr.write(`\n[the server is shutting down]\n`);
    },
  });
} catch (err) {
  console.error(err instanceof WeftError ? `${err.code}: ${err.message}` : err);
  process.exit(1);
}
console.log(`connected to ${client.session.model} (session ${client.session.id}); type a message`);
const rl = createInterface({ input: process.stdin, output: process.stdout });
let running = null;
rl.on('SIGINT', () => {
  if (running) running.cancel();
  else rl.close();
});
rl.on('close', async () => {
  await client.close();
  process.exit(0);
});
for (;;) {
  let line;
  try {
    line = await rl.question('> ');
  } catch {
    break; // closed
  }
  if (!line.trim()) continue;
  running = client.send(line);
  try {
    for await (const chunk of running) process.stdout.write(chunk);
    const done = await running.done;
    const t = done.timing;
    process.stdout.write(`\n[${done.finishReason}; ${done.usage?.completion_tokens} tokens, first after ${t?.ttft_ms.toFixed(0)} ms]\n`);
  } catch (err) {
    process.stdout.write(`\n[${err instanceof WeftError ? `${err.code}: ${err.message}` : err}]\n`);
  }
  running = null;
}

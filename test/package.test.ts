/**
 * The package (issue 12, section 1): `npm pack`, installed into an empty project (its install
 * builds the native addon there), then both entries imported from a plain .mjs file (a turn
 * streamed through `serve` and `weft/client`) and from TypeScript (types resolve).
 */
import { execFile } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { promisify } from 'node:util';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, expect, test } from 'vitest';

const root = join(import.meta.dirname, '..');
const dir = mkdtempSync(join(tmpdir(), 'weft-pack-'));
afterAll(() => rmSync(dir, { recursive: true, force: true }));

// asynchronous: a long synchronous child would starve the test worker's own event loop
const run = async (cmd: string, args: string[], cwd: string) => (await promisify(execFile)(cmd, args, { cwd, encoding: 'utf8', timeout: 600_000, maxBuffer: 64 << 20 })).stdout;

test('npm pack, install into an empty project, import weft and weft/client from .mjs and TypeScript', async () => {
  const packed = JSON.parse(await run('npm', ['pack', '--json', '--pack-destination', dir], root))[0];
  const files: string[] = packed.files.map((f: { path: string }) => f.path);
  expect(files).toContain('dist/src/index.js');
  expect(files).toContain('dist/src/client/index.d.ts');
  expect(files).toContain('native/src/engine.cpp');
  expect(files).toContain('models/default/model.safetensors');
  expect(files).toContain('public/index.html');
  expect(files.some((f) => f.startsWith('test/') || f.startsWith('bench/') || f.startsWith('node_modules/'))).toBe(false);

  const app = join(dir, 'app');
  mkdirSync(app, { recursive: true });
  writeFileSync(join(app, 'package.json'), JSON.stringify({ name: 'app', private: true, type: 'module' }));
  // dependencies come from the npm cache this checkout was installed from
  await run('npm', ['install', '--prefer-offline', '--no-audit', '--no-fund', join(dir, packed.filename), '@types/node@20', 'typescript@5'], app);

  writeFileSync(
    join(app, 'main.mjs'),
    `import { serve, WeftError, ERRORS } from 'weft';
import { WeftClient } from 'weft/client';
const server = await serve({ port: 0, engine: { threads: 1, contexts: 1, kvMemoryBytes: 16 << 20 } });
const client = await WeftClient.connect(server.wsUrl);
const r = client.send('Who made the heaven and the earth?', { sampling: { temperature: 0, max_tokens: 8 } });
let text = '';
for await (const chunk of r) text += chunk;
const done = await r.done;
await client.close();
await server.close();
console.log(JSON.stringify({ text, finish: done.finishReason, tokens: done.usage.completion_tokens, coded: typeof WeftError === 'function' && 'WEFT_BAD_FRAME' in ERRORS }));
`,
  );
  const out = JSON.parse((await run(process.execPath, ['main.mjs'], app)).trim().split('\n').at(-1)!);
  expect(out).toMatchObject({ finish: expect.stringMatching(/stop|length/), coded: true });
  expect(out.text.length).toBeGreaterThan(0);

  writeFileSync(
    join(app, 'check.ts'),
    `import { Engine, Gateway, serve, type GatewayOptions, type WeftErrorCode } from 'weft';
import { WeftClient, WeftError, type ResponseDone, type ServerEvent } from 'weft/client';
const opts: GatewayOptions = { port: 0, transport: 'uws' };
const code: WeftErrorCode = 'WEFT_BAD_FRAME';
async function f(): Promise<string> {
  const s = await serve(opts);
  const c = await WeftClient.connect(s.wsUrl);
  const done: ResponseDone = await c.send('hi').done;
  const ev: ServerEvent['type'] = 'response.delta';
  return done.text + code + ev + String(Engine.name) + String(Gateway.name) + String(WeftError.name);
}
void f;
`,
  );
  writeFileSync(join(app, 'tsconfig.json'), JSON.stringify({ compilerOptions: { module: 'NodeNext', moduleResolution: 'NodeNext', target: 'ES2022', strict: true, noEmit: true, skipLibCheck: false, types: ['node'] }, files: ['check.ts'] }));
  await run(process.execPath, [join(app, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], app);
  // and a type error is caught, so the check can fail
  writeFileSync(join(app, 'check.ts'), `import { WeftClient } from 'weft/client';\nconst n: number = WeftClient.connect;\nvoid n;\n`);
  await expect(run(process.execPath, [join(app, 'node_modules', 'typescript', 'bin', 'tsc'), '-p', 'tsconfig.json'], app)).rejects.toThrow();
}, 900_000);

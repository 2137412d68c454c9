/**
 * Bad input gets a coded error and harms nothing: after every rejected call, a bystander
 * sequence in the same engine keeps producing exactly the tokens it would have produced.
 */
import { copyFileSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { afterAll, beforeAll, describe, expect, test } from 'vitest';
import { Engine, defaultBackend, type Sequence } from '../src/engine/engine.js';
import { native } from '../src/engine/native.js';
import { generate } from '../src/engine/generate.js';
import { TinyModels } from './helpers/models.js';

const models = new TinyModels();
let dir: string;
let engine: Engine;
let bystander: Sequence;
let expectedBystander: number[];
const PROMPT = [10, 20, 30, 40];

async function expectCode(p: Promise<unknown> | (() => unknown), code: string, message?: RegExp) {
  let err: unknown;
  try {
    await (typeof p === 'function' ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err, `expected ${code}`).toBeDefined();
  expect((err as { code?: string }).code).toBe(code);
  if (message) expect((err as Error).message).toMatch(message);
}

/** Copies the model dir with one file replaced or edited. */
function variant(name: string, edit: (d: string) => void): string {
  const d = join(models.root, name);
  mkdirSync(d, { recursive: true });
  for (const f of ['config.json', 'model.safetensors', 'tokenizer.json', 'tokenizer_config.json']) copyFileSync(join(dir, f), join(d, f));
  edit(d);
  return d;
}

beforeAll(async () => {
  dir = await models.make('err', { arch: 'llama', dtype: 'f32', seed: 31, maxPos: 64 });
  engine = await Engine.load(dir, { threads: 2, contexts: 2, kvMemoryBytes: 2 << 20, maxBatchTokens: 64, maxBatchSequences: 8 });
  bystander = engine.createSequence({ ignoreEos: true });
  const probe = engine.createSequence({ ignoreEos: true });
  expectedBystander = [];
  let next = PROMPT;
  for (let i = 0; i < 12; i++) {
    const [r] = await engine.run([{ sequence: probe, tokens: next, sample: true }]);
    expectedBystander.push(r!.token!);
    next = [r!.token!];
  }
  probe.free();
  await engine.run([{ sequence: bystander, tokens: PROMPT, sample: true }]);
});

afterAll(async () => {
  // the bystander continues exactly as it would have without any of the failures above
  const got = [expectedBystander[0]!];
  for (let i = 1; i < 12; i++) {
    const [r] = await engine.run([{ sequence: bystander, tokens: [got.at(-1)!], sample: true }]);
    got.push(r!.token!);
  }
  expect(got).toEqual(expectedBystander);
  engine.dispose();
  models.cleanup();
});

describe('loading bad model directories', () => {
  test('missing directory or files', async () => {
    await expectCode(Engine.load(join(models.root, 'nope')), 'WEFT_MODEL_NOT_FOUND', /nope/);
    const noWeights = variant('no-weights', (d) => writeFileSync(join(d, 'model.safetensors'), ''));
    await expectCode(Engine.load(noWeights), 'WEFT_MODEL_FORMAT', /model\.safetensors/);
  });

  test('bad config.json', async () => {
    await expectCode(Engine.load(variant('bad-json', (d) => writeFileSync(join(d, 'config.json'), '{ nope'))), 'WEFT_MODEL_FORMAT', /config\.json/);
    const edit = (patch: Record<string, unknown>) => (d: string) => {
      const c = JSON.parse(readFileSync(join(d, 'config.json'), 'utf8'));
      writeFileSync(join(d, 'config.json'), JSON.stringify({ ...c, ...patch }));
    };
    await expectCode(Engine.load(variant('arch', edit({ architectures: ['GPT2LMHeadModel'], model_type: 'gpt2' }))), 'WEFT_UNSUPPORTED_ARCH', /GPT2/);
    await expectCode(Engine.load(variant('heads', edit({ num_attention_heads: 'four' }))), 'WEFT_MODEL_FORMAT', /num_attention_heads/);
    await expectCode(Engine.load(variant('shape', edit({ intermediate_size: 100 }))), 'WEFT_TENSOR_SHAPE', /mlp\.(gate|up|down)_proj/);
  });

  test('corrupt safetensors: truncated header, unsupported dtype, missing tensor', async () => {
    const truncated = variant('trunc', (d) => {
      const buf = readFileSync(join(d, 'model.safetensors'));
      writeFileSync(join(d, 'model.safetensors'), buf.subarray(0, 100));
    });
    await expectCode(Engine.load(truncated), 'WEFT_MODEL_FORMAT', /model\.safetensors/);
    const rewrite = (mutate: (h: Record<string, { dtype: string }>) => void) => (d: string) => {
      const buf = readFileSync(join(d, 'model.safetensors'));
      const n = Number(buf.readBigUInt64LE(0));
      const header = JSON.parse(buf.subarray(8, 8 + n).toString('utf8'));
      mutate(header);
      let text = JSON.stringify(header);
      text = text.padEnd(n, ' ');
      if (text.length !== n) throw new Error('header grew');
      writeFileSync(join(d, 'model.safetensors'), Buffer.concat([buf.subarray(0, 8), Buffer.from(text), buf.subarray(8 + n)]));
    };
    const i8 = variant('i8', rewrite((h) => (h['model.norm.weight']!.dtype = 'I8')));
    await expectCode(Engine.load(i8), 'WEFT_UNSUPPORTED_DTYPE', /model\.norm\.weight/);
    const missing = variant('missing', rewrite((h) => {
      h['model.norm.weightX'] = h['model.norm.weight']!;
      delete h['model.norm.weight'];
    }));
    await expectCode(Engine.load(missing), 'WEFT_TENSOR_MISSING', /model\.norm\.weight/);
  });
});

describe('backend selection', () => {
  test('cpu by default without a GPU; cuda is refused with a code where there is none; unknown backends are bad arguments', async () => {
    const gpus = native().cudaDeviceCount();
    expect(gpus >= 0).toBe(true);
    const prev = process.env.WEFT_BACKEND;
    delete process.env.WEFT_BACKEND;
    try {
      expect(defaultBackend()).toBe(native().cudaBuilt && gpus > 0 ? 'cuda' : 'cpu');
      process.env.WEFT_BACKEND = 'cpu';
      expect(defaultBackend()).toBe('cpu');
    } finally {
      if (prev === undefined) delete process.env.WEFT_BACKEND;
      else process.env.WEFT_BACKEND = prev;
    }
    expect(engine.stats().backend).toBe('cpu');
    expect(engine.stats().device).toBe('');
    if (gpus === 0) {
      await expectCode(Engine.load(dir, { backend: 'cuda', tokenizer: false }), 'WEFT_BACKEND_UNAVAILABLE');
      expect(() => native().cudaCopyBandwidth(1 << 20)).toThrow(/CUDA/);
    } else {
      const e = await Engine.load(dir, { backend: 'cuda', tokenizer: false });
      expect(e.stats().backend).toBe('cuda');
      e.dispose();
    }
    await expectCode(Engine.load(dir, { backend: 'tpu' as 'cpu' }), 'WEFT_BAD_ARGUMENT', /backend/);
  });
});

describe('bad steps', () => {
  test('token ids out of range', async () => {
    const s = engine.createSequence();
    await expectCode(engine.run([{ sequence: s, tokens: [1, engine.config.vocabSize] }]), 'WEFT_TOKEN_OUT_OF_RANGE', /outside the vocabulary/);
    await expectCode(engine.run([{ sequence: s, tokens: [-1] }]), 'WEFT_TOKEN_OUT_OF_RANGE');
    await expectCode(engine.run([{ sequence: s, tokens: [1.5] }]), 'WEFT_TOKEN_OUT_OF_RANGE');
    expect(s.numTokens).toBe(0);
    s.free();
  });

  test('NaN or negative sampling parameters', () => {
    const s = engine.createSequence();
    for (const bad of [{ temperature: NaN }, { temperature: -1 }, { topP: 0 }, { topP: 1.5 }, { topK: -3 }, { minP: 2 }, { repetitionPenalty: 0 }, { seed: -5 }, { logprobs: 50 }, { presencePenalty: Infinity }]) {
      let err: { code?: string } | undefined;
      try {
        s.setSampling(bad);
      } catch (e) {
        err = e as { code?: string };
      }
      expect(err?.code, JSON.stringify(bad)).toBe('WEFT_BAD_ARGUMENT');
    }
    expect(() => s.setSampling({ stopTokens: [1e9] })).toThrow(expect.objectContaining({ code: 'WEFT_TOKEN_OUT_OF_RANGE' }));
    s.free();
  });

  test('a prompt longer than the context', async () => {
    const s = engine.createSequence();
    const tooLong = Array.from({ length: 65 }, (_, i) => i % 100);
    await expectCode(engine.run([{ sequence: s, tokens: tooLong }]), 'WEFT_CONTEXT_OVERFLOW', /context limit is 64/);
    await engine.run([{ sequence: s, tokens: tooLong.slice(0, 60) }]);
    await expectCode(engine.run([{ sequence: s, tokens: [1, 2, 3, 4, 5] }]), 'WEFT_CONTEXT_OVERFLOW');
    expect(s.numTokens).toBe(60);
    s.free();
  });

  test('generation that reaches the context limit ends with length, not an error', async () => {
    const prompt = Array.from({ length: 60 }, (_, i) => (i * 7) % 500);
    const out = await generate(engine, prompt, { maxTokens: 100, ignoreEos: true });
    // 60 prompt tokens + 4 fed back = 64 = the limit; the 5th sampled token is returned unfed
    expect(out.tokens).toHaveLength(5);
    expect(out.finishReason).toBe('length');
  });

  test('freed, parked and busy sequences; oversized batches; busy context', async () => {
    const s = engine.createSequence();
    s.free();
    await expectCode(engine.run([{ sequence: s, tokens: [1] }]), 'WEFT_SEQUENCE_NOT_FOUND');
    const p = engine.createSequence();
    await engine.run([{ sequence: p, tokens: [1, 2] }]);
    await p.park();
    await expectCode(engine.run([{ sequence: p, tokens: [3] }]), 'WEFT_SEQUENCE_PARKED');
    await p.restore();
    await engine.run([{ sequence: p, tokens: [3] }]);
    expect(p.numTokens).toBe(3);
    // the same sequence in two steps at once
    const lease0 = { index: 0, release() {} };
    const lease1 = { index: 1, release() {} };
    const inFlight = engine.step(lease0, [{ sequence: p, tokens: [4] }]);
    await expectCode(engine.step(lease1, [{ sequence: p, tokens: [5] }]), 'WEFT_SEQUENCE_BUSY');
    const q = engine.createSequence();
    await expectCode(engine.step(lease0, [{ sequence: q, tokens: [5] }]), 'WEFT_CONTEXT_BUSY');
    await inFlight;
    await expectCode(engine.run([{ sequence: q, tokens: Array(65).fill(1) }]), 'WEFT_CONTEXT_OVERFLOW');
    const many = Array.from({ length: 9 }, () => engine.createSequence());
    await expectCode(engine.run(many.map((m) => ({ sequence: m, tokens: [1] }))), 'WEFT_BATCH_TOO_LARGE', /limit is 8/);
    await expectCode(engine.run([{ sequence: q, tokens: [1] }, { sequence: q, tokens: [2] }]), 'WEFT_BAD_ARGUMENT', /twice/);
    await expectCode(engine.step({ index: 7, release() {} }, [{ sequence: q, tokens: [1] }]), 'WEFT_BAD_ARGUMENT');
    [p, q, ...many].forEach((x) => x.free());
  });

  test('KV exhaustion is typed and recoverable', async () => {
    const stats = engine.stats();
    const perSeq = 48;
    const seqs: Sequence[] = [];
    let err: { code?: string } | undefined;
    for (let i = 0; i < 100 && !err; i++) {
      const s = engine.createSequence();
      seqs.push(s);
      try {
        await engine.run([{ sequence: s, tokens: Array.from({ length: perSeq }, (_, j) => (i + j) % 500) }]);
      } catch (e) {
        err = e as { code?: string };
      }
    }
    expect(err?.code).toBe('WEFT_KV_EXHAUSTED');
    const failed = seqs.at(-1)!;
    expect(failed.numTokens).toBe(0);
    expect(stats.kvPagesTotal).toBeGreaterThan(0);
    // free one and the failed request succeeds
    seqs[0]!.free();
    await engine.run([{ sequence: failed, tokens: Array.from({ length: perSeq }, (_, j) => j) }]);
    expect(failed.numTokens).toBe(perSeq);
    // parking frees pages, restoring needs them back
    await seqs[1]!.park();
    const filler = engine.createSequence();
    await engine.run([{ sequence: filler, tokens: Array.from({ length: perSeq }, (_, j) => j) }]);
    await expectCode(seqs[1]!.restore(), 'WEFT_KV_EXHAUSTED');
    filler.free();
    await seqs[1]!.restore();
    seqs.slice(1).forEach((s) => s.free());
  });

  test('hostile input straight to the native binding: coerced numbers, getters that free or dispose, huge arrays', async () => {
    const s = engine.createSequence();
    await engine.run([{ sequence: s, tokens: [1, 2, 3] }]);
    // no silent coercion: NaN or 2^32 + 1 is not an integer token count
    await expectCode(() => engine.native.truncateSequence(s.id, NaN), 'WEFT_BAD_ARGUMENT');
    await expectCode(() => engine.native.truncateSequence(s.id, 2 ** 32 + 1), 'WEFT_BAD_ARGUMENT');
    await expectCode(async () => engine.native.step(NaN, [{ seq: s.id, tokens: [4], logits: 0, sample: false }]), 'WEFT_BAD_ARGUMENT');
    expect(s.numTokens).toBe(3);
    // a getter that frees the sequence already read, while the entries are being read
    const victim = engine.createSequence();
    const entries = [
      { seq: victim.id, tokens: [1], logits: 0 as const, sample: false },
      {
        seq: s.id,
        get tokens() {
          engine.native.freeSequence(victim.id);
          return [5];
        },
        logits: 0 as const,
        sample: false,
      },
    ];
    await expectCode(async () => engine.native.step(0, entries), 'WEFT_SEQUENCE_NOT_FOUND');
    // a huge sparse array is refused before anything is allocated for it
    await expectCode(async () => engine.native.step(0, [{ seq: s.id, tokens: new Array(2 ** 32 - 1), logits: 0, sample: false }]), 'WEFT_CONTEXT_OVERFLOW');
    // penalties that would overflow logits
    for (const bad of [{ repetitionPenalty: 1e-40 }, { presencePenalty: 3e38 }, { frequencyPenalty: -1e6 }]) {
      expect(() => s.setSampling(bad), JSON.stringify(bad)).toThrow(expect.objectContaining({ code: 'WEFT_BAD_ARGUMENT' }));
    }
    s.free();
  });

  test('a getter that disposes the engine mid-step is refused, not a use-after-free', async () => {
    const other = await Engine.load(dir, { threads: 1 });
    const s = other.createSequence();
    const entry = {
      seq: s.id,
      get tokens() {
        other.native.dispose();
        return [1];
      },
      logits: 0 as const,
      sample: false,
    };
    await expectCode(async () => other.native.step(0, [entry]), 'WEFT_DISPOSED');
  });

  test('absurd engine options are refused before any allocation', async () => {
    await expectCode(Engine.load(dir, { contexts: 64, threads: 256 }), 'WEFT_BAD_ARGUMENT', /contexts x threads/);
    await expectCode(Engine.load(dir, { maxBatchTokens: 2 ** 31 - 1 }), 'WEFT_BAD_ARGUMENT', /maxBatchTokens/);
  });

  test('a disposed engine refuses work with WEFT_DISPOSED', async () => {
    const other = await Engine.load(dir, { threads: 1 });
    const s = other.createSequence();
    other.dispose();
    await expectCode(other.run([{ sequence: s, tokens: [1] }]), 'WEFT_DISPOSED');
    expect(() => other.createSequence()).toThrow(expect.objectContaining({ code: 'WEFT_DISPOSED' }));
  });
});

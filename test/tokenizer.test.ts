import { createHash } from 'node:crypto';
import { mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { afterAll, beforeAll, describe, expect, it } from 'vitest';

import { ensureTiktokenTokenizers, TIKTOKEN_TOKENIZERS, type TiktokenTokenizerName } from '../scripts/build-tiktoken-tokenizers.js';
import { WeftError } from '../src/errors.js';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';

const FIXTURES = join(import.meta.dirname, 'fixtures', 'tokenizer');
const texts = (JSON.parse(readFileSync(join(FIXTURES, 'texts.json'), 'utf8')) as { texts: string[] }).texts;
const expected = JSON.parse(readFileSync(join(FIXTURES, 'expected.json'), 'utf8')) as {
  meta: { source: 'hf-tokenizers' | 'js-tiktoken'; tokenizer_json_sha256?: Record<string, string> };
  ids: Record<string, Record<string, number[]>>;
  ids_with_special?: Record<string, Record<string, number[]>>;
  decoded?: Record<string, Record<string, string>>;
  decoded_skip_special?: Record<string, Record<string, string>>;
};

let dirs: Record<TiktokenTokenizerName, string>;
const toks = {} as Record<TiktokenTokenizerName, Tokenizer>;
let scratch: string;

beforeAll(async () => {
  dirs = await ensureTiktokenTokenizers();
  for (const name of TIKTOKEN_TOKENIZERS) toks[name] = await Tokenizer.fromDir(dirs[name]);
  scratch = mkdtempSync(join(tmpdir(), 'weft-tok-'));
}, 120_000);

afterAll(async () => {
  for (const t of Object.values(toks)) await t.dispose();
  rmSync(scratch, { recursive: true, force: true });
});

async function codeOf(p: Promise<unknown> | (() => unknown)): Promise<string> {
  try {
    if (typeof p === 'function') p();
    else await p;
  } catch (err) {
    expect(err).toBeInstanceOf(WeftError);
    return `${(err as WeftError).code}: ${(err as Error).message}`;
  }
  return 'no error';
}

describe.each(TIKTOKEN_TOKENIZERS)('%s tokenizer.json vs fixtures', (name) => {
  it('is the tokenizer.json the fixtures were made from', () => {
    const want = expected.meta.tokenizer_json_sha256?.[name];
    if (!want) return; // provisional (js-tiktoken) fixtures carry no hashes
    const got = createHash('sha256').update(readFileSync(join(dirs[name], 'tokenizer.json'))).digest('hex');
    expect(got).toBe(want);
  });

  it('encodes every fixture text byte-exactly', () => {
    const tok = toks[name];
    const failures: number[] = [];
    texts.forEach((text, i) => {
      const want = expected.ids[name]![String(i)];
      if (JSON.stringify(tok.encode(text, { addSpecialTokens: false })) !== JSON.stringify(want)) failures.push(i);
      const withSpecial = expected.ids_with_special?.[name]?.[String(i)] ?? want;
      if (JSON.stringify(tok.encode(text)) !== JSON.stringify(withSpecial)) failures.push(i);
    });
    expect(failures).toEqual([]);
  });

  it('decodes the fixture ids like tokenizers (with and without special tokens)', () => {
    const tok = toks[name];
    texts.forEach((text, i) => {
      const ids = expected.ids[name]![String(i)]!;
      expect(tok.decode(ids)).toBe(expected.decoded?.[name]?.[String(i)] ?? text);
      if (expected.decoded_skip_special) expect(tok.decode(ids, { skipSpecialTokens: true })).toBe(expected.decoded_skip_special[name]![String(i)]);
    });
  });

  it('stream-decodes to the same text without ever emitting U+FFFD', () => {
    const tok = toks[name];
    for (const skip of [false, true]) {
      texts.forEach((text, i) => {
        const ids = expected.ids[name]![String(i)]!;
        const dec = tok.createDecoder({ skipSpecialTokens: skip });
        let out = '';
        for (const id of ids) {
          const piece = dec.push(id);
          expect(piece).not.toContain('\uFFFD');
          out += piece;
        }
        out += dec.flush();
        expect(out).toBe(tok.decode(ids, { skipSpecialTokens: skip }));
      });
    }
  });
});

describe('pattern dialects', () => {
  it("a Llama-3-style (?i:'s|…) Split regex tokenizes like cl100k's expanded one", () => {
    const json = JSON.parse(readFileSync(join(dirs.cl100k_base, 'tokenizer.json'), 'utf8')) as {
      pre_tokenizer: { pretokenizers: Array<{ pattern?: { Regex: string } }> };
    };
    json.pre_tokenizer.pretokenizers[0]!.pattern!.Regex =
      "(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+";
    const tok = Tokenizer.fromJSON(json);
    texts.forEach((text, i) => expect(tok.encode(text, { addSpecialTokens: false })).toEqual(expected.ids.cl100k_base![String(i)]));
  });
});

describe('round trips and streaming', () => {
  it('decode(encode(s)) === s for random UTF-8 text', () => {
    let seed = 7;
    const rnd = (): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    const ranges: Array<[number, number]> = [
      [0x20, 0x7e], [0x09, 0x0d], [0xa0, 0x24f], [0x300, 0x36f], [0x400, 0x4ff], [0x600, 0x6ff],
      [0x900, 0x97f], [0x3040, 0x30ff], [0x4e00, 0x9fff], [0xac00, 0xd7a3], [0x1f300, 0x1faff], [0x10000, 0x1007f], [0x2000, 0x206f],
    ];
    for (const name of TIKTOKEN_TOKENIZERS) {
      for (let k = 0; k < 300; k++) {
        let s = '';
        const n = Math.floor(rnd() * 40);
        for (let j = 0; j < n; j++) {
          const [lo, hi] = ranges[Math.floor(rnd() * ranges.length)]!;
          s += String.fromCodePoint(lo + Math.floor(rnd() * (hi - lo + 1)));
        }
        const ids = toks[name].encode(s);
        expect(toks[name].decode(ids)).toBe(s);
      }
    }
  });

  it('holds back the bytes of an emoji split across tokens', () => {
    const tok = toks.gpt2;
    const ids = tok.encode('👩‍💻 ok 👍🏽');
    expect(ids.length).toBeGreaterThan(6); // byte-level pieces, not one token per character
    const dec = tok.createDecoder();
    const pieces = ids.map((id) => dec.push(id));
    pieces.push(dec.flush());
    expect(pieces).toContain(''); // at least one token completed no character
    for (const p of pieces) expect(p).not.toContain('\uFFFD');
    expect(pieces.join('')).toBe('👩‍💻 ok 👍🏽');
  });

  it('a truncated character followed by whole-character tokens streams as the full decode does (U+FFFD, then the text)', () => {
    const tok = toks.gpt2;
    const thumb = tok.encode('👍');
    const tail = tok.encode(' ok, naïve');
    for (const cut of [1, thumb.length - 1]) {
      const ids = [...thumb.slice(0, cut), ...tail, ...thumb, ...tail];
      const dec = tok.createDecoder();
      let out = '';
      for (const id of ids) out += dec.push(id);
      out += dec.flush();
      expect(out).toBe(tok.decode(ids));
      expect(out.startsWith('\uFFFD')).toBe(true);
    }
  });

  it('flush() emits U+FFFD only for a truly incomplete tail, then resets', () => {
    const tok = toks.gpt2;
    const ids = tok.encode('👍');
    const dec = tok.createDecoder();
    expect(dec.push(ids[0]!)).toBe('');
    expect(dec.flush()).toContain('\uFFFD');
    let out = '';
    for (const id of ids) out += dec.push(id);
    expect(out + dec.flush()).toBe('👍');
  });
});

describe('special tokens and tokenizer_config.json', () => {
  it('knows the special tokens of each encoding', () => {
    expect(toks.gpt2.tokenId('<|endoftext|>')).toBe(50256);
    expect(toks.cl100k_base.tokenId('<|endoftext|>')).toBe(100257);
    expect(toks.cl100k_base.tokenId('<|endofprompt|>')).toBe(100276);
    expect(toks.o200k_base.tokenId('<|endoftext|>')).toBe(199999);
    expect(toks.cl100k_base.tokenId('no such token')).toBeUndefined();
    expect(toks.cl100k_base.vocabSize).toBe(100277);
    expect(toks.o200k_base.vocabSize).toBe(200019);
    expect(toks.gpt2.vocabSize).toBe(50257);
    expect(toks.cl100k_base.eosTokenIds).toEqual([100257]);
    expect(toks.cl100k_base.bosTokenId).toBeNull();
    expect(toks.cl100k_base.chatTemplate).toBeNull();
  });

  it('matches special-token strings in text and can skip them when decoding', () => {
    const tok = toks.cl100k_base;
    const ids = tok.encode('a<|endoftext|>b<|fim_prefix|>');
    expect(ids).toContain(100257);
    expect(ids).toContain(100258);
    expect(tok.decode(ids)).toBe('a<|endoftext|>b<|fim_prefix|>');
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('ab');
    // gpt2 has no <|fim_prefix|>: plain text there
    expect(toks.gpt2.decode(toks.gpt2.encode('<|fim_prefix|>'))).toBe('<|fim_prefix|>');
    expect(toks.gpt2.encode('<|fim_prefix|>').length).toBeGreaterThan(1);
  });

  it('decodes ids in a vocabulary gap to nothing and rejects out-of-range ids', async () => {
    const tok = toks.cl100k_base;
    expect(tok.decode([64, 100265, 65])).toBe('ab'); // 100261–100275 name no token
    expect(tok.decode([])).toBe('');
    expect(await codeOf(() => tok.decode([100277]))).toMatch(/^WEFT_TOKEN_OUT_OF_RANGE/);
    expect(await codeOf(() => tok.decode([-1]))).toMatch(/^WEFT_TOKEN_OUT_OF_RANGE/);
    expect(await codeOf(() => tok.decode([1.5]))).toMatch(/^WEFT_TOKEN_OUT_OF_RANGE/);
    expect(await codeOf(() => tok.createDecoder().push(1e9))).toMatch(/^WEFT_TOKEN_OUT_OF_RANGE/);
  });

  it('applies bos/eos, add_bos_token, add_eos_token and chat_template from tokenizer_config.json', async () => {
    const json = JSON.parse(readFileSync(join(dirs.gpt2, 'tokenizer.json'), 'utf8')) as Record<string, unknown>;
    (json.added_tokens as object[]).push({ id: 50257, content: '<|bos|>', special: true, normalized: false, lstrip: false, rstrip: false, single_word: false });
    const tok = Tokenizer.fromJSON(json, {
      bos_token: { content: '<|bos|>' },
      eos_token: '<|endoftext|>',
      add_bos_token: true,
      add_eos_token: true,
      chat_template: [{ name: 'tool_use', template: 'T' }, { name: 'default', template: '{{ messages }}' }],
    });
    expect(tok.bosTokenId).toBe(50257);
    expect(tok.eosTokenIds).toEqual([50256]);
    expect(tok.vocabSize).toBe(50258);
    expect(tok.chatTemplate).toBe('{{ messages }}');
    const plain = tok.encode('hello', { addSpecialTokens: false });
    expect(tok.encode('hello')).toEqual([50257, ...plain, 50256]);
    expect(await tok.encodeAsync('hello')).toEqual([50257, ...plain, 50256]);
    expect(tok.decode(tok.encode('hello'), { skipSpecialTokens: true })).toBe('hello');

    // fromDir: tokenizer_config.json + generation_config.json eos ids + chat_template.jinja
    const dir = join(scratch, 'cfg-model');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'tokenizer.json'), readFileSync(join(dirs.cl100k_base, 'tokenizer.json')));
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|endoftext|>' }));
    writeFileSync(join(dir, 'generation_config.json'), JSON.stringify({ eos_token_id: [100257, 100276] }));
    writeFileSync(join(dir, 'chat_template.jinja'), '{% for m in messages %}{{ m.content }}{% endfor %}');
    const t2 = await Tokenizer.fromDir(dir);
    expect(t2.eosTokenIds).toEqual([100257, 100276]);
    expect(t2.chatTemplate).toBe('{% for m in messages %}{{ m.content }}{% endfor %}');
  });
});

describe('errors', () => {
  it('WEFT_MODEL_NOT_FOUND for a missing directory', async () => {
    expect(await codeOf(Tokenizer.fromDir(join(scratch, 'nope')))).toMatch(/^WEFT_MODEL_NOT_FOUND/);
  });

  it('WEFT_TOKENIZER naming the file for a missing or malformed tokenizer.json', async () => {
    const empty = join(scratch, 'empty');
    mkdirSync(empty, { recursive: true });
    expect(await codeOf(Tokenizer.fromDir(empty))).toMatch(/^WEFT_TOKENIZER: .*tokenizer\.json/);

    const bad = join(scratch, 'bad');
    mkdirSync(bad, { recursive: true });
    writeFileSync(join(bad, 'tokenizer.json'), '{"model": {"type": "BPE", "vocab": {');
    expect(await codeOf(Tokenizer.fromDir(bad))).toMatch(/^WEFT_TOKENIZER: .*tokenizer\.json: malformed JSON/);

    writeFileSync(join(bad, 'tokenizer.json'), '[1, 2]');
    expect(await codeOf(Tokenizer.fromDir(bad))).toMatch(/^WEFT_TOKENIZER: .*tokenizer\.json/);

    writeFileSync(join(bad, 'tokenizer.json'), JSON.stringify({ model: { type: 'Telepathy', vocab: {} } }));
    expect(await codeOf(Tokenizer.fromDir(bad))).toMatch(/^WEFT_TOKENIZER: .*unsupported model type/);

    writeFileSync(join(bad, 'tokenizer.json'), readFileSync(join(dirs.gpt2, 'tokenizer.json')));
    writeFileSync(join(bad, 'tokenizer_config.json'), '{oops');
    expect(await codeOf(Tokenizer.fromDir(bad))).toMatch(/^WEFT_TOKENIZER: .*tokenizer_config\.json: malformed JSON/);

    writeFileSync(join(bad, 'tokenizer_config.json'), JSON.stringify({ eos_token: '<|nope|>' }));
    expect(await codeOf(Tokenizer.fromDir(bad))).toMatch(/^WEFT_TOKENIZER: tokenizer_config\.json: eos_token/);
  });

  it('WEFT_TOKENIZER from fromJSON for objects that are not tokenizers', async () => {
    expect(await codeOf(() => Tokenizer.fromJSON({}))).toMatch(/^WEFT_TOKENIZER/);
    expect(await codeOf(() => Tokenizer.fromJSON({ model: { type: 'BPE', vocab: {}, merges: [] } }))).toMatch(/^WEFT_TOKENIZER/);
    expect(await codeOf(() => toks.gpt2.encode(42 as unknown as string))).toMatch(/^WEFT_BAD_ARGUMENT/);
  });
});

describe('a non-byte-level (Metaspace + byte-fallback) tokenizer', () => {
  // A tiny Llama-2–style tokenizer.json: exercises the library's other pipeline and the
  // windowed stream decoder (byte-fallback pieces of an emoji must be held back).
  const vocab: Record<string, number> = { '<unk>': 0, '<s>': 1, '</s>': 2 };
  for (let b = 0; b < 256; b++) vocab[`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`] = 3 + b;
  for (const p of ['▁', 'h', 'i', 'e', 'l', 'o', 'w', 'r', 'd', '▁h', '▁hi', 'll', '▁w', 'or', 'ld']) vocab[p] = Object.keys(vocab).length;
  const json = {
    added_tokens: [
      { id: 0, content: '<unk>', special: true, normalized: false, lstrip: false, rstrip: false, single_word: false },
      { id: 1, content: '<s>', special: true, normalized: false, lstrip: false, rstrip: false, single_word: false },
      { id: 2, content: '</s>', special: true, normalized: false, lstrip: false, rstrip: false, single_word: false },
    ],
    normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
    pre_tokenizer: null,
    post_processor: {
      type: 'TemplateProcessing',
      single: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }],
      pair: [{ SpecialToken: { id: '<s>', type_id: 0 } }, { Sequence: { id: 'A', type_id: 0 } }, { Sequence: { id: 'B', type_id: 0 } }],
      special_tokens: { '<s>': { id: '<s>', ids: [1], tokens: ['<s>'] } },
    },
    decoder: {
      type: 'Sequence',
      decoders: [
        { type: 'Replace', pattern: { String: '▁' }, content: ' ' },
        { type: 'ByteFallback' },
        { type: 'Fuse' },
        { type: 'Strip', content: ' ', start: 1, stop: 0 },
      ],
    },
    model: {
      type: 'BPE', dropout: null, unk_token: '<unk>', continuing_subword_prefix: null, end_of_word_suffix: null,
      fuse_unk: true, byte_fallback: true, vocab,
      merges: ['▁ h', '▁h i', 'l l', '▁ w', 'o r', 'l d'],
    },
  };
  const tok = Tokenizer.fromJSON(json, { bos_token: '<s>', eos_token: '</s>' });

  it('encodes with the post-processor BOS and byte fallback, and round-trips', () => {
    const ids = tok.encode('hi 👍 world');
    expect(ids[0]).toBe(1);
    expect(ids).toContain(vocab['<0xF0>']);
    expect(tok.decode(ids, { skipSpecialTokens: true })).toBe('hi 👍 world');
    expect(tok.encode('hi', { addSpecialTokens: false })).toEqual([vocab['▁hi']]);
    expect(tok.bosTokenId).toBe(1);
    expect(tok.eosTokenIds).toEqual([2]);
  });

  it('stream-decodes without splitting the byte-fallback emoji', () => {
    const ids = tok.encode('hi 👍 world', { addSpecialTokens: false });
    const dec = tok.createDecoder();
    const pieces = ids.map((id) => dec.push(id));
    pieces.push(dec.flush());
    for (const p of pieces) expect(p).not.toContain('\uFFFD');
    expect(pieces.join('')).toBe(tok.decode(ids));
  });
});

describe('encodeAsync', () => {
  it('keeps the event loop responsive while encoding a long prompt, with identical ids', async () => {
    const tok = toks.gpt2;
    const unit = texts.join(' ');
    const long = unit.repeat(Math.ceil(400_000 / unit.length)).slice(0, 400_000);

    const t0 = performance.now();
    const syncIds = tok.encode(long);
    const syncMs = performance.now() - t0;

    let ticks = 0;
    let maxGap = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
      ticks++;
    }, 2);
    const t1 = performance.now();
    const asyncIds = await tok.encodeAsync(long); // includes starting the worker
    const asyncMs = performance.now() - t1;
    const t2 = performance.now();
    await tok.encodeAsync(long);
    const warmMs = performance.now() - t2;
    clearInterval(timer);

    console.log(
      `encode 400k chars (${syncIds.length} tokens): sync ${syncMs.toFixed(0)} ms blocking; ` +
        `encodeAsync ${asyncMs.toFixed(0)} ms cold / ${warmMs.toFixed(0)} ms warm; ${ticks} timer ticks, longest gap ${maxGap.toFixed(1)} ms`,
    );
    expect(asyncIds).toEqual(syncIds);
    expect(maxGap).toBeLessThan(Math.max(60, syncMs / 3));
    expect(ticks).toBeGreaterThan(10);
  }, 60_000);

  it('runs short texts inline and concurrent long ones in order', async () => {
    const tok = toks.cl100k_base;
    expect(await tok.encodeAsync('short')).toEqual(tok.encode('short'));
    const a = 'alpha beta 123 '.repeat(2000);
    const b = '漢字 😀 '.repeat(3000);
    const [ra, rb] = await Promise.all([tok.encodeAsync(a), tok.encodeAsync(b)]);
    expect(ra).toEqual(tok.encode(a));
    expect(rb).toEqual(tok.encode(b));
  }, 60_000);

  it('bounds its queue (WEFT_OVERLOADED) and drops a queued text whose caller gave up (WEFT_CANCELLED)', async () => {
    const tok = Tokenizer.fromJSON(JSON.parse(readFileSync(join(dirs.gpt2, 'tokenizer.json'), 'utf8')));
    tok.asyncThresholdChars = 16;
    tok.encodeQueueLimits = { maxTexts: 3 };
    const text = 'the quick brown fox jumps over the lazy dog '.repeat(2000);
    const first = tok.encodeAsync(text);
    const abort = new AbortController();
    const second = tok.encodeAsync(text + 'x', { signal: abort.signal });
    const third = tok.encodeAsync(text + 'y');
    expect(tok.encodeQueueLength).toBe(3);
    expect(await codeOf(tok.encodeAsync(text))).toMatch(/^WEFT_OVERLOADED/);
    abort.abort();
    expect(await codeOf(second)).toMatch(/^WEFT_CANCELLED/);
    expect(tok.encodeQueueLength).toBe(2);
    expect(await first).toEqual(tok.encode(text));
    expect(await third).toEqual(tok.encode(text + 'y'));
    expect(tok.encodeQueueLength).toBe(0);
    const pre = new AbortController();
    pre.abort();
    expect(await codeOf(tok.encodeAsync(text, { signal: pre.signal }))).toMatch(/^WEFT_CANCELLED/);
    await tok.dispose();
  }, 60_000);
});

describe('the byte-count lower bound on tokens (token-bound.ts)', () => {
  it('never exceeds the real count on the fixture texts and random strings (byte-level and byte-fallback)', () => {
    const llama2 = Tokenizer.fromJSON(
      {
        model: { type: 'BPE', byte_fallback: true, fuse_unk: true, unk_token: '<unk>', vocab: Object.fromEntries([...'▁abc'].map((c, i) => [c, i]).concat([['<unk>', 4], ...Array.from({ length: 256 }, (_, b) => [`<0x${b.toString(16).toUpperCase().padStart(2, '0')}>`, 5 + b] as [string, number]), ['▁ab', 261], ['▁abc▁abc', 262]])), merges: ['▁ a', '▁a b', 'b c'] },
        normalizer: { type: 'Sequence', normalizers: [{ type: 'Prepend', prepend: '▁' }, { type: 'Replace', pattern: { String: ' ' }, content: '▁' }] },
        decoder: { type: 'Sequence', decoders: [{ type: 'ByteFallback' }] },
      },
    );
    let seed = 7;
    const rnd = () => ((seed = (seed * 1103515245 + 12345) >>> 0) / 2 ** 32);
    const alphabet = ['a', 'b', 'c', ' ', 'é', '漢', '😀', '\n', '<|endoftext|>', 'abc abc'];
    const randoms = Array.from({ length: 300 }, () => Array.from({ length: 1 + Math.floor(rnd() * 60) }, () => alphabet[Math.floor(rnd() * alphabet.length)]).join(''));
    for (const tok of [toks.gpt2, toks.cl100k_base, toks.o200k_base, llama2]) {
      expect(tok.maxInputBytesPerToken).toBeGreaterThan(0);
      for (const t of [...texts, ...randoms]) expect(tok.minTokens(t), t).toBeLessThanOrEqual(tok.encode(t, { addSpecialTokens: false }).length);
    }
    expect(toks.gpt2.minTokens('x'.repeat(1 << 20))).toBeGreaterThan(1000);
  });

  it('gives no bound where a token can swallow any run of text', () => {
    const base = JSON.parse(readFileSync(join(dirs.gpt2, 'tokenizer.json'), 'utf8'));
    const without = (patch: object) => Tokenizer.fromJSON({ ...base, ...patch }).maxInputBytesPerToken;
    expect(without({})).not.toBeNull();
    expect(without({ normalizer: { type: 'Strip', strip_left: true, strip_right: true } })).toBeNull();
    expect(without({ normalizer: { type: 'Replace', pattern: { Regex: '\\s+' }, content: ' ' } })).toBeNull();
    expect(without({ pre_tokenizer: { type: 'Whitespace' } })).toBeNull();
    expect(without({ added_tokens: [...base.added_tokens, { id: 50257, content: '<mask>', special: true, lstrip: true, rstrip: false, normalized: false, single_word: false }] })).toBeNull();
    expect(without({ decoder: null })).toBeNull(); // BPE neither byte-level nor byte-fallback: an unknown token may cover a run
  });
});

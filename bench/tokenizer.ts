/**
 * Tokenizer library comparison (docs/tokenizer.md): @huggingface/tokenizers (tokenizers.js, reads
 * tokenizer.json directly — what weft uses) vs js-tiktoken fed with ranks converted from the same
 * byte-level BPE tokenizer.json. Both run in the same process on the same texts.
 *
 *   npx vite-node bench/tokenizer.ts          (or: npx tsc -p tsconfig.json && node dist/bench/tokenizer.js)
 *
 * Exactness: encode every text of test/fixtures/tokenizer/texts.json and compare with expected.json
 * (produced by Hugging Face `tokenizers`, see scripts/gpu/tokenizer_fixtures.py).
 * Speed: tokens/s encoding a ~1 MB mixed text (code, prose, numbers, whitespace, emoji, CJK, random
 * words), best of 3 after a warm-up; a 10k-character run without pre-tokenizer splits (worst case
 * for BPE); decode throughput.
 */
import { readFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { Tiktoken } from 'js-tiktoken/lite';

import { ensureTiktokenTokenizers, TIKTOKEN_TOKENIZERS } from '../scripts/build-tiktoken-tokenizers.js';
import { byteLevelTokenBytes } from '../src/tokenizer/byte-level.js';
import { Tokenizer } from '../src/tokenizer/tokenizer.js';

let root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
if (!readDirHas(root, 'package.json')) root = resolve(root, '..');
function readDirHas(dir: string, file: string): boolean {
  try {
    readFileSync(join(dir, file));
    return true;
  } catch {
    return false;
  }
}

interface HfJson {
  model: { type?: string; vocab: Record<string, number>; merges: Array<string | [string, string]> };
  added_tokens?: Array<{ id: number; content: string; special?: boolean }>;
  pre_tokenizer?: { type: string; pattern?: { Regex?: string }; use_regex?: boolean; pretokenizers?: HfJson['pre_tokenizer'][] } | null;
  decoder?: { type: string } | null;
}

const GPT2_PATTERN = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+";

/**
 * Byte-level BPE tokenizer.json → js-tiktoken ranks (rank = token id). Exact only when merge order
 * equals id order (true for tiktoken-derived vocabularies, GPT-2, Llama-3); the pre-tokenizer regex
 * is passed to `new RegExp(…, 'u')` verbatim, as js-tiktoken does with its own patterns.
 */
export function tokenizerJsonToTiktoken(json: HfJson): { tiktoken: Tiktoken; mergeOrderViolations: number } {
  if (json.model.type !== 'BPE' || json.decoder?.type !== 'ByteLevel') throw new Error('not a byte-level BPE tokenizer.json');
  const added = new Set((json.added_tokens ?? []).map((t) => t.content));
  const byRank: Array<[number, string]> = [];
  for (const [token, id] of Object.entries(json.model.vocab)) {
    if (added.has(token)) continue;
    const bytes = byteLevelTokenBytes(token);
    if (!bytes) throw new Error(`token ${JSON.stringify(token)} is not byte-level`);
    byRank.push([id, Buffer.from(bytes).toString('base64')]);
  }
  byRank.sort((a, b) => a[0] - b[0]);
  // js-tiktoken's compact format: "! <first rank> <base64> <base64> …" per run of consecutive ranks.
  const lines: string[] = [];
  let run: string[] = [];
  let start = -1;
  let prev = -2;
  for (const [rank, b64] of byRank) {
    if (rank !== prev + 1) {
      if (run.length) lines.push(`! ${start} ${run.join(' ')}`);
      run = [];
      start = rank;
    }
    run.push(b64);
    prev = rank;
  }
  if (run.length) lines.push(`! ${start} ${run.join(' ')}`);
  let violations = 0;
  let last = -1;
  for (const m of json.model.merges) {
    const [a, b] = typeof m === 'string' ? (m.split(' ') as [string, string]) : m;
    const id = json.model.vocab[a + b] ?? -1;
    if (id <= last) violations++;
    last = Math.max(last, id);
  }
  const findPattern = (p: HfJson['pre_tokenizer']): string | null => {
    if (!p) return null;
    if (p.type === 'Split' && p.pattern?.Regex) return p.pattern.Regex;
    if (p.type === 'ByteLevel' && p.use_regex !== false) return GPT2_PATTERN;
    if (p.type === 'Sequence') for (const q of p.pretokenizers ?? []) { const r = findPattern(q); if (r) return r; }
    return null;
  };
  const pat = findPattern(json.pre_tokenizer);
  if (!pat) throw new Error('no pre-tokenizer regex');
  const special: Record<string, number> = {};
  for (const t of json.added_tokens ?? []) special[t.content] = t.id;
  return { tiktoken: new Tiktoken({ pat_str: pat, special_tokens: special, bpe_ranks: lines.join('\n') }), mergeOrderViolations: violations };
}

function bestOf<T>(n: number, fn: () => T): { ms: number; value: T } {
  let best = Infinity;
  let value!: T;
  for (let i = 0; i < n; i++) {
    const t0 = performance.now();
    value = fn();
    best = Math.min(best, performance.now() - t0);
  }
  return { ms: best, value };
}

function mixedText(texts: string[], chars: number): string {
  let seed = 42;
  const rnd = (): number => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
  const syll = ['ka', 'lo', 'min', 'tra', 've', 'qu', 'ix', 'pon', 'de', 'ur', 'sch', 'ght', 'zo', 'ny', 'él', 'ø'];
  const parts: string[] = [];
  let len = 0;
  while (len < chars) {
    const r = rnd();
    let s: string;
    if (r < 0.5) s = texts[Math.floor(rnd() * texts.length)]!;
    else {
      // random pseudo-words and numbers: defeats per-word caches
      const words: string[] = [];
      for (let w = 0; w < 12; w++) {
        let word = '';
        const k = 1 + Math.floor(rnd() * 4);
        for (let j = 0; j < k; j++) word += syll[Math.floor(rnd() * syll.length)];
        words.push(rnd() < 0.1 ? String(Math.floor(rnd() * 1e7)) : word);
      }
      s = words.join(' ') + (rnd() < 0.3 ? '\n' : ' ');
    }
    parts.push(s);
    len += s.length;
  }
  return parts.join('').slice(0, chars);
}

async function main(): Promise<void> {
  const dirs = await ensureTiktokenTokenizers();
  const texts = (JSON.parse(readFileSync(join(root, 'test/fixtures/tokenizer/texts.json'), 'utf8')) as { texts: string[] }).texts;
  const expected = JSON.parse(readFileSync(join(root, 'test/fixtures/tokenizer/expected.json'), 'utf8')) as {
    meta: { source: string; tokenizers_version?: string };
    ids: Record<string, Record<string, number[]>>;
  };
  const long = mixedText(texts, 1_000_000);
  const worst = 'ab'.repeat(5_000);
  console.log(`fixtures: ${expected.meta.source} ${expected.meta.tokenizers_version ?? ''}; ${texts.length} texts; mixed text ${long.length} chars; node ${process.version}`);
  const rows: string[] = [];
  rows.push('| encoding | library | load ms | exact (of ' + texts.length + ') | encode tok/s (1 MB mixed) | ratio | 10k-char run ms | decode tok/s |');
  rows.push('|---|---|---|---|---|---|---|---|');
  for (const name of TIKTOKEN_TOKENIZERS) {
    const dir = dirs[name];
    let t0 = performance.now();
    const hf = await Tokenizer.fromDir(dir);
    const hfLoad = performance.now() - t0;
    t0 = performance.now();
    const json = JSON.parse(readFileSync(join(dir, 'tokenizer.json'), 'utf8')) as HfJson;
    const { tiktoken: tk, mergeOrderViolations } = tokenizerJsonToTiktoken(json);
    const tkLoad = performance.now() - t0;

    const exp = expected.ids[name]!;
    const failedHf: number[] = [];
    const failedTk: number[] = [];
    texts.forEach((t, i) => {
      const want = JSON.stringify(exp[String(i)]);
      if (JSON.stringify(hf.encode(t, { addSpecialTokens: false })) !== want) failedHf.push(i);
      if (JSON.stringify(tk.encode(t, 'all')) !== want) failedTk.push(i);
    });

    hf.encode(long);
    tk.encode(long, 'all');
    const hfEnc = bestOf(3, () => hf.encode(long, { addSpecialTokens: false }));
    const tkEnc = bestOf(3, () => tk.encode(long, 'all'));
    const same = JSON.stringify(hfEnc.value) === JSON.stringify(tkEnc.value);
    const hfWorst = bestOf(1, () => hf.encode(worst)).ms;
    const tkWorst = bestOf(1, () => tk.encode(worst, 'all')).ms;
    const hfDec = bestOf(3, () => hf.decode(hfEnc.value));
    const tkDec = bestOf(3, () => tk.decode(tkEnc.value));
    const tps = (n: number, ms: number): string => `${((n / ms) * 1000 / 1e6).toFixed(2)} M`;
    const ratio = tkEnc.ms / hfEnc.ms;
    rows.push(
      `| ${name} | @huggingface/tokenizers | ${hfLoad.toFixed(0)} | ${texts.length - failedHf.length}${failedHf.length ? ` (fails ${failedHf.join(',')})` : ''} | ${tps(hfEnc.value.length, hfEnc.ms)} | 1.00 | ${hfWorst.toFixed(1)} | ${tps(hfEnc.value.length, hfDec.ms)} |`,
    );
    rows.push(
      `| ${name} | js-tiktoken (converted) | ${tkLoad.toFixed(0)} | ${texts.length - failedTk.length}${failedTk.length ? ` (fails ${failedTk.join(',')})` : ''} | ${tps(tkEnc.value.length, tkEnc.ms)} | ${(1 / ratio).toFixed(2)} | ${tkWorst.toFixed(1)} | ${tps(tkEnc.value.length, tkDec.ms)} |`,
    );
    console.error(`${name}: merge-order violations ${mergeOrderViolations}; 1 MB mixed ids identical between libraries: ${same}; hf ${hfEnc.value.length} tokens`);
  }
  console.log(rows.join('\n'));

  // Event loop during a 100k-character prompt: sync encode vs encodeAsync (worker thread).
  const tok = await Tokenizer.fromDir(dirs.cl100k_base);
  const prompt = mixedText(texts, 100_000);
  for (const mode of ['encode (sync)', 'encodeAsync cold', 'encodeAsync warm'] as const) {
    let maxGap = 0;
    let ticks = 0;
    let last = performance.now();
    const timer = setInterval(() => {
      const now = performance.now();
      maxGap = Math.max(maxGap, now - last);
      last = now;
      ticks++;
    }, 1);
    await new Promise((r) => setTimeout(r, 20));
    const t0 = performance.now();
    const ids = mode === 'encode (sync)' ? tok.encode(prompt) : await tok.encodeAsync(prompt);
    const ms = performance.now() - t0;
    await new Promise((r) => setTimeout(r, 5));
    clearInterval(timer);
    console.log(`cl100k 100k-char prompt, ${mode}: ${ms.toFixed(0)} ms, ${ids.length} tokens, 1 ms timer: ${ticks} ticks, longest gap ${maxGap.toFixed(1)} ms`);
  }
  await tok.dispose();
}

main().catch((err) => {
  console.error(err);
  process.exit(1);
});

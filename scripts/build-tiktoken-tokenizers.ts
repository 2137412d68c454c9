/**
 * Builds Hugging Face–format `tokenizer.json` files (byte-level BPE) from the rank files that
 * `js-tiktoken` ships, for gpt2 (= r50k_base), cl100k_base and o200k_base.
 *
 *   node dist/scripts/build-tiktoken-tokenizers.js --out DIR [--only gpt2,cl100k_base] [--force]
 *   npx vite-node scripts/build-tiktoken-tokenizers.ts -- --out DIR
 *
 * Writes DIR/<name>/tokenizer.json and DIR/<name>/tokenizer_config.json.
 *
 * Layout of each tokenizer.json (the same shape as Hugging Face's own tiktoken conversions):
 *  - model: BPE, vocab = byte-level (GPT-2 bytes→unicode) spelling of each rank's bytes → rank,
 *    merges derived from the ranks (below), ignore_merges = true (a pre-token that is itself a
 *    vocabulary entry is emitted whole, exactly like tiktoken's whole-piece lookup);
 *  - pre_tokenizer: Sequence[Split(Regex = the encoding's pattern, Isolated), ByteLevel(use_regex=false)];
 *  - decoder: ByteLevel; post_processor: null (tiktoken adds no BOS/EOS);
 *  - the encoding's special tokens as special added_tokens, and in the vocab with the same ids
 *    (otherwise `tokenizers` renumbers them from the vocab size; see below).
 *
 * Deriving merges from ranks: for every token of ≥ 2 bytes, in rank order, run tiktoken's BPE on the
 * token's own bytes using only ranks lower than the token's; the run stops at two parts, and that
 * pair is the merge that produces the token. Merge priority = the produced token's rank.
 *
 * The generated files are large (up to ~10 MB) and are not committed: tests call
 * `ensureTiktokenTokenizers()` which caches them under node_modules/.cache/weft/.
 */
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { byteToChar } from '../src/tokenizer/byte-level.js';

export const TIKTOKEN_TOKENIZERS = ['gpt2', 'cl100k_base', 'o200k_base'] as const;
export type TiktokenTokenizerName = (typeof TIKTOKEN_TOKENIZERS)[number];

/** Bump when the generated layout changes (invalidates the cache). */
const GENERATOR_VERSION = 2;

export interface TiktokenRankFile {
  pat_str: string;
  special_tokens: Record<string, number>;
  bpe_ranks: string;
}

export async function loadRankFile(name: TiktokenTokenizerName): Promise<TiktokenRankFile> {
  switch (name) {
    case 'gpt2':
      return (await import('js-tiktoken/ranks/gpt2')).default as TiktokenRankFile;
    case 'cl100k_base':
      return (await import('js-tiktoken/ranks/cl100k_base')).default as TiktokenRankFile;
    case 'o200k_base':
      return (await import('js-tiktoken/ranks/o200k_base')).default as TiktokenRankFile;
  }
}

/** Ranks as latin1 "byte strings" (one char per byte) → rank. */
export function parseRanks(file: TiktokenRankFile): Map<string, number> {
  const ranks = new Map<string, number>();
  for (const line of file.bpe_ranks.split('\n')) {
    if (!line) continue;
    const fields = line.split(' ');
    const offset = Number.parseInt(fields[1]!, 10);
    for (let i = 2; i < fields.length; i++) {
      ranks.set(Buffer.from(fields[i]!, 'base64').toString('latin1'), offset + i - 2);
    }
  }
  return ranks;
}

/** tiktoken's BPE on `token`'s bytes restricted to ranks below `maxRank`; returns the final parts. */
function bpeBelow(ranks: Map<string, number>, token: string, maxRank: number): string[] {
  let parts = Array.from(token); // latin1: one char per byte
  for (;;) {
    let best = -1;
    let bestRank = maxRank;
    for (let i = 0; i + 1 < parts.length; i++) {
      const r = ranks.get(parts[i]! + parts[i + 1]!);
      if (r !== undefined && r < bestRank) {
        bestRank = r;
        best = i;
      }
    }
    if (best < 0) return parts;
    parts = [...parts.slice(0, best), parts[best]! + parts[best + 1]!, ...parts.slice(best + 2)];
  }
}

export interface BuiltTokenizer {
  name: TiktokenTokenizerName;
  tokenizer: Record<string, unknown>;
  config: Record<string, unknown>;
  /** tokens of ≥ 2 bytes whose restricted BPE did not end in exactly two parts (no merge emitted). */
  unreachable: number;
}

export async function buildTiktokenTokenizer(name: TiktokenTokenizerName): Promise<BuiltTokenizer> {
  const file = await loadRankFile(name);
  const ranks = parseRanks(file);
  const alphabet = byteToChar();
  const spell = (bytes: string): string => {
    let s = '';
    for (let i = 0; i < bytes.length; i++) s += alphabet[bytes.charCodeAt(i)];
    return s;
  };
  const ordered = [...ranks.entries()].sort((a, b) => a[1] - b[1]);
  const vocab: Record<string, number> = {};
  const merges: string[] = [];
  let unreachable = 0;
  for (const [bytes, rank] of ordered) {
    vocab[spell(bytes)] = rank;
    if (bytes.length < 2) continue;
    const parts = bpeBelow(ranks, bytes, rank);
    if (parts.length !== 2) {
      unreachable++;
      continue;
    }
    merges.push(`${spell(parts[0]!)} ${spell(parts[1]!)}`);
  }
  const specials = Object.entries(file.special_tokens).sort((a, b) => a[1] - b[1]);
  // Special tokens also go into the model vocab: `tokenizers` (Rust) keeps an added token's id only
  // when the model vocab already maps its content; otherwise it renumbers added tokens from the model
  // vocab size (cl100k's <|endoftext|> would become 100256 instead of 100257). HF's own GPT-2 file
  // does the same (<|endoftext|> is in its vocab).
  for (const [content, id] of specials) vocab[content] = id;
  const addedTokens = specials.map(([content, id]) => ({
    id,
    content,
    single_word: false,
    lstrip: false,
    rstrip: false,
    normalized: false,
    special: true,
  }));
  const tokenizer = {
    version: '1.0',
    truncation: null,
    padding: null,
    added_tokens: addedTokens,
    normalizer: null,
    pre_tokenizer: {
      type: 'Sequence',
      pretokenizers: [
        { type: 'Split', pattern: { Regex: file.pat_str }, behavior: 'Isolated', invert: false },
        { type: 'ByteLevel', add_prefix_space: false, trim_offsets: true, use_regex: false },
      ],
    },
    post_processor: null,
    decoder: { type: 'ByteLevel', add_prefix_space: true, trim_offsets: true, use_regex: true },
    model: {
      type: 'BPE',
      dropout: null,
      unk_token: null,
      continuing_subword_prefix: null,
      end_of_word_suffix: null,
      fuse_unk: false,
      byte_fallback: false,
      ignore_merges: true,
      vocab,
      merges,
    },
  };
  const eos = file.special_tokens['<|endoftext|>'] !== undefined ? '<|endoftext|>' : null;
  const config = {
    tokenizer_class: 'PreTrainedTokenizerFast',
    add_bos_token: false,
    add_eos_token: false,
    bos_token: null,
    eos_token: eos,
    clean_up_tokenization_spaces: false,
    model_max_length: 1_000_000,
    weft_source: `js-tiktoken ${jsTiktokenVersion()} ranks/${name}`,
  };
  return { name, tokenizer, config, unreachable };
}

function jsTiktokenVersion(): string {
  const require = createRequire(import.meta.url);
  const pkgPath = join(dirname(require.resolve('js-tiktoken')), '..', 'package.json');
  return (JSON.parse(readFileSync(pkgPath, 'utf8')) as { version: string }).version;
}

function cacheKey(): string {
  return createHash('sha256')
    .update(`${GENERATOR_VERSION}|${jsTiktokenVersion()}|${readFileSync(fileURLToPath(import.meta.url), 'utf8').length}`)
    .digest('hex')
    .slice(0, 12);
}

/** Writes OUT/<name>/{tokenizer.json,tokenizer_config.json}; skips names already built with the same stamp. */
export async function writeTiktokenTokenizers(
  outDir: string,
  names: readonly TiktokenTokenizerName[] = TIKTOKEN_TOKENIZERS,
  opts: { force?: boolean; log?: (msg: string) => void } = {},
): Promise<Record<TiktokenTokenizerName, string>> {
  const key = cacheKey();
  const dirs = {} as Record<TiktokenTokenizerName, string>;
  for (const name of names) {
    const dir = join(outDir, name);
    dirs[name] = dir;
    const stamp = join(dir, '.weft-stamp');
    if (!opts.force && existsSync(stamp) && readFileSync(stamp, 'utf8') === key && existsSync(join(dir, 'tokenizer.json'))) {
      continue;
    }
    const t0 = performance.now();
    const built = await buildTiktokenTokenizer(name);
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'tokenizer.json'), JSON.stringify(built.tokenizer));
    writeFileSync(join(dir, 'tokenizer_config.json'), JSON.stringify(built.config, null, 2) + '\n');
    writeFileSync(stamp, key);
    const model = built.tokenizer.model as { merges: string[]; vocab: object };
    opts.log?.(
      `${name}: ${Object.keys(model.vocab).length} vocab, ${model.merges.length} merges, ` +
        `${built.unreachable} without a merge, ${(performance.now() - t0).toFixed(0)} ms → ${dir}`,
    );
  }
  return dirs;
}

/** The default cache used by tests and the bench: node_modules/.cache/weft/tiktoken-tokenizers. */
export function defaultCacheDir(): string {
  return resolve(dirname(fileURLToPath(import.meta.url)), '..', 'node_modules', '.cache', 'weft', 'tiktoken-tokenizers');
}

export async function ensureTiktokenTokenizers(
  names: readonly TiktokenTokenizerName[] = TIKTOKEN_TOKENIZERS,
): Promise<Record<TiktokenTokenizerName, string>> {
  // scripts/ → repo root; from dist/scripts/ the root is one further up.
  let root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
  if (!existsSync(join(root, 'package.json'))) root = resolve(root, '..');
  return writeTiktokenTokenizers(join(root, 'node_modules', '.cache', 'weft', 'tiktoken-tokenizers'), names);
}

async function main(argv: string[]): Promise<void> {
  let out: string | undefined;
  let only: TiktokenTokenizerName[] = [...TIKTOKEN_TOKENIZERS];
  let force = false;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i];
    if (a === '--out') out = argv[++i];
    else if (a === '--only') only = (argv[++i] ?? '').split(',').filter(Boolean) as TiktokenTokenizerName[];
    else if (a === '--force') force = true;
    else if (a === '--') continue;
    else throw new Error(`unknown argument ${a}`);
  }
  if (!out) {
    console.error('usage: build-tiktoken-tokenizers --out DIR [--only gpt2,cl100k_base,o200k_base] [--force]');
    process.exit(2);
  }
  for (const n of only) {
    if (!(TIKTOKEN_TOKENIZERS as readonly string[]).includes(n)) throw new Error(`unknown tokenizer ${n}`);
  }
  await writeTiktokenTokenizers(resolve(out), only, { force, log: (m) => console.log(m) });
}

// CLI entry: `node dist/scripts/build-tiktoken-tokenizers.js ...`, or vite-node (which drops the
// script path from argv, hence the `--out` check).
const invoked = process.argv[1] ?? '';
if (/build-tiktoken-tokenizers\.(ts|js)$/.test(invoked) || (/vite-node$/.test(invoked) && process.argv.includes('--out'))) {
  main(process.argv.slice(2)).catch((err) => {
    console.error(err);
    process.exit(1);
  });
}

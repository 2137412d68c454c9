/**
 * A cheap lower bound on how many tokens a text encodes to, so that a text that cannot fit a
 * context is rejected by its byte count, before it is tokenized (tokenizing a megabyte takes over
 * a second).
 *
 * The bound holds when every byte of the input ends up in some token and no token covers more
 * than `maxTokenBytes` bytes of it: then tokens ≥ bytes / (maxTokenBytes × shrink), where `shrink`
 * is how much the normalizer can shorten a text (NFC composes up to 3 bytes into 1: Hangul jamo
 * L+V+T). That is so for BPE that is byte-level or falls back to bytes (no unknown token that
 * swallows a run of text), with normalizers and pre-tokenizers that never drop text, and added
 * tokens that do not strip neighbouring whitespace. For any other tokenizer there is no bound
 * (`null`): long texts then go to the encode worker.
 */

type Json = Record<string, unknown>;

const isObject = (v: unknown): v is Json => typeof v === 'object' && v !== null && !Array.isArray(v);

/** How much a normalizer can shorten text (bytes in / bytes out), or null when unbounded. */
function normalizerShrink(n: unknown): number | null {
  if (n === null || n === undefined) return 1;
  if (!isObject(n)) return null;
  switch (n.type) {
    case 'NFC':
    case 'NFD':
    case 'NFKC':
    case 'NFKD':
    case 'Lowercase':
      return 3;
    case 'Prepend':
      return 1;
    case 'Replace': {
      const pattern = isObject(n.pattern) ? n.pattern.String : undefined;
      if (typeof pattern !== 'string' || typeof n.content !== 'string') return null; // a regex may match any run
      return Buffer.byteLength(n.content) >= Buffer.byteLength(pattern) ? 1 : Buffer.byteLength(pattern);
    }
    case 'Sequence': {
      if (!Array.isArray(n.normalizers)) return null;
      let f = 1;
      for (const c of n.normalizers) {
        const s = normalizerShrink(c);
        if (s === null) return null;
        f *= s;
      }
      return f;
    }
    default:
      return null; // Strip, StripAccents, Precompiled, BertNormalizer, ...: they can drop text
  }
}

function preTokenizerKeepsText(p: unknown): boolean {
  if (p === null || p === undefined) return true;
  if (!isObject(p)) return false;
  switch (p.type) {
    case 'ByteLevel':
    case 'Metaspace':
    case 'Digits':
      return true;
    case 'Split':
    case 'Punctuation':
      return p.behavior !== 'Removed' && p.behavior !== 'removed';
    case 'Sequence':
      return Array.isArray(p.pretokenizers) && p.pretokenizers.every(preTokenizerKeepsText);
    default:
      return false; // Whitespace, WhitespaceSplit, BertPreTokenizer drop whitespace
  }
}

/**
 * Bytes of input text that one token can stand for at most, normalization included (the
 * divisor of the bound), or null when the tokenizer gives no such bound.
 */
export function maxInputBytesPerToken(json: Json): number | null {
  const model = json.model;
  if (!isObject(model) || (model.type !== undefined && model.type !== 'BPE')) return null;
  const byteLevel = isObject(json.decoder) && json.decoder.type === 'ByteLevel';
  if (!byteLevel && model.byte_fallback !== true) return null;
  const shrink = normalizerShrink(json.normalizer);
  if (shrink === null || !preTokenizerKeepsText(json.pre_tokenizer)) return null;
  let longest = 1;
  const vocab = model.vocab;
  if (!isObject(vocab)) return null;
  // byte-level spellings are one character per byte; other vocabularies are measured in UTF-8
  // (an overestimate for `▁` and `<0x41>` spellings, which keeps the bound true)
  for (const tok of Object.keys(vocab)) {
    const n = byteLevel ? tok.length : Buffer.byteLength(tok);
    if (n > longest) longest = n;
  }
  for (const t of Array.isArray(json.added_tokens) ? json.added_tokens : []) {
    if (!isObject(t) || typeof t.content !== 'string') continue;
    if (t.lstrip === true || t.rstrip === true) return null; // swallows any run of whitespace next to it
    longest = Math.max(longest, Buffer.byteLength(t.content));
  }
  return longest * shrink;
}

/**
 * GPT-2's reversible byte ↔ printable-character table used by byte-level BPE vocabularies
 * (bytes 0x21–0x7E, 0xA1–0xAC, 0xAE–0xFF map to themselves; the other 68 bytes map to U+0100…).
 */
let encodeTable: string[] | null = null;
let decodeTable: Map<string, number> | null = null;

export function byteToChar(): string[] {
  if (encodeTable) return encodeTable;
  const table: string[] = new Array(256);
  let extra = 0;
  for (let b = 0; b < 256; b++) {
    const printable = (b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff);
    table[b] = String.fromCharCode(printable ? b : 256 + extra++);
  }
  encodeTable = table;
  return table;
}

export function charToByte(): Map<string, number> {
  if (decodeTable) return decodeTable;
  const m = new Map<string, number>();
  byteToChar().forEach((c, b) => m.set(c, b));
  decodeTable = m;
  return m;
}

/** Bytes of a byte-level token string, or null when it holds a character outside the table. */
export function byteLevelTokenBytes(token: string): Uint8Array | null {
  const table = charToByte();
  const out = new Uint8Array(token.length);
  for (let i = 0; i < token.length; i++) {
    const b = table.get(token[i]!);
    if (b === undefined) return null;
    out[i] = b;
  }
  return out;
}

/** A JSON model that can say what JSON.stringify cannot: duplicated keys, raw number text, any key. */

/** JSON text written as is (odd numbers, deep nesting, deliberately broken JSON). */
export class Raw {
  constructor(readonly text: string) {}
}
/** An object as a list of entries: keys may repeat and may be `__proto__`. */
export class Obj {
  constructor(public entries: [string, J][] = []) {}
  set(k: string, v: J): this {
    const e = this.entries.find(([key]) => key === k);
    if (e) e[1] = v;
    else this.entries.push([k, v]);
    return this;
  }
  get(k: string): J | undefined {
    return this.entries.find(([key]) => key === k)?.[1];
  }
}
export type J = null | boolean | number | string | Raw | Obj | J[];

/** Serializes the model (strings through JSON.stringify: lone surrogates become \udxxx escapes). */
export function ser(v: J): string {
  if (v instanceof Raw) return v.text;
  if (v instanceof Obj) return '{' + v.entries.map(([k, x]) => JSON.stringify(k) + ':' + ser(x)).join(',') + '}';
  if (Array.isArray(v)) return '[' + v.map(ser).join(',') + ']';
  if (typeof v === 'number') return Number.isFinite(v) ? (Object.is(v, -0) ? '-0' : String(v)) : 'null';
  return JSON.stringify(v);
}

/** A short description of a value for a frame's log. */
export function brief(v: J): string {
  if (v instanceof Raw) return v.text.length > 40 ? `raw ${JSON.stringify(v.text.slice(0, 20))}...(${v.text.length} chars)` : `raw ${v.text}`;
  if (typeof v === 'string') return v.length > 40 ? `string ${JSON.stringify(v.slice(0, 12))}...(${v.length} chars)` : `string ${JSON.stringify(v)}`;
  const s = ser(v);
  return s.length > 60 ? s.slice(0, 40) + `...(${s.length} chars)` : s;
}

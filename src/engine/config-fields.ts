/**
 * Field readers for config.json: each names the field (with its path) in the WEFT_MODEL_FORMAT
 * error it throws.
 */
import { WeftError } from '../errors.js';

export type Json = Record<string, unknown>;

export function fmt(file: string, msg: string): WeftError {
  return new WeftError('WEFT_MODEL_FORMAT', `${file}: ${msg}`);
}

export function unsupported(file: string, msg: string): WeftError {
  return new WeftError('WEFT_UNSUPPORTED_ARCH', `${file}: ${msg}`);
}

export function describe(v: unknown): string {
  if (v === null) return 'null';
  if (Array.isArray(v)) return 'an array';
  if (typeof v === 'string') return `string ${JSON.stringify(v.length > 40 ? v.slice(0, 40) + '…' : v)}`;
  if (typeof v === 'number') return String(v);
  return typeof v;
}

export function posInt(obj: Json, key: string, file: string, prefix = ''): number {
  const v = obj[key];
  if (v === undefined) throw fmt(file, `missing required field "${prefix}${key}"`);
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v <= 0) {
    throw fmt(file, `field "${prefix}${key}" must be a positive integer, got ${describe(v)}`);
  }
  return v;
}

export function optPosInt(obj: Json, key: string, file: string, dflt: number, prefix = ''): number {
  const v = obj[key];
  if (v === undefined || v === null) return dflt;
  return posInt(obj, key, file, prefix);
}

export function posFinite(obj: Json, key: string, file: string, dflt: number | undefined, prefix = ''): number {
  const v = obj[key];
  if (v === undefined || v === null) {
    if (dflt === undefined) throw fmt(file, `missing required field "${prefix}${key}"`);
    return dflt;
  }
  if (typeof v !== 'number' || !Number.isFinite(v) || v <= 0) {
    throw fmt(file, `field "${prefix}${key}" must be a finite positive number, got ${describe(v)}`);
  }
  return v;
}

/** A positive number, or null when the field is absent or null. */
export function optPosFinite(obj: Json, key: string, file: string, prefix = ''): number | null {
  const v = obj[key];
  return v === undefined || v === null ? null : posFinite(obj, key, file, undefined, prefix);
}

export function optBool(obj: Json, key: string, file: string, dflt: boolean): boolean {
  const v = obj[key];
  if (v === undefined || v === null) return dflt;
  if (typeof v !== 'boolean') throw fmt(file, `field "${key}" must be a boolean, got ${describe(v)}`);
  return v;
}

export function tokenId(v: unknown, field: string, file: string): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw fmt(file, `field "${field}" must be a non-negative integer token id, got ${describe(v)}`);
  }
  return v;
}

/** An object field (absent or null: null). */
export function optObject(obj: Json, key: string, file: string, prefix = ''): Json | null {
  const v = obj[key];
  if (v === undefined || v === null) return null;
  if (typeof v !== 'object' || Array.isArray(v)) throw fmt(file, `field "${prefix}${key}" must be an object or null, got ${describe(v)}`);
  return v as Json;
}

/** An array of finite positive numbers of the given length. */
export function posFiniteArray(obj: Json, key: string, file: string, length: number, prefix = ''): number[] {
  const v = obj[key];
  const field = `${prefix}${key}`;
  if (!Array.isArray(v)) throw fmt(file, `field "${field}" must be an array of ${length} positive numbers, got ${describe(v)}`);
  if (v.length !== length) throw fmt(file, `field "${field}" has ${v.length} entries, expected ${length} (rotary dims / 2)`);
  v.forEach((x, i) => {
    if (typeof x !== 'number' || !Number.isFinite(x) || x <= 0) throw fmt(file, `field "${field}[${i}]" must be a finite positive number, got ${describe(x)}`);
  });
  return v as number[];
}

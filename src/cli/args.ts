/** A small, strict flag parser: `--name value`, `--flag`; unknown flags are errors. */
import { WeftError } from '../errors.js';

export type FlagSpec = Record<string, 'string' | 'number' | 'boolean' | 'list'>;
export type Flags = Record<string, string | number | boolean | number[] | undefined>;

export function parseFlags(argv: string[], spec: FlagSpec): Flags {
  const out: Flags = {};
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    if (!arg.startsWith('--')) throw new WeftError('WEFT_BAD_ARGUMENT', `unexpected argument ${arg}`);
    const [name, inline] = arg.slice(2).split(/=(.*)/s, 2) as [string, string | undefined];
    const kind = spec[name];
    if (!kind) throw new WeftError('WEFT_BAD_ARGUMENT', `unknown option --${name}`);
    if (kind === 'boolean') {
      out[name] = inline === undefined ? true : inline !== 'false';
      continue;
    }
    const value = inline ?? argv[++i];
    if (value === undefined) throw new WeftError('WEFT_BAD_ARGUMENT', `--${name} needs a value`);
    if (kind === 'string') out[name] = value;
    else if (kind === 'number') {
      const n = Number(value);
      if (value.trim() === '' || !Number.isFinite(n)) throw new WeftError('WEFT_BAD_ARGUMENT', `--${name} must be a number (got ${value})`);
      out[name] = n;
    } else {
      const list = value.split(',').map((s) => Number(s.trim()));
      if (list.some((n) => !Number.isInteger(n))) throw new WeftError('WEFT_BAD_ARGUMENT', `--${name} must be a comma-separated list of integers (got ${value})`);
      out[name] = list;
    }
  }
  return out;
}

/** A byte size: `268435456`, `256MiB`, `1.5GiB`, `512k`, `64MB` (K/M/G and KiB/MiB/GiB are powers of 1024). */
export function parseSize(value: string, name: string): number {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(b|k|kb|kib|m|mb|mib|g|gb|gib)?\s*$/i.exec(value);
  if (!m) throw new WeftError('WEFT_BAD_ARGUMENT', `${name} must be a size such as 256MiB (got ${value})`);
  const unit = (m[2] ?? 'b').toLowerCase()[0]!;
  const mult = unit === 'k' ? 1024 : unit === 'm' ? 1024 ** 2 : unit === 'g' ? 1024 ** 3 : 1;
  const n = Math.floor(Number(m[1]) * mult);
  if (n <= 0) throw new WeftError('WEFT_BAD_ARGUMENT', `${name} must be positive (got ${value})`);
  return n;
}

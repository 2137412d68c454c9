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

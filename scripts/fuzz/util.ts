/** Small helpers shared by the fuzzer's parts. */

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/** An own property (never the prototype chain's). */
export const own = (o: object, k: string) => Object.prototype.hasOwnProperty.call(o, k);

export const isPlainObject = (v: unknown): v is Record<string, unknown> => typeof v === 'object' && v !== null && !Array.isArray(v);

export function isValidUtf8(b: Buffer): boolean {
  return Buffer.from(b.toString('utf8'), 'utf8').equals(b);
}

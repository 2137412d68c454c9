// A stand-in for the part of vitest that weft's engine tests use (describe/test/each, before/after
// hooks, expect with the matchers they call), for machines where vitest and its transform
// toolchain cannot travel: the GPU machine, whose CPU (an AVX-512/AMX Xeon) runs the kernels'
// AVX-512 paths. Test files are compiled to JS first (scripts/gpu/cpu-check.sh), their `vitest`
// import resolved here. Prints one line per test and `CPU CHECK: PASS|FAIL (n passed, m failed)`.
import { isDeepStrictEqual } from 'node:util';

const root = { name: '', tests: [], suites: [], beforeAll: [], afterAll: [] };
let current = root;

function format(name, args) {
  let i = 0;
  return name.replace(/%[sdi]/g, () => String(args[i++]));
}

export function describe(name, fn) {
  const suite = { name, tests: [], suites: [], beforeAll: [], afterAll: [] };
  current.suites.push(suite);
  const parent = current;
  current = suite;
  try {
    fn();
  } finally {
    current = parent;
  }
}
describe.each = (table) => (name, fn) => {
  for (const row of table) {
    const args = Array.isArray(row) ? row : [row];
    describe(format(name, args), () => fn(...args));
  }
};
export function test(name, fn) {
  current.tests.push({ name, fn });
}
test.each = (table) => (name, fn) => {
  for (const row of table) {
    const args = Array.isArray(row) ? row : [row];
    test(format(name, args), () => fn(...args));
  }
};
test.skip = () => {};
export const it = test;
export function beforeAll(fn) {
  current.beforeAll.push(fn);
}
export function afterAll(fn) {
  current.afterAll.push(fn);
}

class Asymmetric {
  constructor(match, text) {
    this.match = match;
    this.text = text;
  }
}
function matches(actual, expected) {
  if (expected instanceof Asymmetric) return expected.match(actual);
  if (expected instanceof RegExp) return typeof actual === 'string' && expected.test(actual);
  if (expected && typeof expected === 'object') {
    if (!actual || typeof actual !== 'object') return false;
    if (Array.isArray(expected)) return Array.isArray(actual) && actual.length === expected.length && expected.every((e, i) => matches(actual[i], e));
    return Object.keys(expected).every((k) => matches(actual[k], expected[k]));
  }
  return Object.is(actual, expected) || actual === expected;
}
const show = (v) => {
  try {
    const s = JSON.stringify(v, (_, x) => (typeof x === 'bigint' ? String(x) : ArrayBuffer.isView(x) ? Array.from(x).slice(0, 8) : x));
    return s && s.length > 200 ? s.slice(0, 200) + '…' : s;
  } catch {
    return String(v);
  }
};
const plain = (v) => (ArrayBuffer.isView(v) && !(v instanceof DataView) ? Array.from(v) : v);

function matchers(actual, message, negate) {
  const check = (ok, what) => {
    if (ok === negate) throw new Error(`${message ? message + ': ' : ''}expected ${show(actual)} ${negate ? 'not ' : ''}${what}`);
  };
  return {
    toBe: (e) => check(Object.is(actual, e), `to be ${show(e)}`),
    toEqual: (e) => check(isDeepStrictEqual(plain(actual), plain(e)) || matches(actual, e), `to equal ${show(e)}`),
    toStrictEqual: (e) => check(isDeepStrictEqual(actual, e), `to strictly equal ${show(e)}`),
    toBeCloseTo: (e, digits = 2) => check(Math.abs(actual - e) < 10 ** -digits / 2, `to be close to ${e} (${digits} digits)`),
    toBeGreaterThan: (e) => check(actual > e, `to be > ${e}`),
    toBeGreaterThanOrEqual: (e) => check(actual >= e, `to be >= ${e}`),
    toBeLessThan: (e) => check(actual < e, `to be < ${e}`),
    toBeLessThanOrEqual: (e) => check(actual <= e, `to be <= ${e}`),
    toContain: (e) => check(actual != null && (typeof actual === 'string' ? actual.includes(e) : Array.from(actual).includes(e)), `to contain ${show(e)}`),
    toMatchObject: (e) => check(matches(actual, e), `to match ${show(e)}`),
    toMatch: (e) => check(typeof actual === 'string' && (e instanceof RegExp ? e.test(actual) : actual.includes(e)), `to match ${e}`),
    toHaveLength: (n) => check(actual != null && actual.length === n, `to have length ${n}`),
    toBeTruthy: () => check(Boolean(actual), 'to be truthy'),
    toBeFalsy: () => check(!actual, 'to be falsy'),
    toBeUndefined: () => check(actual === undefined, 'to be undefined'),
    toBeDefined: () => check(actual !== undefined, 'to be defined'),
    toBeNull: () => check(actual === null, 'to be null'),
    toThrow: (e) => {
      let thrown = null;
      try {
        actual();
      } catch (err) {
        thrown = err;
      }
      check(thrown !== null && (e === undefined || matches(thrown, typeof e === 'string' ? { message: new RegExp(e.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')) } : e instanceof RegExp ? { message: e } : e)), `to throw ${show(e)}`);
    },
  };
}

export function expect(actual, message) {
  const m = matchers(actual, message, false);
  m.not = matchers(actual, message, true);
  m.rejects = new Proxy({}, {
    get: (_, key) => async (...args) => {
      let err = null;
      try {
        await actual;
      } catch (e) {
        err = e;
      }
      if (err === null) throw new Error(`${message ? message + ': ' : ''}expected a rejection`);
      return matchers(err, message, false)[key](...args);
    },
  });
  return m;
}
expect.stringMatching = (re) => new Asymmetric((v) => typeof v === 'string' && re.test(v), `stringMatching(${re})`);
expect.stringContaining = (sub) => new Asymmetric((v) => typeof v === 'string' && v.includes(sub), `stringContaining(${sub})`);
expect.arrayContaining = (arr) => new Asymmetric((v) => Array.isArray(v) && arr.every((e) => v.some((x) => matches(x, e))), 'arrayContaining');
expect.objectContaining = (obj) => new Asymmetric((v) => matches(v, obj), 'objectContaining');
expect.any = (ctor) => new Asymmetric((v) => v != null && (v.constructor === ctor || v instanceof ctor), `any(${ctor.name})`);

let passed = 0;
let failed = 0;
async function run(suite, path) {
  const here = suite.name ? [...path, suite.name] : path;
  for (const fn of suite.beforeAll) await fn();
  for (const t of suite.tests) {
    const name = [...here, t.name].join(' > ');
    try {
      await t.fn();
      passed++;
      console.log(`ok   ${name}`);
    } catch (e) {
      failed++;
      console.log(`FAIL ${name}: ${e?.stack ?? e}`);
    }
  }
  for (const s of suite.suites) await run(s, here);
  for (const fn of suite.afterAll) await fn();
}

/** Imports each test file (registering its tests), runs them in order, prints the verdict. */
export async function main(files) {
  for (const f of files) {
    const before = root.suites.length + root.tests.length;
    await import(f);
    if (root.suites.length + root.tests.length === before) console.log(`note ${f} registered no tests`);
  }
  await run(root, []);
  console.log(`CPU CHECK: ${failed === 0 && passed > 0 ? 'PASS' : 'FAIL'} (${passed} passed, ${failed} failed)`);
  process.exitCode = failed === 0 && passed > 0 ? 0 : 1;
}

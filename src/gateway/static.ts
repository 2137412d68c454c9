/**
 * The chat page's files (`GET /`): `public/*` at `/` and `/<file>`, and the client SDK's browser
 * build (`dist/src/client/*.js`) under `/client/`. Everything is read into memory once, at
 * startup, from a fixed list of names made then: a request path is only ever looked up in that
 * map, never joined onto a directory, so no spelling of a path (`..`, `%2e`, `//`, `\`) reaches the
 * disk. Files added to those directories after startup are not served.
 */
import { existsSync, lstatSync, readdirSync, readFileSync } from 'node:fs';
import { dirname, extname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

export interface StaticResponse {
  status: number;
  type: string;
  body: string;
  headers: Record<string, string>;
}

/** What the page may load: its own origin only, plus WebSockets (the gateway's, over ws: or wss:). */
export const PAGE_CSP = "default-src 'self'; connect-src 'self' ws: wss:";

const TYPES: Record<string, string> = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.svg': 'image/svg+xml; charset=utf-8',
  '.txt': 'text/plain; charset=utf-8',
};

/** A file name that is served: plain characters, no leading dot, a known extension. */
const SERVABLE = /^[A-Za-z0-9][A-Za-z0-9_-]*(\.[A-Za-z0-9_-]+)*$/;

/** The package root: the nearest directory above this module that holds a package.json (src/ and dist/src/ alike). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) return process.cwd();
    dir = up;
  }
}

export interface StaticDirs {
  /** The page's files (default: `public/` of the package). */
  publicDir?: string;
  /** The SDK's compiled browser build (default: `dist/src/client/` of the package). */
  clientDir?: string;
}

export class StaticFiles {
  private readonly files = new Map<string, StaticResponse>();
  /** What could not be read at startup (a directory that is missing: run `npm run build:ts` for the SDK). */
  readonly missing: string[] = [];

  constructor(dirs: StaticDirs = {}) {
    const root = packageRoot();
    const publicDir = dirs.publicDir ?? join(root, 'public');
    const clientDir = dirs.clientDir ?? join(root, 'dist', 'src', 'client');
    for (const name of this.list(publicDir, Object.keys(TYPES))) this.add(`/${name}`, join(publicDir, name));
    for (const name of this.list(clientDir, ['.js'])) this.add(`/client/${name}`, join(clientDir, name));
    const index = this.files.get('/index.html');
    if (index) this.files.set('/', index);
  }

  /** Regular files of `dir` (not links) with a servable name and one of `exts` (none when the directory is missing). */
  private list(dir: string, exts: string[]): string[] {
    let names: string[];
    try {
      names = readdirSync(dir);
    } catch {
      this.missing.push(dir);
      return [];
    }
    return names.filter((n) => SERVABLE.test(n) && exts.includes(extname(n)) && lstatSync(join(dir, n)).isFile()).sort();
  }

  private add(path: string, file: string): void {
    const type = TYPES[extname(file)]!;
    const headers: Record<string, string> = { 'x-content-type-options': 'nosniff', 'cache-control': 'no-cache' };
    if (type.startsWith('text/html')) headers['content-security-policy'] = PAGE_CSP;
    this.files.set(path, { status: 200, type, body: readFileSync(file, 'utf8'), headers });
  }

  /** The paths served (for tests and logs). */
  get paths(): string[] {
    return [...this.files.keys()];
  }

  /** The file at this request path (compared as sent), or undefined. */
  get(path: string): StaticResponse | undefined {
    return this.files.get(path);
  }
}

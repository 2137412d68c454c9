// After `npm install`: in a checkout (src/ is there), compile the TypeScript; an installed package
// ships dist/ already and has nothing to compile.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';

if (existsSync('src') && existsSync('tsconfig.json')) {
  const tsc = createRequire(import.meta.url).resolve('typescript/bin/tsc');
  execFileSync(process.execPath, [tsc, '-p', 'tsconfig.json'], { stdio: 'inherit' });
}

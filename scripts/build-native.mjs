// Builds the native addon with cmake-js during `npm install` (offline: headers come from
// node-api-headers because package.json declares binary.napi_versions).
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
if (!existsSync('native/CMakeLists.txt')) process.exit(0);
const cmakeJs = 'node_modules/cmake-js/bin/cmake-js';
execFileSync(process.execPath, [cmakeJs, 'compile', '--directory', 'native', '--out', 'native/build', '--config', 'Release'], { stdio: 'inherit' });

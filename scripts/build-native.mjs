// Builds the native addon with cmake-js during `npm install` (offline: headers come from
// node-api-headers because package.json declares binary.napi_versions).
//
// The CUDA backend is built when the CUDA toolkit (nvcc) and a GPU are found, or when WEFT_CUDA=1
// (WEFT_CUDA=0 turns it off). Architectures: WEFT_CUDA_ARCH (e.g. "90" or "80;90"); by default the
// GPU's own ("native"), or 90 (H100) when forced without a visible GPU.
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { createRequire } from 'node:module';
import { join } from 'node:path';

if (!existsSync('native/CMakeLists.txt')) process.exit(0);

function findNvcc() {
  const dirs = [process.env.CUDA_HOME, process.env.CUDA_PATH, '/usr/local/cuda'].filter(Boolean).map((d) => join(d, 'bin'));
  dirs.push(...(process.env.PATH ?? '').split(':'));
  for (const d of dirs) if (d && existsSync(join(d, 'nvcc'))) return join(d, 'nvcc');
  return null;
}

function gpuPresent() {
  if (existsSync('/dev/nvidia0')) return true;
  try {
    return execFileSync('nvidia-smi', ['-L'], { stdio: ['ignore', 'pipe', 'ignore'] }).toString().includes('GPU');
  } catch {
    return false;
  }
}

const flag = process.env.WEFT_CUDA;
const nvcc = findNvcc();
const gpu = gpuPresent();
const cuda = flag === '1' || (flag !== '0' && nvcc !== null && gpu);
const args = ['compile', '--directory', 'native', '--out', 'native/build', '--config', 'Release'];
if (cuda) {
  if (!nvcc) throw new Error('WEFT_CUDA=1 but nvcc was not found (set CUDA_HOME)');
  const arch = process.env.WEFT_CUDA_ARCH ?? (gpu ? 'native' : '90');
  args.push('--CDWEFT_CUDA=ON', `--CDCMAKE_CUDA_COMPILER=${nvcc}`, `--CDCMAKE_CUDA_ARCHITECTURES=${arch}`);
  console.log(`weft: building the CUDA backend (nvcc ${nvcc}, architectures ${arch})`);
} else {
  console.log(`weft: building the CPU backend only (${nvcc ? 'no GPU found' : 'no CUDA toolkit found'}; WEFT_CUDA=1 forces CUDA)`);
}
// cmake-js is a dependency: next to this package in a checkout, hoisted above it when installed
const cmakeJs = createRequire(import.meta.url).resolve('cmake-js/bin/cmake-js');
execFileSync(process.execPath, [cmakeJs, ...args], { stdio: 'inherit' });

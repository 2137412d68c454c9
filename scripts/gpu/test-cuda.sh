#!/usr/bin/env bash
# `npm run test:cuda` (on a machine with a GPU and the CUDA toolkit): builds the addon with the
# CUDA backend, runs the CUDA correctness suite (scripts/gpu/cuda-check.ts: one verdict line),
# then compute-sanitizer memcheck and racecheck over its quick subset. Exit status 0 only when
# all three pass. Plain CMake, so it also works where npm is absent (the GPU machine):
#   NODE_API_HEADERS_DIR / NODE_ADDON_API_DIR point at the headers (default: node_modules).
set -uo pipefail
cd "$(dirname "$0")/../.."
hdr=${NODE_API_HEADERS_DIR:-$PWD/node_modules/node-api-headers/include}
addon=${NODE_ADDON_API_DIR:-$PWD/node_modules/node-addon-api}
nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
cmake -S native -B native/build-cuda -DCMAKE_BUILD_TYPE=Release -DWEFT_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
  -DCMAKE_CUDA_ARCHITECTURES="${WEFT_CUDA_ARCH:-90}" -DNODE_API_HEADERS_DIR="$hdr" -DNODE_ADDON_API_DIR="$addon" >/dev/null || exit 1
cmake --build native/build-cuda -j "$(nproc)" 2>&1 | grep -E "error|warning|Built target" || true
[ -f native/build-cuda/weft_native.node ] || { echo "CUDA CHECK: FAIL (build)"; exit 1; }
mkdir -p native/build/Release && cp native/build-cuda/weft_native.node native/build/Release/weft_native.node
[ -f dist/scripts/gpu/cuda-check.js ] || npx tsc -p tsconfig.json

node dist/scripts/gpu/cuda-check.js
suite=$?
sanitizer=$(command -v compute-sanitizer || echo /usr/local/cuda/bin/compute-sanitizer)
san=0
for tool in memcheck racecheck; do
  # no watchdog under the sanitizer (it slows kernels by orders of magnitude)
  out=$(WEFT_CUDA_WATCHDOG_MS=0 "$sanitizer" --tool "$tool" --error-exitcode 9 node dist/scripts/gpu/cuda-check.js --quick 2>&1)
  rc=$?
  summary=$(printf '%s\n' "$out" | grep -E "ERROR SUMMARY|RACECHECK SUMMARY|LEAK SUMMARY" | tail -2 | tr '\n' ' ')
  verdict=$(printf '%s\n' "$out" | grep "CUDA CHECK" | tail -1)
  echo "compute-sanitizer $tool: exit $rc; $summary; $verdict"
  [ $rc -eq 0 ] || { san=1; printf "%s\n" "$out" | grep -v "^ok " | grep -v "Host Frame" | head -30; }
done
if [ $suite -eq 0 ] && [ $san -eq 0 ]; then echo "TEST:CUDA VERDICT: PASS"; else echo "TEST:CUDA VERDICT: FAIL (suite $suite, sanitizer $san)"; exit 1; fi

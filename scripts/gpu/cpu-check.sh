#!/usr/bin/env bash
# The engine's CPU tests on another machine's CPU (the GPU machine's Xeon runs the AVX-512, VNNI
# paths this project's CI machines lack), without npm or vitest there.
#
#   here:  bash scripts/gpu/cpu-check.sh pack     compiles the test files to .dev/cpu-tests (tsc) and
#                                                 copies the runtime packages to .dev/nm
#   there: bash scripts/gpu/cpu-check.sh run      builds the addon with -march=native (plain CMake),
#                                                 runs the tests with scripts/gpu/vitest-lite.mjs
# Carry .devnode, .dev and dist; begin the device command with `source .devnode/activate;`.
set -uo pipefail
cd "$(dirname "$0")/../.."
TESTS="test/quant.test.ts test/engine-invariance.test.ts test/engine-reference.test.ts test/engine-hf.test.ts"
case "${1:-}" in
pack)
  rm -rf .dev/cpu-tests .dev/nm && mkdir -p .dev/nm
  npx tsc --outDir .dev/cpu-tests --rootDir . --module nodenext --moduleResolution nodenext --target es2022 --skipLibCheck \
    --esModuleInterop --resolveJsonModule --types node $TESTS || exit 1
  for p in node-addon-api node-api-headers @huggingface/tokenizers @huggingface/jinja; do
    mkdir -p ".dev/nm/$(dirname "$p")" && cp -r "node_modules/$p" ".dev/nm/$p"
  done
  mkdir -p .dev/cpu-tests/node_modules/vitest
  cp scripts/gpu/vitest-lite.mjs .dev/cpu-tests/node_modules/vitest/index.mjs
  echo '{"name": "vitest", "type": "module", "exports": "./index.mjs"}' > .dev/cpu-tests/node_modules/vitest/package.json
  du -sh .dev ;;
run)
  [ -d node_modules ] || cp -r .dev/nm node_modules
  cmake -S native -B native/build-cpu -DCMAKE_BUILD_TYPE=Release -DNODE_API_HEADERS_DIR="$PWD/node_modules/node-api-headers/include" \
    -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" >/dev/null || exit 1
  cmake --build native/build-cpu -j "$(nproc)" 2>&1 | grep -E "error|warning" || true
  [ -f native/build-cpu/weft_native.node ] || { echo "CPU CHECK: FAIL (build)"; exit 1; }
  mkdir -p native/build/Release && cp native/build-cpu/weft_native.node native/build/Release/weft_native.node
  ln -sfn "$PWD/test/fixtures" .dev/cpu-tests/test/fixtures
  files=""
  for t in $TESTS; do files="$files,'$PWD/.dev/cpu-tests/${t%.ts}.js'"; done
  node --input-type=module -e "import { main } from '$PWD/.dev/cpu-tests/node_modules/vitest/index.mjs'; await main([${files#,}]);" ;;
*) echo "usage: $0 pack|run"; exit 2 ;;
esac

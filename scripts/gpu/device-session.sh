#!/usr/bin/env bash
# Batches of GPU-machine work for one call each (the device lease is short): carry .devnode, .dev,
# dist and training/data; begin with `source .devnode/activate;`.
#   check   FP8 checkpoint fixtures (torch/transformers), then test:cuda (build, suite, sanitizer)
#   bench   npm run bench:engine -- --backend cuda (ARGS passed on), after the build
#   gateway npm run bench:gateway -- --backend cuda (ARGS), then bench:fp8 (FP8 quality)
# Logs and JSON go to $OUT.
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/weft-out}
mkdir -p "$OUT"
[ -d node_modules ] || cp -r .dev/gw-nm node_modules
stage=${1:-check}
shift || true
echo "== $(date -u +%FT%TZ) stage $stage on $(nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version --format=csv,noheader); CPU $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2)"
build() {
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  cmake -S native -B native/build-cuda -DCMAKE_BUILD_TYPE=Release -DWEFT_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DCMAKE_CUDA_ARCHITECTURES="${WEFT_CUDA_ARCH:-90}" -DNODE_API_HEADERS_DIR="$PWD/node_modules/node-api-headers/include" \
    -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" >/dev/null || exit 1
  cmake --build native/build-cuda -j "$(nproc)" 2>&1 | grep -E "error|warning" | head -30
  [ -f native/build-cuda/weft_native.node ] || { echo "BUILD FAILED"; exit 1; }
  mkdir -p native/build/Release && cp native/build-cuda/weft_native.node native/build/Release/weft_native.node
}
case "$stage" in
check)
  t0=$SECONDS
  mkdir -p "$OUT/fx"
  python3 scripts/gpu/fp8_fixtures.py --out test/fixtures/hf > "$OUT/fp8_fixtures.log" 2>&1 && tar -cf "$OUT/fp8-fixtures.tar" test/fixtures/hf/fp8_* test/fixtures/hf/manifest.json
  tail -5 "$OUT/fp8_fixtures.log"
  echo "== fixtures $((SECONDS - t0)) s"
  bash scripts/gpu/test-cuda.sh > "$OUT/test-cuda.log" 2>&1
  echo "== test:cuda exit $? after $((SECONDS - t0)) s"
  grep -v "^ok " "$OUT/test-cuda.log" | tail -40
  grep "^ok " "$OUT/test-cuda.log" | cut -c1-220 ;;
bench)
  build
  node dist/bench/engine-cuda.js --backend cuda "$@" > "$OUT/bench-engine.md" 2> "$OUT/bench-engine.err"
  echo "== bench exit $?"
  tail -25 "$OUT/bench-engine.err"
  cat "$OUT/bench-engine.md" | cut -c1-400 | grep -v '^{' ;;
gateway)
  build
  node dist/bench/gateway.js --backend cuda "$@" --out "$OUT/gateway-cuda.json" > "$OUT/gateway.log" 2>&1
  echo "== gateway exit $?"
  tail -40 "$OUT/gateway.log" | cut -c1-300 ;;
quality)
  build
  node dist/bench/fp8-quality.js > "$OUT/fp8-quality.md" 2> "$OUT/fp8-quality.err"
  echo "== fp8-quality exit $?"
  tail -10 "$OUT/fp8-quality.err"; grep -v '^{' "$OUT/fp8-quality.md" | cut -c1-300 ;;
*) echo "usage: $0 check|bench|gateway|quality [args]"; exit 2 ;;
esac

#!/usr/bin/env bash
# `npm run bench:gateway -- --backend cuda` on the GPU machine, which has no npm and no network:
#
#   here:  bash scripts/gpu/gateway-pack.sh pack    copies the runtime npm packages of the gateway
#                                                   bench (and the addon's headers) to .dev/gw-nm:
#                                                   the roots below and their dependencies, the uWS
#                                                   package with only its linux-x64 binary for this
#                                                   Node's ABI; prints the size
#          bash scripts/gpu/gateway-pack.sh verify  runs the CPU bench briefly in a copy of the repo
#                                                   whose node_modules is .dev/gw-nm alone
#   there: bash scripts/gpu/gateway-pack.sh run [bench flags]
#                                                   restores node_modules, builds the CUDA addon
#                                                   (plain CMake, as scripts/gpu/test-cuda.sh does;
#                                                   incremental), runs the bench with --backend cuda,
#                                                   writes its JSON to $OUT/gateway-cuda.json and
#                                                   prints a short table at the end
# Carry .devnode, .dev/gw-nm and dist (npx tsc -p tsconfig.json first); begin the device command
# with `source .devnode/activate;` (bash ../shared/device/pack-node.sh makes .devnode).
set -uo pipefail
cd "$(dirname "$0")/../.."
ROOTS="ws @trufflesuite/uws-js-unofficial @huggingface/tokenizers @huggingface/jinja prom-client ioredis node-addon-api node-api-headers"
NM=.dev/gw-nm
UWS=@trufflesuite/uws-js-unofficial
case "${1:-}" in
pack)
  rm -rf "$NM" && mkdir -p "$NM"
  # the roots and their dependencies (the flat node_modules npm installed), optional ones left out
  pkgs=$(node -e '
    const fs = require("fs"), seen = new Set(), todo = process.argv.slice(1);
    while (todo.length) {
      const p = todo.pop();
      if (seen.has(p) || !fs.existsSync(`node_modules/${p}/package.json`)) continue;
      seen.add(p);
      if (p === "'"$UWS"'") continue; // its ws is for the fallback only
      todo.push(...Object.keys(JSON.parse(fs.readFileSync(`node_modules/${p}/package.json`)).dependencies ?? {}));
    }
    console.log([...seen].join(" "));' $ROOTS) || exit 1
  for p in $pkgs; do
    [ "$p" = "$UWS" ] && continue
    mkdir -p "$NM/$(dirname "$p")" && cp -r "node_modules/$p" "$NM/$p"
  done
  bin="uws_linux_x64_$(node -p process.versions.modules).node"
  mkdir -p "$NM/$UWS/src" "$NM/$UWS/binaries"
  cp "node_modules/$UWS/package.json" "node_modules/$UWS/LICENSE" "$NM/$UWS/"
  cp "node_modules/$UWS/src/uws.js" "$NM/$UWS/src/"
  cp "node_modules/$UWS/binaries/$bin" "$NM/$UWS/binaries/" || exit 1
  echo "packed: $pkgs"
  du -sh "$NM" ;;
verify)
  tmp=$(mktemp -d)
  git ls-files -z | tar --null -T - -cf - | tar -xf - -C "$tmp"
  cp -r dist "$tmp/dist" && mkdir -p "$tmp/native/build/Release" && cp native/build/Release/weft_native.node "$tmp/native/build/Release/"
  cp -r "$NM" "$tmp/node_modules"
  (cd "$tmp" && node dist/bench/gateway.js --backend cpu --sessions 1,4 --gen-tokens 8 --repeats 1 --threads 1 "${@:2}" | tail -12)
  rc=$?
  rm -rf "$tmp"
  echo "verify: exit $rc"
  exit $rc ;;
run)
  [ -d node_modules ] || cp -r "$NM" node_modules
  nvcc=$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)
  cmake -S native -B native/build-cuda -DCMAKE_BUILD_TYPE=Release -DWEFT_CUDA=ON -DCMAKE_CUDA_COMPILER="$nvcc" \
    -DCMAKE_CUDA_ARCHITECTURES="${WEFT_CUDA_ARCH:-90}" -DNODE_API_HEADERS_DIR="$PWD/node_modules/node-api-headers/include" \
    -DNODE_ADDON_API_DIR="$PWD/node_modules/node-addon-api" >/dev/null || exit 1
  cmake --build native/build-cuda -j "$(nproc)" 2>&1 | grep -E "error|Built target" || true
  [ -f native/build-cuda/weft_native.node ] || { echo "GATEWAY BENCH: FAIL (addon build)"; exit 1; }
  mkdir -p native/build/Release && cp native/build-cuda/weft_native.node native/build/Release/weft_native.node
  json="${OUT:-/tmp}/gateway-cuda.json"
  node dist/bench/gateway.js --backend cuda "${@:2}" --out "$json" || { echo "GATEWAY BENCH: FAIL (exit $?)"; exit 1; }
  node dist/bench/gateway-summary.js "$json" ;;
*) echo "usage: $0 pack|verify|run [bench flags]"; exit 2 ;;
esac

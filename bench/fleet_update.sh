#!/usr/bin/env bash
# Fleet update benchmark (issue 11, model delivery): DEVICES simulated devices, which download and
# verify for real, update a ~5 MB detector, then a head-only fine-tune of it by delta, against a
# real `outpost server` (release build, SQLite) on this machine; then one real `outpost agent`
# takes the same two versions. Prints, each next to its goal or reference: the time until every
# device is active, the server's egress with the delta vs the whole package (goal ≤ 5 %), server
# CPU seconds and peak RSS per phase, what the simulated devices counted, and the agent's RSS
# while serving v1 vs while applying the v2 delta (goal ≤ serving + 2 MB).
#
# The model is made by crates/outpost-train/examples/bench_detector.rs (fixed seed, no download)
# and packed with `outpost model pack`; the driver is bench/fleet_update.py (python3, stdlib only).
#
# usage: bench/fleet_update.sh [--quick]
#   DEVICES (default 1000; --quick: 50), INTERVAL (heartbeat, s, default 10)
# Output: a markdown table on stdout, also written to target/bench/fleet_update.md.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
if [ "${1:-}" = "--quick" ]; then
  export DEVICES=${DEVICES:-50}
fi
WORK=target/fleet-update
mkdir -p "$WORK" target/bench

# The executable cargo built, from its JSON messages (a shared target directory may hold another
# build's binary at the usual path by the time we run it, so it is copied aside at once).
built() {
  python3 -c 'import json,sys
for line in sys.stdin:
    m = json.loads(line)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == sys.argv[1]:
        path = m["executable"]
print(path)' "$1"
}
BIN=target/bench/outpost-fleet-update
cp "$(cargo build --release --locked -p outpost --message-format=json | built outpost)" "$BIN"
MAKER=$(cargo build --release --locked -p outpost-train --example bench_detector --message-format=json | built bench_detector)

"$MAKER" "$WORK/models" >/dev/null
for v in 1 2; do
  "$BIN" model pack "$WORK/models/v$v.onnx" --name det --version "$v" --task detection --backend tract \
    --selftest-cases 1 -o "$WORK/det-$v.opkg" >"$WORK/pack-$v.log" 2>&1
done
python3 bench/fleet_update.py "$PWD/$BIN" "$PWD/$WORK" | tee target/bench/fleet_update.md

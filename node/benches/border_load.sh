#!/usr/bin/env bash
# Border sets between two neighbour regions on a loaded machine: two
# groups of one (`metatopia group init --regions 2 --members 1`) on
# loopback, three headless Chromiums drawing each node's viewer and six
# busy loops beside them. Every 12 s prints, for each node, its tick, its
# engine view, the border sets it got from the other region (included in
# time, late, missed) and its mean tick time (ms). docs/performance.md
# ("border sets between two loaded groups of one") has the numbers.
#
#   node/benches/border_load.sh [SECONDS] [PORT]     # default 84 s, ports 23600..23621
#   BIN=target/release/metatopia node/benches/border_load.sh
#
# Needs chromium (.ci/run installs it) and curl; builds nothing: BIN
# (default target/debug/metatopia) must exist. Leaves the data directories
# and the nodes' logs (RUST_LOG debug for the replica and the engine) in
# a temporary directory it prints.
set -euo pipefail
cd "$(dirname "$0")/../.."
bin=${BIN:-target/debug/metatopia}
secs=${1:-84}
port=${2:-23600}
dir=$(mktemp -d)
echo "data and logs in $dir"
"$bin" group init --dir "$dir" --regions 2 --members 1 --port "$port" > "$dir/init.log"
export RUST_LOG=${RUST_LOG:-info,metatopia_node=debug,commonware_consensus=debug}
pids=()
cleanup() { kill "${pids[@]}" 2> /dev/null || true; }
trap cleanup EXIT
"$bin" up --data "$dir/r0/m0" --http "127.0.0.1:$((port + 20))" > "$dir/west.log" 2>&1 &
pids+=($!)
sleep 3
"$bin" up --data "$dir/r1/m0" --http "127.0.0.1:$((port + 21))" > "$dir/east.log" 2>&1 &
pids+=($!)
sleep 3
west_token=$(grep -ao 'token=[0-9a-f]*' "$dir/west.log" | head -1)
east_token=$(grep -ao 'token=[0-9a-f]*' "$dir/east.log" | head -1)
for _ in 1 2 3; do
  for url in "http://127.0.0.1:$((port + 20))/#$west_token" "http://127.0.0.1:$((port + 21))/#$east_token"; do
    timeout $((secs + 10)) chromium --headless --no-sandbox --use-angle=swiftshader \
      --enable-unsafe-swiftshader --ignore-gpu-blocklist --disable-background-timer-throttling \
      --disable-renderer-backgrounding --window-size=1280,800 --user-data-dir="$(mktemp -d)" \
      --remote-debugging-port=0 "$url" > /dev/null 2>&1 &
    pids+=($!)
  done
done
for _ in 1 2 3 4 5 6; do
  timeout $((secs + 5)) sh -c 'while :; do :; done' &
  pids+=($!)
done
for _ in $(seq 1 $((secs / 12))); do
  sleep 12
  for p in $((port + 20)) $((port + 21)); do
    curl -s -m 5 "127.0.0.1:$p/api/status" | python3 -c "
import json, sys
s = json.load(sys.stdin)
n = s['border']['neighbours'][0]
print(f\"127.0.0.1:$p tick {s['tick']} view {s['group']['view']} sets from region {n['region']}: {n['sets']} tick_ms_mean {round(s['health']['tick_ms_mean'])}\")"
  done
done
uptime

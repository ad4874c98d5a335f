#!/usr/bin/env bash
# Asset GETs per second on loopback: the node's `GET /assets/{hash}` (the
# 200 path and the 304 path) beside `python3 -m http.server` serving the
# same file (200, and 304 on If-Modified-Since), measured with oha.
#
#   node/benches/assets_http.sh            # 64 KiB file, 16 connections, 3 runs of 4 s
#   SIZE=1048576 RUNS=5 node/benches/assets_http.sh
#
# Installs oha (cargo install --locked) under the target dir when missing
# and builds the release binary. Prints one line per run and the median
# requests/s of each case; docs/performance.md ("Assets") has the numbers.
set -euo pipefail
cd "$(dirname "$0")/../.."
target=${CARGO_TARGET_DIR:-$PWD/target}
tools="$target/tools"
size=${SIZE:-65536}
conns=${CONNECTIONS:-16}
secs=${SECONDS_PER_RUN:-4}
runs=${RUNS:-3}

if [ ! -x "$tools/bin/oha" ]; then
  echo "assets_http: installing oha into $tools" >&2
  cargo install oha --locked --root "$tools" >&2
fi
oha="$tools/bin/oha"
cargo build --release -p metatopia-node --bin metatopia >&2
bin="$target/release/metatopia"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p "$work/files" "$work/data"
head -c "$size" /dev/urandom > "$work/files/asset.bin"

# The node.
"$bin" up --http 127.0.0.1:0 --data "$work/data" > "$work/node.out" 2> "$work/node.err" &
pids+=($!)
for _ in $(seq 200); do
  grep -q "listening on" "$work/node.out" 2>/dev/null && break
  sleep 0.1
done
node=$(sed -n 's/^metatopia: listening on //p' "$work/node.out")
[ -n "$node" ] || { cat "$work/node.err" >&2; echo "the node did not start" >&2; exit 1; }
token=$(cat "$work/data/token")
hash=$(curl -sf -X PUT -H "Authorization: Bearer $token" --data-binary @"$work/files/asset.bin" \
  "$node/api/assets" | python3 -c 'import json,sys; print(json.load(sys.stdin)["hash"])')

# The plain static file server, on a free port.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
(cd "$work/files" && exec python3 -m http.server "$port" --bind 127.0.0.1) > /dev/null 2>&1 &
pids+=($!)
for _ in $(seq 100); do
  curl -sf -o /dev/null "http://127.0.0.1:$port/asset.bin" && break
  sleep 0.1
done
static="http://127.0.0.1:$port/asset.bin"
modified=$(curl -sfI "$static" | sed -n 's/^Last-Modified: //Ip' | tr -d '\r')

# nginx (Debian's, when installed: `apt-get install nginx`) on the same
# file, with the ETag and 304 it gives by default; 2 workers, like the
# node's 2 tokio workers.
nginx_url=""
if command -v nginx >/dev/null 2>&1; then
  nport=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  mkdir -p "$work/nginx"
  # nginx's workers run as another user: let them read the file.
  chmod 755 "$work" "$work/files"
  chmod 644 "$work/files/asset.bin"
  cat > "$work/nginx/nginx.conf" <<CONF
worker_processes 2;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log;
events { worker_connections 1024; }
http {
  access_log off;
  client_body_temp_path $work/nginx;
  proxy_temp_path $work/nginx;
  fastcgi_temp_path $work/nginx;
  uwsgi_temp_path $work/nginx;
  scgi_temp_path $work/nginx;
  server { listen 127.0.0.1:$nport; root $work/files; }
}
CONF
  nginx -c "$work/nginx/nginx.conf" -g 'daemon off;' &
  pids+=($!)
  for _ in $(seq 100); do
    curl -sf -o /dev/null "http://127.0.0.1:$nport/asset.bin" && break
    sleep 0.1
  done
  nginx_url="http://127.0.0.1:$nport/asset.bin"
  nginx_etag=$(curl -sfI "$nginx_url" | sed -n 's/^ETag: //Ip' | tr -d '\r')
fi

# Both answer what we expect before we count.
curl -sf "$node/assets/$hash" | cmp - "$work/files/asset.bin"
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: \"$hash\"" "$node/assets/$hash")" = 304 ]
[ "$(curl -s -o /dev/null -w '%{http_code}' -H "If-Modified-Since: $modified" "$static")" = 304 ]

rps() { # url [header]
  local args=(-z "${secs}s" -c "$conns" --no-tui --output-format json)
  [ $# -gt 1 ] && args+=(-H "$2")
  "$oha" "${args[@]}" "$1" | python3 -c '
import json, sys
s = json.load(sys.stdin)
codes = json.dumps(s.get("statusCodeDistribution", {}), separators=(",", ":"))
print("%.0f %s" % (s["summary"]["requestsPerSec"], codes))'
}

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

declare -A result
bench() { # name url [header]
  local name=$1; shift
  local values=()
  for i in $(seq "$runs"); do
    local line
    line=$(rps "$@")
    echo "$name run $i: $line req/s" >&2
    values+=("${line%% *}")
  done
  result[$name]=$(printf '%s\n' "${values[@]}" | median)
}

bench node_200 "$node/assets/$hash"
bench static_200 "$static"
bench node_304 "$node/assets/$hash" "If-None-Match: \"$hash\""
bench static_304 "$static" "If-Modified-Since: $modified"
if [ -n "$nginx_url" ]; then
  [ "$(curl -s -o /dev/null -w '%{http_code}' -H "If-None-Match: $nginx_etag" "$nginx_url")" = 304 ]
  bench nginx_200 "$nginx_url"
  bench nginx_304 "$nginx_url" "If-None-Match: $nginx_etag"
fi

echo "file ${size} bytes, ${conns} connections, ${runs} runs of ${secs} s, median requests/s:"
for path in 200 304; do
  n=${result[node_$path]}; s=${result[static_$path]}
  ratio=$(python3 -c "print(f'{$n/$s:.1f}')")
  echo "  $path: node $n, python3 -m http.server $s, ratio ${ratio}x"
  if [ -n "$nginx_url" ]; then
    g=${result[nginx_$path]}
    echo "  $path: node $n, nginx $g, ratio $(python3 -c "print(f'{$n/$g:.2f}')")x"
  fi
done

#!/usr/bin/env bash
# CPU seconds per GB delivered: mlcache-relay fanning out a live stream of
# 64 KiB chunks (every 500 ms) to N viewers, against a plain nginx serving
# 64 KiB files from the page cache with sendfile to N connections at the same
# rate, in the same run (issue 10, item 4). Goal: relay / nginx ≤ 1.0.
#
#   benches/efficiency.sh [VIEWERS] [SECONDS]   # default 1000 20
#
# The relay's viewers are `mlcache-loadgen live` (HTTP/1.1, one connection
# each, long-polling the next chunk at the live edge); its origin is
# mlcache-origin with whole plaintext chunks. nginx's viewers are h2load
# (HTTP/1.1, one connection each, --rps 2: one 64 KiB file every 500 ms per
# connection) cycling over 120 files of 64 KiB in a directory that nginx
# serves (benches/compare/static-nginx.conf: sendfile on, tcp_nopush on,
# access_log off, one worker). Both loads run at once; after a 5 s warm-up
# the script samples, over SECONDS, each server's CPU time (utime + stime
# from /proc/PID/stat; nginx's master and worker summed) and its body bytes
# (the relay's mlcache_bytes_out_total; nginx's requests from stub_status ×
# 65,536), and prints CPU s/GB for both and their ratio.
#
# PIN=0 turns pinning off (default: relay and nginx on CPU 1, origin and
# clients on CPU 0); BUILD=0 skips `cargo build --release`; RELAY_BIN runs
# another relay binary (a before/after comparison). Installs nginx
# and h2load (nghttp2-client) when missing. Loopback only, bounded in time,
# every process started here is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
VIEWERS=${1:-1000}
SECS=${2:-20}
WARM=5
NGINX_PORT=${NGINX_PORT:-18904}
BIN=target/release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mlcache-efficiency.XXXXXX")
PIDS=()
# nginx's workers run as nobody when started by root: they must reach $WORK.
chmod 755 "$WORK"
. benches/compare/lib.sh
trap 'stop_all; rm -rf "$WORK"' EXIT

install_missing nginx:nginx h2load:nghttp2-client curl:curl
PATH=$PATH:/usr/sbin
build_release
setup_pinning
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
HZ=$(getconf CLK_TCK)

# The live path: origin → relay.
"${PIN_LOAD[@]}" $BIN/mlcache-origin --listen 127.0.0.1:0 --publish whole --plaintext \
    >"$WORK/origin.out" 2>"$WORK/origin.err" &
PIDS+=($!)
O=$(addr origin listening)
"${PIN_CACHE[@]}" "${RELAY_BIN:-$BIN/mlcache-relay}" --listen 127.0.0.1:0 --admin 127.0.0.1:0 \
    --allow-origin "http://$O" >"$WORK/relay.out" 2>"$WORK/relay.err" &
RELAY_PID=$!
PIDS+=($RELAY_PID)
RELAY=$(addr relay listening)
ADMIN=$(addr relay admin)
CHUNK=$(curl -s "http://$O/live/0" | sed -n 's/.*"chunk_size": *\([0-9]*\).*/\1/p')
CHUNK=${CHUNK:-65536}

# The static side: 120 files of one chunk's size (a minute of stream),
# read once so they sit in the page cache.
mkdir -p "$WORK/www/live/0" "$WORK/nginx"
chmod 777 "$WORK/nginx"
for i in $(seq 0 119); do
    head -c "$CHUNK" /dev/urandom >"$WORK/www/live/0/$i"
    echo "http://127.0.0.1:$NGINX_PORT/live/0/$i"
done >"$WORK/urls.txt"
cat "$WORK"/www/live/0/* >/dev/null
sed -e "s|@ROOT@|$WORK/www|; s|@PORT@|$NGINX_PORT|; s|@WORK@|$WORK/nginx|g" \
    benches/compare/static-nginx.conf >"$WORK/nginx/nginx.conf"
"${PIN_CACHE[@]}" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" \
    >"$WORK/nginx.out" 2>&1 &
NGINX_MASTER=$!
PIDS+=($NGINX_MASTER)
sleep 0.5
kill -0 $NGINX_MASTER 2>/dev/null || { echo "nginx did not start (port $NGINX_PORT taken? set NGINX_PORT):" >&2; cat "$WORK/nginx.out" "$WORK/nginx/error.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$NGINX_PORT/status"
NGINX_WORKERS=$(children $NGINX_MASTER)
PIDS+=($NGINX_WORKERS)

nginx_requests() { curl -s "http://127.0.0.1:$NGINX_PORT/status" | awk 'NR==3{print $3}'; }
relay_bytes() { curl -s "http://$ADMIN/metrics" | awk '$1=="mlcache_bytes_out_total"{print $2}'; }

echo "origin $O, relay $RELAY, nginx :$NGINX_PORT, $VIEWERS viewers each, ${SECS} s measured, $PINNED" >&2
RUN=$((WARM + SECS + 3))
timeout $((RUN + 60)) "${PIN_LOAD[@]}" $BIN/mlcache-loadgen live --origin "$O" --relay "$RELAY" \
    --relay-pid $RELAY_PID --viewers "$VIEWERS" --ramp 3s --duration "${RUN}s" --no-probe \
    --json "$WORK/live.json" >"$WORK/live.txt" 2>"$WORK/live.err" &
LOADGEN=$!
PIDS+=($LOADGEN)
timeout $((RUN + 60)) "${PIN_LOAD[@]}" h2load --h1 -c "$VIEWERS" -t 1 --rps 2 -D "$((RUN + 3))" \
    -i "$WORK/urls.txt" >"$WORK/h2load.txt" 2>&1 &
H2LOAD=$!
PIDS+=($H2LOAD)

sleep "$WARM"
r_cpu0=$(cpu_ticks $RELAY_PID) n_cpu0=$(cpu_ticks $NGINX_MASTER $NGINX_WORKERS)
r_b0=$(relay_bytes) n_r0=$(nginx_requests)
sleep "$SECS"
r_cpu1=$(cpu_ticks $RELAY_PID) n_cpu1=$(cpu_ticks $NGINX_MASTER $NGINX_WORKERS)
r_b1=$(relay_bytes) n_r1=$(nginx_requests)
wait $LOADGEN || { echo "loadgen failed:" >&2; tail -5 "$WORK/live.err" >&2; exit 1; }
wait $H2LOAD || { echo "h2load failed:" >&2; tail -5 "$WORK/h2load.txt" >&2; exit 1; }

awk -v hz="$HZ" -v secs="$SECS" -v chunk="$CHUNK" -v n="$VIEWERS" \
    -v rc="$((r_cpu1 - r_cpu0))" -v rb="$(awk -v a="$r_b0" -v b="$r_b1" 'BEGIN{printf "%.0f", b - a}')" \
    -v nc="$((n_cpu1 - n_cpu0))" -v nr="$((n_r1 - n_r0))" 'BEGIN {
    nb = nr * chunk
    rs = rc / hz; ns = nc / hz
    printf "%-28s %9s %9s %10s %10s %9s\n", "server (" n " viewers)", "CPU s", "CPU %", "GB", "GB/s", "CPU s/GB"
    printf "%-28s %9.2f %9.1f %10.3f %10.3f %9.3f\n", "mlcache-relay (live)", rs, 100 * rs / secs, rb / 1e9, rb / 1e9 / secs, rs / (rb / 1e9)
    printf "%-28s %9.2f %9.1f %10.3f %10.3f %9.3f\n", "nginx sendfile (static)", ns, 100 * ns / secs, nb / 1e9, nb / 1e9 / secs, ns / (nb / 1e9)
    printf "ratio relay / nginx (CPU s per GB): %.2f (goal <= 1.0)\n", (rs / (rb / 1e9)) / (ns / (nb / 1e9))
}'
echo "relay viewers: $(grep -E '^(errors|origin requests)' "$WORK/live.txt" | tr '\n' ';')"
echo "nginx viewers (h2load): $(grep -E '^requests:' "$WORK/h2load.txt")"

#!/usr/bin/env bash
# mlcache, nginx and Varnish as live caches in front of one origin, with the
# project's loadgen: for each cache and viewer count, `mlcache-loadgen live`
# against that cache (a control group of 20 viewers on the origin gives the
# added delay), then `mlcache-loadgen plot` draws the chart and the table.
#
#   benches/compare.sh [VIEWER_COUNTS] [SECONDS]   # default "100 300 1000 2000" 15
#
# Origin: mlcache-origin, whole 64 KiB chunks every 500 ms (as in the "Head
# to head" section of docs/benchmarks.md), plaintext. Caches: mlcache-relay;
# nginx with proxy_cache_lock (benches/compare/nginx.conf); Varnish with
# streaming (benches/compare/varnish.vcl). All three run for the whole script;
# the loadgen visits one at a time. HTTP/1.1, one connection per viewer.
#
# Writes $OUT/compare.md (table, settings, command) and $OUT/img/compare.svg
# (OUT=docs by default); raw reports stay in $KEEP if set. PIN=0 turns
# pinning off; BUILD=0 skips `cargo build --release`; NOTE="..." adds a line
# to the page (e.g. "Preliminary: ..."). Installs nginx and Varnish when
# missing (apt-get, as root). Everything listens on 127.0.0.1, every run is
# bounded in time, and every process started here is stopped at exit.
set -euo pipefail
cd "$(dirname "$0")/.."
COUNTS=${1:-"100 300 1000 2000"}
SECS=${2:-15}
OUT=${OUT:-docs}
NGINX_PORT=${NGINX_PORT:-18902}
VARNISH_PORT=${VARNISH_PORT:-18903}
BIN=target/release
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mlcache-compare.XXXXXX")
PIDS=()
# nginx's workers run as nobody when started by root: they must reach $WORK.
chmod 755 "$WORK"
. benches/compare/lib.sh
trap 'stop_all; [ -n "${KEEP:-}" ] && cp "$WORK"/*.json "$WORK"/*.txt "$KEEP"/ 2>/dev/null; rm -rf "$WORK"' EXIT
[ -n "${KEEP:-}" ] && mkdir -p "$KEEP"

install_missing nginx:nginx varnishd:varnish curl:curl
PATH=$PATH:/usr/sbin
build_release
setup_pinning
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

# The origin, and mlcache in front of it.
"${PIN_LOAD[@]}" $BIN/mlcache-origin --listen 127.0.0.1:0 --publish whole --plaintext \
    >"$WORK/origin.out" 2>"$WORK/origin.err" &
PIDS+=($!)
O=$(addr origin listening)
"${PIN_CACHE[@]}" $BIN/mlcache-relay --listen 127.0.0.1:0 --allow-origin "http://$O" \
    >"$WORK/relay.out" 2>"$WORK/relay.err" &
RELAY_PID=$!
PIDS+=($RELAY_PID)
RELAY=$(addr relay listening)

# nginx (one worker: the measured process).
mkdir -p "$WORK/nginx"
chmod 777 "$WORK/nginx"
sed -e "s|@ORIGIN@|$O|; s|@PORT@|$NGINX_PORT|; s|@WORK@|$WORK/nginx|g" \
    benches/compare/nginx.conf >"$WORK/nginx/nginx.conf"
"${PIN_CACHE[@]}" nginx -p "$WORK/nginx" -c "$WORK/nginx/nginx.conf" -e "$WORK/nginx/error.log" \
    >"$WORK/nginx.out" 2>&1 &
NGINX_MASTER=$!
PIDS+=($NGINX_MASTER)
sleep 0.5
kill -0 $NGINX_MASTER 2>/dev/null || { echo "nginx did not start (port $NGINX_PORT taken? set NGINX_PORT):" >&2; cat "$WORK/nginx.out" "$WORK/nginx/error.log" >&2; exit 1; }
wait_http "http://127.0.0.1:$NGINX_PORT/live/0"
NGINX_WORKER=$(children $NGINX_MASTER | head -1)
PIDS+=($NGINX_WORKER)

# Varnish (the cache process, child of the manager, is the measured one).
sed -e "s|@ORIGIN_HOST@|${O%:*}|; s|@ORIGIN_PORT@|${O##*:}|" \
    benches/compare/varnish.vcl >"$WORK/varnish.vcl"
"${PIN_CACHE[@]}" varnishd -F -j none -n "$WORK/varnish" -a "127.0.0.1:$VARNISH_PORT" \
    -f "$WORK/varnish.vcl" -s malloc,256m \
    -p thread_pool_min=1000 -p thread_pool_max=5000 \
    >"$WORK/varnish.out" 2>&1 &
VARNISH_MGT=$!
PIDS+=($VARNISH_MGT)
sleep 0.5
kill -0 $VARNISH_MGT 2>/dev/null || { echo "varnishd did not start (port $VARNISH_PORT taken? set VARNISH_PORT):" >&2; cat "$WORK/varnish.out" >&2; exit 1; }
wait_http "http://127.0.0.1:$VARNISH_PORT/live/0"
VARNISH_CHILD=$(children $VARNISH_MGT | head -1)
PIDS+=($VARNISH_CHILD)

NGINX_V=$(nginx -v 2>&1 | sed 's|.*nginx/||')
VARNISH_V=$(varnishd -V 2>&1 | sed -n 's/.*varnish-\([0-9.]*\).*/\1/p' | head -1)
CACHES=("mlcache|$RELAY|$RELAY_PID" "nginx $NGINX_V|127.0.0.1:$NGINX_PORT|$NGINX_WORKER"
    "Varnish $VARNISH_V|127.0.0.1:$VARNISH_PORT|$VARNISH_CHILD")
echo "origin $O; mlcache $RELAY; nginx $NGINX_V :$NGINX_PORT; Varnish $VARNISH_V :$VARNISH_PORT; $PINNED" >&2

RUNS=()
for n in $COUNTS; do
    for c in "${CACHES[@]}"; do
        IFS='|' read -r name target pid <<<"$c"
        tag=$(echo "$name" | cut -d' ' -f1)-$n
        echo "== $name, $n viewers, ${SECS} s" >&2
        timeout $((SECS + 90)) "${PIN_LOAD[@]}" $BIN/mlcache-loadgen live --origin "$O" \
            --relay "$target" --relay-pid "$pid" --viewers "$n" --duration "${SECS}s" \
            --no-probe --json "$WORK/$tag.json" >"$WORK/$tag.txt" 2>"$WORK/$tag.err" ||
            { echo "loadgen failed for $name at $n viewers:" >&2; tail -5 "$WORK/$tag.err" >&2; exit 1; }
        grep -A3 "^ADDED" "$WORK/$tag.txt" | tail -2 >&2
        RUNS+=("$name=$WORK/$tag.json")
        sleep 2 # let the previous run's connections close
    done
done

mkdir -p "$OUT/img"
$BIN/mlcache-loadgen plot --svg "$OUT/img/compare.svg" --metric last-byte \
    --title "Added delay, whole 64 KiB chunks every 500 ms ($(echo "$PINNED" | cut -d: -f1))" \
    "${RUNS[@]}" >"$WORK/table.md"

{
    echo "# mlcache, nginx and Varnish in front of one origin"
    echo
    echo "Written by \`benches/compare.sh \"$COUNTS\" $SECS\` on $(date -u +%Y-%m-%d) ($(nproc) CPUs, loopback, $PINNED)."
    [ -n "${NOTE:-}" ] && { echo; echo "$NOTE"; }
    echo
    echo "Origin: \`mlcache-origin --publish whole --plaintext\`: a whole 64 KiB chunk every 500 ms."
    echo "Each cache in turn gets \`mlcache-loadgen live --viewers N --duration ${SECS}s --no-probe\`"
    echo "(HTTP/1.1, one connection per viewer, viewers at the live edge asking for the next chunk"
    echo "as soon as they have one), beside a control group of 20 viewers on the origin: the"
    echo "added delay is the cache group's delay minus the control group's (so a p99 can come out"
    echo "below a p50, or below 0). Origin requests per chunk are counted by the origin. Cache CPU"
    echo "and RSS are those of the relay process, nginx's one worker, and Varnish's cache process."
    echo "Caches: mlcache-relay (defaults), nginx $NGINX_V ([nginx.conf](../benches/compare/nginx.conf):"
    echo "proxy_cache_lock), Varnish $VARNISH_V ([varnish.vcl](../benches/compare/varnish.vcl):"
    echo "streaming; thread_pool_min 1000, so its 2 pools start 2,000 threads, thread_pool_max 5000)."
    echo
    echo "![added delay against viewers](img/compare.svg)"
    echo
    echo "Chart: added delay to the last byte (the whole chunk), p50 solid and p99 dashed, log–log;"
    echo "values at or below 0.1 ms are drawn at 0.1 ms."
    echo
    cat "$WORK/table.md"
} >"$OUT/compare.md"
cat "$WORK/table.md"
echo "written: $OUT/compare.md, $OUT/img/compare.svg" >&2

#!/usr/bin/env bash
# CPU seconds per GB of two relay binaries side by side: both on CPU 1 at
# the same time, fed by one origin (whole 64 KiB chunks every 500 ms), each
# fanning out to VIEWERS `mlcache-loadgen live` viewers (HTTP/1.1, on CPU 0).
# Run one after the other, two builds are compared across minutes in which
# this shared machine's speed drifts by up to 2× (issue 10); run together,
# they see the same machine, so the ratio B/A is the figure to trust.
#
#   benches/relay_ab.sh OLD_RELAY NEW_RELAY [VIEWERS] [SECONDS]   # 1000 18
#
# Prints each relay's CPU s (utime + stime, /proc/PID/stat) over SECONDS
# after a warm-up, its body bytes (mlcache_bytes_out_total), CPU s/GB and
# the ratio B/A. The origin and loadgen come from BIN (target/release).
# Loopback only, bounded in time; every process started here is stopped at
# exit. PIN=0 turns pinning off. Not run in CI.
set -euo pipefail
[[ $# -ge 2 ]] || { sed -n 9p "$0" >&2; exit 2; }
A=$1 B=$2 VIEWERS=${3:-1000} SECS=${4:-18}
BIN=${BIN:-target/release}
WARM=7
cd "$(dirname "$0")/.."
for f in "$A" "$B" "$BIN/mlcache-origin" "$BIN/mlcache-loadgen"; do
    [[ -x "$f" ]] || { echo "relay_ab: $f is not an executable (cargo build --release --workspace)" >&2; exit 1; }
done
WORK=$(mktemp -d "${TMPDIR:-/tmp}/mlcache-relay_ab.XXXXXX")
PIDS=()
. benches/compare/lib.sh
trap 'stop_all; rm -rf "$WORK"' EXIT
setup_pinning
ulimit -n "$(ulimit -Hn)" 2>/dev/null || true

"${PIN_LOAD[@]}" "$BIN/mlcache-origin" --listen 127.0.0.1:0 --publish whole --plaintext \
    >"$WORK/origin.out" 2>"$WORK/origin.err" &
PIDS+=($!)
ORIGIN=$(addr origin listening)
declare -A BINS=([a]=$A [b]=$B) PID ADMIN
LOADS=()
for side in a b; do
    "${PIN_CACHE[@]}" "${BINS[$side]}" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --id "ab-$side" \
        --allow-origin "http://$ORIGIN" >"$WORK/$side.out" 2>"$WORK/$side.err" &
    PID[$side]=$!
    PIDS+=($!)
    ADMIN[$side]=$(addr "$side" admin)
    "${PIN_LOAD[@]}" "$BIN/mlcache-loadgen" live --origin "$ORIGIN" --relay "$(addr "$side" listening)" \
        --viewers "$VIEWERS" --ramp 3s --duration "$((WARM + SECS + 3))s" --no-probe \
        >"$WORK/live-$side.txt" 2>"$WORK/live-$side.err" &
    PIDS+=($!)
    LOADS+=($!)
done

bytes() { curl -fsS "http://$1/metrics" | awk '$1 == "mlcache_bytes_out_total" { print $2 }'; }
sleep "$WARM"
declare -A T0 Y0 PER_GB
for side in a b; do T0[$side]=$(cpu_ticks "${PID[$side]}") Y0[$side]=$(bytes "${ADMIN[$side]}"); done
sleep "$SECS"
HZ=$(getconf CLK_TCK)
for side in a b; do
    t=$(($(cpu_ticks "${PID[$side]}") - T0[$side]))
    read -r cpu gb per_gb < <(awk -v t="$t" -v hz="$HZ" -v y0="${Y0[$side]}" -v y1="$(bytes "${ADMIN[$side]}")" \
        'BEGIN { gb = (y1 - y0) / 1e9; printf "%.2f %.3f %.3f\n", t / hz, gb, t / hz / gb }')
    PER_GB[$side]=$per_gb
    echo "${BINS[$side]}: $cpu CPU s, $gb GB, $per_gb CPU s/GB"
done
awk -v a="${PER_GB[a]}" -v b="${PER_GB[b]}" -v n="$VIEWERS" -v s="$SECS" -v p="$PINNED" \
    'BEGIN { printf "ratio B/A: %.2f (%d viewers each, %d s, both relays at once; %s)\n", b / a, n, s, p }'
for p in "${LOADS[@]}"; do wait "$p" || echo "relay_ab: a loadgen failed" >&2; done
for side in a b; do
    echo "$side viewers (two relays on one origin: 2.00 origin requests per chunk is one per relay): $(grep -E '^(errors|origin requests)' "$WORK/live-$side.txt" | tr '\n' ' ')"
done

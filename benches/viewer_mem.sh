#!/usr/bin/env bash
# Memory per idle viewer (issue 10, item 2): N viewers parked on a relay's
# slot for a chunk that is not published yet (examples/park.rs), HTTP/1.1
# (one connection each) and h2 (PER_CONN streams per connection), at each N
# in COUNTS. Prints, per protocol and N, the relay's RSS and allocated bytes
# (the `alloc-stats` build's /heap) with N viewers minus with none, per
# viewer, and RSS per 1,000 viewers.
#
#   benches/viewer_mem.sh                      # builds the relay with alloc-stats
#   BIN=/tmp/old benches/viewer_mem.sh         # relay and origin from elsewhere
#   COUNTS="1000 10000" PROTOS="h1 h2" benches/viewer_mem.sh
#
# Settings (environment): COUNTS ("1000 10000"), PROTOS ("h1 h2"),
# PER_CONN (100), BIN (directory of mlcache-relay and mlcache-origin), PARK
# (the park example binary), KEEP=1 keeps the work directory. Not run in
# CI. Everything runs on 127.0.0.1, bounded in time; every process started
# here is stopped by its pid when the script exits.
set -euo pipefail

COUNTS=${COUNTS:-1000 10000}
PROTOS=${PROTOS:-h1 h2}
PER_CONN=${PER_CONN:-100}

cd "$(dirname "$0")/.."
if [[ -z "${BIN:-}" ]]; then
    echo "viewer_mem: building release binaries (relay with alloc-stats)" >&2
    cargo build --release --features alloc-stats --bin mlcache-relay --bin mlcache-origin --example park >&2
    BIN=target/release
fi
PARK=${PARK:-target/release/examples/park}
[[ -x "$PARK" ]] || cargo build --release --example park >&2
. "$(dirname "$0")/lib.sh"
bench_init viewer_mem

rss_kb() { awk '/^VmRSS:/ { print $2 }' "/proc/$1/status"; }
# Allocated bytes from /heap, or empty when the relay lacks alloc-stats.
heap() { curl -fsS "http://$1/heap" 2>/dev/null | awk '$1 == "allocated_bytes" { print $2 }' || true; }
parked() { curl -fsS "http://$1/metrics" | awk '$1 ~ /parked_viewers$/ { print $2; exit }' || echo 0; }

# An origin whose next chunk is an hour away: every viewer stays parked.
"$BIN/mlcache-origin" --listen 127.0.0.1:0 --cadence 3600s >"$WORK/origin.out" 2>"$WORK/origin.err" &
PIDS+=($!)
ORIGIN=$(addr_of "$WORK/origin.out" listening)
EDGE=$(curl -fsS "http://$ORIGIN/live/0" | sed -n 's/.*"edge": *\(-\?[0-9]*\).*/\1/p')
NEXT=$((EDGE + 1))

for proto in $PROTOS; do
    for n in $COUNTS; do
        "$BIN/mlcache-relay" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --id mem \
            --allow-origin "http://$ORIGIN" --max-wait 600s --idle-timeout 600s \
            --max-connections 100000 >"$WORK/relay.out" 2>"$WORK/relay.err" &
        RELAY_PID=$!
        PIDS+=("$RELAY_PID")
        RELAY=$(addr_of "$WORK/relay.out" listening)
        ADMIN=$(addr_of "$WORK/relay.out" admin)
        # Warm up with one viewer first, so the runtime's, slot's and
        # upstream connection's memory is in the baseline, not per viewer.
        "$PARK" --target "$RELAY" --origin "$ORIGIN" --path "/live/0/$NEXT" --viewers 1 --hold 600s >/dev/null 2>"$WORK/warm.err" &
        WARM_PID=$!
        PIDS+=("$WARM_PID")
        for _ in $(seq 1 100); do
            [[ "$(parked "$ADMIN")" == 1 ]] && break
            sleep 0.1
        done
        sleep 1
        RSS0=$(rss_kb "$RELAY_PID")
        HEAP0=$(heap "$ADMIN")
        curl -fsS "http://$ADMIN/heap" >"$WORK/heap0" 2>/dev/null || : >"$WORK/heap0"
        H2=()
        [[ "$proto" == h2 ]] && H2=(--h2 --per-conn "$PER_CONN")
        "$PARK" --target "$RELAY" --origin "$ORIGIN" --path "/live/0/$NEXT" --viewers "$n" "${H2[@]}" --hold 600s \
            >"$WORK/park.out" 2>"$WORK/park.err" &
        PARK_PID=$!
        PIDS+=("$PARK_PID")
        want=$((n + 1))
        for _ in $(seq 1 600); do
            [[ "$(parked "$ADMIN")" -ge "$want" ]] && break
            sleep 0.1
        done
        got=$(parked "$ADMIN")
        sleep 2
        RSS1=$(rss_kb "$RELAY_PID")
        HEAP1=$(heap "$ADMIN")
        curl -fsS "http://$ADMIN/heap" >"$WORK/heap1" 2>/dev/null || : >"$WORK/heap1"
        awk -v p="$proto" -v n="$n" -v got="$got" -v r0="$RSS0" -v r1="$RSS1" -v h0="${HEAP0:-}" -v h1="${HEAP1:-}" 'BEGIN {
            rss = (r1 - r0) * 1024 / n
            printf "%s viewers %6d (parked %d): RSS +%.1f KiB per viewer, %.1f MiB per 1,000", p, n, got - 1, rss / 1024, rss * 1000 / 1048576
            if (h0 != "" && h1 != "") printf "; allocated +%.1f KiB per viewer", (h1 - h0) / n / 1024
            printf "\n"
        }'
        # Where it goes: allocated bytes per viewer by block size class.
        awk -v n="$n" 'FNR == NR { a[$1] = $2; next } $1 ~ /^class_bytes/ {
                d = ($2 - a[$1]) / n
                if (d >= 64 || d <= -64) { sub(/class_bytes/, "", $1); printf "    blocks %-12s %+8.0f B per viewer\n", $1, d }
            }' "$WORK/heap0" "$WORK/heap1"
        kill "$PARK_PID" "$WARM_PID" "$RELAY_PID" 2>/dev/null || true
        wait "$PARK_PID" "$WARM_PID" "$RELAY_PID" 2>/dev/null || true
    done
done

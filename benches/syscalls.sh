#!/usr/bin/env bash
# Write syscalls per viewer per chunk on a relay fanning out over HTTP/2
# (issue 10, item 1): origin → relay → VIEWERS h2 viewers (PER_CONN streams
# per connection) for SECONDS, with `strace -f -c` attached to the relay and
# counting writev, write, sendmsg, sendto and sendfile (an HTTP/1.1 zero-copy
# response is two: the head with MSG_MORE, then the body). The relay's `bytes_out`
# counter divided by the chunk size gives the chunks it delivered, so the
# figure is (writes) / (chunks delivered): 4 means a 64 KiB chunk left in
# four 16 KiB DATA frames, 1 in one.
#
#   benches/syscalls.sh                       # builds release binaries
#   BIN=/tmp/old benches/syscalls.sh          # binaries from elsewhere (before/after)
#   VIEWERS=200 DURATION=10 benches/syscalls.sh
#
# Settings (environment): VIEWERS (200), PER_CONN (100), DURATION (10),
# CHUNK (65536), CADENCE (500ms), H2 (1; 0 for HTTP/1.1 viewers), BIN,
# KEEP=1 keeps the work directory, STRACE_ALL=1 lists every syscall (the
# figure still counts the write-like ones). Needs strace (Debian: apt-get install
# strace). Not run in CI. Everything runs on 127.0.0.1, bounded in time;
# every process started here is stopped by its pid when the script exits.
set -euo pipefail

VIEWERS=${VIEWERS:-200}
PER_CONN=${PER_CONN:-100}
DURATION=${DURATION:-10}
CHUNK=${CHUNK:-65536}
CADENCE=${CADENCE:-500ms}
H2=${H2:-1}

cd "$(dirname "$0")/.."
command -v strace >/dev/null || {
    echo "syscalls: strace is missing (apt-get install strace)" >&2
    exit 1
}
if [[ -z "${BIN:-}" ]]; then
    echo "syscalls: building release binaries" >&2
    cargo build --release --workspace --bins >&2
    BIN=target/release
fi
. "$(dirname "$0")/lib.sh"
bench_init syscalls

# The relay's bytes_out counter, from its admin port.
bytes_out() {
    curl -fsS "http://$1/metrics" | awk '$1 ~ /bytes_out(_total)?$/ { print $2; exit }'
}

"$BIN/mlcache-origin" --listen 127.0.0.1:0 --publish whole --chunk-size "$CHUNK" \
    --cadence "$CADENCE" >"$WORK/origin.out" 2>"$WORK/origin.err" &
PIDS+=($!)
ORIGIN=$(addr_of "$WORK/origin.out" listening)

"$BIN/mlcache-relay" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --id syscalls \
    --allow-origin "http://$ORIGIN" >"$WORK/relay.out" 2>"$WORK/relay.err" &
RELAY_PID=$!
PIDS+=("$RELAY_PID")
RELAY=$(addr_of "$WORK/relay.out" listening)
ADMIN=$(addr_of "$WORK/relay.out" admin)

PROTO=(--h2 --per-conn "$PER_CONN")
[[ "$H2" == 1 ]] || PROTO=()
RAMP=2
# The viewers connect and ramp first; strace counts only the measured part.
"$BIN/mlcache-loadgen" live --origin "$ORIGIN" --relay "$RELAY=$VIEWERS" --control 1 \
    "${PROTO[@]}" --duration "${DURATION}s" --ramp "${RAMP}s" --no-probe \
    >"$WORK/live.txt" 2>"$WORK/live.err" &
LIVE_PID=$!
PIDS+=("$LIVE_PID")
sleep $((RAMP + 1))

BEFORE=$(bytes_out "$ADMIN")
TRACE=(-e trace=writev,write,sendmsg,sendto,sendfile)
[[ -n "${STRACE_ALL:-}" ]] && TRACE=()
strace -f -c "${TRACE[@]}" -o "$WORK/strace.txt" -p "$RELAY_PID" &
STRACE_PID=$!
PIDS+=("$STRACE_PID")
sleep "$((DURATION - 2))"
kill -INT "$STRACE_PID"
wait "$STRACE_PID" 2>/dev/null || true
AFTER=$(bytes_out "$ADMIN")
wait "$LIVE_PID" || echo "syscalls: loadgen failed" >&2

cat "$WORK/strace.txt"
awk -v bytes="$((AFTER - BEFORE))" -v chunk="$CHUNK" -v viewers="$VIEWERS" -v h2="$H2" '
    $NF ~ /^(writev|write|sendmsg|sendto|sendfile)$/ { calls += $4; by[$NF] = $4 }
    END {
        chunks = bytes / chunk
        proto = (h2 == 1) ? "h2" : "http/1.1"
        per = (chunks > 0) ? calls / chunks : 0
        printf "viewers %d (%s), chunk %d B: %d write calls for %.0f chunks delivered = %.2f writes per viewer per chunk",
            viewers, proto, chunk, calls, chunks, per
        printf " (writev %d, write %d, sendmsg %d, sendto %d, sendfile %d)\n", by["writev"], by["write"], by["sendmsg"], by["sendto"], by["sendfile"]
    }' "$WORK/strace.txt"
# The loadgen's delivery table: every viewer should have had every chunk.
sed -n '/^group  *chunks/,/^$/p' "$WORK/live.txt"

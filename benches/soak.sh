#!/usr/bin/env bash
# Soak: 2,000 live viewers through two relays (origin → relay A → relay B)
# for 10 minutes while hostile clients attack relay B, then the figures of
# issue 7: relay RSS first/last/max (flat within 10%?), viewer errors, and
# origin requests per chunk. Not run in CI.
#
#   benches/soak.sh                     # 10 minutes
#   SOAK_SECONDS=120 benches/soak.sh    # shorter
#
# Settings (environment): SOAK_SECONDS (600), VIEWERS (2000), RSS_EVERY (10),
# RELAY_FLAGS (extra flags for both relays), KEEP=1 keeps the work directory.
#
# Everything runs on 127.0.0.1 and is bounded in time; every process started
# here is stopped by its pid when the script exits.
set -euo pipefail

SOAK_SECONDS=${SOAK_SECONDS:-600}
VIEWERS=${VIEWERS:-2000}
RSS_EVERY=${RSS_EVERY:-10}
RELAY_FLAGS=${RELAY_FLAGS:-}
RAMP=10

cd "$(dirname "$0")/.."
echo "soak: building release binaries" >&2
cargo build --release --workspace --bins >&2
BIN=target/release
. "$(dirname "$0")/lib.sh"
bench_init soak

rss_kb() {
    awk '/^VmRSS:/ { print $2 }' "/proc/$1/status" 2>/dev/null || echo 0
}

# Relay flags: a memory budget and progress deadline for both, and the idle
# timeout when this build has it.
FLAGS=(--memory-limit 512MiB --send-timeout 5s)
if "$BIN/mlcache-relay" --help | grep -q -- '--idle-timeout'; then
    FLAGS+=(--idle-timeout 10s)
fi
# shellcheck disable=SC2206
FLAGS+=($RELAY_FLAGS)

"$BIN/mlcache-origin" --listen 127.0.0.1:0 --vod-chunks 1000 >"$WORK/origin.out" 2>"$WORK/origin.err" &
PIDS+=($!)
ORIGIN=$(addr_of "$WORK/origin.out" listening)

"$BIN/mlcache-relay" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --id soak-a \
    --allow-origin "http://$ORIGIN" "${FLAGS[@]}" >"$WORK/a.out" 2>"$WORK/a.err" &
A_PID=$!
PIDS+=("$A_PID")
A=$(addr_of "$WORK/a.out" listening)

"$BIN/mlcache-relay" --listen 127.0.0.1:0 --admin 127.0.0.1:0 --id soak-b \
    --allow-origin "http://$ORIGIN" --upstream "http://$A" "${FLAGS[@]}" >"$WORK/b.out" 2>"$WORK/b.err" &
B_PID=$!
PIDS+=("$B_PID")
B=$(addr_of "$WORK/b.out" listening)
B_ADMIN=$(addr_of "$WORK/b.out" admin)

echo "soak: origin $ORIGIN → relay A $A (pid $A_PID) → relay B $B (pid $B_PID, admin $B_ADMIN)" >&2
echo "soak: relay flags ${FLAGS[*]}; $VIEWERS viewers on B for ${SOAK_SECONDS}s with hostile clients on B" >&2

START=$(date +%s)
END=$((START + RAMP + SOAK_SECONDS))

# RSS of both relays every RSS_EVERY seconds.
(
    while (($(date +%s) <= END + 5)); do
        echo "$(($(date +%s) - START)) $(rss_kb "$A_PID") $(rss_kb "$B_PID")"
        sleep "$RSS_EVERY"
    done
) >"$WORK/rss.txt" &
PIDS+=($!)

# The viewers: 20 on A, the rest on B, and the control group on the origin.
"$BIN/mlcache-loadgen" live --origin "$ORIGIN" --relay "$A=20" --relay "$B=$VIEWERS" \
    --relay-pid "$A_PID" --relay-pid "$B_PID" --duration "${SOAK_SECONDS}s" --ramp "${RAMP}s" \
    --no-probe --json "$WORK/live.json" >"$WORK/live.txt" 2>"$WORK/live.err" &
LIVE_PID=$!
PIDS+=("$LIVE_PID")

# The hostile mix on B, at low intensity, looping until the soak ends. Each
# attack is bounded by its own --time-limit and by what is left of the soak.
(
    kinds=(window0 silent rapid-reset)
    i=0
    while :; do
        left=$((END - $(date +%s)))
        ((left > 30)) || break
        kind=${kinds[$((i % ${#kinds[@]}))]}
        limit=$((left < 60 ? left : 60))
        case $kind in
        window0) extra=(--connections 4 --streams 10 --chunks 50 --hold 20s) ;;
        silent) extra=(--connections 200 --hold 25s) ;;
        rapid-reset) extra=(--connections 2 --streams 500) ;;
        esac
        echo "=== $(($(date +%s) - START))s: $kind ${extra[*]}"
        "$BIN/mlcache-loadgen" attack "$kind" --target "$B" --origin "$ORIGIN" \
            --relay-pid "$B_PID" --admin "$B_ADMIN" --no-fail --time-limit "${limit}s" \
            --relay-arg "${FLAGS[*]}" "${extra[@]}" 2>&1 || echo "attack $kind failed to run"
        i=$((i + 1))
    done
) >"$WORK/attacks.txt" 2>&1 &
HOSTILE_PID=$!
PIDS+=("$HOSTILE_PID")

# Bounded wait for the viewers (duration + ramp + a margin for the report).
LIVE_RC=0
for _ in $(seq 1 $((RAMP + SOAK_SECONDS + 120))); do
    kill -0 "$LIVE_PID" 2>/dev/null || break
    sleep 1
done
if kill -0 "$LIVE_PID" 2>/dev/null; then
    echo "soak: the viewers did not finish in time" >&2
    kill "$LIVE_PID" 2>/dev/null || true
    LIVE_RC=1
fi
wait "$LIVE_PID" || LIVE_RC=$?
wait "$HOSTILE_PID" 2>/dev/null || true

echo
echo "=== viewers (mlcache-loadgen live)"
cat "$WORK/live.txt"
echo
echo "=== hostile clients on relay B"
grep -c '^=== ' "$WORK/attacks.txt" | xargs -I{} echo "{} attacks run:"
grep '^=== ' "$WORK/attacks.txt" | awk '{print $3}' | sort | uniq -c
grep -E '^  (OK|FAIL) ' "$WORK/attacks.txt" | sort | uniq -c || true

echo
echo "=== relay RSS (sampled every ${RSS_EVERY}s; 'first' is the first sample after the ramp and warm-up)"
# Warm-up: the live chunks' cache lifetime (max-age 60 s) and one round of
# each attack kind, so the stores are at their steady size before "first".
WARM=$((RAMP + (SOAK_SECONDS > 300 ? 120 : SOAK_SECONDS / 4)))
VERDICT=0
for col in 2 3; do
    name=$([[ $col == 2 ]] && echo "relay A" || echo "relay B")
    read -r first last max < <(awk -v c="$col" -v w="$WARM" '
        $1 >= w && $c > 0 { if (!n++) f = $c; l = $c; if ($c > m) m = $c }
        END { print f + 0, l + 0, m + 0 }' "$WORK/rss.txt")
    flat=$(awk -v f="$first" -v l="$last" -v m="$max" 'BEGIN { print (f > 0 && m <= f * 1.10 && l <= f * 1.10) ? "yes" : "no" }')
    awk -v n="$name" -v f="$first" -v l="$last" -v m="$max" -v ok="$flat" 'BEGIN {
        printf "%s: first %.1f MiB, last %.1f MiB, max %.1f MiB; flat within 10%%: %s\n", n, f / 1024, l / 1024, m / 1024, ok }'
    [[ $flat == yes ]] || VERDICT=1
done

ERRORS=$(awk '/^errors: / { print $2 }' "$WORK/live.txt")
RPC=$(awk -F': ' '/^origin requests per chunk/ { split($2, a, " "); print a[1] }' "$WORK/live.txt")
echo
echo "=== soak verdict (${SOAK_SECONDS}s, $VIEWERS viewers on B)"
echo "viewer errors: ${ERRORS:-?} (expected 0)"
echo "origin requests per chunk: ${RPC:-?} (expected 1.00)"
[[ "${ERRORS:-x}" == 0 ]] || VERDICT=1
[[ "${RPC:-x}" == 1.00 ]] || VERDICT=1
((LIVE_RC == 0)) || VERDICT=1
if ((VERDICT == 0)); then echo "soak: OK"; else echo "soak: FAIL"; fi
exit "$VERDICT"

#!/usr/bin/env bash
# Deep trees: added delay per level. Builds a depth-4 chain
# (origin → r0 → r1 → r2 → r3) or a 1 + 3 + 9 tree (origin → root → 3 mids →
# 9 leaves) of mlcache-relay processes, then runs `mlcache-loadgen live` with
# VIEWERS viewers on every relay and 20 control viewers on the origin, and
# prints the loadgen's table (delay of each relay's group against the
# control group: the level's depth is the relay's position in the tree) and
# the origin's requests per chunk (the loadgen's "relay path" line). Not run in CI.
#
#   benches/tree.sh chain [VIEWERS] [loadgen flags]   # default 100 per relay
#   benches/tree.sh tree  [VIEWERS] [loadgen flags]
#
# Uses the release binaries as built (cargo build --release -p mlcache-loadgen
# -p mlcache), or BIN=target/debug for a quick check. Everything runs on
# 127.0.0.1, bounded in time; every process started here is stopped by its
# pid when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
SHAPE=${1:?usage: benches/tree.sh chain|tree [VIEWERS] [loadgen flags]}
VIEWERS=${2:-100}
shift $(($# < 2 ? $# : 2))
. benches/lib.sh
bench_init tree

$BIN/mlcache-origin --listen 127.0.0.1:0 --plaintext --chunk-size 64KiB --cadence 500ms \
    >"$WORK/origin.out" 2>"$WORK/origin.err" &
PIDS+=($!)
O=$(addr origin)

ADDRS=()
ARGS=()
# relay NAME [PARENT_ADDR]: starts one, appends its address to ADDRS.
relay() {
    local up=()
    [[ -n "${2:-}" ]] && up=(--upstream "http://$2")
    $BIN/mlcache-relay --listen 127.0.0.1:0 --allow-origin "http://$O" --id "$1" "${up[@]}" \
        >"$WORK/$1.out" 2>"$WORK/$1.err" &
    PIDS+=($!)
    ARGS+=(--relay-pid $!)
    ADDRS+=("$(addr "$1")")
}

case $SHAPE in
chain)
    relay r0
    for i in 1 2 3; do relay "r$i" "${ADDRS[$((i - 1))]}"; done
    echo "levels: r0=1 r1=2 r2=3 r3=4"
    ;;
tree)
    relay root
    for m in 0 1 2; do relay "mid$m" "${ADDRS[0]}"; done
    for l in $(seq 0 8); do relay "leaf$l" "${ADDRS[$((1 + l / 3))]}"; done
    # The loadgen numbers relays as hops in the order given; here that is
    # list position, not depth: read its "vs control" rows by level and
    # ignore its "per hop" table.
    echo "levels: root=1 mid0..2=2 leaf0..8=3 (loadgen's \"N hops\": 1 = level 1, 2-4 = level 2, 5-13 = level 3)"
    ;;
*) echo "shape must be chain or tree" >&2; exit 2 ;;
esac

RELAYS=()
for a in "${ADDRS[@]}"; do RELAYS+=(--relay "$a=$VIEWERS"); done
echo "+ mlcache-loadgen live --origin $O ${RELAYS[*]} $*"
timeout 300 $BIN/mlcache-loadgen live --origin "$O" "${RELAYS[@]}" "${ARGS[@]}" "$@"

#!/usr/bin/env bash
# LL-HLS players through two relays: mlcache-origin --ll (ffmpeg lavfi feed,
# 200 ms parts, 1 s segments) → relay A → relay B, then
# `mlcache-loadgen hls` with 100 players on A, PLAYERS on B and 20 control
# players on the origin. Prints the loadgen's table. Not run in CI.
#
#   benches/hls.sh 900 --h2 --duration 20s           # 1,000 relay players
#   benches/hls.sh 4900 --h2 --duration 20s          # 5,000
#
# Arguments after PLAYERS go to `mlcache-loadgen hls`. Uses the release
# binaries as built (cargo build --release -p mlcache-loadgen -p mlcache).
# Everything runs on 127.0.0.1, bounded in time; every process started here
# is stopped by its pid when the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release}
PLAYERS=${1:?usage: benches/hls.sh PLAYERS_ON_B [loadgen flags]}
shift
. benches/lib.sh
bench_init hls

$BIN/mlcache-origin --listen 127.0.0.1:0 --ll >"$WORK/origin.out" 2>"$WORK/origin.err" &
OP=$!
PIDS+=($OP)
O=$(addr origin)
$BIN/mlcache-relay --listen 127.0.0.1:0 --allow-origin "http://$O" --id relay-a \
    >"$WORK/relay-a.out" 2>"$WORK/relay-a.err" &
AP=$!
PIDS+=($AP)
A=$(addr relay-a)
$BIN/mlcache-relay --listen 127.0.0.1:0 --allow-origin "http://$O" --upstream "http://$A" \
    --id relay-b >"$WORK/relay-b.out" 2>"$WORK/relay-b.err" &
BP=$!
PIDS+=($BP)
B=$(addr relay-b)
# Live once ffmpeg's feed has made a complete segment.
for _ in $(seq 1 100); do
    curl -s "http://$O/ll/media.m3u8" | grep -q EXTINF && break
    sleep 0.2
done
echo "+ mlcache-loadgen hls --origin $O --relay $A=100 --relay $B=$PLAYERS --relay-pid $AP --relay-pid $BP --origin-pid $OP $*"
timeout 300 $BIN/mlcache-loadgen hls --origin "$O" --relay "$A=100" --relay "$B=$PLAYERS" \
    --relay-pid "$AP" --relay-pid "$BP" --origin-pid "$OP" "$@"

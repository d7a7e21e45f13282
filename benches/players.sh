#!/usr/bin/env bash
# Real players' live latency direct vs through one and two relays over https
# (h2), in headless Chromium (tests/browser/play.mjs): hls.js on LL-HLS and
# dash.js on LL-DASH from `mlcache-origin --ll`. The direct group watches a
# twin origin (its own ffmpeg) so the relay path's origin counts only the
# relays' requests. Prints one markdown row per player and path, plus the
# origin's requests per part / segment. Not run in CI.
#
#   benches/players.sh [SECONDS] [TABS]     # default 60 s, 2 windows per path
#
# Uses the release binaries as built (cargo build --release), Chromium at
# /usr/bin/chromium and tests/browser/node_modules (npm ci). Everything runs
# on 127.0.0.1, bounded in time; every process started here is stopped when
# the script exits.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=target/release
SECONDS_=${1:-60}
TABS=${2:-2}
. benches/lib.sh
bench_init players

# A throwaway CA and a certificate for 127.0.0.1 (not a self-signed leaf:
# rustls refuses a CA certificate used as a server's).
openssl req -x509 -newkey rsa:2048 -nodes -keyout "$WORK/ca.key" -out "$WORK/ca.pem" \
    -days 1 -subj "/CN=mlcache bench CA" 2>/dev/null
openssl req -newkey rsa:2048 -nodes -keyout "$WORK/key.pem" -out "$WORK/leaf.csr" \
    -subj "/CN=127.0.0.1" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\n' >"$WORK/ext.cnf"
openssl x509 -req -in "$WORK/leaf.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" \
    -CAcreateserial -out "$WORK/leaf.pem" -days 1 -extfile "$WORK/ext.cnf" 2>/dev/null
cat "$WORK/leaf.pem" "$WORK/ca.pem" >"$WORK/cert.pem"

for o in origin twin; do
    $BIN/mlcache-origin --listen 127.0.0.1:0 --ll --plaintext --token t >"$WORK/$o.out" 2>"$WORK/$o.err" &
    PIDS+=($!)
done
O=$(addr origin listening)
T=$(addr twin listening)
TLS=(--tls-cert "$WORK/cert.pem" --tls-key "$WORK/key.pem" --cors '*')
$BIN/mlcache-relay --listen 127.0.0.1:0 --listen-tls 127.0.0.1:0 --allow-origin "http://$O" \
    "${TLS[@]}" --id relay-a >"$WORK/a.out" 2>"$WORK/a.err" &
PIDS+=($!)
A=$(addr a tls)
$BIN/mlcache-relay --listen 127.0.0.1:0 --listen-tls 127.0.0.1:0 --allow-origin "http://$O" \
    "${TLS[@]}" --upstream "https://$A" --upstream-ca "$WORK/ca.pem" --id relay-b \
    >"$WORK/b.out" 2>"$WORK/b.err" &
PIDS+=($!)
B=$(addr b tls)
for _ in $(seq 1 300); do
    curl -sf "http://$O/ll/media.m3u8" | grep -q '#EXTINF' && \
        curl -sf "http://$T/ll/media.m3u8" | grep -q '#EXTINF' && break
    sleep 0.1
done

echo "| player | path | windows | latency p50 (s) | min–max of window medians (s) | media s per s | stalls per minute | fatal errors |"
echo "|---|---|---|---|---|---|---|---|"
for player in hls dash; do
    case $player in
        hls) P=/ll/master.m3u8 ;;
        dash) P=/dash/manifest.mpd ;;
    esac
    before=$(curl -s "http://$O/stats")
    node tests/browser/play.mjs --player $player --tabs "$TABS" --warmup 8 --seconds "$SECONDS_" \
        --src "direct=http://$T$P" \
        --src "1 relay=https://$A/mlcache/$O$P" \
        --src "2 relays=https://$B/mlcache/$O$P" >"$WORK/$player.json" 2>"$WORK/$player.err"
    after=$(curl -s "http://$O/stats")
    python3 - "$WORK/$player.json" "$player" "$before" "$after" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
player = {"hls": "hls.js 1.7.4 (LL-HLS)", "dash": "dash.js 5.2.1 (LL-DASH)"}[sys.argv[2]]
groups = {}
for t in r["tabs"]:
    groups.setdefault(t["label"], []).append(t)
for label in ["direct", "1 relay", "2 relays"]:
    tabs = groups.get(label, [])
    meds = sorted(t["latency"]["p50"] for t in tabs if t.get("latency"))
    p50 = meds[len(meds) // 2] if meds else float("nan")
    adv = sum(t["advance"] for t in tabs) / max(1, len(tabs))
    minutes = sum(t.get("measuredSeconds", 0) for t in tabs) / 60
    stalls = sum(t.get("stalls") or 0 for t in tabs)
    errs = sum(len(t["errors"]) for t in tabs)
    rng = f"{meds[0]:.2f}–{meds[-1]:.2f}" if meds else "-"
    print(f"| {player} | {label} | {len(tabs)} | {p50:.2f} | {rng} | {adv:.3f} | {stalls / max(minutes, 1e-9):.2f} | {errs} |")
b = json.loads(sys.argv[3])["requests"]; a = json.loads(sys.argv[4])["requests"]
d = {k: v - b.get(k, 0) for k, v in a.items() if v - b.get(k, 0) > 0}
kind = "/ll/part" if sys.argv[2] == "hls" else "/dash/seg"
parts = [v for k, v in d.items() if k.startswith(kind)]
vers = [v for k, v in d.items() if "_HLS_msn=" in k]
line = f"origin (relay path), {player}: {sum(parts)} requests for {len(parts)} {'parts' if sys.argv[2] == 'hls' else 'segments'}"
if vers:
    line += f"; {sum(vers)} requests for {len(vers)} playlist versions"
print(line, file=sys.stderr)
EOF
done

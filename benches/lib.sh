# Shared by the bench scripts: a work directory removed at exit, every
# started process stopped at exit, and reading the address a process prints.
#   . "$(dirname "$0")/lib.sh"; bench_init NAME
#   cmd >"$WORK/x.out" 2>"$WORK/x.err" & PIDS+=($!)
#   X=$(addr x listening)       # waits (bounded) for "listening ADDR" in x.out

bench_init() {
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/mlcache-$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
}

bench_cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$WORK"
}

# addr NAME [WHAT]: the address after WHAT (default `listening`) in
# $WORK/NAME.out, waiting up to 20 s for it.
addr() {
    local what=${2:-listening}
    for _ in $(seq 1 200); do
        grep -q "^$what " "$WORK/$1.out" 2>/dev/null && break
        sleep 0.1
    done
    awk -v w="$what" '$1==w{print $2; exit}' "$WORK/$1.out"
}

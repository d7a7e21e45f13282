# Shared by the bench scripts: a work directory removed at exit (kept with
# KEEP=1), every started process stopped at exit, the fd limit raised, and
# reading the address a process prints.
#   . "$(dirname "$0")/lib.sh"; bench_init NAME
#   cmd >"$WORK/x.out" 2>"$WORK/x.err" & PIDS+=($!)
#   X=$(addr x)                 # waits (bounded) for "listening ADDR" in x.out
#   X=$(addr_of FILE WORD)      # the same for "WORD ADDR" in any FILE

bench_init() {
    BENCH=$1
    WORK=$(mktemp -d "${TMPDIR:-/tmp}/mlcache-$1.XXXXXX")
    PIDS=()
    trap bench_cleanup EXIT
    ulimit -n "$(ulimit -Hn)" 2>/dev/null || true
}

bench_cleanup() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    if [[ "${KEEP:-0}" == 1 ]]; then
        echo "$BENCH: logs kept in $WORK" >&2
    else
        rm -rf "$WORK"
    fi
}

# addr_of FILE WORD: the address after WORD in FILE, waiting up to 30 s.
addr_of() {
    local file=$1 word=$2 i
    for i in $(seq 1 300); do
        if grep -q "^$word " "$file" 2>/dev/null; then
            awk -v w="$word" '$1 == w { print $2; exit }' "$file"
            return 0
        fi
        sleep 0.1
    done
    echo "$BENCH: no '$word' line in $file" >&2
    return 1
}

# addr NAME [WHAT]: the address after WHAT (default `listening`) in
# $WORK/NAME.out.
addr() {
    addr_of "$WORK/$1.out" "${2:-listening}"
}

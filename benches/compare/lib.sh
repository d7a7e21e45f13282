# Helpers shared by benches/compare.sh and benches/efficiency.sh (sourced).
# They expect $WORK (a scratch directory) and the PIDS array to exist.

# install_missing CMD:PACKAGE ...: installs the Debian packages whose command
# is missing (needs root; fails, never skips, when it cannot).
install_missing() {
    local want=() pair
    for pair in "$@"; do
        command -v "${pair%%:*}" >/dev/null 2>&1 || [ -x "/usr/sbin/${pair%%:*}" ] ||
            want+=("${pair#*:}")
    done
    [ ${#want[@]} -eq 0 ] && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "missing ${want[*]}: run as root (apt-get install) or install them" >&2
        return 1
    fi
    echo "installing ${want[*]}" >&2
    apt-get update -qq >&2
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${want[@]}" >&2
}

# build_release: the release binaries this benchmark runs (a no-op when fresh;
# BUILD=0 skips it).
build_release() {
    [ "${BUILD:-1}" = 0 ] && return 0
    cargo build --release -q -p mlcache -p mlcache-loadgen --bins >&2
}

# Pinning (PIN=1, the default with two or more CPUs): the caches on CPU 1,
# origin, loadgen and other clients on CPU 0, with taskset.
setup_pinning() {
    PIN_CACHE=() PIN_LOAD=()
    if [ "${PIN:-1}" = 1 ] && [ "$(nproc)" -ge 2 ]; then
        PIN_CACHE=(taskset -c 1) PIN_LOAD=(taskset -c 0)
        PINNED="pinned with taskset: caches on CPU 1, origin and load generators on CPU 0"
    else
        PINNED="not pinned"
    fi
}

# addr NAME WORD: waits (bounded, 20 s) for a line `WORD ADDR` in
# $WORK/NAME.out and prints ADDR.
addr() {
    for _ in $(seq 1 200); do
        grep -q "^$2 " "$WORK/$1.out" 2>/dev/null && break
        sleep 0.1
    done
    awk -v w="$2" '$1==w{print $2; exit}' "$WORK/$1.out"
}

# wait_http URL: waits (bounded, 20 s) until URL answers at all.
wait_http() {
    for _ in $(seq 1 200); do
        curl -s -o /dev/null --max-time 1 "$1" && return 0
        sleep 0.1
    done
    echo "no answer from $1" >&2
    return 1
}

# cpu_ticks PID...: user + system clock ticks of these processes, summed
# (fields 14 and 15 of /proc/PID/stat, after the parenthesised name).
cpu_ticks() {
    local p sum=0 t
    for p in "$@"; do
        t=$(sed 's/.*) //' "/proc/$p/stat" | awk '{print $12 + $13}')
        sum=$((sum + t))
    done
    echo "$sum"
}

# children PID: the pids of PID's child processes (nginx workers, the
# Varnish cache process).
children() {
    cat /proc/"$1"/task/*/children 2>/dev/null | tr ' ' '\n' | grep . || true
}

# stop_all: stops every process this script started (the PIDS array), by pid.
stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    for _ in $(seq 1 50); do
        local alive=0
        for p in "${PIDS[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
        [ $alive = 0 ] && break
        sleep 0.1
    done
    for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
}

#!/usr/bin/env bash
# mps against Nchan, the same loads, alternating, several rounds; prints medians and ratios.
#
#   bench/compare.sh                 # full run: 10,000 subscribers, 19,000 idle, 3 rounds
#   QUICK=1 bench/compare.sh         # smoke run: 1,000 subscribers, 1,000 idle, 1 round
#
# Settings (environment):
#   ROUNDS=3            rounds; in each, every test runs once per server, order alternating
#   SUBS=10000          subscribers of the fan-out tests
#   MESSAGES=200        messages of the as-fast-as-possible fan-out tests
#   RATE=5 RATE_MESSAGES=50   the latency test: messages per second, and how many
#   IDLE=19000 IDLE_PROCS=2   idle WebSocket connections, and client processes holding them
#   CONCURRENCY=4       publish requests in flight in the as-fast-as-possible tests
#   NCHAN_WORKERS="1 2" Nchan variants (worker_processes); the first one is the reference
#   TESTS="ws_fast sse_fast ws_rate idle"
#   MPS_PORT=18180 NCHAN_PORT=18190   loopback ports (not standard service ports)
#   OUT=DIR             where results.jsonl, the summary and server logs go (default: a temp dir)
#   PROFILE=1           afterwards, profile mps with perf during one ws_fast run
#   NO_BUILD=1 MPS=path use this mps binary instead of building the release one
#   BASELINE=path       also run this other mps binary (server `mps_base`), e.g. the release
#                       before a change: before and after in one run, with their ratio
#
# Requires: Debian packages nginx, libnginx-mod-nchan and jq (installed when missing, as root),
# cargo. Every server it starts is stopped on exit, by pid.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

QUICK=${QUICK:-0}
if [ "$QUICK" = 1 ]; then
    ROUNDS=${ROUNDS:-1} SUBS=${SUBS:-1000} IDLE=${IDLE:-1000} MESSAGES=${MESSAGES:-50}
    RATE_MESSAGES=${RATE_MESSAGES:-10} IDLE_PROCS=${IDLE_PROCS:-1}
fi
ROUNDS=${ROUNDS:-3}
SUBS=${SUBS:-10000}
MESSAGES=${MESSAGES:-200}
RATE=${RATE:-5}
RATE_MESSAGES=${RATE_MESSAGES:-50}
IDLE=${IDLE:-19000}
IDLE_PROCS=${IDLE_PROCS:-2}
CONCURRENCY=${CONCURRENCY:-4}
NCHAN_WORKERS=${NCHAN_WORKERS:-"1 2"}
TESTS=${TESTS:-"ws_fast sse_fast ws_rate idle"}
MPS_PORT=${MPS_PORT:-18180}
NCHAN_PORT=${NCHAN_PORT:-18190}
OUT=${OUT:-$(mktemp -d /tmp/mps-compare.XXXXXX)}
mkdir -p "$OUT"
RESULTS=$OUT/results.jsonl
: >"$RESULTS"
KEY=bench-admin-key
SECRET=bench-jwt-secret

log() { printf '%s %s\n' "$(date +%H:%M:%S)" "$*" >&2; }

# ---- Prerequisites --------------------------------------------------------------------------
NCHAN_SO=/usr/lib/nginx/modules/ngx_nchan_module.so
if ! command -v nginx >/dev/null || [ ! -f "$NCHAN_SO" ] || ! command -v jq >/dev/null; then
    log "installing nginx, libnginx-mod-nchan and jq from Debian"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nginx libnginx-mod-nchan jq >/dev/null
fi
if [ "${NO_BUILD:-0}" != 1 ]; then
    log "building mps (release)"
    nice cargo build --release --quiet --bin mps
    MPS=${CARGO_TARGET_DIR:-$ROOT/target}/release/mps
fi
MPS=${MPS:-$ROOT/target/release/mps}

# ---- Servers --------------------------------------------------------------------------------
SERVER_PID=""     # the process we started (mps, or the nginx master)
SERVER_PIDS=""    # the processes to measure (mps; nginx master and workers)

PERF_PID=""
cleanup() {
    if [ -n "$PERF_PID" ]; then kill -INT "$PERF_PID" 2>/dev/null || true; fi
    if [ -n "$SERVER_PID" ]; then
        kill "$SERVER_PID" 2>/dev/null || true
        wait "$SERVER_PID" 2>/dev/null || true
        SERVER_PID=""
    fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

wait_port() {
    local port=$1
    for _ in $(seq 1 100); do
        if (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    log "nothing listens on $port"; return 1
}

start_mps() { # binary
    local data=$OUT/mps-data
    rm -rf "$data"; mkdir -p "$data"
    "$1" serve --listen 127.0.0.1:"$MPS_PORT" --data-dir "$data" --admin-key "$KEY" \
        --jwt-secret "$SECRET" >>"$OUT/mps.log" 2>&1 &
    SERVER_PID=$!
    SERVER_PIDS=$SERVER_PID
    wait_port "$MPS_PORT"
    URL=http://127.0.0.1:$MPS_PORT TARGET=mps
}

start_nchan() {
    local workers=$1 prefix=$OUT/nchan$1
    rm -rf "$prefix"; mkdir -p "$prefix/logs" "$prefix/tmp"
    sed -e "s/127.0.0.1:18090/127.0.0.1:$NCHAN_PORT/" \
        -e "s/^worker_processes 1;/worker_processes $workers;/" \
        "$ROOT/bench/nchan.conf" >"$prefix/nginx.conf"
    nginx -p "$prefix/" -c "$prefix/nginx.conf" &
    SERVER_PID=$!
    wait_port "$NCHAN_PORT"
    for _ in $(seq 1 50); do
        [ "$(pgrep -P "$SERVER_PID" | wc -l)" -ge "$workers" ] && break
        sleep 0.1
    done
    SERVER_PIDS="$SERVER_PID $(pgrep -P "$SERVER_PID" | tr '\n' ' ')"
    URL=http://127.0.0.1:$NCHAN_PORT TARGET=nchan
}

start_server() { # mps | mps_base | nchan1 | nchan2 ...
    case $1 in
        mps) start_mps "$MPS" ;;
        mps_base) start_mps "$BASELINE" ;;
        nchan*) start_nchan "${1#nchan}" ;;
    esac
    sleep 1
}

# ---- Tests ----------------------------------------------------------------------------------
run_test() { # server test round
    local server=$1 test=$2 round=$3 pids=() args out
    start_server "$server"
    for p in $SERVER_PIDS; do pids+=(--server-pid "$p"); done
    local common=(--url "$URL" --target "$TARGET" --admin-key "$KEY" --jwt-secret "$SECRET"
                  "${pids[@]}" --json)
    case $test in
        ws_fast)  args=(fanout -n "$SUBS" -m "$MESSAGES" --concurrency "$CONCURRENCY") ;;
        sse_fast) args=(fanout -n "$SUBS" -m "$MESSAGES" --concurrency "$CONCURRENCY"
                        --transport sse) ;;
        ws_rate)  args=(fanout -n "$SUBS" -m "$RATE_MESSAGES" --rate "$RATE" --concurrency 16) ;;
        idle)     args=(idle -n "$IDLE" --procs "$IDLE_PROCS" --hold 3) ;;
    esac
    log "round $round: $test on $server"
    if out=$("$MPS" bench "${args[@]}" "${common[@]}" 2>>"$OUT/bench.log"); then
        jq -c --arg s "$server" --arg t "$test" --argjson r "$round" \
            '. + {server: $s, test: $t, round: $r}' <<<"$out" >>"$RESULTS"
        jq -r '"  deliveries/s \(.deliveries_per_s // "-")  cpu µs/delivery \(.server_cpu_us_per_delivery // "-")  p99 ms \(.latency_p99_ms // "-")  KiB/conn \(.server_kib_per_connection // "-")  losses \(.losses // 0)  connect errors \(.connect_errors)"' <<<"$out" >&2
    else
        log "  failed (see $OUT/bench.log)"
    fi
    cleanup
    sleep 1
}

SERVERS=()
for w in $NCHAN_WORKERS; do SERVERS+=("nchan$w"); done
[ -n "${BASELINE:-}" ] && SERVERS+=(mps_base)
SERVERS+=(mps)
log "results in $OUT; servers: ${SERVERS[*]}; tests: $TESTS; rounds: $ROUNDS"
for round in $(seq 1 "$ROUNDS"); do
    for test in $TESTS; do
        order=("${SERVERS[@]}")
        if [ $((round % 2)) = 0 ]; then # every other round, mps first
            order=(mps "${SERVERS[@]:0:${#SERVERS[@]}-1}")
        fi
        for server in "${order[@]}"; do run_test "$server" "$test" "$round"; done
    done
done

# ---- Summary --------------------------------------------------------------------------------
median() { # server test field
    jq -r --arg s "$1" --arg t "$2" --arg f "$3" \
        'select(.server == $s and .test == $t) | .[$f] // empty' "$RESULTS" |
        sort -g | awk '{v[NR] = $1} END {
            if (NR == 0) { print "-"; exit }
            m = (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2
            if (m == int(m) || m >= 1000) printf "%.0f\n", m
            else if (m >= 10) printf "%.1f\n", m
            else printf "%.2f\n", m }'
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (a == "-" || b == "-" || b == 0) print "-"; else printf "%.2f", a / b }'; }

{
    echo "mps against Nchan: medians of $ROUNDS round(s); $SUBS subscribers, $MESSAGES messages"
    echo "as fast as possible ($CONCURRENCY publishes in flight), $RATE_MESSAGES at $RATE/s for"
    echo "latency, $IDLE idle connections. Ratio = mps / Nchan."
    echo
    header="| figure | goal |"
    rule="|---|---|"
    for s in "${SERVERS[@]}"; do header="$header $s |"; rule="$rule---|"; done
    for s in "${SERVERS[@]}"; do
        [ "$s" = mps ] || { header="$header mps/$s |"; rule="$rule---|"; }
    done
    echo "$header"; echo "$rule"
    while IFS='|' read -r label test field goal; do
        echo "$TESTS" | grep -qw "$test" || continue
        row="| $label | $goal |"
        declare -A med=()
        for s in "${SERVERS[@]}"; do med[$s]=$(median "$s" "$test" "$field"); row="$row ${med[$s]} |"; done
        for s in "${SERVERS[@]}"; do
            [ "$s" = mps ] || row="$row $(ratio "${med[mps]}" "${med[$s]}") |"
        done
        echo "$row"
        unset med
    done <<'EOF'
server CPU µs per delivery, WebSocket|ws_fast|server_cpu_us_per_delivery|≤ 0.33
server CPU µs per delivery, SSE|sse_fast|server_cpu_us_per_delivery|≤ 0.33
server CPU µs per delivery, WebSocket at 5 msg/s|ws_rate|server_cpu_us_per_delivery|
deliveries/s, WebSocket, as fast as possible|ws_fast|deliveries_per_s|≥ 1.5
deliveries/s, SSE, as fast as possible|sse_fast|deliveries_per_s|
p50 latency ms at 5 msg/s|ws_rate|latency_p50_ms|
p99 latency ms at 5 msg/s|ws_rate|latency_p99_ms|≤ 0.5
p99 latency ms, as fast as possible|ws_fast|latency_p99_ms|
KiB per idle WebSocket connection|idle|server_kib_per_connection|mps ≤ 4 KiB
losses (median), WebSocket as fast as possible|ws_fast|losses|0
EOF
    echo
    echo "Every run (server test round: deliveries/s, CPU µs/delivery, p99 ms, KiB/conn, losses):"
    jq -r '"\(.server) \(.test) \(.round): \(.deliveries_per_s // "-") \(.server_cpu_us_per_delivery // "-") \(.latency_p99_ms // "-") \(.server_kib_per_connection // "-") \(.losses // 0)"' "$RESULTS"
} | tee "$OUT/summary.md"

# ---- Profile --------------------------------------------------------------------------------
# perf on mps during the delivery phase of a fan-out: ws_fast (as fast as possible) and ws_rate
# (5 msg/s). DWARF call graphs, since the release build has no frame pointers.
profile() { # test
    local test=$1 args
    case $test in
        ws_fast) args=(-m "$MESSAGES" --concurrency "$CONCURRENCY") ;;
        ws_rate) args=(-m "$RATE_MESSAGES" --rate "$RATE" --concurrency 16) ;;
    esac
    log "profiling mps during $test"
    start_server mps
    "$MPS" bench fanout -n "$SUBS" "${args[@]}" --url "$URL" --admin-key "$KEY" \
        --jwt-secret "$SECRET" --server-pid "$SERVER_PID" \
        >"$OUT/profile-$test.txt" 2>"$OUT/profile-$test.log" &
    local bench=$!
    # Record only the delivery phase: start perf once the bench says it is publishing.
    until grep -q publishing "$OUT/profile-$test.log" 2>/dev/null; do sleep 0.05; done
    perf record -F 199 --call-graph dwarf,8192 -p "$SERVER_PID" -o "$OUT/perf-$test.data" \
        2>>"$OUT/perf.log" &
    PERF_PID=$!
    wait "$bench" || true
    kill -INT "$PERF_PID"; wait "$PERF_PID" || true
    PERF_PID=""
    cleanup
    # Whole reports to files first: head on a live pipe would kill perf with SIGPIPE.
    local data=$OUT/perf-$test.data
    perf report -i "$data" --stdio --no-children --sort dso -g none >"$data.dso.txt" 2>/dev/null || true
    perf report -i "$data" --stdio --no-children --sort symbol -g none >"$data.self.txt" 2>/dev/null || true
    perf report -i "$data" --stdio --children --sort symbol -g none >"$data.children.txt" 2>/dev/null || true
    echo; echo "== profile of mps during $test"; cat "$OUT/profile-$test.txt"
    echo; echo "-- by object:"; grep '%' "$data.dso.txt" | head -5 || true
    echo; echo "-- self time, top entries:"; grep '%' "$data.self.txt" | head -25 || true
    echo; echo "-- with children (user space):"; grep '%' "$data.children.txt" | grep -v '\[k\]' | head -30 || true
}
if [ "${PROFILE:-0}" = 1 ]; then
    command -v perf >/dev/null || DEBIAN_FRONTEND=noninteractive apt-get install -y -qq linux-perf >/dev/null
    for test in ws_fast ws_rate; do profile "$test" | tee -a "$OUT/profile.md"; done
fi
log "done; results in $OUT"

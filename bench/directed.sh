#!/usr/bin/env bash
# Durable directed messages on the embedded store: a fresh server, `wrk` with bench/directed.lua
# (each request a message to one of 1,000 users, answered once its commit is on disk), RUNS
# consecutive runs. Prints per run the accepted messages/s and the CPU they cost the server and
# its store writer thread (from /proc), then the group commit's figures from /metrics.
#
#   MPS=target/release/mps   the binary
#   RUNS=5 CONNS=64 SECONDS_PER_RUN=10 PORT=18080
#
# Needs wrk (Debian package `wrk`). Stops the server it started.
set -euo pipefail
cd "$(dirname "$0")/.."

MPS=${MPS:-target/release/mps}
RUNS=${RUNS:-5}
CONNS=${CONNS:-64}
SECONDS_PER_RUN=${SECONDS_PER_RUN:-10}
PORT=${PORT:-18080}
KEY=bench-key
URL=http://127.0.0.1:$PORT

command -v wrk >/dev/null || { echo "wrk is missing (apt-get install wrk)" >&2; exit 1; }
DATA=$(mktemp -d)
"$MPS" serve --listen "127.0.0.1:$PORT" --data-dir "$DATA" --admin-key "$KEY" --jwt-secret bench \
    >"$DATA/server.log" 2>&1 &
PID=$!
trap 'kill "$PID" 2>/dev/null; wait "$PID" 2>/dev/null; rm -rf "$DATA"' EXIT
for _ in $(seq 100); do
    curl -sf "$URL/healthz" >/dev/null && break
    sleep 0.1
done
WRITER=$(grep -l '^mps-store-write' /proc/"$PID"/task/*/comm | head -1 | xargs dirname)

ticks() { awk '{print $14 + $15}' "$1"; }
hz=$(getconf CLK_TCK)
echo "run  accepted/s  mean-latency  server-cpu-µs/msg  writer-cpu-µs/msg"
for run in $(seq "$RUNS"); do
    s0=$(ticks /proc/"$PID"/stat)
    w0=$(ticks "$WRITER"/stat)
    out=$(KEY=$KEY wrk -t1 -c"$CONNS" -d"${SECONDS_PER_RUN}s" -s bench/directed.lua "$URL" 2>&1)
    s1=$(ticks /proc/"$PID"/stat)
    w1=$(ticks "$WRITER"/stat)
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    awk -v run="$run" -v n="$n" -v s=$((s1 - s0)) -v w=$((w1 - w0)) -v hz="$hz" \
        -v rps="$(awk '/Requests\/sec/ {print $2}' <<<"$out")" \
        -v lat="$(awk '/Latency/ {print $2}' <<<"$out")" \
        'BEGIN { printf "%3d  %10.0f  %12s  %17.1f  %17.1f\n", run, rps, lat, s * 1e6 / hz / n, w * 1e6 / hz / n }'
done
curl -s -H "Authorization: Bearer $KEY" "$URL/metrics" |
    awk '/^mps_store_commit_(seconds|batch)_(sum|count)/ { v[$1] = $2 }
         END { printf "commits %d, writes per commit %.1f, ms per commit %.2f\n",
               v["mps_store_commit_batch_count"],
               v["mps_store_commit_batch_sum"] / v["mps_store_commit_batch_count"],
               1000 * v["mps_store_commit_seconds_sum"] / v["mps_store_commit_seconds_count"] }'

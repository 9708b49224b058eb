#!/usr/bin/env bash
# Ingestion throughput: messages from a pre-filled RabbitMQ queue or NATS JetStream stream to
# stored (fsync'd) and delivered to ten connected WebSocket users, several runs, medians.
#
#   bench/ingest.sh [RUNS] [N]        (default 5 runs of 20000 messages per source)
#
# Needs RabbitMQ on 127.0.0.1:5672 (guest/guest) and NATS with JetStream on 127.0.0.1:4222, or
# MPS_TEST_AMQP_URL / MPS_TEST_NATS_URL. Each run is the ignored test `ingest_throughput` in
# crates/mps/tests/ingest.rs, built in release mode: it fills a fresh queue, starts mps, and
# reads the first and last `created` of the records (stored/s) and the time the last push
# reached its user (delivered/s, from the first record).
set -euo pipefail
cd "$(dirname "$0")/.."
runs=${1:-5}
export INGEST_BENCH_N=${2:-20000}
nice cargo test --release -p mps --test ingest --no-run >/dev/null 2>&1

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

for source in rabbitmq nats; do
  out=$(mktemp)
  for _ in $(seq "$runs"); do
    INGEST_BENCH_SOURCE=$source cargo test --release -p mps --test ingest -q \
      -- --ignored --exact ingest_throughput --nocapture 2>/dev/null | grep '^ingest-bench' | tee -a "$out"
  done
  field() { grep -o "$1=[0-9.]*" "$out" | cut -d= -f2 | median; }
  echo "median source=$source runs=$runs n=$INGEST_BENCH_N stored_per_s=$(field stored_per_s)" \
       "delivered_per_s=$(field delivered_per_s) writes_per_commit=$(field writes_per_commit)"
  rm -f "$out"
done

#!/usr/bin/env bash
# Starts the local services the tests use (PostgreSQL, Redis, RabbitMQ, NATS) when one is not
# answering, with the commands this kind of machine documents, and waits until each answers.
set -uo pipefail

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

start() {
  local name=$1 port=$2; shift 2
  if answers "$port"; then
    echo "service $name: up on $port"
    return 0
  fi
  echo "service $name: not answering on $port, starting it"
  "$@" >/dev/null 2>&1 || true
  for _ in $(seq 1 60); do
    answers "$port" && { echo "service $name: up on $port"; return 0; }
    sleep 1
  done
  echo "service $name: still not answering on $port" >&2
  return 1
}

failed=0
start postgresql 5432 bash -c 'pg_ctlcluster --skip-systemctl-redirect $(ls /etc/postgresql) main start' || failed=1
start redis 6379 redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
  --dir /var/lib/redis --logfile /var/log/redis/ci.log || failed=1
start rabbitmq 5672 rabbitmq-server -detached || failed=1
start nats 4222 start-stop-daemon --start --oknodo --background --exec /usr/sbin/nats-server -- \
  -a 127.0.0.1 -p 4222 -js -sd /var/lib/nats-server -l /var/log/nats-server.log || failed=1
exit $failed

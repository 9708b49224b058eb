#!/usr/bin/env bash
# Usage: bench.sh LIB RUN_TAG PORT [extra server args...]
# Prints one CSV line: lib,tag,rss_before_kib,rss_idle_kib,kib_per_conn,cpu_ticks,us_per_delivery,deliver_wall_s,rss_after_pub_kib,client_cpu_ticks,srv_utime_ticks,srv_stime_ticks
set -u
LIB=$1; TAG=$2; PORT=$3; shift 3
N=${N:-10000}; MSGS=${MSGS:-200}; IV=${IV:-100}
cd "$(dirname "$0")"
B=target/release/wscompare
D=run; mkdir -p $D
rss() { awk '/VmRSS/{print $2}' /proc/$1/status; }
cpu() { awk '{print $14+$15}' /proc/$1/stat; }   # utime+stime, clock ticks (100/s)
ut() { awk '{print $14}' /proc/$1/stat; }
st() { awk '{print $15}' /proc/$1/stat; }
last() { tail -n1 $D/client_$TAG.log; }
field() { last | tr ' ' '\n' | awk -F= -v k=$1 '$1==k{print $2}'; }

nice -n 19 $B server --lib $LIB --port $PORT "$@" 2>$D/server_$TAG.log & SP=$!
sleep 1
R0=$(rss $SP)
nice -n 19 $B client --conns $N --addr 127.0.0.1:$PORT --src-ips 127.0.0.2..127.0.0.41 >$D/client_$TAG.log 2>&1 & CP=$!
for i in $(seq 1 240); do sleep 0.25; c=$(field connected); [ "${c:-0}" -ge $N ] && break; done
echo "[$TAG] connected=$(field connected) failed=$(field failed)" >&2
sleep 3
R1=$(rss $SP)
U0=$(ut $SP); S0=$(st $SP); T0=$(cpu $SP); C0=$(cpu $CP); W0=$(date +%s.%N)
curl -s -XPOST "http://127.0.0.1:$PORT/pub?n=$MSGS&interval_ms=$IV" >/dev/null
WANT=$((N*MSGS))
for i in $(seq 1 1200); do sleep 0.1; r=$(field recv); [ "${r:-0}" -ge $WANT ] && break; done
W1=$(date +%s.%N); U1=$(ut $SP); S1=$(st $SP); T1=$(cpu $SP); C1=$(cpu $CP)
R2=$(rss $SP)
echo "[$TAG] recv=$(field recv) want=$WANT" >&2
kill $CP; wait $CP 2>/dev/null
kill $SP; wait $SP 2>/dev/null
awk -v l=$LIB -v t=$TAG -v r0=$R0 -v r1=$R1 -v r2=$R2 -v n=$N -v t0=$T0 -v t1=$T1 -v w0=$W0 -v w1=$W1 -v d=$WANT -v c0=$C0 -v c1=$C1 -v u=$((U1-U0)) -v s=$((S1-S0)) \
 'BEGIN{printf "%s,%s,%d,%d,%.3f,%d,%.3f,%.2f,%d,%d,%d,%d\n", l,t,r0,r1,(r1-r0)/n,t1-t0,(t1-t0)*10000/d,w1-w0,r2,c1-c0,u,s}'

#!/usr/bin/env bash
# End-to-end figures of edgejoin through Mosquitto on loopback, printed as
# the table in docs/BENCHMARKS.md: binary size, start to READY, intake
# against a minimal counting subscriber at QoS 0 and 1 (same run, same
# broker), peak RSS, CPU and RSS slope at 1,000 msg/s. Needs mosquitto.
# Usage: scripts/bench.sh [steady-seconds (default 60)]
set -euo pipefail
cd "$(dirname "$0")/.."
STEADY=${1:-60}
cargo build --release --locked -q -p edgejoin -p sensors-sim
EJ=$PWD/target/release/edgejoin
SIM=$PWD/target/release/sensors-sim
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
work=$(mktemp -d)
chmod 777 "$work"
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$work"; }
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

port=$(free_port)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 100\n' "$port" > "$work/m.conf"
"$MOSQ" -c "$work/m.conf" >/dev/null 2>&1 & pids+=($!)
sleep 0.5
URL="mqtt://127.0.0.1:$port"

mport=$(free_port)
sed "s#state_dir = \"BENCH\"#state_dir = \"$work/state\"\nmetrics_addr = \"127.0.0.1:$mport\"#" config/scenarios/bench-gateway.toml > "$work/gw.toml"
printf '\n[source]\nurl = "%s"\n\n[upstream]\nurl = "%s"\ntopic_prefix = "gw/bench"\nspool = "256MiB"\n' "$URL" "$URL" >> "$work/gw.toml"

metric() { curl -s "http://127.0.0.1:$mport/metrics" 2>/dev/null | awk -v k="$1" '$1==k {print $2}'; }

# start to READY
t0=$(date +%s%N)
EDGEJOIN_LOG=info "$EJ" run --config "$work/gw.toml" 2> "$work/gw.log" & GW=$!; pids+=($GW)
until grep -q "subscribed; ready" "$work/gw.log"; do sleep 0.005; done
ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

N=$("$SIM" --config config/scenarios/bench.toml --record "$work/bench.jsonl" --quiet && wc -l < "$work/bench.jsonl")

intake() { # qos -> "counter_s gateway_s"
    local q=$1 before
    before=$(metric edgejoin_processed); before=${before:-0}
    "$SIM" count --broker "$URL" --topic 'bench/#' --n "$N" --qos "$q" --announce > "$work/count.out" & local CP=$!
    until grep -q ready "$work/count.out" 2>/dev/null; do sleep 0.01; done
    local s=$(date +%s%N)
    "$SIM" --config config/scenarios/bench.toml --broker "$URL" --fast --quiet --qos "$q" &
    local gw_done="" deadline=$(( $(date +%s) + 180 ))
    while [ -z "$gw_done" ] && [ "$(date +%s)" -lt "$deadline" ]; do
        local p=$(metric edgejoin_processed)
        if [ "${p:-0}" -ge $((before + N)) ]; then gw_done=$(( ($(date +%s%N) - s) / 1000000 )); fi
        sleep 0.02
    done
    gw_done=${gw_done:-timeout}
    wait $CP
    local c_ms=$(awk '/messages in/ {print $4*1000}' "$work/count.out")
    # the counter's own first-to-last time, and the gateway's publish-start-to-all-processed (upper bound)
    echo "$c_ms $gw_done"
}
sleep 2   # one stats interval so metrics are served
read c0 g0 < <(intake 0)
read c1 g1 < <(intake 1)
peak_kb=$(awk '/VmHWM/ {print $2}' /proc/$GW/status)

# steady 1,000 msg/s: CPU and RSS slope
cat > "$work/steady.toml" <<EOT
[scenario]
name = "steady"
duration = "${STEADY}s"
[[sensor]]
name = "a"
topic = "bench/{device}/a"
devices = 1000
device_prefix = "d"
every = "1s"
values = { v = [0.0, 100.0] }
EOT
cpu0=$(awk '{print $14+$15}' /proc/$GW/stat)
"$SIM" --config "$work/steady.toml" --broker "$URL" --quiet & SP=$!
rss_log=()
for i in $(seq 1 $((STEADY / 5))); do sleep 5; rss_log+=("$i $(awk '/VmRSS/ {print $2}' /proc/$GW/status)"); done
wait $SP || true
cpu1=$(awk '{print $14+$15}' /proc/$GW/stat)
hz=$(getconf CLK_TCK)
cpu_pct=$(python3 -c "print(round(($cpu1-$cpu0)/$hz/$STEADY*100,1))")
slope=$(printf '%s\n' "${rss_log[@]}" | python3 -c "
import sys
pts=[tuple(map(float,l.split())) for l in sys.stdin if l.strip()]
n=len(pts); mx=sum(p[0] for p in pts)/n; my=sum(p[1] for p in pts)/n
b=sum((p[0]-mx)*(p[1]-my) for p in pts)/max(1e-9,sum((p[0]-mx)**2 for p in pts))
print(round(b*12,1))")  # KB per minute (samples every 5 s)

size=$(stat -c %s "$EJ")
bound=$("$EJ" check-config --config "$work/gw.toml" | awk '/total/ {print $2, $3}')
cat <<EOT
| figure | value |
|---|---|
| stripped release binary (x86-64) | $(python3 -c "print(round($size/1e6,2))") MB |
| start to READY | $ready_ms ms |
| messages per intake run | $N |
| QoS 0: counting subscriber / edgejoin (ms to take all) | $c0 / $g0 → ratio $(python3 -c "print(round($c0/max(1,$g0),2))") |
| QoS 1: counting subscriber / edgejoin (ms to take all) | $c1 / $g1 → ratio $(python3 -c "print(round($c1/max(1,$g1),2))") |
| peak RSS (4 streams × 1000 keys × 256 slots; engine bound $bound) | $(python3 -c "print(round($peak_kb/1024,1))") MiB |
| CPU at 1,000 msg/s over ${STEADY} s | $cpu_pct % of one core |
| RSS slope at 1,000 msg/s | $slope KiB/min |
EOT

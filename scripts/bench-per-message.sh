#!/usr/bin/env bash
# What one message costs, edgejoin beside a subscriber that only counts, at
# steady rates (100, 1,000 and 10,000 msg/s by default), through Mosquitto on
# loopback, the bench config (4 streams × up to 1,000 devices, a window per
# stream, a tolerance join), durable delivery, QoS 1. Per rate, two passes of
# SECS seconds each, every process fresh:
#   1. CPU (user + system, all threads, from /proc/PID/stat) of edgejoin and
#      of the counter (`sensors-sim count`), µs per message, and their ratio;
#      bytes that reached the block device (/proc/PID/io write_bytes) against
#      the bytes edgejoin wrote to its log and spool
#      (edgejoin_state_written_bytes_total); fsyncs a second;
#   2. system calls per message, from `strace -c -f` attached to edgejoin
#      (a pass of its own: strace slows what it watches).
# Then idle CPU: a fresh gateway with the bench config (default stats
# interval) and no traffic for IDLE seconds (default 60).
# Prints markdown tables. Needs mosquitto, strace, python3, curl, GNU time.
# Usage: scripts/bench-per-message.sh [secs (default 20)] [rates (default "100 1000 10000")]
set -euo pipefail
cd "$(dirname "$0")/.."
SECS=${1:-20}
RATES=${2:-"100 1000 10000"}
cargo build --release --locked -q -p edgejoin -p sensors-sim
EJ=${EDGEJOIN_BIN:-$PWD/target/release/edgejoin}
SIM=$PWD/target/release/sensors-sim
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
command -v strace >/dev/null || { echo "needs strace" >&2; exit 1; }
work=$(mktemp -d)
chmod 777 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
say() { echo "bench: $*" >&2; }
hz=$(getconf CLK_TCK)
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
io_field() { awk -v k="$2:" '$1==k {print $2}' "/proc/$1/io"; }

port=$(free_port)
# a broker window large enough for 10,000 msg/s with group commit (docs/SERVICE.md)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n' "$port" > "$work/m.conf"
"$MOSQ" -c "$work/m.conf" >/dev/null 2>&1 & pids+=($!)
sleep 0.5
URL="mqtt://127.0.0.1:$port"

# a steady scenario at `rate` msg/s: 4 streams × `devices`, each reading every `every_ms`
scenario() {
    local rate=$1 devices every_ms
    devices=$(( rate >= 1000 ? 1000 : rate ))
    every_ms=$(( 4 * devices * 1000 / rate ))
    {
        printf '[scenario]\nname = "steady-%s"\nduration = "%ss"\n' "$rate" "$SECS"
        for s in a b c d; do
            printf '[[sensor]]\nname = "%s"\ntopic = "bench/{device}/%s"\ndevices = %s\ndevice_prefix = "d"\nevery = "%sms"\njitter = 0.1\nvalues = { v = [0.0, 100.0] }\n' \
                "$s" "$s" "$devices" "$every_ms"
        done
    } > "$work/steady-$rate.toml"
}

gateway() { # $1 = label, $2 = extra sed edit of the config; starts a fresh gateway, prints "pid metrics_port"
    local mport; mport=$(free_port)
    sed -e "s#state_dir = \"BENCH\"#state_dir = \"$work/state-$1\"\nmetrics_addr = \"127.0.0.1:$mport\"#" \
        -e "${2:-}" config/scenarios/bench-gateway.toml > "$work/gw-$1.toml"
    printf '\n[source]\nurl = "%s"\nclient_id = "bench-in-%s"\n\n[upstream]\nurl = "%s"\nclient_id = "bench-out-%s"\ntopic_prefix = "gw/bench"\nspool = "256MiB"\n' \
        "$URL" "$1" "$URL" "$1" >> "$work/gw-$1.toml"
    EDGEJOIN_LOG=warn "$EJ" run --config "$work/gw-$1.toml" 2> "$work/gw-$1.log" & local pid=$!
    pids+=($pid)
    until curl -s "http://127.0.0.1:$mport/metrics" >/dev/null 2>&1; do sleep 0.05; done
    sleep 1
    echo "$pid $mport"
}
metric() { curl -s "http://127.0.0.1:$1/metrics" | awk -v k="$2" '$1==k {print $2}'; }
until_processed() { # $1 = port, $2 = count
    local deadline=$(( $(date +%s) + 60 ))
    while [ "$(date +%s)" -lt "$deadline" ]; do
        local p; p=$(metric "$1" edgejoin_processed_total); p=${p%.*}
        [ "${p:-0}" -ge "$2" ] && return 0
        sleep 0.2
    done
    say "gateway processed ${p:-0} of $2"
}

rows=()
for rate in $RATES; do
    scenario "$rate"
    n=$("$SIM" --config "$work/steady-$rate.toml" --start 2026-01-05T08:00:00Z --record "$work/rec.jsonl" --quiet && wc -l < "$work/rec.jsonl")

    # pass 1: CPU, block-device bytes, fsyncs
    read -r gw mport < <(gateway "cpu-$rate")
    /usr/bin/time -f "%U %S" -o "$work/counter.time" "$SIM" count --broker "$URL" --topic 'bench/#' --n "$n" --qos 1 --announce > "$work/count.out" & cp=$!
    until grep -q ready "$work/count.out" 2>/dev/null; do sleep 0.01; done
    c0=$(cpu_ticks "$gw"); w0=$(io_field "$gw" write_bytes); s0=$(metric "$mport" edgejoin_state_written_bytes_total)
    k0=$(metric "$mport" edgejoin_commits_total)
    t0=$(date +%s.%N)
    "$SIM" --config "$work/steady-$rate.toml" --broker "$URL" --quiet --qos 1
    wait "$cp" || say "counter failed"
    until_processed "$mport" "$n"
    sleep 1.2   # one stats interval: the byte counter is published with the stats
    t1=$(date +%s.%N)
    c1=$(cpu_ticks "$gw"); w1=$(io_field "$gw" write_bytes); s1=$(metric "$mport" edgejoin_state_written_bytes_total)
    k1=$(metric "$mport" edgejoin_commits_total)
    kill "$gw"; wait "$gw" 2>/dev/null || true
    read -r cu cs < "$work/counter.time"

    # pass 2: system calls
    read -r gw mport < <(gateway "strace-$rate")
    "$SIM" count --broker "$URL" --topic 'bench/#' --n "$n" --qos 1 --announce > "$work/count.out" & cp=$!
    until grep -q ready "$work/count.out" 2>/dev/null; do sleep 0.01; done
    strace -c -f -p "$gw" -o "$work/strace-$rate.txt" 2>/dev/null & st=$!
    sleep 0.5
    "$SIM" --config "$work/steady-$rate.toml" --broker "$URL" --quiet --qos 1
    wait "$cp" || true
    until_processed "$mport" "$n"
    kill -INT "$st"; wait "$st" 2>/dev/null || true
    kill "$gw"; wait "$gw" 2>/dev/null || true

    rows+=("$(python3 - "$work/strace-$rate.txt" <<EOP
import sys
calls, syncs = 0, 0
for line in open(sys.argv[1]):
    f = line.split()
    if len(f) >= 5 and f[0][0].isdigit() and f[-1] not in ("total",):
        c = int(f[3])
        calls += c
        if f[-1] in ("fdatasync", "fsync"):
            syncs += c
secs = $t1 - $t0
n = $n
ej = ($c1 - $c0) / $hz * 1e6 / n
ct = ($cu + $cs) * 1e6 / n
blk = ($w1 - $w0) / n
logged = (float("${s1:-0}") - float("${s0:-0}")) / n
commits = (float("${k1:-0}") - float("${k0:-0}")) / secs
print(f"| $rate | {n} | {ej:.1f} | {ct:.1f} | {ej / max(ct, 1e-9):.1f}× | {calls / n:.1f} | {blk:.0f} | {logged:.0f} | {blk / max(logged, 1e-9):.2f}× | {commits:.0f} | {syncs / secs:.0f} |")
EOP
)")
    say "rate $rate done"
done

cat <<EOT
| msg/s | messages | edgejoin CPU µs/msg | counter CPU µs/msg | ratio | edgejoin syscalls/msg | block-device bytes/msg | logged bytes/msg | ratio | group commits/s | fsyncs/s (strace) |
|---|---|---|---|---|---|---|---|---|---|---|
$(printf '%s\n' "${rows[@]}")
EOT

# idle: no traffic, the default stats interval
IDLE=${IDLE:-60}
read -r gw mport < <(gateway idle '/stats_interval/d')
c0=$(cpu_ticks "$gw"); sleep "$IDLE"; c1=$(cpu_ticks "$gw")
kill "$gw"; wait "$gw" 2>/dev/null || true
echo
echo "idle (bench config, default stats interval 10 s): $(python3 -c "print(round(($c1 - $c0) / $hz / $IDLE * 100, 3))") % of a core over $IDLE s ($((c1 - c0)) clock ticks of 1/$hz s)"

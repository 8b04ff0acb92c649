#!/usr/bin/env bash
# End-to-end figures of edgejoin through Mosquitto on loopback, printed as
# the table in docs/BENCHMARKS.md:
#   - stripped binary size, start to READY;
#   - intake at QoS 0 and 1 against a minimal counting subscriber on the same
#     broker, two ways (see `round` below): live behind a fast publisher, and
#     draining a backlog; edgejoin's time ends with the batch that completed
#     the N messages (its `edgejoin_last_processed_timestamp_seconds` gauge). ROUNDS
#     rounds each, medians;
#   - result latency (broker delivery → publish upstream, which excludes the
#     watermark's hold) while the same N messages come at half the measured
#     QoS 1 intake rate, from the `edgejoin_result_latency_seconds` histogram;
#   - peak RSS with 4 streams × 1000 keys × 256 slots after all of the above;
#   - CPU and RSS slope at 1,000 msg/s over STEADY seconds.
#   - then the per-message table (scripts/bench-per-message.sh): CPU, system
#     calls, block-device bytes and fsyncs per message at 100, 1,000 and
#     10,000 msg/s beside a counting subscriber, and idle CPU.
# Needs mosquitto, curl, python3, strace, GNU time.
# Usage: scripts/bench.sh [steady-seconds (default 600)]   (ROUNDS=3 by default;
#        MODES=drain INTAKE_ONLY=1: the intake rounds of those modes only, then stop
#        (QOS=1: of that QoS only);
#        GATEWAY_EXTRA='commit_delay = "0s"': more lines for the gateway's [gateway] table;
#        EDGEJOIN_LOG=edgejoin=debug KEEP_LOG=FILE: the gateway's log, kept as FILE;
#        SMAPS=FILE: the gateway's /proc/PID/smaps after the intake rounds, as FILE)
set -euo pipefail
cd "$(dirname "$0")/.."
STEADY=${1:-600}
ROUNDS=${ROUNDS:-3}
cargo build --release --locked -q -p edgejoin -p sensors-sim
EJ=${EDGEJOIN_BIN:-$PWD/target/release/edgejoin}
SIM=$PWD/target/release/sensors-sim
MOSQ=$(command -v mosquitto || echo /usr/sbin/mosquitto)
[ -x "$MOSQ" ] || { echo "bench: mosquitto not found (apt-get install mosquitto)" >&2; exit 1; }
for t in curl python3 strace; do command -v "$t" >/dev/null || { echo "bench: $t not found" >&2; exit 1; }; done
work=$(mktemp -d)
chmod 777 "$work"
pids=()
cleanup() {
    for p in "${pids[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    if [ -n "${KEEP_LOG:-}" ]; then cp "$work/gw.log" "$KEEP_LOG"; fi
    rm -rf "$work"
}
trap cleanup EXIT
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_us() { echo $(( $(date +%s%N) / 1000 )); }
say() { echo "bench: $*" >&2; }

port=$(free_port)
# the broker's QoS 1 in-flight window bounds durable intake (window / commit time, docs/SERVICE.md)
printf 'listener %s 127.0.0.1\nallow_anonymous true\nmax_queued_messages 1000000\nmax_inflight_messages 1000\n' "$port" > "$work/m.conf"
"$MOSQ" -c "$work/m.conf" >/dev/null 2>&1 & pids+=($!)
sleep 0.5
URL="mqtt://127.0.0.1:$port"

mport=$(free_port)
# GATEWAY_EXTRA goes in as given (awk, not a sed replacement: '#', '&' and '/' stay literal)
awk -v dir="$work/state" -v maddr="127.0.0.1:$mport" -v extra="${GATEWAY_EXTRA:-}" '
    $0 == "state_dir = \"BENCH\"" {
        print "state_dir = \"" dir "\""; print "metrics_addr = \"" maddr "\""
        if (extra != "") print extra
        next
    }
    { print }' config/scenarios/bench-gateway.toml > "$work/gw.toml"
printf '\n[source]\nurl = "%s"\n\n[upstream]\nurl = "%s"\ntopic_prefix = "gw/bench"\nspool = "256MiB"\n' "$URL" "$URL" >> "$work/gw.toml"

metrics() { curl -s "http://127.0.0.1:$mport/metrics" 2>/dev/null || true; }
metric() { metrics | awk -v k="$1" '$1==k {print $2}'; }

# start to READY
t0=$(date +%s%N)
EDGEJOIN_LOG=${EDGEJOIN_LOG:-info} "$EJ" run --config "$work/gw.toml" 2> "$work/gw.log" & GW=$!; pids+=($GW)
until grep -q "subscribed; ready" "$work/gw.log"; do sleep 0.002; done
ready_ms=$(( ($(date +%s%N) - t0) / 1000000 ))

N=$("$SIM" --config config/scenarios/bench.toml --record "$work/bench.jsonl" --quiet && wc -l < "$work/bench.jsonl")
# every publication of the scenario starts a day after the previous one, so that each is new
# data for the gateway (the same timestamps again would all be late)
echo 0 > "$work/day"   # a file: rounds run in subshells
fresh() {
    local day=$(( $(cat "$work/day") + 1 )); echo "$day" > "$work/day"
    python3 -c "import datetime as d; print((d.datetime(2026,1,5,8,tzinfo=d.timezone.utc)+d.timedelta(days=$day)).isoformat())"
}
sleep 1.5   # one stats interval, so metrics are served

# waits for the counter, at most 120 s: one short of N (a QoS 0 message the
# broker dropped) must not hang the run; round() says so
wait_counter() {
    local i
    # every 100 ms: its time comes from its own last message, and a tighter poll
    # (a fork of sleep each time) only takes CPU from what is measured
    for i in $(seq 1 1200); do kill -0 "$1" 2>/dev/null || break; sleep 0.1; done
    kill "$1" 2>/dev/null || true
    wait "$1" || true
}

# one intake round: $1 = drain | live, $2 = QoS; prints "counter_ms gateway_ms"
#   drain: both subscribers paused while the N messages are published, then
#          resumed one after the other, each timed from its resume to its last
#          message: how fast each takes a backlog (capacity);
#   live:  both subscribed while the simulator publishes as fast as the broker
#          takes, each timed from the start of publishing to its last message
#          (sustained intake behind a fast publisher).
round() {
    local mode=$1 q=$2 before
    before=$(metric edgejoin_processed_total); before=${before:-0}
    "$SIM" count --broker "$URL" --topic 'bench/#' --n "$N" --qos "$q" --announce > "$work/count.out" & local CP=$!
    until grep -q ready "$work/count.out" 2>/dev/null; do sleep 0.01; done
    local s s2
    if [ "$mode" = drain ]; then
        kill -STOP "$CP" "$GW"
        "$SIM" --config config/scenarios/bench.toml --start "$(fresh)" --broker "$URL" --fast --quiet --qos "$q"
        sleep 0.5
        s=$(now_us)
        kill -CONT "$CP"
        wait_counter "$CP"
        s2=$(now_us)
        kill -CONT "$GW"
    else
        s=$(now_us); s2=$s
        "$SIM" --config config/scenarios/bench.toml --start "$(fresh)" --broker "$URL" --fast --quiet --qos "$q"
        wait_counter "$CP"
    fi
    local c_last=$(awk '/^last_message_unix_us/ {print $2}' "$work/count.out")
    local c_got=$(awk '/messages in/ {print $1}' "$work/count.out")
    local c_ms=$(( (c_last - s) / 1000 ))
    # a counter short of N has no last message to time: its round is left out of the median
    [ "$c_got" = "$N" ] || { say "counter took ${c_got:-none} of $N ($mode, QoS $q): round left out"; c_ms=-; }
    # edgejoin's time comes from its last-processed gauge, so the poll can be slow: at
    # 50 ms its curl, awk and the gateway's rendering of /metrics took ~20 % of this
    # 2-core machine while the drain was measured (perf, session 15)
    local deadline=$(( $(date +%s) + 120 )) p=0
    while [ "$(date +%s)" -lt "$deadline" ]; do
        sleep 0.25
        p=$(metric edgejoin_processed_total); p=${p:-0}
        [ "$p" -ge $((before + N)) ] && break
    done
    [ "$p" -ge $((before + N)) ] || say "gateway took $((p - before)) of $N ($mode, QoS $q)"
    local g_last=$(metric edgejoin_last_processed_timestamp_seconds | awk '{printf "%.0f", $1 * 1000}')
    # a drain's results wait in the spool while the intake is behind (docs/SERVICE.md,
    # "Backlogs"): when the last went upstream, as the spool-depth gauge says it (rendered at
    # each stats interval, 1 s here: that coarse), also so the next round starts clean
    local u_ms=-
    # (not after a short round: its time would be the wait for the missing messages)
    if [ "$mode" = drain ] && [ "$p" -ge $((before + N)) ]; then
        for _ in $(seq 1 600); do
            [ "$(metric edgejoin_spool_depth)" = 0 ] && { u_ms=$(( ($(now_us) - s2) / 1000 )); break; }
            sleep 0.1
        done
    fi
    echo "$c_ms $(( g_last - s2 / 1000 )) $u_ms"
}
median() { python3 -c "import sys,statistics; print(statistics.median(float(x) for x in sys.argv[1:]))" "$@"; }

declare -A C G U
for mode in ${MODES:-live drain}; do
    for q in ${QOS:-0 1}; do
        cs=(); gs=(); us=()
        for r in $(seq 1 "$ROUNDS"); do
            read c g u < <(round "$mode" "$q")
            say "$mode QoS $q round $r: counter $c ms, edgejoin $g ms$([ "$u" = - ] || echo ", its results all upstream at $u ms"), peak RSS $(awk '/VmHWM/ {print $2}' /proc/$GW/status) kB"
            [ "$c" = - ] || cs+=("$c")
            gs+=("$g")
            [ "$u" = - ] || us+=("$u")
        done
        [ ${#cs[@]} -gt 0 ] || { say "no round of $mode QoS $q had a whole counter"; exit 1; }
        C[$mode$q]=$(median "${cs[@]}"); G[$mode$q]=$(median "${gs[@]}")
        U[$mode$q]=-; [ ${#us[@]} -eq 0 ] || U[$mode$q]=$(median "${us[@]}")
    done
done
if [ -n "${INTAKE_ONLY:-}" ]; then   # a quick look at intake alone (e.g. MODES=drain INTAKE_ONLY=1)
    for k in "${!C[@]}"; do echo "$k: counter ${C[$k]} ms, edgejoin ${G[$k]} ms, ratio $(python3 -c "print(round(${C[$k]} / ${G[$k]}, 3))"), results all upstream at ${U[$k]} ms"; done
    echo "edgejoin peak RSS so far: $(awk '/VmHWM/ {print $2}' /proc/$GW/status) kB"
    [ -z "${SMAPS:-}" ] || cat /proc/$GW/smaps > "$SMAPS"
    exit 0
fi
drain_rate=$(python3 -c "print(int($N / (${G[drain1]} / 1000)))")
live_rate=$(python3 -c "print(int($N / (${G[live1]} / 1000)))")

# latency at half the highest rate measured end to end (the live QoS 1 round, where a
# publisher going as fast as it can set the pace and edgejoin kept up): the same messages, paced
half=$(( live_rate / 2 ))
# the drains' results first: a latency run behind the uplink's backlog times the backlog
spool_empty() {   # within 60 s; the gauge is rendered at each stats interval
    for _ in $(seq 1 600); do
        [ "$(metric edgejoin_spool_depth)" = 0 ] && return 0
        sleep 0.1
    done
    say "the spool did not empty within 60 s"
}
spool_empty; sleep 1.5; spool_empty
metrics > "$work/lat0.txt"
p0=$(awk '$1=="edgejoin_processed_total" {print $2}' "$work/lat0.txt")
l0=$(now_us)
"$SIM" --config config/scenarios/bench.toml --start "$(fresh)" --broker "$URL" --rate "$half" --quiet --qos 1
l1=$(now_us)
sleep 1.5    # one stats interval
metrics > "$work/lat1.txt"
p1=$(awk '$1=="edgejoin_processed_total" {print $2}' "$work/lat1.txt")
cat > "$work/q.py" <<'EOP'
# latency quantiles (µs) from two Prometheus snapshots of the result latency histogram
import sys, re
def buckets(f):
    b = {}
    for l in open(f):
        m = re.match(r'edgejoin_result_latency_seconds_bucket\{le="([^"]+)"\} (\d+)', l)
        if m:
            b[float(m.group(1)) if m.group(1) != "+Inf" else float("inf")] = int(m.group(2))
    return b
a, b = buckets(sys.argv[1]), buckets(sys.argv[2])
les = sorted(b)
cum = [b[l] - a.get(l, 0) for l in les]
n = cum[-1]
def q(x):
    rank, prev, lo = x * n, 0, 0.0
    for le, c in zip(les, cum):
        if c >= rank and c > prev:
            if le == float("inf"):
                return lo * 1e6
            return (lo + (le - lo) * (rank - prev) / (c - prev)) * 1e6
        prev, lo = c, le
    return float("nan")
print(n, round(q(0.5)), round(q(0.9)), round(q(0.99)))
EOP
read lat_n p50 p90 p99 < <(python3 "$work/q.py" "$work/lat0.txt" "$work/lat1.txt")
lat_rate=$(( (p1 - p0) * 1000000 / (l1 - l0) ))

# the same latency run against variants of the config, each in a gateway of its own:
# $1 = label, $2 = python editing the config text `t` (what the variant changes)
variant_latency() {
    local label=$1 vport; vport=$(free_port)
    python3 - "$work/gw.toml" "$work/v-$label.toml" "$label" "$vport" "$work/state-$label" <<EOP
import sys, re
t = open(sys.argv[1]).read()
t = t.replace('id = "bench"', 'id = "bench-%s"' % sys.argv[3])
t = re.sub(r'metrics_addr = "[^"]*"', 'metrics_addr = "127.0.0.1:%s"' % sys.argv[4], t)
t = re.sub(r'state_dir = "[^"]*"', 'state_dir = "%s"' % sys.argv[5], t)
$2
open(sys.argv[2], "w").write(t)
EOP
    EDGEJOIN_LOG=info "$EJ" run --config "$work/v-$label.toml" 2> "$work/v-$label.log" & local VG=$!
    until grep -q "subscribed; ready" "$work/v-$label.log"; do sleep 0.01; done
    sleep 1.5
    curl -s "http://127.0.0.1:$vport/metrics" > "$work/v0.txt"
    "$SIM" --config config/scenarios/bench.toml --start "$(fresh)" --broker "$URL" --rate "$half" --quiet --qos 1
    sleep 1.5
    curl -s "http://127.0.0.1:$vport/metrics" > "$work/v1.txt"
    kill "$VG"; wait "$VG" || true
    python3 "$work/q.py" "$work/v0.txt" "$work/v1.txt"
}
NOWIN='t = "\n[[".join(p for p in t.split("\n[[") if not p.startswith("window]]"))'
FAST='t = t.replace("[gateway]\n", "[gateway]\ndelivery = \"fast\"\n", 1)'

peak_kb=$(awk '/VmHWM/ {print $2}' /proc/$GW/status)
# SMAPS=FILE: the gateway's memory map after the rounds, for finding what is resident
[ -z "${SMAPS:-}" ] || cat /proc/$GW/smaps > "$SMAPS"

# steady 1,000 msg/s: the 4 streams × 1000 devices, a reading every 4 s each; CPU and RSS slope
cat > "$work/steady.toml" <<EOT
[scenario]
name = "steady"
duration = "${STEADY}s"
$(for s in a b c d; do printf '[[sensor]]\nname = "%s"\ntopic = "bench/{device}/%s"\ndevices = 1000\ndevice_prefix = "d"\nevery = "4s"\njitter = 0.1\nvalues = { v = [0.0, 100.0] }\n' $s $s; done)
EOT
say "steady 1,000 msg/s for ${STEADY} s"
cpu0=$(awk '{print $14+$15}' /proc/$GW/stat)
"$SIM" --config "$work/steady.toml" --broker "$URL" --quiet & SP=$!
rss_log=()
step=$(( STEADY >= 60 ? 10 : 2 ))
for i in $(seq 1 $((STEADY / step))); do sleep "$step"; rss_log+=("$((i * step)) $(awk '/VmRSS/ {print $2}' /proc/$GW/status)"); done
wait $SP || true
cpu1=$(awk '{print $14+$15}' /proc/$GW/stat)
hz=$(getconf CLK_TCK)
cpu_pct=$(python3 -c "print(round(($cpu1-$cpu0)/$hz/$STEADY*100,1))")
read slope rss_first rss_last < <(printf '%s\n' "${rss_log[@]}" | python3 -c "
import sys
pts=[tuple(map(float,l.split())) for l in sys.stdin if l.strip()]
n=len(pts); mx=sum(p[0] for p in pts)/n; my=sum(p[1] for p in pts)/n
b=sum((p[0]-mx)*(p[1]-my) for p in pts)/max(1e-9,sum((p[0]-mx)**2 for p in pts))
print(round(b*60,1), round(pts[0][1]/1024,1), round(pts[-1][1]/1024,1))")  # KiB per minute

# the whole run's peak, the steady phase included (its 4,000 devices touch more engine state)
end_peak_kb=$(awk '/VmHWM/ {print $2}' /proc/$GW/status)
# the latency variants, each alone with the broker (the main gateway is done)
kill "$GW"; wait "$GW" 2>/dev/null || true
read jn_n jn50 jn90 jn99 < <(variant_latency join "$NOWIN")
read jf_n jf50 jf90 jf99 < <(variant_latency joinfast "$NOWIN
$FAST")

size=$(stat -c %s "$EJ")
bound=$("$EJ" check-config --config "$work/gw.toml" | awk '/total/ {print $2, $3}')
ratio() { python3 -c "print(round($1/max(1,$2),3))"; }
cat <<EOT
| figure | value |
|---|---|
| stripped release binary (x86-64) | $(python3 -c "print(round($size/1e6,2))") MB |
| start to READY | $ready_ms ms |
| messages per intake round | $N (medians of $ROUNDS rounds) |
| live QoS 0: counting subscriber / edgejoin, ms to the last message | ${C[live0]} / ${G[live0]} → ratio $(ratio "${C[live0]}" "${G[live0]}") |
| live QoS 1 | ${C[live1]} / ${G[live1]} → ratio $(ratio "${C[live1]}" "${G[live1]}") |
| drain QoS 0: counting subscriber / edgejoin, ms to take the backlog | ${C[drain0]} / ${G[drain0]} → ratio $(ratio "${C[drain0]}" "${G[drain0]}") |
| drain QoS 1 | ${C[drain1]} / ${G[drain1]} → ratio $(ratio "${C[drain1]}" "${G[drain1]}") |
| drain: the backlog's results all upstream (spool-depth gauge at 0; 1 s resolution), ms after edgejoin resumed, QoS 0 / 1 | ${U[drain0]} / ${U[drain1]} |
| edgejoin QoS 1 rates: live (publisher-bound) / drain | $live_rate / $drain_rate msg/s |
| result latency at $lat_rate msg/s (half the live rate), $lat_n results | p50 $p50 µs, p90 $p90 µs, p99 $p99 µs |
| the same without the two windows (join results only), $jn_n results | p50 $jn50 µs, p90 $jn90 µs, p99 $jn99 µs |
| the same, join only, \`delivery = "fast"\` (no write-ahead log), $jf_n results | p50 $jf50 µs, p90 $jf90 µs, p99 $jf99 µs |
| peak RSS (4 streams × 1000 keys × 256 slots; engine bound $bound) | $(python3 -c "print(round($peak_kb/1024,1))") MiB |
| peak RSS at the end, after the steady phase | $(python3 -c "print(round($end_peak_kb/1024,2))") MiB |
| CPU at 1,000 msg/s over ${STEADY} s | $cpu_pct % of one core |
| RSS at 1,000 msg/s: first / last sample, slope | $rss_first MiB / $rss_last MiB, $slope KiB/min |
EOT

echo
PER_MESSAGE_SECS=${PER_MESSAGE_SECS:-20}
[ "$PER_MESSAGE_SECS" = 0 ] || scripts/bench-per-message.sh "$PER_MESSAGE_SECS"

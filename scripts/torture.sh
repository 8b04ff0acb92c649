#!/usr/bin/env bash
# The robustness campaign (docs/RELIABILITY.md), part by part; each part has a
# CI-sized variant in the test suite.
#   scripts/torture.sh fuzz [seconds per target (default 600)] [targets…]
#       libFuzzer (cargo-fuzz, nightly) on every reader of untrusted input:
#       payload decoders and the pipeline after them, topic patterns, the
#       config, recordings, checkpoint, write-ahead log and spool files
#       (edgejoin::fuzz). Prints executions and crashes per target; the corpus
#       grows in fuzz/corpus/<target> (commit it); a crash is saved under
#       fuzz/artifacts/<target>/ — add it to the corpus, fix it, and
#       gateway/tests/fuzz_smoke.rs keeps it fixed.
#       Needs: rustup toolchain nightly, cargo install cargo-fuzz.
#   scripts/torture.sh disk [cycles (default 10)] [messages per cycle (default 20000)]
#       The live gateway on a 4 MiB tmpfs (a user namespace: util-linux unshare)
#       filled to the last byte, cycle after cycle, while messages arrive: each
#       time it pauses (said, counted), takes nothing it cannot log (the broker
#       keeps it) and resumes without loss once there is room. Needs mosquitto.
#       CI runs one cycle of 3,000 (tests/tests/faults.rs).
#   scripts/torture.sh kill [kills (default 50)] [messages (default 60000)]
#       The live gateway SIGKILLed at random moments (seeded) during steady traffic with
#       windows and joins open and a checkpoint every 150 ms, restarted each time; in the end
#       its results must equal one uninterrupted run over the same input (none missing, none
#       spurious, re-sent rows with the same id). Needs mosquitto. CI runs 5 kills over 12,000.
#   scripts/torture.sh outage [seconds (default 600)]
#       Long outages on real Mosquitto (tests/tests/faults.rs, CI: 8 s each): the upstream down
#       while 1,000 results a second are produced, then back (every result, in order); a spool
#       too small for the outage (drops the oldest, counts each; capped at 10 s); the source
#       down while sensors hold their readings, then their backlog at once (nothing lost).
#   scripts/torture.sh floods [keys (default 1000000)] [topics (default 100000)]
#       Floods against the live gateway on real Mosquitto (tests/tests/floods.rs): that many new
#       keys on one stream and new topics on another, 1 MB payloads, 100,000-deep nesting,
#       NaN / ±Infinity / 1e400, timestamps in 2099, 1970, negative and 1e30, one device in 2099
#       among correct ones (device and corrected clocks), with good traffic on its own stream:
#       each attack counted by name, peak RSS against check-config's bound, the good results
#       exact. Needs mosquitto. CI runs 20,000 keys and 20,000 topics.
set -euo pipefail
cd "$(dirname "$0")/.."
part=${1:-}
case "$part" in
disk)
    EDGEJOIN_TORTURE_DISK_CYCLES=${2:-10} EDGEJOIN_TORTURE_DISK_MSGS=${3:-20000} \
        cargo test -q --release -p edgejoin-tests --test faults a_full_disk -- --nocapture 2>&1 \
        | grep -E "^full disk:|panicked|FAILED|test result" 
    ;;
kill)
    EDGEJOIN_TORTURE_KILLS=${2:-50} EDGEJOIN_TORTURE_KILL_MSGS=${3:-60000} \
        cargo test -q -p edgejoin-tests --test faults results_after_random_sigkills -- --nocapture 2>&1 \
        | grep -E "^sigkill:|panicked|FAILED|test result"
    ;;
floods)
    EDGEJOIN_TORTURE_FLOOD_KEYS=${2:-1000000} EDGEJOIN_TORTURE_FLOOD_TOPICS=${3:-100000} \
        cargo test -q --release -p edgejoin-tests --test floods -- --nocapture 2>&1 \
        | grep -E "^floods:|panicked|FAILED|test result"
    ;;
outage)
    EDGEJOIN_TORTURE_OUTAGE_SECS=${2:-600} \
        cargo test -q -p edgejoin-tests --test faults -- an_upstream_outage a_full_spool a_source_outage \
        --include-ignored --nocapture --test-threads 1 2>&1 | grep -E "^(upstream outage|full spool|source outage):|panicked|FAILED|test result"
    ;;
fuzz)
    secs=${2:-600}
    shift $(( $# >= 2 ? 2 : 1 ))
    targets=("$@")
    [ ${#targets[@]} -gt 0 ] || targets=(payload topic config replay checkpoint wal spool)
    command -v cargo-fuzz >/dev/null || { echo "torture: cargo install cargo-fuzz (and rustup toolchain install nightly)"; exit 1; }
    # seeds made by the gateway's own writers, then whatever the corpus holds
    EDGEJOIN_WRITE_SEEDS=1 EDGEJOIN_FUZZ_SMOKE=0 cargo test -q -p edgejoin --test fuzz_smoke >/dev/null
    (cd fuzz && cargo +nightly fuzz build -O >/dev/null 2>&1) || (cd fuzz && cargo +nightly fuzz build -O)
    printf '| target | seconds | executions | exec/s | crashes | corpus files |\n|---|---|---|---|---|---|\n'
    for t in "${targets[@]}"; do
        mkdir -p "fuzz/corpus/$t" "fuzz/artifacts/$t"
        log=$(mktemp)
        set +e
        (cd fuzz && cargo +nightly fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=1024 \
            -max_len=1048576 -timeout=10 -print_final_stats=1 -artifact_prefix="artifacts/$t/") >"$log" 2>&1
        rc=$?
        set -e
        execs=$(awk '/stat::number_of_executed_units/ {print $2}' "$log" | tail -1)
        crashes=$(ls "fuzz/artifacts/$t" | wc -l)
        files=$(ls "fuzz/corpus/$t" | wc -l)
        printf '| %s | %s | %s | %s | %s | %s |\n' "$t" "$secs" "${execs:-?}" "$(( ${execs:-0} / secs ))" "$crashes" "$files"
        [ "$rc" -eq 0 ] || { echo "torture: $t stopped (exit $rc): see fuzz/artifacts/$t/ and $log"; }
    done
    ;;
*)
    echo "usage: scripts/torture.sh fuzz [seconds per target] [targets…] | floods [keys] [topics] | disk [cycles] [messages per cycle] | kill [kills] [messages] | outage [seconds]"
    exit 2
    ;;
esac

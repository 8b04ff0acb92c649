#!/usr/bin/env bash
# Behaviour guard for refactors: replays every example (config/examples) and
# every simulator scenario (config/scenarios, recorded with a fixed seed)
# through `edgejoin replay --stats` and writes the results and counters to a
# folder, or compares them with a folder written earlier.
#
#   scripts/replay-identical.sh --save DIR      # before a change
#   scripts/replay-identical.sh --compare DIR   # after it: exit 1 on any difference
#
# Uses the release binaries (built here).
set -euo pipefail
cd "$(dirname "$0")/.."
mode="${1:-}"; dir="${2:-}"
if [ -z "$dir" ] || { [ "$mode" != "--save" ] && [ "$mode" != "--compare" ]; }; then
    echo "usage: $0 --save DIR | --compare DIR" >&2; exit 2
fi
cargo build --release --locked -q -p edgejoin -p sensors-sim
bin=target/release/edgejoin; sim=target/release/sensors-sim
out=$(mktemp -d); trap 'rm -rf "$out"' EXIT

for cfg in config/examples/*.toml; do
    name=$(basename "$cfg" .toml)
    "$bin" replay --config "$cfg" --input "config/examples/$name.jsonl" --output "$out/example-$name.jsonl" \
        --stats 2>"$out/example-$name.stats.json"
done
for sc in config/scenarios/*-gateway.toml; do
    name=$(basename "$sc" -gateway.toml)
    [ -f "config/scenarios/$name.toml" ] || continue
    "$sim" --config "config/scenarios/$name.toml" --seed 7 --duration 10m --start 2026-01-01T00:00:00Z --quiet --record "$out/rec-$name.jsonl"
    "$bin" replay --config "$sc" --input "$out/rec-$name.jsonl" --output "$out/scenario-$name.jsonl" \
        --stats 2>"$out/scenario-$name.stats.json"
done
rm -f "$out"/rec-*.jsonl

if [ "$mode" = "--save" ]; then
    mkdir -p "$dir"; cp "$out"/* "$dir"/
    echo "saved $(ls "$out" | wc -l) files to $dir"
else
    if diff -rq "$dir" "$out"; then
        echo "identical: $(ls "$out" | wc -l) result and counter files"
    else
        echo "replays differ from $dir" >&2; exit 1
    fi
fi

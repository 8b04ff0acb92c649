#!/usr/bin/env bash
# Builds edgejoin for Raspberry Pi OS — aarch64 (Pi 3/4/5, Zero 2 W on 64-bit)
# and armv7 hard-float (32-bit) — runs the engine's tests and a replay of every
# example under qemu-user (results byte-identical to x86-64's), and builds the
# stripped release binaries and, if cargo-deb is installed, the .deb packages.
# Needs: rustup targets, gcc-aarch64-linux-gnu, gcc-arm-linux-gnueabihf,
# qemu-user-static (see --install).
set -euo pipefail
cd "$(dirname "$0")/.."

# PI_CHECK_TARGETS narrows the targets (CI: aarch64 only, to stay within its time)
read -r -a TARGETS <<< "${PI_CHECK_TARGETS:-aarch64-unknown-linux-gnu armv7-unknown-linux-gnueabihf}"

if [ "${1:-}" = "--install" ]; then
    rustup target add "${TARGETS[@]}"
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get install -y -qq gcc-aarch64-linux-gnu gcc-arm-linux-gnueabihf \
        libc6-dev-arm64-cross libc6-dev-armhf-cross qemu-user-static >/dev/null
fi

qemu_for() {
    case "$1" in
        aarch64-*) echo "qemu-aarch64-static -L /usr/aarch64-linux-gnu" ;;
        armv7-*) echo "qemu-arm-static -L /usr/arm-linux-gnueabihf" ;;
    esac
}

# Targets whose test suites run under qemu (all by default; CI runs them for
# aarch64 only to stay within its time, and replays every example on both)
TEST_TARGETS=${PI_CHECK_TEST_TARGETS:-${TARGETS[*]}}

for t in "${TARGETS[@]}"; do
    log="target/pi-check-$t.log"
    mkdir -p target
    if [[ " $TEST_TARGETS " != *" $t "* ]]; then
        echo "== $t: tests not run here (PI_CHECK_TEST_TARGETS=$TEST_TARGETS)"
    else
    echo "== $t: engine tests under qemu"
    # the live-service tests need a broker and spawn binaries: they run natively (.ci/run)
    # PI_CHECK_TESTS=engine: the engine crate's tests only (CI); else also the gateway's engine-level suites
    if ! { cargo test --locked --target "$t" -p edgejoin-engine -q \
        && { [ "${PI_CHECK_TESTS:-all}" = engine ] \
            || cargo test --locked --target "$t" -p edgejoin --lib --test window_model --test join_model \
                --test checkpoint --test alloc --test skew_truth --test decode --test engine_state -q; }; } >"$log" 2>&1; then
        grep -E "FAILED|panicked|error" "$log" | head -20
        echo "$t: tests failed (full log: $log)"
        exit 1
    fi
    grep -E "^test result" "$log" | sed 's/^/   /'
    fi

    echo "== $t: release build"
    cargo build --locked --release --target "$t" -p edgejoin --bin edgejoin -q
    bin="target/$t/release/edgejoin"
    run=$(qemu_for "$t")

    echo "== $t: every example replayed under qemu, compared with the x86-64 results"
    for cfg in config/examples/*.toml; do
        name=$(basename "$cfg" .toml)
        $run "$bin" replay --config "$cfg" --input "config/examples/$name.jsonl" --output "target/$t/$name.out.jsonl"
        cmp -s "target/$t/$name.out.jsonl" "config/examples/$name.expected.jsonl" \
            || { echo "$t: $name differs from config/examples/$name.expected.jsonl"; exit 1; }
    done
    $run "$bin" check-config --config config/gateway.toml >/dev/null
    # the oldest C library it runs on, as docs/PI.md states it (Raspberry Pi OS 12 "Bookworm" has 2.36)
    glibc=$(objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)
    [ "$glibc" = "GLIBC_2.34" ] \
        || { echo "$t: needs $glibc, docs/PI.md says GLIBC_2.34: update the docs (supported OS) or the build"; exit 1; }
    echo "   needs glibc ≥ ${glibc#GLIBC_}"
    echo "   $(ls config/examples/*.toml | wc -l) examples identical; stripped binary $(stat -c %s "$bin") bytes"

    if command -v cargo-deb >/dev/null 2>&1; then
        cargo deb --locked -p edgejoin --target "$t" --no-build -q >/dev/null
        deb=$(ls -t target/$t/debian/*.deb | head -1)
        echo "   package $deb"
        dpkg-deb -c "$deb" | awk '{print "     " $6}'
    else
        echo "   cargo-deb not installed: no .deb (cargo install cargo-deb)"
    fi
done
echo "pi-check: OK"

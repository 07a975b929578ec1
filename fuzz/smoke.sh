#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 10): bash fuzz/smoke.sh [N] [TARGET...]
# Needs a nightly toolchain and cargo-fuzz; without them it prints "SKIPPED: ..." and exits 0.
# Exits non-zero if a target crashes (the input is left in fuzz/artifacts/TARGET/).
set -uo pipefail
cd "$(dirname "$0")"
secs="${1:-10}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(url response retry_after config wire)
fi
if ! cargo +nightly --version >/dev/null 2>&1; then
    echo "SKIPPED: no nightly toolchain (cargo +nightly)"
    exit 0
fi
if ! cargo +nightly fuzz --version >/dev/null 2>&1; then
    echo "SKIPPED: cargo-fuzz is not installed (cargo install cargo-fuzz)"
    exit 0
fi
cargo +nightly fuzz build || exit 1
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="$(mktemp)"
    cargo +nightly fuzz run "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs="$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')"
    if [ "$rc" -ne 0 ]; then
        failed=1
        echo "FAIL $t (exit $rc, execs ${execs:-?}); log follows"
        tail -n 60 "$log"
    else
        echo "ok   $t: ${execs:-?} execs in ${secs}s, corpus $(ls "corpus/$t" | wc -l) inputs"
    fi
    rm -f "$log"
done
exit "$failed"

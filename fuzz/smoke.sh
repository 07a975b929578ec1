#!/usr/bin/env bash
# Runs every fuzz target for N seconds (default 10): bash fuzz/smoke.sh [N] [TARGET...]
# Needs cargo-fuzz (`bash .ci/install-tools.sh` installs the pinned one); fails (exit 1) without it.
# Exits non-zero if a target crashes (the input is left in fuzz/artifacts/TARGET/).
#
# Toolchain: whatever rustup resolves (stable in CI; RUSTUP_TOOLCHAIN=nightly works too). cargo-fuzz
# passes nightly-only flags (-Zsanitizer=address among them); on stable RUSTC_BOOTSTRAP=1 lets rustc
# and cargo accept them. The stable x86_64 Linux toolchain ships the
# sanitizer runtimes (lib/rustlib/*/lib/librustc-stable_rt.asan.a), so the targets run with
# AddressSanitizer on stable, as on nightly; the build is checked for ASan instrumentation below so
# that a toolchain without it fails instead of fuzzing unsanitized.
set -uo pipefail
cd "$(dirname "$0")"
secs="${1:-10}"
shift || true
targets=("$@")
if [ "${#targets[@]}" -eq 0 ]; then
    targets=(url response retry_after config wire wire_backpressure)
fi
export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "FAILED: cargo-fuzz is not installed (bash .ci/install-tools.sh, or cargo install --locked cargo-fuzz)"
    exit 1
fi
echo "fuzz: $(rustc -V), $(cargo fuzz --version), sanitizer address"
cargo fuzz build --sanitizer address || { echo "FAILED: cargo fuzz build"; exit 1; }
triple="$(rustc -vV | sed -n 's/^host: //p')"
for t in "${targets[@]}"; do
    bin="target/$triple/release/$t"
    # grep -c reads all of nm's output (grep -q would end nm by SIGPIPE, a failure under pipefail).
    asan="$(nm "$bin" 2>/dev/null | grep -c __asan_report_load)"
    if [ "${asan:-0}" -eq 0 ]; then
        echo "FAILED: $bin is not instrumented with AddressSanitizer"
        exit 1
    fi
done
failed=0
for t in "${targets[@]}"; do
    mkdir -p "corpus/$t"
    log="$(mktemp)"
    cargo fuzz run --sanitizer address "$t" "corpus/$t" "seeds/$t" -- \
        -max_total_time="$secs" -print_final_stats=1 >"$log" 2>&1
    rc=$?
    execs="$(grep -m1 -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$')"
    if [ "$rc" -eq 0 ] && [ "${execs:-0}" -eq 0 ]; then
        failed=1
        echo "FAIL $t: exit 0 but no executed inputs reported; log follows"
        tail -n 60 "$log"
    elif [ "$rc" -ne 0 ]; then
        failed=1
        echo "FAIL $t (exit $rc, execs ${execs:-?}); log follows"
        tail -n 60 "$log"
    else
        echo "ok   $t: ${execs:-?} execs in ${secs}s, corpus $(ls "corpus/$t" | wc -l) inputs"
    fi
    rm -f "$log"
done
exit "$failed"

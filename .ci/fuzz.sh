#!/usr/bin/env bash
# Bounded fuzzing, run by .ci/run after the tests: builds the cargo-fuzz
# targets in fuzz/ (AddressSanitizer + libFuzzer) and runs each for
# FUZZ_SECONDS (default 30) from the committed seed corpus, so the whole
# step takes about 3 minutes plus the build. New corpus entries go to a
# scratch directory, never into the tree. Exits non-zero on a crash, a leak,
# a timeout or an out-of-memory; the input that did it is printed and kept
# in fuzz/artifacts/<target>/. docs/reliability.md says how to run
# longer.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds="${FUZZ_SECONDS:-30}"
targets=(frame_codec envelope session)

if ! cargo fuzz --version >/dev/null 2>&1; then
    cargo install cargo-fuzz --locked
fi
# cargo fuzz passes -Zsanitizer and other unstable flags to rustc; the only
# toolchain here is stable, which accepts them when told it is bootstrapping.
export RUSTC_BOOTSTRAP=1

cargo fuzz build
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for target in "${targets[@]}"; do
    mkdir -p "$work/$target"
    log="$work/$target.log"
    echo "fuzz: $target for ${seconds}s"
    if ! cargo fuzz run "$target" "$work/$target" "fuzz/corpus/$target" -- \
        -max_total_time="$seconds" -timeout=20 -rss_limit_mb=2048 \
        -print_final_stats=1 >"$log" 2>&1; then
        tail -n 80 "$log"
        echo "fuzz: $target FAILED; the input is in fuzz/artifacts/$target/" >&2
        exit 1
    fi
    grep -E '^stat::(number_of_executed_units|average_exec_per_sec|new_units_added|peak_rss_mb)' "$log" |
        sed "s/^/fuzz: $target /"
done

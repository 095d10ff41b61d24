#!/usr/bin/env bash
# Runs every fuzz target (or those named) for SECONDS each, starting from the seed
# corpus in fuzz/corpus/<target> without changing it. CI runs it for a few seconds per
# target (`./dev test` does, after the tests); a fuzzing session for minutes.
#   fuzz/run.sh SECONDS [TARGET...]
# Needs cargo-fuzz (installed by `./dev deps` where missing). A crash stops the run with
# the input under fuzz/artifacts/<target>/ and status 1.
set -euo pipefail
cd "$(dirname "$0")"
# cargo-fuzz passes nightly-only flags (-Zsanitizer=address and the like) to rustc. The
# machines this runs on have one toolchain, a stable one, and can fetch no other, so
# those flags are unlocked on it (the stable toolchain ships the sanitizer runtimes).
# Set MIRAGE_FUZZ_TOOLCHAIN=nightly to use a nightly toolchain instead.
export RUSTC_BOOTSTRAP=1
toolchain=()
[ -z "${MIRAGE_FUZZ_TOOLCHAIN:-}" ] || toolchain=("+$MIRAGE_FUZZ_TOOLCHAIN")
secs="${1:?usage: fuzz/run.sh SECONDS [TARGET...]}"; shift
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo "${toolchain[@]}" fuzz list)
# A smoke run (under a minute per target) builds unoptimized: it compiles in half
# the time (about 1 minute here, against 2) and checks overflows besides.
profile=()
[ "$secs" -ge 60 ] || profile=(--dev)
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
for t in "${targets[@]}"; do
  mkdir -p "$work/$t"
  # New inputs go to the first directory (a scratch one); the seeds are only read.
  out="$(cargo "${toolchain[@]}" fuzz run "${profile[@]}" "$t" "$work/$t" "corpus/$t" -- -max_total_time="$secs" 2>&1)" || {
    echo "$out" | tail -40 >&2
    echo "fuzz target $t failed; its input is in fuzz/artifacts/$t/" >&2
    exit 1
  }
  echo "fuzz $t: $(echo "$out" | grep -E '^Done' | tail -1)"
done

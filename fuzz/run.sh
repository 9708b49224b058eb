#!/usr/bin/env bash
# Builds every fuzz target and runs each for FUZZ_SECONDS seconds (default 20), starting from its
# seed corpus in fuzz/corpus/<target>. Fails on a crash, a panic or an input that hangs; the input
# is left in fuzz/artifacts/<target>/ and the command that replays it is printed.
#
# cargo-fuzz passes nightly-only flags to rustc; RUSTC_BOOTSTRAP=1 lets the stable toolchain
# take them. The build has no sanitizer (safe Rust: the fuzzers look for panics and broken
# invariants) and 16 codegen units, which builds several times faster on small machines.
#
#   fuzz/run.sh                  every target, 20 s each
#   FUZZ_SECONDS=300 fuzz/run.sh audience topic
set -euo pipefail
cd "$(dirname "$0")"
export RUSTC_BOOTSTRAP=1
seconds="${FUZZ_SECONDS:-20}"
build=(--sanitizer none --codegen-units 16)

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "cargo-fuzz is missing: cargo install cargo-fuzz --locked"
  if ! cargo install cargo-fuzz --locked; then
    echo "cargo-fuzz could not be installed" >&2
    [ "${CI:-}" = true ] && exit 1
    echo "skipping the fuzz targets" >&2
    exit 0
  fi
fi

echo "building the fuzz targets (cargo fuzz build ${build[*]})"
cargo fuzz build "${build[@]}"
if [ "$#" -gt 0 ]; then
  targets=("$@")
else
  mapfile -t targets < <(cargo fuzz list)
fi

# New inputs go to a scratch directory, so that the committed corpus only changes on purpose
# (docs/security.md, Fuzzing: keeping what a long run found).
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
for target in "${targets[@]}"; do
  echo "fuzzing $target for ${seconds}s"
  mkdir -p "$scratch/$target" "corpus/$target"
  if ! cargo fuzz run "${build[@]}" "$target" "$scratch/$target" "corpus/$target" -- \
    -max_total_time="$seconds" -timeout=10 -print_final_stats=1 2>"$scratch/$target.log"; then
    tail -n 60 "$scratch/$target.log" >&2
    echo "fuzz target $target failed; replay: (cd fuzz && RUSTC_BOOTSTRAP=1 cargo fuzz run ${build[*]} $target artifacts/$target/<file>)" >&2
    exit 1
  fi
  grep -E '^stat::number_of_executed_units|^Done' "$scratch/$target.log" || true
done
echo "fuzzing: no failure in ${#targets[@]} targets"

#!/usr/bin/env bash
# Fuzzes every format modula reads (fuzz/targets.h) with libFuzzer + ASan + UBSan (clang).
#   scripts/fuzz.sh [SECONDS] [TARGET...]   SECONDS per target (default 60), all targets by default
#   MODULA_FUZZ_JOBS=2 scripts/fuzz.sh ...   targets fuzzed at once (default: nproc)
#   scripts/fuzz.sh --save ...               also writes each target's minimised corpus back
#                                            to fuzz/corpus/<target>/ (the test suite replays it)
# Builds into build-fuzz/ (clang, every file instrumented). Each target starts from its
# fixture seeds and fuzz/corpus/<target>/; a crash leaves build-fuzz/crashes/<target>-*
# (reproduce: build-fuzz/fuzz/modula_fuzz_replay TARGET FILE) and fails the script.
# Prints per target: executions, corpus size, crashes; the same as JSON in
# build-fuzz/fuzz-report.json.
set -euo pipefail
cd "$(dirname "$0")/.."
SAVE=0
if [ "${1:-}" = "--save" ]; then SAVE=1; shift; fi
SECONDS_PER_TARGET=${1:-60}
shift || true
BUILD=${MODULA_FUZZ_BUILD_DIR:-build-fuzz}
scripts/setup.sh --fuzz
JOBS=${MODULA_FUZZ_JOBS:-$(nproc)}
if [ ! -f "$BUILD/build.ninja" ]; then
  cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O1 -gline-tables-only" \
    -DCMAKE_CXX_COMPILER=clang++ \
    -DMODULA_FUZZ=ON -DMODULA_UNITY=ON -DMODULA_BUILD_TESTS=OFF -DMODULA_BUILD_TOOLS=OFF -DMODULA_BUILD_PYTHON=OFF
fi
cmake --build "$BUILD" -j "$(nproc)" --target modula_fuzz modula_fuzz_replay
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(MODULA_FUZZ_TARGET=none "$BUILD/fuzz/modula_fuzz" 2>&1 | sed -n 's/^fuzz: set MODULA_FUZZ_TARGET to one of: //p' | tr ' ' '\n')
fi
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1:detect_odr_violation=0
export UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1
mkdir -p "$BUILD/crashes" "$BUILD/logs"

fuzz_one() {
  local t=$1 work="$BUILD/corpus/$1"
  rm -rf "$work" && mkdir -p "$work" && rm -f "$BUILD/crashes/$t-"*
  "$BUILD/fuzz/modula_fuzz_replay" --seed-into "$work" "$t"
  if [ -d "fuzz/corpus/$t" ]; then cp fuzz/corpus/"$t"/* "$work"/ 2>/dev/null || true; fi
  # -timeout: one input taking over 10 s is a hang; -rss_limit_mb: a blow-up is a finding.
  # libFuzzer's own -dict/-max_len defaults; inputs up to 64 KB (configs and headers).
  MODULA_FUZZ_TARGET=$t "$BUILD/fuzz/modula_fuzz" "$work" -max_total_time="$SECONDS_PER_TARGET" \
    -timeout=10 -rss_limit_mb=4096 -max_len=65536 -print_final_stats=1 \
    -artifact_prefix="$BUILD/crashes/$t-" >"$BUILD/logs/$t.log" 2>&1 || true
}
export -f fuzz_one
export BUILD SECONDS_PER_TARGET
printf '%s\n' "${targets[@]}" | xargs -P "$JOBS" -I{} bash -c 'fuzz_one {}'

status=0
echo "{" >"$BUILD/fuzz-report.json"
printf '%-18s %12s %8s %8s  %s\n' target execs corpus crashes seconds
first=1
for t in "${targets[@]}"; do
  log="$BUILD/logs/$t.log"
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  crashes=$(find "$BUILD/crashes" -name "$t-*" | wc -l)
  corpus=$(find "$BUILD/corpus/$t" -type f | wc -l)
  printf '%-18s %12s %8s %8s  %s\n' "$t" "${execs:-?}" "$corpus" "$crashes" "$SECONDS_PER_TARGET"
  [ $first = 1 ] || echo "," >>"$BUILD/fuzz-report.json"
  first=0
  printf '"%s": {"execs": %s, "corpus": %s, "crashes": %s, "seconds": %s}' "$t" "${execs:-null}" "$corpus" "$crashes" \
    "$SECONDS_PER_TARGET" >>"$BUILD/fuzz-report.json"
  if [ "$crashes" != 0 ] || [ -z "$execs" ]; then
    status=1
    echo "  $t: see $log" >&2
  fi
  if [ $SAVE = 1 ] && [ "$crashes" = 0 ]; then
    rm -rf "$BUILD/min/$t" && mkdir -p "$BUILD/min/$t" "fuzz/corpus/$t"
    MODULA_FUZZ_TARGET=$t "$BUILD/fuzz/modula_fuzz" -merge=1 "$BUILD/min/$t" "$BUILD/corpus/$t" >/dev/null 2>&1
    find "$BUILD/min/$t" -type f -size +64k -delete  # the fixture seeds stay in tests/fixtures
    cp "$BUILD/min/$t"/* "fuzz/corpus/$t"/ 2>/dev/null || true
  fi
done
echo "}" >>"$BUILD/fuzz-report.json"
exit $status

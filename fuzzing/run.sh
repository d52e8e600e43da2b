#!/usr/bin/env bash
# run.sh — build the fuzz targets with clang (libFuzzer + ASan + UBSan)
# and run each for a bounded time on a copy of its seed corpus.
#
#   fuzzing/run.sh [TARGET...]        default: every fuzzing/fuzz-*.c
#
# Environment:
#   FUZZ_SECONDS   seconds per target (default 30)
#   FUZZ_BUILD     where binaries and working corpora go
#                  (default build-fuzz/ at the top of the tree)
#   CC             a clang with libFuzzer (default: clang, else clang-14)
#
# Seeds live in fuzzing/corpus/<target>/ (written by make-seeds.py); new
# inputs found go to $FUZZ_BUILD/corpus/<target>/, crashes to
# $FUZZ_BUILD/crash-<target>-*.  Prints one line per target with the
# executions done, and exits 1 if any target crashed (0 if none), 77 if
# no usable clang is installed.  Independent of the Makefile.
set -uo pipefail

top=$(cd "$(dirname "$0")/.." && pwd)
cd "$top" || exit 2
secs=${FUZZ_SECONDS:-30}
out=${FUZZ_BUILD:-$top/build-fuzz}
cc=${CC:-}
if [ -z "$cc" ] || ! "$cc" --version 2>/dev/null | grep -q clang; then
  cc=
  for c in clang clang-14; do
    command -v "$c" > /dev/null && { cc=$c; break; }
  done
fi
[ -n "$cc" ] || { echo "fuzzing/run.sh: clang is not installed (skip)"; exit 77; }

mkdir -p "$out"
if [ $# -gt 0 ]; then
  targets=("$@")
else
  targets=()
  for f in fuzzing/fuzz-*.c; do targets+=("$(basename "$f" .c)"); done
fi

# The daemon sources each target needs beside its own file (the request
# parser is header-only; fuzz-registry includes the registry's sources
# itself, as tests/test-registry.c does, to reach their static parsers).
extra_srcs () {
  case $1 in
    fuzz-nbd-handshake) echo daemon/nbd-handshake.c ;;
    fuzz-config) echo daemon/config.c ;;
    fuzz-registry) echo common/log.c ;;
    *) ;;
  esac
}

# The libraries those sources link with (pkg-config's flags when it has
# them; the targets only parse, so libcurl is linked but never used).
pkg () { pkg-config "$@" 2>/dev/null; }
extra_libs () {
  case $1 in
    fuzz-config) pkg --cflags --libs inih gnutls || echo -linih -lgnutls ;;
    fuzz-registry) pkg --cflags --libs json-c libcurl \
                     || echo -ljson-c -lcurl ;;
    *) ;;
  esac
}

flags=(-g -O1 -std=gnu17 -D_GNU_SOURCE -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -fno-omit-frame-pointer
       -Iinclude -Idaemon -Icommon -Wall -Wextra -Wno-unused-parameter)

status=0
for t in "${targets[@]}"; do
  src=fuzzing/$t.c
  [ -f "$src" ] || { echo "fuzzing/run.sh: no $src" >&2; exit 2; }
  # shellcheck disable=SC2046
  if ! "$cc" "${flags[@]}" -o "$out/$t" "$src" $(extra_srcs "$t") \
       $(extra_libs "$t") -pthread 2> "$out/$t.build.log"; then
    cat "$out/$t.build.log" >&2
    echo "FAIL $t: does not build"
    status=1
    continue
  fi
  corpus=$out/corpus/$t
  mkdir -p "$corpus"
  cp -n fuzzing/corpus/"$t"/* "$corpus"/ 2>/dev/null
  log=$out/$t.log
  ( cd "$out" && ASAN_OPTIONS=detect_leaks=1 "./$t" -max_total_time="$secs" \
      -artifact_prefix="crash-$t-" -print_final_stats=1 "$corpus" ) > "$log" 2>&1
  rc=$?
  runs=$(sed -n 's/^Done \([0-9]*\) runs.*/\1/p' "$log" | tail -n 1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -n 1)
  if [ $rc -eq 0 ]; then
    echo "PASS $t: ${runs:-?} executions in ${secs} s (${cov:-cov: ?}, corpus $(ls "$corpus" | wc -l) inputs)"
  else
    echo "FAIL $t: exit $rc after ${runs:-?} executions; log $log"
    grep -A 30 "ERROR\|==ERROR\|runtime error\|deadly signal" "$log" | head -n 40
    status=1
  fi
done
exit $status

#!/usr/bin/env bash
# run.sh — run altpath's tests and count them.  `make check` calls it.
#
#   tests/run.sh BUILDDIR [NAME...]
#
# Runs every cmocka program BUILDDIR/tests/* and every shell test tests/*.sh
# (or only the NAMEs given: "test-unit", "served-failover.sh"), one at a
# time, each under `timeout` (TEST_TIMEOUT seconds, default 300), stdin
# from /dev/null, output to BUILDDIR/test-logs/NAME.log.
#
# Exit status of a test: 0 pass, 77 skip, anything else fail (a timeout
# too).  A cmocka program counts as ONE test however many cases it has; its
# own case count is shown on its line.
#
# Every test runs from the top of the source tree with BUILD=<absolute
# build dir>, SRCDIR=<source tree> and BUILD first on PATH.  Helpers that
# shell tests source live in tests/lib/ (tests/functions.sh, if it exists,
# is a helper too, not a test).
#
# Prints one line per test (PASS/FAIL/SKIP NAME SECONDS), then the log of
# each failed test, then, as its last line,
#   N passed, N failed, N skipped
# and exits 1 if anything failed.
#
# Environment: SANITIZE=1 sets ASan/UBSan options (unless already set);
# VALGRIND=1 runs the cmocka programs under valgrind; TEST_TIMEOUT=seconds.
set -uo pipefail

if [ $# -lt 1 ] || [ ! -d "$1" ]; then
  echo "usage: tests/run.sh BUILDDIR [TEST...]   (BUILDDIR must exist: run make first)" >&2
  exit 2
fi
build=$(cd "$1" && pwd)
shift
srcdir=$(cd "$(dirname "$0")/.." && pwd)
cd "$srcdir" || exit 2

timeout_s=${TEST_TIMEOUT:-300}
logdir=$build/test-logs
mkdir -p "$logdir"

if [ "${SANITIZE:-0}" = 1 ]; then
  export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=1}
  export UBSAN_OPTIONS=${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}
fi

# --- what to run: "kind name path" lines -------------------------------
list=()
for f in "$build"/tests/*; do
  [ -f "$f" ] && [ -x "$f" ] || continue
  n=$(basename "$f")
  # A program whose source is gone is a leftover of an older build.
  [ -f "tests/$n.c" ] || [ -f "common/$n.c" ] || continue
  list+=("c $n $f")
done
for f in tests/*.sh; do
  [ -f "$f" ] || continue
  case $(basename "$f") in
    run.sh|functions.sh) continue ;;
  esac
  list+=("sh $(basename "$f") $srcdir/$f")
done

if [ $# -gt 0 ]; then
  wanted=()
  for name in "$@"; do
    found=
    for entry in "${list[@]}"; do
      read -r _ n _ <<<"$entry"
      if [ "$n" = "$name" ]; then wanted+=("$entry"); found=1; fi
    done
    if [ -z "$found" ]; then
      echo "run.sh: no test named '$name' (names are those of $build/tests/* and tests/*.sh)" >&2
      exit 2
    fi
  done
  list=("${wanted[@]}")
fi

# --- run ---------------------------------------------------------------
passed=0 failed=0 skipped=0
failed_names=()

now() { printf '%s' "${EPOCHREALTIME:-$(date +%s.%N)}"; }

for entry in "${list[@]}"; do
  read -r kind name path <<<"$entry"
  log=$logdir/$name.log
  start=$(now)
  if [ "$kind" = c ]; then
    cmd=("$path")
    if [ "${VALGRIND:-0}" = 1 ]; then
      cmd=(valgrind -q --error-exitcode=99 --leak-check=full
           --errors-for-leak-kinds=definite "$path")
    fi
  else
    cmd=(bash "$path")
  fi
  # timeout puts the test in a process group of its own and signals the
  # whole group, so servers a test started go too.
  BUILD=$build SRCDIR=$srcdir PATH=$build:$PATH \
    timeout -k 10 "$timeout_s" "${cmd[@]}" </dev/null >"$log" 2>&1
  rc=$?
  secs=$(awk -v a="$start" -v b="$(now)" 'BEGIN { printf "%.1fs", b - a }')

  note=
  if [ "$kind" = c ]; then
    # cmocka's own summary: "[  PASSED  ] 5 test(s)." / "[  FAILED  ] 1 test(s), ..."
    n=$(sed -n 's/^\[==========\] \([0-9]*\) test(s) run\..*/\1/p' "$log" | tail -n 1)
    case $n in
      "") ;;
      1) note=" (1 case)" ;;
      *) note=" ($n cases)" ;;
    esac
  fi

  case $rc in
    0)  passed=$((passed + 1)); echo "PASS $name $secs$note" ;;
    77) skipped=$((skipped + 1))
        why=$(grep -v '^[[:space:]]*$' "$log" | tail -n 1 | cut -c1-120)
        echo "SKIP $name $secs${why:+ ($why)}" ;;
    *)  failed=$((failed + 1)); failed_names+=("$name")
        if [ "$rc" = 124 ]; then note="$note (timed out after ${timeout_s}s)"
        elif [ "$rc" -gt 128 ]; then note="$note (killed by signal $((rc - 128)))"
        else note="$note (exit $rc)"; fi
        echo "FAIL $name $secs$note" ;;
  esac
done

# --- logs of failed tests ---------------------------------------------
max_lines=400
for name in "${failed_names[@]}"; do
  log=$logdir/$name.log
  echo
  lines=$(wc -l <"$log")
  if [ "$lines" -gt "$max_lines" ]; then
    echo "===== log of $name: last $max_lines of $lines lines (all in $log) ====="
    tail -n "$max_lines" "$log"
  else
    echo "===== log of $name ($log) ====="
    cat "$log"
  fi
  echo "===== end of log of $name ====="
done

if [ ${#list[@]} -eq 0 ]; then
  echo "run.sh: warning: found no test (no $build/tests/* programs, no tests/*.sh)" >&2
fi
[ ${#failed_names[@]} -gt 0 ] && echo
echo "$passed passed, $failed failed, $skipped skipped"
[ "$failed" -eq 0 ]

#!/usr/bin/env bash
# test-verify.sh — the integrity verifier against the library, and the
# verifier against itself.
#
#  1. A bounded run of build/ap-verify (faults, switches, disables on two
#     direct paths of one image) must find no violation of invariants 1–4:
#     exit 0.
#  2. --selftest-stale plants a stale block in the image behind the unit's
#     back; the final check must report it: exit 1 (not 0, and not 2, which
#     would be a setup failure), with the stale block counted.
#
# BUILD is the build directory (default: build).  AP_VERIFY_SWITCHES and
# AP_VERIFY_SECONDS bound run 1 (default 200 switches or 60 s, whichever
# comes first); AP_VERIFY_SEED fixes its seed.
set -u

BUILD=${BUILD:-build}
verify=$BUILD/ap-verify
if [ ! -x "$verify" ]; then
  echo "test-verify.sh: $verify not found; build first (make)" >&2
  exit 1
fi

tmp=$(mktemp -d /tmp/test-verify-XXXXXX)
trap 'rm -rf "$tmp"' EXIT

fail=0

# --- 1. a bounded run under faults: no violation ---------------------------
args=(--image "$tmp/disk.img" --size 32
      --switches "${AP_VERIFY_SWITCHES:-200}"
      --seconds "${AP_VERIFY_SECONDS:-60}"
      --request-timeout 100)
[ -n "${AP_VERIFY_SEED:-}" ] && args+=(--seed "$AP_VERIFY_SEED")
echo "test-verify.sh: $verify ${args[*]}"
"$verify" "${args[@]}" >"$tmp/run.out" 2>"$tmp/run.err"
rc=$?
cat "$tmp/run.out"
if [ $rc -ne 0 ]; then
  echo "test-verify.sh: FAIL: ap-verify exited $rc (want 0); its stderr:" >&2
  tail -n 50 "$tmp/run.err" >&2
  fail=1
fi
if ! grep -q 'switches: [1-9]' "$tmp/run.out"; then
  echo "test-verify.sh: FAIL: the run made no switch at all" >&2
  fail=1
fi

# --- 2. the checker can fail ----------------------------------------------
echo "test-verify.sh: $verify --selftest-stale"
"$verify" --image "$tmp/stale.img" --size 16 --seconds 2 --selftest-stale \
  >"$tmp/stale.out" 2>"$tmp/stale.err"
rc=$?
cat "$tmp/stale.out"
if [ $rc -ne 1 ]; then
  echo "test-verify.sh: FAIL: --selftest-stale exited $rc (want 1: the" \
       "planted stale block must be reported)" >&2
  tail -n 20 "$tmp/stale.err" >&2
  fail=1
elif ! grep -Eq 'stale blocks \(invariant 3\) +1$' "$tmp/stale.out"; then
  echo "test-verify.sh: FAIL: --selftest-stale failed, but not with exactly" \
       "one stale block" >&2
  fail=1
fi

[ $fail -eq 0 ] && echo "test-verify.sh: PASS"
exit $fail

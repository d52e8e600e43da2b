#!/usr/bin/env bash
# fuzz-smoke.sh — run every fuzz target briefly on its seed corpus, so the
# targets keep building and the parsers meet fresh input on every test run.
# Longer runs by hand: FUZZ_SECONDS=3600 fuzzing/run.sh (or make fuzz).
set -euo pipefail
cd "${SRCDIR:-.}"
FUZZ_SECONDS=${FUZZ_SECONDS:-10} exec bash fuzzing/run.sh

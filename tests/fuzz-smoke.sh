#!/usr/bin/env bash
# fuzz-smoke.sh — run every fuzz target briefly on its seed corpus, so the
# targets keep building and the parsers meet fresh input on every test run.
# Six seconds each: five targets (NBD handshake and requests, control
# socket, configuration file, registry) cost what three did at ten.
# Longer runs by hand: FUZZ_SECONDS=3600 fuzzing/run.sh (or make fuzz);
# fuzzing/README.md says more.
#
# Environment: FUZZ_SECONDS (default 6), FUZZ_BUILD, CC: see fuzzing/run.sh;
# SRCDIR the source tree (default .).
# Exit status: fuzzing/run.sh's — 0 no target crashed, 1 one did (or did
# not build), 77 no clang with libFuzzer (skip).
set -euo pipefail
cd "${SRCDIR:-.}"
FUZZ_SECONDS=${FUZZ_SECONDS:-6} exec bash fuzzing/run.sh

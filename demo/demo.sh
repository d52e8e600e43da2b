#!/usr/bin/env bash
# demo.sh — the main job: run by `make demo` after the build.  Until the
# daemon exists it runs ap-demo: one unit over two paths, a failure, the
# verification, the switch and the failback, narrated.
set -euo pipefail
BUILD=${BUILD:-build}
exec "$BUILD/ap-demo" "$@"

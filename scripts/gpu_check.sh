#!/bin/sh
# The GPU check of issue #16 (what it runs: scripts/gpu_check.py's docstring).
#   scripts/gpu_check.sh [--device cuda|cuda:<n>|cpu] [--report FILE] [--quick]
exec python3 "$(dirname "$0")/gpu_check.py" "$@"

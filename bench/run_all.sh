#!/usr/bin/env bash
# Run every benchmark in bench/ one after another (never in parallel: they pin CPUs and
# would measure each other).
#
#   bench/run_all.sh            # full runs (the figures in docs/benchmarks.md)
#   bench/run_all.sh --quick    # short runs: checks every benchmark still works
#   bench/run_all.sh --quick errors_ingest push_send   # only these
#   bench/run_all.sh core_gateway                       # core alone (gateway + job queue)
#
# Benchmarks: analytics_ingest, analytics_queries, core_gateway, errors_ingest, push_send,
# updates_manifest.
#
# A benchmark is every bench/*.py with a `__main__` block (helper modules such as
# analytics_common.py are skipped). Output goes to the terminal and to
# bench/results/<UTC time>/<name>.txt; the script exits non-zero if any benchmark failed.
set -uo pipefail
cd "$(dirname "$0")/.."

mode=()
if [ "${1:-}" = "--quick" ]; then
  mode=(--quick)
  shift
elif [ "${1:-}" = "--full" ]; then
  shift
fi

python="${PYTHON:-python}"
[ -x .venv/bin/python ] && python="${PYTHON:-.venv/bin/python}"
command -v wrk >/dev/null 2>&1 || echo "warning: wrk is not installed (apt-get install wrk); wrk-based benchmarks will fail" >&2

names=()
if [ "$#" -gt 0 ]; then
  names=("$@")
else
  for file in bench/*.py; do
    grep -q '__main__' "$file" && names+=("$(basename "$file" .py)")
  done
fi

out="bench/results/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$out"
failed=()
for name in "${names[@]}"; do
  echo "=== $name ${mode[*]:-} ($(date -u +%H:%M:%S) UTC)"
  if ! "$python" "bench/$name.py" "${mode[@]}" 2>&1 | tee "$out/$name.txt"; then
    failed+=("$name")
  fi
  echo
done
echo "results in $out"
if [ "${#failed[@]}" -gt 0 ]; then
  echo "FAILED: ${failed[*]}" >&2
  exit 1
fi

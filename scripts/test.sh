#!/usr/bin/env bash
# The test command: installs what is missing, then lint, types and tests, in one of two tiers.
#   bash scripts/test.sh          full: ruff, mypy, the whole suite (`.ci/run` calls exactly this)
#   bash scripts/test.sh --fast   the edit loop, under a minute: ruff, then the tests that need
#                                 neither the data folder nor servers (no mypy)
# Extra arguments go to pytest (e.g. -k http -x). Tiers: markers `data`, `servers` (tests/conftest.py).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
tier=full
if [ "${1:-}" = --fast ]; then tier=fast; shift; fi
# Prometheus and Chromium (LINEINSPECT_TEST_PACKAGES) serve only the full tier's integration tests.
test_packages=1
if [ "$tier" = fast ]; then test_packages=0; fi
LINEINSPECT_TEST_PACKAGES=$test_packages source scripts/dev/bootstrap.sh

echo "== ruff" && ruff check service training tests scripts && ruff format --check service training tests scripts
if [ "$tier" = fast ]; then
  # No data here: a test that reads it without the data fixtures fails instead of passing.
  export LINEINSPECT_DATA="$ROOT/.no-data-in-the-fast-tier"
  # Its tensors are tiny: one torch/BLAS thread, or on 2 busy cores one test goes from 2 s to 25 s.
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
  echo "== pytest (fast tier: not data, not servers, not slow)"
  exec python -m pytest -m "not data and not servers and not slow" "$@"
fi
echo "== mypy" && mypy
echo "== pytest" && python -m pytest "$@"

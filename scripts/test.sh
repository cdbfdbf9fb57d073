#!/usr/bin/env bash
# The test command: installs what is missing, then lint, types and the whole test suite.
# `.ci/run` calls exactly this. Extra arguments go to pytest (e.g. -k http -x).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
LINEINSPECT_TEST_PACKAGES=1 source scripts/dev/bootstrap.sh

echo "== ruff" && ruff check service training tests scripts && ruff format --check service training tests
echo "== mypy" && mypy
echo "== pytest" && python -m pytest "$@"

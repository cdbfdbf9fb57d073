#!/usr/bin/env bash
# The main job: serve the shipped demo model over HTTP and judge real defect images with it.
#   bash scripts/demo.sh                 serve until Ctrl-C
#   DEMO_SECONDS=5 bash scripts/demo.sh  stop by itself (smoke tests)
# Environment: LINEINSPECT_DATA (default ../shared/data), LINEINSPECT__API__PORT (default 8080).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/bootstrap.sh

CONFIG="${LINEINSPECT_CONFIG:-deploy/config.example.yaml}"
lineinspect config validate "$CONFIG" >&2
lineinspect serve --config "$CONFIG" &
server=$!
stop() { kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
trap stop EXIT
trap 'exit 130' INT TERM

python scripts/demo_client.py --config "$CONFIG" --server-pid "$server"
if [ -n "${DEMO_SECONDS:-}" ]; then
  sleep "$DEMO_SECONDS"
else
  wait "$server"
fi

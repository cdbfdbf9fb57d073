#!/usr/bin/env bash
# The main job: the inspection line on the shipped demo model, fed by real defect images:
# verdicts over MQTT (mosquitto on 127.0.0.1:1883, or the durable outbox until one appears),
# HTTP prediction API, Prometheus /metrics.
#   bash scripts/demo.sh                 serve until Ctrl-C
#   DEMO_SECONDS=5 bash scripts/demo.sh  stop by itself (smoke tests)
# Environment: LINEINSPECT_DATA (default ../shared/data), LINEINSPECT__API__PORT (default 8080).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
source scripts/dev/bootstrap.sh

CONFIG="${LINEINSPECT_CONFIG:-deploy/demo.yaml}"
if [ -n "${LINEINSPECT_DATA:-}" ] && [ -z "${LINEINSPECT_CONFIG:-}" ]; then
  export LINEINSPECT__CAMERAS__0__SOURCE="folder:$LINEINSPECT_DATA/neu-det/Validation_Images"
  export LINEINSPECT__CAMERAS__1__SOURCE="folder:$LINEINSPECT_DATA/neu-det/Validation_Images"
  export LINEINSPECT__CAMERAS__2__SOURCE="folder:$LINEINSPECT_DATA/magnetic-tile"
fi
lineinspect config validate "$CONFIG" >&2
lineinspect serve --config "$CONFIG" &
server=$!
stop() { kill -TERM "$server" 2>/dev/null || true; wait "$server" 2>/dev/null || true; }
trap stop EXIT
trap 'exit 130' INT TERM

lineinspect demo-client --config "$CONFIG" --server-pid "$server"
if [ -n "${DEMO_SECONDS:-}" ]; then
  sleep "$DEMO_SECONDS"
else
  wait "$server"
fi

#!/usr/bin/env bash
# Prepare a fresh machine: system packages, then a virtualenv with lineinspect installed.
# Sourced by scripts/demo.sh and scripts/test.sh; safe to run again (it only does what is missing).
#   LINEINSPECT_EXTRAS  pip extras to install (default: cpu,dev,train-yolo; dev includes bench,
#                       train-yolo includes train)
#   LINEINSPECT_VENV    virtualenv location   (default: .venv in the repository)
#   LINEINSPECT_TEST_PACKAGES=1  also what only the tests use (set by test.sh): prometheus
#                       (promtool + a real scrape), chromium + chromedriver (operator page), and
#                       a second virtualenv with pytriton's Triton server (the Triton tests)
#   LINEINSPECT_TRITON_VENV  that virtualenv (default: .venv-triton in the repository)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
VENV="${LINEINSPECT_VENV:-$ROOT/.venv}"
EXTRAS="${LINEINSPECT_EXTRAS:-cpu,dev,train-yolo}"
PYTHON="${PYTHON:-python3}"

say() { printf '\033[1m[bootstrap]\033[0m %s\n' "$*" >&2; }

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    say "need root for: $*"; return 1; fi
}

# mosquitto: the tests start their own broker on a free port (the line's MQTT output).
apt_packages=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || apt_packages+=(mosquitto)
"$PYTHON" -c 'import venv, ensurepip' 2>/dev/null || apt_packages+=(python3-venv)
if [ "${LINEINSPECT_TEST_PACKAGES:-0}" = 1 ]; then
  command -v promtool >/dev/null 2>&1 || apt_packages+=(prometheus)
  command -v chromium >/dev/null 2>&1 || apt_packages+=(chromium)
  command -v chromedriver >/dev/null 2>&1 || apt_packages+=(chromium-driver)
fi
if [ "${#apt_packages[@]}" -gt 0 ]; then
  if command -v apt-get >/dev/null; then
    say "installing ${apt_packages[*]}"
    as_root apt-get update -qq
    DEBIAN_FRONTEND=noninteractive as_root apt-get install -y -qq --no-install-recommends "${apt_packages[@]}" >/dev/null
  else
    say "please install: ${apt_packages[*]} (no apt-get here)"
  fi
fi

"$PYTHON" - <<'PY' || { say "Python 3.11 or newer is needed (set PYTHON=...)"; exit 1; }
import sys
raise SystemExit(sys.version_info < (3, 11))
PY

if [ ! -x "$VENV/bin/python" ]; then
  say "creating virtualenv $VENV"
  "$PYTHON" -m venv "$VENV"
fi

# Reinstall only when the dependency declaration or the extras change.
stamp="$VENV/.lineinspect-$(cat "$ROOT/pyproject.toml" | sha256sum | cut -c1-16)-${EXTRAS//,/_}"
if [ ! -f "$stamp" ]; then
  say "installing lineinspect[$EXTRAS] (first run takes a minute)"
  "$VENV/bin/python" -m pip install -q --upgrade pip >/dev/null 2>&1 || true
  "$VENV/bin/python" -m pip install -q -e "$ROOT[$EXTRAS]" 2>&1 | grep -v -e "^WARNING: Location" -e "is ignored" >&2 || true
  if "$VENV/bin/python" -c "import ultralytics" 2>/dev/null; then
    # Ultralytics pulls the GUI build of OpenCV over the headless one: put the headless back.
    "$VENV/bin/python" -m pip uninstall -y -q opencv-python >/dev/null 2>&1 || true
    "$VENV/bin/python" -m pip install -q --force-reinstall --no-deps opencv-python-headless 2>&1 \
      | grep -v -e "^WARNING: Location" -e "is ignored" >&2 || true
  fi
  "$VENV/bin/python" -c "import service, onnxruntime, cv2, fastapi" \
    || { say "installation failed"; exit 1; }
  rm -f "$VENV"/.lineinspect-*
  touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"

# The Triton tests run a real Triton Inference Server: pytriton's wheel carries a tritonserver
# binary (scripts/dev/triton_server.py). It pins numpy<2, so it lives in its own virtualenv.
if [ "${LINEINSPECT_TEST_PACKAGES:-0}" = 1 ]; then
  TRITON_VENV="${LINEINSPECT_TRITON_VENV:-$ROOT/.venv-triton}"
  triton_stamp="$TRITON_VENV/.lineinspect-pytriton-0.7.0"
  if [ ! -f "$triton_stamp" ]; then
    say "creating $TRITON_VENV (pytriton's Triton server, for the Triton tests)"
    "$PYTHON" -m venv "$TRITON_VENV"
    "$TRITON_VENV/bin/python" -m pip install -q nvidia-pytriton==0.7.0 onnxruntime 'numpy<2' 2>&1 \
      | grep -v -e "^WARNING: Location" -e "is ignored" >&2 || true
    "$TRITON_VENV/bin/python" -c "import pytriton, onnxruntime" \
      || { say "installing pytriton failed"; exit 1; }
    touch "$triton_stamp"
  fi
fi

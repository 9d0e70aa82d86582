#!/usr/bin/env bash
# contrastkit's two commands, each installing what it needs into ./.venv first:
#   ./dev.sh train [FLAGS...]   run `contrastkit train` (default: SimCLR on the embedded digits data set)
#   ./dev.sh test  [PYTEST ARGS] lint with ruff and run the test suite
# Any other command runs inside the environment, e.g. ./dev.sh contrastkit eval runs/NAME
# TORCH_SPEC overrides the PyTorch requirement (default torch==2.13.0, the local CPU build); it may hold
# pip options too, e.g. TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cu124".
set -euo pipefail
cd "$(dirname "$0")"
VENV="${CONTRASTKIT_VENV:-.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_SPEC="${TORCH_SPEC:-torch==2.13.0}"

quiet_pip() {  # pip, without the noise of unreachable extra-index locations
  "$VENV/bin/python" -m pip install -q --disable-pip-version-check "$@" 2> >(grep -v "is ignored" >&2)
}

setup() {  # $1: extras ("" or "test")
  local extras="$1" stamp
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
  stamp="$VENV/.installed-${extras:-base}-$(cat pyproject.toml | cksum | cut -d' ' -f1)"
  [ -f "$stamp" ] && return 0
  echo "setting up $VENV (${extras:-base}) ..." >&2
  local torch_spec
  read -ra torch_spec <<<"$TORCH_SPEC"  # words: a requirement and pip options (--index-url URL)
  [ "${#torch_spec[@]}" -gt 0 ] || torch_spec=(torch==2.13.0)  # a blank TORCH_SPEC: the default
  "$VENV/bin/python" -c "import torch" 2>/dev/null || quiet_pip "${torch_spec[@]}"
  if [ -n "$extras" ]; then quiet_pip -e ".[$extras]"; else quiet_pip -e .; fi
  touch "$stamp"
}

ensure_chromium() {  # the report test renders report.html in headless Chromium, from Debian's packages
  [ -x /usr/bin/chromium ] && return 0
  [ "${CONTRASTKIT_SKIP_BROWSER:-0}" = 1 ] && return 0
  local sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  echo "installing Chromium for the report test: ${sudo:+$sudo }apt-get update; apt-get install -y --no-install-recommends chromium" >&2
  { $sudo apt-get update -qq && $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
      --no-install-recommends chromium >/dev/null; } \
    || echo "could not install Chromium: the report test will fail (CONTRASTKIT_SKIP_BROWSER=1 skips it)" >&2
}

cmd="${1:-train}"
[ $# -gt 0 ] && shift
case "$cmd" in
  train)
    setup ""
    exec "$VENV/bin/contrastkit" train "$@" ;;
  test)
    setup "test"
    ensure_chromium
    "$VENV/bin/ruff" check src tests benchmarks
    "$VENV/bin/ruff" format --check src tests benchmarks
    exec "$VENV/bin/python" -m pytest "$@" ;;
  *)
    setup "test"
    PATH="$PWD/$VENV/bin:$PATH" exec "$cmd" "$@" ;;
esac

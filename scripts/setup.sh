#!/usr/bin/env bash
# Idempotent set-up shared by run.sh and test.sh: installs only what is missing.
#  1. a virtual environment (.venv, or $FREESOLO_VENV); if the system Python already has torch
#     (e.g. a CUDA build you installed), the venv sees it instead of installing another one;
#  2. the CPU torch wheel, before anything that depends on torch, unless a torch is importable;
#  3. this project (editable) with the napari and test extras;
#  4. with no display: Xvfb and the GL/Qt libraries napari needs (installed when root with apt,
#     otherwise listed so you can install them).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
VENV=${FREESOLO_VENV:-$ROOT/.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${FREESOLO_TORCH_SPEC:-torch==2.13.0}
say() { echo "[setup] $*" >&2; }

if [ ! -x "$VENV/bin/python" ]; then
  if "$PYTHON" -c "import torch" >/dev/null 2>&1; then
    say "creating $VENV (reusing the torch of $PYTHON)"
    "$PYTHON" -m venv --system-site-packages "$VENV"
  else
    say "creating $VENV"
    "$PYTHON" -m venv "$VENV"
  fi
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

if ! "$VENV/bin/python" -c "import torch" >/dev/null 2>&1; then
  say "installing $TORCH_SPEC (CPU wheel; bring your own CUDA torch to use a GPU)"
  "${PIP[@]}" install "$TORCH_SPEC" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import torch" || { say "torch could not be installed"; exit 1; }
fi

stamp="$VENV/.freesolo-installed"
want=$(cat "$ROOT/pyproject.toml" | sha1sum | cut -d' ' -f1)
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ] || ! "$VENV/bin/python" -c "import engine, freesolo_napari, napari, pytest" >/dev/null 2>&1; then
  say "installing freesolo-napari and its dependencies"
  "${PIP[@]}" install -e "$ROOT[napari,test]" 2>&1 | grep -v "^WARNING: Location" >&2 || true
  "$VENV/bin/python" -c "import engine, freesolo_napari, napari, pytest" || { say "installation failed"; exit 1; }
  echo "$want" > "$stamp"
fi

# Headless display support (napari needs OpenGL, so an X server even without a screen).
if [ -z "${DISPLAY:-}" ] || [ "${FREESOLO_NEED_XVFB:-0}" = 1 ]; then
  debs="xvfb xauth libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-xinerama0 libxcb-image0 libxcb-render-util0 libxcb-cursor0 libfontconfig1 libdbus-1-3"
  if command -v dpkg-query >/dev/null 2>&1; then
    missing=$(for d in $debs; do dpkg-query -W -f='${Status}' "$d" 2>/dev/null | grep -q "install ok installed" || echo "$d"; done | tr '\n' ' ')
  else
    missing=$(command -v Xvfb >/dev/null 2>&1 || echo "xvfb")
  fi
  if [ -n "${missing// /}" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
      say "installing headless display packages: $missing"
      (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $missing) >/dev/null 2>&1 \
        || say "apt-get could not install: $missing"
    else
      say "missing for headless GUI tests: $missing (install them, e.g. sudo apt-get install $missing)"
    fi
  fi
fi
export FREESOLO_VENV="$VENV"

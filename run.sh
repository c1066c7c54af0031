#!/usr/bin/env bash
# Main job: set up what is missing, then open napari with the FreeSOLO panel and sample images.
# Without a display the same Free Mask pipeline runs headless and prints where its outputs are.
# Extra arguments go to `freesolo demo` in headless mode (e.g. --n 12 --out somewhere).
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
source "$ROOT/scripts/setup.sh"
if [ -n "${DISPLAY:-}" ] && [ "${FREESOLO_HEADLESS:-0}" != 1 ]; then
  exec "$VENV/bin/python" -m freesolo_napari "$@"
fi
echo "[run] no display: running the headless pipeline (freesolo demo)" >&2
exec "$VENV/bin/freesolo" demo "$@"

#!/usr/bin/env bash
# Set up what is missing, then run the whole test suite (GUI tests under Xvfb via pytest-xvfb).
# pytest exits non-zero when no test ran (exit code 5), so an empty run fails.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
FREESOLO_NEED_XVFB=1 source "$ROOT/scripts/setup.sh"
cd "$ROOT"
export FREESOLO_CACHE="${FREESOLO_CACHE:-$(mktemp -d)}"
exec "$VENV/bin/python" -m pytest "$@"

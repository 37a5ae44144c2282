#!/usr/bin/env bash
# Tests: `bash scripts/test.sh` runs the default suite; `bash scripts/test.sh -m slow` the slow one.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
cd "$root"
exec "$root/.venv/bin/python" -m pytest -q "$@"

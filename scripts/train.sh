#!/usr/bin/env bash
# Main job: `bash scripts/train.sh` trains the tiny preset on the built-in dataset (CPU, a few minutes).
# Extra arguments go to `open-tips train` (e.g. --preset small, train.steps=1000).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
source "$root/scripts/venv.sh"
cd "$root"
exec "$root/.venv/bin/open-tips" train "$@"

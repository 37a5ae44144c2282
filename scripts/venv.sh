#!/usr/bin/env bash
# Creates .venv in the repo root (once) and installs open_tips with its test extras; re-installs when
# pyproject.toml changes. Sourced by scripts/train.sh and scripts/test.sh.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="$root/.venv"
stamp="$venv/.open_tips_installed"
want="$(cat "$root/pyproject.toml" "${BASH_SOURCE[0]}" | sha256sum | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
  "$venv/bin/python" -m pip install --quiet --upgrade pip
  "$venv/bin/python" -m pip install --quiet -e "$root[test]"
  # The CLIP_benchmark test uses its loader, datasets and retrieval metric only; --no-deps skips
  # pycocoevalcap (104 MB, for its captioning metrics). Its other needs (open_clip, requests) are test extras.
  "$venv/bin/python" -m pip install --quiet --no-deps "clip-benchmark==1.6.2"
  echo "$want" > "$stamp"
fi

#!/usr/bin/env bash
# The README's test command: set up .venv with the dev extra (idempotent), then run the default
# test suite (slow real-model tests are deselected by pyproject's addopts; add `-m slow` for them).
#
#   bash scripts/test.sh                # or: make test
#   bash scripts/test.sh tests/assets -x
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh --dev
export HF_HUB_OFFLINE=${HF_HUB_OFFLINE:-1} HF_DATASETS_OFFLINE=${HF_DATASETS_OFFLINE:-1}
exec "${MOC_VENV:-.venv}/bin/python" -m pytest "$@"

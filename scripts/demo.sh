#!/usr/bin/env bash
# The offline demo, end to end: set up .venv (idempotent), fine-tune MoC on the packaged MiniLM-L6
# over Rotten Tomatoes reviews, evaluate the run on its held-out test split, export it.
# About 10 minutes on 2 CPU cores, no Hub access.
#
#   bash scripts/demo.sh               # or: make demo
#   RUN_DIR=runs/demo/mine bash scripts/demo.sh training.max_steps=50   # extra args: train overrides
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1
MOC="${MOC_VENV:-.venv}/bin/moc"
RUN_DIR=${RUN_DIR:-runs/demo/sentiment-$(date -u +%Y%m%d-%H%M%S)}

start=$(date +%s)
echo "[demo] 1/3 train -> $RUN_DIR"
"$MOC" train --recipe demo/sentiment --output-dir "$RUN_DIR" --no-progress "$@"
echo "[demo] 2/3 evaluate on the test split"
"$MOC" eval "$RUN_DIR" --split test
echo "[demo] 3/3 export"
"$MOC" merge-export "$RUN_DIR"
echo "[demo] finished in $(( $(date +%s) - start )) s; run directory: $RUN_DIR"

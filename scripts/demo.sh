#!/usr/bin/env bash
# The whole pipeline on generated data with a local Ray and a local MLflow store.
set -euo pipefail
OUT=${DEMO_OUT:-demo_out}
rm -rf "$OUT"
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
export MLFLOW_TRACKING_URI="sqlite:///$OUT/mlflow.db"
echo "== 1/3 cxr synth: three datasets in the real on-disk formats"
cxr synth --out "$OUT/raw" --images-per-source 300 --image-size 128
echo "== 2/3 cxr prepare: join, split and preprocess with Ray Data"
cxr prepare --nih "$OUT/raw/nih" --chexpert "$OUT/raw/chexpert" \
  --csv inhouse="$OUT/raw/inhouse/labels.csv" --out "$OUT/prepared" --image-size 64
echo "== 3/3 cxr train: DenseIBN-121 with TW + TAT + UTE on Ray Train"
cxr train --data "$OUT/prepared" --run-name demo-train \
  train.epochs=2 train.batch_size=24 train.storage_path="$OUT/ray_results" train.log_every_steps=5
echo
echo "demo finished. Look at the runs with:"
echo "  .venv/bin/mlflow ui --backend-store-uri $MLFLOW_TRACKING_URI"

#!/usr/bin/env bash
# The whole pipeline on generated data with a local Ray and a local MLflow store.
set -euo pipefail
OUT=${DEMO_OUT:-demo_out}
rm -rf "$OUT"
mkdir -p "$OUT"
echo "== 1/2 cxr synth: three datasets in the real on-disk formats"
cxr synth --out "$OUT/raw" --images-per-source 300 --image-size 128
echo "== 2/2 cxr prepare: join, split and preprocess with Ray Data"
cxr prepare --nih "$OUT/raw/nih" --chexpert "$OUT/raw/chexpert" \
  --csv inhouse="$OUT/raw/inhouse/labels.csv" --out "$OUT/prepared" --image-size 64
echo "demo finished: prepared dataset in $OUT/prepared"

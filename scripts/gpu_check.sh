#!/usr/bin/env bash
# The GPU check: the throughput benchmark, a compiled 30-step training whose loss must fall, and a
# compiled -> uncompiled checkpoint round trip. Needs only torch and torchvision; about 6 minutes
# on an H100/H200. The JSON summary is the last line and lands in ${OUT:-.}/gpu_check.json.
#
#     scripts/gpu_check.sh            # uses .venv/bin/python when present, else python3
set -euo pipefail
cd "$(dirname "$0")/.."
python=python3
[ -x .venv/bin/python ] && python=.venv/bin/python
out="${OUT:-.}"
mkdir -p "$out"
PYTHONPATH=. exec "$python" scripts/gpu_check.py --out "$out/gpu_check.json" "$@"

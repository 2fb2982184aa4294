"""`cxr compare`'s statistics at NIH's test size: DeLong + a 2,000-replicate paired bootstrap on
25,596 images x 14 findings, seconds. Target: under 60 s on this machine.

    python benchmarks/compare_speed.py [--images 25596] [--findings 14] [--bootstrap 2000]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import report  # benchmarks/ is on the path as a script

from cxrmodel.auc_statistics import paired_comparison

TARGET_S = 60.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=25596)
    parser.add_argument("--findings", type=int, default=14)
    parser.add_argument("--bootstrap", type=int, default=2000)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    findings = [f"F{c}" for c in range(args.findings)]
    prevalence = np.linspace(0.005, 0.2, args.findings)  # NIH's range: Hernia ~0.2% .. Infiltration ~18%
    labels = (rng.random((args.images, args.findings)) < prevalence).astype(np.int8)
    probs_a = (labels * 0.8 + rng.normal(0, 1, labels.shape)).astype(np.float32)
    probs_b = (labels * 0.9 + rng.normal(0, 1, labels.shape)).astype(np.float32)
    started = time.perf_counter()
    stats = paired_comparison(labels, probs_a, probs_b, findings, evaluated=findings, common=findings[:6],
                              internal_only=findings[6:], replicates=args.bootstrap, seed=0)
    seconds = time.perf_counter() - started
    print(f"DeLong + {args.bootstrap}-replicate paired bootstrap, {args.images:,} images x {args.findings} "
          f"findings: {seconds:.1f} s (mean Δ {stats['means']['mean']['delta']:+.4f}, "
          f"CI {stats['means']['mean']['ci95'][0]:+.4f}..{stats['means']['mean']['ci95'][1]:+.4f})")
    report("compare_speed", images=args.images, findings=args.findings, bootstrap=args.bootstrap,
           seconds=round(seconds, 2), target_seconds=TARGET_S, ratio=round(seconds / TARGET_S, 3), target=1.0)


if __name__ == "__main__":
    main()

"""Training images/s of DenseIBN-121 with the full method (TW + TAT + UTE) on one GPU, 320x320,
bf16 autocast and channels_last, eager and with torch.compile, measured in one run.

Target on one H200: >= 2,000 images/s (the memory-bandwidth bound is about 3,900). Without a GPU
it says so in its JSON line and exits 0. Last line: JSON figures.

It wires the step from cxrmodel itself instead of orchestration.method.build_method: the GPU
machine has torch only (no pydantic, hence no Config). The settings are the paper default's,
except that the ensemble covers every finding (a little more work per step than internal-only).

    python benchmarks/gpu_train_throughput.py [--batch-per-domain 64] [--steps 30] [--size 320]
"""

from __future__ import annotations

import argparse
import json
import time

import torch

from cxrmodel.losses import finding_weights
from cxrmodel.network import CXRNet
from cxrmodel.optimizers import make_optimizers
from cxrmodel.temporal_ensemble import TemporalEnsemble
from cxrmodel.training_step import TrainingStep

FINDINGS = 14
COMMON = list(range(7, 14))
TARGET = 2000.0


def measure(size: int, per_domain: int, steps: int, compile_model: bool) -> float:
    device = torch.device("cuda")
    torch.manual_seed(0)
    net = CXRNet(FINDINGS, COMMON, 2).to(device).to(memory_format=torch.channels_last).train()
    adam, rmsprop, _ = make_optimizers(net)
    names = [str(c) for c in range(FINDINGS)]
    alpha, beta = finding_weights(names, [names[c] for c in COMMON], {n: {"positive": 1, "negative": 9} for n in names})
    batch = 2 * per_domain
    ensemble = TemporalEnsemble(batch * 4, FINDINGS, device=device)
    model = torch.compile(net) if compile_model else net
    step = TrainingStep(model, adam, rmsprop, alpha=alpha, beta=beta, num_domains=2, ensemble=ensemble,
                        autocast_dtype=torch.bfloat16, channels_last=True)
    images = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8, device=device)
    labels = torch.randint(0, 2, (batch, FINDINGS), dtype=torch.int8, device=device)
    labels[per_domain:, :7] = -2
    domain = (torch.arange(batch, device=device) >= per_domain).long()
    ids = torch.arange(batch, device=device)
    ensemble.record(ids, torch.rand(batch, FINDINGS, device=device))
    ensemble.end_epoch()
    for _ in range(5):  # warm-up (and compilation)
        step(images, labels, domain, ids, h=0.2)
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step(images, labels, domain, ids, h=0.2)
    torch.cuda.synchronize()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch-per-domain", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure")
        print(json.dumps({"benchmark": "gpu_train_throughput", "skipped": "no CUDA GPU", "ratio": None,
                          "target": 1.0, "target_images_per_s": TARGET}))
        return
    eager = measure(args.size, args.batch_per_domain, args.steps, compile_model=False)
    compiled = measure(args.size, args.batch_per_domain, args.steps, compile_model=True)
    best = max(eager, compiled)
    print(f"{torch.cuda.get_device_name()}: eager {eager:.0f} img/s, torch.compile {compiled:.0f} img/s")
    print(json.dumps({
        "benchmark": "gpu_train_throughput", "device": torch.cuda.get_device_name(), "image_size": args.size,
        "batch": 2 * args.batch_per_domain, "eager_images_per_s": round(eager, 1),
        "compiled_images_per_s": round(compiled, 1), "ratio": round(best / TARGET, 3), "target": 1.0,
        "target_images_per_s": TARGET,
    }))


if __name__ == "__main__":
    main()

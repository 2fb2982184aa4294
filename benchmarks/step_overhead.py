"""Cost of the full method's training step (TW + TAT + UTE) over plain partial-label BCE.

Both steps come from the training factory (`configured_method`): the paper's default config against
Table VI row a (no TW, TAT or TE). Same DenseIBN-121, same batch (two domains x 8 images, 128x128,
CPU), steps interleaved pair by pair so that machine noise hits both alike; the ratio is of the
medians. Also times the C per-finding branches as one batched op against a loop of C nn.Linear
pairs. Last line: JSON figures.

    python benchmarks/step_overhead.py [--size 128] [--pairs 8]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from _common import report  # benchmarks/ is on the path as a script
from torch import nn

from cxrmodel.heads import TaskSpecificHeads
from cxrmodel.task_weights import finding_weights
from orchestration.settings.config import load_config
from orchestration.settings.plan import TrainingPlan
from orchestration.training.configured import Method, configured_method

FINDINGS = 14
NAMES = [f"finding{c}" for c in range(FINDINGS)]
COMMON, INTERNAL_ONLY = NAMES[7:], NAMES[:7]  # as NIH + CheXpert: 7 common findings of 14
JOINT_TRAINING = {"method.task_weighting": False, "method.adversarial": "none", "method.temporal_ensemble": False,
                  "method.uncertainty": False}  # Table VI row a


def make_method(full: bool, num_samples: int) -> Method:
    config = load_config(updates={} if full else JOINT_TRAINING)
    balance = {n: {"positive": 1, "negative": 9} for n in NAMES}
    alpha, beta = finding_weights(NAMES, COMMON, balance, alpha=config.method.alpha,
                                  task_weighting=config.method.task_weighting)
    plan = TrainingPlan(
        data="", domains=["internal", "external"], label_space=NAMES, common=COMMON, internal_only=INTERNAL_ONLY,
        evaluated=NAMES, trained=NAMES, alpha=alpha, beta=beta, positive=[1] * FINDINGS,
        negative=[9] * FINDINGS, ensemble=INTERNAL_ONLY if config.method.uses_ensemble else [],
        per_domain_batch=8, steps_per_epoch=1, num_samples=num_samples,
    )
    torch.manual_seed(0)
    method = configured_method(config, plan)
    method.network.train()
    return method


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def step_ratio(size: int, pairs: int) -> dict:
    batch = 16
    images = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 2, (batch, FINDINGS), dtype=torch.int8)
    labels[batch // 2 :, :7] = -2  # the external half does not label the internal-only findings
    domain = torch.arange(batch) // (batch // 2)
    ids = torch.arange(batch)
    full, plain = make_method(True, batch), make_method(False, batch)
    full.ensemble.record(ids, torch.rand(batch, FINDINGS))
    full.ensemble.end_epoch()  # so that UTE has targets and does its full work

    def run(method: Method) -> None:
        method.step(images, labels, domain, ids, h=0.2)

    for _ in range(2):  # warm-up
        run(full)
        run(plain)
    full_times, plain_times = [], []
    for _ in range(pairs):
        full_times.append(timed(lambda: run(full)))
        plain_times.append(timed(lambda: run(plain)))
    return {
        "full_step_s": round(statistics.median(full_times), 4),
        "plain_step_s": round(statistics.median(plain_times), 4),
        "ratio": round(statistics.median(full_times) / statistics.median(plain_times), 3),
    }


class LoopHeads(nn.Module):
    """The naive alternative: C separate branch and classifier Linears."""

    def __init__(self, in_features: int, num_findings: int, branch_features: int):
        super().__init__()
        self.branches = nn.ModuleList(nn.Linear(in_features, branch_features) for _ in range(num_findings))
        self.classifiers = nn.ModuleList(nn.Linear(branch_features, 1) for _ in range(num_findings))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([c(torch.relu(b(x))) for b, c in zip(self.branches, self.classifiers)], dim=1)


def branch_ratio(repeats: int = 200) -> dict:
    x = torch.randn(16, 1024)
    batched, loop = TaskSpecificHeads(1024, FINDINGS, 128), LoopHeads(1024, FINDINGS, 128)

    def run(module: nn.Module) -> None:
        out = module(x)
        (out[0] if isinstance(out, tuple) else out).sum().backward()

    times = {"batched": [], "loop": []}
    for _ in range(repeats):
        times["batched"].append(timed(lambda: run(batched)))
        times["loop"].append(timed(lambda: run(loop)))
    b, lo = statistics.median(times["batched"]), statistics.median(times["loop"])
    return {"branches_batched_ms": round(b * 1e3, 3), "branches_loop_ms": round(lo * 1e3, 3),
            "branches_loop_over_batched": round(lo / b, 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--pairs", type=int, default=8)
    args = parser.parse_args()
    steps = step_ratio(args.size, args.pairs)
    branches = branch_ratio()
    print(f"full step {steps['full_step_s']} s vs plain {steps['plain_step_s']} s at {args.size}px; "
          f"C branches: loop {branches['branches_loop_ms']} ms vs batched {branches['branches_batched_ms']} ms")
    report("step_overhead", image_size=args.size, **steps, target=1.10, **branches)


if __name__ == "__main__":
    main()

"""Training images/s on one GPU, 320x320, bf16: the plain torchvision DenseNet-121 + BCE anchor
and DenseIBN-121 with the full method (TW + TAT + UTE) as `cxr train` builds it, measured side by
side in one run, with each speed switch (torch.compile, fused Adam, cudnn.benchmark, batch size,
CUDA graphs) on and off.

The method comes from the same factory as `cxr train` (`cxrmodel.method`), with the spec the paper
default's config gives for NIH + CheXpert (14 findings, 7 common; a test checks they agree) and
the acceleration `cxr train --gpu` uses. Only torch, torchvision and the standard library are imported.

Target on one H200: >= 2,000 images/s (`ratio` = best method variant / 2,000). Without a GPU it
says so in its JSON line and exits 0. Compiling took 2.5-3.5 min per variant on an H200 box;
variants that would overrun `--budget-s` are skipped and listed. Last line: JSON figures.

    PYTHONPATH=. python3 benchmarks/gpu_train_throughput.py [--batch-per-domain 64] [--steps 30]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Callable

import torch
import torchvision
from _common import report  # benchmarks/ is on the path as a script

from cxrmodel.inference import autocast_context
from cxrmodel.inputs import to_model_input
from cxrmodel.method import Acceleration, MethodSpec, build_method
from cxrmodel.task_weights import finding_weights

FINDINGS = 14
COMMON = tuple(range(7, 14))  # NIH + CheXpert share 7 of NIH's 14 findings
TARGET = 2000.0
COMPILE_ALLOWANCE_S = 220  # a compiling variant starts only with this much budget left (H200: 155-215 s)


def paper_spec(num_samples: int, positive_fraction: float = 0.1) -> MethodSpec:
    """What `cxr train` builds with the default config for NIH (internal, 14 findings) + CheXpert."""
    names = [f"finding{c}" for c in range(FINDINGS)]
    negatives = round(1000 * (1 - positive_fraction))
    alpha, beta = finding_weights(names, [names[c] for c in COMMON],
                                  {n: {"positive": 1000 - negatives, "negative": negatives} for n in names})
    return MethodSpec(
        num_findings=FINDINGS, common=COMMON, num_domains=2, alpha=tuple(alpha),
        beta=tuple(beta), num_samples=num_samples, num_classes=FINDINGS,
        ensemble_findings=tuple(c not in COMMON for c in range(FINDINGS)),
    )


def synthetic_batch(per_domain: int, size: int, device: torch.device, seed: int = 0):
    """One two-domain batch: uint8 images, labels with the second domain's internal-only findings
    unknown (-2), domain indices and sample ids."""
    generator = torch.Generator().manual_seed(seed)
    batch = 2 * per_domain
    images = torch.randint(0, 256, (batch, size, size), dtype=torch.uint8, generator=generator)
    labels = (torch.rand(batch, FINDINGS, generator=generator) < 0.1).to(torch.int8)
    labels[per_domain:, [c for c in range(FINDINGS) if c not in COMMON]] = -2
    domain = (torch.arange(batch) >= per_domain).long()
    ids = torch.arange(batch) + seed * batch
    return tuple(t.to(device) for t in (images, labels, domain, ids))


def _images_per_s(step: Callable[[], None], batch: int, steps: int, device: torch.device, warmup: int = 5) -> dict:
    """Warm-up (and compilation) timed apart from the measured steps."""
    started = time.perf_counter()
    def finish() -> None:  # GPU work is asynchronous: wait for it before reading the clock
        if device.type != "cpu":
            torch.accelerator.synchronize(device)

    for _ in range(warmup):
        step()
    finish()
    measured = time.perf_counter()
    for _ in range(steps):
        step()
    finish()
    return {"images_per_s": round(steps * batch / (time.perf_counter() - measured), 1),
            "warmup_s": round(measured - started, 1)}


def measure_method(size: int, per_domain: int, steps: int, acceleration: Acceleration, device: torch.device) -> dict:
    torch.backends.cudnn.benchmark = acceleration.cudnn_benchmark
    torch.manual_seed(0)
    method = build_method(paper_spec(num_samples=8 * per_domain), device, acceleration)
    batch = synthetic_batch(per_domain, size, device)
    method.ensemble.record(batch[3], torch.rand(2 * per_domain, FINDINGS, device=device))
    method.ensemble.end_epoch()  # the ensemble has targets, as from epoch 2 on
    return _images_per_s(lambda: method.step(*batch, h=0.2), 2 * per_domain, steps, device)


def measure_anchor(size: int, per_domain: int, steps: int, compile_backend: str | None, device: torch.device) -> dict:
    """torchvision DenseNet-121 (gray input) + plain BCE with Adam: the floor our method adds to."""
    torch.backends.cudnn.benchmark = True
    torch.manual_seed(0)
    net = torchvision.models.densenet121(num_classes=FINDINGS)
    net.features.conv0 = torch.nn.Conv2d(1, 64, 7, 2, 3, bias=False)
    net = net.to(device).to(memory_format=torch.channels_last).train()
    adam = torch.optim.Adam(net.parameters(), lr=1e-4, fused=device.type == "cuda" or None)
    model = torch.compile(net, backend=compile_backend) if compile_backend else net
    images, labels, _, _ = synthetic_batch(per_domain, size, device)
    targets = labels.clamp(min=0).float()

    def step() -> None:
        x = to_model_input(images, flip=True, channels_last=True)
        with autocast_context(device, torch.bfloat16):
            logits = model(x)
        loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), targets)
        adam.zero_grad(set_to_none=True)
        loss.backward()
        adam.step()

    return _images_per_s(step, 2 * per_domain, steps, device)


GPU = Acceleration.for_device("cuda")  # what `cxr train --gpu` builds
# name -> (acceleration, batch per domain as a multiple of --batch-per-domain); None = the anchor.
VARIANTS: dict[str, tuple[Acceleration | bool, int]] = {  # in order of interest: a budget cuts the tail
    "anchor_densenet121_bce_eager": (False, 1),
    "method_eager_plain": (replace(GPU, compile=False, fused_adam=False, cudnn_benchmark=False), 1),
    "method_eager": (replace(GPU, compile=False), 1),
    "method_compiled": (GPU, 1),  # cxr train --gpu
    "anchor_densenet121_bce_compiled": (True, 1),
    "method_compiled_step": (replace(GPU, compile_scope="step"), 1),  # train.compile_scope=step
    "method_compiled_step_cuda_graphs": (replace(GPU, compile_scope="step", compile_mode="reduce-overhead"), 1),
    "method_compiled_batch_x2": (GPU, 2),
    "method_compiled_unfused_adam": (replace(GPU, fused_adam=False), 1),
    "method_compiled_cuda_graphs": (replace(GPU, compile_mode="reduce-overhead"), 1),
}


def run_variants(size: int, per_domain: int, steps: int, budget_s: float, *, device: str = "cuda",
                 compile_backend: str = "inductor", say=print) -> dict:
    """Every variant that fits the time budget; a variant that fails is recorded with its error.
    (`device="cpu", compile_backend="eager"` walks the same code on a machine without a GPU.)"""
    device = torch.device(device)
    started, results = time.perf_counter(), {}
    for name, (setting, multiple) in VARIANTS.items():
        compiles = setting is True or (isinstance(setting, Acceleration) and setting.compile)
        left = budget_s - (time.perf_counter() - started)
        if left < (COMPILE_ALLOWANCE_S if compiles else 20):
            results[name] = {"skipped": f"time budget ({left:.0f} s left)"}
            continue
        torch._dynamo.reset()
        try:
            if isinstance(setting, bool):
                backend = compile_backend if setting else None
                results[name] = measure_anchor(size, per_domain * multiple, steps, backend, device)
            else:
                setting = replace(setting, compile_backend=compile_backend)
                results[name] = measure_method(size, per_domain * multiple, steps, setting, device)
        except Exception as exc:  # noqa: BLE001 - one variant failing must not hide the others
            results[name] = {"error": f"{type(exc).__name__}: {exc}"[:500]}
        results[name]["batch"] = 2 * per_domain * multiple
        if device.type == "cuda":
            torch.cuda.empty_cache()
        say(f"{name}: {results[name]}")
    return results


def summary(results: dict, size: int) -> dict:
    method = {k: v["images_per_s"] for k, v in results.items() if k.startswith("method") and "images_per_s" in v}
    best = max(method, key=method.get) if method else None
    return {
        "benchmark": "gpu_train_throughput", "torch": torch.__version__,
        "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
        "image_size": size, "variants": results, "cxr_train_images_per_s": method.get("method_compiled"),
        "best_variant": best, "ratio": round(method[best] / TARGET, 3) if best else None, "target": 1.0,
        "target_images_per_s": TARGET,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch-per-domain", type=int, default=64)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--budget-s", type=float, default=1000, help="seconds for all variants (default 1000)")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("no CUDA GPU here: nothing to measure")
        report("gpu_train_throughput", skipped="no CUDA GPU", target_images_per_s=TARGET, ratio=None, target=1.0)
        return
    results = run_variants(args.size, args.batch_per_domain, args.steps, args.budget_s)
    report(**summary(results, args.size))


if __name__ == "__main__":
    main()

"""The GPU check (run by scripts/gpu_check.sh): needs torch and torchvision only.

1. benchmarks/gpu_train_throughput.py's variants, within a time budget;
2. a 30-step compiled training of the real TrainingStep (built by the `cxr train` factory) on a
   generated batch set with learnable patterns: the classification loss must fall;
3. a checkpoint round trip: the state saved from the compiled run loads into an uncompiled
   method (same logits, exactly) and back into a compiled one (same logits up to kernel rounding).

Prints one JSON summary as its last line and writes it to --out. `--device cpu --size 64
--compile-backend eager` exercises the same code on a machine without a GPU.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "benchmarks")]  # the project, and the benchmarks' shared frame

from gpu_train_throughput import (  # noqa: E402
    FINDINGS,
    paper_spec,
    run_variants,
    summary,
    synthetic_batch,
)
from cxrmodel.method import Acceleration, build_method, load_method_state, method_state  # noqa: E402

BATCHES = 4  # the generated set: the step cycles over these


def patterned_batches(per_domain: int, size: int, device: torch.device) -> list[tuple]:
    """Noise with a bright square at finding c's own place on images positive for c."""
    cell = size // 4
    batches = []
    for seed in range(BATCHES):
        images, labels, domain, ids = synthetic_batch(per_domain, size, device, seed=seed)
        images = (images // 4).clone()
        for c in range(FINDINGS):
            row, col = divmod(c, 4)
            positive = (labels[:, c] == 1).nonzero().flatten()
            images[positive, row * cell:(row + 1) * cell, col * cell:(col + 1) * cell] = 220
        batches.append((images, labels, domain, ids))
    return batches


def compiled_training(per_domain: int, size: int, steps: int, acceleration: Acceleration,
                      device: torch.device) -> tuple[dict, dict]:
    torch.manual_seed(0)
    method = build_method(paper_spec(num_samples=BATCHES * 2 * per_domain), device, acceleration)
    batches = patterned_batches(per_domain, size, device)
    losses, started, warm = [], time.perf_counter(), None
    for i in range(steps):
        out = method.step(*batches[i % BATCHES], h=0.2)
        losses.append(out.losses["cls"].item())
        if i == 0:
            warm = time.perf_counter()
        if (i + 1) % BATCHES == 0:
            method.ensemble.end_epoch()
    first, last = sum(losses[:5]) / 5, sum(losses[-5:]) / 5
    result = {
        "steps": steps, "first_step_s": round(warm - started, 1),
        "images_per_s_after_first": round((steps - 1) * 2 * per_domain / (time.perf_counter() - warm), 1),
        "cls_loss_first5": round(first, 4), "cls_loss_last5": round(last, 4), "loss_fell": last < first,
    }
    return result, method_state(method)


def round_trip(state: dict, acceleration: Acceleration, per_domain: int, size: int, device: torch.device) -> dict:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    buffer.seek(0)
    loaded = torch.load(buffer, map_location=device, weights_only=True)  # what cxr loads checkpoints with
    spec = paper_spec(num_samples=BATCHES * 2 * per_domain)
    eager = build_method(spec, device, replace(acceleration, compile=False))
    load_method_state(eager, loaded)
    compiled = build_method(spec, device, acceleration)
    load_method_state(compiled, method_state(eager))
    images, _, domain, _ = synthetic_batch(per_domain, size, device, seed=9)
    x = images[:8, None].float() / 255
    eager.network.eval(), compiled.network.eval()
    with torch.no_grad():
        reference = eager.network(x, domain[:8]).logits
        reloaded = build_method(spec, device, replace(acceleration, compile=False))
        reloaded.network.load_state_dict(state["model"])
        exact = torch.equal(reloaded.network.eval()(x, domain[:8]).logits, reference)
        difference = (compiled.step.model(x, domain[:8]).logits - reference).abs().max().item()
    return {
        "orig_mod_keys": sum("_orig_mod" in k for k in state["model"]),
        "uncompiled_logits_identical": exact, "compiled_vs_uncompiled_max_abs_diff": difference,
        "ok": exact and difference < 1e-2 and not any("_orig_mod" in k for k in state["model"]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--batch-per-domain", type=int, default=64)
    parser.add_argument("--train-steps", type=int, default=30)
    parser.add_argument("--benchmark-budget-s", type=float, default=330)
    parser.add_argument("--compile-backend", default="inductor")
    parser.add_argument("--skip-benchmark", action="store_true")
    parser.add_argument("--out", default="gpu_check.json")
    args = parser.parse_args()
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        sys.exit("no CUDA GPU here: run with --device cpu --size 64 --compile-backend eager")
    started = time.perf_counter()
    report: dict = {"check": "gpu_check", "torch": torch.__version__,
                    "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu"}

    def save() -> None:
        Path(args.out).write_text(json.dumps(report, indent=1))

    if not args.skip_benchmark:
        results = run_variants(args.size, args.batch_per_domain, 30, args.benchmark_budget_s, device=args.device,
                               compile_backend=args.compile_backend, say=lambda line: print(line, flush=True))
        report["benchmark"] = summary(results, args.size)
        save()
    acceleration = replace(Acceleration.for_device(device, compile=True), compile_backend=args.compile_backend)
    report["training"], state = compiled_training(args.batch_per_domain, args.size, args.train_steps,
                                                  acceleration, device)
    print(f"training: {report['training']}", flush=True)
    save()
    report["round_trip"] = round_trip(state, acceleration, args.batch_per_domain, args.size, device)
    report["seconds"] = round(time.perf_counter() - started, 1)
    report["passed"] = bool(report["training"]["loss_fell"] and report["round_trip"]["ok"])
    save()
    print(json.dumps(report))
    sys.exit(0 if report["passed"] else 1)


if __name__ == "__main__":
    main()

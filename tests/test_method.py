"""configured_method wires what the config and the plan say, and a checkpoint round-trips what it built."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from cxrmodel import method as factory
from cxrmodel.heads import HolisticHead, MultiTaskHead, TaskSpecificHeads
from cxrmodel.method import Acceleration, load_method_state, method_state
from orchestration.settings.config import load_config
from orchestration.settings.plan import TrainingPlan
from orchestration.training.checkpoint import Progress, load_trained, restore_checkpoint, write_checkpoint
from orchestration.training.configured import acceleration, configured_method, method_spec

SPACE = ["Nodule", "Mass", "Effusion"]


def _plan(**changes) -> TrainingPlan:
    values = dict(data="", domains=["nih", "chexpert"], label_space=SPACE, common=["Mass", "Effusion"],
                  internal_only=["Nodule"], evaluated=SPACE, trained=["Nodule", "Mass"], alpha=[1.0, 3.0, 3.0],
                  beta=[4.0, 2.0, 1.0], positive=[2, 3, 0], negative=[8, 6, 0], ensemble=["Nodule"],
                  per_domain_batch=2, steps_per_epoch=1, num_samples=7)
    return TrainingPlan(**{**values, **changes})


def _small(**updates):
    return load_config(updates={"model.branch_features": 4, "model.discriminator_hidden": 4, **updates})


def test_the_full_method_takes_its_weights_from_the_plan_and_its_switches_from_the_config():
    method = configured_method(_small(**{"method.lambda_tat": 0.05, "method.lambda_ute": 7.0, "method.gamma": 0.8}), _plan())
    step = method.step
    assert torch.equal(step.alpha, torch.tensor([1.0, 3.0, 3.0])) and torch.equal(step.beta, torch.tensor([4.0, 2.0, 1.0]))
    assert step.num_classes == 2 and step.num_domains == 2  # eq. 1's C: the findings the domains label
    assert step.ensemble_findings.tolist() == [True, False, False]
    assert step.lambda_ute == 7.0 and step.lambda_tat == 0.05 and step.uncertainty and not step.hard_labels
    assert method.ensemble is step.ensemble and method.ensemble.gamma == 0.8
    assert method.ensemble.targets(torch.tensor([6]))[0].shape == (1, 3)  # rows for sample ids 0..num_samples-1
    assert isinstance(method.network.head, TaskSpecificHeads) and step.model is method.network
    assert method.optimizers.discriminators is not None
    assert method.optimizers.lr_schedule.optimizer is method.optimizers.network
    assert method.acceleration == Acceleration()  # CPU defaults: fp32, contiguous, eager
    assert step.ute_reduction == "mean"  # Laine & Aila's 1/(B·C), the paper's [22]
    older = configured_method(_small(**{"method.ute_reduction": "per_sample_sum"}), _plan())
    assert older.step.ute_reduction == "per_sample_sum"


def test_table_vi_switches_remove_what_they_name():
    joint = configured_method(_small(**{"method.adversarial": "none", "method.temporal_ensemble": False,
                                   "method.uncertainty": False}), _plan(ensemble=[]))
    assert joint.ensemble is None and joint.optimizers.discriminators is None
    assert not joint.step.ensemble_findings.any()
    holistic = configured_method(_small(**{"method.adversarial": "holistic"}), _plan())
    assert isinstance(holistic.network.head, HolisticHead)
    multi = configured_method(_small(**{"method.multi_task": True, "method.adversarial": "none"}), _plan())
    assert isinstance(multi.network.head, MultiTaskHead)
    hard = configured_method(_small(**{"method.hard_labels": True, "method.temporal_ensemble": False}), _plan())
    assert hard.step.hard_labels and hard.ensemble is not None


class _Wrapper(torch.nn.Module):
    """Stands in for DistributedDataParallel: the network as `.module`."""

    def __init__(self, module: torch.nn.Module):
        super().__init__()
        self.module = module

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)


def test_precision_settings_and_the_wrapper_reach_the_step():
    method = configured_method(_small(**{"train.bf16": True, "train.channels_last": True, "train.random_crop": True}),
                          _plan(), wrap=_Wrapper)
    assert isinstance(method.step.model, _Wrapper) and method.step.model.module is method.network
    assert method.autocast_dtype == torch.bfloat16 and method.step.autocast_dtype == torch.bfloat16
    assert method.acceleration.channels_last and method.step.channels_last and method.step.random_crop
    weight = method.network.backbone.features.conv0.weight
    assert weight.is_contiguous(memory_format=torch.channels_last)


def test_a_checkpoint_restores_the_built_method_and_loads_as_a_trained_model(tmp_path):
    config, plan = _small(), _plan()
    torch.manual_seed(0)
    method = configured_method(config, plan)
    images = torch.randint(0, 256, (4, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([[1, 0, -2], [0, 1, 1], [-2, 1, 0], [-2, 0, 1]], dtype=torch.int8)
    method.step(images, labels, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3]), h=0.3)
    method.ensemble.end_epoch()
    method.optimizers.lr_schedule.step()
    best = {k: v.clone() for k, v in method.network.state_dict().items()}
    progress = Progress(epoch=1, global_step=1, best_metric=0.7, best_step=1, history=[{"step": 1, "val_mean_auc": 0.7}])
    test = {"sample_id": np.arange(3), "probs": np.zeros((3, 3), np.float32), "labels": np.zeros((3, 3), np.int8)}
    write_checkpoint(tmp_path, method, progress, best, {"epoch": 1}, config, plan, test=test)

    torch.manual_seed(1)
    fresh = configured_method(config, plan)
    restored, best_state = restore_checkpoint(tmp_path, fresh, "cpu")
    assert restored == progress
    for key, value in method.network.state_dict().items():
        assert torch.equal(fresh.network.state_dict()[key], value), key
    assert fresh.optimizers.lr_schedule.last_epoch == 1
    assert torch.equal(fresh.ensemble.state_dict()["Z"], method.ensemble.state_dict()["Z"])
    assert fresh.optimizers.network.state_dict()["state"].keys() == method.optimizers.network.state_dict()["state"].keys()
    assert best_state.keys() == best.keys()

    net, loaded_config, loaded_plan = load_trained(tmp_path)
    assert loaded_plan == plan and loaded_config == config and not net.training
    for key, value in best.items():
        assert torch.equal(net.state_dict()[key], value), key


def test_gpu_workers_compile_fuse_adam_and_use_bf16_by_default_and_the_config_can_say_no():
    gpu = acceleration(_small(), "cuda")
    assert gpu.compile and gpu.fused_adam and gpu.bf16 and gpu.channels_last and gpu.cudnn_benchmark
    assert acceleration(_small(), "cpu") == Acceleration()
    off = acceleration(_small(**{"train.compile": False, "train.bf16": False}), "cuda")
    assert not off.compile and not off.bf16 and off.channels_last
    assert acceleration(_small(**{"train.compile": True, "train.compile_mode": "max-autotune"}), "cpu").compile_mode \
        == "max-autotune"


def test_native_bf16_is_the_gpus_and_the_cpus_with_bf16_instructions():
    """On the CPU, what the kernel says the cores have (the flags oneDNN's bf16 kernels need)."""
    assert factory.native_bf16("cuda")
    cpuinfo = Path("/proc/cpuinfo")
    if not cpuinfo.exists():
        pytest.skip("no /proc/cpuinfo to read the CPU's flags from")
    flags = {flag for line in cpuinfo.read_text().splitlines() if line.startswith("flags")
             for flag in line.split(":", 1)[1].split()}
    assert factory.native_bf16("cpu") == bool(flags & {"avx512_bf16", "amx_tile"}), sorted(flags)


def test_a_compiled_method_trains_the_saved_network_and_its_state_loads_uncompiled_and_back():
    spec = method_spec(_small(), _plan())
    torch.manual_seed(0)
    compiled = factory.build_method(spec, acceleration=Acceleration(compile=True, compile_backend="eager"))
    assert compiled.step.model is not compiled.network and compiled.step.model._orig_mod is compiled.network
    images = torch.randint(0, 256, (4, 32, 32), dtype=torch.uint8)
    labels = torch.tensor([[1, 0, -2], [0, 1, 1], [-2, 1, 0], [-2, 0, 1]], dtype=torch.int8)
    before = compiled.network.backbone.features.conv0.weight.detach().clone()
    compiled.step(images, labels, torch.tensor([0, 0, 1, 1]), torch.tensor([0, 1, 2, 3]), h=0.3)
    state = method_state(compiled)
    assert not any("_orig_mod" in key for key in state["model"])
    assert not torch.equal(state["model"]["backbone.features.conv0.weight"], before)  # trained what is saved

    plain = factory.build_method(spec)
    load_method_state(plain, state)
    again = factory.build_method(spec, acceleration=Acceleration(compile=True, compile_backend="eager"))
    load_method_state(again, method_state(plain))
    plain.network.eval(), again.network.eval(), compiled.network.eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        reference = compiled.network(x, torch.tensor([0, 1])).logits
        assert torch.equal(plain.network(x, torch.tensor([0, 1])).logits, reference)
        # The state reached the network that the compiled module runs (a compiled call in eval mode
        # would trace DenseIBN-121 once more, ~5 s; the compiled step above ran one).
        assert again.step.model._orig_mod is again.network
        assert torch.equal(again.network(x, torch.tensor([0, 1])).logits, reference)


def test_compile_scope_step_compiles_the_step_around_the_uncompiled_network():
    spec = method_spec(_small(), _plan())
    speed = acceleration(_small(**{"train.compile": True, "train.compile_scope": "step"}), "cpu")
    assert speed.compile and speed.compile_scope == "step"
    whole = factory.build_method(spec, acceleration=replace(speed, compile_backend="eager"))
    assert whole.step.model is whole.network  # not compiled twice
    assert whole.step._losses_run != whole.step._losses and whole.step._update_run != whole.step._update
    network_only = factory.build_method(spec, acceleration=Acceleration(compile=True, compile_backend="eager"))
    assert network_only.step.model._orig_mod is network_only.network
    assert network_only.step._losses_run == network_only.step._losses  # the step itself runs eagerly


def test_the_gpu_benchmark_measures_what_the_default_config_trains(monkeypatch):
    """benchmarks/gpu_train_throughput.py builds its spec by hand (the GPU machine has no pydantic):
    it must be the spec the default config gives for NIH (14 findings) + CheXpert (7 common)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train_throughput.py"
    monkeypatch.syspath_prepend(str(path.parent))  # as when run as a script: benchmarks/_common beside it
    loaded = importlib.util.spec_from_file_location("gpu_train_throughput", path)
    benchmark = importlib.util.module_from_spec(loaded)
    loaded.loader.exec_module(benchmark)
    spec = benchmark.paper_spec(num_samples=512)
    names = [f"finding{c}" for c in range(14)]
    plan = TrainingPlan(
        data="", domains=["nih", "chexpert"], label_space=names, common=names[7:], internal_only=names[:7],
        evaluated=names, trained=names, alpha=list(spec.alpha), beta=list(spec.beta), positive=[100] * 14,
        negative=[900] * 14, ensemble=names[:7], per_domain_batch=64, steps_per_epoch=1, num_samples=512)
    assert method_spec(load_config(), plan) == spec
    assert spec.alpha == (1.0,) * 7 + (3.0,) * 7 and spec.beta == (9.0,) * 14
    assert benchmark.VARIANTS["method_compiled"][0] == acceleration(load_config(), "cuda")

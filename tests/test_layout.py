"""The package layout docs/development.md describes: layers that do not import upwards, a shallow import
graph inside orchestration/, one MLflow schema, and light imports where users wait for them."""

from __future__ import annotations

import ast
import functools
import json
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# orchestration: cli -> its floor's verbs (cli.sweep_verbs) -> the verb's module -> the verb it runs (a sweep
# trains) -> its part (the worker loop) -> building block (the checkpoint format) -> settings -> schema
MAX_CHAIN = 8
# data_prep: pipeline -> images -> config -> readers -> readers.common -> findings
MAX_DATA_PREP_CHAIN = 6


def _module_name(path: Path, package_dir: Path) -> str:
    """`readers/nih.py` -> "readers.nih", `readers/__init__.py` -> "readers"."""
    parts = path.relative_to(package_dir).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _runtime_imports(path: Path, package: str, modules: set[str]) -> set[str]:
    """Modules of `package` (names relative to it, as in `modules`) that `path` imports when it
    runs: module level and inside functions, not under `if TYPE_CHECKING:` (annotations only)."""
    found: set[str] = set()

    def add(dotted: str) -> None:
        if dotted.startswith(f"{package}."):
            found.add(dotted[len(package) + 1:])

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module is None:
                return
            submodules = [f"{node.module}.{a.name}" for a in node.names
                          if f"{node.module}.{a.name}"[len(package) + 1:] in modules]
            for dotted in submodules:  # `from pkg import module` imports that module
                add(dotted)
            if len(submodules) < len(node.names):  # and names defined in pkg's own __init__
                add(node.module)

        def visit_Import(self, node: ast.Import) -> None:
            for alias in node.names:
                add(alias.name)

    Visitor().visit(ast.parse(path.read_text()))
    return found & modules


def import_graph(package: str) -> dict[str, set[str]]:
    """Each module of `package` (sub-packages included, `__init__` files as their package) -> the
    package's modules it imports."""
    package_dir = ROOT / package
    paths = {_module_name(p, package_dir): p for p in package_dir.rglob("*.py") if p.name != "__main__.py"}
    paths.pop("", None)  # the package's own __init__ (and `python -m` entry points, which nothing imports)
    return {name: _runtime_imports(path, package, set(paths)) - {name} for name, path in paths.items()}


def import_cycle(package: str) -> tuple[str, ...]:
    """One circle of imports inside `package` (a -> b -> ... -> a), or () when there is none."""
    graph = import_graph(package)
    state: dict[str, str] = {}  # "open" while on the path being followed, "done" after

    def follow(name: str, path: tuple[str, ...]) -> tuple[str, ...]:
        state[name] = "open"
        for dependency in sorted(graph[name]):
            if state.get(dependency) == "open":
                return path[path.index(dependency):] + (name, dependency)
            if dependency not in state and (cycle := follow(dependency, path + (name,))):
                return cycle
        state[name] = "done"
        return ()

    for name in sorted(graph):
        if name not in state and (cycle := follow(name, ())):
            return cycle
    return ()


def longest_import_chain(package: str) -> tuple[str, ...]:
    graph = import_graph(package)

    @functools.cache
    def chain(name: str) -> tuple[str, ...]:
        return (name,) + max((chain(d) for d in graph[name]), key=lambda c: (len(c), c), default=())

    return max((chain(name) for name in graph), key=lambda c: (len(c), c))


def test_no_package_imports_in_a_circle():
    for package in ("cxrmodel", "data_prep", "orchestration"):
        assert import_cycle(package) == (), f"{package}: " + " -> ".join(import_cycle(package))


def test_import_chains_are_short():
    for package, limit in (("orchestration", MAX_CHAIN), ("data_prep", MAX_DATA_PREP_CHAIN)):
        chain = longest_import_chain(package)
        assert len(chain) <= limit, f"{package}: " + " -> ".join(chain)


def test_the_import_measures_follow_function_level_imports_and_sub_packages(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "a.py").write_text("def f():\n    from pkg.b import x\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n"
                                  "from pkg.sub import c\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "c.py").write_text("y = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert longest_import_chain("pkg") == ("a", "b", "sub.c")
    assert import_cycle("pkg") == ()
    (package / "sub" / "c.py").write_text("def g():\n    import pkg.a\n")
    assert import_cycle("pkg") == ("a", "b", "sub.c", "a")


# What a metric name looks like: the schema's builders' outputs and their pieces (no whitespace).
METRIC_LIKE = re.compile(r"^(train|best|cross_domain|diagnostics)/|^best_(val|test)_|^clean_[^/]*/|^trials_"
                         r"|^(val|test)_(auc|mean)|(^|_)mean(_com|_int)?_auc$|auc/|auc_ci_"
                         r"|_at_(youden|sens|spec)|^(ece|brier)(_calibrated)?/|^calibration/")


def _spelled_names(path: Path) -> list[tuple[int, str]]:
    """String constants and f-string pieces in `path` that look like a `cxr.` tag or a metric name."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and not re.search(r"\s", node.value):
            if node.value.startswith("cxr.") or METRIC_LIKE.search(node.value):
                found.append((node.lineno, node.value))
    return found


def test_only_the_schema_spells_tags_and_metric_names():
    spelled = []
    for path in [*ROOT.glob("orchestration/**/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("data_prep/**/*.py")]:
        if path.name != "schema.py":
            spelled += [f"{path.relative_to(ROOT)}:{line} {value!r}" for line, value in _spelled_names(path)]
    assert not spelled, spelled


def test_the_spelling_guard_sees_tags_metric_names_and_f_string_pieces(tmp_path):
    code = tmp_path / "x.py"
    code.write_text('a = "cxr.kind"\nb = f"{split}_auc/{finding}"\nc = "train/lr"\nd = "val_mean_com_auc"\n'
                    'e = "the val_mean_auc of a run"\nf = "z_auc"\ng = f"best/{m}"\n')
    assert sorted(line for line, _ in _spelled_names(code)) == [1, 2, 3, 4, 7]


def _probes(folder: Path) -> dict[str, str]:
    """Code whose loaded modules a test checks, each run in a fresh interpreter."""
    return {
        "all of cxrmodel": "import importlib, pkgutil, cxrmodel\n"
                           "for m in pkgutil.iter_modules(cxrmodel.__path__):\n"
                           "    importlib.import_module(f'cxrmodel.{m.name}')",
        "the label encoding": "from cxrmodel.labels import UNKNOWN; from data_prep.findings import canonical_name",
        "cxr report": "from orchestration.cli import app\n"
                      f"try: app(['report', '--out', {str(folder / 'r')!r}, "
                      f"'mlflow.tracking_uri=sqlite:///{folder}/m.db'])\n"
                      "except SystemExit: pass\n"
                      "import orchestration.evaluation.report",
        "a sweep's driver": "import orchestration.cli.sweep_verbs, orchestration.sweeps.tune",
        # Commands that read prediction tables or MLflow, each run in the probe's folder until it finds
        # its input missing.
        "the commands that read predictions": f"import os; os.chdir({str(folder)!r})\n"
                                              "from orchestration.cli import app\n"
                                              "store = 'mlflow.tracking_uri=sqlite:///m.db'\n"
                                              "for argv in (['model-card', '--model', 'models:/absent/1', store],\n"
                                              "             ['evaluate', '--predictions', 'absent.csv', '--data', '.',\n"
                                              "              store],\n"
                                              "             ['compare', '--data', '.', '--predictions', 'a.csv',\n"
                                              "              '--predictions', 'b.csv', store]):\n"
                                              "    try: app(argv)\n"
                                              "    except SystemExit: pass\n"
                                              "import orchestration.evaluation.model_card, "
                                              "orchestration.evaluation.evaluate, orchestration.evaluation.comparison",
        # Ray Data's decode tasks of `cxr predict --images` import the module that holds their function.
        "the image decode tasks": "import orchestration.evaluation.image_prediction",
        # Every Ray Train worker and sweep trial imports the loop's module before its first step, and
        # scores its validation split (cxrmodel.roc's AUC: scikit-learn and scipy.stats cost a second).
        # A one-worker run's task imports the driver's module first: its function is pickled from there.
        "a training worker": "import numpy as np, orchestration.training.train, orchestration.training.worker\n"
                             "from cxrmodel.metrics import auc_report\n"
                             "auc_report(np.array([[.2], [.7]]), np.array([[0], [1]]), ['A'], evaluated=['A'], "
                             "common=[], internal_only=['A'])",
        # torchvision's import loads torch._dynamo: ~1.5 s in each `cxr` command that builds and scores
        # the network (predict, evaluate, calibrate, export, serve, explain, a run's artifacts), none of
        # which compiles. A training worker's optimizers load torch._dynamo anyway (torch.optim does), not
        # torchvision's ~0.4 s more. Heat maps are drawn here, not by the `grad-cam` package, which
        # imported torchvision and scikit-learn (~2 s more) in each process that explains.
        "building and running the network": "import numpy as np, torch, orchestration.training.worker\n"
                                            "from cxrmodel.inference import predict_probs\n"
                                            "from cxrmodel.method import MethodSpec, build_network\n"
                                            "from orchestration.evaluation.grad_cam import heat_maps\n"
                                            "spec = MethodSpec(num_findings=2, common=(0,), num_domains=2, "
                                            "alpha=(1.0, 1.0), beta=(1.0, 1.0), num_samples=4)\n"
                                            "net = build_network(spec).eval()\n"
                                            "images = torch.zeros(2, 64, 64, dtype=torch.uint8)\n"
                                            "predict_probs(net, images, tencrop=True)\n"
                                            "heat_maps(net, np.zeros((2, 64, 64), np.uint8), 1)",
    }


@pytest.fixture(scope="module")
def modules_after(tmp_path_factory):
    """The modules each probe left loaded. The interpreters start together the first time a test asks
    (each is ~2-4 s of imports on one core), not one after another."""
    listing = "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"
    running = {name: subprocess.Popen([sys.executable, "-c", code + listing], cwd=ROOT, text=True,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE)
               for name, code in _probes(tmp_path_factory.mktemp("probes")).items()}

    def loaded(name: str) -> list[str]:
        out, err = running[name].communicate(timeout=120)
        assert running[name].returncode == 0, f"{name}: {err[-3000:]}"
        return json.loads(out.strip().splitlines()[-1])

    yield loaded
    for process in running.values():
        process.kill()
        process.communicate()


def test_cxrmodel_needs_nothing_from_data_prep_or_orchestration(modules_after):
    loaded = modules_after("all of cxrmodel")
    assert "cxrmodel.training_step" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("data_prep", "orchestration")]


def test_the_label_encoding_loads_without_torch(modules_after):
    assert "torch" not in modules_after("the label encoding")


def test_cxr_report_loads_neither_torch_nor_ray_train(modules_after):
    loaded = modules_after("cxr report")
    assert "orchestration.evaluation.report" in loaded and "mlflow" in loaded
    assert "torch" not in loaded and not [m for m in loaded if m.startswith("ray.train")]


def test_a_sweeps_driver_loads_no_torch(modules_after):
    # Its trials train, each in a process of its own; the driver only books and watches them.
    loaded = modules_after("a sweep's driver")
    assert "orchestration.training.train" in loaded and "ray.tune" in loaded
    assert "torch" not in loaded


def test_commands_that_read_predictions_load_no_torch(modules_after):
    # cxr model-card, compare and evaluate --predictions score nothing: torch was ~2.4 s of their start here.
    loaded = modules_after("the commands that read predictions")
    assert {"orchestration.evaluation.model_card", "orchestration.evaluation.scoring", "mlflow"} <= set(loaded)
    assert "torch" not in loaded


def test_the_image_decode_tasks_load_neither_torch_nor_ray_train(modules_after):
    loaded = modules_after("the image decode tasks")
    assert "data_prep.images" in loaded
    assert "torch" not in loaded and not [m for m in loaded if m.startswith("ray.train")]


def test_the_training_workers_load_no_plotting_or_statistics_library(modules_after):
    loaded = modules_after("a training worker")
    assert "torch" in loaded and "orchestration.evaluation.scoring" in loaded and "cxrmodel.roc" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("matplotlib", "sklearn")], "a plotting or scikit-learn module"
    assert "scipy.stats" not in loaded


def test_a_one_worker_runs_task_loads_neither_ray_train_nor_tune(modules_after):
    # ~0.5 s of imports before its first step; a TorchTrainer's workers and sweep trials have them loaded.
    loaded = modules_after("a training worker")
    assert "orchestration.training.run_checkpoints" in loaded
    assert not [m for m in loaded if m.split(".")[:2] in (["ray", "train"], ["ray", "tune"])]


def test_what_builds_or_runs_the_network_loads_no_torchvision(modules_after):
    loaded = modules_after("building and running the network")
    assert not [m for m in loaded if m.split(".")[0] in ("torchvision", "sklearn")] and "torch._dynamo" not in loaded
    assert "cxrmodel.densenet" in loaded

"""The package layout the README describes: layers that do not import upwards, a shallow import
graph inside orchestration/, one MLflow schema, and light imports where users wait for them."""

from __future__ import annotations

import ast
import functools
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MAX_CHAIN = 5


def _runtime_imports(path: Path, package: str) -> set[str]:
    """Modules of `package` that `path` imports when it runs: module level and inside functions,
    not under `if TYPE_CHECKING:` (annotations only)."""
    found: set[str] = set()

    class Visitor(ast.NodeVisitor):
        def visit_If(self, node: ast.If) -> None:
            if isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
                for child in node.orelse:
                    self.visit(child)
            else:
                self.generic_visit(node)

        def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
            if node.module and node.module.startswith(f"{package}."):
                found.add(node.module.split(".")[1])

        def visit_Import(self, node: ast.Import) -> None:
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith(f"{package}."))

    Visitor().visit(ast.parse(path.read_text()))
    return found


def longest_import_chain(package: str) -> tuple[str, ...]:
    modules = {p.stem: p for p in (ROOT / package).glob("*.py") if p.stem != "__init__"}
    graph = {name: _runtime_imports(path, package) for name, path in modules.items()}

    @functools.cache
    def chain(name: str) -> tuple[str, ...]:
        return (name,) + max((chain(d) for d in graph[name]), key=len, default=())

    return max((chain(name) for name in graph), key=len)


def test_orchestration_import_chains_are_short():
    chain = longest_import_chain("orchestration")
    assert len(chain) <= MAX_CHAIN, " -> ".join(chain)


def test_the_chain_measure_follows_function_level_imports(tmp_path, monkeypatch):
    package = tmp_path / "pkg"
    package.mkdir()
    (package / "a.py").write_text("def f():\n    from pkg.b import x\n")
    (package / "b.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import f\n"
                                  "from pkg.c import y\n")
    (package / "c.py").write_text("y = 1\n")
    monkeypatch.setattr(sys.modules[__name__], "ROOT", tmp_path)
    assert longest_import_chain("pkg") == ("a", "b", "c")


def test_only_the_schema_spells_cxr_tags():
    spelled = []
    for path in [*ROOT.glob("orchestration/*.py"), *ROOT.glob("benchmarks/*.py"), *ROOT.glob("data_prep/*.py")]:
        if path.name == "tracking.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value.startswith("cxr."):
                spelled.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.value!r}")
    assert not spelled, spelled


def _modules_after(code: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_cxrmodel_needs_nothing_from_data_prep_or_orchestration():
    code = ("import importlib, pkgutil, cxrmodel\n"
            "for m in pkgutil.iter_modules(cxrmodel.__path__): importlib.import_module(f'cxrmodel.{m.name}')")
    loaded = _modules_after(code)
    assert "cxrmodel.training_step" in loaded
    assert not [m for m in loaded if m.split(".")[0] in ("data_prep", "orchestration")]


def test_the_label_encoding_loads_without_torch():
    loaded = _modules_after("from cxrmodel.labels import UNKNOWN; from data_prep.labels import canonical_name")
    assert "torch" not in loaded


def test_cxr_report_loads_neither_torch_nor_ray_train(tmp_path):
    code = ("from orchestration.cli import app\n"
            f"try: app(['report', '--out', {str(tmp_path / 'r')!r}, 'mlflow.tracking_uri=sqlite:///{tmp_path}/m.db'])\n"
            "except SystemExit: pass\n"
            "import orchestration.report")
    loaded = _modules_after(code)
    assert "orchestration.report" in loaded and "mlflow" in loaded
    assert "torch" not in loaded and not [m for m in loaded if m.startswith("ray.train")]

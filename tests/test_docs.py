"""The documentation: MkDocs builds it in strict mode (a broken link, a missing anchor or a page left
out of the navigation fails), and its configuration page lists every key of the typed config."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import yaml

from cxrmodel import paper
from orchestration.settings.config import Config
from orchestration.settings.config_reference import config_keys, field_comments, reference_table

ROOT = Path(__file__).resolve().parents[1]


def _build(config_file: Path, site: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-f", str(config_file), "-d", str(site)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)


def _copy_of_the_docs(tmp_path: Path) -> Path:
    """docs/ and mkdocs.yml copied to tmp_path, the hook named by its absolute path."""
    shutil.copytree(ROOT / "docs", tmp_path / "docs")
    settings = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    settings["docs_dir"] = str(tmp_path / "docs")
    settings["hooks"] = [str(ROOT / h) for h in settings["hooks"]]
    (tmp_path / "mkdocs.yml").write_text(yaml.safe_dump(settings))
    return tmp_path / "mkdocs.yml"


def test_the_documentation_builds_strictly_with_every_config_key(tmp_path):
    built = _build(ROOT / "mkdocs.yml", tmp_path / "site")
    assert built.returncode == 0, built.stderr
    page = (tmp_path / "site" / "configuration" / "index.html").read_text()
    missing = [k.key for k in config_keys() if f"<code>{k.key}</code>" not in page]
    assert not missing, missing


def test_a_broken_link_or_a_page_outside_the_navigation_fails_the_build(tmp_path):
    config_file = _copy_of_the_docs(tmp_path)
    assert _build(config_file, tmp_path / "site").returncode == 0
    index = tmp_path / "docs" / "index.md"
    original = index.read_text()
    index.write_text(original + "\nSee [the data page's lost section](data.md#no-such-section).\n")
    broken = _build(config_file, tmp_path / "site")
    assert broken.returncode != 0 and "no-such-section" in broken.stderr
    index.write_text(original)
    (tmp_path / "docs" / "orphan.md").write_text("# Not in the navigation\n")
    orphan = _build(config_file, tmp_path / "site")
    assert orphan.returncode != 0 and "orphan.md" in orphan.stderr


def test_the_reference_has_every_leaf_key_its_default_and_its_comment():
    keys = {k.key: k for k in config_keys()}
    sections = [name for name, field in Config.model_fields.items()]
    assert sections == ["prepare", "method", "model", "train", "mlflow"]
    assert keys["train.epochs"].default == str(paper.EPOCHS) and keys["method.lambda_ute"].default == "30.0"
    assert keys["method.h_schedule.start"].default == str(paper.H_START)
    assert keys["prepare.sources[].kind"].default == "required" and '"padchest"' in keys["prepare.sources[].kind"].type
    assert keys["train.steps_per_epoch"].type == "int \\| None"
    assert not [k for k, v in keys.items() if not v.comment], "every key has its comment in the source"
    assert len(reference_table().splitlines()) == len(keys) + 2


def test_comments_are_read_from_above_and_beside_a_field_only():
    from pydantic import BaseModel

    class Example(BaseModel):
        # what a is,
        # on two lines
        a: int = 1  # and beside it
        b: int = 2
        c: int = 3  # only c's
    assert field_comments(Example) == {"a": "what a is, on two lines and beside it", "b": "", "c": "only c's"}

"""The reader registry: one module in data_prep/readers/ makes a kind that prepare.sources accepts,
its own settings and its cxr prepare option."""

from __future__ import annotations

import sys

import pytest
import typer
from typer.testing import CliRunner

import data_prep.readers as readers
from data_prep.config import SourceConfig
from orchestration.cli.options import with_dataset_flags

TOY_READER = '''
from data_prep.readers.common import Reader, SourceTable

def read_toy(source, find_images):
    raise NotImplementedError

READER = Reader("toy", read_toy, order=5, layout="A toy folder (toy.csv).", settings=("vote",))
'''


@pytest.fixture
def toy_module(tmp_path, monkeypatch):
    (tmp_path / "toy.py").write_text(TOY_READER)
    monkeypatch.setattr(readers, "__path__", [*readers.__path__, str(tmp_path)])
    yield
    sys.modules.pop("data_prep.readers.toy", None)


def test_the_registered_kinds_are_the_modules_in_the_paper_order():
    assert list(readers.READERS) == ["nih", "chexpert", "mimic", "vindr", "padchest", "csv"]
    assert readers.KIND_SETTINGS == {"labeler": "mimic", "vote": "vindr", "skip_bad_labels": "padchest"}
    assert [k for k in readers.READERS if SourceConfig(name="x", kind=k, path=".").blank_value == "negative"] == [
        "chexpert", "mimic"]


def test_a_new_module_is_a_new_kind_in_its_place(toy_module):
    found = readers._registered()
    assert list(found) == ["nih", "chexpert", "mimic", "vindr", "padchest", "toy", "csv"]
    assert found["toy"].settings == ("vote",) and found["toy"].read.__name__ == "read_toy"


def test_a_kind_registered_twice_is_refused(tmp_path, monkeypatch):
    (tmp_path / "nih_again.py").write_text(TOY_READER.replace('"toy"', '"nih"'))
    monkeypatch.setattr(readers, "__path__", [*readers.__path__, str(tmp_path)])
    try:
        with pytest.raises(RuntimeError, match="nih_again.py: kind 'nih' is registered twice"):
            readers._registered()
    finally:
        sys.modules.pop("data_prep.readers.nih_again", None)


def test_every_folder_reader_is_an_option_handed_on_as_folders(tmp_path):
    seen = {}
    app = typer.Typer()

    @app.command()
    @with_dataset_flags
    def verb(folders, out: str = "x") -> None:
        seen.update(folders, out=out)

    result = CliRunner().invoke(app, ["--vindr", str(tmp_path), "--out", "y"])
    assert result.exit_code == 0, result.output
    assert seen == {"nih": None, "chexpert": None, "mimic": None, "vindr": tmp_path, "padchest": None, "out": "y"}
    help_text = CliRunner().invoke(app, ["--help"]).output
    assert "--padchest" in help_text and "--csv" not in help_text


@pytest.mark.parametrize("args,expected", [
    (["prepare", "--csv", "bad", "--dry-run"], "--csv 'bad': expected NAME=FILE, e.g. --csv inhouse=/data/labels.csv"),
    (["diagnose", "--run", "x", "--truth", "chexpert"],
     "--truth 'chexpert': expected DOMAIN=FILE, e.g. --truth chexpert=raw/chexpert/truth.csv"),
])
def test_a_key_file_option_without_its_file_is_refused_naming_the_key(args, expected):
    from orchestration.cli import app

    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and expected in " ".join(result.output.split()), result.output

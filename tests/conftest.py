"""Shared fixtures: the real label tables in ../shared/data, one local Ray per session, small synth sets."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = ROOT.parent / "shared" / "data"

# Quiet, fast-failing Ray for tests (RAY_NOTES "Startup costs").
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.25")
os.environ.setdefault("RAY_DATA_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TQDM_DISABLE", "1")
os.environ.setdefault("RAY_ENABLE_UV_RUN_RUNTIME_ENV", "0")


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real label tables not found at {SHARED_DATA} (only on the project's machines)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def ray_session():
    """One local Ray for the whole session; oversubscribed so Data and Train do not starve."""
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=4, resources={"trial_driver": 4}, include_dashboard=False,
                 logging_level="ERROR", log_to_driver=False)
    yield ray


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> Path:
    """A small synthetic copy of the three datasets (read-only for tests: copy before changing)."""
    from data_prep.synth import synthesize

    out = tmp_path_factory.mktemp("synth")
    synthesize(out, images_per_source=40, image_size=64, seed=3)
    return out


def synth_sources(root: Path) -> list[dict]:
    return [
        {"name": "nih", "kind": "nih", "path": str(root / "nih")},
        {"name": "chexpert", "kind": "chexpert", "path": str(root / "chexpert")},
        {"name": "inhouse", "kind": "csv", "path": str(root / "inhouse" / "labels.csv")},
    ]

"""`cxr explain`: Grad-CAM heat maps (`grad_cam`) of a trained model's top-scored images of a split,
written to a folder and logged to the model's training run when the tracking store knows it."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from data_prep.prepared import PreparedDataset
from orchestration.evaluation.grad_cam import INDEX_FILE, Explained, explain_top_images
from orchestration.evaluation.models import ModelReference
from orchestration.evaluation.scoring import score_split
from orchestration.settings.config import Config, ConfigError
from orchestration.settings.schema import EXPLAIN_ARTIFACT_DIR
from orchestration.settings.tracking import client_for
from orchestration.training.checkpoint import load_trained


def explain_model(config: Config, found: ModelReference, out: Path, *, data: Path | None, split: str,
                  domain: str | None, findings: list[str] | None, top: int, device: str,
                  say: Callable[[str], None]) -> Explained:
    """`explain_top_images` for a trained model, on a split of `data` (default: the data it was
    trained on) and `domain` (default: its internal one); logged under explain/ of its training run
    when the tracking store knows it."""
    net, _, plan = load_trained(found.checkpoint)
    prepared = PreparedDataset.load(data or plan.data)
    plan.require_labels_of(prepared)
    domain = domain or plan.internal
    if domain not in prepared.domains:
        raise ConfigError(f"--domain {domain!r} is not one of {prepared.domains}")
    chosen = findings or prepared.domain_findings(domain)
    say(f"scoring the {prepared.num_samples(domain, split):,} {domain} {split} images, then Grad-CAM "
        f"of the top {top} for {len(chosen)} findings")
    scores = score_split(net.to(device), prepared, domain, split, device=device)
    result = explain_top_images(net, plan.label_space, prepared, domain, split, scores, chosen, top, out,
                                progress=lambda line: say(f"  {line}"))
    say(f"wrote {len(result.sheets)} contact sheets, {len(result.index)} overlays and {out / INDEX_FILE}")
    if found.run_id is None:
        say("not logged to MLflow: no run in the store has this checkpoint")
    else:
        client_for(config).log_artifacts(found.run_id, str(out), EXPLAIN_ARTIFACT_DIR)
        say(f"logged under {EXPLAIN_ARTIFACT_DIR}/ of MLflow run {found.run_id}")
    return result

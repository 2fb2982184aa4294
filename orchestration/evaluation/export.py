"""`cxr export`: a trained model as one file that runs without this project's code, checked
against PyTorch before the export is called done.

The exported graph takes what `cxr prepare` writes, uint8 images (B, H, W) at the trained side
(any batch size), and returns one probability per finding (B, C), calibrated when the model has
temperatures (`cxr calibrate`). The decision point's thresholds, on that output's scale, the label
space and the preprocessing go beside it in `export.json`.

- onnx: torch.onnx's TorchScript-based exporter, checked with onnxruntime on the CPU. torch marks
  it deprecated in favour of the torch.export-based one, which writes an equally exact graph of
  DenseIBN but took 23 s against 2 s here (2 cores, 32² model): torch.export's trace and its
  decompositions. torch is pinned, so the exporter cannot vanish under a user;
- torchscript: torch.jit.trace, checked with torch.jit.load. Tracing is deprecated in torch but
  works on DenseIBN (no data-dependent control flow in the network).
"""

from __future__ import annotations

import contextlib
import io
import json
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from cxrmodel.inference import ProbabilityModel
from cxrmodel.inputs import GRAY_MEAN, GRAY_STD
from data_prep.prepared import PreparedDataset
from orchestration.evaluation.decisions import read_decisions
from orchestration.evaluation.models import ModelReference
from orchestration.settings.config import ConfigError
from orchestration.training.checkpoint import load_trained

FORMATS = {"onnx": "model.onnx", "torchscript": "model.pt"}
EXPORT_FILE = "export.json"
TOLERANCE = 1e-4  # the largest difference from PyTorch's probabilities an export may show
ONNX_OPSETS = range(7, 21)  # what torch.onnx's TorchScript-based exporter writes


class ExportError(ConfigError):
    """An export that does not reproduce the model's probabilities."""


@dataclass
class Exported:
    path: Path
    description: Path
    max_difference: float
    images_checked: int


def check_images(data: Path, domain: str, count: int) -> np.ndarray:
    """Up to `count` prepared test images of `domain` (else its validation ones): real inputs to check on."""
    prepared = PreparedDataset.load(data)
    for split in ("test", "val", "train"):
        for _, images, _ in prepared.iter_uint8_batches(domain, split, count):
            return images
    raise ConfigError(f"{data}: no prepared {domain} images to check the export on")


def export_model(found: ModelReference, out: Path, *, fmt: str = "onnx", opset: int | None = None,
                 data: Path | None = None, images: int = 16) -> Exported:
    """Write the model into `out` in `fmt`, run it there on real prepared images and refuse (the
    file removed) if any probability differs from PyTorch's by more than TOLERANCE."""
    if fmt not in FORMATS:
        raise ConfigError(f"--format {fmt!r}: expected one of {', '.join(FORMATS)}")
    if opset is not None and fmt != "onnx":
        raise ConfigError(f"--opset is for --format onnx, not {fmt}")
    if opset is not None and opset not in ONNX_OPSETS:
        raise ConfigError(f"--opset {opset}: expected an ONNX opset from {ONNX_OPSETS.start} to {ONNX_OPSETS.stop - 1}")
    net, config, plan = load_trained(found.checkpoint)
    decisions = read_decisions(found.checkpoint, plan.label_space)
    temperatures = (torch.tensor(decisions.temperature_vector(plan.label_space), dtype=torch.float32)
                    if decisions.temperatures else None)
    model = ProbabilityModel(net, temperatures).eval()
    batch = torch.from_numpy(check_images(data or plan.data, plan.internal, images))
    with torch.no_grad():
        expected = model(batch).numpy()
    out.mkdir(parents=True, exist_ok=True)
    path = out / FORMATS[fmt]
    example = batch[:2] if len(batch) > 2 else torch.cat([batch, batch])[:3]  # another size than the check's
    if fmt == "onnx":
        got = _onnx(model, example, batch, path, opset)
    else:
        got = _torchscript(model, example, batch, path)
    difference = float(np.abs(got - expected).max())
    if not difference <= TOLERANCE:  # NaN fails too
        path.unlink()
        raise ExportError(f"the {fmt} export's probabilities differ from PyTorch's by up to {difference:.2e} on "
                          f"{len(batch)} prepared images (allowed: {TOLERANCE:g}); nothing written")
    description, side = out / EXPORT_FILE, int(batch.shape[-1])
    description.write_text(json.dumps({
        "format": fmt, "file": path.name, "opset": _written_opset(path) if fmt == "onnx" else None,
        "input": {"name": "images", "dtype": "uint8", "shape": ["batch", side, side],
                  "preprocessing": f"x / 255, minus {GRAY_MEAN}, over {GRAY_STD} (inside the graph)"},
        "output": {"name": "probabilities", "shape": ["batch", len(plan.label_space)],
                   "calibrated": temperatures is not None},
        "label_space": plan.label_space, "evaluated": plan.evaluated,
        "temperatures": decisions.temperatures,
        "decision_point": decisions.decision_point,
        # On the output's scale: calibrated when the output is.
        "thresholds": decisions.calibrated_thresholds() if temperatures is not None else decisions.calls,
        "checked": {"images": len(batch), "max_abs_difference": difference, "tolerance": TOLERANCE},
        "source": {"checkpoint": str(Path(found.checkpoint).resolve()), "run_id": found.run_id,
                   "pretrained": config.model.weights is not None},
        "versions": _versions(fmt),
    }, indent=1))
    return Exported(path, description, difference, len(batch))


def _onnx(model: ProbabilityModel, example: torch.Tensor, batch: torch.Tensor, path: Path, opset: int | None
          ) -> np.ndarray:
    import onnxruntime

    kwargs = {"opset_version": opset} if opset else {}
    # The exporter may print to stdout; the console shows the project's own lines.
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", DeprecationWarning)  # the exporter's own; see the module's docstring
        warnings.simplefilter("ignore", torch.jit.TracerWarning)  # see _torchscript
        # IBN's instance norms keep no running statistics: they normalise by each image's own in
        # eval too, which is what the exporter warns it writes.
        warnings.filterwarnings("ignore", "ONNX export mode is set to TrainingMode.EVAL", UserWarning)
        torch.onnx.export(model, (example,), str(path), input_names=["images"], output_names=["probabilities"],
                          dynamic_axes={"images": {0: "batch"}, "probabilities": {0: "batch"}}, dynamo=False,
                          **kwargs)
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"images": batch.numpy()})[0]


def _torchscript(model: ProbabilityModel, example: torch.Tensor, batch: torch.Tensor, path: Path) -> np.ndarray:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated; it is what torchscript has
        # Tracing warns at each shape check inside torch's own modules (instance norm, interpolate):
        # the traced graph is checked against PyTorch on another batch size right after.
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.jit.trace(model, example).save(str(path))
        return torch.jit.load(str(path)).eval()(batch).numpy()  # the file just written here


def _written_opset(path: Path) -> int:
    """The ONNX opset the file declares (the exporter's default when --opset is not given)."""
    import onnx

    declared = onnx.load(str(path), load_external_data=False).opset_import
    return next(o.version for o in declared if o.domain in ("", "ai.onnx"))


def _versions(fmt: str) -> dict[str, str]:
    versions = {"torch": torch.__version__}
    if fmt == "onnx":
        import onnx
        import onnxruntime

        versions.update(onnx=onnx.__version__, onnxruntime=onnxruntime.__version__)
    return versions

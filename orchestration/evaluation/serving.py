"""`cxr serve`: a trained model behind an HTTP endpoint on Ray Serve.

    POST /predict   body: one PNG, JPEG or DICOM file (decoded as `cxr prepare` decodes, DICOM
                    windowing included) -> JSON: per finding the probability, the calibrated
                    probability and the 0/1 call (from the model's decisions file, else null),
                    with the model's name, version and run id
    GET  /healthz   -> {"status": "ok", ...} once the replica has loaded the model

Requests are scored in batches (`serve.batch`). A body that is not an image gets 400 with the
reason, one over the size limits (bytes, or pixels its header declares) 413; neither reaches the
model, so a bad request cannot take a replica down. Bound to 127.0.0.1 unless told otherwise: the
endpoint has no authentication of its own (docs/evaluation.md: behind an authenticating proxy).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from ray import serve
from starlette.requests import Request
from starlette.responses import JSONResponse

from data_prep.config import DEFAULT_MAX_PIXELS
from data_prep.images import ImageError, ImageTooLarge, decode_grayscale
from orchestration.settings.runtime import verbose

APP_NAME = "cxr"
MAX_BATCH = 16
DEFAULT_MAX_BODY_BYTES = 64 * 2**20  # a large uncompressed DICOM radiograph is ~30 MiB


@dataclass(frozen=True)
class Served:
    """What the endpoint names in every answer."""

    checkpoint: str
    image_size: int
    model_name: str | None
    model_version: str | None
    run_id: str | None
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_pixels: int = DEFAULT_MAX_PIXELS


class ModelEndpoint:
    """One replica: the model loaded once, images decoded per request, scored in batches."""

    def __init__(self, served: Served):
        import torch

        from cxrmodel.inference import predict_probs
        from orchestration.evaluation.decisions import read_decisions
        from orchestration.training.checkpoint import load_trained

        self.torch, self.predict_probs, self.served = torch, predict_probs, served
        self.device = "cuda" if torch.cuda.is_available() else "cpu"
        net, _, plan = load_trained(served.checkpoint)
        self.net, self.label_space, self.evaluated = net.to(self.device), plan.label_space, plan.evaluated
        self.decisions = read_decisions(served.checkpoint, plan.label_space)

    async def __call__(self, request: Request) -> JSONResponse:
        path = request.url.path.rstrip("/")
        if path == "/healthz":
            if request.method != "GET":
                return _error(405, "use GET /healthz")
            return JSONResponse({"status": "ok", **self._identity()})
        if path != "/predict":
            return _error(404, "no such path: POST an image to /predict, GET /healthz")
        if request.method != "POST":
            return _error(405, "POST the image file's bytes to /predict")
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > self.served.max_body_bytes:
            return _error(413, f"the body is {int(declared):,} bytes, more than the {self.served.max_body_bytes:,} "
                               "allowed")
        body = await request.body()
        if len(body) > self.served.max_body_bytes:
            return _error(413, f"the body is {len(body):,} bytes, more than the {self.served.max_body_bytes:,} allowed")
        try:
            image = decode_grayscale(body, self.served.image_size, max_pixels=self.served.max_pixels)
        except ImageTooLarge as exc:
            return _error(413, str(exc))
        except ImageError as exc:
            return _error(400, f"the body is not a usable image: {exc}")
        probs = await self.score(image)
        return JSONResponse({**self._identity(), "findings": self._findings(probs)})

    @serve.batch(max_batch_size=MAX_BATCH, batch_wait_timeout_s=0.005)
    async def score(self, images: list[np.ndarray]) -> list[np.ndarray]:
        batch = self.torch.from_numpy(np.stack(images)).to(self.device)
        return list(self.predict_probs(self.net, batch).cpu().numpy())

    def _identity(self) -> dict:
        s = self.served
        return {"model": s.model_name, "version": s.model_version, "run_id": s.run_id}

    def _findings(self, probs: np.ndarray) -> dict[str, dict]:
        from cxrmodel.calibration import scaled

        calibrated = (scaled(probs, self.decisions.temperature_vector(self.label_space))
                      if self.decisions.temperatures else None)
        calls = self.decisions.calls
        return {finding: {
            "probability": float(probs[c]),
            "calibrated_probability": None if calibrated is None else float(calibrated[c]),
            "call": int(probs[c] >= calls[finding]) if finding in calls else None,
            "evaluated": finding in self.evaluated,  # labelled by the internal domain: the AUC the model was chosen by
        } for c, finding in enumerate(self.label_space)}


def _error(status: int, reason: str) -> JSONResponse:
    return JSONResponse({"error": reason}, status_code=status)


def start_serving(served: Served, *, host: str, port: int, replicas: int, gpu: bool, cpus: float = 1.0,
                  timeout_s: float = 180.0) -> str:
    """Deploy the endpoint on the connected Ray (Serve's proxy on host:port) and wait until it
    answers; returns its URL."""
    if not verbose():  # Serve's driver-side INFO lines (started, deployed, deleted): in its log files
        logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(http_options={"host": host, "port": port},
                logging_config={"log_level": "WARNING", "enable_access_log": False})
    # A replica being stopped looks for requests still in flight every graceful_shutdown_wait_loop_s
    # (Serve's default 2 s): stopping the endpoint took 4.4 s here, 2.1 s with 0.2.
    deployment = serve.deployment(ModelEndpoint, name="model", num_replicas=replicas,
                                  ray_actor_options={"num_cpus": cpus, "num_gpus": 1 if gpu else 0},
                                  max_ongoing_requests=4 * MAX_BATCH, graceful_shutdown_wait_loop_s=0.2)
    serve.run(deployment.bind(served), name=APP_NAME, route_prefix="/", blocking=False,
              logging_config={"log_level": "WARNING", "enable_access_log": False})
    url = f"http://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}"
    _wait_healthy(url, timeout_s)
    return url


def _wait_healthy(url: str, timeout_s: float) -> None:
    import urllib.error
    import urllib.request

    deadline = time.monotonic() + timeout_s
    while True:
        try:
            with urllib.request.urlopen(f"{url}/healthz", timeout=5) as answer:
                if answer.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"the endpoint at {url} did not answer /healthz within {timeout_s:.0f} s; see the Serve "
                               "logs in the Ray session folder (logs/serve/)")
        time.sleep(0.5)


def stop_serving() -> None:
    """Remove the endpoint; Serve itself too when no other application runs on it."""
    serve.delete(APP_NAME)
    if not serve.status().applications:
        serve.shutdown()


def send_image(url: str, path: Path) -> tuple[int, dict]:
    """POST one file to the endpoint's /predict: (HTTP status, JSON answer)."""
    import json
    import urllib.error
    import urllib.request

    request = urllib.request.Request(f"{url}/predict", data=Path(path).read_bytes(), method="POST",
                                     headers={"Content-Type": "application/octet-stream"})
    try:
        with urllib.request.urlopen(request, timeout=60) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")

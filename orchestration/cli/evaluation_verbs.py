"""What a trained model is asked: cxr predict, evaluate, explain, diagnose, compare and report."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestration.cli import options as opt
from orchestration.cli.app import UsageError, config_from, lines, pairs, print_frame, say, tables, verb, warn


@verb
def predict(
    out: Annotated[Path, typer.Option(help="Output file: .parquet or .csv.")],
    data: Annotated[Optional[str], typer.Option(help="Prepared dataset folder or object-store URI (or give --images).")] = None,
    images: Annotated[Optional[Path], typer.Option(help="Raw images instead of --data: a folder (PNG, JPEG, DICOM, searched recursively) or a CSV with a path column.")] = None,
    model: opt.Model = None, run: opt.Run = None, checkpoint: opt.Checkpoint = None,
    split: opt.Split = "test",
    domain: Annotated[Optional[list[str]], typer.Option(help="With --data: domain(s) to predict (default: all).")] = None,
    tencrop: opt.Tencrop = False,
    device: Annotated[str, typer.Option(help="With --data: cpu or cuda (--images uses a GPU per actor when the cluster has them).")] = "cpu",
    image_size: Annotated[Optional[int], typer.Option(help="With --images: the side the model was trained at. Default: that of its prepared data.")] = None,
    actors: Annotated[int, typer.Option(help="With --images: at most this many model copies scoring in parallel.")] = 2,
    address: opt.Address = None, config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Write one probability per finding for every image of a prepared split, or of a folder / CSV of
    raw images (--images): image_id, domain, findings (and path).

    --run and --model names are looked up in the MLflow store and experiment of the config
    (--config / overrides such as mlflow.tracking_uri=..., else $MLFLOW_TRACKING_URI).
    """
    from orchestration.evaluation.models import chosen_model

    if (data is None) == (images is None):
        raise UsageError("give --data DIR (a prepared split) or --images DIR|CSV (raw files)")
    found = chosen_model(config_from(config, overrides), run=run, model=model, checkpoint=checkpoint)
    if images is not None:
        from orchestration.evaluation.image_prediction import predict_image_files

        result, skipped = predict_image_files(images, found.checkpoint, out, tencrop=tencrop, image_size=image_size,
                                              actors=actors, address=address, say=say)
        return say(f"wrote {len(result.table):,} predictions to {out}; {len(result.skipped)} images could not be "
                   f"used, listed with the reason in {skipped}")
    from orchestration.evaluation.prediction import predict_prepared, write_table

    frame = predict_prepared(found.checkpoint, data, split=split, domains=domain, tencrop=tencrop, device=device)
    write_table(frame, out)
    say(f"wrote {len(frame):,} predictions to {out}")


@verb
def evaluate(
    predictions: Annotated[Optional[Path], typer.Option(help="A file written by cxr predict.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="The prepared dataset: its labels, and its images when predicting here.")] = None,
    clean_labels: Annotated[Optional[Path], typer.Option(help="Google's relabelled NIH CSV: score Pneumothorax, Airspace opacity and Nodule or mass against it (Table VII).")] = None,
    set_name: Annotated[str, typer.Option("--set", help="With --clean-labels: the test or val rows (its Set Id column).")] = "test",
    model: opt.Model = None, run: opt.Run = None, checkpoint: opt.Checkpoint = None,
    split: opt.Split = "test",
    tencrop: opt.Tencrop = False, device: opt.Device = "cpu",
    csv_out: Annotated[Optional[Path], typer.Option("--csv", help="Also write the AUC table here.")] = None,
    stats_json: opt.StatsJson = None,
    bootstrap: opt.Bootstrap = 1000, seed: opt.Seed = 0,
    operating_points: Annotated[Optional[str], typer.Option(help="Thresholds to choose on the internal domain's validation split, e.g. youden,sens=0.90,spec=0.90: sensitivity, specificity, PPV, NPV and F1 at each on the test splits. Saved with the model; the first makes cxr predict's 0/1 calls. Needs the model and --data.")] = None,
    by: Annotated[Optional[str], typer.Option(help="Also score subgroups: any of sex, age_band (0-39, 40-59, 60-69, 70+), view (PA, AP, LATERAL), comma-separated. Needs --data.")] = None,
    subgroup_min: Annotated[int, typer.Option(min=1, help="With --by: a finding is scored in a subgroup with at least this many positives and negatives there.")] = 10,
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """AUC of a model's predictions per finding, with 95% bootstrap intervals; calibration (ECE over
    10 equal-mass bins, Brier score, reliability diagrams); optionally operating points. Printed and
    logged as an MLflow evaluation run.

    The evaluation run is linked to the training run given with --run (tag cxr.evaluates).
    Predictions come from --predictions FILE (cxr predict), or are made here with --model,
    --checkpoint or --run on --data. Labels: --data (per-finding AUC, Mean, Mean_Com and Mean_Int of
    every domain) or --clean-labels (AUC on Google's relabelled NIH images; images there without a
    prediction are counted). --run is looked up in the MLflow store and experiment of the config.
    """
    from orchestration.evaluation.evaluate import evaluate_model

    done = evaluate_model(config_from(config, overrides), predictions=predictions, data=data, clean_labels=clean_labels,
                          set_name=set_name, run=run, model=model, checkpoint=checkpoint, split=split,
                          tencrop=tencrop, device=device, bootstrap=bootstrap, seed=seed,
                          operating_points=operating_points, by=by, subgroup_min=subgroup_min)
    tables(done.tables(bootstrap))
    warn(done.result.warnings + done.warnings)
    lines([f"thresholds {note}" for note in done.notes])
    if csv_out:
        done.result.table.to_csv(csv_out)
    if stats_json:
        stats_json.write_text(json.dumps(done.result.stats, indent=1))
    say(f"logged as MLflow run {done.run_id}")


@verb
def calibrate(
    model: opt.Model = None, run: opt.Run = None, checkpoint: opt.Checkpoint = None,
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset. Default: the one the model was trained on.")] = None,
    tencrop: opt.Tencrop = False, device: opt.Device = "cpu",
    min_per_class: Annotated[int, typer.Option(min=1, help="Fit a finding's temperature only on at least this many positives and negatives (others keep T = 1).")] = 10,
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Fit one temperature per finding on the internal domain's validation split (temperature
    scaling: p' = sigmoid(logit(p) / T), T minimising the negative log-likelihood) and save them with
    the model: cxr predict, serve and export then also give calibrated probabilities.

    Prints ECE and Brier score before and after, on the same split; judge them on the test split
    with cxr evaluate. AUCs and calls are unchanged (the scaling is monotone).
    """
    from orchestration.evaluation.evaluate import calibrate_model
    from orchestration.evaluation.models import chosen_model

    cfg = config_from(config, overrides)
    found = chosen_model(cfg, run=run, model=model, checkpoint=checkpoint, find_run=True)
    table, note, warnings = calibrate_model(cfg, found, data, tencrop=tencrop, device=device,
                                            min_per_class=min_per_class)
    print_frame(table.round(4), "Temperatures fitted on the validation split")
    warn(warnings)
    say(f"temperatures {note}")


@verb
def explain(
    out: Annotated[Path, typer.Option(help="Folder for the contact sheets, overlays and explain.csv.")],
    model: opt.Model = None, run: opt.Run = None, checkpoint: opt.Checkpoint = None,
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset. Default: the one the model was trained on.")] = None,
    split: opt.Split = "test",
    domain: Annotated[Optional[str], typer.Option(help="The domain whose images are explained. Default: the model's internal one.")] = None,
    findings: Annotated[Optional[str], typer.Option(help="Comma-separated findings. Default: every finding the domain labels.")] = None,
    top: Annotated[int, typer.Option(help="Images per finding: the K the model scores highest.")] = 4,
    device: opt.Device = "cpu",
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Grad-CAM heat maps of where the model looks: for each finding, the K images of a split it
    scores highest, as overlays and one contact sheet, with explain.csv (probability, label and the
    heat map's peak per image).

    The maps weigh the last dense block's output (denseblock4, 1/32 of the image side) by the gradient
    of that finding's output, so a model trained at 256² gives 8x8 cells of evidence. When the model
    comes from a training run that the MLflow store knows, the folder is also logged to it under explain/.
    """
    from orchestration.evaluation.explanation import explain_model
    from orchestration.evaluation.models import chosen_model

    cfg = config_from(config, overrides)
    found = chosen_model(cfg, run=run, model=model, checkpoint=checkpoint, find_run=True)
    explain_model(cfg, found, out, data=data, split=split, domain=domain, top=top, device=device, say=say,
                  findings=[f.strip() for f in findings.split(",") if f.strip()] if findings else None)


@verb
def diagnose(
    run: Annotated[str, typer.Option(help="A cxr train run on generated data, by MLflow run id or run name.")],
    truth: Annotated[Optional[list[str]], typer.Option(help="DOMAIN=FILE: a domain's truth.csv (default: beside the dataset the run's data were prepared from).")] = None,
    probe_images: Annotated[int, typer.Option(help="Test images per domain for the TAT probe.")] = 400,
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Check the method's parts against the truth of data from cxr synth (its truth.csv).

    TE / UTE (for a run trained with train.ensemble_history=true): per epoch, on the external
    training images, the AUC of the temporal ensemble's targets z and of the network's own
    predictions p against the truth for each internal-only finding, and the share of entries UTE
    lets through (|0.5 - p| >= H) with how often they are right. TAT: the held-out AUC of a
    logistic-regression probe telling internal from external test images by each common finding's
    task-specific feature (0.5: the feature does not show the domain). Printed, and logged to the
    run under diagnostics/.
    """
    from orchestration.evaluation.diagnostics import diagnose_and_log

    files = pairs(truth, "truth", "DOMAIN", "chexpert=raw/chexpert/truth.csv")
    diagnosis, run_id = diagnose_and_log(config_from(config, overrides), run, truth_files=files, probe_images=probe_images)
    lines([f"note: {note}" for note in diagnosis.notes])
    tables(diagnosis.tables())
    say(f"logged to MLflow run {run_id} (metrics and artifacts diagnostics/)")


@verb
def compare(
    data: Annotated[Path, typer.Option(help="The prepared dataset whose labels score both models.")],
    predictions: Annotated[Optional[list[Path]], typer.Option(help="Two files written by cxr predict: A, then B.")] = None,
    run: Annotated[Optional[list[str]], typer.Option(help="Two models (training runs by id or name, or any --model reference), A then B: their logged test predictions.")] = None,
    split: Annotated[str, typer.Option(help="The split both were scored on.")] = "test",
    domain: Annotated[Optional[str], typer.Option(help="The domain compared. Default: the internal one.")] = None,
    bootstrap: Annotated[int, typer.Option(help="Paired bootstrap replicates for the intervals of Δ.")] = 2000,
    seed: opt.Seed = 0, stats_json: opt.StatsJson = None,
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Model B against model A on the images both scored: per finding AUC_A, AUC_B, Δ = B − A with a
    paired-bootstrap 95% interval, DeLong's p and Holm's p across findings; Δ and its interval for
    Mean, Mean_Com and Mean_Int. A difference whose interval holds 0 may be noise."""
    from orchestration.evaluation.comparison import compare_models, comparison_table

    result = compare_models(config_from(config, overrides), data, predictions=predictions, runs=run, domain=domain,
                            split=split, bootstrap=bootstrap, seed=seed)
    print_frame(comparison_table(result), f"B against A on {result.stats['num_images']:,} images "
                                           f"({result.domain}, {result.split}); {bootstrap} paired replicates")
    warn(result.notes(), "note")
    if stats_json:
        stats_json.write_text(json.dumps(result.stats, indent=1))


@verb
def report(
    out: Annotated[Path, typer.Option(help="Folder to write report.md, report.html and the figures into.")],
    experiment: Annotated[Optional[str], typer.Option(help="MLflow experiment (default: mlflow.experiment of the config).")] = None,
    parent: Annotated[Optional[str], typer.Option(help="Only this sweep: the MLflow id of its parent run.")] = None,
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Paper-style tables (Tables II, III, VI), Fig. 4 curves and Optuna plots from MLflow alone.

    Each sweep gets a section (also logged to its parent run under report/); stand-alone training
    runs get one more. Runs that failed, were stopped or are still running are listed apart.
    """
    from orchestration.evaluation.report import write_report
    from orchestration.settings.tracking import client_for

    cfg = config_from(config, overrides)
    lines(write_report(client_for(cfg), experiment or cfg.mlflow.experiment, out, parent, progress=say).lines())


@verb
def export(
    out: Annotated[Path, typer.Option(help="Folder for the exported model and its export.json.")],
    model: opt.Model = None, run: opt.Run = None, checkpoint: opt.Checkpoint = None,
    format: Annotated[str, typer.Option("--format", help="onnx (checked with onnxruntime) or torchscript (checked with torch.jit.load).")] = "onnx",
    opset: Annotated[Optional[int], typer.Option(help="With onnx: the ONNX opset. Default: torch.onnx's.")] = None,
    data: Annotated[Optional[Path], typer.Option(help="Prepared dataset whose images check the export. Default: the one the model was trained on.")] = None,
    images: Annotated[int, typer.Option(help="Prepared images the export is checked on.")] = 16,
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Export the model with its preprocessing: uint8 images (B, H, W) in, one probability per
    finding out (calibrated when cxr calibrate has run), any batch size.

    The file is then run on real prepared images and the export refused, the file removed, if any
    probability differs from PyTorch's by more than 1e-4. export.json beside it holds the label
    space, the thresholds of the model's operating point on the output's scale and what was checked.
    """
    from orchestration.evaluation.export import export_model
    from orchestration.evaluation.models import chosen_model

    found = chosen_model(config_from(config, overrides), run=run, model=model, checkpoint=checkpoint)
    done = export_model(found, out, fmt=format, opset=opset, data=data, images=images)
    say(f"wrote {done.path} and {done.description.name}: checked on {done.images_checked} prepared images, "
        f"largest difference from PyTorch {done.max_difference:.1e}")


@verb
def serve(
    model: opt.Model = None, run: opt.Run = None, checkpoint: opt.Checkpoint = None,
    host: Annotated[str, typer.Option(help="Address to listen on. The endpoint has no authentication: keep 127.0.0.1 unless it sits behind an authenticating proxy.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="HTTP port.")] = 8000,
    replicas: Annotated[int, typer.Option(min=1, help="Copies of the model answering requests.")] = 1,
    gpu: Annotated[bool, typer.Option("--gpu", help="One GPU per replica.")] = False,
    image_size: Annotated[Optional[int], typer.Option(help="The side the model was trained at. Default: that of its prepared data.")] = None,
    max_body_mb: Annotated[float, typer.Option(help="Largest request body accepted (MiB); larger ones get 413.")] = 64.0,
    check_with: Annotated[Optional[Path], typer.Option(help="Send this image once the endpoint is up, print the answer and stop (a smoke test).")] = None,
    address: opt.Address = None, config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Serve the model over HTTP on Ray Serve: POST a PNG, JPEG or DICOM file to /predict for each
    finding's probability, calibrated probability and 0/1 call (JSON, with the model's name,
    version and run id); GET /healthz. Runs until Ctrl-C or SIGTERM, which remove the endpoint.

    Requests are batched; an undecodable body gets 400, an oversized one 413, with the reason.
    """
    import time

    from orchestration.evaluation.models import chosen_model
    from orchestration.evaluation.prediction import trained_image_size
    from orchestration.evaluation.serving import Served, send_image, start_serving, stop_serving
    from orchestration.settings.runtime import exit_on_signals, init_ray
    from orchestration.training.checkpoint import trained_weights

    found = chosen_model(config_from(config, overrides), run=run, model=model, checkpoint=checkpoint)
    trained_weights(found.checkpoint)  # refuse an unusable checkpoint here, not in every replica
    served = Served(str(Path(found.checkpoint).resolve()), image_size or trained_image_size(found.checkpoint),
                    found.registered_name, found.registered_version, found.run_id,
                    max_body_bytes=int(max_body_mb * 2**20))
    if host not in ("127.0.0.1", "localhost", "::1"):
        warn([f"listening on {host}: anyone who reaches it can use the model; put an authenticating proxy in front"])
    init_ray(address)
    url = start_serving(served, host=host, port=port, replicas=replicas, gpu=gpu)
    if check_with is not None:
        status, answer = send_image(url, check_with)
        stop_serving()
        say(f"POST {check_with.name} to {url}/predict: HTTP {status}")
        typer.echo(json.dumps(answer, indent=1))
        if status != 200:
            raise typer.Exit(1)
        return
    def stopped(signal_name: str) -> None:  # Ctrl-C or a service manager's SIGTERM
        stop_serving()
        say(f"stopped by {signal_name}: the endpoint is removed")

    with exit_on_signals(stopped):
        say(f"serving {served.model_name or found.checkpoint} at {url}/predict (GET {url}/healthz); Ctrl-C stops")
        while True:
            time.sleep(3600)


@verb
def model_card(
    model: Annotated[str, typer.Option("--model", help="The registered version: models:/NAME/VERSION or models:/NAME@ALIAS.")],
    out: Annotated[Optional[Path], typer.Option(help="Also write model_card.md and model_card.json into this folder.")] = None,
    config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Write the model card of a registered version again, with the figures of the latest cxr
    evaluate of its training run (per-domain AUCs with intervals, calibration, operating points,
    subgroups) and its decisions (cxr calibrate, --operating-points): logged to the run under
    model_card/ and set as the version's description in the Model Registry."""
    from orchestration.evaluation.model_card import write_model_card
    from orchestration.evaluation.models import resolve_model
    from orchestration.settings.schema import MODEL_CARD_MD
    from orchestration.settings.tracking import client_for

    if not model.startswith("models:/"):
        raise UsageError("a model card belongs to a registered version: give --model models:/NAME/VERSION or "
                         "models:/NAME@ALIAS")
    cfg = config_from(config, overrides)
    found = resolve_model(cfg, model)
    card = write_model_card(client_for(cfg), found.run_id, found.registered_name, found.registered_version)
    if out:
        out.mkdir(parents=True, exist_ok=True)
        (out / "model_card.md").write_text(card.markdown())
        (out / "model_card.json").write_text(json.dumps(card.document, indent=1))
    say(f"model card of {found.registered_name} version {found.registered_version} logged to run {found.run_id} "
        f"({MODEL_CARD_MD}) and set as its description" + (f"; also in {out}" if out else ""))

"""cxr synth and cxr prepare: datasets generated, then read, joined, split and preprocessed."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Optional

import typer

from orchestration.cli import options as opt
from orchestration.cli.app import UsageError, config_from, lines, pairs, print_frame, say, verb, warn
from orchestration.settings.config import with_updates


@verb
def synth(
    out: Annotated[Path, typer.Option(help="Folder to write one folder per dataset into (nih/, chexpert/, inhouse/, ...).")],
    images_per_source: Annotated[Optional[int], typer.Option(help="Images per dataset (default 300; a scenario sets its own sizes).")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Side of the generated images in pixels (default 256, or the scenario's).")] = None,
    seed: Annotated[int, typer.Option(help="Random seed: the same seed writes the same files.")] = 0,
    inhouse_format: Annotated[str, typer.Option(help="dicom (a PACS-like mix: MONOCHROME1/2, 12/16 bits, windows, rescale, RLE / JPEG 2000, one file without pixels) or png16.")] = "dicom",
    sources: Annotated[str, typer.Option(help="Comma-separated, from nih, chexpert, inhouse, mimic (MIMIC-CXR-JPG), vindr (VinDr-CXR), padchest.")] = "nih,chexpert,inhouse",
    scenario: Annotated[Optional[str], typer.Option(help="Generate a scenario instead of the default look: 'paper' (NIH-like internal, CheXpert-like external, Table I prevalences, label noise, a shift in how findings look; data_prep/scenarios/paper.yaml) or a YAML file of that shape.")] = None,
) -> None:
    """Write NIH-, CheXpert-, in-house-, MIMIC-CXR-, VinDr-CXR- and PadChest-like datasets in the real on-disk formats, with learnable signal.

    Every dataset folder also gets truth.csv: each finding drawn in each image, labelled or not
    (cxr prepare never reads it; cxr diagnose does)."""
    from data_prep.scenario import load_scenario, synthesize_scenario
    from data_prep.synth import prepare_command, synthesize

    if scenario is not None and images_per_source is not None:
        raise UsageError("--images-per-source: a scenario sets each dataset's size; copy its YAML to change them")
    folders = (synthesize_scenario(out, load_scenario(scenario), seed=seed, image_size=image_size) if scenario else
               synthesize(out, images_per_source=images_per_source or 300, image_size=image_size or 256, seed=seed,
                          inhouse_format=inhouse_format, sources=tuple(x.strip() for x in sources.split(",") if x.strip())))
    notes, command = prepare_command(folders, inhouse_format)
    lines([*[f"wrote {name:9s} {folder}" for name, folder in folders.items()], *notes, f"next: {command}"])


TABLE_ONE_TITLE = "Findings per dataset (positives; '-' = not labelled; * = common to all)"


@verb
@opt.with_dataset_flags
def prepare(
    folders: dict[str, Optional[Path]],
    out: Annotated[Optional[str], typer.Option(help="Prepared dataset folder to write, or an object-store URI (s3://bucket/prefix).")] = None,
    list_presets: Annotated[bool, typer.Option("--list-presets", help="Print the label-map presets (source label -> finding) and stop.")] = False,
    csv: Annotated[Optional[list[str]], typer.Option(help="NAME=FILE: a dataset in the generic CSV schema (repeatable).")] = None,
    internal: Annotated[Optional[str], typer.Option(help="Name of the internal (target) dataset. Default: nih.")] = None,
    image_size: Annotated[Optional[int], typer.Option(help="Side of the stored square images. Default: 320.")] = None,
    max_bad_fraction: Annotated[Optional[float], typer.Option(help="Fail when more images than this are unusable. Default: 0.001.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Read label tables only: print the Table I summary, write no images.")] = False,
    stats_json: Annotated[Optional[Path], typer.Option(help="Write label statistics as JSON here.")] = None,
    overwrite: Annotated[bool, typer.Option("--overwrite", help="Replace an existing --out folder.")] = False,
    address: opt.Address = None, config: opt.ConfigFiles = None, overrides: opt.Overrides = None,
) -> None:
    """Read, join, split and preprocess the datasets into Parquet shards with Ray Data."""
    from data_prep.config import sources_with_flags
    from data_prep.findings import preset_lines
    from data_prep.join import dataset_stats, load_sources, table_one

    if list_presets:
        return lines(preset_lines())
    flags = {"internal": internal, "image_size": image_size, "max_bad_fraction": max_bad_fraction}
    cfg = config_from(config, overrides, *[f"prepare.{k}={v}" for k, v in flags.items() if v is not None])
    sources = sources_with_flags(cfg.prepare.sources, folders, pairs(csv, "csv", "NAME", "inhouse=/data/labels.csv"))
    cfg = with_updates(cfg, "prepare", sources=[s.model_dump(mode="json") for s in sources])
    if not dry_run and out is None:
        raise UsageError("--out is required (or use --dry-run)")
    if not dry_run:
        from cxrcommon.storage import Folder

        Folder.at(out).check_reachable()  # an object store that refuses us, before the datasets are read
    joined = load_sources(cfg.prepare, find_images=not dry_run)
    stats = dataset_stats(joined)
    warn(joined.warnings)
    if stats_json:
        stats_json.write_text(json.dumps(stats, indent=1))
    if dry_run:
        return print_frame(table_one(stats), TABLE_ONE_TITLE)
    from data_prep.pipeline import run_prepare
    from orchestration.settings.runtime import init_ray

    init_ray(address)
    manifest = run_prepare(joined, cfg.prepare, out, overwrite=overwrite, resolved_config=cfg.model_dump(mode="json")).manifest
    print_frame(table_one(manifest.model_dump()), TABLE_ONE_TITLE)
    warn(manifest.warnings[len(joined.warnings):], "note")  # remarks on images, from decoding
    say(f"prepared {manifest.num_samples:,} images into {out} ({len(manifest.skipped)} skipped, listed in manifest.json)")

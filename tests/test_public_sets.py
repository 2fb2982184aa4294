"""The MIMIC-CXR-JPG, VinDr-CXR and PadChest readers on `cxr synth`'s copies of their layouts:
counts per finding and split computed here from the raw files with the csv module, views,
policies, presets under a user's label_map, and bad input named by file and line."""

from __future__ import annotations

import csv
import gzip
import json
import shutil
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd
import pytest

from cxrcommon.errors import DataPrepError
from data_prep.config import SourceConfig
from data_prep.readers import read_source
from data_prep.synth import synthesize


@pytest.fixture(scope="module")
def raw(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("public")
    synthesize(out, images_per_source=60, image_size=32, seed=4, sources=("mimic", "vindr", "padchest"))
    return out


def _rows(path: Path) -> list[dict]:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", newline="") as f:
        return list(csv.DictReader(f))


def _counts(table, findings) -> dict:
    """{(split, finding): Counter of 1 / 0 / -2} from a SourceTable."""
    out = defaultdict(Counter)
    for _, row in table.rows.iterrows():
        for f in findings:
            out[(row["split"], f)][int(row[f])] += 1
    return out


# ---------------------------------------------------------------- MIMIC-CXR-JPG

def _mimic_expected(root: Path, labeler: str, views: str, uncertain: int, blank: int) -> dict:
    labels = {(r["subject_id"], r["study_id"]): r for r in _rows(root / f"mimic-cxr-2.0.0-{labeler}.csv.gz")}
    split = {r["dicom_id"]: {"validate": "val"}.get(r["split"], r["split"]) for r in _rows(root / "mimic-cxr-2.0.0-split.csv.gz")}
    wanted = {"all": None, "frontal": {"PA", "AP"}, "lateral": {"LATERAL"}}[views]
    out = defaultdict(Counter)
    for image in _rows(root / "mimic-cxr-2.0.0-metadata.csv.gz"):
        study = labels.get((image["subject_id"], image["study_id"]))
        if study is None or (wanted and image["ViewPosition"] not in wanted):
            continue
        for column, finding in (("Edema", "Edema"), ("Pleural Effusion", "Effusion"), ("Fracture", "Fracture")):
            value = {"1.0": 1, "0.0": 0, "-1.0": uncertain, "": blank}[study[column]]
            out[(split[image["dicom_id"]], finding)][value] += 1
    return out


@pytest.mark.parametrize("labeler, views, uncertain, blank", [
    ("chexpert", "all", "ones", None), ("chexpert", "frontal", "ignore", "unknown"), ("negbio", "lateral", "zeros", None),
])
def test_mimic_counts_per_split_and_finding(raw, labeler, views, uncertain, blank):
    source = SourceConfig(name="mimic", kind="mimic", path=raw / "mimic", labeler=labeler, views=views,
                          uncertain=uncertain, blank=blank)
    table = read_source(source)
    expected = _mimic_expected(raw / "mimic", labeler, views, {"ones": 1, "zeros": 0, "ignore": -2}[uncertain],
                               -2 if blank == "unknown" else 0)
    got = _counts(table, ["Edema", "Effusion", "Fracture"])
    assert {k: dict(v) for k, v in got.items()} == {k: dict(v) for k, v in expected.items()}
    assert set(table.rows["split"]) <= {"train", "val", "test"}
    assert "No Finding" not in table.findings and "Effusion" in table.findings
    first = table.rows.iloc[0]  # files/p<first 2 digits>/p<subject>/s<study>/<dicom_id>.jpg
    assert first["path"].endswith(f"/p{first['patient_id'][:2]}/p{first['patient_id']}/" + first["path"].split("/")[-2]
                                  + f"/{first['image_id']}.jpg") and Path(first["path"]).exists()
    if views == "all":  # synth leaves one study unlabelled
        assert any("without a row in" in w for w in table.warnings)


def test_mimic_bad_input_names_file_and_line(raw, tmp_path):
    root = tmp_path / "mimic"
    shutil.copytree(raw / "mimic", root)
    labels = _rows(root / "mimic-cxr-2.0.0-chexpert.csv.gz")
    labels[4]["Edema"] = "2.0"
    with gzip.open(root / "mimic-cxr-2.0.0-chexpert.csv.gz", "wt", newline="") as f:
        writer = csv.DictWriter(f, list(labels[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(labels)
    with pytest.raises(DataPrepError, match=r"mimic-cxr-2.0.0-chexpert.csv.gz line 6 column 'Edema': value '2.0'"):
        read_source(SourceConfig(name="mimic", kind="mimic", path=root))
    (root / "mimic-cxr-2.0.0-split.csv.gz").unlink()
    with pytest.raises(DataPrepError, match="no mimic-cxr-2.0.0-split.csv or mimic-cxr-2.0.0-split.csv.gz"):
        read_source(SourceConfig(name="mimic", kind="mimic", path=root))


# ---------------------------------------------------------------- VinDr-CXR

@pytest.mark.parametrize("vote", ["majority", "any"])
def test_vindr_votes_of_three_radiologists(raw, vote):
    root = raw / "vindr"
    reads = defaultdict(list)
    for r in _rows(root / "annotations" / "image_labels_train.csv"):
        reads[r["image_id"]].append(r)
    expected = Counter()
    for image, rs in reads.items():
        assert len(rs) == 3
        for column, finding in (("Nodule/Mass", "Lung Lesion"), ("Pleural effusion", "Effusion")):
            votes = sum(int(r[column]) for r in rs)
            expected[(finding, int(votes >= 1 if vote == "any" else votes >= 2))] += 1
        fracture_votes = sum(int(r["Rib fracture"]) or int(r["Clavicle fracture"]) for r in rs)
        expected[("Fracture", int(fracture_votes >= 1 if vote == "any" else fracture_votes >= 2))] += 1
    for r in _rows(root / "annotations" / "image_labels_test.csv"):
        expected[("test", "Effusion", int(r["Pleural effusion"]))] += 1

    table = read_source(SourceConfig(name="vindr", kind="vindr", path=root, vote=vote))
    train = table.rows[table.rows["split"] == "train_val"]
    got = Counter()
    for finding in ("Lung Lesion", "Effusion", "Fracture"):
        got.update((finding, int(v)) for v in train[finding])
    got.update(("test", "Effusion", int(v)) for v in table.rows.loc[table.rows["split"] == "test", "Effusion"])
    assert got == expected
    assert len(table.rows) == len(reads) + len(_rows(root / "annotations" / "image_labels_test.csv"))
    assert (table.rows["patient_id"] == table.rows["image_id"]).all()
    assert any("no patient ids" in w for w in table.warnings)
    # Every column of the release is in the preset (null: not trained), so none is "unlisted".
    assert not any("are ignored" in w for w in table.warnings)
    assert "Tuberculosis" in table.findings and "Aortic enlargement" not in table.findings
    assert table.rows["path"].map(lambda p: Path(p).suffix == ".dicom" and Path(p).exists()).all()


def test_vindr_label_map_overrides_the_preset(raw):
    table = read_source(SourceConfig(name="vindr", kind="vindr", path=raw / "vindr",
                                     label_map={"Nodule/Mass": "Nodule", "Lung tumor": "Mass"}))
    assert "Nodule" in table.findings and "Mass" in table.findings and "Lung Lesion" not in table.findings


# ---------------------------------------------------------------- PadChest

def _padchest_table(root: Path) -> Path:
    return root / "PADCHEST_chest_x_ray_images_labels_160K_01.02.19.csv.gz"


def test_padchest_counts_views_and_ignored_terms(raw):
    root = raw / "padchest"
    rows = _rows(_padchest_table(root))
    frontal = [r for r in rows if r["Projection"] in ("PA", "AP", "AP_horizontal")]
    terms = [[t.strip() for t in json.loads(r["Labels"].replace("'", '"'))] for r in frontal]
    table = read_source(SourceConfig(name="padchest", kind="padchest", path=root, views="frontal"))
    assert len(table.rows) == len(frontal)
    for finding, spellings in (("Effusion", {"pleural effusion"}), ("Hernia", {"hiatal hernia"}),
                               ("Fracture", {"rib fracture", "fracture", "clavicle fracture"})):
        assert int((table.rows[finding] == 1).sum()) == sum(bool(spellings & set(t)) for t in terms)
        assert int((table.rows[finding] == 0).sum()) == sum(not (spellings & set(t)) for t in terms)
    assert table.rows["split"].isna().all()
    assert "normal" not in " ".join(table.warnings)  # not a finding, not an ignored label either
    assert any("scoliosis" in w for w in table.warnings)
    assert table.rows["path"].map(lambda p: Path(p).exists()).all()


@pytest.mark.parametrize("cell", ["", "pleural effusion", "[]", "['a', 3]"])
def test_padchest_bad_labels_cell_is_refused_or_skipped(raw, tmp_path, cell):
    root = tmp_path / "padchest"
    shutil.copytree(raw / "padchest", root)
    rows = _rows(_padchest_table(root))
    rows[7]["Labels"] = cell
    with gzip.open(_padchest_table(root), "wt", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    with pytest.raises(DataPrepError, match=r"csv.gz line 9 column 'Labels'.*skip_bad_labels"):
        read_source(SourceConfig(name="padchest", kind="padchest", path=root))
    table = read_source(SourceConfig(name="padchest", kind="padchest", path=root, skip_bad_labels=True))
    assert len(table.rows) == len(rows) - 1 and rows[7]["ImageID"] not in set(table.rows["image_id"])
    assert any("1 rows with an empty or unparsable Labels cell skipped (first: " in w and "line 9" in w
               for w in table.warnings)


def test_kind_settings_belong_to_their_kind(raw):
    with pytest.raises(ValueError, match="vote applies to kind 'vindr' only"):
        SourceConfig(name="x", kind="mimic", path=raw, vote="any")


@pytest.mark.slow
def test_prepare_reads_every_kind_end_to_end(ray_session, tmp_path):
    """One `cxr prepare` over all six layouts (in-house as DICOM): every image the readers list is
    in the shards or in the skipped list, and each domain's labels read back as the readers gave."""
    from typer.testing import CliRunner

    from data_prep.prepared import PreparedDataset
    from orchestration.cli import app

    raw = tmp_path / "raw"
    kinds = ("nih", "chexpert", "inhouse", "mimic", "vindr", "padchest")
    made = CliRunner().invoke(app, ["synth", "--out", str(raw), "--images-per-source", "24", "--image-size", "32",
                                    "--seed", "2", "--sources", ",".join(kinds)])
    assert made.exit_code == 0, made.output
    # The command synth suggests, as printed.
    suggested = next(line for line in made.output.splitlines() if line.startswith("next: cxr prepare "))
    args = suggested.removeprefix("next: cxr ").replace("PREPARED_DIR", str(tmp_path / "prepared")).split()
    result = CliRunner().invoke(app, [*args, "--image-size", "16"])
    assert result.exit_code == 0, result.output
    prepared = PreparedDataset.load(tmp_path / "prepared")
    assert set(prepared.domains) == set(kinds)
    skipped = {(s["domain"], s["image_id"]) for s in prepared.manifest.skipped}
    assert {d for d, _ in skipped} == {"inhouse"}  # the one DICOM without pixels
    for kind in kinds:
        path = raw / kind / "labels.csv" if kind == "inhouse" else raw / kind
        table = read_source(SourceConfig(name=kind, kind="csv" if kind == "inhouse" else kind, path=path))
        expected = table.rows[~table.rows["image_id"].map(lambda i: (kind, i) in skipped)].set_index("image_id")
        stored = pd.concat([prepared.read_columns(kind, s, ["image_id", *table.findings]).to_pandas()
                            for s in ("train", "val", "test")]).set_index("image_id")
        assert sorted(stored.index) == sorted(expected.index), kind
        assert (stored[table.findings] == expected.loc[stored.index, table.findings]).all().all(), kind


def test_list_presets_prints_every_map(tmp_path):
    from typer.testing import CliRunner

    from data_prep.findings import load_preset, preset_names
    from orchestration.cli import app

    result = CliRunner().invoke(app, ["prepare", "--list-presets"])
    assert result.exit_code == 0, result.output
    for kind in preset_names():
        assert f"{kind} (" in result.output
        for label, finding in load_preset(kind).labels.items():
            assert f"  {label:28s} -> {finding or '(ignored)'}" in result.output
    assert preset_names() == ["mimic", "padchest", "vindr"]
    refused = CliRunner().invoke(app, ["synth", "--out", str(tmp_path), "--inhouse-format", "jpeg"])
    assert refused.exit_code == 2 and "--inhouse-format must be one of dicom, png16" in refused.output

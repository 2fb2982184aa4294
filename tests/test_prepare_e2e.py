"""`cxr prepare` end to end on a small synthetic set with real Ray Data; shards read back and
checked against counts and labels computed here from the raw CSVs."""

import csv
import json
import shutil
import subprocess

import numpy as np
import pydicom
import pytest
from typer.testing import CliRunner

from cxrcommon.errors import DataPrepError
from data_prep.images import load_grayscale
from data_prep.prepared import INCOMPLETE_MARKER, MANIFEST_NAME, PreparedDataset
from data_prep.synth import INHOUSE_FINDINGS
from orchestration.cli import app

runner = CliRunner()


@pytest.fixture(scope="module")
def damaged(synth_dir, tmp_path_factory):
    """The synth set with one zero-byte, one truncated and one missing image."""
    root = tmp_path_factory.mktemp("damaged")
    shutil.copytree(synth_dir, root, dirs_exist_ok=True)
    nih_image = sorted((root / "nih" / "images_001" / "images").glob("*.png"))[3]
    nih_image.write_bytes(b"")
    jpg = sorted((root / "chexpert").rglob("*.jpg"))[5]
    jpg.write_bytes(jpg.read_bytes()[:-100])
    inhouse = sorted((root / "inhouse" / "images").glob("*.dcm"))[2]
    inhouse.unlink()
    # `cxr synth` writes one in-house DICOM without pixel data, as a PACS export of a report would be.
    no_pixels = [p.name for p in (root / "inhouse" / "images").glob("*.dcm") if "PixelData" not in pydicom.dcmread(p)]
    assert len(no_pixels) == 1
    return root, {nih_image.name: "zero-byte file", jpg.name: "truncated JPEG", inhouse.name: "image file not found",
                  no_pixels[0]: "no PixelData"}


def _args(root, out, *extra):
    return [
        "prepare", "--nih", str(root / "nih"), "--chexpert", str(root / "chexpert"),
        "--csv", f"inhouse={root / 'inhouse' / 'labels.csv'}", "--out", str(out), "--image-size", "32",
        *extra,
    ]


@pytest.fixture(scope="module")
def prepared(ray_session, damaged, tmp_path_factory):
    root, _ = damaged
    out = tmp_path_factory.mktemp("prepared") / "p"
    result = runner.invoke(app, _args(root, out, "--max-bad-fraction", "0.05"))
    assert result.exit_code == 0, result.output
    return PreparedDataset.load(out)


def _nih_expected(root):
    with open(root / "nih" / "Data_Entry_2017_v2020.csv", newline="") as f:
        rows = list(csv.reader(f))[1:]
    test_list = set((root / "nih" / "test_list.txt").read_text().split())
    return {r[0]: (r[1].split("|"), r[0] in test_list) for r in rows}


def test_skipped_images_are_listed_with_reasons(prepared, damaged):
    _, expected = damaged
    skipped = {s["path"].rsplit("/", 1)[-1]: s["reason"] for s in prepared.manifest.skipped}
    assert set(skipped) == set(expected)
    for name, reason in expected.items():
        assert reason in skipped[name]


def test_counts_match_the_raw_tables(prepared, damaged):
    root, bad = damaged
    nih = _nih_expected(root)
    kept_nih = {k: v for k, v in nih.items() if k not in bad}
    assert prepared.num_samples("nih", "test") == sum(is_test for _, is_test in kept_nih.values())
    assert sum(prepared.num_samples("nih", s) for s in ("train", "val", "test")) == len(kept_nih)
    tables = root / "chexpert" / "CheXpert-v1.0-small"
    chexpert_train, chexpert_valid = (sum(1 for _ in open(tables / name)) - 1 for name in ("train.csv", "valid.csv"))
    # train.csv is divided into train / val by patient, one image truncated (a train/ one: `damaged`
    # cuts the 6th JPEG in path order); valid.csv is the test split (prepare.chexpert_test: valid).
    assert prepared.num_samples("chexpert", "train") + prepared.num_samples("chexpert", "val") == chexpert_train - 1
    assert prepared.num_samples("chexpert", "val") > 0 and prepared.num_samples("chexpert", "test") == chexpert_valid
    read_back = {
        d: sum(len(ids) for s in ("train", "val", "test") for ids, _, _ in prepared.iter_uint8_batches(d, s, 16))
        for d in prepared.domains
    }
    assert read_back == {d: prepared.manifest.domains[d].num_images for d in prepared.domains}
    assert prepared.manifest.num_samples == sum(read_back.values())
    assert all(prepared.manifest.patient_disjoint.values())


def test_labels_in_shards_match_the_csv(prepared, damaged):
    root, _ = damaged
    nih = _nih_expected(root)
    space = prepared.label_space
    import pyarrow.parquet as pq

    for split in ("train", "val", "test"):
        for path in prepared.shard_files("nih", split):
            table = pq.read_table(path).to_pydict()
            for i, image_id in enumerate(table["image_id"]):
                labels, is_test = nih[image_id]
                assert is_test == (split == "test")
                for finding in space:
                    if finding in prepared.domain_findings("nih"):
                        spelled = "Pleural_Thickening" if finding == "Pleural Thickening" else finding
                        assert table[finding][i] == int(spelled in labels), (image_id, finding)
                    else:
                        assert table[finding][i] == -2


def test_inhouse_label_and_image_round_trip(prepared, damaged):
    root, _ = damaged
    with open(root / "inhouse" / "labels.csv", newline="") as f:
        rows = {r["path"]: r for r in csv.DictReader(f)}
    import pyarrow.parquet as pq

    table = pq.read_table(prepared.shard_files("inhouse", "train")[0]).to_pydict()
    image_id = table["image_id"][0]
    for finding in INHOUSE_FINDINGS:
        raw = rows[image_id][finding]
        assert table[finding][0] == (-2 if raw == "" else int(raw))
    # The stored pixels are the DICOM's decoded 8 bits (test_dicom checks those against what synth
    # drew) resized to 32x32.
    stored = np.frombuffer(table["image"][0], np.uint8).reshape(32, 32)
    assert np.array_equal(stored, load_grayscale(str(root / "inhouse" / image_id), 32))


def test_sample_ids_are_unique_and_dense(prepared):
    ids = np.concatenate([
        ids for d in prepared.domains for s in ("train", "val", "test")
        for ids, _, _ in prepared.iter_uint8_batches(d, s, 64)
    ])
    assert len(ids) == len(set(ids.tolist()))
    skipped = [s["sample_id"] for s in prepared.manifest.skipped]
    assert max(ids.max(), *skipped) == prepared.manifest.max_sample_id
    assert prepared.manifest.max_sample_id + 1 == len(ids) + len(prepared.manifest.skipped)


def test_manifest_contents(prepared):
    m = prepared.manifest
    assert prepared.domains[0] == "nih" and m.internal == "nih"
    assert m.common == ["Atelectasis", "Cardiomegaly", "Consolidation", "Effusion", "Pneumonia", "Pneumothorax"]
    assert m.internal_only == ["Emphysema"]  # the in-house set labels the other NIH findings
    # P_c / N_c counted over the training shards of each domain; a run sums its own domains'.
    col = prepared.label_space.index("Atelectasis")

    def counts(domains):
        labels = np.concatenate([lab for d in domains for _, _, lab in prepared.iter_uint8_batches(d, "train", 64)])
        return {"positive": int((labels[:, col] == 1).sum()), "negative": int((labels[:, col] == 0).sum())}

    for d in prepared.domains:
        assert m.train_class_balance[d]["Atelectasis"].model_dump() == counts([d])
    assert prepared.class_balance(["nih", "chexpert"])["Atelectasis"] == counts(["nih", "chexpert"])
    assert counts(["nih"]) != counts(["nih", "chexpert"])
    assert m.config["prepare"]["image_size"] == 32


def test_too_many_bad_images_fails_but_keeps_the_list(ray_session, damaged, tmp_path):
    root, bad = damaged
    out = tmp_path / "p"
    result = runner.invoke(app, _args(root, out))
    assert result.exit_code == 2
    assert "4 of" in result.output and "--max-bad-fraction 0.001" in result.output
    assert not (out / MANIFEST_NAME).exists()
    assert len(json.loads((out / "skipped.json").read_text())) == len(bad)
    with pytest.raises(DataPrepError, match="did not finish"):
        PreparedDataset.load(out)
    # A half-written folder is one --overwrite may replace; the finished one is no longer marked.
    result = runner.invoke(app, _args(root, out, "--max-bad-fraction", "0.05", "--overwrite"))
    assert result.exit_code == 0, result.output
    assert not (out / INCOMPLETE_MARKER).exists() and PreparedDataset.load(out).manifest.num_samples > 0


def _files(folder):
    return sorted(str(p) for p in folder.rglob("*"))


def test_overwrite_never_deletes_the_inputs_or_a_folder_that_is_not_a_prepared_dataset(ray_session, damaged, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(damaged[0], raw)
    (tmp_path / "notes").mkdir()
    (tmp_path / "notes" / "thesis.tex").write_text("years of work")
    before = _files(tmp_path)
    refusals = {
        raw: "holds the input dataset",  # --out equal to the folder holding the datasets
        tmp_path: "holds the input dataset",  # above it
        raw / "nih" / "images_001": "holds the input image",  # inside a dataset's folder, holding its images
        tmp_path / "notes": "is not a prepared dataset",
    }
    for out, message in refusals.items():
        result = runner.invoke(app, [*_args(raw, out), "--overwrite", "--max-bad-fraction", "0.05"])
        assert result.exit_code == 2 and message in result.output, (out, result.output)
        assert _files(tmp_path) == before, out


def test_a_damaged_shard_is_named_with_the_way_to_re_prepare(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared.root, copy)
    shard = sorted(copy.rglob("*.parquet"))[0]
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2])
    damaged = f"shard {shard.relative_to(copy)} .* is truncated or damaged.*--out {copy}"
    with pytest.raises(DataPrepError, match=damaged):
        PreparedDataset.load(copy)
    middle = bytearray(data)
    middle[4:68] = b"\xff" * 64  # footer intact, the first page header damaged
    shard.write_bytes(bytes(middle))
    reloaded = PreparedDataset.load(copy)
    domain, split = shard.parent.parent.name.split("=")[1], shard.parent.name.split("=")[1]
    with pytest.raises(DataPrepError, match=f"shard {shard} cannot be read .*--overwrite` to re-create it"):
        reloaded.read_columns(domain, split, ["sample_id", "image", *reloaded.label_space])


@pytest.fixture
def small_disk(tmp_path):
    """A 64 KB tmpfs (the prepared set needs ~130 KB) and a read-only one (root only: skipped where
    mounting is not allowed)."""
    full, read_only = tmp_path / "full", tmp_path / "ro"
    full.mkdir(), read_only.mkdir()
    mounted = []
    try:
        for folder, options in ((full, "size=64k"), (read_only, "ro,size=64k")):
            mount = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
            if mount.returncode:
                pytest.skip("mounting a tmpfs needs root here")
            mounted.append(folder)
        yield full, read_only
    finally:
        for folder in mounted:
            subprocess.run(["umount", "-l", str(folder)], check=False)


def test_a_full_disk_or_a_read_only_folder_gives_one_error_line(ray_session, damaged, small_disk):
    root, _ = damaged
    full, read_only = small_disk
    result = runner.invoke(app, _args(root, read_only / "p", "--max-bad-fraction", "0.05"))
    assert result.exit_code == 2, result.output
    assert f"error: cannot write the prepared dataset at {read_only / 'p'}: Read-only file system" in result.output
    result = runner.invoke(app, _args(root, full / "p", "--max-bad-fraction", "0.05"))
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], result.output
    assert "marked incomplete" in result.output and not isinstance(result.exception, OSError)
    assert (full / "p" / INCOMPLETE_MARKER).exists() and not (full / "p" / MANIFEST_NAME).exists()
    with pytest.raises(DataPrepError, match="did not finish"):
        PreparedDataset.load(full / "p")


def test_existing_output_is_not_overwritten_by_accident(prepared, damaged):
    root, _ = damaged
    result = runner.invoke(app, _args(root, prepared.root))
    assert result.exit_code == 2 and "--overwrite" in result.output


def test_dry_run_needs_no_images(tmp_path, synth_dir):
    root = tmp_path / "labels_only"
    shutil.copytree(synth_dir, root, ignore=shutil.ignore_patterns("*.png", "*.jpg", "*.dcm"))
    stats_path = tmp_path / "stats.json"
    result = runner.invoke(app, [*_args(root, tmp_path / "unused")[:-4], "--dry-run", "--stats-json", str(stats_path)])
    assert result.exit_code == 0, result.output
    assert "Findings per dataset" in result.output
    stats = json.loads(stats_path.read_text())
    assert set(stats) == {"label_space", "common", "domains"}
    for d in stats["domains"].values():
        assert set(d) == {"role", "findings", "num_images", "num_patients", "splits", "counts"}
        assert set(d["splits"]) == {"train", "val", "test"}
        for counts in d["counts"].values():
            assert sum(counts.values()) == d["num_images"]
    assert not (tmp_path / "unused").exists()


def test_prepared_dir_checks(prepared, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(prepared.root, copy)
    manifest = json.loads((copy / MANIFEST_NAME).read_text())
    manifest["format_version"] = 999
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataPrepError, match="format_version 999.*re\\)create"):
        PreparedDataset.load(copy)
    manifest["format_version"] = prepared.manifest.format_version
    del manifest["train_class_balance"]
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    with pytest.raises(DataPrepError, match="manifest.json: train_class_balance: Field required"):
        PreparedDataset.load(copy)
    manifest["train_class_balance"] = prepared.manifest.model_dump()["train_class_balance"]
    (copy / MANIFEST_NAME).write_text(json.dumps(manifest))
    next(copy.rglob("*.parquet")).unlink()
    with pytest.raises(DataPrepError, match="is missing"):
        PreparedDataset.load(copy)
    with pytest.raises(DataPrepError, match="does not exist"):
        PreparedDataset.load(tmp_path / "nowhere")

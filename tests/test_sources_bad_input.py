"""Every kind of bad label table fails fast, naming the file, the row (CSV line) and the value."""

import gzip
import shutil

import pytest

from cxrcommon.errors import DataPrepError
from data_prep.config import SourceConfig
from data_prep.readers import read_source
from data_prep.synth import NIH_HEADER

NIH_ROW = "00000001_000.png,{labels},0,{patient},50,M,PA,2500,2048,0.143,0.143"


def _nih(tmp_path, rows, lists=None):
    folder = tmp_path / "nih"
    folder.mkdir()
    lines = [NIH_HEADER] + [
        NIH_ROW.replace("00000001_000.png", name).format(labels=labels, patient=patient)
        for name, labels, patient in rows
    ]
    (folder / "Data_Entry_2017.csv").write_text("\n".join(lines) + "\n")
    if lists:
        (folder / "train_val_list.txt").write_text("\n".join(lists[0]) + "\n")
        (folder / "test_list.txt").write_text("\n".join(lists[1]) + "\n")
    return SourceConfig(name="nih", kind="nih", path=folder)


def _generic(tmp_path, text, **kwargs):
    path = tmp_path / "labels.csv"
    path.write_text(text)
    return SourceConfig(name="inhouse", kind="csv", path=path, **kwargs)


def _read(source):
    return read_source(source, find_images=False)


def test_nih_quirky_header_is_read(tmp_path):
    table = _read(_nih(tmp_path, [("a.png", "Pleural_Thickening|Mass", 1), ("b.png", "No Finding", 2)]))
    assert table.findings == ["Pleural Thickening", "Mass"]
    assert table.rows["Mass"].tolist() == [1, 0]


def test_nih_gzipped_csv(tmp_path):
    source = _nih(tmp_path, [("a.png", "Mass", 1)])
    with open(source.path / "Data_Entry_2017.csv", "rb") as src, gzip.open(source.path / "Data_Entry_2017_v2020.csv.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    (source.path / "Data_Entry_2017.csv").unlink()
    assert _read(source).rows["Mass"].tolist() == [1]


def test_nih_unknown_label_names_the_line(tmp_path):
    source = _nih(tmp_path, [("a.png", "Mass", 1), ("b.png", "Mass|Calcification", 2)])
    with pytest.raises(DataPrepError, match=r"'Calcification' in .*Data_Entry_2017.csv line 3"):
        _read(source)


def test_nih_unknown_label_can_be_ignored_or_mapped(tmp_path):
    source = _nih(tmp_path, [("a.png", "Mass|Calcification", 1)])
    assert _read(source.model_copy(update={"label_map": {"Calcification": None}})).findings == ["Mass"]
    mapped = _read(source.model_copy(update={"label_map": {"Calcification": "Nodule"}}))
    assert mapped.findings == ["Mass", "Nodule"] and mapped.rows["Nodule"].tolist() == [1]


def test_nih_duplicate_image_ids(tmp_path):
    with pytest.raises(DataPrepError, match=r"duplicate image ids, e.g. 'a.png'"):
        _read(_nih(tmp_path, [("a.png", "Mass", 1), ("a.png", "Mass", 1)]))


def test_nih_patient_in_two_official_splits(tmp_path):
    source = _nih(tmp_path, [("a.png", "Mass", 7), ("b.png", "Mass", 7)], lists=(["a.png"], ["b.png"]))
    with pytest.raises(DataPrepError, match=r"patient '7' appears in more than one official split"):
        _read(source)


def test_nih_image_in_both_lists(tmp_path):
    source = _nih(tmp_path, [("a.png", "Mass", 7)], lists=(["a.png"], ["a.png"]))
    with pytest.raises(DataPrepError, match="'a.png' is in both"):
        _read(source)


def test_nih_missing_column_and_missing_csv(tmp_path):
    folder = tmp_path / "nih"
    folder.mkdir()
    with pytest.raises(DataPrepError, match=r"no Data_Entry_2017\*.csv"):
        _read(SourceConfig(name="nih", kind="nih", path=folder))
    (folder / "Data_Entry_2017.csv").write_text("Image Index,Patient ID\na.png,1\n")
    with pytest.raises(DataPrepError, match=r"missing column\(s\) \['Finding Labels'\]"):
        _read(SourceConfig(name="nih", kind="nih", path=folder))


def test_empty_dataset(tmp_path):
    source = _nih(tmp_path, [])
    with pytest.raises(DataPrepError, match="has no images"):
        _read(source)


def test_missing_folder(tmp_path):
    with pytest.raises(DataPrepError, match="does not exist"):
        _read(SourceConfig(name="nih", kind="nih", path=tmp_path / "nowhere"))


def _chexpert(tmp_path, value="1.0", view="Frontal"):
    folder = tmp_path / "CheXpert-v1.0-small"
    folder.mkdir(exist_ok=True)
    (folder / "train.csv").write_text(
        "Path,Sex,Age,Frontal/Lateral,AP/PA,No Finding,Edema,Pleural Effusion\n"
        "CheXpert-v1.0-small/train/patient00001/study1/view1_frontal.jpg,Male,50,Frontal,AP,,0.0,1.0\n"
        f"CheXpert-v1.0-small/train/patient00002/study1/view1_frontal.jpg,Male,50,{view},AP,,{value},\n"
    )
    return SourceConfig(name="chexpert", kind="chexpert", path=tmp_path)


def test_chexpert_found_from_parent_and_blank_policy(tmp_path):
    table = _read(_chexpert(tmp_path, value="-1.0"))
    assert table.findings == ["Edema", "Effusion"]
    assert table.rows["Edema"].tolist() == [0, 1]       # U-Ones
    assert table.rows["Effusion"].tolist() == [1, 0]    # blank -> negative by default
    assert table.rows["patient_id"].tolist() == ["patient00001", "patient00002"]
    unknown = _read(_chexpert(tmp_path, value="-1.0").model_copy(update={"blank": "unknown"}))
    assert unknown.rows["Effusion"].tolist() == [1, -2]


def test_chexpert_value_outside_allowed_set(tmp_path):
    with pytest.raises(DataPrepError, match=r"train.csv line 3 column 'Edema': value '2.0' is not one of 1, 0, -1"):
        _read(_chexpert(tmp_path, value="2.0"))


def test_chexpert_view_filter_can_empty_the_set(tmp_path):
    source = _chexpert(tmp_path).model_copy(update={"views": "lateral"})
    with pytest.raises(DataPrepError, match="no images after filtering"):
        _read(source)


def test_chexpert_missing_train_csv(tmp_path):
    with pytest.raises(DataPrepError, match="no CheXpert train.csv"):
        _read(SourceConfig(name="c", kind="chexpert", path=tmp_path))


def test_generic_csv_reads_labels_and_blank_is_unknown(tmp_path):
    table = _read(_generic(tmp_path, "path,patient_id,TB,Effusion\na.png,p1,1,\nb.png,p2,0,1\n"))
    assert table.findings == ["Effusion", "Tuberculosis"]
    assert table.rows["Effusion"].tolist() == [-2, 1]
    assert table.rows["Tuberculosis"].tolist() == [1, 0]
    assert table.rows["split"].isna().all()


def test_generic_csv_bad_value_unknown_label_bad_split(tmp_path):
    with pytest.raises(DataPrepError, match=r"labels.csv line 2 column 'Mass': value 'yes'"):
        _read(_generic(tmp_path, "path,patient_id,Mass\na.png,p1,yes\n"))
    with pytest.raises(DataPrepError, match=r"'Calcification' in .*labels.csv column 'Calcification'"):
        _read(_generic(tmp_path, "path,patient_id,Calcification\na.png,p1,1\n"))
    with pytest.raises(DataPrepError, match=r"line 3 column 'split': value 'holdout'"):
        _read(_generic(tmp_path, "path,patient_id,split,Mass\na.png,p1,train,1\nb.png,p2,holdout,0\n"))
    with pytest.raises(DataPrepError, match="patient 'p1' appears in more than one official split"):
        _read(_generic(tmp_path, "path,patient_id,split,Mass\na.png,p1,train,1\nb.png,p1,test,0\n"))
    with pytest.raises(DataPrepError, match=r"missing column\(s\) \['patient_id'\]"):
        _read(_generic(tmp_path, "path,Mass\na.png,1\n"))
    with pytest.raises(DataPrepError, match="line 2: empty 'patient_id'"):
        _read(_generic(tmp_path, "path,patient_id,Mass\na.png,,1\n"))


def test_generic_csv_malformed(tmp_path):
    with pytest.raises(DataPrepError, match="cannot be read as CSV"):
        _read(_generic(tmp_path, 'path,patient_id,Mass\na.png,p1,1,4,5\n"unclosed\n'))
    path = tmp_path / "bin.csv"
    path.write_bytes(b"\xff\xfe\x00\x81garbage")
    with pytest.raises(DataPrepError, match="cannot be read as CSV"):
        _read(SourceConfig(name="x", kind="csv", path=path))


def test_generic_csv_paths_relative_to_csv_folder(tmp_path):
    source = _generic(tmp_path, f"path,patient_id,Mass\nimg/a.png,p1,1\n{tmp_path}/abs.png,p2,0\n")
    table = read_source(source, find_images=True)
    assert table.rows["path"].tolist() == [str(tmp_path / "img" / "a.png"), f"{tmp_path}/abs.png"]


def test_paths_that_lead_outside_the_dataset_folder_are_refused(tmp_path):
    data, outside = tmp_path / "data", tmp_path / "elsewhere"
    data.mkdir(), outside.mkdir()
    (outside / "secret.dcm").write_bytes(b"x")
    (data / "link.dcm").symlink_to(outside / "secret.dcm")
    cases = {"../elsewhere/secret.dcm": "../elsewhere/secret.dcm", str(outside / "secret.dcm"): str(outside),
             "link.dcm": f"-> {outside / 'secret.dcm'}"}
    for path, named in cases.items():
        source = _generic(data, f"path,patient_id,Mass\nok.png,p1,1\n{path},p2,0\n")
        with pytest.raises(DataPrepError, match=r"1 image path\(s\) lead outside its folder") as refused:
            read_source(source, find_images=True)
        assert named in str(refused.value) and "prepare.allow_outside_root=true" in str(refused.value)
        (data / "labels.csv").unlink()
    source = _generic(data, "path,patient_id,Mass\n../elsewhere/secret.dcm,p1,1\n")
    assert len(read_source(source, find_images=True, allow_outside_root=True).rows) == 1
    assert len(read_source(source, find_images=False).rows) == 1  # label tables alone read no images


def test_a_chexpert_path_that_climbs_out_is_refused(tmp_path):
    from data_prep.synth import synthesize

    synthesize(tmp_path / "raw", images_per_source=20, image_size=32, seed=0, sources=("chexpert",))
    train_csv = next((tmp_path / "raw" / "chexpert").rglob("train.csv"))
    lines = train_csv.read_text().splitlines()
    first = lines[1].split(",")
    first[0] = "../../../etc/patient00001/study1/view1_frontal.jpg"
    train_csv.write_text("\n".join([lines[0], ",".join(first), *lines[2:]]) + "\n")
    with pytest.raises(DataPrepError, match="lead outside its folder"):
        read_source(SourceConfig(name="chexpert", kind="chexpert", path=tmp_path / "raw" / "chexpert"))


def test_chexpert_valid_csv_is_the_test_split_unless_told_otherwise(tmp_path):
    import pandas as pd

    from data_prep.config import PrepareConfig
    from data_prep.join import load_sources
    from data_prep.synth import synthesize

    synthesize(tmp_path / "raw", images_per_source=40, image_size=32, seed=1, sources=("nih", "chexpert"))
    folder = next((tmp_path / "raw" / "chexpert").rglob("valid.csv")).parent
    valid = set(pd.read_csv(folder / "valid.csv")["Path"])
    train = set(pd.read_csv(folder / "train.csv")["Path"])
    sources = [SourceConfig(name="nih", kind="nih", path=tmp_path / "raw" / "nih"),
               SourceConfig(name="chexpert", kind="chexpert", path=tmp_path / "raw" / "chexpert")]

    def splits(**settings):
        rows = load_sources(PrepareConfig(sources=sources, **settings), find_images=False).rows
        rows = rows[rows["domain"] == "chexpert"]
        return {s: set(rows.loc[rows["split"] == s, "image_id"]) for s in ("train", "val", "test")}

    default = splits()
    assert default["test"] == valid  # the official valid.csv images
    assert default["train"] | default["val"] == train and default["val"] and not default["train"] & default["val"]
    old = splits(chexpert_test="none")
    assert old == {"train": train, "val": valid, "test": set()}

import pandas as pd
from hypothesis import given, settings
from hypothesis import strategies as st

from data_prep.split import assign_splits, patients_crossing_splits

rows_strategy = st.lists(
    st.tuples(st.integers(0, 40), st.sampled_from([None, None, "train_val", "test"])),
    min_size=1, max_size=200,
)


def _frame(items):
    # An official split is per patient: make the patient's first value its value everywhere.
    first = {}
    for p, s in items:
        first.setdefault(p, s)
    return pd.DataFrame({"patient_id": [f"p{p}" for p, _ in items], "split": [first[p] for p, _ in items]})


@settings(max_examples=150, deadline=None)
@given(rows_strategy, st.floats(0, 0.45), st.floats(0, 0.45), st.integers(0, 5))
def test_no_patient_is_in_two_splits_and_official_test_stays(items, val, test, seed):
    rows = _frame(items)
    split = assign_splits(rows, val_fraction=val, test_fraction=test, seed=seed)
    assert set(split) <= {"train", "val", "test"}
    assert patients_crossing_splits(rows["patient_id"], split) == []
    assert (split[rows["split"] == "test"] == "test").all()
    assert (split[rows["split"] == "train_val"] != "test").all()


@settings(max_examples=60, deadline=None)
@given(rows_strategy, st.integers(0, 5))
def test_assignment_does_not_depend_on_row_order(items, seed):
    rows = _frame(items)
    split = assign_splits(rows, val_fraction=0.2, test_fraction=0.2, seed=seed)
    shuffled = rows.sample(frac=1.0, random_state=1)
    again = assign_splits(shuffled, val_fraction=0.2, test_fraction=0.2, seed=seed)
    assert (again.sort_index() == split.sort_index()).all()


def test_fractions_are_met_by_patient_count():
    rows = pd.DataFrame({"patient_id": [f"p{i // 2}" for i in range(2000)], "split": [None] * 2000})
    split = assign_splits(rows, val_fraction=0.1, test_fraction=0.2, seed=0)
    per_patient = pd.DataFrame({"p": rows["patient_id"], "s": split}).drop_duplicates()["s"].value_counts()
    assert per_patient.to_dict() == {"train": 700, "test": 200, "val": 100}


def test_seed_changes_the_assignment():
    rows = pd.DataFrame({"patient_id": [f"p{i}" for i in range(100)], "split": [None] * 100})
    a = assign_splits(rows, val_fraction=0.1, test_fraction=0.2, seed=0)
    b = assign_splits(rows, val_fraction=0.1, test_fraction=0.2, seed=1)
    assert (a != b).any()


def test_small_sets_still_get_a_validation_patient():
    rows = pd.DataFrame({"patient_id": ["a", "b", "c", "d"], "split": ["train_val"] * 4})
    split = assign_splits(rows, val_fraction=0.05, test_fraction=0.0, seed=0)
    assert (split == "val").sum() == 1 and (split == "train").sum() == 3

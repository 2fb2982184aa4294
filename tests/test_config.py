import json

import pytest

from orchestration.settings.config import ConfigError, flatten_config, load_config, parse_override


def test_defaults_validate():
    cfg = load_config()
    assert cfg.prepare.image_size == 320 and cfg.prepare.internal == "nih"


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("prepare:\n  image_size: 128\n  val_fraction: 0.2\n")
    cfg = load_config([f], ["prepare.image_size=64"])
    assert cfg.prepare.image_size == 64 and cfg.prepare.val_fraction == 0.2


def test_override_values_are_yaml_typed():
    assert parse_override("a.b=0.03") == ("a.b", 0.03)
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=nih") == ("a.b", "nih")


def test_unknown_key_names_key_and_allowed_ones():
    with pytest.raises(ConfigError, match=r"unknown key 'prepare.imagesize'; allowed here: .*image_size"):
        load_config([], ["prepare.imagesize=64"])


def test_bad_value_names_key_value_and_rule():
    with pytest.raises(ConfigError, match=r"prepare.image_size=8: Input should be greater than or equal to 16"):
        load_config([], ["prepare.image_size=8"])
    with pytest.raises(ConfigError, match=r"val_fraction \+ prepare.test_fraction must be < 1"):
        load_config([], ["prepare.val_fraction=0.6", "prepare.test_fraction=0.5"])


def test_malformed_override_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="not of the form"):
        load_config([], ["prepare.image_size"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_config([tmp_path / "missing.yaml"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- just\n- a list\n")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_config([bad])


def test_internal_must_be_a_dataset(tmp_path):
    with pytest.raises(ConfigError, match="prepare.internal='mimic' is not one of the datasets"):
        load_config([], ["prepare.internal=mimic", "prepare.sources=[{name: nih, kind: nih, path: /x}]"])


def test_flatten_for_mlflow_params():
    flat = flatten_config(load_config([], ["prepare.image_size=64"]))
    assert flat["prepare.image_size"] == 64


def test_load_config_leaves_the_callers_base_unchanged():
    base = load_config().model_dump(mode="json")
    before = json.dumps(base, sort_keys=True)
    changed = load_config(base=base, updates={"method.h_schedule.start": 0.3, "train.domains": ["nih"]})
    assert changed.method.h_schedule.start == 0.3 and changed.train.domains == ["nih"]
    assert json.dumps(base, sort_keys=True) == before  # a shallow copy shared method.h_schedule


def test_a_retired_key_in_a_saved_config_is_ignored_with_a_note(tmp_path, capsys):
    saved = tmp_path / "best_config.yaml"  # as a sweep of an older version wrote it
    saved.write_text("train:\n  epochs: 3\n  reproducible_order: false\n")
    config = load_config([saved], ["train.lr=0.01"])
    assert (config.train.epochs, config.train.lr) == (3, 0.01)
    assert "reproducible_order" not in config.model_dump()["train"]
    assert "note: train.reproducible_order is no longer a setting" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="unknown key 'train.reproducible_orders'"):
        load_config([], ["train.reproducible_orders=true"])  # a misspelt key is still refused

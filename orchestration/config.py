"""The one typed config of cxr-orchestra: YAML files + dotted overrides, validated once at the edge.

    cfg = load_config(["configs/paper.yaml"], ["train.lambda_tat=0.03", "prepare.image_size=256"])

A bad key or value raises ConfigError naming the key, the value and what is allowed, before any
Ray work starts.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from data_prep.config import PrepareConfig


class ConfigError(ValueError):
    """A configuration that cannot be used; the message says which key and what is allowed."""


class Config(BaseModel):
    model_config = ConfigDict(extra="forbid")

    prepare: PrepareConfig = Field(default_factory=PrepareConfig)


def _set_dotted(tree: dict, dotted: str, value: Any) -> None:
    keys = dotted.split(".")
    node = tree
    for key in keys[:-1]:
        child = node.setdefault(key, {})
        if not isinstance(child, dict):
            raise ConfigError(f"override {dotted!r}: {key!r} is a value, not a section")
        node = child
    node[keys[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """'train.lambda_tat=0.03' -> ('train.lambda_tat', 0.03); values are read as YAML scalars/lists."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} is not of the form section.key=value")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"override {text!r}: value is not valid YAML ({exc})") from exc
    return key.strip(), value


def _allowed_keys(model: type[BaseModel], path: Sequence[str | int]) -> list[str]:
    for key in path:
        if isinstance(key, int):
            continue
        field = model.model_fields.get(str(key))
        annotation = getattr(field, "annotation", None)
        inner = [a for a in getattr(annotation, "__args__", ()) if isinstance(a, type)]
        candidates = [annotation, *inner]
        nested = [c for c in candidates if isinstance(c, type) and issubclass(c, BaseModel)]
        if not nested:
            return []
        model = nested[0]
    return sorted(model.model_fields)


def _describe(exc: ValidationError, model: type[BaseModel]) -> str:
    lines = []
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"]) or "(top level)"
        if err["type"] == "extra_forbidden":
            allowed = _allowed_keys(model, err["loc"][:-1])
            lines.append(f"unknown key {key!r}; allowed here: {', '.join(allowed)}")
        else:
            value = err.get("input")
            lines.append(f"{key}={value!r}: {err['msg']}")
    return "invalid configuration:\n  " + "\n  ".join(lines)


def load_config(files: Sequence[str | Path] = (), overrides: Sequence[str] = (), base: dict | None = None) -> Config:
    """Merge `base`, then each YAML file in order, then dotted overrides; validate once."""
    tree: dict = {}
    for section, values in (base or {}).items():
        tree[section] = dict(values)
    for file in files:
        path = Path(file)
        if not path.exists():
            raise ConfigError(f"config file {path} does not exist")
        try:
            loaded = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
        if not isinstance(loaded, dict):
            raise ConfigError(f"config file {path}: expected a mapping of sections at the top")
        for key, value in _flatten(loaded):
            _set_dotted(tree, key, value)
    for text in overrides:
        _set_dotted(tree, *parse_override(text))
    return _validate(tree)


def _validate(tree: dict) -> Config:
    try:
        return Config.model_validate(tree)
    except ValidationError as exc:
        raise ConfigError(_describe(exc, Config)) from None


def with_updates(config: Config, section: str, **updates: Any) -> Config:
    """A copy of `config` with keys of one section replaced, validated again."""
    tree = config.model_dump(mode="json")
    tree[section].update(
        {k: v.model_dump(mode="json") if isinstance(v, BaseModel) else v for k, v in updates.items()}
    )
    return _validate(tree)


def _flatten(tree: dict, prefix: str = "") -> list[tuple[str, Any]]:
    items = []
    for key, value in tree.items():
        dotted = f"{prefix}{key}"
        if isinstance(value, dict) and value and key not in _OPAQUE_MAPPINGS:
            items.extend(_flatten(value, dotted + "."))
        else:
            items.append((dotted, value))
    return items


# Mappings whose keys are data (label names, finding names), not config keys.
_OPAQUE_MAPPINGS = {"label_map", "alpha_overrides"}


def flatten_config(config: Config) -> dict[str, Any]:
    """`section.key` -> value, for MLflow params."""
    return dict(_flatten(config.model_dump(mode="json")))

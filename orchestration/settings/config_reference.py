"""The configuration reference, generated from the typed config itself: every key with its type,
default and the comment beside it in the source, so the documentation cannot drift from the code
(docs/configuration.md is built from `reference_table`)."""

from __future__ import annotations

import ast
import inspect
import io
import json
import textwrap
import tokenize
import types
import typing
from dataclasses import dataclass
from pathlib import PurePath

from pydantic import BaseModel

from orchestration.settings.config import Config


@dataclass(frozen=True)
class ConfigKey:
    key: str  # dotted, e.g. train.epochs; list items as prepare.sources[].kind
    type: str
    default: str
    comment: str


def field_comments(model: type[BaseModel]) -> dict[str, str]:
    """Field name -> the `#` comments on the lines above it (directly) and on its own lines."""
    source = textwrap.dedent(inspect.getsource(model))
    whole_line, comments = {}, {}  # line number -> comment text: comment lines, and every comment
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
            if token.line.lstrip().startswith("#"):
                whole_line[token.start[0]] = comments[token.start[0]]
    found = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            above, line = [], node.lineno - 1
            while line in whole_line:
                above.insert(0, whole_line[line])
                line -= 1
            beside = [comments[n] for n in range(node.lineno, node.end_lineno + 1) if n in comments]
            found[node.target.id] = " ".join(text for text in above + beside if not text.startswith("type: ignore"))
    return found


def _model_in(annotation) -> tuple[type[BaseModel] | None, bool]:
    """The config section an annotation holds, and whether as a list of them."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation, False
    if typing.get_origin(annotation) is list:
        (item,) = typing.get_args(annotation)
        if isinstance(item, type) and issubclass(item, BaseModel):
            return item, True
    return None, False


def _type_name(annotation) -> str:
    """A key's type as the table shows it: str, int \\| None, "a" \\| "b", list[str], ..."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is typing.Literal:
        return " \\| ".join(json.dumps(v) for v in args)
    if origin is typing.Annotated:
        return _type_name(args[0])
    if origin in (typing.Union, types.UnionType):
        return " \\| ".join(_type_name(a) for a in args)
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type) and origin is None:
        return "path" if issubclass(annotation, PurePath) else annotation.__name__
    return str(annotation).replace("typing.", "").replace("pathlib.", "").replace("|", "\\|")


def config_keys(model: type[BaseModel] = Config, prefix: str = "") -> list[ConfigKey]:
    """Every leaf key under `model`, in the order the source declares them."""
    keys, comments = [], field_comments(model)
    for name, field in model.model_fields.items():
        section, many = _model_in(field.annotation)
        if section is not None:
            keys += config_keys(section, f"{prefix}{name}{'[]' if many else ''}.")
            continue
        default = field.get_default(call_default_factory=True)
        keys.append(ConfigKey(f"{prefix}{name}", _type_name(field.annotation),
                              "required" if field.is_required() else json.dumps(default), comments.get(name, "")))
    return keys


def reference_table() -> str:
    """The Markdown table of every key."""
    lines = ["| key | type | default | what it does |", "| --- | --- | --- | --- |"]
    lines += [f"| `{k.key}` | {k.type} | `{k.default}` | {k.comment} |" for k in config_keys()]
    return "\n".join(lines) + "\n"

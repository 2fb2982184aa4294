"""Sweep and ablation definitions from `search_spaces/*.yaml`: parsed, validated, and turned into
what Ray Tune and Optuna take. The YAML format is documented in docs/sweeps.md.

A malformed file is refused before Ray starts, naming the file, the key and what is allowed.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna

from cxrcommon.yaml_files import load_yaml
from cxrmodel.schedules import H_SCHEDULES, HSchedule
from orchestration.settings.config import ConfigError, config_keys, load_config
from orchestration.settings.schema import SELECTION_METRICS

KINDS = ("search", "grid", "ablation")
DISTRIBUTIONS = ("loguniform", "uniform", "int", "choice")
SCHEDULE_KEY_SUFFIX = "h_schedule"
ROW_DOMAINS = ("all", "internal", "each")


class SpaceError(ConfigError):
    """A search-space file that cannot be used."""


@dataclass(frozen=True)
class Distribution:
    kind: str
    low: float | None = None
    high: float | None = None
    values: tuple = ()

    def suggest(self, trial: optuna.Trial, name: str) -> Any:
        if self.kind == "loguniform":
            return trial.suggest_float(name, self.low, self.high, log=True)
        if self.kind == "uniform":
            return trial.suggest_float(name, self.low, self.high)
        if self.kind == "int":
            return trial.suggest_int(name, int(self.low), int(self.high))
        return trial.suggest_categorical(name, list(self.values))

    def to_optuna(self) -> optuna.distributions.BaseDistribution:
        if self.kind in ("loguniform", "uniform"):
            return optuna.distributions.FloatDistribution(self.low, self.high, log=self.kind == "loguniform")
        if self.kind == "int":
            return optuna.distributions.IntDistribution(int(self.low), int(self.high))
        return optuna.distributions.CategoricalDistribution(list(self.values))


@dataclass(frozen=True)
class Row:
    name: str
    label: str
    set: dict[str, Any]
    domains: str = "all"  # all | internal (only the internal domain) | each (one run per domain)


@dataclass
class SweepSpace:
    name: str
    path: Path
    kind: str
    metric: str
    mode: str
    description: str = ""
    fixed: dict[str, Any] = field(default_factory=dict)
    parameters: dict[str, Distribution] = field(default_factory=dict)
    schedules: dict[str, dict[str, dict[str, Distribution]]] = field(default_factory=dict)  # key -> name -> param
    rows: list[Row] = field(default_factory=list)
    paper: bool = False  # reproduces a table or figure of the paper (which starts from ImageNet weights)

    # --- Optuna (kind: search) -----------------------------------------------------------
    def define_by_run(self, trial: optuna.Trial) -> None:
        """Optuna's define-by-run space; H-schedule parameters exist only under their schedule."""
        for key, dist in self.parameters.items():
            dist.suggest(trial, key)
        for key, by_name in self.schedules.items():
            name = trial.suggest_categorical(f"{key}.name", list(by_name))
            for param, dist in by_name[name].items():
                dist.suggest(trial, f"{key}.{name}.{param}")

    # --- grids (kind: grid / ablation) ---------------------------------------------------
    def grid_points(self, domains: list[str], internal: str, seeds: int) -> list[dict[str, Any]]:
        """Every trial of a grid or ablation as {'row': ..., dotted key: value, ...}."""
        if self.kind == "grid":
            keys = list(self.parameters)
            combos = itertools.product(*(self.parameters[k].values for k in keys))
            points = [dict(zip(keys, combo)) for combo in combos] or [{}]
        else:
            points = []
            for row in self.rows:
                if row.domains == "each":
                    points += [{"row": f"{row.name}_{d}", "train.domains": [d]} for d in domains]
                elif row.domains == "internal":
                    points.append({"row": row.name, "train.domains": [internal]})
                else:
                    points.append({"row": row.name})
        return [{**p, "train.seed": seed} for p in points for seed in range(seeds)]

    def only_rows(self, names: list[str]) -> SweepSpace:
        """This ablation restricted to some of its rows, in the file's order."""
        unknown = [n for n in names if n not in {r.name for r in self.rows}]
        if unknown:
            raise SpaceError(f"{self.path}: no row(s) {unknown}; rows: {', '.join(r.name for r in self.rows)}")
        return dataclasses.replace(self, rows=[r for r in self.rows if r.name in names])

    def row(self, name: str) -> Row:
        for row in self.rows:
            if name == row.name or (row.domains == "each" and name.startswith(f"{row.name}_")):
                return row
        raise KeyError(name)

    def row_label(self, name: str) -> str:
        """A row's label; a per-domain copy of an `each` row names its domain."""
        row = self.row(name)
        return row.label if name == row.name else f"{row.label} {name[len(row.name) + 1:]}"

    def to_optuna(self) -> dict[str, optuna.distributions.BaseDistribution]:
        """The space as Optuna distributions, named as define_by_run names its parameters."""
        out = {key: dist.to_optuna() for key, dist in self.parameters.items()}
        for key, by_name in self.schedules.items():
            out[f"{key}.name"] = optuna.distributions.CategoricalDistribution(list(by_name))
            for name, params in by_name.items():
                out.update({f"{key}.{name}.{param}": dist.to_optuna() for param, dist in params.items()})
        return out

    def trial_updates(self, params: dict[str, Any]) -> dict[str, Any]:
        """A trial's sampled params -> dotted config updates (fixed values and row switches included)."""
        updates = dict(self.fixed)
        for key, value in params.items():
            if key == "row":
                updates.update(self.row(value).set)
                continue
            schedule_key = next((k for k in self.schedules if key.startswith(f"{k}.")), None)
            if schedule_key is None:
                updates[key] = value
            elif key == f"{schedule_key}.name":
                updates[f"{schedule_key}.name"] = value
            else:  # '<key>.<schedule>.<param>' -> '<key>.<param>'
                updates[f"{schedule_key}.{key.rsplit('.', 1)[1]}"] = value
        return updates


# search_spaces/ is data, not code: it sits beside orchestration/ in a checkout and when installed.
SPACES_DIR = Path(__file__).resolve().parents[2] / "search_spaces"


def builtin_spaces() -> list[str]:
    return sorted(p.stem for p in SPACES_DIR.glob("*.yaml"))


def resolve_space_path(name_or_file: str) -> Path:
    path = Path(name_or_file)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.exists():
            raise SpaceError(f"search space file {path} does not exist")
        return path
    candidate = SPACES_DIR / f"{name_or_file}.yaml"
    if not candidate.exists():
        raise SpaceError(
            f"unknown search space {name_or_file!r}; built-in: {', '.join(builtin_spaces())}, or give a YAML file"
        )
    return candidate


def _fail(path: Path, key: str, message: str) -> SpaceError:
    return SpaceError(f"{path}: {key}: {message}")


def _distribution(path: Path, key: str, spec: Any) -> Distribution:
    if not isinstance(spec, dict) or "distribution" not in spec:
        raise _fail(path, key, f"expected a mapping with 'distribution' (one of {', '.join(DISTRIBUTIONS)})")
    kind = spec["distribution"]
    if kind not in DISTRIBUTIONS:
        raise _fail(path, key, f"unknown distribution {kind!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    if kind == "choice":
        values = spec.get("values")
        if not isinstance(values, list) or not values:
            raise _fail(path, key, "a choice needs a non-empty list 'values'")
        unknown = set(spec) - {"distribution", "values"}
        if unknown:
            raise _fail(path, key, f"unknown field(s) {sorted(unknown)} for a choice; allowed: distribution, values")
        return Distribution(kind, values=tuple(values))
    unknown = set(spec) - {"distribution", "low", "high"}
    if unknown:
        raise _fail(path, key, f"unknown field(s) {sorted(unknown)}; allowed: distribution, low, high")
    try:
        low, high = float(spec["low"]), float(spec["high"])
    except (KeyError, TypeError, ValueError):
        raise _fail(path, key, f"{kind} needs numeric 'low' and 'high'") from None
    if not (math.isfinite(low) and math.isfinite(high)) or low >= high:
        raise _fail(path, key, f"low ({low}) must be below high ({high})")
    if kind == "loguniform" and low <= 0:
        raise _fail(path, key, f"loguniform needs low > 0 (got {low})")
    if kind == "int" and (low != int(low) or high != int(high)):
        raise _fail(path, key, "int needs whole-number low and high")
    return Distribution(kind, low, high)


def _check_key(path: Path, where: str, key: str, known: set[str]) -> None:
    if key not in known or key in {"prepare", "method", "model", "train", "mlflow"}:
        raise _fail(path, where, f"unknown parameter {key!r}; parameters are config keys such as "
                                 "method.lambda_tat, method.lambda_ute, method.alpha, method.gamma, method.h_schedule")


def load_grid(name_or_file: str, rows: list[str] | None = None) -> SweepSpace:
    """A grid or ablation to run row by row (`cxr ablate`), restricted to `rows` if given."""
    grid = load_space(name_or_file)
    if grid.kind == "search":
        raise SpaceError(f"{grid.path} is a search space: run it with cxr tune --space")
    return grid.only_rows(rows) if rows else grid


def load_space(name_or_file: str) -> SweepSpace:
    path = resolve_space_path(name_or_file)
    doc = load_yaml(path.read_text(), str(path))
    if not isinstance(doc, dict):
        raise SpaceError(f"{path}: expected a mapping at the top")
    allowed_top = {"description", "kind", "metric", "mode", "fixed", "parameters", "rows", "paper"}
    unknown = set(doc) - allowed_top
    if unknown:
        raise _fail(path, "(top level)", f"unknown key(s) {sorted(unknown)}; allowed: {', '.join(sorted(allowed_top))}")
    kind = doc.get("kind")
    if kind not in KINDS:
        raise _fail(path, "kind", f"{kind!r} is not one of {', '.join(KINDS)}")
    metric, mode = doc.get("metric", SELECTION_METRICS[0]), doc.get("mode", "max")
    if metric not in SELECTION_METRICS:
        raise _fail(path, "metric", f"{metric!r} is not one of {', '.join(SELECTION_METRICS)}")
    if mode not in ("max", "min"):
        raise _fail(path, "mode", f"{mode!r} is not max or min")
    if not isinstance(doc.get("paper", False), bool):
        raise _fail(path, "paper", f"{doc['paper']!r} is not true or false")
    space = SweepSpace(path.stem, path, kind, metric, mode, description=doc.get("description", ""),
                       paper=doc.get("paper", False))
    known = config_keys()
    fixed = doc.get("fixed") or {}
    for key in fixed:
        _check_key(path, f"fixed.{key}", key, known)
    space.fixed = dict(fixed)

    parameters = doc.get("parameters") or {}
    if kind == "ablation" and parameters:
        raise _fail(path, "parameters", "an ablation has rows, not parameters")
    for key, spec in parameters.items():
        _check_key(path, f"parameters.{key}", key, known)
        if key.endswith(SCHEDULE_KEY_SUFFIX):
            space.schedules[key] = _schedules(path, key, spec, search=kind == "search")
        else:
            dist = _distribution(path, f"parameters.{key}", spec)
            if kind == "grid" and dist.kind != "choice":
                raise _fail(path, f"parameters.{key}", "a grid takes only 'choice' distributions (its values are the grid)")
            space.parameters[key] = dist

    if kind == "ablation":
        space.rows = _rows(path, doc.get("rows"), known)
    elif doc.get("rows"):
        raise _fail(path, "rows", f"only an ablation has rows (kind is {kind!r})")
    _check_values(space)
    return space


def _schedules(path: Path, key: str, spec: Any, *, search: bool) -> dict[str, dict[str, Distribution]]:
    where = f"parameters.{key}"
    if not search:
        raise _fail(path, where, "H-schedule choices need kind: search (a grid fixes a schedule in 'fixed')")
    if not isinstance(spec, dict) or spec.get("distribution") != "schedule" or not isinstance(spec.get("schedules"), dict):
        raise _fail(path, where, "expected {distribution: schedule, schedules: {<name>: {<param>: <distribution>}}}")
    out = {}
    for name, params in spec["schedules"].items():
        if name not in H_SCHEDULES:
            raise _fail(path, f"{where}.schedules.{name}", f"unknown schedule; allowed: {', '.join(H_SCHEDULES)}")
        params = params or {}
        bad = set(params) - {"start", "end", "steps"}
        if bad:
            raise _fail(path, f"{where}.schedules.{name}", f"unknown parameter(s) {sorted(bad)}; allowed: start, end, steps")
        out[name] = {p: _distribution(path, f"{where}.schedules.{name}.{p}", d) for p, d in params.items()}
    if not out:
        raise _fail(path, where, "no schedules listed")
    return out


def _rows(path: Path, rows: Any, known: set[str]) -> list[Row]:
    if not isinstance(rows, list) or not rows:
        raise _fail(path, "rows", "an ablation needs a non-empty list of rows")
    parsed, names = [], set()
    for i, row in enumerate(rows):
        where = f"rows[{i}]"
        if not isinstance(row, dict) or "name" not in row:
            raise _fail(path, where, "each row needs a 'name' and a 'set' of switches")
        bad = set(row) - {"name", "label", "set", "domains"}
        if bad:
            raise _fail(path, where, f"unknown field(s) {sorted(bad)}; allowed: name, label, set, domains")
        if row["name"] in names:
            raise _fail(path, where, f"duplicate row name {row['name']!r}")
        names.add(row["name"])
        domains = row.get("domains", "all")
        if domains not in ROW_DOMAINS:
            raise _fail(path, f"{where}.domains", f"{domains!r} is not one of {', '.join(ROW_DOMAINS)}")
        switches = row.get("set") or {}
        for key in switches:
            _check_key(path, f"{where}.set.{key}", key, known)
        parsed.append(Row(str(row["name"]), str(row.get("label", row["name"])), dict(switches), domains))
    return parsed


def _check_values(space: SweepSpace) -> None:
    """Every fixed value, grid value and row must make a valid config (checked on the defaults)."""
    candidates: list[tuple[str, dict]] = [("fixed", space.fixed)]
    candidates += [(f"parameters.{k}={v!r}", {**space.fixed, k: v})
                   for k, d in space.parameters.items() if d.kind == "choice" for v in d.values]
    candidates += [(f"row {r.name!r}", {**space.fixed, **r.set}) for r in space.rows]
    for where, updates in candidates:
        try:
            load_config(updates=updates)
        except ConfigError as exc:
            raise _fail(space.path, where, str(exc)) from None
    for key, by_name in space.schedules.items():
        for name, params in by_name.items():
            # Every sample must be a valid, decreasing schedule: try the range corners.
            def bounds(p: str, default: float) -> tuple[float, float]:
                d = params.get(p)
                if d is None:
                    return default, default
                return (min(d.values), max(d.values)) if d.kind == "choice" else (d.low, d.high)

            (start_lo, start_hi), (end_lo, end_hi) = bounds("start", 0.4), bounds("end", 0.1)
            try:
                HSchedule(name, start=start_lo, end=end_hi if name != "constant" else start_lo)
                HSchedule(name, start=start_hi, end=end_lo if name != "constant" else start_hi)
            except ValueError as exc:
                raise _fail(space.path, f"parameters.{key}.schedules.{name}",
                            f"{exc} (some samples in these ranges would be invalid)") from None

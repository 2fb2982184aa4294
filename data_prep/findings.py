"""Canonical finding names, source spellings, and the finding groups of a set of domains.

NIH and CheXpert spell findings as the canonical names or the synonyms below; the datasets with
many labels of their own (MIMIC-CXR, VinDr-CXR, PadChest) map theirs in YAML presets under
`label_maps/`. The label values themselves (1 / 0 / -2) are defined in `cxrmodel.labels`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import yaml

from cxrcommon.errors import DataPrepError

# The paper's Table I, in its order: the order of the union label space.
CANONICAL_FINDINGS: tuple[str, ...] = (
    "Emphysema",
    "Fibrosis",
    "Hernia",
    "Infiltration",
    "Pleural Thickening",
    "Mass",
    "Nodule",
    "Atelectasis",
    "Cardiomegaly",
    "Consolidation",
    "Edema",
    "Effusion",
    "Pneumonia",
    "Pneumothorax",
    "Enlarged Cardiomediastinum",
    "Fracture",
    "Pleural Other",
    "Lung Opacity",
    "Lung Lesion",
    "Support Devices",
    "Tuberculosis",
)

# Spellings used by the public releases, keyed by their normalised form (see `_normalise`).
_SYNONYMS: dict[str, str] = {
    "pleural effusion": "Effusion",
    "thickening": "Pleural Thickening",
    "enlarged cardiomediastinum": "Enlarged Cardiomediastinum",
    "enlarged cardiom": "Enlarged Cardiomediastinum",
    "cardiomediastinum": "Enlarged Cardiomediastinum",
    "support device": "Support Devices",
    "lung opacity": "Lung Opacity",
    "airspace opacity": "Lung Opacity",
    "tb": "Tuberculosis",
}

# Not findings: rows that say this are simply negative for every labelled finding.
NO_FINDING_NAMES = frozenset({"no finding", "normal"})


def _normalise(name: str) -> str:
    return " ".join(name.replace("_", " ").strip().lower().split())


_CANONICAL_BY_NORMALISED = {_normalise(n): n for n in CANONICAL_FINDINGS}


class LabelNameError(DataPrepError):
    """A source label name that is neither canonical, a known synonym, nor mapped by the user."""


def is_no_finding(name: str) -> bool:
    return _normalise(name) in NO_FINDING_NAMES


def canonical_name(
    name: str, label_map: Mapping[str, str | None] | None = None, *, where: str = ""
) -> str | None:
    """Return the canonical finding for a source spelling.

    `label_map` (from the user's config) wins: a value of None means "ignore this label".
    Unknown names raise LabelNameError naming `where` (file / column) and what to do.
    """
    label_map = label_map or {}
    if name in label_map:
        return label_map[name]
    key = _normalise(name)
    for source, target in label_map.items():
        if _normalise(source) == key:
            return target
    if key in _CANONICAL_BY_NORMALISED:
        return _CANONICAL_BY_NORMALISED[key]
    if key in _SYNONYMS:
        return _SYNONYMS[key]
    location = f" in {where}" if where else ""
    raise LabelNameError(
        f"unknown label name {name!r}{location}: not one of the canonical findings "
        f"({', '.join(CANONICAL_FINDINGS)}) nor a known spelling of one. Map it with "
        f"label_map: {{{name!r}: <finding name>}} or ignore it with label_map: {{{name!r}: null}}."
    )


def in_label_order(findings: Iterable[str]) -> list[str]:
    """Distinct findings, canonical ones in Table I order, then user-defined ones sorted."""
    distinct = set(findings)
    canonical = [f for f in CANONICAL_FINDINGS if f in distinct]
    return canonical + sorted(distinct - set(CANONICAL_FINDINGS))


def union_label_space(finding_sets: Iterable[Iterable[str]]) -> list[str]:
    return in_label_order(f for s in finding_sets for f in s)


def exclusive_findings(findings: Iterable[str], other_sets: Iterable[Iterable[str]]) -> list[str]:
    """`findings` that no other set labels (for the internal domain: the paper's Mean_Int set)."""
    others = {f for s in other_sets for f in s}
    return [f for f in findings if f not in others]


def common_findings(label_space: Sequence[str], finding_sets: Iterable[Iterable[str]]) -> list[str]:
    """Findings labelled by every domain (the paper's ∩l), in label-space order."""
    sets = [set(s) for s in finding_sets]
    if not sets:
        return []
    shared = set.intersection(*sets)
    return [f for f in label_space if f in shared]


@dataclass(frozen=True)
class FindingGroups:
    """One domain's findings as the paper's summaries group them: Mean over `evaluated` (the
    findings it labels), Mean_Com over `common` (∩l: labelled by every domain it is trained or
    tested with), Mean_Int over `internal_only` (labelled by it and by none of the others)."""

    evaluated: list[str]
    common: list[str]
    internal_only: list[str]

    @classmethod
    def of(cls, own: Sequence[str], others: Sequence[Sequence[str]], label_space: Sequence[str]) -> FindingGroups:
        """The groups of the domain labelling `own` among the domains labelling `others`."""
        return cls(list(own), common_findings(label_space, [own, *others]), exclusive_findings(own, others))

    def group(self, finding: str) -> str:
        if finding in self.internal_only:
            return "internal_only"
        return "common" if finding in self.common else "other"

    def members(self) -> dict[str, list[str]]:
        """evaluated / common / internal_only: the keyword arguments of cxrmodel's AUC summaries."""
        return {"evaluated": self.evaluated, "common": self.common, "internal_only": self.internal_only}


# --- label-map presets: data_prep/label_maps/<kind>.yaml ---------------------------------------

PRESETS_DIR = Path(__file__).resolve().parent / "label_maps"


@dataclass(frozen=True)
class LabelPreset:
    """A dataset's spellings -> canonical finding (None: ignored); `unlisted` says what a label the
    preset does not list means: "error" (stop, name it) or "ignore" (named in the warnings)."""

    kind: str
    description: str
    labels: dict[str, str | None]
    unlisted: str

    def resolve(self, names: Iterable[str], user_map: Mapping[str, str | None], where: str,
                ) -> tuple[dict[str, str], list[str]]:
        """Each source label -> its canonical finding, the user's `label_map` over the preset's;
        returns (mapped labels, unlisted labels that were ignored). 'No Finding' / 'normal' are
        not findings and are left out."""
        merged = {**self.labels, **user_map}
        mapped, ignored = {}, []
        for name in names:
            if is_no_finding(name):
                continue
            known = next((k for k in merged if _normalise(k) == _normalise(name)), None)
            if known is not None:
                target = merged[known]
            elif self.unlisted == "ignore":
                ignored.append(name)
                continue
            else:
                target = canonical_name(name, user_map, where=where)
            if target is not None:
                mapped[name] = target
        return mapped, ignored


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESETS_DIR.glob("*.yaml"))


def load_preset(kind: str) -> LabelPreset:
    path = PRESETS_DIR / f"{kind}.yaml"
    if not path.exists():
        raise DataPrepError(f"no label-map preset for {kind!r}; presets: {', '.join(preset_names())}")
    doc = yaml.safe_load(path.read_text())
    labels = doc.get("labels") or {}
    for source, target in labels.items():
        if target is not None and target not in CANONICAL_FINDINGS:
            raise DataPrepError(f"{path}: {source!r} maps to {target!r}, not a canonical finding")
    if doc.get("unlisted") not in ("error", "ignore"):
        raise DataPrepError(f"{path}: unlisted must be 'error' or 'ignore'")
    return LabelPreset(kind, doc.get("description", ""), dict(labels), doc["unlisted"])


def preset_lines() -> list[str]:
    """`cxr prepare --list-presets`: every preset's file, description and label -> finding map."""
    lines = []
    for kind in preset_names():
        preset = load_preset(kind)
        lines.append(f"[bold]{kind}[/] ({PRESETS_DIR / kind}.yaml): {preset.description}; labels not listed: "
                     f"{'stop cxr prepare' if preset.unlisted == 'error' else 'ignored, named in the manifest'}")
        lines += [f"  {label:28s} -> {finding or '(ignored)'}" for label, finding in preset.labels.items()]
    lines.append("override any of them with label_map in the dataset's config "
                 "(prepare.sources[].label_map: {LABEL: FINDING or null})")
    return lines

"""`cxr report`: the paper's tables and figures, built from an MLflow experiment alone.

One section per sweep (its child runs) and one for the stand-alone training runs:
- a table like Tables III / VI: rows are runs or ablation rows (seeds averaged), columns the
  test AUC of each finding grouped "internal only" / "common" / "other", then Mean_Com,
  Mean_Int and Mean over those columns; the best value of each column is marked;
- runs that failed, were killed, stopped early or are still running, listed apart, never averaged in;
- Fig. 4-style curves (test AUC against λ_ute / λ_tat) for grids that vary them;
- Optuna's optimisation history and parameter importances for Optuna sweeps;
- the Table II matrix where `cxr cross-domain` logged one.
Every sweep's part is also logged to its parent run under `report/`.
"""

from __future__ import annotations

import html
import json
import re
import tempfile
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
from mlflow.entities import Run
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from cxrcommon.plotting import headless_pyplot
from cxrcommon.yaml_files import load_yaml
from cxrmodel.auc_statistics import (
    delong_test,
    finding_replicates,
    holm,
    mean_delta_replicates,
    percentile_interval,
)
from cxrmodel.metrics import SUMMARIES
from data_prep.findings import FindingGroups
from orchestration.settings.config import ConfigError
from orchestration.settings.schema import (
    BEST_TRIAL_TAG,
    CROSS_DOMAIN_MATRIX,
    DATA_SUMMARY_ARTIFACT,
    DOMAINS_PARAM,
    EARLY_STOPPED_TAG,
    EVALUATES_TAG,
    EVALUATION,
    EVALUATION_METRIC,
    LOST_TRIAL_TAG,
    MODEL_CARD_MD,
    PLAN_ARTIFACT,
    PRETRAINED_PARAM,
    REPORT_DIR,
    ROW_LABEL_TAG,
    ROW_TAG,
    SEED_PARAM,
    SELECTION_METRICS,
    SPACE_DIR,
    SPACE_KIND_TAG,
    SPACE_TAG,
    SWEEP,
    SWEEP_TAG,
    TEST_PREDICTIONS_ARTIFACT,
    TEST_SUMMARY_METRICS,
    TRIAL_TAG,
    auc_metric,
)
from orchestration.settings.tracking import (
    child_runs,
    download_text,
    existing_experiment_id,
    runs_of_kind,
    standalone_training_runs,
)
from orchestration.sweeps.spaces import load_space

plt = headless_pyplot()

# plan.json's finding groups in the paper's column order, and how the tables name them.
GROUPS = {"internal_only": "internal only", "common": "common", "other": "other"}
LAMBDAS = {"method.lambda_ute": "λ_ute", "method.lambda_tat": "λ_tat"}
RUNS_COLUMN = ("", "runs")
REPORT_BOOTSTRAP = 500  # paired replicates per comparison of two runs
PAPER_DEFAULT = "paper_default"  # the built-in space of the paper's point
RANDOM_INIT_MARK = " †"
RANDOM_INIT_NOTE = ("† trained from random weights (MLflow param model.pretrained=false); the paper starts from "
                    "ImageNet weights, so these numbers are not comparable with its tables.")
CURVES = dict(zip(TEST_SUMMARY_METRICS, SUMMARIES))  # test_mean_auc -> "Mean", ...
TEST_MEAN_AUC = TEST_SUMMARY_METRICS[0]


@dataclass
class Section:
    title: str
    slug: str
    parent: Run | None  # the sweep's parent run; None for stand-alone training runs
    runs: list[Run]

    @property
    def space_kind(self) -> str:
        return self.parent.data.tags.get(SPACE_KIND_TAG, "") if self.parent else ""


@dataclass
class SectionReport:
    section: Section
    table: pd.DataFrame  # rows x (group, column); NaN where a run has no AUC
    excluded: pd.DataFrame  # run, status, why
    figures: dict[str, str] = field(default_factory=dict)  # file name -> caption
    notes: list[str] = field(default_factory=list)
    cross_domain: str = ""  # Table II in Markdown, when the sweep has one
    comparisons: pd.DataFrame = field(default_factory=pd.DataFrame)  # ablation rows against a and g


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "runs"


def collect_sections(client: MlflowClient, experiment: str, parent_run_id: str | None = None) -> list[Section]:
    """The sweep `parent_run_id`, or every sweep of the experiment plus its stand-alone training runs."""
    if parent_run_id:
        parent = client.get_run(parent_run_id)
        if parent.info.experiment_id != existing_experiment_id(client, experiment):
            raise ConfigError(f"run {parent_run_id} is not in experiment {experiment!r}")
        return [_sweep_section(client, parent)]
    sections = [_sweep_section(client, p) for p in runs_of_kind(client, experiment, SWEEP)]
    alone = standalone_training_runs(client, experiment)
    if alone:
        sections.append(Section("Training runs", "training-runs", None, alone))
    return sections


def _sweep_section(client: MlflowClient, parent: Run) -> Section:
    name = parent.data.tags.get(SWEEP_TAG, parent.info.run_name)
    space = parent.data.tags.get(SPACE_TAG, "")
    children = child_runs(client, parent.info.run_id)
    return Section(f"{name} ({space})" if space else name, _slug(name), parent, children)


def _finished(run: Run) -> bool:
    return run.info.status == "FINISHED" and TEST_MEAN_AUC in run.data.metrics


def _why_excluded(run: Run) -> str:
    status = run.info.status
    if run.data.tags.get(LOST_TRIAL_TAG) == "true":
        return "lost with its sweep's driver; the resumed sweep ran a new trial in its place"
    if status == "FINISHED":
        early = run.data.tags.get(EARLY_STOPPED_TAG) == "true"
        return "stopped early by the scheduler" if early else "finished without test metrics"
    return {"RUNNING": "still running (or its driver was lost)", "KILLED": "stopped; resume it to finish",
            "FAILED": "failed"}.get(status, status.lower())


def _trained_domains(run: Run) -> float:
    """How many domains a run trained on (its train.domains param; unset = every prepared one)."""
    value = run.data.params.get(DOMAINS_PARAM, "null")
    return len(json.loads(value)) if value.startswith("[") else float("inf")


def _finding_groups(client: MlflowClient, runs: list[Run]) -> tuple[list[str], list[str], list[str]]:
    """Label space, common and internal-only findings, from the training plan of the run that
    trained the most domains (a sweep's joint-training rows, not a Single Dataset row, whose every
    finding is "internal only"). Runs from before plans were logged: their data summary."""
    run = max(runs, key=_trained_domains)  # the first of the widest, in start order
    plan = download_text(client, run.info.run_id, PLAN_ARTIFACT)
    if plan is None:
        summary = json.loads(download_text(client, run.info.run_id, DATA_SUMMARY_ARTIFACT))
        return summary["label_space"], summary["common"], summary["internal_only"]
    findings = json.loads(plan)["findings"]
    in_group = lambda group: [f for f, info in findings.items() if info["group"] == group]  # noqa: E731
    return list(findings), in_group("common"), in_group("internal_only")


def result_table(client: MlflowClient, section: Section) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(table, excluded). Columns (group, name); the findings' groups are those of the first run."""
    done = [r for r in section.runs if _finished(r)]
    excluded = pd.DataFrame(
        [{"run": r.info.run_name, "row": r.data.tags.get(ROW_TAG, ""), "status": r.info.status, "why": _why_excluded(r)}
         for r in section.runs if not _finished(r)], columns=["run", "row", "status", "why"])
    if not done:
        return pd.DataFrame(), excluded
    label_space, common, internal_only = _finding_groups(client, done)
    per_run = pd.DataFrame([{f: r.data.metrics.get(auc_metric("test", f), np.nan) for f in label_space} for r in done])
    ablation = all(ROW_TAG in r.data.tags for r in done)
    if ablation:  # one line per ablation row, its seeds averaged
        keys = [f"{r.data.tags[ROW_TAG]}) {r.data.tags.get(ROW_LABEL_TAG, '')}".strip() for r in done]
    else:
        keys = [r.info.run_name for r in done]
    keys = [k + RANDOM_INIT_MARK if r.data.params.get(PRETRAINED_PARAM) == "false" else k for k, r in zip(keys, done)]
    per_run.index = pd.Index(keys, name="row" if ablation else "run")
    runs = per_run.groupby(level=0, sort=False).size()
    values = per_run.groupby(level=0, sort=False).mean().dropna(axis=1, how="all")

    group = FindingGroups(label_space, common, internal_only).group
    ordered = [f for g in GROUPS for f in values.columns if group(f) == g]
    findings = values[ordered]
    table = findings.set_axis(pd.MultiIndex.from_tuples([(GROUPS[group(f)], f) for f in ordered]), axis=1)
    mean, mean_com, mean_int = SUMMARIES
    table[("summary", mean_com)] = findings[[f for f in ordered if group(f) == "common"]].mean(axis=1)
    table[("summary", mean_int)] = findings[[f for f in ordered if group(f) == "internal_only"]].mean(axis=1)
    table[("summary", mean)] = findings.mean(axis=1)
    table[RUNS_COLUMN] = runs
    return table, excluded


def _best(table: pd.DataFrame) -> pd.DataFrame:
    """True where a value is the best (highest) of its column among several rows; the run count
    is not a score."""
    scores = table.drop(columns=[RUNS_COLUMN], errors="ignore")
    best = scores.eq(scores.max(axis=0), axis=1) & scores.notna() & (len(table) > 1)
    if RUNS_COLUMN in table.columns:
        best[RUNS_COLUMN] = False
    return best[table.columns]


class _TestPredictions:
    """The test predictions runs logged, downloaded once each; runs without them are noted."""

    def __init__(self, client: MlflowClient):
        self.client, self.cache, self.notes = client, {}, set()

    def __call__(self, run: Run) -> dict | None:
        if run.info.run_id not in self.cache:
            with tempfile.TemporaryDirectory() as tmp:
                try:
                    path = self.client.download_artifacts(run.info.run_id, TEST_PREDICTIONS_ARTIFACT, tmp)
                except (OSError, MlflowException):  # runs from before the file was logged
                    self.notes.add(f"run {run.info.run_name} logged no test predictions (trained before they were "
                                   "logged): left out of the comparisons")
                    self.cache[run.info.run_id] = None
                else:
                    with np.load(path) as saved:
                        self.cache[run.info.run_id] = {k: saved[k] for k in ("sample_id", "probs", "labels")}
        return self.cache[run.info.run_id]


def _compare_pairs(pairs: list[tuple[Run, Run]], label_space: list[str], predictions: _TestPredictions) -> dict | None:
    """B against A over (A, B) run pairs scored on the same test images (one pair per seed):
    ΔMean averaged over the pairs, its interval from their replicates averaged replicate by
    replicate, and per pair the findings with Holm p < 0.05."""
    deltas, replicates, significant = [], [], []
    for run_a, run_b in pairs:
        a, b = predictions(run_a), predictions(run_b)
        if a is None or b is None or not np.array_equal(a["sample_id"], b["sample_id"]):
            continue
        # The same bootstrap seed for every pair: same test images, same resamples.
        paired = finding_replicates(a["labels"], [a["probs"], b["probs"]], label_space, label_space,
                                    REPORT_BOOTSTRAP, seed=0)
        tests = {f: delong_test(*_known(a, b, label_space.index(f))) for f in paired}
        deltas.append(np.mean([t.auc_b - t.auc_a for t in tests.values()]))
        replicates.append(mean_delta_replicates(paired, list(paired)))
        significant.append(sum(p < 0.05 for p in holm({f: t.p for f, t in tests.items()}).values()))
    if not deltas:
        return None
    low, high = percentile_interval(np.mean(replicates, axis=0))
    return {"seeds": len(deltas), "ΔMean": float(np.mean(deltas)), "95% CI": f"[{low:+.4f}, {high:+.4f}]",
            "findings with Holm p < 0.05": "/".join(map(str, significant))}


def row_comparisons(client: MlflowClient, section: Section, default_runs: list[Run]) -> tuple[pd.DataFrame, list[str]]:
    """An ablation's rows against row a (Joint Training) and row g (Ours); an Optuna sweep's best
    trial against the paper default's runs (`default_runs`), seeds matched. On the internal test
    predictions the runs logged (see `_compare_pairs`)."""
    done = [r for r in section.runs if _finished(r)]
    if not done:
        return pd.DataFrame(), []
    label_space = _finding_groups(client, done)[0]
    predictions, rows = _TestPredictions(client), []
    seed_of = lambda run: run.data.params.get(SEED_PARAM, "0")  # noqa: E731
    if all(ROW_TAG in r.data.tags for r in done):
        by_row: dict[str, dict[str, Run]] = {}
        for run in done:
            by_row.setdefault(run.data.tags[ROW_TAG], {})[seed_of(run)] = run
        for reference in [r for r in ("a", "g") if r in by_row]:
            for row, seeds in by_row.items():
                pairs = [(by_row[reference][s], seeds[s]) for s in sorted(set(seeds) & set(by_row[reference]))]
                found = _compare_pairs(pairs, label_space, predictions) if row != reference else None
                if found:
                    rows.append({"row": row, "against": reference, **found})
    elif section.space_kind == "search" and section.parent is not None and default_runs:
        best = next((r for r in done if r.data.tags.get(TRIAL_TAG) == section.parent.data.tags.get(BEST_TRIAL_TAG)),
                    None)
        defaults = {seed_of(r): r for r in default_runs if _finished(r)}
        if best is not None and seed_of(best) in defaults:
            found = _compare_pairs([(defaults[seed_of(best)], best)], label_space, predictions)
            if found:
                rows.append({"row": f"best trial {best.data.tags[TRIAL_TAG]}", "against": "paper default", **found})
    return pd.DataFrame(rows), sorted(predictions.notes)


def _known(a: dict, b: dict, c: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    known = a["labels"][:, c] >= 0
    return a["labels"][known, c] == 1, a["probs"][known, c], b["probs"][known, c]


def lambda_figures(section: Section, out: Path) -> dict[str, str]:
    """Fig. 4: test AUC (Mean, Mean_Com, Mean_Int) against each λ a grid sweep varies."""
    done = [r for r in section.runs if _finished(r)]
    if section.space_kind == "search":  # every parameter moves at once: no curve to read
        return {}
    figures = {}
    for key, symbol in LAMBDAS.items():
        points = pd.DataFrame([{"x": float(r.data.params[key]), **{n: r.data.metrics.get(m, np.nan)
                                for m, n in CURVES.items()}} for r in done if key in r.data.params])
        if points.empty or points["x"].nunique() < 2:
            continue
        curve = points.groupby("x").mean().sort_index()
        fig, ax = plt.subplots(figsize=(5, 3.6))
        for name in CURVES.values():
            if curve[name].notna().any():
                ax.plot(curve.index, curve[name], marker="o", label=name)
        positive = curve.index[curve.index > 0]
        if len(positive) < len(curve.index):  # λ_tat = 0 (no TAT) is a point of Fig. 4(b)
            ax.set_xscale("symlog", linthresh=positive.min() if len(positive) else 1.0)
        else:
            ax.set_xscale("log")
        ax.set_xlabel(symbol)
        ax.set_ylabel("test AUC")
        ax.set_title(f"AUC against {symbol} ({section.title})", fontsize=9)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = f"fig4_{key.split('.')[-1]}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        figures[name] = f"Test AUC against {symbol}, averaged over runs with the same value (Fig. 4)."
    return figures


def optuna_figures(client: MlflowClient, section: Section, out: Path) -> tuple[dict[str, str], list[str]]:
    """Optuna's optimisation history and parameter importances, rebuilt from the child runs."""
    if section.space_kind != "search":
        return {}, []
    parent = section.parent
    metric = parent.data.params.get("metric", SELECTION_METRICS[0]).split(",")[0]
    with tempfile.TemporaryDirectory() as tmp:
        [space_file] = Path(client.download_artifacts(parent.info.run_id, SPACE_DIR, tmp)).glob("*.yaml")
        space = load_space(str(space_file))
    distributions = space.to_optuna()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(direction="maximize" if space.mode == "max" else "minimize")
    for run in section.runs:
        if run.info.status != "FINISHED" or metric not in run.data.metrics:
            continue
        params = {}
        for key in space.parameters:
            params[key] = load_yaml(run.data.params[key], f"param {key} of run {run.info.run_id}")
        for key, by_name in space.schedules.items():
            name = run.data.params[f"{key}.name"]
            params[f"{key}.name"] = name
            params.update({f"{key}.{name}.{p}": load_yaml(run.data.params[f"{key}.{p}"],
                                                          f"param {key}.{p} of run {run.info.run_id}")
                           for p in by_name[name]})
        study.add_trial(optuna.trial.create_trial(
            params=params, distributions={k: distributions[k] for k in params}, value=run.data.metrics[metric]))
    figures, notes = {}, []
    if not study.trials:
        return figures, [f"No finished trial reported {metric}: no Optuna plots."]
    with warnings.catch_warnings():  # optuna's matplotlib plots are marked experimental
        warnings.simplefilter("ignore")
        ax = optuna.visualization.matplotlib.plot_optimization_history(study, target_name=metric)
        _save(ax, out / "optuna_history.png")
        figures["optuna_history.png"] = f"Optuna optimisation history of {metric}."
        if len(study.trials) < 2:
            notes.append("Parameter importances need at least 2 finished trials.")
        else:
            ax = optuna.visualization.matplotlib.plot_param_importances(study, target_name=metric)
            _save(ax, out / "optuna_importance.png")
            figures["optuna_importance.png"] = f"Parameter importances for {metric} (fANOVA)."
    return figures, notes


def _save(ax, path: Path) -> None:
    fig = ax.figure
    fig.set_size_inches(6, 4)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _cross_domain_markdown(client: MlflowClient, section: Section) -> str:
    if section.parent is None:
        return ""
    return download_text(client, section.parent.info.run_id, CROSS_DOMAIN_MATRIX) or ""


def evaluation_table(client: MlflowClient, runs: list[Run]) -> pd.DataFrame:
    """`cxr evaluate` runs: per domain Mean / Mean_Com / Mean_Int, per relabelled set its AUCs (Table VII)."""
    rows = {}
    for run in runs:
        evaluates = run.data.tags.get(EVALUATES_TAG)
        name = run.info.run_name
        if evaluates:
            name += f" of {client.get_run(evaluates).info.run_name}"
        if name in rows:  # the same file evaluated twice
            name += f" [{run.info.run_id[:8]}]"
        rows[name] = {tuple(key.split("/", 1)): value for key, value in run.data.metrics.items()
                      if EVALUATION_METRIC.fullmatch(key)}
    table = pd.DataFrame.from_dict(rows, orient="index")
    if table.empty:
        return table
    table.columns = pd.MultiIndex.from_tuples(table.columns)
    table.index.name = "evaluation"
    return table[sorted(table.columns)]


# --- rendering ---------------------------------------------------------------------------------

def _cell(value, column: tuple[str, str]) -> str:
    if column == RUNS_COLUMN:
        return str(int(value))
    return "" if pd.isna(value) else f"{value:.4f}"


def table_markdown(table: pd.DataFrame) -> str:
    best = _best(table)
    header = [table.index.name or ""] + [f"{g}: {c}" if g and g != "summary" else c for g, c in table.columns]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for key, row in table.iterrows():
        cells = [f"**{_cell(v, col)}**" if best.loc[key, col] else _cell(v, col) for col, v in row.items()]
        lines.append(f"| {key} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_html(table: pd.DataFrame) -> str:
    best = _best(table)
    spans: list[tuple[str, int]] = []
    for group, _ in table.columns:
        if spans and spans[-1][0] == group:
            spans[-1] = (group, spans[-1][1] + 1)
        else:
            spans.append((group, 1))
    top = "".join(f'<th colspan="{n}">{html.escape(g)}</th>' for g, n in spans)
    names = "".join(f"<th>{html.escape(c)}</th>" for _, c in table.columns)
    rows = []
    for key, row in table.iterrows():
        cells = "".join(f'<td class="best">{_cell(v, col)}</td>' if best.loc[key, col] else f"<td>{_cell(v, col)}</td>"
                        for col, v in row.items())
        rows.append(f"<tr><th>{html.escape(str(key))}</th>{cells}</tr>")
    return (f'<table><thead><tr><th rowspan="2">{html.escape(table.index.name or "")}</th>{top}</tr>'
            f"<tr>{names}</tr></thead><tbody>{''.join(rows)}</tbody></table>")


def _excluded_markdown(excluded: pd.DataFrame) -> str:
    lines = ["| run | row | status | why |", "|---|---|---|---|"]
    lines += [f"| {r.run} | {r.row} | {r.status} | {r.why} |" for r in excluded.itertuples()]
    return "\n".join(lines)


def _excluded_html(excluded: pd.DataFrame) -> str:
    rows = "".join(f"<tr><td>{html.escape(str(r.run))}</td><td>{html.escape(str(r.row))}</td><td>{r.status}</td>"
                   f"<td>{html.escape(r.why)}</td></tr>" for r in excluded.itertuples())
    return f"<table><thead><tr><th>run</th><th>row</th><th>status</th><th>why</th></tr></thead><tbody>{rows}</tbody></table>"


CAPTION = ("Test AUC of the internal domain per finding; best of each column in bold. Mean_Com, Mean_Int and "
           "Mean average the columns of their group. Ablation rows average their seeds (column runs).")


COMPARISON_CAPTION = (f"ΔMean = Mean AUC of the row − that of the reference on the same test images, averaged over "
                      f"the seeds both ran; its 95% interval from {REPORT_BOOTSTRAP} paired bootstrap replicates "
                      "(images resampled within each finding's classes, replicates averaged over seeds). An interval "
                      "holding 0 is no evidence of a difference. Last column: per seed, the findings whose DeLong "
                      "p, Holm-adjusted across findings, is below 0.05.")


def _comparisons_markdown(comparisons: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(comparisons.columns) + " |", "|" + "---|" * len(comparisons.columns)]
    for row in comparisons.itertuples(index=False):
        lines.append("| " + " | ".join(f"{v:+.4f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


def section_markdown(report: SectionReport, prefix: str) -> str:
    parts = [f"## {report.section.title}", ""]
    if report.section.parent is not None:
        parts += [f"MLflow parent run `{report.section.parent.info.run_id}`", ""]
    if report.table.empty:
        parts += ["No finished run with test metrics yet.", ""]
    else:
        parts += [table_markdown(report.table), "", CAPTION, ""]
    if not report.comparisons.empty:
        parts += ["### Rows against Joint Training (a) and Ours (g)", "", _comparisons_markdown(report.comparisons),
                  "", COMPARISON_CAPTION, ""]
    if report.cross_domain:
        parts += ["### Cross-dataset testing (Table II)", "", report.cross_domain, ""]
    parts += [f"![{caption}]({prefix}{name})\n\n{caption}\n" for name, caption in report.figures.items()]
    parts += [f"_{note}_\n" for note in report.notes]
    if not report.excluded.empty:
        parts += ["### Not averaged in", "", _excluded_markdown(report.excluded), ""]
    return "\n".join(parts)


def section_html(report: SectionReport, prefix: str) -> str:
    parts = [f"<h2>{html.escape(report.section.title)}</h2>"]
    if report.section.parent is not None:
        parts.append(f"<p>MLflow parent run <code>{report.section.parent.info.run_id}</code></p>")
    if report.table.empty:
        parts.append("<p>No finished run with test metrics yet.</p>")
    else:
        parts += [table_html(report.table), f"<p class='caption'>{html.escape(CAPTION)}</p>"]
    if not report.comparisons.empty:
        parts += ["<h3>Rows against Joint Training (a) and Ours (g)</h3>",
                  report.comparisons.to_html(index=False, float_format=lambda v: f"{v:+.4f}"),
                  f"<p class='caption'>{html.escape(COMPARISON_CAPTION)}</p>"]
    if report.cross_domain:
        matrix = report.cross_domain.split("\n\n")[0]
        parts.append(f"<h3>Cross-dataset testing (Table II)</h3><pre>{html.escape(matrix)}</pre>")
    parts += [f"<figure><img src='{prefix}{name}' alt='{html.escape(caption)}'><figcaption>{html.escape(caption)}"
              "</figcaption></figure>" for name, caption in report.figures.items()]
    parts += [f"<p><em>{html.escape(note)}</em></p>" for note in report.notes]
    if not report.excluded.empty:
        parts += ["<h3>Not averaged in</h3>", _excluded_html(report.excluded)]
    return "\n".join(parts)


STYLE = ("body{font-family:sans-serif;margin:2em;max-width:1400px} table{border-collapse:collapse;font-size:13px;"
         "margin:1em 0} th,td{border:1px solid #ccc;padding:3px 6px;text-align:right} td.best{font-weight:bold;"
         "background:#e8f4e8} .caption{color:#555;font-size:12px} img{max-width:600px}")


def _html_page(title: str, body: str) -> str:
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>\n{body}\n</body></html>\n")


EVALUATION_CAPTION = ("Per domain: Mean, Mean_Com and Mean_Int AUC of a predictions file; clean_<set>: AUC on "
                      "the relabelled NIH images of that set (Table VII).")


def model_cards(client: MlflowClient, run_ids: set[str], folder: Path) -> list[tuple[str, Path]]:
    """The model cards of the registered versions that came from these runs, copied into `folder`."""
    cards = []
    for version in client.search_model_versions(max_results=1000):
        if version.run_id not in run_ids:
            continue
        text = download_text(client, version.run_id, MODEL_CARD_MD)
        if text is None:
            continue
        folder.mkdir(parents=True, exist_ok=True)
        path = folder / f"{_slug(version.name)}-v{version.version}.md"
        path.write_text(text)
        cards.append((f"{version.name} version {version.version}", path))
    return sorted(cards, key=lambda card: card[0])


@dataclass
class ReportOutcome:
    markdown: Path
    html: Path
    sections: list[SectionReport]
    logged_to: list[str]  # parent run ids the sweep parts were logged to

    def lines(self) -> list[str]:
        """What `cxr report` says it wrote."""
        lines = [f"{s.section.title}: {len(s.table)} table rows from {len(s.section.runs)} runs, "
                 f"{len(s.excluded)} not averaged in, {len(s.figures)} figures" for s in self.sections]
        lines.append(f"report: {self.markdown} and {self.html}")
        if self.logged_to:
            lines.append(f"also logged under report/ of MLflow run(s) {', '.join(self.logged_to)}")
        return lines


def write_report(client: MlflowClient, experiment: str, out: Path, parent_run_id: str | None = None,
                 progress=None) -> ReportOutcome:
    """Write report.md, report.html and one folder per section (table.csv, PNGs) under `out`."""
    sections = collect_sections(client, experiment, parent_run_id)
    if not sections:
        raise ConfigError(f"experiment {experiment!r} has no sweeps and no training runs to report")
    out.mkdir(parents=True, exist_ok=True)
    reports, logged = [], []
    # The paper default's runs, what an Optuna sweep's best trial is compared with.
    default_runs = [r for s in sections if s.parent is not None and s.parent.data.tags.get(SPACE_TAG) == PAPER_DEFAULT
                    for r in s.runs]
    title = f"cxr-orchestra report: {experiment}"
    for section in sections:
        if progress:
            progress(f"section {section.title}: {len(section.runs)} runs")
        folder = out / section.slug
        folder.mkdir(exist_ok=True)
        table, excluded = result_table(client, section)
        report = SectionReport(section, table, excluded)
        report.figures.update(lambda_figures(section, folder))
        figures, notes = optuna_figures(client, section, folder)
        report.figures.update(figures)
        report.notes += notes
        if any(str(key).endswith(RANDOM_INIT_MARK) for key in table.index):
            report.notes.append(RANDOM_INIT_NOTE)
        report.cross_domain = _cross_domain_markdown(client, section)
        report.comparisons, comparison_notes = row_comparisons(client, section, default_runs)
        report.notes += comparison_notes
        if not report.comparisons.empty:
            report.comparisons.to_csv(folder / "comparisons.csv", index=False)
        if not table.empty:
            table.to_csv(folder / "table.csv")
        if not excluded.empty:
            excluded.to_csv(folder / "not_averaged.csv", index=False)
        (folder / "report.md").write_text(f"# {title}\n\n" + section_markdown(report, ""))
        (folder / "report.html").write_text(_html_page(title, section_html(report, "")))
        if section.parent is not None:
            client.log_artifacts(section.parent.info.run_id, str(folder), REPORT_DIR)
            logged.append(section.parent.info.run_id)
        reports.append(report)
    markdown_parts = [section_markdown(r, f"{r.section.slug}/") for r in reports]
    html_parts = [section_html(r, f"{r.section.slug}/") for r in reports]
    evaluations = runs_of_kind(client, experiment, EVALUATION) if parent_run_id is None else []
    if evaluations:
        table = evaluation_table(client, evaluations)
        table.to_csv(out / "evaluations.csv")
        markdown_parts.append(f"## Evaluations (cxr evaluate)\n\n{table_markdown(table)}\n\n{EVALUATION_CAPTION}\n")
        html_parts.append(f"<h2>Evaluations (cxr evaluate)</h2>{table_html(table)}"
                          f"<p class='caption'>{html.escape(EVALUATION_CAPTION)}</p>")
    cards = model_cards(client, {r.info.run_id for section in sections for r in section.runs}, out / "model_cards")
    if cards:
        markdown_parts.append("## Registered models\n\n" + "\n".join(
            f"- {what}: [model card]({path.relative_to(out)})" for what, path in cards) + "\n")
        html_parts.append("<h2>Registered models</h2><ul>" + "".join(
            f"<li>{html.escape(what)}: <a href='{html.escape(str(path.relative_to(out)))}'>model card</a></li>"
            for what, path in cards) + "</ul>")
    markdown = out / "report.md"
    markdown.write_text(f"# {title}\n\n" + "\n".join(markdown_parts))
    page = out / "report.html"
    page.write_text(_html_page(title, "\n".join(html_parts)))
    return ReportOutcome(markdown, page, reports, logged)

"""Search-space files: the built-in ones parse, malformed ones are refused naming file and key,
and Optuna receives the conditional H-schedule parameters."""

import optuna
import pytest

from orchestration.settings.config import load_config
from orchestration.sweeps.spaces import SpaceError, builtin_spaces, load_space


def test_builtin_spaces_parse():
    assert set(builtin_spaces()) == {
        "paper_default", "optuna_full", "fig4_lambda_ute", "fig4_lambda_tat", "ablation_table6",
        "baselines_table3", "cross_domain_table2",
    }
    for name in builtin_spaces():
        load_space(name)
    # The paper's grids say so (a warning without ImageNet weights); the Optuna search is ours.
    assert {n for n in builtin_spaces() if load_space(n).paper} == set(builtin_spaces()) - {"optuna_full"}
    # §IV-B "We validate the model every 3600 steps": every grid of the paper's tables and figures.
    for name in builtin_spaces():
        space = load_space(name)
        if space.paper:
            points = space.grid_points(["nih", "chexpert"], "nih", seeds=1)
            assert points and all(space.trial_updates(p)["train.val_every_steps"] == 3600 for p in points), name


def test_fig4_grids_are_the_papers():
    ute = load_space("fig4_lambda_ute")
    assert ute.parameters["method.lambda_ute"].values == (3, 10, 30, 100, 300)
    assert ute.fixed == {"method.lambda_tat": 0.03, "train.val_every_steps": 3600}
    tat = load_space("fig4_lambda_tat")
    assert tat.parameters["method.lambda_tat"].values == (0, 0.003, 0.01, 0.03, 0.1, 0.3)
    assert tat.fixed == {"method.lambda_ute": 30, "train.val_every_steps": 3600}
    assert len(tat.grid_points(["nih"], "nih", seeds=2)) == 12


def test_table6_rows_match_the_paper():
    space = load_space("ablation_table6")
    # (TW, TAT, TE, Uncertain, HAT, Hard Label) per row, from Table VI.
    expected = {
        "a": (0, 0, 0, 0, 0, 0), "b": (1, 0, 0, 0, 0, 0), "c": (1, 1, 0, 0, 0, 0),
        "d": (1, 1, 1, 0, 0, 0), "e": (1, 0, 1, 1, 0, 0), "f": (0, 1, 1, 1, 0, 0),
        "g": (1, 1, 1, 1, 0, 0), "h": (1, 0, 1, 1, 1, 0), "i": (1, 1, 0, 0, 0, 1),
    }
    for name, switches in expected.items():
        m = load_config(updates=space.trial_updates({"row": name})).method
        got = (m.task_weighting, m.adversarial == "task", m.temporal_ensemble, m.uncertainty,
               m.adversarial == "holistic", m.hard_labels)
        assert tuple(map(int, got)) == switches, name


def test_baselines_and_cross_domain_rows_expand_over_domains():
    points = load_space("baselines_table3").grid_points(["nih", "chexpert"], "nih", seeds=1)
    assert points[0] == {"row": "single_dataset", "train.domains": ["nih"], "train.seed": 0}
    assert [p["row"] for p in points] == ["single_dataset", "joint_training", "multi_task", "ours"]
    cross = load_space("cross_domain_table2").grid_points(["nih", "chexpert", "inhouse"], "nih", seeds=1)
    assert [p["train.domains"] for p in cross] == [["nih"], ["chexpert"], ["inhouse"]]
    assert load_config(updates=load_space("baselines_table3").trial_updates({"row": "multi_task"})).method.multi_task


def test_optuna_receives_the_conditional_schedule_parameters():
    space = load_space("optuna_full")
    study = optuna.create_study(direction="maximize", sampler=optuna.samplers.TPESampler(seed=0))
    seen = set()
    for _ in range(25):
        trial = study.ask()
        space.define_by_run(trial)
        name = trial.params["method.h_schedule.name"]
        seen.add(name)
        branch = {k for k in trial.params if k.startswith("method.h_schedule.") and k != "method.h_schedule.name"}
        assert branch == {f"method.h_schedule.{name}.{p}" for p in space.schedules["method.h_schedule"][name]}
        assert 1e-3 <= trial.params["method.lambda_tat"] <= 0.3 and 1 <= trial.params["method.lambda_ute"] <= 300
        config = load_config(updates=space.trial_updates(trial.params))  # every sample is a valid config
        assert config.method.h_schedule.name == name
        study.tell(trial, 0.5)
    assert len(seen) >= 3  # several schedules were explored


def _write(tmp_path, text):
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return str(path)


@pytest.mark.parametrize(
    "text, message",
    [
        ("kind: search\nparameters:\n  method.lamda_tat: {distribution: uniform, low: 0, high: 1}\n",
         r"parameters.method.lamda_tat: unknown parameter 'method.lamda_tat'"),
        ("kind: search\nparameters:\n  method.alpha: {distribution: normal, low: 0, high: 1}\n",
         r"parameters.method.alpha: unknown distribution 'normal'; allowed: loguniform, uniform, int, choice"),
        ("kind: search\nparameters:\n  method.alpha: {distribution: uniform, low: 5, high: 1}\n",
         r"low \(5.0\) must be below high \(1.0\)"),
        ("kind: search\nparameters:\n  method.lambda_ute: {distribution: loguniform, low: 0, high: 1}\n",
         r"loguniform needs low > 0"),
        ("kind: search\nparameters:\n  method.h_schedule:\n    distribution: schedule\n    schedules:\n      sigmoid: {}\n",
         r"schedules.sigmoid: unknown schedule; allowed: constant, linear, cosine, exponential, step"),
        ("kind: search\nparameters:\n  method.h_schedule:\n    distribution: schedule\n    schedules:\n"
         "      linear: {start: {distribution: uniform, low: 0.1, high: 0.3}, end: {distribution: uniform, low: 0.0, high: 0.2}}\n",
         r"some samples in these ranges would be invalid"),
        ("kind: grid\nparameters:\n  method.alpha: {distribution: uniform, low: 1, high: 2}\n",
         r"a grid takes only 'choice' distributions"),
        ("kind: grid\nparameters:\n  method.lambda_tat: {distribution: choice, values: [0.1, -1]}\n",
         r"(?s)parameters.method.lambda_tat=-1.*greater than or equal to 0"),
        ("kind: sweep\n", r"kind: 'sweep' is not one of search, grid, ablation"),
        ("kind: ablation\nrows:\n  - {name: a, set: {method.adversarial: adversary}}\n", r"(?s)row 'a'.*method.adversarial='adversary'"),
        ("kind: ablation\nrows:\n  - {name: a, set: {method.tw: true}}\n", r"rows\[0\].set.method.tw: unknown parameter"),
        ("kind: ablation\nrows:\n  - {name: a, domains: some}\n", r"rows\[0\].domains: 'some' is not one of all, internal, each"),
        ("kind: search\nmetric: accuracy\n", r"metric: 'accuracy' is not one of val_mean_auc"),
    ],
)
def test_malformed_spaces_name_file_key_and_allowed(tmp_path, text, message):
    with pytest.raises(SpaceError, match=message) as err:
        load_space(_write(tmp_path, text))
    assert "space.yaml" in str(err.value)


def test_unknown_builtin_name_lists_the_builtins():
    with pytest.raises(SpaceError, match="unknown search space 'table9'; built-in: ablation_table6"):
        load_space("table9")


def test_sweep_settings_are_checked_when_made():
    from orchestration.settings.config import ConfigError
    from orchestration.sweeps.tune import SweepSettings

    cases = [
        (dict(metrics=("accuracy",)), "--metric 'accuracy' is not one of"),
        (dict(scheduler="hyperband"), "--scheduler 'hyperband': allowed asha, none"),
        (dict(metrics=("val_mean_com_auc", "val_mean_int_auc"), scheduler="asha"), "multi-objective"),
        (dict(num_samples=0), "--num-samples must be at least 1"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ConfigError, match=message):
            SweepSettings("s", **kwargs)
    two = SweepSettings("s", metrics=("val_mean_com_auc", "val_mean_int_auc"))
    two.check_for(load_space("optuna_full"))
    with pytest.raises(ConfigError, match="multi-objective.*fig4_lambda_ute.yaml is a grid"):
        two.check_for(load_space("fig4_lambda_ute"))


def test_pareto_front_keeps_the_undominated_trials():
    import pandas as pd

    from orchestration.sweeps.tune import pareto_front

    trials = pd.DataFrame({"a": [0.9, 0.8, 0.7, 0.95], "b": [0.5, 0.9, 0.4, 0.1]})
    assert sorted(pareto_front(trials, ("a", "b"), "max").index) == [0, 1, 3]  # trial 2 is dominated by 0
    assert sorted(pareto_front(trials, ("a", "b"), "min").index) == [2, 3]


def test_asha_judges_epochs_before_the_last_and_lets_a_finishing_trial_end_by_itself():
    from types import SimpleNamespace

    from ray.tune.schedulers import TrialScheduler

    from orchestration.settings.config import ConfigError
    from orchestration.sweeps.tune import asha_scheduler

    def reports(scheduler, trial_id: str, values: list[float], epochs: int) -> list[str]:
        """What ASHA answers to a trial's epoch reports, then to its final (test) report."""
        trial = SimpleNamespace(trial_id=trial_id)
        scheduler.on_trial_add(None, trial)
        answers = []
        for epoch, value in enumerate(values, start=1):
            answers.append(scheduler.on_trial_result(None, trial, {"epoch": epoch, "val_mean_auc": value}))
            if answers[-1] == TrialScheduler.STOP:
                return answers
        # The final report repeats the last epoch and carries the best validation value.
        answers.append(scheduler.on_trial_result(None, trial, {"epoch": epochs, "val_mean_auc": max(values)}))
        return answers

    go, stop = TrialScheduler.CONTINUE, TrialScheduler.STOP
    scheduler = asha_scheduler(3)
    scheduler.set_search_properties("val_mean_auc", "max")
    # Judged at epoch 1 only: the first trial sets the bar; one below it stops there, one above
    # the 75th percentile of those before it runs to its end, test report included.
    assert reports(scheduler, "a", [0.70, 0.72, 0.75], 3) == [go, go, go, go]
    assert reports(scheduler, "b", [0.60, 0.90, 0.90], 3) == [stop]
    assert reports(scheduler, "c", [0.71, 0.50, 0.40], 3) == [go, go, go, go]  # above 0.675, the cut
    assert reports(scheduler, "d", [0.69, 0.99, 0.99], 3) == [stop]  # below 0.705
    # Eight epochs (the paper's): judged at epochs 1 and 4, never at the last one.
    scheduler = asha_scheduler(8)
    scheduler.set_search_properties("val_mean_auc", "max")
    assert reports(scheduler, "a", [0.7] * 8, 8) == [go] * 9
    assert reports(scheduler, "b", [0.8, 0.8, 0.8, 0.6, 0.1, 0.1, 0.1, 0.1], 8) == [go, go, go, stop]
    with pytest.raises(ConfigError, match="needs train.epochs of 2 or more"):
        asha_scheduler(1)


def _space_of_one_float(trial: optuna.Trial) -> None:  # module level: Tune pickles the searcher with it
    trial.suggest_float("x", 0, 1)


def test_a_trial_rerun_after_its_study_finished_it_is_left_alone(tmp_path):
    """The driver killed after Optuna recorded a trial and before Tune saved its state: on --resume
    Tune restores the searcher as it was saved (the trial running) and reruns the trial, which
    reports again. Reporting to a trial the study has finished raised UpdateFinishedTrialError."""
    from orchestration.sweeps.tune import ResumableOptunaSearch, study_storage

    def searcher() -> ResumableOptunaSearch:
        return ResumableOptunaSearch(space=_space_of_one_float, metric="m", mode="max",
                                     sampler=optuna.samplers.TPESampler(seed=0), study_name="s",
                                     storage=study_storage(tmp_path))

    first = searcher()
    proposed = first.suggest("t1")
    first.save(str(tmp_path / "saved.pkl"))  # Tune's last state: t1 running
    first.on_trial_result("t1", {"m": 0.5, "training_iteration": 1})
    first.on_trial_complete("t1", {"m": 0.7, "training_iteration": 2})

    resumed = searcher()
    resumed.restore(str(tmp_path / "saved.pkl"))
    resumed.on_trial_result("t1", {"m": 0.6, "training_iteration": 1})
    resumed.on_trial_complete("t1", {"m": 0.6, "training_iteration": 2})
    [trial] = optuna.load_study(study_name="s", storage=study_storage(tmp_path)).trials
    assert trial.state == optuna.trial.TrialState.COMPLETE and trial.values == [0.7] and trial.params == proposed
    assert trial.intermediate_values == {1: 0.5}
    # A trial the study has not finished is reported and told as OptunaSearch does.
    resumed.suggest("t2")
    resumed.on_trial_result("t2", {"m": 0.4, "training_iteration": 1})
    resumed.on_trial_complete("t2", {"m": 0.8, "training_iteration": 1})
    second = optuna.load_study(study_name="s", storage=study_storage(tmp_path)).trials[1]
    assert second.values == [0.8] and second.intermediate_values == {1: 0.4}

@pytest.mark.slow
def test_sweeps_are_checked_against_the_data_before_ray(prepared_dir, tmp_path):
    from conftest import tiny_training

    from orchestration.settings.config import ConfigError
    from orchestration.sweeps.tune import SweepSettings, run_sweep

    base = load_config([], tiny_training(tmp_path))
    with pytest.raises(ConfigError, match="nothing to resume"):
        run_sweep(load_space("fig4_lambda_ute"), base, prepared_dir, SweepSettings("s", resume=True))
    bad_row = tmp_path / "bad_row.yaml"
    bad_row.write_text("kind: ablation\nrows:\n  - {name: lonely, domains: internal, set: {method.adversarial: task}}\n")
    with pytest.raises(ConfigError, match="row 'lonely'.*needs at least 2 training domains"):
        run_sweep(load_space(str(bad_row)), base, prepared_dir, SweepSettings("s"))
    assert not (tmp_path / "ray_results").exists()  # nothing started


def test_ablate_rows_can_be_chosen_and_unknown_ones_are_named():
    space = load_space("ablation_table6").only_rows(["g", "a"])
    assert [r.name for r in space.rows] == ["a", "g"]
    with pytest.raises(SpaceError, match=r"no row\(s\) \['z'\]; rows: a, b, c, d, e, f, g, h, i"):
        load_space("ablation_table6").only_rows(["z"])


def test_cli_refuses_bad_spaces_with_exit_code_2(tmp_path):
    from typer.testing import CliRunner

    from orchestration.cli import app

    result = CliRunner().invoke(app, ["tune", "--space", "nope", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "unknown search space 'nope'" in result.output
    result = CliRunner().invoke(app, ["ablate", "--grid", "optuna_full", "--data", str(tmp_path)])
    assert result.exit_code == 2 and "is a search space" in result.output


def test_each_trial_books_what_it_runs(tmp_path):
    """A one-worker trial trains in its own process and holds its worker's resources; a trial that
    starts a TorchTrainer holds a sliver for its driver. Decided per trial: a space may vary workers."""
    from orchestration.sweeps.tune import TRIAL_DRIVER_RESOURCES, _trial_resources

    path = tmp_path / "workers.yaml"
    path.write_text("kind: grid\nmetric: val_mean_auc\nmode: max\n"
                    "parameters:\n  train.workers: {distribution: choice, values: [1, 2]}\n")
    space = load_space(str(path))
    base = load_config([], ["train.cpus_per_worker=0.7"]).model_dump(mode="json")
    assert _trial_resources({"point": {"train.workers": 1}}, base=base, space=space) == {"CPU": 0.7}
    assert _trial_resources({"point": {"train.workers": 2}}, base=base, space=space) == TRIAL_DRIVER_RESOURCES
    gpu = load_config([], ["train.gpu=true"]).model_dump(mode="json")
    assert _trial_resources({"point": {"train.workers": 1}}, base=gpu, space=space) == {"CPU": 1.0, "GPU": 1}

"""The Ray internals this project leans on, checked on the installed Ray: a Ray upgrade that moves
them fails here, by name, instead of silently changing what users see; and the
resource check that refuses workers a cluster can never place."""

from __future__ import annotations

import logging
import sys

import pytest
import yaml

from orchestration.settings.runtime import ClusterResourceError, check_resources


def test_the_console_hooks_exist():
    from ray._private import worker
    from ray._private.ray_logging import global_worker_stdstream_dispatcher

    assert isinstance(worker._worker_logs_enabled, bool)  # Ray's switch for printing worker logs
    assert callable(global_worker_stdstream_dispatcher.add_handler)
    assert callable(global_worker_stdstream_dispatcher.remove_handler)


def test_ray_train_reads_the_preemption_watcher_switch_we_set():
    from ray.train.v2._internal.constants import ENABLE_PREEMPTION_WATCHER_ENV_VAR

    from orchestration.settings.runtime import PREEMPTION_WATCHER_ENV

    assert ENABLE_PREEMPTION_WATCHER_ENV_VAR == PREEMPTION_WATCHER_ENV


def test_the_quiet_logging_config_is_ray_datas_default_but_for_the_consoles_level():
    """The file shipped with the package follows the installed Ray: a Ray whose default changes
    fails here until the file is updated."""
    from ray.data._internal.logging import DEFAULT_CONFIG

    from orchestration.settings.runtime import QUIET_RAY_DATA_LOGGING

    shipped = yaml.safe_load(QUIET_RAY_DATA_LOGGING.read_text())
    assert shipped["handlers"]["console"]["level"] == "ERROR"
    shipped["handlers"]["console"]["level"] = DEFAULT_CONFIG["handlers"]["console"]["level"]
    assert shipped == DEFAULT_CONFIG


def test_ray_data_takes_the_quiet_logging_config(monkeypatch):
    from ray.data._internal.logging import configure_logging

    from orchestration.settings.runtime import QUIET_RAY_DATA_LOGGING, RAY_DATA_LOGGING_CONFIG

    monkeypatch.setenv(RAY_DATA_LOGGING_CONFIG, str(QUIET_RAY_DATA_LOGGING))
    configure_logging()
    levels = {type(h).__name__: h.level for h in logging.getLogger("ray.data").handlers}
    assert levels == {"SessionFileHandler": logging.NOTSET, "PlainRayHandler": logging.ERROR}
    monkeypatch.delenv(RAY_DATA_LOGGING_CONFIG)
    configure_logging()  # back to Ray's default for the other tests
    assert logging.getLogger("ray.data").handlers[-1].level == logging.INFO


def test_marks_go_to_the_timeline_file_only_when_one_is_named(tmp_path, monkeypatch):
    import json

    from orchestration.settings.runtime import TIMELINE_ENV, mark

    monkeypatch.delenv(TIMELINE_ENV, raising=False)
    monkeypatch.chdir(tmp_path)
    mark("unseen")
    assert list(tmp_path.iterdir()) == []
    timeline = tmp_path / "timeline.jsonl"
    monkeypatch.setenv(TIMELINE_ENV, str(timeline))
    mark("ray ready")
    mark("first step")
    marks = [json.loads(line) for line in timeline.read_text().splitlines()]
    assert [m["event"] for m in marks] == ["ray ready", "first step"]
    assert marks[0]["time"] <= marks[1]["time"]



@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's arenas: Linux")
def test_release_memory_frees_a_finished_runs_cycles_and_gives_its_heap_back():
    """A run in its own thread (as Tune runs each trial) leaves ~300 MB of 32 KB tensors in a
    reference cycle: the cyclic collector must free them and glibc must return them. Either step
    alone leaves the process as big (gc alone: the freed heap stays in the thread's arena)."""
    import gc
    import threading
    import weakref

    import psutil
    import torch

    from orchestration.settings.runtime import release_memory

    class Run:
        pass

    finished = []

    def train() -> None:
        run = Run()
        run.itself = run
        run.tensors = [torch.ones(8192) for _ in range(10_000)]  # each below the mmap threshold: heap
        finished.append(weakref.ref(run))

    def rss_mb() -> float:
        return psutil.Process().memory_info().rss / 2**20

    release_memory()
    before = rss_mb()
    gc.disable()  # only release_memory collects: the automatic collector runs when it likes
    try:
        thread = threading.Thread(target=train)
        thread.start()
        thread.join()
        loaded = rss_mb()
        release_memory()
    finally:
        gc.enable()
    assert finished[0]() is None
    assert loaded - before > 200, (before, loaded)
    assert rss_mb() - before < 60, (before, loaded, rss_mb())

@pytest.mark.slow
def test_sweep_trials_lists_trials_that_errored_before_reporting(ray_session, tmp_path):
    from ray import tune

    from orchestration.sweeps.tune import sweep_trials

    def trainable(config: dict) -> None:
        if config["fail"]:
            raise ValueError("fails before its first report")
        tune.report({"score": 1.0})

    results = tune.Tuner(trainable, param_space={"fail": tune.grid_search([False, True])},
                         run_config=tune.RunConfig(storage_path=str(tmp_path), name="adapter", verbose=0)).fit()
    trials = sweep_trials(results)
    assert sorted((t.config["fail"], t.status) for t in trials) == [(False, "TERMINATED"), (True, "ERROR")]
    assert [t.last_result.get("score") for t in trials if not t.config["fail"]] == [1.0]


def _node(ip: str, node_id: str, **resources) -> dict:
    return {"NodeManagerAddress": ip, "NodeID": node_id, "Resources": resources, "Alive": True}


TWO_NODES = [_node("10.0.0.1", "aaaaaaaa11", CPU=2.0), _node("10.0.0.2", "bbbbbbbb22", CPU=2.0)]


def test_workers_may_fill_the_cluster_and_one_more_is_refused_naming_the_shortfall():
    check_resources({"CPU": 1.0}, 4, "PACK", TWO_NODES)  # 4 CPUs, 4 workers: the workers read their own data
    with pytest.raises(ClusterResourceError, match=r"5 training worker\(s\) of 1 CPU each cannot be placed: this "
                                                   r"cluster has room for 4 worker\(s\) \(10.0.0.1 \(aaaaaaaa\): 2 CPU"):
        check_resources({"CPU": 1.0}, 5, "PACK", TWO_NODES)


def test_concurrent_trials_are_counted_together_and_told_what_would_fit():
    one_node = [_node("10.0.0.1", "aaaaaaaa11", CPU=2.0)]
    check_resources({"CPU": 0.5}, 1, "PACK", one_node, trials=3, trial_driver_cpus=0.01)  # 3 x 0.51 <= 2
    # Four trials: 4 x (0.5 + 0.01) = 2.04 > 2 although the node holds four 0.5-CPU workers. Three
    # trials fit; or workers of (2 / 4 - 0.01) CPU.
    with pytest.raises(ClusterResourceError, match=r"--max-concurrent 4 trials, each of 1 training worker\(s\) of "
                       r"0.5 CPU each and a 0.01-CPU trial driver, need 2.04 CPU, more than the cluster's 2 .*Lower "
                       r"--max-concurrent to 3 or train.cpus_per_worker to 0.49 or less"):
        check_resources({"CPU": 0.5}, 1, "PACK", one_node, trials=4, trial_driver_cpus=0.01)
    check_resources({"CPU": 0.49}, 1, "PACK", one_node, trials=4, trial_driver_cpus=0.01)  # exactly 2
    # Trials that train themselves have no driver beside their worker, and the message names none.
    with pytest.raises(ClusterResourceError, match=r"--max-concurrent 2 trials, each of 1 training worker\(s\) of "
                       r"1.5 CPU each, cannot be placed: this cluster has room for 1 worker\(s\)"):
        check_resources({"CPU": 1.5}, 1, "PACK", one_node, trials=2)
    # Placement counts every trial's workers: 2 trials x 2 one-GPU workers on a 2-GPU node.
    gpus = [_node("10.0.0.1", "aaaaaaaa11", CPU=8.0, GPU=2.0)]
    with pytest.raises(ClusterResourceError, match=r"cannot be placed: this cluster has room for 2 worker\(s\)"):
        check_resources({"CPU": 1.0, "GPU": 1.0}, 2, "PACK", gpus, trials=2)


def test_workers_no_node_can_hold_are_refused_naming_what_each_node_has():
    with pytest.raises(ClusterResourceError, match=r"2 training worker\(s\) of 1 CPU, 1 GPU each cannot be placed: "
                                                   r"this cluster has room for 0 .*2 CPU, 0 GPU"):
        check_resources({"CPU": 1.0, "GPU": 1.0}, 2, "PACK", TWO_NODES)
    gpus = [_node("10.0.0.1", "aaaaaaaa11", CPU=8.0, GPU=2.0)]
    check_resources({"CPU": 1.0, "GPU": 1.0}, 2, "PACK", gpus)
    with pytest.raises(ClusterResourceError, match=r"room for 1 worker\(s\) on distinct nodes"):
        check_resources({"CPU": 1.0, "GPU": 1.0}, 2, "STRICT_SPREAD", gpus)
    with pytest.raises(ClusterResourceError, match="cannot be placed"):  # 2.5 CPUs per worker fit nowhere
        check_resources({"CPU": 2.5}, 1, "PACK", TWO_NODES)

"""A preprocess run killed midway leaves nothing that training would pick up."""

import os
import signal
import subprocess
import sys
import time

import mlflow
import pytest
from mlflow.tracking import MlflowClient

from conftest import PROJECT_DIR


@pytest.fixture
def new_store(tmp_path, monkeypatch, use_tracking_store):
    """A SQLite store of the test's own with one experiment, which kana's entry points log to
    (`KANA_EXPERIMENT`), in this process and those it starts; gives the experiment's id."""
    def make(experiment: str) -> str:
        use_tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
        monkeypatch.setenv("KANA_EXPERIMENT", experiment)
        return MlflowClient().create_experiment(experiment, artifact_location=str(tmp_path / "artifacts"))
    return make


def test_killed_preprocess_is_never_picked_up(new_store):
    new_store("crash")
    cmd = [sys.executable, "-m", "entrypoints.preprocess", "--raw-dir", "", "--class-set", "basic46"]
    done = subprocess.run(cmd + ["--synthetic-per-class", "6"], cwd=PROJECT_DIR, env=os.environ,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    from kana.dataset import load_dataset

    good, good_id = load_dataset()
    # a big run, killed while it synthesizes: its run stays RUNNING and has no dataset
    proc = subprocess.Popen(cmd + ["--synthetic-per-class", "5000"], cwd=PROJECT_DIR, env=os.environ,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    client = MlflowClient()
    exp = client.get_experiment_by_name("crash").experiment_id
    deadline = time.time() + 120
    while time.time() < deadline and len(client.search_runs([exp])) < 2:
        time.sleep(0.5)
    time.sleep(2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    runs = client.search_runs([exp])
    assert len(runs) == 2
    killed = next(r for r in runs if r.info.run_id != good_id)
    assert killed.info.status == "RUNNING"
    assert not [a.path for a in client.list_artifacts(killed.info.run_id) if a.path == "dataset"]
    again, again_id = load_dataset()
    assert again_id == good_id and again.meta["digest"] == good.meta["digest"]
    # named by hand, the killed run gets an error that says which run it is and what it is not
    with pytest.raises(ValueError, match=(f"dataset_run_id '{killed.info.run_id}': a preprocess run that is "
                                          "RUNNING .*; it must name a FINISHED preprocess run")):
        load_dataset(killed.info.run_id)


def _entry(name, *args):
    return [sys.executable, "-m", f"entrypoints.{name}", *map(str, args)]


def test_preprocess_runs_at_once_do_not_clobber_each_other(new_store):
    from kana.dataset import load_dataset

    exp = new_store("concurrent")
    cmd = _entry("preprocess", "--raw-dir", "", "--class-set", "basic46", "--synthetic-per-class", 6)
    # three at once on two cores: they also race to record the same dataset in the store
    procs = [subprocess.Popen(cmd, cwd=PROJECT_DIR, env=os.environ, stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True) for _ in range(3)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], "\n".join(o[-2000:] for o in outs)
    runs = MlflowClient().search_runs([exp])
    assert len(runs) == 3 and {r.info.status for r in runs} == {"FINISHED"}
    loaded = [load_dataset(r.info.run_id)[0] for r in runs]  # each verifies its own digest
    # the same inputs and seed give the same dataset, each in its own run's artifacts
    assert len({d.meta["digest"] for d in loaded}) == 1
    assert all((d.split == loaded[0].split).all() for d in loaded)
    assert len({r.info.artifact_uri for r in runs}) == 3
    assert all(len(r.inputs.dataset_inputs) == 1 for r in runs)


def test_same_seed_and_data_give_the_same_split_and_metrics(new_store):
    """Reproducibility: a dataset rebuilt from the same seed has the same digest and split, and
    the same training run twice gives the same scores, the CNN's with its augmentation too (its
    parallel map drew random numbers in any order: losses 3.6950 / 3.6927 / 3.6833 in three runs
    of this one). CPU; op determinism is not forced, so losses may differ in the last bits."""
    from kana.dataset import build_dataset

    exp = new_store("repro")
    first, _ = build_dataset(None, "basic46", 3, seed=5, n_points=120, max_strokes=4, progress=False)
    second, _ = build_dataset(None, "basic46", 3, seed=5, n_points=120, max_strokes=4, progress=False)
    other, _ = build_dataset(None, "basic46", 3, seed=6, n_points=120, max_strokes=4, progress=False)
    assert first.meta["digest"] == second.meta["digest"] != other.meta["digest"]
    assert (first.split == second.split).all()

    prep = subprocess.run(_entry("preprocess", "--raw-dir", "", "--class-set", "basic46",
                                 "--synthetic-per-class", 10), cwd=PROJECT_DIR, env=os.environ,
                          capture_output=True, text=True, timeout=300)
    assert prep.returncode == 0, prep.stderr[-2000:]
    for step in ("train_lstm", "train_cnn"):
        for _ in range(2):
            done = subprocess.run(_entry(step, "--epochs", 2, "--seed", 3), cwd=PROJECT_DIR,
                                  env=os.environ, capture_output=True, text=True, timeout=600)
            assert done.returncode == 0, done.stderr[-2000:]
        a, b = MlflowClient().search_runs([exp], f"tags.`kana.entry_point` = '{step}'")
        for key in ("val_accuracy", "val_balanced_accuracy", "test_accuracy", "test_balanced_accuracy"):
            assert a.data.metrics[key] == b.data.metrics[key], (step, key)
        for key in ("loss", "val_loss"):
            assert abs(a.data.metrics[key] - b.data.metrics[key]) <= 1e-6 * abs(a.data.metrics[key]), (step, key)


def test_main_reuses_a_step_only_if_the_same_kana_code_made_it(new_store):
    """Same params and commit are not enough: with an edit not yet committed (a changed
    synthesizer, say) the old dataset and models must not be reused."""
    from kana.pipeline import _already_ran
    from kana.tracking import CODE_DIGEST_TAG, code_digest, kana_run

    new_store("reuse")
    params = {"class_set": "basic46", "seed": 3}
    with kana_run("preprocess") as run:
        mlflow.log_params(params)
        mlflow.set_tags({"mlflow.project.entryPoint": "preprocess",
                         "mlflow.source.git.commit": "abc123"})
    client = MlflowClient()
    assert client.get_run(run.info.run_id).data.tags[CODE_DIGEST_TAG] == code_digest()
    assert _already_ran("preprocess", params, "abc123").info.run_id == run.info.run_id
    assert _already_ran("preprocess", {**params, "seed": 4}, "abc123") is None
    assert _already_ran("preprocess", params, "def456") is None
    client.set_tag(run.info.run_id, CODE_DIGEST_TAG, "other-kana-code")
    assert _already_ran("preprocess", params, "abc123") is None


def test_a_preprocess_that_keeps_no_samples_fails_and_is_never_picked_up(new_store):
    """A negative count of synthetic samples used to FINISH a run with an empty dataset, which
    training then took as the latest; now bad parameters are refused before a run starts, and a
    dataset with no samples fails its run."""
    from kana.dataset import load_dataset, preprocess

    exp = new_store("empty")
    with pytest.raises(ValueError, match="synthetic_per_class must be 0 .raw samples alone. or more, got -5"):
        preprocess(raw_dir="", class_set="basic46", synthetic_per_class=-5)
    assert MlflowClient().search_runs([exp]) == []  # refused before any run
    with pytest.raises(ValueError, match="kept no samples .no raw samples, synthetic_per_class 0."):
        preprocess(raw_dir="", class_set="basic46", synthetic_per_class=0)
    assert [r.info.status for r in MlflowClient().search_runs([exp])] == ["FAILED"]
    with pytest.raises(RuntimeError, match="no FINISHED preprocess run found"):
        load_dataset()


def test_a_preprocess_with_no_validation_samples_fails_before_any_training(new_store):
    """Five synthetic samples per class and no raw data split 4/0/1 in every class: the run
    FINISHED, all three trainers ran on it, and only `register` failed (no val score to choose
    by). Now the preprocess run fails, saying how many samples per class val needs."""
    from kana.dataset import SMALLEST_GROUP_WITH_VAL, preprocess

    exp = new_store("no-val")
    with pytest.raises(ValueError, match=(
            r"no validation samples \(split \{'train': 184, 'val': 0, 'test': 46\}\).*"
            f"synthetic_per_class to {SMALLEST_GROUP_WITH_VAL} or more")):
        preprocess(raw_dir="", class_set="basic46", synthetic_per_class=5)
    assert [r.info.status for r in MlflowClient().search_runs([exp])] == ["FAILED"]

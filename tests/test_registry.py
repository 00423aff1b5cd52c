"""The registry's lookups before a champion is chosen: "none there" and "could not look" differ.

Read as "no champion" or "other data", a failed lookup would let `register` put a worse model
over the champion; so only MLflow's "does not exist" answers mean none, and any other is raised.
"""

from __future__ import annotations

import subprocess
import sys

import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from conftest import champion_version, finished_run, free_port


DIGEST = "268b37894d9bf1e5"  # a dataset's content digest


def _purge(run_id: str, store: str) -> None:
    """Delete the run and purge it for good, as a user's `mlflow gc` does."""
    MlflowClient().delete_run(run_id)
    subprocess.run([sys.executable, "-m", "mlflow", "gc", "--backend-store-uri", store,
                    "--run-ids", run_id], check=True, capture_output=True)


@pytest.fixture
def sqlite_store(tmp_path, monkeypatch, use_tracking_store):
    """A tracking store and registry of its own in SQLite."""
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    return use_tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}")


def test_no_champion_only_where_the_model_or_its_alias_does_not_exist(sqlite_store):
    from kana.registry import CHAMPION, current_champion

    assert current_champion("kana-registry-test") is None  # no such model
    client = MlflowClient()
    client.create_registered_model("kana-registry-test")
    assert current_champion("kana-registry-test") is None  # the model, but no alias
    run = client.create_run(client.create_experiment("registry-test"))
    version = client.create_model_version("kana-registry-test", "runs:/x/model", run_id=run.info.run_id)
    client.set_registered_model_alias("kana-registry-test", CHAMPION, version.version)
    assert current_champion("kana-registry-test").version == version.version


def test_a_registry_that_cannot_be_read_is_an_error_not_no_champion(sqlite_store, monkeypatch):
    from kana.registry import current_champion

    registry = f"http://127.0.0.1:{free_port()}"  # a registry of its own, where nothing listens
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", registry)
    with pytest.raises(MlflowException, match=f"^cannot read the 'champion' alias of 'kana-registry-test' "
                                              f"in the model registry \\({registry}\\): API request to "):
        current_champion("kana-registry-test")


def test_a_champions_dataset_run_is_none_only_where_it_does_not_exist(sqlite_store):
    from kana.registry import dataset_digest_of

    client = MlflowClient()
    run = client.create_run(client.create_experiment("registry-test"))
    client.log_param(run.info.run_id, "dataset_digest", DIGEST)
    assert dataset_digest_of(run.info.run_id) == DIGEST
    assert dataset_digest_of("0123456789abcdef0123456789abcdef") is None  # no such run
    assert dataset_digest_of("") is None


def test_a_tracking_store_that_cannot_be_read_is_an_error_not_other_data(monkeypatch, use_tracking_store):
    from kana.registry import dataset_digest_of

    tracking = use_tracking_store(f"http://127.0.0.1:{free_port()}")  # nothing listens there
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    with pytest.raises(MlflowException, match=f"^cannot read the dataset run 0123456789abcdef0123456789abcdef "
                                              f"of the champion in the tracking store \\({tracking}\\): "):
        dataset_digest_of("0123456789abcdef0123456789abcdef")


def test_a_champion_whose_runs_were_purged_stays_rather_than_failing_or_giving_way(
        sqlite_store, monkeypatch, capsys):
    """A champion packaged with other kana code is packaged again from its training runs. Where
    `mlflow gc` purged one of those, it keeps serving as it is, and `register` names the run that
    is gone: neither a failing rerun nor a worse model taking over."""
    from kana.registry import CHAMPION, CODE_TAG, SELECTION_METRIC, register
    from kana.tracking import ENTRY_POINT_TAG

    monkeypatch.setenv("KANA_EXPERIMENT", "registry-test")
    client = MlflowClient()
    experiment = client.create_experiment("registry-test")

    data = finished_run(experiment, {ENTRY_POINT_TAG: "preprocess"}, dataset_digest=DIGEST)
    kept = finished_run(experiment, {ENTRY_POINT_TAG: "train_lstm", "kana.dataset_run_id": data,
                                     "model_family": "lstm"},
                        **{SELECTION_METRIC: 0.5})  # worse than the champion
    purged = finished_run(experiment, {ENTRY_POINT_TAG: "train_cnn", "kana.dataset_run_id": data,
                                       "model_family": "cnn"}, **{SELECTION_METRIC: 0.9})
    champion = champion_version("kana-registry-test", run_id=purged, tags={
        "source_run_id": f"{purged},{kept}", "model_family": "ensemble:cnn+lstm",
        SELECTION_METRIC: "0.900000", "dataset_run_id": data, CODE_TAG: "an-older-kana"})
    _purge(purged, sqlite_store)
    with pytest.raises(MlflowException, match="not found"):
        client.get_run(purged)

    assert register(data, "kana-registry-test") == champion
    assert str(client.get_model_version_by_alias("kana-registry-test", CHAMPION).version) == champion
    assert [str(v.version) for v in client.search_model_versions("name = 'kana-registry-test'")] == [champion]
    assert f"source run(s) {purged} of champion version {champion} no longer exist" in capsys.readouterr().out
    (run,) = client.search_runs([experiment], f"tags.`{ENTRY_POINT_TAG}` = 'register'")
    assert run.info.status == "FINISHED"
    assert run.data.tags["champion_changed"] == "false" and run.data.tags["champion_version"] == champion


def test_a_champion_whose_dataset_run_was_purged_is_still_weighed_on_its_data(
        sqlite_store, monkeypatch, capsys):
    """The version keeps the digest of the data it was scored on: after `mlflow gc` purges its
    preprocess run, the same data preprocessed again is still the same data, and a worse model
    trained on it does not take over (it did, the champion read as scored on "other data")."""
    from kana.registry import CODE_TAG, SELECTION_METRIC, register
    from kana.tracking import ENTRY_POINT_TAG, code_digest

    monkeypatch.setenv("KANA_EXPERIMENT", "registry-test")
    client = MlflowClient()
    experiment = client.create_experiment("registry-test")

    purged = finished_run(experiment, {ENTRY_POINT_TAG: "preprocess"}, dataset_digest=DIGEST)
    best = finished_run(experiment, {ENTRY_POINT_TAG: "train_cnn", "kana.dataset_run_id": purged,
                                     "model_family": "cnn"}, **{SELECTION_METRIC: 0.9})
    again = finished_run(experiment, {ENTRY_POINT_TAG: "preprocess"}, dataset_digest=DIGEST)
    finished_run(experiment, {ENTRY_POINT_TAG: "train_lstm", "kana.dataset_run_id": again,
                              "model_family": "lstm"}, **{SELECTION_METRIC: 0.5})  # worse than the champion
    champion = champion_version("kana-registry-test", run_id=best, tags={
        "source_run_id": best, "model_family": "cnn", SELECTION_METRIC: "0.900000",
        "dataset_run_id": purged, "dataset_digest": DIGEST, CODE_TAG: code_digest()})
    _purge(purged, sqlite_store)

    assert register(again, "kana-registry-test") == champion
    assert [str(v.version) for v in client.search_model_versions("name = 'kana-registry-test'")] == [champion]
    assert f"champion stays at version {champion} ({SELECTION_METRIC}=0.9000)" in capsys.readouterr().out


def test_a_dataset_run_id_that_names_no_finished_preprocess_run_is_refused_by_name(sqlite_store, monkeypatch):
    """Training and `register` say what the run named is instead, before `register` starts a run
    of its own: they said "Run with id=... not found", `register` "no FINISHED training run on
    dataset ...", and with a quote in the id MLflow's "Invalid clause(s) in filter string"."""
    import re

    from kana.dataset import load_dataset
    from kana.registry import register
    from kana.tracking import ENTRY_POINT_TAG

    monkeypatch.setenv("KANA_EXPERIMENT", "registry-test")
    client = MlflowClient()
    experiment = client.create_experiment("registry-test")
    trained = finished_run(experiment, {ENTRY_POINT_TAG: "train_cnn"})
    running = client.create_run(experiment, tags={ENTRY_POINT_TAG: "preprocess"}).info.run_id
    not_kana = finished_run(experiment, {})
    missing = f"no such run in the tracking store ({sqlite_store})"
    refusals = {
        "0123456789abcdef0123456789abcdef": missing,
        "abc'def": missing,
        trained: "a train_cnn run",
        running: "a preprocess run that is RUNNING (still running, or stopped before it finished)",
        not_kana: "not a kana run",
    }
    for run_id, what in refusals.items():
        for read in (load_dataset, register):
            message = f"dataset_run_id {run_id!r}: {what}; it must name a FINISHED preprocess run"
            with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
                read(run_id)
    assert client.search_runs([experiment], f"tags.`{ENTRY_POINT_TAG}` = 'register'") == []

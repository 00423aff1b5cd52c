"""End to end: `main` through MLflow Projects on a tiny configuration, then everything a user
touches afterwards: the logged runs, the registered champion, the pyfunc and `mlflow models serve`."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from conftest import (EXPERIMENT, MODEL_NAME, PROJECT_DIR, TINY, champion_version, finished_run,
                      free_port, left_in_temp_folder, server_process)
from kana.classes import class_set

FAMILIES = {"cnn": "train_cnn", "transfer": "train_transfer", "lstm": "train_lstm"}
FINAL_METRICS = [
    "val_accuracy", "val_balanced_accuracy", "test_accuracy", "test_balanced_accuracy",
    "test_weighted_precision", "test_weighted_recall", "test_weighted_f1", "test_macro_f1",
    "real_accuracy", "real_balanced_accuracy", "val_balanced_accuracy_without_count_prior",
    "test_balanced_accuracy_without_count_prior", "real_balanced_accuracy_without_count_prior",
]


def _artifacts(client, run_id, path=None):
    out = []
    for a in client.list_artifacts(run_id, path):
        out += _artifacts(client, run_id, a.path) if a.is_dir else [a.path]
    return out


def test_preprocess_logged_the_dataset_and_its_report(pipeline, tmp_path):
    client = MlflowClient(pipeline.tracking_uri)
    (run,) = pipeline.runs("preprocess")
    assert run.info.status == "FINISHED"
    m, p = run.data.metrics, run.data.params
    assert m["n_samples_kept"] == 46 * TINY["synthetic_per_class"] + 46 * 2
    assert m["dropped_refused_pickle"] == 1 and m["dropped_unreadable"] == 1
    assert m["n_files_not_read"] == 1  # mallory/u00001.npy, listed in files_not_read.txt
    assert m["n_train"] + m["n_val"] + m["n_test"] == m["n_samples_kept"]
    assert p["class_set"] == "basic46" and len(p["dataset_digest"]) == 16
    assert not pipeline.hostile_marker.exists()
    files = _artifacts(client, run.info.run_id)
    for name in ("dataset/arrays.npz", "dataset/manifest.csv", "dataset/dataset.json",
                 "class_balance.png", "samples_grid.png", "per_class_counts.csv",
                 "dropped_per_reason_and_class.csv", "files_not_read.txt"):
        assert name in files
    manifest = pd.read_csv(mlflow.artifacts.download_artifacts(
        run_id=run.info.run_id, artifact_path="dataset/manifest.csv", dst_path=tmp_path),
        keep_default_na=False)
    rejected = manifest[manifest.reason != ""].set_index("path").reason.to_dict()
    assert rejected == {"mallory/a00001.pickle": "refused_pickle", "mallory/i00001.pickle": "unreadable"}
    assert set(manifest[manifest.reason == ""].source) == {"alice", "synthetic-kanjivg"}
    assert [d.dataset.digest for d in run.inputs.dataset_inputs] == [p["dataset_digest"]]


def test_the_pipeline_leaves_nothing_in_the_temp_folder(pipeline):
    """Every trainer reads the processed dataset and `register` reads each run's probabilities:
    where the store is local they are read in place, and anything downloaded goes in a folder
    removed afterwards, so a run of `main` leaves no copies behind (a full dataset is 225 MB), and
    no folder either (MLflow Projects made an empty one per step)."""
    assert left_in_temp_folder(pipeline.scratch) == []


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_logged_comparable_metrics_history_and_artifacts(pipeline, family):
    client = MlflowClient(pipeline.tracking_uri)
    (run,) = pipeline.runs(FAMILIES[family])
    (prep,) = pipeline.runs("preprocess")
    m = run.data.metrics
    assert run.data.tags["model_family"] == family
    assert run.data.tags["kana.dataset_run_id"] == prep.info.run_id
    assert run.data.params["dataset_digest"] == prep.data.params["dataset_digest"]
    assert run.data.params["augment"] == "1"  # every family trains on distorted samples
    for name in FINAL_METRICS:
        assert 0.0 <= m[name] <= 1.0, name
    assert m["train_seconds"] > 0 and m["seconds_per_epoch"] > 0 and m["peak_rss_mb"] > 100
    assert m["real_n_samples"] == 48 and m["real_n_off_table"] == 2  # two of bob's: 4 and 6 strokes
    # the first goal, and each source on its own: alice's 46 drawings and bob's 2
    assert (m["real_n_basic46"], m["real_n_source_alice"], m["real_n_source_bob"]) == (48, 46, 2)
    for name in ("real_source_alice_accuracy", "real_source_bob_accuracy"):
        assert 0.0 <= m[name] <= 1.0, name
    assert m["real_basic46_accuracy"] == m["real_accuracy"] and m["test_basic46_accuracy"] == m["test_accuracy"]
    assert not any(k.startswith("test_source_") for k in m)  # alice's 2 a class all train: one source
    epochs = int(m["epochs_run"])
    assert 1 <= epochs <= TINY[f"{family}_epochs"]
    for name in ("loss", "accuracy", "val_loss"):
        assert len(client.get_metric_history(run.info.run_id, name)) == epochs, name
    # per-epoch val_accuracy, then the restored best model's score one step later
    val_hist = client.get_metric_history(run.info.run_id, "val_accuracy")
    assert [h.step for h in val_hist] == list(range(epochs)) + [epochs]
    files = _artifacts(client, run.info.run_id)
    for name in ("fit_history.png", "kana_config.json", "evaluation/test_confusion_matrix.png",
                 "evaluation/test_per_class_metrics.csv", "evaluation/test_misclassified.png",
                 "evaluation/real_per_class_metrics.csv", "evaluation/val_probabilities.npz",
                 "evaluation/test_probabilities.npz", "evaluation/real_probabilities.npz"):
        assert name in files, name
    model = mlflow.keras.load_model(run.data.tags["kana.model_uri"])
    assert model.output_shape[-1] == 46
    if family == "lstm":  # the default encoding: the notebook's per-stroke columns
        assert model.input_shape == (None, 120, 4 * 4) and run.data.params["encoding"] == "strokes"
    assert mlflow.models.get_model_info(run.data.tags["kana.model_uri"]).signature is not None


def test_transfer_base_was_trained_once_and_registered(pipeline):
    client = MlflowClient(pipeline.tracking_uri)
    versions = client.search_model_versions("name = 'kana-kanji-base'")
    assert len(versions) == 1
    assert versions[0].tags["kana.kanji_classes"] == str(TINY["kanji_classes"])
    (run,) = pipeline.runs("train_transfer")
    model = mlflow.keras.load_model(run.data.tags["kana.model_uri"])
    first_pool = next(i for i, layer in enumerate(model.layers) if "pooling" in layer.name)
    assert not any(layer.trainable for layer in model.layers[: first_pool + 1])  # block 1 frozen
    assert all(layer.trainable for layer in model.layers[first_pool + 1 :])


def test_a_kanji_base_is_reused_only_with_the_raster_code_it_was_trained_with(pipeline, use_tracking_store):
    """A synthesizer change makes other kanji rasters: the base trained on the old ones is not
    fine-tuned again, a new one is trained."""
    from kana.training import find_kanji_base, raster_code_digest

    client = MlflowClient(pipeline.tracking_uri)
    (version,) = client.search_model_versions("name = 'kana-kanji-base'")
    assert version.tags["kana.raster_code"] == raster_code_digest()
    settings = {"base_source": "kanjivg", "kanji_classes": TINY["kanji_classes"],
                "kanji_per_class": TINY["kanji_per_class"], "base_epochs": TINY["base_epochs"],
                "filters": 16, "seed": 127}  # train_transfer's defaults, as main ran it
    use_tracking_store(pipeline.tracking_uri)
    try:
        assert find_kanji_base(settings) == f"models:/kana-kanji-base/{version.version}"
        client.set_model_version_tag("kana-kanji-base", version.version, "kana.raster_code", "older")
        assert find_kanji_base(settings) == ""
    finally:
        client.set_model_version_tag("kana-kanji-base", version.version, "kana.raster_code",
                                     raster_code_digest())


def test_champion_is_the_best_validation_candidate_and_tagged(pipeline, tmp_path):
    client = MlflowClient(pipeline.tracking_uri)
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    runs = [pipeline.runs(ep)[0] for ep in FAMILIES.values()]
    best = max(runs, key=lambda r: r.data.metrics["val_balanced_accuracy"])
    (register,) = pipeline.runs("register")
    ensemble_score = register.data.metrics["ensemble_val_balanced_accuracy"]
    # the ensemble is scored from the probabilities the members logged
    assert 0 < ensemble_score <= 1 and register.data.metrics["ensemble_test_balanced_accuracy"] > 0
    assert register.data.metrics["ensemble_real_n_source_bob"] == 2  # the members' parts, combined
    assert register.data.metrics["ensemble_real_basic46_accuracy"] == pytest.approx(
        register.data.metrics["ensemble_real_accuracy"])  # the real drawings are all of the 46
    if ensemble_score >= best.data.metrics["val_balanced_accuracy"]:
        assert version.tags["model_family"] == "ensemble:" + "+".join(
            client.get_run(i).data.tags["model_family"] for i in version.tags["source_run_id"].split(","))
        assert set(version.tags["source_run_id"].split(",")) == {r.info.run_id for r in runs}
        assert version.tags["val_balanced_accuracy"] == f"{ensemble_score:.6f}"
    else:
        assert version.tags["source_run_id"] == best.info.run_id
        assert version.tags["model_family"] == best.data.tags["model_family"]
        assert version.tags["val_balanced_accuracy"] == f"{best.data.metrics['val_balanced_accuracy']:.6f}"
    assert register.data.metrics["val_balanced_accuracy"] == pytest.approx(float(version.tags["val_balanced_accuracy"]), abs=1e-6)
    assert version.tags["dataset_digest"] == client.get_run(
        version.tags["dataset_run_id"]).data.params["dataset_digest"]  # kept should that run be purged
    summary = client.download_artifacts(pipeline.main_run_id, "summary.txt", tmp_path)
    text = open(summary).read()
    assert "champion" in text and all(f in text for f in (*FAMILIES, "ensemble"))
    assert text.count("yes") == 1
    header, *lines = text.splitlines()
    table = {line.split()[0]: dict(zip(header.split(), line.split())) for line in lines}
    members = dict(zip(FAMILIES, runs)) | {"ensemble": register}
    for family, run in members.items():  # the goals' figures on real drawings, each run's own
        prefix = "ensemble_" if family == "ensemble" else ""
        for column, metric in (("real_acc", "real_accuracy"), ("real_b46_acc", "real_basic46_accuracy"),
                               ("real_bal_acc", "real_balanced_accuracy")):
            assert table[family][column] == f"{run.data.metrics[prefix + metric]:.4f}", (family, column)
    # the ensemble is of the three runs above, and the register run names them
    assert set(register.data.tags["ensemble_run_ids"].split(",")) == {r.info.run_id for r in runs}
    assert lines[-1].startswith("ensemble") and lines[-1].endswith("(geometric mean of the above)")


def _run_step_project(tmp_path, use_tracking_store, monkeypatch, parameters: dict, body: str):
    """Run, with MLflow Projects, a one-step project whose step is a kana run doing `body`; its
    parameters raw_dir, real_dir and epochs are logged as Projects logs them. Returns the run."""
    project = tmp_path / "project"
    project.mkdir()
    (project / "MLproject").write_text(
        "name: step-test\n"
        "entry_points:\n"
        "  step:\n"
        "    parameters:\n"
        "      raw_dir: string\n"
        "      real_dir: {type: string, default: \"\"}\n"
        "      epochs: {type: string, default: \"2\"}\n"
        "    command: python step.py\n", encoding="utf-8")
    # a step as kana's are: its run tagged with the kana code that ran it
    (project / "step.py").write_text("from kana.tracking import kana_run, log_params\n"
                                     f"with kana_run('step'):\n    {body}\n", encoding="utf-8")
    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    use_tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    experiment = MlflowClient().create_experiment("reuse", artifact_location=str(tmp_path / "artifacts"))
    submitted = mlflow.projects.run(str(project), "step", parameters=parameters, env_manager="local",
                                    experiment_id=experiment, storage_dir=str(tmp_path / "storage"))
    assert submitted.get_status() == "FINISHED"
    return submitted


def test_a_step_is_reused_though_mlflow_logged_its_parameters_shell_quoted(
        tmp_path, monkeypatch, use_tracking_store):
    """MLflow Projects logs each parameter as it puts it on the command line, shell-quoted: "" as
    '', a folder with a space in quotes. Compared as given, such a step run never matched, and a
    rerun of `main` (real_dir "" by default) trained every family again instead of reusing it."""
    from kana.pipeline import _already_ran

    monkeypatch.setenv("KANA_EXPERIMENT", "reuse")  # where _already_ran looks, with no active run
    parameters = {"raw_dir": str(tmp_path / "my raw"), "real_dir": "", "epochs": 2}
    submitted = _run_step_project(tmp_path, use_tracking_store, monkeypatch, parameters, "pass")
    found = _already_ran("step", parameters, commit=None)
    assert found is not None and found.info.run_id == submitted.run_id
    assert _already_ran("step", {**parameters, "epochs": 3}, commit=None) is None
    assert _already_ran("step", {**parameters, "real_dir": str(tmp_path)}, commit=None) is None


def test_a_step_logs_no_resolved_twin_of_a_value_mlflow_logged_shell_quoted(
        tmp_path, monkeypatch, use_tracking_store):
    """A step logs the values it used; where `mlflow run` logged the same value shell-quoted ('' for
    "", a folder with a space in quotes) that is no other value, and a `<key>_resolved` twin beside
    it (an empty real_dir_resolved on every trainer run) only made a reader ask what changed. A value
    the step did change still gets its twin."""
    raw_dir = str(tmp_path / "my raw")
    parameters = {"raw_dir": raw_dir, "real_dir": "", "epochs": 2}
    body = f"log_params({{'raw_dir': {raw_dir!r}, 'real_dir': '', 'epochs': 5, 'seed': 1}})"
    submitted = _run_step_project(tmp_path, use_tracking_store, monkeypatch, parameters, body)
    params = MlflowClient().get_run(submitted.run_id).data.params
    assert params["real_dir"] == "''" and params["raw_dir"] == f"'{raw_dir}'"  # as Projects logs them
    assert "real_dir_resolved" not in params and "raw_dir_resolved" not in params
    assert params["epochs_resolved"] == "5" and params["seed"] == "1"


def test_the_summary_names_the_runs_of_an_ensemble_and_a_champion_that_are_not_in_it(
        tmp_path, monkeypatch, use_tracking_store):
    """A rerun of `main` with fewer epochs on the same data: `register` weighs every run on that
    data, so its ensemble and the champion can be runs of the earlier `main`. The table then names
    those runs instead of calling the ensemble "the above", and the champion gets a row of its own
    (its run's metrics, or the score on its version where that run is gone), marked as the one."""
    from kana.pipeline import format_table, summary_rows
    from kana.registry import CHAMPION, ENSEMBLE_RUNS_TAG

    monkeypatch.delenv("MLFLOW_REGISTRY_URI", raising=False)
    use_tracking_store(f"sqlite:///{tmp_path / 'mlflow.db'}")
    client = MlflowClient()
    experiment = client.create_experiment("summary", artifact_location=str(tmp_path / "artifacts"))

    def run(tags: dict, **metrics):
        return client.get_run(finished_run(experiment, tags, **metrics))

    earlier_cnn = run({"model_family": "cnn"}, val_balanced_accuracy=0.99, real_accuracy=0.98)
    runs = {family: run({"model_family": family}, val_balanced_accuracy=0.5) for family in FAMILIES}
    members = ",".join([earlier_cnn.info.run_id, runs["transfer"].info.run_id, runs["lstm"].info.run_id])
    registered = run({ENSEMBLE_RUNS_TAG: members}, ensemble_val_balanced_accuracy=0.95)

    def champion(source_run_id: str, family: str, score: str):
        champion_version("kana-summary-test", {"source_run_id": source_run_id, "model_family": family,
                                               "val_balanced_accuracy": score})
        return client.get_model_version_by_alias("kana-summary-test", CHAMPION)

    def table(champion_version) -> dict:
        rows = summary_rows(runs, registered, champion_version)
        text = format_table(rows)
        assert text.count("yes") == 1 and all(line == line.rstrip() for line in text.splitlines())
        return {(r["family"], r["run_id"]): r for r in rows}

    # the champion is the earlier cnn run alone: a row of its own, with that run's metrics
    rows = table(champion(earlier_cnn.info.run_id, "cnn", "0.990000"))
    assert rows["ensemble", members]["val_bal_acc"] == 0.95 and not rows["ensemble", members]["champion"]
    assert rows["cnn", earlier_cnn.info.run_id]["champion"] == "yes"
    assert rows["cnn", earlier_cnn.info.run_id]["real_acc"] == 0.98
    assert len(rows) == 5
    # the champion is that ensemble (its runs in another order): its row says so, no other is added
    reordered = ",".join(reversed(members.split(",")))
    rows = table(champion(reordered, "ensemble:lstm+transfer+cnn", "0.950000"))
    assert rows["ensemble", members]["champion"] == "yes" and len(rows) == 4
    # the champion's run no longer exists (purged): the score its version was registered with
    gone = "0" * 32
    rows = table(champion(gone, "lstm", "0.970000"))
    assert rows["lstm", gone]["champion"] == "yes"
    assert rows["lstm", gone]["val_bal_acc"] == 0.97 and rows["lstm", gone]["real_acc"] is None
    # this main's own runs: the ensemble is "the above", and the champion one of its rows
    registered = run({ENSEMBLE_RUNS_TAG: ",".join(r.info.run_id for r in runs.values())},
                     ensemble_val_balanced_accuracy=0.6)
    rows = table(champion(runs["lstm"].info.run_id, "lstm", "0.500000"))
    assert rows["ensemble", "(geometric mean of the above)"]["champion"] == ""
    assert rows["lstm", runs["lstm"].info.run_id]["champion"] == "yes" and len(rows) == 4


def _real_samples(pipeline, n=6):
    from kana.strokes import load_raw_dir

    report = load_raw_dir(pipeline.real_dir)
    return report.samples[:n]


def test_champion_pyfunc_reads_raw_samples_in_every_shape(pipeline):
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    samples = _real_samples(pipeline)
    app_dicts = [{i + 1: s for i, s in enumerate(x.strokes)} for x in samples]
    json_dicts = [{str(i + 1): s.tolist() for i, s in enumerate(x.strokes)} for x in samples]
    stroke_lists = [[s.tolist() for s in x.strokes] for x in samples]
    out = model.predict(app_dicts)
    assert len(out) == len(samples)
    for row in out:
        assert list(row) == ["char_id", "character", "probability", "top5_char_ids", "top5_characters",
                             "top5_probabilities"]
        p = row["top5_probabilities"]
        assert row["char_id"] == row["top5_char_ids"][0] and p == sorted(p, reverse=True)
        assert row["character"] == row["top5_characters"][0] and row["probability"] == p[0]
        assert 0 < row["probability"] <= 1 and len(p) == 5
    for other in (json_dicts, stroke_lists):
        assert model.predict(other) == out
    assert model.predict(app_dicts[::-1])[::-1] == out  # one record per sample, in order
    assert pd.DataFrame(out).shape == (len(samples), 6)  # and a table for whoever wants one


def test_champion_loads_where_pickled_models_are_refused(pipeline, monkeypatch, tmp_path):
    """The pyfunc is logged as code, so a site that refuses pickles still serves it."""
    monkeypatch.setenv("MLFLOW_ALLOW_PICKLE_DESERIALIZATION", "false")
    uri = f"models:/{MODEL_NAME}@champion"
    files = set(os.listdir(mlflow.artifacts.download_artifacts(uri, dst_path=tmp_path)))
    assert "pyfunc_from_code.py" in files and not any(f.endswith((".pkl", ".pickle")) for f in files)
    samples = _real_samples(pipeline, 3)
    out = mlflow.pyfunc.load_model(uri).predict([[s.tolist() for s in x.strokes] for x in samples])
    assert len(out) == 3 and all(r["char_id"] for r in out)


def _distributions_installed_by(requirements: list[str]) -> set[str]:
    """The distributions pip installs for these requirement lines: them and what they require,
    as this environment's package metadata says (extras followed, markers evaluated here)."""
    from importlib.metadata import PackageNotFoundError, requires
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    todo = [(Requirement(line), ("",)) for line in requirements if line.strip() and not line.startswith("#")]
    seen = set()
    while todo:
        req, extras = todo.pop()
        if req.marker is not None and not any(req.marker.evaluate({"extra": e}) for e in extras):
            continue
        key = (canonicalize_name(req.name), frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        try:
            todo += [(Requirement(r), ("", *req.extras)) for r in requires(req.name) or []]
        except PackageNotFoundError:
            pass
    return {name for name, _ in seen}


IMPORTED_BY_PREDICT = r"""
import json, sys
from importlib.metadata import packages_distributions
at_start = set(sys.modules)  # what the interpreter itself loaded (a .pth file's imports too)
import mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])
model.predict([{"1": [[-0.6, 0.6], [0.0, 0.62], [0.6, 0.58]], "2": [[0.0, 0.9], [0.1, -0.8]]}])
owners = packages_distributions()
tops = {name.partition(".")[0] for name in set(sys.modules) - at_start} - {"kana"}
print(json.dumps(sorted({dist for top in tops for dist in owners.get(top, [])})))
"""


def test_the_champion_imports_nothing_its_requirements_leave_out(pipeline, tmp_path):
    """`mlflow models serve` without `--env-manager local`, and `mlflow models build-docker`,
    install the champion's requirements.txt alone (MLflow, ONNX Runtime, numpy, pandas, Pillow,
    httptools, uvloop): not TensorFlow, Keras, tf2onnx or geomdl. This suite runs where all of
    kana is installed, so an import of one of those on the serving path would pass every other
    test here and fail there: loading and predicting, in a process of its own, may import none
    of them."""
    from packaging.utils import canonicalize_name

    folder = mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@champion", dst_path=tmp_path)
    served_env = _distributions_installed_by(
        (Path(folder) / "requirements.txt").read_text(encoding="utf-8").splitlines())
    only_with_kana = _distributions_installed_by(["kana"]) - served_env
    assert {"keras", "tf2onnx", "geomdl"} <= only_with_kana
    out = subprocess.run([sys.executable, "-c", IMPORTED_BY_PREDICT, folder], capture_output=True,
                         text=True, env={**os.environ, "KANA_CHILD_PROCESS": "0"})
    assert out.returncode == 0, out.stderr[-2000:]
    imported = {canonicalize_name(d) for d in json.loads(out.stdout.splitlines()[-1])}
    assert {"mlflow", "onnxruntime", "numpy"} <= imported  # the model was loaded and run
    assert imported & only_with_kana == set()


def test_pyfunc_gives_the_trained_models_predictions(pipeline):
    """Serving runs the same preprocessing as training and the same networks (ONNX exports of the
    Keras models): the same probabilities as the Keras models, combined the same way."""
    from kana.serving import Recognizer
    from kana.training import ModelConfig

    client = MlflowClient(pipeline.tracking_uri)
    version = client.get_model_version_by_alias(MODEL_NAME, "champion")
    members = []
    for run_id in version.tags["source_run_id"].split(","):
        run = client.get_run(run_id)
        members.append((mlflow.keras.load_model(run.data.tags["kana.model_uri"]),
                        ModelConfig.from_json(mlflow.artifacts.load_text(f"runs:/{run_id}/kana_config.json"))))
    samples = [s.strokes for s in _real_samples(pipeline, 10)]
    expected = Recognizer.from_keras(members).probabilities(samples)
    out = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion").predict(
        [{i + 1: s for i, s in enumerate(x)} for x in samples])
    top = np.array(members[0][1].class_ids)[expected.argmax(axis=1)]
    assert [r["char_id"] for r in out] == top.tolist()
    np.testing.assert_allclose([r["probability"] for r in out], expected.max(axis=1), rtol=1e-5)


@pytest.mark.parametrize("family", FAMILIES)
def test_training_scored_real_samples_as_serving_reads_them(pipeline, family):
    """What a run logged for the real samples (its metrics, what the ensemble is scored from) is
    what serving computes from the raw files: the same features, network and stroke-count prior."""
    from kana.classes import WRONG_COUNT_WEIGHT
    from kana.evaluation import load_probabilities
    from kana.serving import Recognizer
    from kana.strokes import load_raw_dir
    from kana.training import ModelConfig

    (run,) = pipeline.runs(FAMILIES[family])
    config = ModelConfig.from_json(mlflow.artifacts.load_text(f"runs:/{run.info.run_id}/kana_config.json"))
    assert config.wrong_count_weight == WRONG_COUNT_WEIGHT
    model = mlflow.keras.load_model(run.data.tags["kana.model_uri"])
    samples = load_raw_dir(pipeline.real_dir, any_stroke_count=True).samples  # 6 strokes too: joined
    served = Recognizer.from_keras([(model, config)]).probabilities([s.strokes for s in samples])
    logged = load_probabilities(run.info.run_id, "real").probs
    assert len(logged) == len(samples) == 48
    np.testing.assert_allclose(logged, served, atol=1e-5)


def test_models_in_a_child_process_answer_the_same_and_outlive_its_death(pipeline, tmp_path):
    """What `mlflow models serve` runs: the members in a child process. The same predictions as in
    process, from many threads at once (the child batches whatever is queued), a bad sample failing
    only its own request; if the child dies, the request in flight fails saying so and the next
    one starts a new child; closing our end lets the child exit by itself."""
    import threading

    from kana.serving import ChildProcessRecognizer, Recognizer

    folder = os.path.join(mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}@champion",
                                                              dst_path=tmp_path),
                          "artifacts", "members")
    raw = [{str(i + 1): s.tolist() for i, s in enumerate(x.strokes)} for x in _real_samples(pipeline, 10)]
    in_process = Recognizer.from_members_dir(folder)
    child = ChildProcessRecognizer(folder)
    try:
        def same(got, want):
            assert [r["char_id"] for r in got] == [r["char_id"] for r in want]
            np.testing.assert_allclose([r["top5_probabilities"] for r in got],
                                       [r["top5_probabilities"] for r in want], rtol=1e-5, atol=1e-7)

        same(child.predict(raw), in_process.predict(raw))
        got = {}

        def request(k):
            try:
                got[k] = child.predict([raw[k % len(raw)]] if k % 5 else [raw[0], {"1": []}])
            except MlflowException as exc:
                got[k] = exc
        threads = [threading.Thread(target=request, args=(k,)) for k in range(40)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for k in range(40):
            if k % 5:
                same(got[k], in_process.predict([raw[k % len(raw)]]))
            else:
                assert "sample 1: stroke 1: has no points" in str(got[k])

        with pytest.raises(MlflowException, match="cannot be sent to the models' child process"):
            child.predict([lambda: "not a sample"])  # in a user's process with KANA_CHILD_PROCESS=1

        # the child dies with a request in flight (a big one: it cannot be answered already)
        first = child.child.proc
        outcome = []
        in_flight = threading.Thread(target=lambda: outcome.append(_error_of(child.predict, raw * 300)))
        in_flight.start()
        while not child.child.pending:
            time.sleep(0.001)
        first.kill()
        in_flight.join(120)
        assert not in_flight.is_alive(), "the request in flight was never failed"
        assert isinstance(outcome[0], RuntimeError)
        assert re.search(r"child process exited \(code -9\); the next request", str(outcome[0]))
        same(child.predict(raw), in_process.predict(raw))
        assert child.child.proc.pid != first.pid

        # one that takes too long is killed the same way
        child.ANSWER_TIMEOUT_S = 0.05
        with pytest.raises(RuntimeError, match=r"did not answer within 0.05 s; the next request"):
            child.predict(raw * 300)
        child.ANSWER_TIMEOUT_S = ChildProcessRecognizer.ANSWER_TIMEOUT_S
        same(child.predict(raw), in_process.predict(raw))
        second = child.child.proc
    finally:
        child.close()
    assert second.returncode == 0  # it saw its socket close and returned; nothing killed it


def _error_of(fn, *args):
    try:
        fn(*args)
    except Exception as exc:  # noqa: BLE001 - the test looks at it
        return exc
    return None


@pytest.mark.parametrize(
    "bad, fragment",
    [
        ([{}], "sample 0: has no strokes"),
        ([{"1": []}], "sample 0: stroke 1: has no points"),
        ([{"1": [[0.1, float("nan")]]}], "NaN"),
        ([{"1": [["a", "b"]]}], "pairs of numbers"),
        ([{"1": [[0.1, 0.2, 0.3]]}], "expected (N, 2)"),
        ([[[[0.0, 0.0]]] * 10_000], "10000 strokes"),
        ([{"1": [[0, 0]]}, "oops"], "sample 1"),
        ([{float("inf"): [[0.0, 0.0]]}], "stroke key inf is not a stroke number"),
        ([], "no samples"),
    ],
)
def test_pyfunc_names_what_is_wrong_with_bad_input(pipeline, bad, fragment):
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    with pytest.raises(MlflowException, match="") as exc:
        model.predict(bad)
    assert fragment in str(exc.value)


def test_pyfunc_reads_a_sample_with_more_strokes_than_any_class(pipeline):
    """basic46's classes have at most 4 strokes; a drawing with more is read, not refused."""
    model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion")
    bars = [[[-0.8 + 0.3 * k, 0.5], [-0.7 + 0.3 * k, -0.5]] for k in range(6)]
    (record,) = model.predict([bars])
    assert record["char_id"] in {c.char_id for c in class_set("basic46")}
    assert record["probability"] == pytest.approx(record["top5_probabilities"][0])


def test_rerunning_main_reuses_finished_steps_and_keeps_the_champion(pipeline):
    client = MlflowClient(pipeline.tracking_uri)
    before = {ep: len(pipeline.runs(ep)) for ep in ("preprocess", *FAMILIES.values())}
    champion = client.get_model_version_by_alias(MODEL_NAME, "champion").version
    submitted = mlflow.projects.run(
        str(PROJECT_DIR), "main", experiment_id=pipeline.experiment_id, env_manager="local",
        parameters={**TINY, "raw_dir": str(pipeline.raw_dir), "real_dir": str(pipeline.real_dir)},
        storage_dir=str(pipeline.projects_dir),
    )
    assert submitted.get_status() == "FINISHED"
    after = {ep: len(pipeline.runs(ep)) for ep in before}
    assert after == before
    from kana.tracking import CODE_DIGEST_TAG, code_digest

    # every step names the kana code that ran it: an edit, committed or not, is not reused
    digests = {r.data.tags[CODE_DIGEST_TAG] for ep in before for r in pipeline.runs(ep)}
    assert digests == {code_digest()}
    assert client.get_model_version_by_alias(MODEL_NAME, "champion").version == champion
    assert len(pipeline.runs("register")) == 2
    assert pipeline.runs("register")[0].data.tags["champion_changed"] == "false"


def test_kana_main_started_in_another_git_checkout_hands_the_steps_its_folders(pipeline, tmp_path):
    """`kana main` from a user's own folder, a git checkout of something else, naming the raw and
    real folders relative to it: the steps, which MLflow Projects runs in the project folder, get
    the same folders (they read the project's folder, or none, before), and kana's own commit
    (they got the user's, so nothing was reused), so every step is reused."""
    elsewhere = pipeline.tmp / "users-own-checkout"
    elsewhere.mkdir()
    git = ["git", "-c", "user.name=u", "-c", "user.email=u@example.org"]
    for args in (["init", "-q"], ["commit", "-q", "--allow-empty", "-m", "theirs"]):
        subprocess.run([*git, *args], cwd=elsewhere, check=True)
    before = {ep: len(pipeline.runs(ep)) for ep in ("preprocess", *FAMILIES.values())}
    champion = MlflowClient(pipeline.tracking_uri).get_model_version_by_alias(MODEL_NAME, "champion")
    options = [f"--{k.replace('_', '-')}={v}" for k, v in TINY.items()]
    done = subprocess.run(
        [sys.executable, "-m", "kana.cli", "main", *options, "--raw-dir", "../raw", "--real-dir", "../real"],
        cwd=elsewhere, capture_output=True, text=True, timeout=900,
        env={**os.environ, "KANA_EXPERIMENT": EXPERIMENT, "TMPDIR": str(tmp_path)},
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert {ep: len(pipeline.runs(ep)) for ep in before} == before, done.stdout[-3000:]
    main_run = pipeline.runs("main")[0]
    assert main_run.data.params["raw_dir"] == str(pipeline.raw_dir)
    assert main_run.data.params["real_dir"] == str(pipeline.real_dir)
    latest = MlflowClient(pipeline.tracking_uri).get_model_version_by_alias(MODEL_NAME, "champion")
    assert latest.version == champion.version


def test_folders_named_from_another_folder_reach_the_steps_as_that_folder_sees_them(tmp_path, monkeypatch):
    """The default raw_dir, absent where `kana main` started, reaches the steps as '' (synthetic
    samples alone), not as the project's own data/raw; from the project folder nothing changes."""
    from kana.pipeline import folder_for_steps

    (tmp_path / "mine").mkdir()
    monkeypatch.chdir(tmp_path / "mine")
    assert folder_for_steps("data/raw") == ""
    assert folder_for_steps("../mine/./") == str(tmp_path / "mine")
    assert folder_for_steps("") == ""
    monkeypatch.chdir(PROJECT_DIR)
    assert folder_for_steps("data/raw") == "data/raw"
    assert folder_for_steps("../elsewhere") == "../elsewhere"


# --------------------------------------------------------------------------- serving over HTTP


def _post(port: int, payload, raw: bytes | None = None):
    data = raw if raw is not None else json.dumps(payload).encode()
    req = urllib.request.Request(
        f"http://127.0.0.1:{port}/invocations", data=data,
        headers={"Content-Type": "application/json"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


@pytest.fixture(scope="module")
def server(pipeline):
    """`mlflow models serve` of the champion: its port and process."""
    port = free_port()
    with server_process(
        ["mlflow", "models", "serve", "-m", f"models:/{MODEL_NAME}@champion", "--env-manager",
         "local", "--host", "127.0.0.1", "--port", str(port)],
        f"http://127.0.0.1:{port}/ping", pipeline.tmp / "models-serve.log",
        env={**os.environ, "MLFLOW_TRACKING_URI": pipeline.tracking_uri},
    ) as proc:
        yield port, proc


@pytest.fixture(scope="module")
def served(server):
    return server[0]


def _process_tree_cmdlines(pid: int) -> list[bytes]:
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        with open(f"/proc/{p}/task/{p}/children") as fh:
            todo += [int(c) for c in fh.read().split()]
        with open(f"/proc/{p}/cmdline", "rb") as fh:
            out.append(fh.read().replace(b"\0", b" "))
    return out


def test_served_champion_runs_its_models_in_a_child_process(server):
    port, proc = server
    assert _post(port, {"inputs": [[[[0.0, 0.5], [0.0, -0.5]]]]})[0] == 200
    assert sum(b"-m kana.serving" in c for c in _process_tree_cmdlines(proc.pid)) == 1


def test_served_champion_answers_raw_dicts_and_stroke_lists(pipeline, served):
    samples = _real_samples(pipeline)
    local = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@champion").predict(
        [[s.tolist() for s in x.strokes] for x in samples])
    as_dicts = [{str(i + 1): s.tolist() for i, s in enumerate(x.strokes)} for x in samples]
    status, body = _post(served, {"inputs": as_dicts})
    assert status == 200
    def labels(records):
        return [{k: v for k, v in r.items() if "probabilit" not in k} for r in records]

    assert labels(body["predictions"]) == labels(local)  # the same records, as JSON
    status, body = _post(served, {"inputs": [[s.tolist() for s in x.strokes] for x in samples]})
    assert status == 200 and len(body["predictions"]) == len(samples)
    np.testing.assert_allclose([p["probability"] for p in body["predictions"]],
                               [r["probability"] for r in local], rtol=1e-5)


@pytest.mark.parametrize(
    "payload, raw, fragment",
    [
        ({"inputs": [{"1": []}]}, None, "has no points"),
        ({"inputs": [{"1": [["x", 1]]}]}, None, "pairs of numbers"),
        ({"inputs": [{"1": [["0.5", "0.5"]]}]}, None, "pairs of numbers, got text"),
        ({"inputs": [{"1": [[0.5, 0.5], [True, 0.5]]}]}, None, "pairs of numbers, got true/false"),
        ({"inputs": [{"1": [[0, 0]]}, {}]}, None, "sample 1: has no strokes"),
        ({"inputs": [[[[0.0, 0.0]]] * 10_000]}, None, "10000 strokes"),
        ({"inputs": [{"1": [[1e12, 0]]}]}, None, "outside"),
        (None, b'{"inputs": [{"1": [[1' + b"0" * 400 + b', 0]]}]}', "too large for a float"),
        ({"inputs": {"1": [[0, 0]]}}, None, ""),
        ({"instances": [1]}, None, ""),
        (None, b"{not json", ""),
        (None, b'{"inputs": [{"1": [[NaN, 0]]}]}', "NaN"),
    ],
)
def test_served_champion_rejects_bad_input_with_4xx_and_keeps_answering(served, payload, raw, fragment):
    status, body = _post(served, payload, raw)
    assert 400 <= status < 500, body
    assert fragment in body.get("message", "")
    status, _ = _post(served, {"inputs": [[[[0.0, 0.5], [0.0, -0.5]]]]})
    assert status == 200


def test_drawing_page_can_guess_through_a_served_model(pipeline, served):
    """`kana serve-page --server-url ...`: the page's guesses from `mlflow models serve` are the
    in-process champion's."""
    from kana.drawing import BadRequest, InProcessGuesser, RemoteGuesser

    remote = RemoteGuesser(f"http://127.0.0.1:{served}")
    local = InProcessGuesser(f"models:/{MODEL_NAME}@champion")
    for sample in _real_samples(pipeline, 3):
        drawing = {str(i + 1): s.tolist() for i, s in enumerate(sample.strokes)}
        got, want = remote.guesses(drawing), local.guesses(drawing)
        assert [g["char_id"] for g in got] == [g["char_id"] for g in want]
        np.testing.assert_allclose([g["probability"] for g in got], [g["probability"] for g in want], rtol=1e-5)
    for guesser in (remote, local):
        with pytest.raises(BadRequest, match="has no points"):
            guesser.guesses({"1": []})


def test_a_champion_packaged_with_other_kana_code_is_packaged_again(pipeline):
    """The pyfunc carries the kana code it was logged with: when that is not the code at hand,
    `register` logs the same models again with it, so serving fixes reach the champion."""
    client = MlflowClient(pipeline.tracking_uri)
    old = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert old.tags["kana_code_digest"]  # as `register` tagged it
    client.set_model_version_tag(MODEL_NAME, old.version, "kana_code_digest", "an-older-kana")
    submitted = mlflow.projects.run(str(PROJECT_DIR), "register", env_manager="local",
                                    experiment_id=pipeline.experiment_id,
                                    parameters={"dataset_run_id": old.tags["dataset_run_id"],
                                                "model_name": MODEL_NAME},
                                    storage_dir=str(pipeline.projects_dir))
    assert submitted.get_status() == "FINISHED"
    new = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert new.version != old.version
    for tag in ("source_run_id", "model_family", "val_balanced_accuracy", "dataset_run_id",
                "dataset_digest"):
        assert new.tags[tag] == old.tags[tag]  # the same models
    assert new.tags["kana_code_digest"] == old.tags["kana_code_digest"] != "an-older-kana"
    assert pipeline.runs("register")[0].data.tags["champion_repackaged"] == "true"
    sample = {"1": [[-0.5, 0.5], [0.0, 0.52], [0.5, 0.5]]}
    old_model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{old.version}")
    new_model = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}/{new.version}")
    (got,), (want,) = new_model.predict([sample]), old_model.predict([sample])
    assert got["top5_char_ids"] == want["top5_char_ids"]
    np.testing.assert_allclose(got["top5_probabilities"], want["top5_probabilities"], rtol=1e-6)


def test_a_champion_scored_on_other_data_is_replaced(pipeline):
    """Validation scores on different data don't compare: after the synthesizer or the raw data
    change, the best model of the new data takes over. (Last in this module: it moves the alias.)"""
    client = MlflowClient(pipeline.tracking_uri)
    old = client.get_model_version_by_alias(MODEL_NAME, "champion")

    def run(entry_point: str, **parameters) -> str:
        submitted = mlflow.projects.run(str(PROJECT_DIR), entry_point, env_manager="local",
                                        experiment_id=pipeline.experiment_id, parameters=parameters,
                                        storage_dir=str(pipeline.projects_dir))
        assert submitted.get_status() == "FINISHED"
        return submitted.run_id

    data = run("preprocess", raw_dir=str(pipeline.raw_dir), class_set=TINY["class_set"],
               synthetic_per_class=TINY["synthetic_per_class"], seed=128)
    assert client.get_run(data).data.params["dataset_digest"] != client.get_run(
        old.tags["dataset_run_id"]).data.params["dataset_digest"]
    run("train_lstm", dataset_run_id=data, epochs=1)
    run("register", dataset_run_id=data, model_name=MODEL_NAME)
    new = client.get_model_version_by_alias(MODEL_NAME, "champion")
    assert new.version != old.version and new.tags["dataset_run_id"] == data
    assert new.tags["model_family"] == "lstm"  # the only family trained on the new data
    assert pipeline.runs("register")[0].data.tags["champion_changed"] == "true"

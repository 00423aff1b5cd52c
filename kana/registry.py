"""The champion: pick the best training run, wrap it as a pyfunc, register it, move the alias.

Choosing uses `val_balanced_accuracy` only (test metrics are for reporting). The winner is logged
as a `KanaClassifier` pyfunc and registered (default name `kana-classifier`) with version tags
`source_run_id`, `model_family` and `val_balanced_accuracy`, and alias `champion` points at it.
A rerun that finds nothing better than the current champion leaves the alias where it is.
"""

from __future__ import annotations

import tempfile
from contextlib import contextmanager
from pathlib import Path

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kana.tracking import ENTRY_POINT_TAG, experiment_ids, kana_run, latest_finished_run, log_params

MODEL_NAME = "kana-classifier"
CHAMPION = "champion"
TRAIN_ENTRY_POINTS = ("train_cnn", "train_transfer", "train_lstm")
SELECTION_METRIC = "val_balanced_accuracy"


def training_runs(dataset_run_id: str):
    """FINISHED training runs of every family on one processed dataset, best first."""
    runs = MlflowClient().search_runs(
        experiment_ids(),
        filter_string=(
            f"attributes.status = 'FINISHED' and tags.`kana.dataset_run_id` = '{dataset_run_id}'"
        ),
        order_by=[f"metrics.{SELECTION_METRIC} DESC", "attributes.start_time DESC"],
    )
    return [r for r in runs if r.data.tags.get(ENTRY_POINT_TAG) in TRAIN_ENTRY_POINTS]


def current_champion(model_name: str):
    """The version the champion alias points at, or None."""
    try:
        return MlflowClient().get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException:
        return None


def register(dataset_run_id: str = "", model_name: str = MODEL_NAME) -> str:
    """MLflow entry point `register`. Returns the champion's version (new or kept)."""
    client = MlflowClient()
    with kana_run("register", run_name=f"register-{model_name}") as run:
        if not dataset_run_id:
            latest = latest_finished_run("preprocess")
            if latest is None:
                raise RuntimeError("no FINISHED preprocess run: nothing to choose a champion for")
            dataset_run_id = latest.info.run_id
        log_params({"model_name": model_name, "dataset_run_id": dataset_run_id,
                           "selection_metric": SELECTION_METRIC})
        candidates = [r for r in training_runs(dataset_run_id) if SELECTION_METRIC in r.data.metrics]
        if not candidates:
            raise RuntimeError(
                f"no FINISHED training run on dataset {dataset_run_id} has {SELECTION_METRIC}"
            )
        for r in candidates:
            print(f"candidate {r.data.tags.get('model_family')} {r.info.run_id}: "
                  f"{SELECTION_METRIC}={r.data.metrics[SELECTION_METRIC]:.4f}")
        best = candidates[0]
        best_score = best.data.metrics[SELECTION_METRIC]
        champion = current_champion(model_name)
        if champion is not None:
            score = float(champion.tags.get(SELECTION_METRIC, "-inf"))
            if champion.tags.get("source_run_id") == best.info.run_id or score >= best_score:
                print(f"champion stays at version {champion.version} ({SELECTION_METRIC}={score:.4f})")
                mlflow.set_tags({"champion_changed": "false", "champion_version": champion.version})
                return champion.version

        with _winner_files(best) as (keras_path, config_path):
            from kana.serving import log_pyfunc

            info = log_pyfunc(keras_path, config_path, registered_model_name=model_name)
        version = str(info.registered_model_version)
        family = best.data.tags.get("model_family", "")
        for key, value in {
            "source_run_id": best.info.run_id,
            "model_family": family,
            SELECTION_METRIC: f"{best_score:.6f}",
            "dataset_run_id": dataset_run_id,
        }.items():
            client.set_model_version_tag(model_name, version, key, value)
        client.set_registered_model_alias(model_name, CHAMPION, version)
        mlflow.set_tags({"champion_changed": "true", "champion_version": version,
                         "model_family": family, "source_run_id": best.info.run_id})
        mlflow.log_metric(SELECTION_METRIC, best_score)
        print(f"registered {model_name} version {version} ({family}, {SELECTION_METRIC}="
              f"{best_score:.4f}) as @{CHAMPION}; run {run.info.run_id}")
        return version


@contextmanager
def _winner_files(run):
    """Download the winning run's Keras model file and kana_config.json to a temp folder."""
    with tempfile.TemporaryDirectory(prefix="kana-winner-") as tmp:
        model_dir = Path(
            mlflow.artifacts.download_artifacts(run.data.tags["kana.model_uri"], dst_path=f"{tmp}/keras")
        )
        config = mlflow.artifacts.download_artifacts(
            run_id=run.info.run_id, artifact_path="kana_config.json", dst_path=tmp
        )
        yield str(model_dir / "data" / "model.keras"), config

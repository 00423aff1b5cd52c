"""The champion: pick the best model, wrap it as a pyfunc, register it, move the alias.

Candidates on one processed dataset: every FINISHED training run, and the ensemble of the best run
of each family (geometric mean of their probabilities, scored from the probabilities each run
logged, so no network runs here). Choosing uses `val_balanced_accuracy` only (test and real
metrics are for reporting); a tie goes to the ensemble, whose members read a sample in different
ways (rasters and pen paths) and so disagree less on writing unlike the synthetic data. The winner
is logged as a `KanaClassifier` pyfunc and registered (default name `kana-classifier`) with version
tags `source_run_id` (comma-separated for an ensemble), `model_family`, `val_balanced_accuracy`,
`dataset_run_id` and `dataset_digest` (the data it was scored on, kept on the version so that
the comparison survives the preprocess run's purge), and alias `champion` points at it. A rerun
that finds nothing better than the current champion on the same data leaves the alias where it
is, unless the champion's pyfunc carries other kana code (version tag `kana_code_digest`): then
the same models are packaged again with this code as a new version, so serving fixes reach the
served model without a retrain; where its source runs were purged (`mlflow gc`), it stays as it
is, and `register` says so. The register run logs the ensemble's scores as `ensemble_*` metrics
and the runs it is of as tag `ensemble_run_ids` (runs of an earlier `main` among them, where
they scored better on this data).
"""

from __future__ import annotations

import tempfile
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import mlflow
import numpy as np
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient

from kana.tracking import (ENTRY_POINT_TAG, code_digest, experiment_ids, finished_preprocess_run,
                           kana_run, latest_finished_run, log_params)

MODEL_NAME = "kana-classifier"
CHAMPION = "champion"
TRAIN_ENTRY_POINTS = ("train_cnn", "train_transfer", "train_lstm")
SELECTION_METRIC = "val_balanced_accuracy"
ENSEMBLE = "ensemble"
ENSEMBLE_RUNS_TAG = "ensemble_run_ids"  # on a register run: the runs its ensemble_* metrics are of
CODE_TAG = "kana_code_digest"  # which kana code the registered pyfunc carries
DIGEST_TAG = "dataset_digest"  # the content digest of the data the version was scored on


def _champion_candidate(champion, candidates: list) -> "Candidate | None":
    """The current champion as a candidate: the one considered now, or rebuilt from its tags;
    None, naming the runs, when some of its source runs no longer exist (purged by `mlflow gc`)."""
    for c in candidates:
        if c.source_run_id == champion.tags.get("source_run_id"):
            return c
    client = MlflowClient()
    runs, missing = [], []
    for run_id in champion.tags["source_run_id"].split(","):
        try:
            runs.append(client.get_run(run_id))
        except MlflowException as exc:
            if not is_not_found(exc):
                raise
            missing.append(run_id)
    if missing:
        print(f"source run(s) {', '.join(missing)} of champion version {champion.version} no longer "
              "exist in the tracking store: its models cannot be packaged again")
        return None
    family = ENSEMBLE if len(runs) > 1 else runs[0].data.tags.get("model_family", "")
    return Candidate(family, runs, float(champion.tags.get(SELECTION_METRIC, "nan")))


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


def is_not_found(exc: MlflowException) -> bool:
    """MLflow's answer for a registered model, alias or run that does not exist. A missing alias
    comes as INVALID_PARAMETER_VALUE ("... alias champion not found."), from SQLite and REST."""
    return exc.error_code == "RESOURCE_DOES_NOT_EXIST" or (
        exc.error_code == "INVALID_PARAMETER_VALUE" and "not found" in exc.message)


def current_champion(model_name: str):
    """The version the champion alias points at, or None when the model or the alias does not
    exist. Any other failure (a registry that is down, a locked SQLite file) is raised: read as
    "no champion", it would let a rerun register a worse model over the champion."""
    try:
        return MlflowClient().get_model_version_by_alias(model_name, CHAMPION)
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise MlflowException(f"cannot read the {CHAMPION!r} alias of {model_name!r} in the model "
                              f"registry ({mlflow.get_registry_uri()}): {exc.message}") from exc


def dataset_digest_of(dataset_run_id: str) -> str | None:
    """The content digest of a preprocess run's dataset, None when the run does not exist (any
    other failure is raised: read as "other data", it would replace the champion)."""
    if not dataset_run_id:
        return None
    try:
        return MlflowClient().get_run(dataset_run_id).data.params.get("dataset_digest")
    except MlflowException as exc:
        if is_not_found(exc):
            return None
        raise MlflowException(f"cannot read the dataset run {dataset_run_id} of the champion in "
                              f"the tracking store ({mlflow.get_tracking_uri()}): {exc.message}") from exc


@dataclass
class Candidate:
    """A model that could become champion: one training run, or an ensemble of several."""

    family: str
    runs: list
    score: float
    metrics: dict = field(default_factory=dict)

    @property
    def source_run_id(self) -> str:
        return ",".join(r.info.run_id for r in self.runs)


def ensemble_candidate(runs: list) -> Candidate | None:
    """The geometric-mean ensemble of `runs` (the best of each family), scored on the splits
    every member logged probabilities for; None with fewer than two members or no val scores."""
    from kana.evaluation import classification_metrics, load_probabilities, subset_accuracies
    from kana.serving import combine_probabilities

    if len(runs) < 2:
        return None
    metrics = {}
    for split in ("val", "test", "real"):
        logged = [load_probabilities(r.info.run_id, split) for r in runs]
        if any(x is None for x in logged) or any(
            not np.array_equal(x.y_true, logged[0].y_true) for x in logged  # not the same samples
        ):
            continue
        combined = combine_probabilities([x.probs.astype("float64") for x in logged])
        y_true, y_pred = logged[0].y_true, combined.argmax(axis=1)
        metrics.update(classification_metrics(y_true, y_pred, split))
        if logged[0].class_ids is not None:
            metrics.update(subset_accuracies(split, y_true, y_pred, logged[0].class_ids,
                                             logged[0].sources))
    if SELECTION_METRIC not in metrics:
        return None
    return Candidate(ENSEMBLE, runs, metrics[SELECTION_METRIC], metrics)


def choose(runs: list) -> tuple[Candidate, list[Candidate]]:
    """The winner among the runs (best first) and their ensemble, and every candidate considered."""
    singles = [Candidate(r.data.tags.get("model_family", ""), [r], r.data.metrics[SELECTION_METRIC],
                         dict(r.data.metrics)) for r in runs]
    best_per_family = {}
    for c in singles:
        best_per_family.setdefault(c.family, c.runs[0])
    ensemble = ensemble_candidate(list(best_per_family.values()))
    candidates = singles + ([ensemble] if ensemble else [])
    winner = singles[0]
    if ensemble is not None and ensemble.score >= winner.score:
        winner = ensemble
    return winner, candidates


def register(dataset_run_id: str = "", model_name: str = MODEL_NAME) -> str:
    """MLflow entry point `register`: the best training run on a dataset, or the ensemble of each
    family's best run where it scores at least as well, becomes the champion; a champion scored
    on the same data that scores as well stays. Returns the champion's version (new or kept).

    Parameters:

    - `dataset_run_id`: the `preprocess` run whose training runs compete ("": the latest
      FINISHED one).
    - `model_name`: the registered model whose `champion` alias goes to the winner.
    """
    client = MlflowClient()
    # a wrong id refused by name, before this run starts
    dataset_run = finished_preprocess_run(dataset_run_id) if dataset_run_id else None
    with kana_run("register", run_name=f"register-{model_name}") as run:
        if dataset_run is None:
            dataset_run = latest_finished_run("preprocess")
            if dataset_run is None:
                raise RuntimeError("no FINISHED preprocess run: nothing to choose a champion for")
            dataset_run_id = dataset_run.info.run_id
        log_params({"model_name": model_name, "dataset_run_id": dataset_run_id,
                    "selection_metric": SELECTION_METRIC})
        runs = [r for r in training_runs(dataset_run_id) if SELECTION_METRIC in r.data.metrics]
        if not runs:
            raise RuntimeError(
                f"no FINISHED training run on dataset {dataset_run_id} has {SELECTION_METRIC}"
            )
        best, candidates = choose(runs)
        for c in candidates:
            print(f"candidate {c.family} {c.source_run_id}: {SELECTION_METRIC}={c.score:.4f}")
        ensemble = next((c for c in candidates if c.family == ENSEMBLE), None)
        if ensemble is not None:
            mlflow.log_metrics({f"ensemble_{k}": v for k, v in ensemble.metrics.items()})
            mlflow.set_tag(ENSEMBLE_RUNS_TAG, ensemble.source_run_id)
        champion = current_champion(model_name)
        digest = dataset_run.data.params.get("dataset_digest")  # of the data at hand
        code = code_digest()
        repackaged = False
        if champion is not None:
            score = float(champion.tags.get(SELECTION_METRIC, "-inf"))
            champion_dataset = champion.tags.get("dataset_run_id", "")
            # from the version's tag; a version registered before it was written has only the
            # preprocess run, which `mlflow gc` may have purged (then None: other data)
            champion_digest = champion.tags.get(DIGEST_TAG) or dataset_digest_of(champion_dataset)
            if champion_digest != digest:
                # Validation scores on different data don't compare (a changed synthesizer or
                # new raw data): the best model of the data at hand takes over.
                scored_on = champion_digest or (f"unknown: its preprocess run {champion_dataset!r} "
                                                "is gone or holds no digest")
                print(f"champion version {champion.version} was scored on other data "
                      f"(dataset {scored_on}; now {digest}): replacing it")
            elif champion.tags.get("source_run_id") == best.source_run_id or score >= best.score:
                stays = f"champion stays at version {champion.version} ({SELECTION_METRIC}={score:.4f})"
                if champion.tags.get(CODE_TAG) == code:
                    return _keep(champion, stays)
                # The same models, but the pyfunc carries older kana code (it is logged with
                # the model): package them again, so serving fixes and speed-ups reach it.
                again = _champion_candidate(champion, candidates)
                if again is None:  # a worse model must not take over, nor the rerun fail
                    return _keep(champion, (
                        f"{stays}, with the kana code it was logged with (delete the "
                        f"alias {CHAMPION!r} to register the best model of this data instead)"))
                print(f"champion version {champion.version} carries other kana code: "
                      "packaging its models again with this code")
                best = again
                dataset_run_id = champion_dataset or dataset_run_id
                repackaged = True

        with ExitStack() as stack:
            from kana.serving import log_pyfunc

            members = [stack.enter_context(_winner_files(r)) for r in best.runs]
            info = log_pyfunc(members, registered_model_name=model_name)
        version = str(info.registered_model_version)
        family = best.family
        if family == ENSEMBLE:
            family = "ensemble:" + "+".join(r.data.tags.get("model_family", "") for r in best.runs)
        for key, value in {
            "source_run_id": best.source_run_id,
            "model_family": family,
            SELECTION_METRIC: f"{best.score:.6f}",
            "dataset_run_id": dataset_run_id,
            DIGEST_TAG: digest or "",
            CODE_TAG: code,
        }.items():
            client.set_model_version_tag(model_name, version, key, value)
        client.set_registered_model_alias(model_name, CHAMPION, version)
        mlflow.set_tags({"champion_changed": "true", "champion_version": version,
                         "champion_repackaged": str(repackaged).lower(),
                         "model_family": family, "source_run_id": best.source_run_id})
        mlflow.log_metrics({k: v for k, v in best.metrics.items()
                            if k.startswith(("val_", "test_", "real_"))})
        print(f"registered {model_name} version {version} ({family}, {SELECTION_METRIC}="
              f"{best.score:.4f}) as @{CHAMPION}; run {run.info.run_id}")
        return version


def _keep(champion, message: str) -> str:
    """Leave the alias where it is: print why, and tag the register run with the version kept."""
    print(message)
    mlflow.set_tags({"champion_changed": "false", "champion_version": champion.version})
    return str(champion.version)


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

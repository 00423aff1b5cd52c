"""MLflow plumbing shared by every entry point: the experiment, run lookup, artifact helpers.

Every entry point honours MLFLOW_TRACKING_URI; with none set, MLflow uses its default local
SQLite store (./mlflow.db). Runs go to the experiment `kana` (KANA_EXPERIMENT overrides it)
unless `mlflow run` already started the run in another experiment.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.utils.string_utils import quote

ENTRY_POINT_TAG = "kana.entry_point"
CODE_DIGEST_TAG = "kana.code_digest"  # which kana code made a run (see code_digest)


def experiment_name() -> str:
    """The experiment kana's runs go to: `kana`, or KANA_EXPERIMENT (read at call time)."""
    return os.environ.get("KANA_EXPERIMENT", "kana")


@contextmanager
def kana_run(entry_point: str, run_name: str | None = None, tags: dict | None = None):
    """Start (or, under `mlflow run`, attach to) the run of one entry point, tagged with its name
    and the digest of the kana code that runs it."""
    if not os.environ.get("MLFLOW_RUN_ID"):
        mlflow.set_experiment(experiment_name())
    with mlflow.start_run(run_name=run_name) as run:
        mlflow.set_tags({ENTRY_POINT_TAG: entry_point, CODE_DIGEST_TAG: code_digest(),
                         **(tags or {})})
        if run_name:
            mlflow.set_tag("mlflow.runName", run_name)
        yield run


def logged_spellings(value) -> set[str]:
    """The strings a param given as `value` may be logged as: as given, or shell-quoted, as MLflow
    Projects logs what it put on the command line ('' for "", a folder with a space in quotes)."""
    return {str(value), quote(str(value))}


def log_params(params: dict) -> None:
    """Log params; where `mlflow run` already logged a key from the command line with another
    spelling (1e-3 for 0.001) or a placeholder ("" for "the latest", 0 for "automatic"), the value
    actually used goes to `<key>_resolved` (MLflow refuses to change a logged param). Shell quoting
    (`logged_spellings`) is no other spelling: it gets no twin."""
    run_id = mlflow.active_run().info.run_id
    logged = MlflowClient().get_run(run_id).data.params
    out = {}
    for key, value in params.items():
        if key not in logged:
            out[key] = value
        elif logged[key] not in logged_spellings(value):
            out[f"{key}_resolved"] = value
    mlflow.log_params(out)


def experiment_ids() -> list[str]:
    """Where to look for earlier runs: the active run's experiment, then `kana`."""
    ids = []
    active = mlflow.active_run()
    if active:
        ids.append(active.info.experiment_id)
    exp = MlflowClient().get_experiment_by_name(experiment_name())
    if exp and exp.experiment_id not in ids:
        ids.append(exp.experiment_id)
    return ids


def latest_finished_run(entry_point: str, extra_filter: str = ""):
    """The newest FINISHED run of an entry point, or None."""
    flt = f"tags.`{ENTRY_POINT_TAG}` = '{entry_point}' and attributes.status = 'FINISHED'"
    if extra_filter:
        flt += f" and {extra_filter}"
    runs = MlflowClient().search_runs(
        experiment_ids(), filter_string=flt, order_by=["attributes.start_time DESC"], max_results=1
    )
    return runs[0] if runs else None


def finished_preprocess_run(dataset_run_id: str):
    """The run a `dataset_run_id` names, checked to be a FINISHED preprocess run. Otherwise a
    ValueError naming the parameter and what the run is instead (none in the store, another entry
    point's, one still running or killed), before a trainer or `register` starts its own run: a
    wrong id gave MLflow's "Run with id=... not found", or with a quote in it "Invalid clause(s) in
    filter string". Any other failure of the store is raised as it is."""
    must = "it must name a FINISHED preprocess run"
    try:
        run = MlflowClient().get_run(dataset_run_id)
    except MlflowException as exc:  # no such run; a malformed id is an invalid parameter
        if exc.error_code not in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE"):
            raise
        raise ValueError(f"dataset_run_id {dataset_run_id!r}: no such run in the tracking store "
                         f"({mlflow.get_tracking_uri()}); {must}") from None
    entry_point = run.data.tags.get(ENTRY_POINT_TAG)
    if entry_point != "preprocess":
        kind = f"a {entry_point} run" if entry_point else "not a kana run"
        raise ValueError(f"dataset_run_id {dataset_run_id!r}: {kind}; {must}")
    if run.info.status != "FINISHED":
        raise ValueError(f"dataset_run_id {dataset_run_id!r}: a preprocess run that is "
                         f"{run.info.status} (still running, or stopped before it finished); {must}")
    return run


def log_dataset_input(dataset, context: str, attempts: int = 5) -> None:
    """`mlflow.log_input`, safe when two runs log the same dataset at once: the store checks for
    the dataset and then inserts it, so the slower of two concurrent runs can hit a unique
    constraint; by then the dataset exists and a retry just links it to this run."""
    import time

    for attempt in range(attempts):
        try:
            mlflow.log_input(dataset, context=context)
            return
        except MlflowException as exc:
            if "UNIQUE constraint" not in str(exc) and "duplicate key" not in str(exc):
                raise
            if attempt == attempts - 1:
                raise
            print(f"dataset {dataset.name} was being logged by another run at the same time; retrying")
            time.sleep(0.2 * (attempt + 1))


def log_figure_png(fig, artifact_file: str) -> None:
    """Log a matplotlib figure and close it (figures pile up in long runs otherwise)."""
    import matplotlib.pyplot as plt

    mlflow.log_figure(fig, artifact_file)
    plt.close(fig)


def code_digest() -> str:
    """A digest of the kana package's source (its .py and .html files, as they are on disk, edits
    not yet committed included). Every run is tagged with it, so `main` reuses a step only if the
    same code made it; the registry tags each version with it, to know which code a champion's
    pyfunc carries."""
    import hashlib

    h = hashlib.sha256()
    root = Path(__file__).resolve().parent
    for path in sorted([*root.glob("*.py"), *root.glob("*.html")]):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def git_commit(folder: Path) -> str | None:
    """The commit checked out in `folder` (as MLflow Projects tags a step run there), or None."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=folder, capture_output=True, text=True, timeout=10,
            check=True,
        )
        return out.stdout.strip()
    except Exception:
        return None


class MissingArtifact(FileNotFoundError):
    """A run has no artifact at that path (not: a file inside one is missing or unreadable)."""


@contextmanager
def run_artifact(run_id: str, artifact_path: str):
    """A run's artifact (file or folder) as a local path, for the length of the block.

    From a local store it is read where it lies; from a remote one it is downloaded into a
    temporary folder removed afterwards. (`mlflow.artifacts.download_artifacts(run_id=...)` copies
    even a local artifact into a new temporary folder that nothing removes: each trainer left a
    copy of the processed dataset, 225 MB at the default size, in the temp folder.)
    Raises MissingArtifact, naming the run, where it has no such artifact."""
    client = MlflowClient()
    parent = artifact_path.rstrip("/").rpartition("/")[0]
    if artifact_path.rstrip("/") not in {a.path for a in client.list_artifacts(run_id, parent or None)}:
        raise MissingArtifact(f"run {run_id} has no artifact {artifact_path!r}")
    uri = f"{client.get_run(run_id).info.artifact_uri.rstrip('/')}/{artifact_path}"
    if urlparse(uri).scheme in ("", "file"):
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=uri))
        return
    with tempfile.TemporaryDirectory(prefix="kana-artifact-") as tmp:
        yield Path(mlflow.artifacts.download_artifacts(artifact_uri=uri, dst_path=tmp))


@contextmanager
def scratch_dir():
    """A temporary folder (a Path), removed with everything in it when the block ends, even on an
    error: for files written only to be logged, and for what MLflow would otherwise leave in the
    temp folder for good (a downloaded model, `mlflow.run`'s storage folder)."""
    with tempfile.TemporaryDirectory(prefix="kana-") as d:
        yield Path(d)


def load_keras_model(model_uri: str):
    """The Keras model at an MLflow URI, held in memory. Its files are downloaded into a temporary
    folder removed once it is loaded: `mlflow.keras.load_model(uri)` alone copies a model from a
    remote store (a team's tracking server) into a new temporary folder that nothing removes, so
    each `train_transfer` left a copy of the kanji base behind."""
    with scratch_dir() as tmp:
        return mlflow.keras.load_model(model_uri, dst_path=str(tmp))

"""Shared fixtures: the real MLflow pipeline, run once per session on a tiny configuration."""

from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent
EXPERIMENT = "kana-test"
MODEL_NAME = "kana-classifier-test"

# Small enough for CI's 2 cores (a few minutes), large enough to exercise every step and to give a
# champion that reads most synthetic samples right (the drawing page's browser test needs one).
TINY = {
    "class_set": "basic46",
    "synthetic_per_class": 20,
    "cnn_epochs": 3,
    "transfer_epochs": 2,
    "lstm_epochs": 10,
    "kanji_classes": 10,
    "kanji_per_class": 4,
    "base_epochs": 1,
    "model_name": MODEL_NAME,
}


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def write_raw_data(root: Path, seed: int, per_class: int, hostile_marker: Path | None = None,
                   off_table: bool = False):
    """A raw folder as contributors make it: app pickles per source (stroke counts as the table
    allows them), plus some bad files; with `off_table`, two drawings of "bob" whose counts it does
    not allow (あ with a stroke lifted midway, and with more strokes than any basic kana has)."""
    from kana.classes import class_set, get_class
    from kana.strokes import save_app_pickle
    from kana.synth import synthesize_sample

    rng = np.random.default_rng(seed)
    for kana in class_set("basic46"):
        for k in range(per_class):
            # a raw file with a count off its table is dropped: these are all on it
            on_table = synthesize_sample(kana, rng, off_table_join=0, off_table_split=0)
            save_app_pickle(on_table, root / "alice" / f"{kana.char_id}{k:05d}.pickle")
    if off_table:
        lifted = synthesize_sample(get_class("a"), rng, off_table_join=0, off_table_split=1.0)
        assert len(lifted) == 4  # あ is written with 3
        save_app_pickle(lifted, root / "bob" / "a00001.pickle")
        save_app_pickle(lifted + [lifted[0][:2] + 0.02, lifted[2][-3:]], root / "bob" / "a00002.pickle")
    if hostile_marker is not None:
        (root / "mallory").mkdir(parents=True, exist_ok=True)
        (root / "mallory" / "a00001.pickle").write_bytes(pickle.dumps({1: _Payload(hostile_marker)}))
        (root / "mallory" / "i00001.pickle").write_bytes(b"\x80\x04truncated")
        (root / "mallory" / "u00001.npy").write_bytes(b"\x93NUMPY")  # no format kana reads
    return root


@dataclass
class Pipeline:
    tmp: Path
    scratch: Path  # the temp folder (TMPDIR) of every process the pipeline ran
    tracking_uri: str
    experiment_id: str
    main_run_id: str
    raw_dir: Path
    real_dir: Path
    hostile_marker: Path

    @property
    def projects_dir(self) -> Path:
        """Where a test's own `mlflow.projects.run` keeps its scratch (else an empty temp folder)."""
        return self.tmp / "projects"

    def runs(self, entry_point: str):
        from mlflow.tracking import MlflowClient

        return MlflowClient(self.tracking_uri).search_runs(
            [self.experiment_id], f"tags.`kana.entry_point` = '{entry_point}'",
            order_by=["attributes.start_time DESC"],
        )


@pytest.fixture(scope="session")
def pipeline(tmp_path_factory) -> Pipeline:
    import mlflow
    from mlflow.tracking import MlflowClient

    tmp = tmp_path_factory.mktemp("pipeline")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    old = os.environ.get("MLFLOW_TRACKING_URI")
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    marker = tmp / "payload-ran"
    raw_dir = write_raw_data(tmp / "raw", seed=11, per_class=2, hostile_marker=marker)
    real_dir = write_raw_data(tmp / "real", seed=12, per_class=1, off_table=True)
    experiment_id = MlflowClient().create_experiment(EXPERIMENT, artifact_location=str(tmp / "artifacts"))
    scratch = tmp / "scratch"
    scratch.mkdir()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TMPDIR", str(scratch))  # the entry points run in child processes, which inherit it
        submitted = mlflow.projects.run(
            str(PROJECT_DIR), "main", experiment_id=experiment_id, env_manager="local",
            parameters={**TINY, "raw_dir": str(raw_dir), "real_dir": str(real_dir)},
            storage_dir=str(tmp / "projects"),
        )
    assert submitted.get_status() == "FINISHED"
    yield Pipeline(tmp, scratch, uri, experiment_id, submitted.run_id, raw_dir, real_dir, marker)
    if old is None:
        os.environ.pop("MLFLOW_TRACKING_URI", None)
    else:
        os.environ["MLFLOW_TRACKING_URI"] = old


@pytest.fixture
def use_tracking_store(monkeypatch):
    """Points MLflow at a store for one test, in this process and in the processes it starts
    (`MLFLOW_TRACKING_URI`); what this process pointed at before is put back after."""
    import mlflow

    previous = mlflow.get_tracking_uri()  # read before the environment changes

    def point(uri: str) -> str:
        monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
        mlflow.set_tracking_uri(uri)
        return uri

    yield point
    mlflow.set_tracking_uri(previous)


def _refuse_permission(monkeypatch, owner, name: str):
    """Makes `owner.name` (a function or method whose first argument is a path) refuse the paths
    later given, as the system refuses one without read permission: root reads and lists anything,
    so tests run as root cannot make the refusal for real. Returns the function that takes them."""
    refused: set[Path] = set()
    original = getattr(owner, name)

    def refusing(path=".", *args, **kwargs):
        if Path(path).absolute() in refused:
            raise PermissionError(13, "Permission denied", os.fspath(path))
        return original(path, *args, **kwargs)

    monkeypatch.setattr(owner, name, refusing)
    return lambda *paths: refused.update(Path(p).absolute() for p in paths)


@pytest.fixture
def refuse_listing(monkeypatch):
    """Makes `os.scandir` refuse the folders given (a folder without read permission)."""
    return _refuse_permission(monkeypatch, os, "scandir")


@pytest.fixture
def refuse_reading(monkeypatch):
    """Makes `Path.read_bytes` refuse the files given (a file without read permission)."""
    return _refuse_permission(monkeypatch, Path, "read_bytes")


def left_in_temp_folder(scratch: Path) -> list[str]:
    """What the processes that had `scratch` as their TMPDIR left there: anything but the files at
    the top, which are other libraries' own (ONNX Runtime's `.ses`, one file, reused)."""
    return sorted(str(p.relative_to(scratch)) for p in scratch.rglob("*")
                  if not (p.is_file() and p.parent == scratch))


def ensure_debian_packages(binary: str, packages: list[str]) -> str | None:
    """The path of `binary`, installing its Debian `packages` first when it is missing and we can
    (root with apt-get, as on CI). None when it cannot be had; callers skip then."""
    import shutil

    found = shutil.which(binary)
    if found or os.geteuid() != 0 or not shutil.which("apt-get"):
        return found
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    import subprocess

    for cmd in (["apt-get", "install", "-y", "-q", *packages], ["apt-get", "update", "-q"],
                ["apt-get", "install", "-y", "-q", *packages]):
        subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=900)
        if cmd[1] == "install" and shutil.which(binary):
            break
    return shutil.which(binary)


def finished_run(experiment: str, tags: dict, **values) -> str:
    """A FINISHED run with these tags, float values logged as metrics and the others as params."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient()
    run_id = client.create_run(experiment, tags=tags).info.run_id
    for key, value in values.items():
        (client.log_metric if isinstance(value, float) else client.log_param)(run_id, key, value)
    client.set_terminated(run_id)
    return run_id


def champion_version(model_name: str, tags: dict, run_id: str | None = None) -> str:
    """A new version of registered model `model_name` (made on first use), of run `run_id`'s model
    where one is named, with these version tags, as the champion (the alias on it). Returns its
    version number."""
    from mlflow.tracking import MlflowClient

    from kana.registry import CHAMPION

    client = MlflowClient()
    if not client.search_registered_models(filter_string=f"name = '{model_name}'"):
        client.create_registered_model(model_name)
    version = str(client.create_model_version(model_name, f"runs:/{run_id or 'x'}/model",
                                              run_id=run_id).version)
    for key, value in tags.items():
        client.set_model_version_tag(model_name, version, key, value)
    client.set_registered_model_alias(model_name, CHAMPION, version)
    return version


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def server_process(cmd: list[str], ready_url: str, log_path: Path, env: dict | None = None):
    """Start a server (`mlflow server`, `mlflow models serve`) with its output in `log_path`, wait
    until `ready_url` answers, yield the process, then stop its whole process group (uvicorn's
    workers too). If it exits or does not answer in 180 s, the error carries the log's tail."""
    import signal
    import subprocess
    import time
    import urllib.request

    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        try:
            deadline = time.time() + 180
            while True:
                try:
                    with urllib.request.urlopen(ready_url, timeout=2):
                        break
                except Exception:
                    if proc.poll() is not None or time.time() > deadline:
                        why = "exited" if proc.poll() is not None else "did not answer in 180 s"
                        raise RuntimeError(f"{' '.join(cmd[:3])} {why}:\n"
                                           + log_path.read_text()[-3000:]) from None
                    time.sleep(1)
            yield proc
        finally:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
                try:
                    proc.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(proc.pid, signal.SIGKILL)

"""A preprocess run killed midway leaves nothing that training would pick up."""

import os
import signal
import subprocess
import sys
import time

import mlflow
from mlflow.tracking import MlflowClient

from conftest import PROJECT_DIR


def test_killed_preprocess_is_never_picked_up(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("KANA_EXPERIMENT", "crash")
    mlflow.set_tracking_uri(uri)
    MlflowClient().create_experiment("crash", artifact_location=str(tmp_path / "artifacts"))
    cmd = [sys.executable, "-m", "entrypoints.preprocess", "--raw-dir", "", "--class-set", "basic46"]
    done = subprocess.run(cmd + ["--synthetic-per-class", "2"], cwd=PROJECT_DIR, env=os.environ,
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

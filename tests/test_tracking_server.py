"""A real shared tracking server, as a team runs it: PostgreSQL as the backend store, `mlflow
server` proxying artifacts, the pipeline talking to it over HTTP only, and the champion
registered on it and loaded back from it.

PostgreSQL comes from Debian's packages (installed here when missing and we are root, as on CI);
both servers listen on loopback only and are stopped by process id at the end.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import mlflow
import numpy as np
import pytest
from mlflow.tracking import MlflowClient

from conftest import (PROJECT_DIR, TINY, ensure_debian_packages, free_port, left_in_temp_folder,
                      server_process)
from kana.classes import class_set, get_class
from kana.drawing import InProcessGuesser
from kana.synth import synthesize_sample

PG_USER, PG_PASSWORD, PG_DB = "kana", "kana-test-password", "mlflow"
MODEL = "kana-classifier-team"


def _pg_bin() -> Path | None:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    if not found:
        ensure_debian_packages("pg_ctlcluster", ["postgresql"])
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"))
    return Path(found[-1]).parent if found else None


def _as_postgres_user(cmd: list[str]) -> list[str]:
    """PostgreSQL refuses to run as root; root runs it as the `postgres` user."""
    return ["runuser", "-u", "postgres", "--", *cmd] if os.geteuid() == 0 else cmd


@pytest.fixture(scope="module")
def postgres():
    pytest.importorskip("psycopg", reason="the test extra installs psycopg[binary]")
    bin_dir = _pg_bin()
    if bin_dir is None:
        pytest.skip("PostgreSQL is not installed and cannot be installed here")
    # not under pytest's tmp dir: that is private to us, and the server runs as `postgres`
    root = Path(tempfile.mkdtemp(prefix="kana-pg-"))
    data, pwfile = root / "data", root / "pw"
    pwfile.write_text(PG_PASSWORD)
    if os.geteuid() == 0:
        shutil.chown(root, "postgres")
        shutil.chown(pwfile, "postgres")
    port = free_port()
    run = lambda cmd: subprocess.run(_as_postgres_user(cmd), check=True, capture_output=True, text=True)  # noqa: E731
    run([str(bin_dir / "initdb"), "-D", str(data), "-U", PG_USER, f"--pwfile={pwfile}",
         "--auth=scram-sha-256", "-E", "UTF8"])
    run([str(bin_dir / "pg_ctl"), "-D", str(data), "-l", str(root / "log"), "-w", "-o",
         f"-p {port} -c listen_addresses=127.0.0.1 -k {root}", "start"])
    try:
        subprocess.run([str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", PG_USER, PG_DB],
                       check=True, env={**os.environ, "PGPASSWORD": PG_PASSWORD})
        yield f"postgresql://{PG_USER}:{PG_PASSWORD}@127.0.0.1:{port}/{PG_DB}", bin_dir, port
    finally:
        subprocess.run(_as_postgres_user([str(bin_dir / "pg_ctl"), "-D", str(data), "-m", "fast", "stop"]),
                       capture_output=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture(scope="module")
def tracking_server(postgres, tmp_path_factory):
    backend_uri, _, _ = postgres
    artifacts = tmp_path_factory.mktemp("team-artifacts")
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with server_process(
        ["mlflow", "server", "--backend-store-uri", backend_uri, "--artifacts-destination",
         str(artifacts), "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        f"{url}/health", artifacts.parent / "mlflow-server.log",
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},  # as the README's command
    ):
        yield url, artifacts


def test_pipeline_against_postgres_tracking_server(tracking_server, postgres, tmp_path, monkeypatch,
                                                   use_tracking_store):
    url, artifacts = tracking_server
    backend_uri, bin_dir, pg_port = postgres
    use_tracking_store(url)
    monkeypatch.setenv("KANA_EXPERIMENT", "team")
    scratch = tmp_path / "scratch"  # the temp folder of every process the pipeline runs
    scratch.mkdir()
    monkeypatch.setenv("TMPDIR", str(scratch))
    client = MlflowClient(url)
    experiment_id = client.create_experiment("team")  # artifacts: proxied by the server
    assert client.get_experiment(experiment_id).artifact_location.startswith("mlflow-artifacts:")

    submitted = mlflow.projects.run(
        str(PROJECT_DIR), "main", experiment_id=experiment_id, env_manager="local",
        parameters={**TINY, "model_name": MODEL, "raw_dir": ""},  # synthetic samples alone
        storage_dir=str(tmp_path / "projects"),
    )
    assert submitted.get_status() == "FINISHED"
    # from a remote store every artifact is downloaded; each download went in a folder removed
    # afterwards (`train_transfer` left a copy of the kanji base in the temp folder for good)
    assert left_in_temp_folder(scratch) == []
    runs = client.search_runs([experiment_id])
    entry_points = sorted(r.data.tags.get("kana.entry_point", "") for r in runs)
    assert entry_points == sorted(["main", "preprocess", "train_cnn", "train_transfer", "kanji_base",
                                   "train_lstm", "register"])
    assert {r.info.status for r in runs} == {"FINISHED"}

    # the champion, registered on the server and loaded back through it, as the drawing page
    # loads it: its copy is kept while the page runs and removed when it stops
    champion = client.get_model_version_by_alias(MODEL, "champion")
    page_scratch = tmp_path / "page-scratch"
    page_scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(page_scratch))
    guesser = InProcessGuesser(f"models:/{MODEL}@champion")
    assert any(page_scratch.rglob("MLmodel"))
    out = guesser.model.predict([synthesize_sample(get_class("a"), np.random.default_rng(0))])
    assert len(out) == 1 and out[0]["char_id"] in {c.char_id for c in class_set("basic46")}
    guesser.close()
    assert list(page_scratch.iterdir()) == []

    # everything went where a team expects it: runs and registry in PostgreSQL, files in the
    # server's artifact store (the client never wrote there itself)
    def sql(query: str) -> str:
        return subprocess.run(
            [str(bin_dir / "psql"), "-h", "127.0.0.1", "-p", str(pg_port), "-U", PG_USER, "-d", PG_DB,
             "-tAc", query], check=True, capture_output=True, text=True,
            env={**os.environ, "PGPASSWORD": PG_PASSWORD},
        ).stdout.strip()

    assert int(sql("select count(*) from runs")) == len(runs)
    assert sql(f"select version from model_versions where name = '{MODEL}' "
               f"order by version desc limit 1") == champion.version
    assert sql(f"select version from registered_model_aliases where name = '{MODEL}'") == champion.version
    stored = {p.name for p in Path(artifacts).rglob("*")}
    assert {"arrays.npz", "model.onnx", "fit_history.png"} <= stored

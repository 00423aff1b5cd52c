"""Serving speed: the pyfunc in process and `mlflow models serve` over HTTP, with baselines.

    python benchmarks/bench_serving.py                       # every family, untrained weights
    python benchmarks/bench_serving.py --model-uri models:/kana-classifier@champion

Without --model-uri each family's network (as `train_*` builds it for the `all` class set) is
logged through the same registration code as a champion (ONNX export + pyfunc) into a temporary
MLflow store; speed does not depend on the weights. Prints, per model:
- Keras baselines measured in this run: `model.predict` and a direct call, one sample;
- the pyfunc, one raw sample in, prediction out, in process: p50 / p99 (goal p50 <= 2 ms);
- batched: samples/s for batches of 1,000 raw samples (goal >= 2,000/s);
- HTTP (`--http`, on the first model): 10,000 requests from 8 concurrent client processes on loopback,
  p50 / p99 (goal p99 <= 25 ms), errors, and the server's RSS before and after; once per
  `--workers` count (default: 1, MLflow's default, and 2, one per core here). The same load on
  a model that does nothing (it answers one constant record per sample) gives the floor that
  `mlflow models serve` and the clients themselves set on this machine.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
import urllib.request
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def percentiles(times_s):
    a = np.asarray(times_s) * 1000
    return np.percentile(a, 50), np.percentile(a, 99)


def raw_samples(n: int, class_set: str = "all"):
    from kana.classes import class_set as classes
    from kana.synth import synthesize_sample

    rng = np.random.default_rng(7)
    cls = list(classes(class_set))
    return [
        {i + 1: s for i, s in enumerate(synthesize_sample(cls[k % len(cls)], rng))} for k in range(n)
    ]


def log_untrained_champions(tmp: Path) -> dict[str, str]:
    """Each family's network, untrained, logged as a registered pyfunc like a real champion."""
    import mlflow

    from kana import classes
    from kana.models import build_cnn, build_lstm
    from kana.serving import log_pyfunc
    from kana.training import RASTER_SHAPE, ModelConfig

    ids = [c.char_id for c in classes.class_set("all")]
    ms = classes.max_strokes("all")
    nets = {
        "cnn": (build_cnn(len(ids), RASTER_SHAPE, filters=16), "raster"),
        "lstm": (build_lstm(len(ids), 120, 4 * ms), "strokes"),
        "cnn-notebook": (build_cnn(len(ids), RASTER_SHAPE, 40, batch_norm=False), "raster"),
        "transfer": (build_cnn(len(ids), RASTER_SHAPE, filters=16), "raster"),  # same network as cnn
    }
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'bench.db'}")
    mlflow.set_experiment("bench")
    files = {}
    for name, (net, kind) in nets.items():
        config = ModelConfig(name, kind, ids, 120, ms, "all")
        keras_path, config_path = tmp / f"{name}.keras", tmp / f"{name}.json"
        net.save(keras_path)
        config_path.write_text(config.to_json())
        files[name] = (str(keras_path), str(config_path))
    champions = {
        "ensemble (cnn+transfer+lstm, the default champion)": [files["cnn"], files["transfer"], files["lstm"]],
        "lstm": [files["lstm"]],
        "cnn": [files["cnn"]],
        "cnn-notebook": [files["cnn-notebook"]],
    }
    uris = {}
    for k, (name, members) in enumerate(champions.items()):
        with mlflow.start_run(run_name=f"bench-{k}"):
            info = log_pyfunc(members, registered_model_name=f"bench-{k}")
        uris[name] = f"models:/bench-{k}/{info.registered_model_version}"
    return uris


def keras_baselines(model_uri: str, sample):
    """Keras predict() and a direct call on one sample, with the pyfunc's own Keras models (every
    member of an ensemble, one after the other)."""
    import keras
    import mlflow

    from kana.features import resample_for_model
    from kana.strokes import parse_strokes
    from kana.training import ModelConfig, model_inputs

    local = Path(mlflow.artifacts.download_artifacts(model_uri))
    members = []
    for config_path in sorted(local.rglob("kana_config.json")):
        config = ModelConfig.from_json(config_path.read_text())
        model = keras.saving.load_model(config_path.parent / "model.keras", compile=False)
        x = model_inputs(config, [resample_for_model(parse_strokes(sample), config.n_points)])
        members.append((model, x))
    out = {}
    for name, fn in (("keras predict()", lambda: [m.predict(x, verbose=0) for m, x in members]),
                     ("keras direct call", lambda: [m(x, training=False) for m, x in members])):
        fn()
        times = []
        for _ in range(30):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        out[name] = percentiles(times)
    return out


def bench_in_process(model_uri: str, samples):
    import mlflow

    model = mlflow.pyfunc.load_model(model_uri)
    model.predict(samples[:5])
    times = []
    for s in samples[:2000]:
        t0 = time.perf_counter()
        model.predict([s])
        times.append(time.perf_counter() - t0)
    single = percentiles(times)
    batch = samples[:1000]
    model.predict(batch)
    best = min(_timed(lambda: model.predict(batch)) for _ in range(3))
    return single, len(batch) / best


def _timed(fn):
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def _rss_mb(pid: int) -> float:
    """Resident memory of a process and all its descendants (uvicorn's workers), from /proc."""
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/status") as fh:
                total += next((int(line.split()[1]) / 1024 for line in fh if line.startswith("VmRSS:")), 0)
            with open(f"/proc/{p}/task/{p}/children") as fh:
                todo += [int(c) for c in fh.read().split()]
        except OSError:
            pass
    return total


def log_floor_model(tmp: Path) -> str:
    """A pyfunc that answers a constant record per sample: served, it costs what the server and
    the clients cost and nothing more."""
    import mlflow

    class Constant(mlflow.pyfunc.PythonModel):
        def predict(self, context, model_input: list[Any], params=None) -> list[dict[str, Any]]:
            return [{"char_id": "a", "probability": 1.0} for _ in model_input]

    path = tmp / "floor-model"
    mlflow.pyfunc.save_model(str(path), python_model=Constant(),
                             input_example=[{"1": [[0.0, 0.1], [0.2, 0.3]]}])
    return str(path)


def bench_http(model_uri: str, samples, requests: int = 10_000, clients: int = 8, time_limit: float = 300,
               workers: int = 1):
    """`mlflow models serve` with `workers` uvicorn workers; with several, each runs ONNX Runtime
    on one thread (KANA_ORT_THREADS=1), so the workers share the cores instead of fighting.
    Each client is a process of its own and opens a connection per request (urllib)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ)
    if workers > 1:
        env["KANA_ORT_THREADS"] = "1"
    proc = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    url = f"http://127.0.0.1:{port}/invocations"
    bodies = [json.dumps({"inputs": [{str(k): v.tolist() for k, v in s.items()}]}).encode() for s in samples[:500]]
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2).read()
                break
            except Exception:
                if time.time() > deadline or proc.poll() is not None:
                    raise RuntimeError("server did not start")
                time.sleep(0.5)
        for b in bodies[:20]:
            _post(url, b)
        rss_before = _rss_mb(proc.pid)
        # 8 client processes (not threads: in one Python process the clients would queue on
        # the GIL and measure themselves), each with its share of the requests and the deadline
        share = [requests // clients + (i < requests % clients) for i in range(clients)]
        stop_at = time.time() + time_limit
        t0 = time.perf_counter()
        with ProcessPoolExecutor(clients) as pool:
            results = list(pool.map(_client, [url] * clients, [bodies] * clients, share, [stop_at] * clients))
        wall = time.perf_counter() - t0
        latencies = [dt for lat, _ in results for dt in lat]
        errors = [sum(err for _, err in results)]
        rss_after = _rss_mb(proc.pid)
        p50, p99 = percentiles(latencies)
        return {"requests": len(latencies), "errors": errors[0], "p50": p50, "p99": p99,
                "rps": len(latencies) / wall, "rss_before": rss_before, "rss_after": rss_after}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


def _client(url: str, bodies: list[bytes], n: int, stop_at: float) -> tuple[list[float], int]:
    """One client: `n` requests one after another (or until `stop_at`); latencies and errors."""
    latencies, errors = [], 0
    for k in range(n):
        if time.time() > stop_at:
            break
        t0 = time.perf_counter()
        ok = _post(url, bodies[k % len(bodies)])
        latencies.append(time.perf_counter() - t0)
        errors += not ok
    return latencies, errors


def _post(url: str, body: bytes) -> bool:
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=30) as resp:
            resp.read()
            return resp.status == 200
    except Exception:
        return False


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="a registered kana pyfunc (default: untrained nets of each family)")
    parser.add_argument("--http", action="store_true", help="also load-test mlflow models serve")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="uvicorn worker counts to load-test (default: 1 and 2)")
    args = parser.parse_args()
    samples = raw_samples(2000)
    print(f"machine: {os.cpu_count()} cores; {len(samples)} synthetic raw samples (all 108 classes)")
    with tempfile.TemporaryDirectory() as tmp:
        uris = {"model": args.model_uri} if args.model_uri else log_untrained_champions(Path(tmp))
        for name, uri in uris.items():
            print(f"\n== {name}: {uri} ==")
            for label, (p50, p99) in keras_baselines(uri, samples[0]).items():
                print(f"baseline {label:18s}: p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  (model only)")
            (p50, p99), rate = bench_in_process(uri, samples)
            print(f"pyfunc, 1 raw sample     : p50 {p50:7.2f} ms  p99 {p99:7.2f} ms  (goal p50 <= 2 ms)")
            print(f"pyfunc, batches of 1000  : {rate:9,.0f} samples/s          (goal >= 2,000/s)")
        if args.http:
            name, uri = next(iter(uris.items()))
            floor_uri = log_floor_model(Path(tmp))
            for workers in args.workers:
                r = bench_http(uri, samples, args.requests, workers=workers)
                print(f"\n== HTTP, {name}: {r['requests']} requests, 8 clients, loopback, "
                      f"--workers {workers}{' (KANA_ORT_THREADS=1)' if workers > 1 else ''} ==")
                print(f"latency p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms (goal p99 <= 25 ms); "
                      f"{r['rps']:.0f} req/s; errors {r['errors']}")
                print(f"server RSS (all workers) before {r['rss_before']:.0f} MB, after {r['rss_after']:.0f} MB")
                f = bench_http(floor_uri, samples, args.requests, workers=workers)
                print(f"floor (a model that does nothing, same load): p50 {f['p50']:.2f} ms  "
                      f"p99 {f['p99']:.2f} ms; {f['rps']:.0f} req/s; errors {f['errors']}")
                print(f"kana / floor: p50 {r['p50'] / f['p50']:.2f}x  p99 {r['p99'] / f['p99']:.2f}x")


if __name__ == "__main__":
    main()

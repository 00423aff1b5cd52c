"""Serving speed: the pyfunc in process and `mlflow models serve` over HTTP, with baselines.

    python benchmarks/bench_serving.py                       # every family, untrained weights
    python benchmarks/bench_serving.py --model-uri models:/kana-classifier@champion

In process, the pyfunc runs the `kana` code this script imported (this checkout's, or the one
on PYTHONPATH), not the copy logged with the model: MLflow does not replace a package already
imported. To time a model's own code, put that code first on PYTHONPATH.

Without --model-uri each family's network (as `train_*` builds it for the `all` class set) is
logged through the same registration code as a champion (ONNX export + pyfunc) into a temporary
MLflow store; speed does not depend on the weights. Prints, per model:
- Keras baselines measured in this run: `model.predict` and a direct call, one sample;
- the pyfunc, one raw sample in, prediction out, in process: p50 / p99 (goal p50 <= 2 ms);
- batched: samples/s for batches of 1,000 raw samples (goal >= 2,000/s);
- HTTP (`--http`, on the first model): 10,000 requests from 8 concurrent clients on loopback,
  p50 / p99 (goal p99 <= 25 ms), errors, and the server's RSS before and after; once per
  `--workers` count (default: 1, MLflow's default, and 2, one per core here), with the clients'
  connections kept alive (as an app's HTTP client keeps them) and with a new connection per
  request. The same load on a model that does nothing (it answers one constant record per
  sample) gives the floor that `mlflow models serve` and the clients themselves set here; one
  that first sleeps 1 ms, as a request's thread does while kana's models run in their child
  process, gives the floor for any model that makes the request's thread wait. Each
  line also gives the server's CPU time per request (its workers' and their models' child
  processes', and the latter alone) and how the workers shared it: with connections kept alive,
  uvicorn may hand all 8 to one worker. The same load with the models in the server's own
  process (`KANA_CHILD_PROCESS=0`, as before they moved to a child) gives the baseline of that
  change.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
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

    from dataclasses import replace

    from kana import classes
    from kana.features import ANTIALIAS, MAX_GAP, N_POINTS
    from kana.models import build_cnn, build_lstm
    from kana.serving import log_pyfunc
    from kana.training import CNN_DIRECTIONS, RASTER_SHAPE, ModelConfig

    ids = [c.char_id for c in classes.class_set("all")]
    ms = classes.max_strokes("all")
    meta = {"class_ids": ids, "n_points": N_POINTS, "max_gap": MAX_GAP, "max_strokes": ms, "class_set": "all"}
    oriented = RASTER_SHAPE[:2] + (1 + CNN_DIRECTIONS,)
    # name: network, its family, and the input settings train_* gives that family by default
    nets = {
        "cnn": (build_cnn(len(ids), oriented, filters=16), "cnn",
                {"raster_antialias": ANTIALIAS, "directions": CNN_DIRECTIONS}),
        "lstm": (build_lstm(len(ids), N_POINTS, 4 * ms), "lstm", {"fit_box": True}),
        "cnn-notebook": (build_cnn(len(ids), RASTER_SHAPE, 40, batch_norm=False), "cnn", {}),
        "cnn-raster-only": (build_cnn(len(ids), RASTER_SHAPE, filters=16), "transfer",
                            {"raster_antialias": ANTIALIAS}),  # the transfer CNN's network and input
    }
    mlflow.set_tracking_uri(f"sqlite:///{tmp / 'bench.db'}")
    mlflow.set_experiment("bench")
    files = {}
    for name, (net, family, settings) in nets.items():
        config = replace(ModelConfig.for_dataset(family, meta), family=name, **settings)
        keras_path, config_path = tmp / f"{name}.keras", tmp / f"{name}.json"
        net.save(keras_path)
        config_path.write_text(config.to_json())
        files[name] = (str(keras_path), str(config_path))
    champions = {
        "ensemble (cnn+transfer+lstm, the default champion)": [files["cnn"], files["cnn-raster-only"],
                                                               files["lstm"]],
        "lstm": [files["lstm"]],
        "cnn (raster + 4 orientations)": [files["cnn"]],
        "cnn on the raster alone (-P directions=0; the transfer CNN)": [files["cnn-raster-only"]],
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

    members = []
    # into a folder removed afterwards: download_artifacts alone leaves its copy in the temp folder
    with tempfile.TemporaryDirectory(prefix="kana-bench-") as tmp:
        local = Path(mlflow.artifacts.download_artifacts(model_uri, dst_path=tmp))
        for config_path in sorted(local.rglob("kana_config.json")):
            config = ModelConfig.from_json(config_path.read_text(encoding="utf-8"))
            model = keras.saving.load_model(config_path.parent / "model.keras", compile=False)
            x = model_inputs(config, [resample_for_model(parse_strokes(sample), *config.resampling)])
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


def _worker_cpu_s(pid: int) -> dict[int, tuple[float, float]]:
    """CPU seconds (user + system) of each of uvicorn's workers (or the single process that serves
    with --workers 1): its own, and its child process that runs the models (`kana.serving`)."""
    procs = {}  # pid -> (children, cpu seconds, kind)
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/task/{p}/children") as fh:
                children = [int(c) for c in fh.read().split()]
            with open(f"/proc/{p}/stat") as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
            with open(f"/proc/{p}/cmdline", "rb") as fh:
                cmdline = fh.read()
        except OSError:
            continue
        kind = ("helper" if b"resource_tracker" in cmdline  # multiprocessing's, beside the workers
                else "models" if b"kana.serving" in cmdline else "server")
        procs[p] = (children, (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), kind)
        todo += children
    out = {}
    for p, (children, cpu, kind) in procs.items():
        servers = [c for c in children if c in procs and procs[c][2] == "server"]
        if kind == "server" and not servers:  # a worker
            out[p] = (cpu, sum(procs[c][1] for c in children if c in procs and procs[c][2] == "models"))
    return out


def log_floor_model(tmp: Path, wait_s: float = 0.0) -> str:
    """A pyfunc that answers a constant record per sample, after waiting `wait_s` (sleeping, the
    GIL released, as a model that runs elsewhere would): served, it costs what the server and the
    clients cost and nothing more."""
    import mlflow

    class Constant(mlflow.pyfunc.PythonModel):
        def __init__(self, wait_s: float):
            self.wait_s = wait_s

        def predict(self, context, model_input: list[Any], params=None) -> list[dict[str, Any]]:
            from kana.serving import settle_server_heap

            settle_server_heap()  # what kana's pyfunc does about the server's garbage collector
            if self.wait_s:
                time.sleep(self.wait_s)
            return [{"char_id": "a", "probability": 1.0} for _ in model_input]

    path = tmp / f"floor-model-{wait_s}"
    mlflow.pyfunc.save_model(str(path), python_model=Constant(wait_s),
                             input_example=[{"1": [[0.0, 0.1], [0.2, 0.3]]}])
    return str(path)


def bench_http(model_uri: str, samples, requests: int = 10_000, clients: int = 8, time_limit: float = 300,
               workers: int = 1, keep_alive: bool = True, extra_env: dict[str, str] | None = None):
    """`mlflow models serve` with `workers` uvicorn workers; with several, each runs ONNX Runtime
    on one thread (KANA_ORT_THREADS=1), so the workers share the cores instead of fighting.
    The clients: `clients` concurrent connections, each sending its requests one after another,
    kept alive (HTTP/1.1, as an app's HTTP client does) or a new connection per request."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = dict(os.environ, **(extra_env or {}))
    if workers > 1:
        env["KANA_ORT_THREADS"] = "1"
    proc = subprocess.Popen(
        ["mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
         "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)],
        env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
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
        # warm-up on new connections, so that every worker has answered a few requests
        asyncio.run(load_test(port, bodies, 200, clients, time_limit, keep_alive=False))
        rss_before = _rss_mb(proc.pid)
        cpu_before = _worker_cpu_s(proc.pid)
        t0 = time.perf_counter()
        latencies, errors = asyncio.run(load_test(port, bodies, requests, clients, time_limit, keep_alive))
        wall = time.perf_counter() - t0
        rss_after = _rss_mb(proc.pid)
        server_cpu, models_cpu = {}, 0.0
        for p, (own, models) in _worker_cpu_s(proc.pid).items():
            before = cpu_before.get(p, (0.0, 0.0))
            server_cpu[p] = own - before[0] + models - before[1]
            models_cpu += models - before[1]
        total, n = sum(server_cpu.values()), max(len(latencies), 1)
        p50, p99 = percentiles(latencies)
        return {"requests": len(latencies), "errors": errors, "p50": p50, "p99": p99,
                "rps": len(latencies) / wall, "rss_before": rss_before, "rss_after": rss_after,
                "cpu_ms_per_request": 1000 * total / n, "models_cpu_ms_per_request": 1000 * models_cpu / n,
                "worker_shares": sorted((c / max(total, 1e-9) for c in server_cpu.values()), reverse=True)}
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)


async def load_test(port: int, bodies: list[bytes], requests: int, clients: int, time_limit: float,
                    keep_alive: bool, timeout: float = 30.0) -> tuple[list[float], int]:
    """`clients` concurrent clients in one asyncio loop, `requests` POSTs in all (or until
    `time_limit`): each request's latency, from the first byte sent to the last byte of the
    answer, and the count of failed ones (no answer within `timeout`, a broken connection, or a
    status other than 200).

    One event loop and plain HTTP/1.1 on sockets: it can keep connections alive, as an app's HTTP
    client does, and it costs about 0.1 ms of CPU per request (urllib in 8 processes, the
    earlier harness, 0.24 ms), which matters where clients and server share 2 cores."""
    latencies: list[float] = []
    errors = 0
    stop_at = time.perf_counter() + time_limit
    counter = iter(range(requests))

    async def client():
        nonlocal errors
        conn = None
        for k in counter:
            if time.perf_counter() > stop_at:
                break
            body = bodies[k % len(bodies)]
            head = (f"POST /invocations HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                    f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n"
                    + ("" if keep_alive else "Connection: close\r\n") + "\r\n").encode()
            t0 = time.perf_counter()
            try:
                conn = conn or await asyncio.open_connection("127.0.0.1", port)
                conn[1].write(head + body)
                status = await asyncio.wait_for(_read_response(conn[0]), timeout)
            except (OSError, asyncio.IncompleteReadError, ValueError):  # TimeoutError is an OSError
                status = 0
            latencies.append(time.perf_counter() - t0)
            errors += status != 200
            if status != 200 or not keep_alive:  # a new connection for the next request
                if conn is not None:
                    conn[1].close()
                conn = None
        if conn is not None:
            conn[1].close()

    await asyncio.gather(*(client() for _ in range(clients)))
    return latencies, errors


async def _read_response(reader: asyncio.StreamReader) -> int:
    """Read one HTTP/1.1 response with a Content-Length (as the scoring server sends); its status."""
    status_line = (await reader.readline()).split()
    if len(status_line) < 2 or not status_line[1].isdigit():
        raise ValueError(f"not an HTTP status line: {status_line!r}")
    length = None
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    if length is None:
        raise ValueError("response without Content-Length")
    await reader.readexactly(length)
    return int(status_line[1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-uri", help="a registered kana pyfunc (default: untrained nets of each family)")
    parser.add_argument("--http", action="store_true", help="also load-test mlflow models serve")
    parser.add_argument("--requests", type=int, default=10_000)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2],
                        help="uvicorn worker counts to load-test (default: 1 and 2)")
    args = parser.parse_args()
    samples = raw_samples(2000)
    import kana

    print(f"machine: {os.cpu_count()} cores; {len(samples)} synthetic raw samples (all 108 classes); "
          f"in process, the kana code in {Path(kana.__file__).parent}")
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
            floors = {"a model that does nothing": log_floor_model(Path(tmp)),
                      "one that waits 1 ms, then does nothing": log_floor_model(Path(tmp), 0.001)}
            for keep_alive in (True, False):
                how = "connections kept alive" if keep_alive else "a new connection per request"
                for workers in args.workers:
                    print(f"\n== HTTP, {name}: 8 clients, {how}, loopback, --workers {workers}"
                          f"{' (KANA_ORT_THREADS=1)' if workers > 1 else ''} ==")
                    r = bench_http(uri, samples, args.requests, workers=workers, keep_alive=keep_alive)
                    print(f"latency p50 {r['p50']:.2f} ms  p99 {r['p99']:.2f} ms (goal p99 <= 25 ms); "
                          f"{r['rps']:.0f} req/s; errors {r['errors']} of {r['requests']}")
                    print(f"server RSS (all workers) before {r['rss_before']:.0f} MB, after {r['rss_after']:.0f} MB; "
                          f"CPU {r['cpu_ms_per_request']:.2f} ms per request ({r['models_cpu_ms_per_request']:.2f} "
                          "in the models' child processes), shared by the workers "
                          + " / ".join(f"{x:.0%}" for x in r["worker_shares"]))
                    b = bench_http(uri, samples, args.requests, workers=workers, keep_alive=keep_alive,
                                   extra_env={"KANA_CHILD_PROCESS": "0"})
                    print(f"baseline, the models in the server's process (KANA_CHILD_PROCESS=0): p50 {b['p50']:.2f} ms  "
                          f"p99 {b['p99']:.2f} ms; {b['rps']:.0f} req/s; errors {b['errors']}; "
                          f"CPU {b['cpu_ms_per_request']:.2f} ms per request; kana / baseline: "
                          f"p50 {r['p50'] / b['p50']:.2f}x  p99 {r['p99'] / b['p99']:.2f}x")
                    for floor_name, floor_uri in floors.items():
                        f = bench_http(floor_uri, samples, args.requests, workers=workers, keep_alive=keep_alive)
                        print(f"floor, {floor_name}: p50 {f['p50']:.2f} ms  p99 {f['p99']:.2f} ms; "
                              f"{f['rps']:.0f} req/s; errors {f['errors']}; CPU {f['cpu_ms_per_request']:.2f} ms "
                              "per request, workers " + " / ".join(f"{x:.0%}" for x in f["worker_shares"])
                              + f"; kana / floor: p50 {r['p50'] / f['p50']:.2f}x  p99 {r['p99'] / f['p99']:.2f}x")

if __name__ == "__main__":
    main()

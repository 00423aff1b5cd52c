"""The champion as a pyfunc: raw stroke dicts in, characters out.

`KanaClassifier` carries one trained network or an ensemble of several (one per model family,
combined by the geometric mean of their probabilities, each with the sample's stroke count
weighed in as its training was scored: `kana.classes.apply_stroke_count_prior`), each as its
Keras model and the same network exported to ONNX (what serving runs: ONNX Runtime answers one
sample in well under a millisecond where a Keras call costs 15-700 ms; every export is checked
against Keras before it is registered), with its `ModelConfig` (class table, feature settings),
and the `kana` package itself (logged as code), so a sample is parsed, validated, resampled and
rendered by exactly the code that prepared the training data. In `mlflow models serve` the models
run in a child process (`ChildProcessRecognizer`), beside the server's own work instead of under its
GIL.

Input (`predict`): a list of samples, each the app's raw dict `{1: ndarray (N, 2), ...}`, the same
with string keys and lists (JSON), `{"strokes": [...]}`, or a plain list of strokes. The `list[Any]`
type hint gives a signature that takes ragged strokes in process and over HTTP (`{"inputs": [...]}`);
bad samples raise an MlflowException naming the sample and what was wrong (HTTP 400).

Output: one record (a dict) per sample, in order: `char_id`, `character`, `probability`, and the
top-5 candidates as `top5_char_ids`, `top5_characters`, `top5_probabilities`; over HTTP, the
same records under "predictions"; `pandas.DataFrame(records)` for a table. Records, not a
DataFrame, because pandas 3 stores strings in Arrow arrays: building the one-row frame and
turning it back into JSON cost a served request about 1 ms of CPU and some 27 thread switches
(measured with a model that does nothing), a third of what the server spends on it.
"""

from __future__ import annotations

import gc
import itertools
import json
import os
import shutil
import socket
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import mlflow
import numpy as np

TOP_K = 5
MAX_BATCH = 10_000
# From this many samples a batch's networks run beside the drawing of its rasters (below it the
# hand-over to another thread cost more than it saved here: 64 samples 0.98-1.02x, 256 1.04-1.12x)
OVERLAP_FROM = 256
MEMBERS_FILE = "members.json"


class KanaClassifier(mlflow.pyfunc.PythonModel):
    """Logged as code (`kana/pyfunc_from_code.py`), not pickled: `load_context` builds the
    recognizer from the members' artifacts."""

    def load_context(self, context):
        folder = context.artifacts["members"]
        self.recognizer = (ChildProcessRecognizer(folder) if _use_child_process()
                           else Recognizer.from_members_dir(folder))

    def predict(
        self, context, model_input: list[Any], params: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        settle_server_heap()
        return self.recognizer.predict(model_input)


_heap_settled = False


def _in_serving_environment() -> bool:
    """Set by MLflow's scoring server once it has loaded the model."""
    return os.environ.get("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "").lower() == "true"


def _use_child_process() -> bool:
    """The models run in a child process in `mlflow models serve` (KANA_CHILD_PROCESS=0 turns that
    off, =1 turns it on anywhere); in a user's own process they run in it. The scoring server
    loads the model before it sets _MLFLOW_IS_IN_SERVING_ENVIRONMENT; it starts uvicorn with the
    model's path in __pyfunc_model_path__."""
    setting = os.environ.get("KANA_CHILD_PROCESS", "").strip()
    if setting not in ("", "0", "1"):  # "yes" or "true" read as unset would be silently ignored
        raise ValueError(f"KANA_CHILD_PROCESS must be 0 (the models in this process), 1 (in a child "
                         f"process) or unset (a child in `mlflow models serve`), got {setting!r}")
    if os.name != "posix":
        return False  # the child's socket is handed over with pass_fds, a POSIX feature
    if setting in ("0", "1"):
        return setting == "1"
    return _in_serving_environment() or bool(os.environ.get("__pyfunc_model_path__"))


def ort_threads() -> int:
    """The threads ONNX Runtime runs a batch of several samples on: KANA_ORT_THREADS, else up to 2.
    A setting that is no whole number of threads is refused, naming it (0 or less was read as 1,
    and a word failed as "invalid literal for int()", which named nothing)."""
    setting = os.environ.get("KANA_ORT_THREADS", "").strip()
    if not setting:
        return min(2, os.cpu_count() or 1)
    try:
        threads = int(setting)
    except ValueError:
        threads = 0
    if threads < 1:
        raise ValueError(
            f"KANA_ORT_THREADS must be a whole number of threads, 1 or more, got {setting!r}")
    return threads


def settle_server_heap() -> None:
    """In `mlflow models serve` only, once per worker (on its first request, when the server has
    loaded all it needs): collect garbage, then freeze every object alive (`gc.freeze`).

    A server process holds millions of long-lived objects (MLflow, FastAPI, pandas, the models).
    Each full run of Python's cyclic garbage collector walks them all: here that stalled every
    request in flight for 70-80 ms about every 500 requests, even for a model that does nothing
    (p50 6 ms, p99 72 ms). Frozen, they are never walked again; new garbage is still collected.
    Never in a user's own process, where freezing would keep alive whatever it holds then.
    """
    global _heap_settled
    if _heap_settled or not _in_serving_environment():
        return  # MLflow's scoring server sets that variable when it starts
    _heap_settled = True
    gc.collect()
    gc.freeze()


class Recognizer:
    """Raw samples -> prediction records, the same way in process, in the pyfunc and in tests.

    `members` are (predict_probs, ModelConfig) pairs over the same classes; with several, the
    probabilities are their geometric mean (renormalised), which rewards classes every member
    finds likely: a product of experts that see the sample differently (raster vs pen path).
    """

    def __init__(self, members: list[tuple[Callable[[np.ndarray], np.ndarray], Any]]):
        from kana.classes import get_class

        if not members:
            raise ValueError("a recognizer needs at least one model")
        configs = [c for _, c in members]
        for c in configs[1:]:
            if c.class_ids != configs[0].class_ids:
                raise ValueError("ensemble members must share one class table")
        self.members = members
        self.config = configs[0]
        self.characters = np.array([get_class(c).character for c in self.config.class_ids])
        self.class_ids = np.array(self.config.class_ids)
        self.n_outputs = len(self.config.class_ids)
        self.batched_probabilities = BatchedCalls(self.probabilities)
        self._network_thread: ThreadPoolExecutor | None = None
        self._network_thread_pid = 0
        self._network_thread_lock = threading.Lock()

    @staticmethod
    def onnx_session(onnx_path: str) -> Callable[[np.ndarray], np.ndarray]:
        """ONNX Runtime on the CPU. KANA_ORT_THREADS sets its threads for large batches (default:
        up to 2; a server with one worker per core does best with 1). A single sample always runs
        on one thread: splitting its work costs more than it saves (the LSTM's 60 sequential
        steps took 0.61 ms on 2 threads and 0.36 ms on 1 here; the CNNs gain nothing)."""
        import onnxruntime as ort

        def session(threads: int):
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            # threads sleep between calls instead of spinning: a server's other requests need the CPU
            options.add_session_config_entry("session.intra_op.allow_spinning", "0")
            return ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])

        threads = ort_threads()
        single = session(1)
        multi = session(threads) if threads > 1 else single
        name = single.get_inputs()[0].name
        return lambda x: (single if len(x) == 1 else multi).run(None, {name: x})[0]

    @classmethod
    def from_members_dir(cls, folder: str) -> "Recognizer":
        """The members a pyfunc carries: `members.json` lists each one's ONNX file and config."""
        from kana.training import ModelConfig

        root = Path(folder)
        listing = json.loads((root / MEMBERS_FILE).read_text(encoding="utf-8"))
        configs = [ModelConfig.from_json((root / m["config"]).read_text(encoding="utf-8"))
                   for m in listing]
        return cls([(cls.onnx_session(str(root / m["onnx"])), c) for m, c in zip(listing, configs)])

    @classmethod
    def from_keras(cls, models_and_configs: list[tuple[Any, Any]]) -> "Recognizer":
        from kana.training import predict_probs

        return cls([((lambda x, m=m: predict_probs(m, x)), c) for m, c in models_and_configs])

    def parse(self, samples) -> list[np.ndarray]:
        """Validate the batch and every sample; errors name the sample and the field."""
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        from kana.strokes import InvalidSample, parse_strokes

        if not isinstance(samples, (list, tuple)):
            raise MlflowException(
                f"expected a list of samples, got {type(samples).__name__}; wrap one sample in a list",
                error_code=INVALID_PARAMETER_VALUE,
            )
        if not samples:
            raise MlflowException("no samples given", error_code=INVALID_PARAMETER_VALUE)
        if len(samples) > MAX_BATCH:
            raise MlflowException(
                f"{len(samples)} samples in one request (at most {MAX_BATCH})",
                error_code=INVALID_PARAMETER_VALUE,
            )
        parsed = []
        for k, sample in enumerate(samples):
            try:
                parsed.append(parse_strokes(sample, f"sample {k}"))
            except InvalidSample as exc:
                raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
        return parsed

    def probabilities(self, parsed: list[list[np.ndarray]]) -> np.ndarray:
        """Each member's input (as training made it, shared where members take the same), its
        probabilities with the samples' stroke counts weighed in (as training scored it), and
        their geometric mean when there are several.

        Inputs are made in this thread, raster members' last: their rasters take longest to draw.
        For a batch of OVERLAP_FROM samples or more, each network runs in a second thread
        (`network_thread`; ONNX Runtime and TensorFlow release the GIL) as soon as its input is
        ready, so the other members' networks run while the rasters are drawn: the same numbers,
        1.1-1.25x the samples a second for batches of 1,000 here (`bench_serving.py`)."""
        from kana.features import resample_samples
        from kana.training import model_inputs

        resampled: dict[tuple, list] = {}
        inputs: dict[tuple, np.ndarray] = {}
        drawn: dict[tuple, dict] = {}  # raster channels, shared by members that take the same
        overlap = len(self.members) > 1 and len(parsed) >= OVERLAP_FROM
        net_probs: dict[int, Any] = {}
        for k in sorted(range(len(self.members)), key=lambda k: self.members[k][1].input_kind == "raster"):
            predict_probs, config = self.members[k]
            if config.resampling not in resampled:
                resampled[config.resampling] = resample_samples(parsed, *config.resampling)
            if config.input_key not in inputs:
                inputs[config.input_key] = model_inputs(config, resampled[config.resampling],
                                                        drawn=drawn.setdefault(config.resampling, {}))
            x = inputs[config.input_key]
            net_probs[k] = self.network_thread().submit(predict_probs, x) if overlap else predict_probs(x)
        stroke_counts = [len(strokes) for strokes in parsed]
        outputs = []
        for k, (_, config) in enumerate(self.members):
            probs = net_probs[k].result() if overlap else net_probs[k]
            outputs.append(config.with_stroke_counts(np.asarray(probs, dtype=np.float64), stroke_counts))
        return combine_probabilities(outputs)

    def network_thread(self) -> ThreadPoolExecutor:
        """One thread that runs the members' networks, one after another, for large batches;
        started on first use (a recognizer that only sees small batches never starts it), and
        again in a process forked after it started: there the old one's thread is gone, and work
        handed to it would never run."""
        with self._network_thread_lock:
            if self._network_thread is None or self._network_thread_pid != os.getpid():
                self._network_thread = ThreadPoolExecutor(1, thread_name_prefix="kana-networks")
                self._network_thread_pid = os.getpid()
            return self._network_thread

    def predict(self, samples) -> list[dict[str, Any]]:
        return self.records(self.batched_probabilities(self.parse(samples)))

    def answer_requests(self, requests: list) -> list[tuple[str, Any]]:
        """Several requests' samples (each a list, as `predict` takes) through the models as one
        batch: per request ("ok", its records), ("invalid", why) for a request with a bad sample
        (the others are answered), or ("error", what went wrong in the batch)."""
        from mlflow.exceptions import MlflowException

        answers: list[Any] = [None] * len(requests)
        valid, parsed = [], []
        for k, samples in enumerate(requests):
            try:
                parsed.append(self.parse(samples))
                valid.append(k)
            except MlflowException as exc:
                answers[k] = ("invalid", exc.message)
        if not valid:
            return answers
        try:
            records = self.records(self.probabilities([s for p in parsed for s in p]))
        except Exception as exc:  # noqa: BLE001 - reported to every request of the batch
            for k in valid:
                answers[k] = ("error", f"{type(exc).__name__}: {exc}")
            return answers
        start = 0
        for k, p in zip(valid, parsed):
            answers[k], start = ("ok", records[start : start + len(p)]), start + len(p)
        return answers

    def records(self, probs: np.ndarray) -> list[dict[str, Any]]:
        """One prediction record per row of probabilities."""
        k = min(TOP_K, self.n_outputs)
        top = np.argsort(-probs, axis=1)[:, :k]
        ids, chars, top_p = (self.class_ids[top].tolist(), self.characters[top].tolist(),
                             np.take_along_axis(probs, top, axis=1).tolist())
        return [
            {"char_id": i[0], "character": c[0], "probability": p[0],
             "top5_char_ids": i, "top5_characters": c, "top5_probabilities": p}
            for i, c, p in zip(ids, chars, top_p)
        ]


class BatchedCalls:
    """Concurrent calls of `fn(items) -> array` answered by one call on all their items at once.

    A threaded caller (a user's own server, or `mlflow models serve` with KANA_CHILD_PROCESS=0)
    runs each request's predict in a thread of its own. While one thread runs the models, the
    requests that arrive meanwhile queue here, and when it is done the first of them runs the whole
    queue as one batch and hands each caller its rows. A request never waits for others to arrive:
    alone, it runs at once. Under load the waiting threads sleep instead of fighting over the GIL
    and the cores, and the per-call costs (Python, the LSTM's sequential steps) are paid once per
    batch. Each waiting thread has an event of its own, so a finished batch wakes its callers and
    the next leader, not every thread that waits. Callers pass validated items; if the batched call
    raises, every caller in that batch gets the error.
    """

    def __init__(self, fn: Callable[[list], np.ndarray]):
        self.fn = fn
        self.lock = threading.Lock()
        self.queue: list[_Job] = []
        self.busy = False

    def __call__(self, items: list) -> np.ndarray:
        job = _Job(items)
        with self.lock:
            self.queue.append(job)
            lead = not self.busy
            self.busy = True
        if not lead:
            job.wake.wait()
            if job.done:  # another caller ran it in its batch
                return job.result()
        # this caller leads: it runs every job queued by now (its own among them)
        with self.lock:
            batch, self.queue = self.queue, []
        try:
            out = self.fn([item for j in batch for item in j.items])
            start = 0
            for j in batch:
                j.out, start = out[start : start + len(j.items)], start + len(j.items)
        except BaseException as exc:  # noqa: BLE001 - handed to every caller of the batch
            for j in batch:
                j.error = exc
        finally:
            for j in batch:
                j.done = True
                if j is not job:
                    j.wake.set()
            with self.lock:
                if self.queue:
                    self.queue[0].wake.set()  # the next leader; busy stays True
                else:
                    self.busy = False
        return job.result()


class _Job:
    __slots__ = ("items", "wake", "done", "out", "error")

    def __init__(self, items: list):
        self.items, self.wake, self.done, self.out, self.error = items, threading.Event(), False, None, None

    def result(self) -> np.ndarray:
        if self.error is not None:
            raise self.error
        return self.out


class ChildProcessRecognizer:
    """`Recognizer.predict` of a members folder, answered by a child process.

    `mlflow models serve` parses HTTP, decodes JSON and answers every request in one Python
    process, under one GIL; with the models in it too, their Python work (validating, resampling,
    rendering) queued behind the server's and the server's behind theirs. Here a request's thread
    only pickles its samples, as the server decoded them, onto a socket to the child and sleeps
    until its records come back; the child validates, runs the models and builds the records on
    the other core. Requests are sent as they come, not one batch at a time: whenever the child
    finishes a batch it takes every request queued on its socket by then as the next one (alone, a
    request runs at once), and a reader thread here hands each request its answer. So the child
    never waits for the server's GIL to be handed its next batch, and the per-call costs
    (ONNX Runtime, the LSTM's sequential steps, the trip) are paid once per batch.

    The child is `python -m kana.serving <members folder> <fd>`, with the kana package that loaded
    this one first on its path: it loads the members, says it is ready (or why not), then answers
    until its socket closes, which happens when this process exits. A bad sample fails its own
    request (an MlflowException naming the sample, HTTP 400), never the others in its batch. If
    the child dies, every request in flight fails with an error saying so and the next request
    starts a new child; one that takes longer than ANSWER_TIMEOUT_S is killed the same way.
    Cost: the child's memory (about 170 MB) and about 2 s at startup.
    """

    START_TIMEOUT_S = 300
    ANSWER_TIMEOUT_S = 300

    def __init__(self, members_dir: str):
        ort_threads()  # a bad setting is refused here, naming it, before a child is started
        self.members_dir = str(members_dir)
        self.lock = threading.Lock()
        self.ids = itertools.count()
        with self.lock:
            self.child: _Child | None = self._start()

    def _start(self) -> "_Child":
        import subprocess
        import sys
        from multiprocessing.connection import Connection

        ours, theirs = socket.socketpair()
        env = dict(os.environ, KANA_CHILD_PROCESS="0")
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(_kana_code_dir().parent),
                                                          env.get("PYTHONPATH")]))
        # one ONNX Runtime thread: the server's own thread needs the other core
        env.setdefault("KANA_ORT_THREADS", "1")
        try:
            proc = subprocess.Popen(
                [sys.executable, "-m", "kana.serving", self.members_dir, str(theirs.fileno())],
                pass_fds=[theirs.fileno()], env=env, stdin=subprocess.DEVNULL,
            )
        finally:
            theirs.close()
        child = _Child(proc, ours, Connection(os.dup(ours.fileno())))
        try:
            ready = child.conn.poll(self.START_TIMEOUT_S)
            ok, message = (child.conn.recv() if ready
                           else (False, f"no answer within {self.START_TIMEOUT_S} s"))
        except (EOFError, OSError):
            ok, message = False, None  # it exited: its code is known once it is reaped
        if not ok:
            code = child.stop(kill=True)
            raise RuntimeError(f"the models' child process could not load {self.members_dir}: "
                               + (message or f"exited (code {code})"))
        child.reader = threading.Thread(target=self._read_answers, args=(child,), daemon=True,
                                        name="kana-child-reader")
        child.reader.start()
        return child

    def _read_answers(self, child: "_Child") -> None:
        """The reader thread: hands each answer to its request; when the child has gone, fails
        every request still waiting on it and lets the next request start a new child."""
        try:
            while True:
                for request_id, answer in child.conn.recv():
                    job = child.pending.pop(request_id, None)
                    if job is not None:
                        job.out = answer
                        job.wake.set()
        except (EOFError, OSError):
            pass
        except Exception as exc:  # noqa: BLE001 - failed below, with every request waiting
            child.fail(f"sent an answer that could not be read ({type(exc).__name__}: {exc})")
        with self.lock:
            if self.child is child:
                self.child = None
            code = child.stop(kill=child.problem is not None)
            problem = child.problem or f"exited (code {code})"
            error = RuntimeError(f"the models' child process {problem}; "
                                 "the next request starts a new one")
            for job in child.pending.values():
                job.error = error
                job.wake.set()
            child.pending.clear()

    def predict(self, samples) -> list[dict[str, Any]]:
        from mlflow.exceptions import MlflowException
        from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

        job = _Job(samples)
        with self.lock:
            child = self.child = self.child or self._start()
            request_id = next(self.ids)
            child.pending[request_id] = job
            try:
                child.conn.send((request_id, samples))
            except OSError:
                pass  # the child has gone: the reader fails this request, saying how
            except Exception as exc:  # noqa: BLE001 - it could not be pickled: nothing was sent
                del child.pending[request_id]
                raise MlflowException(
                    f"expected samples of numbers; these cannot be sent to the models' child "
                    f"process ({type(exc).__name__}: {exc})", error_code=INVALID_PARAMETER_VALUE,
                ) from None
        if not job.wake.wait(self.ANSWER_TIMEOUT_S):
            child.fail(f"did not answer within {self.ANSWER_TIMEOUT_S:g} s")
            job.wake.wait()
        status, out = job.result()  # raises the reader's error if the child went
        if status == "invalid":
            raise MlflowException(out, error_code=INVALID_PARAMETER_VALUE)
        if status != "ok":
            raise RuntimeError(f"the models' child process failed on this batch: {out}")
        return out

    def close(self) -> None:
        """Stop the child (it sees its socket close and exits) and wait for it."""
        with self.lock:
            child, self.child = self.child, None
        if child is not None:
            try:
                child.sock.shutdown(socket.SHUT_RDWR)  # wakes the reader; the child sees EOF
            except OSError:
                pass  # the reader has closed it already: the child had gone
            child.reader.join()

    def __del__(self):
        try:
            self.close()
        except Exception:  # noqa: BLE001 - nothing to report to at interpreter exit
            pass


class _Child:
    """One child process, its socket and the requests waiting on it."""

    def __init__(self, proc, sock, conn):
        self.proc, self.sock, self.conn = proc, sock, conn
        self.pending: dict[int, _Job] = {}
        self.reader: threading.Thread | None = None
        self.problem: str | None = None

    def fail(self, problem: str) -> None:
        """Give up on the child: the reader then fails every request waiting on it with `problem`."""
        self.problem = self.problem or problem
        self.proc.kill()

    def stop(self, kill: bool = False) -> int | None:
        """Close our end (a waiting child then exits), reap the child; its exit code."""
        import subprocess

        self.conn.close()
        self.sock.close()
        if kill:
            self.proc.kill()  # does nothing to a child that has exited already
        try:
            return self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def _child_process_main(members_dir: str, fd: int) -> None:
    """The child's side of ChildProcessRecognizer: each batch is every request queued by then."""
    import signal
    from multiprocessing.connection import Connection

    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server; its exit stops us
    conn = Connection(fd)
    try:
        recognizer = Recognizer.from_members_dir(members_dir)
    except Exception as exc:  # noqa: BLE001 - reported to the parent, which raises it
        conn.send((False, f"{type(exc).__name__}: {exc}"))
        return
    conn.send((True, None))
    settled = False
    while True:
        try:
            requests = [conn.recv()]
            while conn.poll():
                requests.append(conn.recv())
        except (EOFError, OSError):
            return
        answers = recognizer.answer_requests([samples for _, samples in requests])
        conn.send([(request_id, answer) for (request_id, _), answer in zip(requests, answers)])
        if not settled:  # as settle_server_heap does for the server
            settled = True
            gc.collect()
            gc.freeze()


MEMBER_FLOOR = 1e-6


def combine_probabilities(outputs: list[np.ndarray]) -> np.ndarray:
    """One model's probabilities as they are; several models' geometric mean, renormalised.

    In the mean, a member's probability counts as at least MEMBER_FLOOR: a member can make a class
    a million times less likely, not 10^30 times (what a float32 softmax gives when the LSTM is sure
    of itself). Where the LSTM is confidently wrong and both CNNs are right (strokes shuffled,
    check_robustness, 586 samples), the ensemble read 94% with the floor at 1e-12 and 97% with it
    at 1e-6, in each of three training runs, with the same test figures (5181-5182 of 5184);
    a floor of 1e-3 cost 3-4 test samples."""
    if len(outputs) == 1:
        return outputs[0]
    log_mean = np.mean([np.log(np.clip(p, MEMBER_FLOOR, None)) for p in outputs], axis=0)
    log_mean -= log_mean.max(axis=1, keepdims=True)
    combined = np.exp(log_mean)
    return combined / combined.sum(axis=1, keepdims=True)


def export_onnx(keras_model_path: str, config, onnx_path: str, atol: float = 1e-5) -> float:
    """Export the Keras model to ONNX and check both give the same probabilities on synthetic
    samples of every class; returns the largest difference (raises if it is above `atol`)."""
    import keras

    from kana.classes import get_class
    from kana.synth import synthesize_sample

    model = keras.saving.load_model(keras_model_path, compile=False)
    rng = np.random.default_rng(0)
    samples = [synthesize_sample(get_class(c), rng) for c in config.class_ids]
    expected = Recognizer.from_keras([(model, config)]).probabilities(samples)
    model.export(onnx_path, format="onnx", verbose=False)
    got = Recognizer([(Recognizer.onnx_session(onnx_path), config)]).probabilities(samples)
    diff = float(np.abs(expected - got).max())
    if diff > atol or not (expected.argmax(1) == got.argmax(1)).all():
        raise RuntimeError(f"ONNX export differs from the Keras model by {diff:.2e}")
    return diff


def write_members(members: list[tuple[str, str]], folder: Path) -> float:
    """Lay out the pyfunc's members (Keras file, its ONNX export, its config) under `folder`;
    returns the largest Keras-vs-ONNX difference seen."""
    from kana.training import ModelConfig

    listing, worst = [], 0.0
    for k, (keras_path, config_path) in enumerate(members):
        sub = folder / str(k)
        sub.mkdir(parents=True)
        shutil.copy(keras_path, sub / "model.keras")
        shutil.copy(config_path, sub / "kana_config.json")
        config = ModelConfig.from_json(Path(config_path).read_text(encoding="utf-8"))
        worst = max(worst, export_onnx(keras_path, config, str(sub / "model.onnx")))
        listing.append({"family": config.family, "keras": f"{k}/model.keras",
                        "onnx": f"{k}/model.onnx", "config": f"{k}/kana_config.json"})
    (folder / MEMBERS_FILE).write_text(json.dumps(listing, indent=2), encoding="utf-8")
    return worst


def _kana_code_dir() -> Path:
    """The kana package folder: what the pyfunc carries as code."""
    import kana

    return Path(kana.__file__).parent


def log_pyfunc(members: list[tuple[str, str]], registered_model_name: str | None = None):
    """Export every member (Keras model path, kana_config.json path) to ONNX, then log the pyfunc
    (with the kana package as code) in the active run."""
    import tempfile

    example = [
        {"1": [[-0.5, 0.5], [0.0, 0.52], [0.5, 0.5]], "2": [[0.0, 0.8], [0.02, 0.0], [-0.1, -0.7]]}
    ]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "members"
        diff = write_members(members, folder)
        mlflow.log_metric("onnx_max_abs_diff", diff)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=str(_kana_code_dir() / "pyfunc_from_code.py"),
            artifacts={"members": str(folder)},
            code_paths=[str(_kana_code_dir())],
            input_example=example,
            registered_model_name=registered_model_name,
            pip_requirements=_pip_requirements(),
        )


def _pip_requirements() -> list[str]:
    """What serving needs: no TensorFlow (ONNX Runtime runs the model); uvicorn's C HTTP parser
    and event loop, which `mlflow models serve` uses when they are installed."""
    from importlib.metadata import version

    pkgs = ["mlflow", "onnxruntime", "numpy", "pandas", "pillow", "httptools", "uvloop"]
    markers = {"uvloop": "; sys_platform != 'win32'"}  # uvloop has no Windows build
    out = []
    for p in pkgs:
        try:
            out.append(f"{p}=={version(p)}{markers.get(p, '')}")
        except Exception:
            out.append(p + markers.get(p, ""))
    return out


if __name__ == "__main__":
    import sys

    _child_process_main(sys.argv[1], int(sys.argv[2]))

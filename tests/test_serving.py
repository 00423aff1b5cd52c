"""How the pyfunc combines an ensemble's members, against values worked out by hand."""

import numpy as np
import pytest

from kana.serving import combine_probabilities


def test_one_model_is_left_as_it_is():
    p = np.array([[0.2, 0.8], [0.6, 0.4]])
    assert combine_probabilities([p]) is p


def test_ensemble_is_the_renormalised_geometric_mean():
    a = np.array([[0.5, 0.5], [0.9, 0.1]])
    b = np.array([[0.9, 0.1], [0.9, 0.1]])
    # row 0: sqrt(.45) : sqrt(.05) = 3 : 1 -> 0.75, 0.25; row 1: both agree -> unchanged
    np.testing.assert_allclose(combine_probabilities([a, b]), [[0.75, 0.25], [0.9, 0.1]])


def test_a_class_one_member_rules_out_stays_unlikely():
    confident_wrong = np.array([[0.98, 0.01, 0.01]])
    others = np.array([[0.001, 0.6, 0.399]])
    combined = combine_probabilities([confident_wrong, others, others])
    assert combined.argmax() == 1 and combined.sum() == pytest.approx(1.0)


def test_one_sure_member_cannot_overrule_two_that_agree():
    # the LSTM at 1 - 1e-20 for class 0 (float32 softmax does this), both CNNs at 0.9 for class 1
    sure = np.array([[1.0 - 1e-20, 1e-20, 0.0]])
    cnn = np.array([[1e-4, 0.9, 0.0999]])
    combined = combine_probabilities([sure, cnn, cnn])
    assert combined.argmax() == 1
    # the floor only bounds the veto: by hand, class 1 gets (1e-6 * 0.9^2)^(1/3) against
    # (1 * 1e-4^2)^(1/3) for class 0, a ratio of (0.81e-6 / 1e-8)^(1/3) = 81^(1/3)
    assert combined[0, 1] / combined[0, 0] == pytest.approx(81 ** (1 / 3))


def test_zero_probabilities_do_not_produce_nan():
    a = np.array([[1.0, 0.0]])
    b = np.array([[0.0, 1.0]])
    out = combine_probabilities([a, b])
    assert np.isfinite(out).all() and out.sum() == pytest.approx(1.0)


def _run_in_threads(fn, args_list):
    import threading

    results, threads = [None] * len(args_list), []
    for k, args in enumerate(args_list):
        def target(k=k, args=args):
            try:
                results[k] = fn(args)
            except Exception as exc:  # noqa: BLE001 - the test looks at what each caller got
                results[k] = exc
        threads.append(threading.Thread(target=target))
        threads[-1].start()
    return threads, results


def test_concurrent_calls_share_one_batch_and_each_gets_its_own_rows():
    import threading
    import time

    from kana.serving import BatchedCalls

    release, batches = threading.Event(), []

    def double(items):
        batches.append(list(items))
        if len(batches) == 1:
            release.wait(10)  # the first caller is busy while the others arrive
        return np.array(items) * 2

    batched = BatchedCalls(double)
    first, first_result = _run_in_threads(batched, [[1]])
    while not batches:
        time.sleep(0.001)
    others, results = _run_in_threads(batched, [[10, 11], [20], [30, 31, 32]])
    while len(batched.queue) < 3:
        time.sleep(0.001)
    release.set()
    for t in first + others:
        t.join(10)
    assert batches[0] == [1] and len(batches) == 2 and sorted(batches[1]) == [10, 11, 20, 30, 31, 32]
    assert first_result[0].tolist() == [2]
    assert [r.tolist() for r in results] == [[20, 22], [40], [60, 62, 64]]
    assert batched([5]).tolist() == [10] and not batched.busy and not batched.queue


def test_a_failing_batch_fails_its_callers_and_the_next_call_runs():
    import threading
    import time

    from kana.serving import BatchedCalls

    release, calls = threading.Event(), []

    def fails_on_7(items):
        calls.append(list(items))
        if len(calls) == 1:
            release.wait(10)
        if 7 in items:
            raise ValueError("seven")
        return np.array(items)

    batched = BatchedCalls(fails_on_7)
    first, first_result = _run_in_threads(batched, [[1]])
    while not calls:
        time.sleep(0.001)
    others, results = _run_in_threads(batched, [[7], [8]])
    while len(batched.queue) < 2:
        time.sleep(0.001)
    release.set()
    for t in first + others:
        t.join(10)
    assert first_result[0].tolist() == [1]
    assert all(isinstance(r, ValueError) for r in results)
    assert batched([9]).tolist() == [9]


def test_each_member_gets_the_input_its_config_asks_for(monkeypatch):
    """Members with different input settings each get their own input; members with the same
    settings share one, and members whose inputs share a channel share its drawing."""
    from kana import features
    from kana.classes import class_set, get_class
    from kana.serving import Recognizer
    from kana.synth import synthesize_sample
    from kana.training import ModelConfig

    ids = [c.char_id for c in class_set("basic46")]
    seen = {}

    def member(k, **settings):
        kind = "strokes" if "fit_box" in settings else "raster"
        config = ModelConfig("m", kind, ids, 120, 5, "basic46", **settings)

        def predict_probs(x):
            seen[k] = (settings, x)
            return np.full((len(x), len(ids)), 1 / len(ids))
        return predict_probs, config

    members = [member(0), member(1, stroke_order=True), member(2), member(3, fit_box=False),
               member(4, fit_box=True), member(5, raster_size=48), member(6, raster_antialias=4),
               member(7, raster_antialias=4, directions=4)]
    samples = [synthesize_sample(get_class("ke"), np.random.default_rng(1))]
    drawings = []
    render_rasters = features.render_rasters
    monkeypatch.setattr(features, "render_rasters", lambda *a, **kw: drawings.append(kw) or render_rasters(*a, **kw))
    Recognizer(members).probabilities(samples)
    assert sorted(kw["antialias"] for kw in drawings) == [1, 1, 4]  # 32 px and 48 px plain, 32 px once smooth
    shapes = [seen[k][1].shape for k in range(len(members))]
    assert shapes == [(1, 32, 32, 1), (1, 32, 32, 2), (1, 32, 32, 1), (1, 120, 20), (1, 120, 20),
                      (1, 48, 48, 1), (1, 32, 32, 1), (1, 32, 32, 5)]
    assert seen[0][1] is seen[2][1]  # shared, not recomputed
    assert len(np.unique(seen[6][1])) > 2 and len(np.unique(seen[0][1])) == 2  # its own, anti-aliased
    np.testing.assert_array_equal(seen[1][1][..., :1], seen[0][1])  # channel 0: the plain raster
    np.testing.assert_array_equal(seen[7][1][..., :1], seen[6][1])  # then the 4 orientations' ink
    assert seen[7][1][..., 1:].sum() > 20 and seen[7][1][..., 1:].max() <= 1
    assert not np.array_equal(seen[3][1], seen[4][1])  # fitted to the box or not


def test_a_large_batchs_networks_run_beside_its_rasters_with_the_same_numbers():
    """From OVERLAP_FROM samples, the strokes member's network runs in the network thread while
    the rasters are drawn: every network off the caller's thread, the strokes one first, and the
    probabilities those of the same samples in batches too small to overlap. A network's error
    in that thread reaches the caller."""
    import threading

    from kana.classes import class_set
    from kana.serving import OVERLAP_FROM, Recognizer
    from kana.synth import synthesize_sample
    from kana.training import ModelConfig

    classes = class_set("basic46")
    ids = [c.char_id for c in classes]
    calls = []

    def member(kind, seed, fail=False):
        """A fixed random projection of the input, softmaxed: different inputs, different rows."""
        def predict_probs(x):
            calls.append((kind, len(x), threading.current_thread() is threading.main_thread()))
            if fail:
                raise ValueError("the LSTM ran out of memory")
            flat = x.reshape(len(x), -1)
            w = np.random.default_rng(seed).normal(size=(flat.shape[1], len(ids)))
            logits = flat @ w / np.sqrt(flat.shape[1])
            e = np.exp(logits - logits.max(axis=1, keepdims=True))
            return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)
        return predict_probs, ModelConfig("m", kind, ids, 120, 5, "basic46")

    rng = np.random.default_rng(3)
    distinct = [synthesize_sample(classes[k % len(classes)], rng) for k in range(32)]
    samples = (distinct * (OVERLAP_FROM // len(distinct) + 1))[:OVERLAP_FROM]
    recognizer = Recognizer([member("raster", 1), member("strokes", 2), member("raster", 3)])
    together = recognizer.probabilities(samples)
    assert calls == [("strokes", OVERLAP_FROM, False), ("raster", OVERLAP_FROM, False),
                     ("raster", OVERLAP_FROM, False)]
    calls.clear()
    half = OVERLAP_FROM // 2
    apart = np.concatenate([recognizer.probabilities(samples[:half]), recognizer.probabilities(samples[half:])])
    assert all(on_main for *_, on_main in calls)  # too small to overlap
    np.testing.assert_allclose(together, apart, rtol=1e-12)
    assert len(np.unique(together.argmax(axis=1))) > 1

    failing = Recognizer([member("raster", 1), member("strokes", 2, fail=True)])
    with pytest.raises(ValueError, match="ran out of memory"):
        failing.probabilities(samples)


@pytest.mark.skipif(not hasattr(__import__("os"), "fork"), reason="needs fork")
def test_a_process_forked_after_a_large_batch_reads_large_batches_too():
    """A process forked after the network thread started (a data loader's workers, a preforking
    server) has no such thread: it starts its own instead of waiting on the parent's forever."""
    import os
    import select
    import signal

    from kana.classes import class_set
    from kana.serving import OVERLAP_FROM, Recognizer
    from kana.training import ModelConfig

    ids = [c.char_id for c in class_set("basic46")]

    def uniform(x):
        return np.full((len(x), len(ids)), 1 / len(ids), dtype=np.float32)

    recognizer = Recognizer([(uniform, ModelConfig("m", kind, ids, 120, 5, "basic46"))
                             for kind in ("raster", "strokes")])
    samples = [[np.array([[0.0, 0.5], [0.0, -0.5]])]] * OVERLAP_FROM
    expected = recognizer.probabilities(samples)
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: answer, then leave without running the parent's exit handlers
        try:
            os.write(write, recognizer.probabilities(samples).astype(np.float64).tobytes())
        finally:
            os._exit(0)
    os.close(write)
    ready = []
    try:
        ready, _, _ = select.select([read], [], [], 60)
        assert ready, "the forked process never answered"
        got = b""
        while chunk := os.read(read, 1 << 20):
            got += chunk
    finally:
        os.close(read)
        if not ready:
            os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    np.testing.assert_array_equal(np.frombuffer(got).reshape(expected.shape), expected)


def test_a_sample_with_more_strokes_than_any_class_is_read_not_refused():
    """People draw more strokes than a class has (a stroke lifted midway, a stray dot): the CNN
    reads every stroke, the LSTM the closest ones joined until they fit its columns."""
    from kana.classes import class_set, get_class
    from kana.features import join_closest_strokes, lstm_tensors, resample_samples
    from kana.serving import Recognizer
    from kana.synth import synthesize_sample
    from kana.training import ModelConfig

    ids = [c.char_id for c in class_set("basic46")]
    seen = {}

    def member(kind):
        def predict_probs(x):
            seen[kind] = x
            return np.full((len(x), len(ids)), 1 / len(ids))
        return predict_probs, ModelConfig("m", kind, ids, 120, 4, "basic46", fit_box=kind == "strokes")

    rng = np.random.default_rng(2)
    ha = synthesize_sample(get_class("ha"), rng, off_table_join=0, off_table_split=0)
    drawn = ha + [ha[-1][-1:] + 0.01, ha[0][:2] - 0.02, ha[1][::-1] * 0.9]  # 6 strokes
    records = Recognizer([member("raster"), member("strokes")]).predict([drawn, ha])
    assert [len(r["top5_char_ids"]) for r in records] == [5, 5]
    resampled = resample_samples([drawn], 120)[0]
    np.testing.assert_array_equal(seen["strokes"][:1], lstm_tensors([join_closest_strokes(resampled, 4)], 4, True))
    assert seen["raster"].shape == (2, 32, 32, 1)


def test_requests_answered_as_one_batch_each_get_their_records_and_a_bad_one_only_its_error():
    """What the served child does with the requests queued on its socket: one model call for all
    their samples; each request gets the records `predict` gives it alone, and a request with a bad
    sample gets its own error, naming the sample, while the others are answered."""
    from kana.classes import class_set, get_class
    from kana.serving import Recognizer
    from kana.synth import synthesize_sample
    from kana.training import ModelConfig

    ids = [c.char_id for c in class_set("basic46")]
    calls = []

    def predict_probs(x):  # a different answer per sample: its raster's ink, spread over classes
        calls.append(len(x))
        ink = x.reshape(len(x), -1).sum(axis=1, keepdims=True)
        logits = np.cos(ink * np.arange(1, len(ids) + 1) / 1000)
        return np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)

    recognizer = Recognizer([(predict_probs, ModelConfig("m", "raster", ids, 120, 5, "basic46"))])
    rng = np.random.default_rng(3)
    samples = [synthesize_sample(get_class(c), rng) for c in ("a", "ke", "su", "no", "wa")]
    requests = [samples[:2], [samples[2], {"1": []}], samples[2:]]
    answers = recognizer.answer_requests(requests)
    assert calls == [5]  # the two good requests' samples in one call
    assert [status for status, _ in answers] == ["ok", "invalid", "ok"]
    assert answers[1][1] == "sample 1: stroke 1: has no points"
    alone = [recognizer.predict(r) for r in (requests[0], requests[2])]
    assert [len(answers[0][1]), len(answers[2][1])] == [2, 3]
    for got, want in zip((answers[0][1], answers[2][1]), alone):
        assert [r["char_id"] for r in got] == [r["char_id"] for r in want]
        np.testing.assert_allclose([r["top5_probabilities"] for r in got],
                                   [r["top5_probabilities"] for r in want])
    rows = {tuple(r["top5_probabilities"]) for r in answers[0][1] + answers[2][1]}
    assert len(rows) == 5  # each sample its own answer, so a mix-up of rows would show


def test_a_batch_whose_models_fail_fails_every_request_in_it():
    from kana.classes import class_set
    from kana.serving import Recognizer
    from kana.training import ModelConfig

    ids = [c.char_id for c in class_set("basic46")]

    def broken(x):
        raise ValueError("out of memory, say")

    recognizer = Recognizer([(broken, ModelConfig("m", "raster", ids, 120, 5, "basic46"))])
    good = [{"1": [[0.0, 0.5], [0.0, -0.5]]}]
    assert recognizer.answer_requests([good, good, []]) == [
        ("error", "ValueError: out of memory, say"), ("error", "ValueError: out of memory, say"),
        ("invalid", "no samples given")]


def test_members_read_strokes_with_the_gap_filling_they_were_trained_with():
    """A model made before gap filling (max_gap 0) and one made with it, in one ensemble: each
    gets the raster its training data had."""
    from kana.classes import class_set
    from kana.features import render_rasters, resample_for_model
    from kana.serving import Recognizer
    from kana.training import ModelConfig

    ids = [c.char_id for c in class_set("basic46")]
    seen = {}

    def member(max_gap):
        def predict_probs(x):
            seen[max_gap] = x[..., 0]
            return np.full((len(x), len(ids)), 1 / len(ids))
        return predict_probs, ModelConfig("cnn", "raster", ids, 120, 5, "basic46", max_gap=max_gap)

    zigzag = np.array([[-0.45, 0.72], [0.17, 0.66], [-0.71, 0.1], [0.49, 0.19], [0.0, -0.2], [0.06, -0.7]])
    Recognizer([member(0.0), member(0.02)]).probabilities([[zigzag]])
    for gap in (0.0, 0.02):
        expected = render_rasters([resample_for_model([zigzag], 120, gap)])[0] / 255.0
        np.testing.assert_allclose(seen[gap][0], expected, atol=1e-6)
    assert not np.array_equal(seen[0.0], seen[0.02])


def test_the_heap_is_frozen_once_and_only_in_a_scoring_server(monkeypatch):
    import gc

    from kana import serving

    monkeypatch.setattr(serving, "_heap_settled", False)
    monkeypatch.delenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", raising=False)
    # Only gc.freeze() raises the count; a frozen object freed meanwhile lowers it (in the whole
    # suite, 22 went between two calls). So each check holds 1,000 new lists a freeze would add.
    frozen = gc.get_freeze_count()
    fresh = [[] for _ in range(1000)]  # lists: gc tracks them (an empty dict it may not)
    serving.settle_server_heap()  # a user's own process: left alone
    assert gc.get_freeze_count() <= frozen and not serving._heap_settled
    monkeypatch.setenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", "true")  # as MLflow's server sets it
    try:
        serving.settle_server_heap()
        assert serving._heap_settled and gc.get_freeze_count() >= frozen + len(fresh)
        after_first = gc.get_freeze_count()
        fresher = [[] for _ in range(1000)]  # (not rebinding `fresh`, which would free 1,000 frozen)
        serving.settle_server_heap()  # once per process
        assert gc.get_freeze_count() <= after_first and len(fresher) == len(fresh)
    finally:
        gc.unfreeze()


@pytest.mark.parametrize("folder", ["models", "models {v2}"])
def test_a_child_process_that_cannot_load_its_models_says_why(tmp_path, folder):
    """The child's reason is passed on as it is, braces in a path too (not read as a template)."""
    from kana.serving import ChildProcessRecognizer

    members = tmp_path / folder
    members.mkdir()
    with pytest.raises(RuntimeError) as caught:
        ChildProcessRecognizer(str(members))
    message = str(caught.value)
    assert message.startswith(f"the models' child process could not load {members}: FileNotFoundError")
    assert message.endswith(f"{members / 'members.json'}'")


def test_a_child_process_that_exits_before_it_says_anything_is_reported_with_its_code(
        tmp_path, monkeypatch):
    """A child that cannot even start Python (here a Python home that is not there)."""
    from kana.serving import ChildProcessRecognizer

    monkeypatch.setenv("PYTHONHOME", str(tmp_path / "no python here"))
    with pytest.raises(RuntimeError, match=r"could not load .*: exited \(code [1-9]\d*\)$"):
        ChildProcessRecognizer(str(tmp_path))


def test_an_answer_that_cannot_be_read_fails_the_waiting_request_not_hangs_it():
    """The reader thread, given bytes that are no pickle (their reason quotes a '{'), fails every
    request waiting on the child with that reason, and lets the next request start a new child."""
    import socket
    import subprocess
    import sys
    import threading
    from multiprocessing.connection import Connection

    from kana.serving import ChildProcessRecognizer, _Child, _Job

    ours, theirs = socket.socketpair()
    child = _Child(subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"]),
                   ours, Connection(ours.detach()))
    waiting = _Job([])
    child.pending[7] = waiting
    recognizer = ChildProcessRecognizer.__new__(ChildProcessRecognizer)  # no child of its own
    recognizer.lock, recognizer.child = threading.Lock(), child
    reader = threading.Thread(target=recognizer._read_answers, args=(child,), daemon=True)
    reader.start()
    Connection(theirs.detach()).send_bytes(b"{not a pickle")

    assert waiting.wake.wait(30), "the waiting request was never answered"
    with pytest.raises(RuntimeError, match=r"sent an answer that could not be read "
                                           r"\(UnpicklingError: invalid load key, '\{'\.\); "
                                           r"the next request starts a new one"):
        waiting.result()
    reader.join(30)
    assert recognizer.child is None and child.proc.poll() is not None and not child.pending


@pytest.mark.parametrize("setting", ["two", "0", "-1", "1.5"])
def test_an_onnx_thread_count_that_is_no_whole_number_is_refused_by_name(tmp_path, monkeypatch, setting):
    """Before any model is loaded, in this process and before a child is started (0 was read
    as 1 and a word as "invalid literal for int()")."""
    from kana.serving import ChildProcessRecognizer, Recognizer

    monkeypatch.setenv("KANA_ORT_THREADS", setting)
    refused = rf"KANA_ORT_THREADS must be a whole number of threads, 1 or more, got '{setting}'"
    with pytest.raises(ValueError, match=refused):
        Recognizer.onnx_session(str(tmp_path / "model.onnx"))
    with pytest.raises(ValueError, match=refused):
        ChildProcessRecognizer(str(tmp_path))


def test_the_onnx_thread_count_is_the_setting_or_up_to_two(monkeypatch):
    import os

    from kana.serving import ort_threads

    monkeypatch.setenv("KANA_ORT_THREADS", " 3 ")
    assert ort_threads() == 3
    monkeypatch.delenv("KANA_ORT_THREADS")
    assert ort_threads() == min(2, os.cpu_count() or 1)


@pytest.mark.skipif(__import__("os").name != "posix", reason="a child process is POSIX only")
def test_where_the_models_run_is_the_setting_and_a_setting_not_0_or_1_is_refused(tmp_path, monkeypatch):
    """"yes" or "true", read as unset, would have kept the models in a user's process unseen."""
    from types import SimpleNamespace

    from kana.serving import KanaClassifier, _use_child_process

    monkeypatch.delenv("_MLFLOW_IS_IN_SERVING_ENVIRONMENT", raising=False)
    monkeypatch.delenv("__pyfunc_model_path__", raising=False)
    for setting, in_child in (("", False), ("0", False), ("1", True), (" 1 ", True)):
        monkeypatch.setenv("KANA_CHILD_PROCESS", setting)
        assert _use_child_process() is in_child
    for setting in ("yes", "true", "2"):
        monkeypatch.setenv("KANA_CHILD_PROCESS", setting)
        with pytest.raises(ValueError, match=rf"KANA_CHILD_PROCESS must be 0 .* got '{setting}'"):
            KanaClassifier().load_context(SimpleNamespace(artifacts={"members": str(tmp_path)}))


@pytest.mark.parametrize("encoding", ["pen_path", "strokes, bidirectional"])
def test_an_lstm_is_served_through_onnx_as_keras_reads_it(tmp_path, encoding):
    """`train_lstm -P encoding=pen_path`'s network and `-P bidirectional=1`'s, exported like any
    champion's member: ONNX Runtime gives Keras' probabilities for the same raw samples
    (write_members checks every class and raises otherwise; here, fresh samples through the
    pyfunc's own path)."""
    import keras

    from kana.classes import class_set
    from kana.features import PEN_PATH_FEATURES
    from kana.models import build_lstm
    from kana.serving import Recognizer, write_members
    from kana.synth import synthesize_sample
    from kana.training import ModelConfig

    classes = class_set("basic46")
    ids = [c.char_id for c in classes]
    keras.utils.set_random_seed(0)
    if encoding == "pen_path":
        net = build_lstm(len(classes), 32, PEN_PATH_FEATURES, units=16, dense_units=16)
        config = ModelConfig("lstm_path", "pen_path", ids, 120, 4, "basic46", fit_box=True, max_gap=0.02,
                             pen_path_points=32)
    else:
        net = build_lstm(len(classes), 120, 4 * 5, units=8, dense_units=16, bidirectional=True)
        config = ModelConfig("lstm", "strokes", ids, 120, 5, "basic46", fit_box=True, max_gap=0.02)
    net.save(tmp_path / "net.keras")
    (tmp_path / "config.json").write_text(config.to_json())
    assert write_members([(str(tmp_path / "net.keras"), str(tmp_path / "config.json"))],
                         tmp_path / "members") <= 1e-5
    rng = np.random.default_rng(3)
    samples = [synthesize_sample(classes[k], rng) for k in range(0, 46, 5)]
    served = Recognizer.from_members_dir(str(tmp_path / "members")).probabilities(samples)
    expected = Recognizer.from_keras([(net, config)]).probabilities(samples)
    np.testing.assert_allclose(served, expected, atol=1e-5)
    assert served.shape == (10, 46)


# --------------------------------------------------------------------------- the stroke-count prior


def test_the_stroke_count_weighs_classes_whose_table_does_not_allow_it():
    from kana.classes import apply_stroke_count_prior

    # ba has 5 strokes (ha 3 + the two ticks), pa 4 (ha + the circle), ha 3
    probs = np.array([[0.6, 0.4, 0.0], [0.6, 0.4, 0.0], [0.5, 0.3, 0.2]])
    out = apply_stroke_count_prior(probs, [4, 5, 3], ["ba", "pa", "ha"], 0.1)
    # row 0: 0.06 : 0.4 -> pa; row 1: 0.6 : 0.04 -> ba; row 2: 0.05 : 0.03 : 0.2
    np.testing.assert_allclose(out, [[0.06 / 0.46, 0.4 / 0.46, 0.0], [0.6 / 0.64, 0.04 / 0.64, 0.0],
                                     [0.05 / 0.28, 0.03 / 0.28, 0.2 / 0.28]])
    # a class the model finds more than 10x likelier still wins with the wrong count
    assert apply_stroke_count_prior(np.array([[0.95, 0.05]]), [4], ["ba", "pa"], 0.1).argmax() == 0


def test_a_count_no_class_allows_leaves_the_probabilities_as_they_are():
    from kana.classes import apply_stroke_count_prior

    probs = np.array([[0.7, 0.3], [0.2, 0.8]])
    np.testing.assert_allclose(apply_stroke_count_prior(probs, [2, 40], ["ba", "pa"], 0.1), probs)
    assert apply_stroke_count_prior(probs, [4, 4], ["ba", "pa"], 1.0) is probs  # off


def test_a_count_one_stroke_off_a_table_weighs_less_than_one_further_off():
    """A writer who joins two strokes, lifts one or leaves a dot is one stroke off the table; a
    count two or more off is weighed as before."""
    from kana.classes import apply_stroke_count_prior

    # ba 5 strokes, pa 4, ha 3, ta 4: 6 strokes is 1 off ba, 2 off pa, 3 off ha and ta
    probs = np.full((3, 4), 0.25)
    out = apply_stroke_count_prior(probs, [6, 4, 2], ["ba", "pa", "ha", "ta"], 0.1, 0.3)
    np.testing.assert_allclose(out[0], np.array([0.3, 0.1, 0.1, 0.1]) / 0.6)
    np.testing.assert_allclose(out[1], np.array([0.3, 1.0, 0.3, 1.0]) / 2.6)  # pa and ta allow 4
    np.testing.assert_allclose(out[2], np.array([0.1, 0.1, 0.3, 0.1]) / 0.6)
    # None: one weight for every count off the table, as models made before it read
    np.testing.assert_allclose(apply_stroke_count_prior(probs[:1], [6], ["ba", "pa", "ha", "ta"], 0.1),
                               [[0.25] * 4])
    # only the off-by-one weight in use still applies
    np.testing.assert_allclose(apply_stroke_count_prior(probs[:1], [6], ["ba", "pa", "ha", "ta"], 1.0, 0.5),
                               [np.array([0.5, 1.0, 1.0, 1.0]) / 3.5])


@pytest.mark.parametrize("weight", [0.0, -0.1, 1.5, float("nan")])
def test_a_stroke_count_weight_outside_0_to_1_is_refused_by_name(weight):
    from kana.classes import apply_stroke_count_prior

    with pytest.raises(ValueError, match="wrong_count_weight"):
        apply_stroke_count_prior(np.array([[0.7, 0.3]]), [4], ["ba", "pa"], weight)
    with pytest.raises(ValueError, match="off_by_one_weight"):
        apply_stroke_count_prior(np.array([[0.7, 0.3]]), [4], ["ba", "pa"], 0.1, weight)


def _fixed_member(ids, wrong_count_weight=None, off_by_one_weight=None):
    """A member that always finds ba 0.6 and pa 0.4 likely (the raster the CNNs see holds no count)."""
    from kana.training import ModelConfig

    settings = {} if wrong_count_weight is None else {"wrong_count_weight": wrong_count_weight}
    config = ModelConfig("cnn", "raster", ids, 120, 9, "all", off_by_one_weight=off_by_one_weight,
                         **settings)

    def predict_probs(x):
        out = np.zeros((len(x), len(ids)), np.float32)
        out[:, ids.index("ba")], out[:, ids.index("pa")] = 0.6, 0.4
        return out
    return predict_probs, config


def test_served_predictions_weigh_the_stroke_count_as_training_scored_them():
    """A model made with the prior reads a 4-stroke sample as pa and a 5-stroke one as ba; a model
    made before it (its config has no weight) reads both as it always did."""
    from kana.classes import class_set, get_class
    from kana.serving import Recognizer
    from kana.synth import synthesize_sample
    from kana.training import ModelConfig

    ids = [c.char_id for c in class_set("all")]
    rng = np.random.default_rng(3)
    pa = synthesize_sample(get_class("pa"), rng, allowed_counts=(4,), off_table_join=0, off_table_split=0)
    ba = synthesize_sample(get_class("ba"), rng, allowed_counts=(5,), off_table_join=0, off_table_split=0)
    assert (len(pa), len(ba)) == (4, 5)

    served = Recognizer([_fixed_member(ids, 0.1)]).predict([pa, ba])
    assert [r["char_id"] for r in served] == ["pa", "ba"]
    assert served[0]["probability"] == pytest.approx(0.4 / 0.46)

    old = _fixed_member(ids)
    assert old[1] == ModelConfig.from_json(old[1].to_json())
    assert old[1].wrong_count_weight == 1.0
    assert [r["char_id"] for r in Recognizer([old]).predict([pa, ba])] == ["ba", "ba"]
    # in an ensemble, each member's own weight applies before the mean
    mixed = Recognizer([_fixed_member(ids, 0.1), old]).probabilities([pa])
    assert mixed[0, ids.index("pa")] / mixed[0, ids.index("ba")] == pytest.approx(
        np.sqrt((0.4 / 0.46 * 0.4) / (0.06 / 0.46 * 0.6)))


def test_served_predictions_weigh_a_count_one_stroke_off_by_the_models_own_weight():
    """ば with a stray dot has 6 strokes: one off ば's table, two off ぱ's. A model made with the
    off-by-one weight finds ば likelier than one made before it did."""
    from kana.classes import class_set, get_class
    from kana.serving import Recognizer
    from kana.synth import synthesize_sample

    ids = [c.char_id for c in class_set("all")]
    ba = synthesize_sample(get_class("ba"), np.random.default_rng(4), allowed_counts=(5,),
                           off_table_join=0, off_table_split=0)
    dotted = [*ba, np.array([[0.7, -0.7], [0.71, -0.7]])]
    now = Recognizer([_fixed_member(ids, 0.1, 0.3)]).predict([dotted])[0]
    before = Recognizer([_fixed_member(ids, 0.1)]).predict([dotted])[0]
    assert now["char_id"] == before["char_id"] == "ba"
    assert now["probability"] == pytest.approx(0.18 / 0.22)  # 0.6 x 0.3 against 0.4 x 0.1
    assert before["probability"] == pytest.approx(0.6)  # both weighed 0.1: as the network said


def test_new_models_are_configured_with_the_prior():
    import json

    from kana.classes import OFF_BY_ONE_WEIGHT, WRONG_COUNT_WEIGHT
    from kana.training import ModelConfig

    meta = {"class_ids": ["ba", "pa"], "n_points": 120, "max_strokes": 5, "class_set": "all"}
    config = ModelConfig.for_dataset("cnn", meta)
    assert config.wrong_count_weight == WRONG_COUNT_WEIGHT < OFF_BY_ONE_WEIGHT < 1.0
    assert ModelConfig.from_json(config.to_json()) == config
    fields = json.loads(config.to_json())
    assert config.off_by_one_weight == OFF_BY_ONE_WEIGHT
    del fields["off_by_one_weight"]  # as a model made before it: one weight for any count off
    assert ModelConfig.from_json(json.dumps(fields)).off_by_one_weight is None
    del fields["wrong_count_weight"]  # as a model made before the prior wrote its config
    assert ModelConfig.from_json(json.dumps(fields)).wrong_count_weight == 1.0

"""The champion as a pyfunc: raw stroke dicts in, characters out.

`KanaClassifier` carries the trained Keras model, the same network exported to ONNX (what it runs:
ONNX Runtime answers one sample in about a millisecond where a Keras call costs 15-700 ms; the
export is checked against Keras before it is registered), its `ModelConfig` (class table,
feature settings) and the `kana` package itself (logged as code), so a sample is parsed,
validated, resampled and rendered by exactly the code that prepared the training data.

Input (`predict`): a list of samples, each the app's raw dict `{1: ndarray (N, 2), ...}`, the same
with string keys and lists (JSON), `{"strokes": [...]}`, or a plain list of strokes. The `list[Any]`
type hint gives a signature that takes ragged strokes in process and over HTTP (`{"inputs": [...]}`);
bad samples raise an MlflowException naming the sample and what was wrong (HTTP 400).

Output: a DataFrame, one row per sample in order: `char_id`, `character`, `probability`, and the
top-5 candidates as `top5_char_ids`, `top5_characters`, `top5_probabilities`.
"""

from __future__ import annotations

import os
from typing import Any

import mlflow
import numpy as np
import pandas as pd

TOP_K = 5
MAX_BATCH = 10_000


class KanaClassifier(mlflow.pyfunc.PythonModel):
    def __getstate__(self):
        # Nothing to pickle: load_context rebuilds the recognizer (an ONNX Runtime session, which
        # cannot be pickled) from the artifacts. MLflow pickles the instance after trying it on
        # the input example.
        return {}

    def load_context(self, context):
        from kana.training import ModelConfig

        with open(context.artifacts["kana_config"], encoding="utf-8") as fh:
            self.config = ModelConfig.from_json(fh.read())
        self.recognizer = Recognizer.from_onnx(context.artifacts["onnx_model"], self.config)

    def predict(self, context, model_input: list[Any], params: dict[str, Any] | None = None) -> pd.DataFrame:
        return self.recognizer.predict(model_input)


class Recognizer:
    """Raw samples -> prediction table, the same way in process, in the pyfunc and in tests."""

    def __init__(self, predict_probs, config):
        """`predict_probs` maps a model-input batch to class probabilities."""
        from kana.classes import get_class

        self.predict_probs = predict_probs
        self.config = config
        self.characters = np.array([get_class(c).character for c in config.class_ids])
        self.class_ids = np.array(config.class_ids)
        self.n_outputs = len(config.class_ids)

    @classmethod
    def from_onnx(cls, onnx_path: str, config, threads: int | None = None) -> "Recognizer":
        """ONNX Runtime on the CPU; KANA_ORT_THREADS sets its threads (default: up to 2)."""
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or int(
            os.environ.get("KANA_ORT_THREADS", min(2, os.cpu_count() or 1))
        )
        options.inter_op_num_threads = 1
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return cls(lambda x: session.run(None, {name: x})[0], config)

    @classmethod
    def from_keras(cls, model, config) -> "Recognizer":
        from kana.training import predict_probs

        return cls(lambda x: predict_probs(model, x), config)

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
                strokes = parse_strokes(sample, f"sample {k}")
                if len(strokes) > self.config.max_strokes:
                    raise InvalidSample(
                        "too_many_strokes",
                        f"sample {k}: {len(strokes)} strokes; no class of this model has more than "
                        f"{self.config.max_strokes}",
                    )
            except InvalidSample as exc:
                raise MlflowException(str(exc), error_code=INVALID_PARAMETER_VALUE) from None
            parsed.append(strokes)
        return parsed

    def probabilities(self, parsed: list[list[np.ndarray]]) -> np.ndarray:
        """The features this model's family needs (as training made them), then the network."""
        from kana.features import resample_for_model
        from kana.training import model_inputs

        resampled = [resample_for_model(s, self.config.n_points) for s in parsed]
        return np.asarray(self.predict_probs(model_inputs(self.config, resampled)))

    def predict(self, samples) -> pd.DataFrame:
        probs = self.probabilities(self.parse(samples))
        k = min(TOP_K, self.n_outputs)
        top = np.argsort(-probs, axis=1)[:, :k]
        top_p = np.take_along_axis(probs, top, axis=1)
        return pd.DataFrame(
            {
                "char_id": self.class_ids[top[:, 0]],
                "character": self.characters[top[:, 0]],
                "probability": top_p[:, 0].astype(float),
                "top5_char_ids": [list(r) for r in self.class_ids[top]],
                "top5_characters": [list(r) for r in self.characters[top]],
                "top5_probabilities": [[float(p) for p in r] for r in top_p],
            }
        )


def export_onnx(keras_model_path: str, config, onnx_path: str, atol: float = 1e-5) -> float:
    """Export the Keras model to ONNX and check both give the same probabilities on synthetic
    samples of every class; returns the largest difference (raises if it is above `atol`)."""
    import keras

    from kana.classes import get_class
    from kana.synth import synthesize_sample

    model = keras.saving.load_model(keras_model_path, compile=False)
    rng = np.random.default_rng(0)
    samples = [synthesize_sample(get_class(c), rng) for c in config.class_ids]
    keras_rec = Recognizer.from_keras(model, config)
    expected = keras_rec.probabilities(samples)
    model.export(onnx_path, format="onnx", verbose=False)
    got = Recognizer.from_onnx(onnx_path, config).probabilities(samples)
    diff = float(np.abs(expected - got).max())
    if diff > atol or not (expected.argmax(1) == got.argmax(1)).all():
        raise RuntimeError(f"ONNX export differs from the Keras model by {diff:.2e}")
    return diff


def log_pyfunc(keras_model_path: str, config_path: str, registered_model_name: str | None = None):
    """Export to ONNX, then log the pyfunc (with the kana package as code) in the active run."""
    import tempfile
    from pathlib import Path

    import kana
    from kana.training import ModelConfig

    config = ModelConfig.from_json(Path(config_path).read_text(encoding="utf-8"))
    example = [
        {"1": [[-0.5, 0.5], [0.0, 0.52], [0.5, 0.5]], "2": [[0.0, 0.8], [0.02, 0.0], [-0.1, -0.7]]}
    ]
    with tempfile.TemporaryDirectory() as tmp:
        onnx_path = str(Path(tmp) / "model.onnx")
        diff = export_onnx(keras_model_path, config, onnx_path)
        mlflow.log_metric("onnx_max_abs_diff", diff)
        return mlflow.pyfunc.log_model(
            name="model",
            python_model=KanaClassifier(),
            artifacts={"keras_model": keras_model_path, "onnx_model": onnx_path,
                       "kana_config": config_path},
            code_paths=[str(Path(kana.__file__).parent)],
            input_example=example,
            registered_model_name=registered_model_name,
            pip_requirements=_pip_requirements(),
        )


def _pip_requirements() -> list[str]:
    """What serving needs: no TensorFlow (ONNX Runtime runs the model)."""
    from importlib.metadata import version

    pkgs = ["mlflow", "onnxruntime", "numpy", "pandas", "pillow"]
    out = []
    for p in pkgs:
        try:
            out.append(f"{p}=={version(p)}")
        except Exception:
            out.append(p)
    return out

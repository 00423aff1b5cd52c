"""The file MLflow runs to build the champion's pyfunc when it logs or loads it ("models from
code"): the model is this code and its artifacts, not a pickle, so it loads where pickled models
are refused (`MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false`) and with any cloudpickle version. MLflow
puts the kana package it carries (its code path) on `sys.path` before it runs this file."""

import mlflow

from kana.serving import KanaClassifier

mlflow.models.set_model(KanaClassifier())

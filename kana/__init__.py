"""kana: read handwritten hiragana from raw pen strokes, tracked and served with MLflow.

The modules follow a sample's journey: classes (the class table), strokes (raw input, safe
loading, validation), synth (KanjiVG handwriting synthesis), features (B-spline resampling,
rasters, LSTM tensors), dataset (preprocess), models, training, evaluation, registry, serving
(the pyfunc), pipeline (the `main` workflow) and cli.
"""

__version__ = "0.1.0"

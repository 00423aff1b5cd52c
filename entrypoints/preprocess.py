"""MLflow entry point `preprocess`: a thin command line over `kana.dataset.preprocess`."""

from kana.cli import run_alone
from kana.dataset import preprocess

if __name__ == "__main__":
    run_alone(preprocess)

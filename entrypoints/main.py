"""MLflow entry point `main`: a thin command line over `kana.pipeline.main`."""

from kana.cli import run_alone
from kana.pipeline import main

if __name__ == "__main__":
    run_alone(main)

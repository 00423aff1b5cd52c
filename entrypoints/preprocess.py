"""MLflow entry point `preprocess`: a thin command line over `kana.dataset.preprocess`."""

import typer

from kana.dataset import preprocess

if __name__ == "__main__":
    typer.run(preprocess)

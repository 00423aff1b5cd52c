"""MLflow entry point `main`: a thin command line over `kana.pipeline.main`."""

import typer

from kana.pipeline import main

if __name__ == "__main__":
    typer.run(main)

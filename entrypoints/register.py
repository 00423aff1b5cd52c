"""MLflow entry point `register`: a thin command line over `kana.registry.register`."""

import typer

from kana.registry import register

if __name__ == "__main__":
    typer.run(register)

"""MLflow entry point `train_transfer`: a thin command line over `kana.training.train_transfer`."""

import typer

from kana.training import train_transfer

if __name__ == "__main__":
    typer.run(train_transfer)

"""MLflow entry point `train_lstm`: a thin command line over `kana.training.train_lstm`."""

import typer

from kana.training import train_lstm

if __name__ == "__main__":
    typer.run(train_lstm)

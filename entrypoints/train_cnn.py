"""MLflow entry point `train_cnn`: a thin command line over `kana.training.train_cnn`."""

import typer

from kana.training import train_cnn

if __name__ == "__main__":
    typer.run(train_cnn)
